"""When two answers are the same answer: typed answer equivalence.

Self-consistency votes and ``cascade eval`` both ask whether two final answers agree. The
answer type says how to tell; each type maps an answer to a key, and two answers are the
same exactly when their keys are equal (so votes are counted with a dict)::

    number   one number, canonical: "$1,000.00" = "1000" = "1,000" = "1e3"; "60%" = "60".
             The answer must state ONE number (its result: what follows its last "=");
             "(86, 42)", "3:30", "1/2" or "86 glasses and 42 plates" state none, and a
             number running on into a longer token ("1.2.3", "0x1F", "1_000", "10²") is
             none. Values are rounded to 6 decimal places (float noise: "0.1 + 0.2"
             answers agree), so numbers below 1e-6 are not told apart.
    date     one calendar date, by value: "05/01/2021" = "2021-05-01" = "May 1, 2021" =
             "1 May 2021". Day/month order of numeric dates is ``date_order``: "mdy"
             (default, US: 05/01 is May 1st), "dmy" (05/01 is January 5th), or "strict"
             (a numeric date whose day and month could be swapped is no answer at all).
             ISO dates (2021-05-01) and month names are never ambiguous. Extra formats:
             ``date_formats`` (strptime directives, tried on the whole answer first).
    choice   an option letter A-J in its common spellings: "B", "(B)", "B)", "B.",
             "[B]", "Option B", "the answer is (b)", "(B) 05/01/2021".
    boolean  yes / no / true / false ("the answer is yes", "Yes, because ...").
    text     case, whitespace and trailing punctuation insensitive, otherwise exact.
    json     canonical JSON: key order, whitespace and number formatting do not matter
             ({"a": 1.0, "b": 2} = {"b":2,"a":1}).
    auto     per answer, the first of json, boolean, choice, date, number that the WHOLE
             answer is (nothing but that value), else text. The key keeps the type, so
             two answers are the same only when both are that type and agree by its rule:
             "(A)" = "A", "05/01/2021" = "2021-05-01", "$18" = "18"; but "05/01/2021"
             and "05/02/2021", "3:30" and "2:30", "1.2.3" and "1.2.4", "007" and
             "7" never are. Caveats: a number's trailing zeros are formatting ("3.10" =
             "3.1", "18.0" = "18"); under "strict" an ambiguous "05/01/2021" is not a date
             for auto, and is compared as text.

A user's own rule is a callable ``key(answer: str) -> Hashable | None``: answers with
equal keys agree; None means the answer holds no final answer (it casts no vote).

Every parse here is linear in the answer's length (answers longer than
:data:`MAX_TYPED_CHARS` are compared as text only), and JSON nesting is bounded.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Sequence
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from typing import Any, Final, Literal, NamedTuple, get_args

from ._answer_dates import DATE_ORDERS, DateOrder, DateReader, check_date_format

__all__ = [
    "ANSWER_TYPES",
    "MISSING_ANSWERS",
    "AnswerKey",
    "AnswerType",
    "AnswerTypeError",
    "AnswerTypeName",
    "DateOrder",
    "answer_type",
    "canonical_number",
]

AnswerTypeName = Literal["auto", "number", "date", "choice", "boolean", "text", "json"]
ANSWER_TYPES: Final[tuple[str, ...]] = get_args(AnswerTypeName)

MAX_TYPED_CHARS: Final = 100_000
"""Longer answers are compared as text: no type parses them (a bound on work per answer)."""
_MAX_JSON_DEPTH: Final = 64


class AnswerTypeError(ValueError):
    """A bad answer type option; ``field`` names it (``answer_type``, ``date_order``,
    ``date_formats[1]``)."""

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class AnswerKey(NamedTuple):
    """What an answer means under an answer type: equal keys, same answer.

    ``kind`` is the type that read it (``"number"``, ``"date"``, ...); ``value`` its
    canonical form (``"1000"``, ``"2021-05-01"``, ``"B"``, ``"yes"``): what a vote reports.
    """

    kind: str
    value: str

    def __str__(self) -> str:
        return self.value


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


def _clean(text: str) -> str:
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


def _whole_number(text: str) -> str | None:
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


def _answer_part(text: str) -> str:
    """The answer proper: cleaned, and what follows a leading "the answer is" / "answer:"
    when it starts so."""
    s = _clean(text)
    m = _ANSWER_IS.match(s)
    return _clean(s[m.end() :]) if m else s


_LEADING_BOOL = re.compile(r"(yes|no|true|false)\b[\s,.;:!-]", re.IGNORECASE)


def _boolean(text: str, *, strict: bool) -> str | None:
    s = _answer_part(text)
    value = _BOOLEANS.get(s.casefold())
    if value is not None or strict:
        return value
    m = _LEADING_BOOL.match(s + " ")
    return _BOOLEANS[m.group(1).casefold()] if m else None


# -- choice ----------------------------------------------------------------------------------

_LETTER_ONLY = re.compile(r"\(([A-Ja-j])\)|\[([A-Ja-j])\]|([A-Ja-j])\)?")
_OPTION_WORD = re.compile(r"(?:option|choice)\s+\(?([A-J])\)?", re.IGNORECASE)
_MARKED_LETTER = re.compile(r"(?:\(([A-Ja-j])\)|\[([A-Ja-j])\]|([A-J])[).:]|([a-j])\))\s*\S")


def _choice(text: str, *, strict: bool) -> str | None:
    s = _answer_part(text)
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


def _json(text: str, *, strict: bool) -> str | None:
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


def _text(text: str) -> str | None:
    return _collapse(text).casefold().rstrip(_TRAILING) or None


# -- the types -------------------------------------------------------------------------------

KeyFunction = Callable[[str], Hashable | None]


class AnswerType:
    """One rule for when two answers are the same (see the module docstring).

    Build it with :func:`answer_type`. ``key(answer)`` is the answer's key (an
    :class:`AnswerKey` for the built-in types; whatever a user's callable returns) or None
    when the answer holds none; ``same(a, b)`` compares two answers. Immutable and safe to
    share between concurrent runs.

    >>> t = answer_type("auto")
    >>> t.same("(A)", "A"), t.same("05/01/2021", "05/02/2021"), t.same("$1,000", "1000.0")
    (True, False, True)
    """

    __slots__ = ("_key", "date_order", "name")

    def __init__(self, name: str, key: KeyFunction, *, date_order: str = "mdy") -> None:
        self.name = name
        self.date_order = date_order
        self._key = key

    def __repr__(self) -> str:
        if self.name in ("auto", "date"):
            return f"<AnswerType {self.name} date_order={self.date_order}>"
        return f"<AnswerType {self.name}>"

    def key(self, answer: str | None) -> Hashable | None:
        """The answer's key; None for a missing, empty or (under this type) unreadable one."""
        if answer is None:
            return None
        text = str(answer)
        if not text.strip():
            return None
        return self._key(text)

    def same(self, a: str | None, b: str | None) -> bool:
        """Whether ``a`` and ``b`` are the same answer (two missing answers are not)."""
        ka = self.key(a)
        return ka is not None and ka == self.key(b)


