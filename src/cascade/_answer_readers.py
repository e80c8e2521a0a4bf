"""The readers behind each answer type: one final number, option letter, yes/no, JSON
value or text from an answer (see ``_answers.py`` for the rules they implement).

Each returns the canonical value, or None when the answer states none. Every one is linear
in the answer's length, and JSON nesting is bounded.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any, Final

__all__ = [
    "MISSING_ANSWERS",
    "answer_part",
    "boolean",
    "canonical_number",
    "choice",
    "clean",
    "json_value",
    "number_value",
    "text_value",
    "whole_number",
]

_MAX_JSON_DEPTH: Final = 64

# -- shared pieces -------------------------------------------------------------------------

_NUMBER = re.compile(
    r"(?<![\w.,])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+\b)?"
    # not the start of a longer token: "1.2.3", "192.168.1.1", "1_000", "0x1F", "10²"
    r"(?![.,_]?\d|[xX][0-9a-fA-F]|[\u00b2\u00b3\u00b9\u2070-\u2079])"
)
_MICRO = Decimal("0.000001")
_EXACT = Context(prec=64)  # 30 digits before the point and 6 after always fit
MISSING_ANSWERS = frozenset({"[invalid]", "invalid", "none", "null", "n/a", "nan", "unknown"})
"""Answers that say there is none (``auto`` reads them as no answer)."""
_TRAILING = ".!?,;: \t\n"
_CLEAN_TRAILING = ".,;: \t\n"  # "3!" (a factorial) and "yes?" keep their mark
_WRAPPERS = (("**", "**"), ("`", "`"), ('"', '"'), ("'", "'"), ("*", "*"))


def _collapse(text: str) -> str:
    return " ".join(text.split())


def clean(text: str) -> str:
    """Whitespace collapsed, trailing punctuation and wrapping quotes or bold removed."""
    s = _collapse(text).rstrip(_CLEAN_TRAILING)
    for _ in range(3):  # "**`B`**": a few layers at most
        for left, right in _WRAPPERS:
            if len(s) > len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)].strip().rstrip(_CLEAN_TRAILING)
                break
        else:
            break
    return s


def canonical_number(token: str) -> str | None:
    """``"1,000.50"`` -> ``"1000.5"``; float noise below 1e-6 dropped; exact for big ints."""
    try:
        number = Decimal(token.replace(",", ""))
    except InvalidOperation:
        return None
    if not number.is_finite() or abs(number.adjusted()) > 30:
        return None
    number = number.quantize(_MICRO, rounding=ROUND_HALF_EVEN, context=_EXACT)
    if number == number.to_integral_value():
        return str(int(number))
    return format(number.normalize(), "f")


# -- number ----------------------------------------------------------------------------------


def number_value(text: str) -> str | None:
    """The canonical number an answer states, when its result states exactly one."""
    result = text.rsplit("=", 1)[-1].replace("\u2212", "-")  # the typographic minus
    found = _NUMBER.findall(result)
    return canonical_number(found[0]) if len(found) == 1 else None


_WHOLE_NUMBER = re.compile(
    r"[=\s]*([-+])?\s*[$€£¥]?\s*(-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
    r"(?:[eE][-+]?\d+)?)\s*%?"
)


def whole_number(text: str) -> str | None:
    m = _WHOLE_NUMBER.fullmatch(text)
    if m is None:
        return None
    sign, token = m.groups()
    if re.match(r"-?0\d", token):
        return None  # "007", "02134": an ID or a code, not a number
    if sign == "-":
        if token.startswith("-"):
            return None
        token = "-" + token
    return canonical_number(token)


# -- boolean ---------------------------------------------------------------------------------

_BOOLEANS = {"yes": "yes", "true": "yes", "no": "no", "false": "no"}
_ANSWER_IS = re.compile(
    r"(?:the\s+)?(?:final\s+|correct\s+)?(?:answer|option|choice)(?:\s+is|\s*[:=])\s*:?\s*",
    re.IGNORECASE,
)


def answer_part(text: str) -> str:
    """The answer proper: cleaned, and what follows a leading "the answer is" / "answer:"
    when it starts so."""
    s = clean(text)
    m = _ANSWER_IS.match(s)
    return clean(s[m.end() :]) if m else s


_LEADING_BOOL = re.compile(r"(yes|no|true|false)\b[\s,.;:!-]", re.IGNORECASE)


def boolean(text: str, *, strict: bool) -> str | None:
    s = answer_part(text)
    value = _BOOLEANS.get(s.casefold())
    if value is not None or strict:
        return value
    m = _LEADING_BOOL.match(s + " ")
    return _BOOLEANS[m.group(1).casefold()] if m else None


# -- choice ----------------------------------------------------------------------------------

_LETTER_ONLY = re.compile(r"\(([A-Ja-j])\)|\[([A-Ja-j])\]|([A-Ja-j])\)?")
_OPTION_WORD = re.compile(r"(?:option|choice)\s+\(?([A-J])\)?", re.IGNORECASE)
_MARKED_LETTER = re.compile(r"(?:\(([A-Ja-j])\)|\[([A-Ja-j])\]|([A-J])[).:]|([a-j])\))\s*\S")


def choice(text: str, *, strict: bool) -> str | None:
    s = answer_part(text)
    m = _LETTER_ONLY.fullmatch(s) or _OPTION_WORD.fullmatch(s)
    if m is not None:
        return next(g for g in m.groups() if g).upper()
    if strict:
        return None
    # "(B) 05/01/2021", "B) 6(√3 + √2)": an option marker followed by the option's text
    m = _MARKED_LETTER.match(s)
    return next(g for g in m.groups() if g).upper() if m else None


# -- json ------------------------------------------------------------------------------------

_FENCE = re.compile(r"```[a-zA-Z]*\n?(.*?)\n?```", re.DOTALL)


def _json_canonical(value: Any, depth: int = 0) -> str:
    if depth > _MAX_JSON_DEPTH:
        raise ValueError("nested too deep")
    if isinstance(value, dict):
        items = sorted(value.items())
        inner = ",".join(
            f"{json.dumps(k, ensure_ascii=False)}:{_json_canonical(v, depth + 1)}" for k, v in items
        )
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ",".join(_json_canonical(v, depth + 1) for v in value) + "]"
    if isinstance(value, Decimal):
        number = canonical_number(str(value))
        if number is None:
            raise ValueError("number out of range")
        return number
    return json.dumps(value, ensure_ascii=False)  # str, bool, None


def json_value(text: str, *, strict: bool) -> str | None:
    s = text.strip()
    if s.startswith("```") and s.endswith("```"):
        m = _FENCE.fullmatch(s)
        if m is not None:
            s = m.group(1).strip()
    if strict and not s.startswith(("{", "[")):
        return None
    try:
        value = json.loads(s, parse_float=Decimal, parse_int=Decimal, parse_constant=_no_nan)
        return _json_canonical(value)
    except (ValueError, ArithmeticError, RecursionError):
        return None


def _no_nan(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- text ------------------------------------------------------------------------------------


def text_value(text: str) -> str | None:
    return _collapse(text).casefold().rstrip(_TRAILING) or None
