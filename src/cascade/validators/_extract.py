"""Final-answer extractors and normalisers (used by ``self_consistency`` and ``cascade eval``).

An extractor takes a completion and returns its final answer as a string, or None when it
finds none. Built-ins, named in config:

- ``"json:FIELD"`` (dotted path into the answer's JSON, ``json:result.total``);
- ``"last_number"``: the last number in the text;
- ``"regex:PATTERN"``: group 1 of the last match (the whole match if no group);
- ``"hashes"``: GSM8K's ``#### 42`` convention;
- ``"answer_is"``: "The answer is X" / "Final answer: X";
- ``"recorded"``: the answer a replay provider recorded apart from the text;
- ``"auto"``: recorded, else ``####``, else "the answer is", else the last number.

``normalize`` makes equal answers compare equal: numbers lose ``$``, ``,``, ``%``, units and
float noise (``"$1,000.00"``, ``"1000"`` and ``"999.9999999999"`` agree); other text is
whitespace-collapsed and case-folded.

``single_number`` tells an answer that is one number from one that only contains numbers:
``self_consistency`` with ``single_number = true`` counts no vote for the others.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import regex

from .._answers import MISSING_ANSWERS, canonical_number
from .._types import Completion
from ._json_extract import extract_json
from ._offload import DEFAULT_TIME_LIMIT_S, Overrun

__all__ = [
    "Extractor",
    "JsonFieldExtractor",
    "RegexExtractor",
    "get_extractor",
    "normalize",
    "single_number",
]

Extractor = Callable[[Completion], str | None]

# The regex engine: it lets go of the GIL while it scans (``concurrent=True``), so a big
# answer's scan in a thread leaves the event loop running.
_NUMBER = regex.compile(
    r"(?<![\w.])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+\b)?"
)
_HASHES = regex.compile(r"####\s*([^\n]+)")
# Whitespace runs are possessive (``\s*+``): "answer:" followed by 20,000 newlines used to
# backtrack over every split of the run between two ``\s*`` (seconds of CPU); now every
# pattern here is linear in the text. (An "answer:" with only blanks after it on its line
# is no longer read as an empty answer that hides an earlier one.)
_ANSWER_IS = regex.compile(
    r"(?:the\s++(?:final\s++)?answer\s++is|final\s++answer\s*+[:=]|answer\s*+[:=])"
    r"\s*+:?\s*+([^\n]+)",
    regex.IGNORECASE,
)


def _numbers(text: str) -> list[str]:
    found: list[str] = _NUMBER.findall(text, concurrent=True)
    return found


def last_number(completion: Completion) -> str | None:
    found = _numbers(completion.text)
    return found[-1] if found else None


def hashes(completion: Completion) -> str | None:
    found: list[str] = _HASHES.findall(completion.text, concurrent=True)
    return found[-1].strip() if found else None


def answer_is(completion: Completion) -> str | None:
    found: list[str] = _ANSWER_IS.findall(completion.text, concurrent=True)
    return found[-1].strip().rstrip(".") if found else None


def recorded(completion: Completion) -> str | None:
    return completion.answer


def auto(completion: Completion) -> str | None:
    for extract in (recorded, hashes, answer_is, last_number):
        value = extract(completion)
        if value is not None and value.strip():
            return value
    return None


class JsonFieldExtractor:
    """``json:FIELD``: the value at a dotted path (keys, list indexes) of the answer's JSON,
    as a string."""

    def __init__(self, path: str) -> None:
        self.keys = [k for k in path.split(".") if k]

    def __repr__(self) -> str:
        return f"<JsonFieldExtractor {'.'.join(self.keys)!r}>"

    def __call__(self, completion: Completion) -> str | None:
        try:
            value: Any = extract_json(completion.text)
        except ValueError:
            return None
        for key in self.keys:
            if isinstance(value, dict) and key in value:
                value = value[key]
            elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
                value = value[int(key)]
            else:
                return None
        return None if value is None else str(value)


class RegexExtractor:
    """``regex:PATTERN``: group 1 of the last match (the whole match if no group).

    A user's pattern can be exponential (``(\\d+)+x``), so it runs on the ``regex`` engine
    with a time limit: :meth:`search` raises :class:`Overrun` when matching takes longer
    than ``time_limit_s``; called as an extractor (``cascade eval``), such an answer has no
    answer. ``self_consistency`` runs it in a worker thread, which the ``regex`` engine lets
    the event loop run beside (it releases the GIL while it matches).
    """

    __slots__ = ("_compiled", "pattern", "time_limit_s")

    def __init__(self, pattern: str, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S) -> None:
        self.pattern = pattern
        self.time_limit_s = time_limit_s
        self._compiled = regex.compile(pattern)

    def __repr__(self) -> str:
        return f"<RegexExtractor {self.pattern!r} time_limit_s={self.time_limit_s:g}>"

    def __call__(self, completion: Completion) -> str | None:
        try:
            return self.search(completion.text)
        except Overrun:
            return None

    def search(self, text: str) -> str | None:
        """The extracted answer in ``text``; Overrun past the time limit."""
        limit = self.time_limit_s
        deadline = time.monotonic() + limit
        what = f"extractor regex {self.pattern!r}"
        last = None
        try:
            # the engine's timeout bounds each match; the deadline bounds them all
            for m in self._compiled.finditer(text, concurrent=True, timeout=limit):
                last = m
                if time.monotonic() > deadline:
                    raise TimeoutError
        except TimeoutError:
            raise Overrun(what, limit_s=limit) from None
        if last is None:
            return None
        found: str = last.group(1) if self._compiled.groups else last.group(0)
        return found


_BUILTIN: dict[str, Extractor] = {
    "auto": auto,
    "last_number": last_number,
    "hashes": hashes,
    "answer_is": answer_is,
    "recorded": recorded,
}


def get_extractor(
    spec: str | Extractor, *, time_limit_s: float = DEFAULT_TIME_LIMIT_S
) -> Extractor:
    """The extractor a config string names, or ``spec`` itself when it is a callable.

    ``time_limit_s`` bounds a ``regex:PATTERN`` extractor's matching (see
    :class:`RegexExtractor`). Raises ValueError for an unknown name or a bad regular
    expression.
    """
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"expected an extractor name or a callable, got {type(spec).__name__}")
    if spec in _BUILTIN:
        return _BUILTIN[spec]
    kind, sep, arg = spec.partition(":")
    if sep and kind == "json" and arg:
        return JsonFieldExtractor(arg)
    if sep and kind == "regex" and arg:
        try:
            return RegexExtractor(arg, time_limit_s=time_limit_s)
        except regex.error as exc:
            raise ValueError(f"bad extractor regex {arg!r}: {exc}") from None
    known = ", ".join([*_BUILTIN, "json:FIELD", "regex:PATTERN"])
    raise ValueError(f"unknown extractor {spec!r} (known: {known})")


def normalize(value: str | None) -> str | None:
    """A canonical form for comparing answers; None for a missing or empty answer."""
    if value is None:
        return None
    text = " ".join(str(value).split())
    if not text or text.casefold() in MISSING_ANSWERS:
        return None
    # "5 * 3 = 15": the result follows the last "="; otherwise the last number is the
    # answer ("18 dollars", "$1,000.00", "60%", "9 eggs make $18").
    tail = text.rsplit("=", 1)[-1]
    numbers = _numbers(tail) or _numbers(text)
    if numbers:
        number = canonical_number(numbers[-1])
        if number is not None:
            return number
    return text.casefold().rstrip(".")


def single_number(value: str | None) -> str | None:
    """``value`` when it states one number as its result, else None.

    The result is what follows the last ``=`` (the whole value if there is none), and it
    must hold exactly one number: ``"$1,200"``, ``"18 eggs"``, ``"5 * 3 = 15"`` and
    ``"= $255 per month"`` do; an expression (``"40 + 60/speed"``, ``"3/4"``), a pair
    (``"(86, 42)"``, ``"86 glasses and 42 plates"``), a time (``"2:00"``), a sentence with
    several numbers, or no number at all do not. For numeric tasks, such an answer is a
    parse failure of the model's output, not a claim of one value: reading its last number
    as one would make unrelated answers agree by accident.
    """
    if value is None:
        return None
    result = str(value).rsplit("=", 1)[-1]
    return value if len(_numbers(result)) == 1 else None