def _typed(kind: str, read: Callable[[str], str | None]) -> KeyFunction:
    def key(text: str) -> AnswerKey | None:
        if len(text) > MAX_TYPED_CHARS:
            return None
        value = _safely(read, text)
        return None if value is None else AnswerKey(kind, value)

    return key


def _safely(read: Callable[[str], str | None], text: str) -> str | None:
    """A reader's value; an answer a reader cannot read (whatever the reason) is no value.
    Nothing an answer holds may raise out of a vote or a score."""
    try:
        return read(text)
    except (ValueError, ArithmeticError, LookupError, RecursionError, OverflowError):
        return None


def _text_key(text: str) -> AnswerKey | None:
    value = _text(text)
    return None if value is None else AnswerKey("text", value)


def _auto(dates: DateReader) -> KeyFunction:
    # whole-answer readers, in order (json is tried first, on the raw text)
    readers: tuple[tuple[str, Callable[[str], str | None]], ...] = (
        ("boolean", lambda t: _boolean(t, strict=True)),
        ("choice", lambda t: _choice(t, strict=True)),
        ("date", lambda t: dates.value(_answer_part(t), strict=True)),
        ("number", _whole_number),
    )

    def key(text: str) -> AnswerKey | None:
        cleaned = _clean(text)
        if not cleaned or cleaned.casefold() in MISSING_ANSWERS:
            return None
        if len(text) > MAX_TYPED_CHARS:
            return _text_key(text)
        if text.lstrip().startswith(("{", "[", "```")):
            value = _safely(lambda t: _json(t, strict=True), text)
            if value is not None:
                return AnswerKey("json", value)
        for kind, read in readers:
            value = _safely(read, cleaned)
            if value is not None:
                return AnswerKey(kind, value)
        return _text_key(text)

    return key


def answer_type(
    spec: str | KeyFunction | AnswerType = "auto",
    *,
    date_order: str = "mdy",
    date_formats: Sequence[str] = (),
) -> AnswerType:
    """The :class:`AnswerType` a config names, or a user's key function wrapped as one.

    ``spec``: one of ``"auto"``, ``"number"``, ``"date"``, ``"choice"``, ``"boolean"``,
    ``"text"``, ``"json"``, or a callable ``key(answer) -> Hashable | None``. Raises
    :class:`AnswerTypeError` (a ValueError naming the ``field``) for an unknown name, an
    unknown ``date_order`` or a ``date_formats`` entry that cannot read back a date.
    """
    if isinstance(spec, AnswerType):
        return spec
    if date_order not in DATE_ORDERS:
        raise AnswerTypeError(
            f"unknown date_order {date_order!r} (known: {', '.join(DATE_ORDERS)}): "
            "mdy reads 05/01/2021 as May 1st, dmy as January 5th, strict as no answer",
            field="date_order",
        )
    if isinstance(date_formats, str) or not isinstance(date_formats, Sequence):
        raise AnswerTypeError(
            "expected a list of strptime formats such as ['%d.%m.%Y']", field="date_formats"
        )
    for i, fmt in enumerate(date_formats):
        try:
            check_date_format(fmt)
        except ValueError as exc:
            raise AnswerTypeError(str(exc), field=f"date_formats[{i}]") from None
    if callable(spec):
        name = getattr(spec, "__name__", type(spec).__name__)
        return AnswerType(name, spec, date_order=date_order)
    if not isinstance(spec, str) or spec not in ANSWER_TYPES:
        raise AnswerTypeError(
            f"unknown answer type {spec!r} (known: {', '.join(ANSWER_TYPES)}, "
            "or a callable key(answer))",
            field="answer_type",
        )
    dates = DateReader(date_order, date_formats)
    readers: dict[str, KeyFunction] = {
        "auto": _auto(dates),
        "number": _typed("number", number_value),
        "date": _typed("date", lambda t: dates.value(_answer_part(t), strict=False)),
        "choice": _typed("choice", lambda t: _choice(t, strict=False)),
        "boolean": _typed("boolean", lambda t: _boolean(t, strict=False)),
        "text": _text_key,
        "json": _typed("json", lambda t: _json(t, strict=False)),
    }
    return AnswerType(spec, readers[spec], date_order=date_order)
