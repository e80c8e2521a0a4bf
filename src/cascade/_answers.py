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

from collections.abc import Callable, Hashable, Sequence
from typing import Final, Literal, NamedTuple, get_args

from ._answer_dates import DATE_ORDERS, DateOrder, DateReader, check_date_format
from ._answer_readers import (
    MISSING_ANSWERS,
    answer_part,
    boolean,
    canonical_number,
    choice,
    clean,
    json_value,
    number_value,
    text_value,
    whole_number,
)

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
    value = text_value(text)
    return None if value is None else AnswerKey("text", value)


def _auto(dates: DateReader) -> KeyFunction:
    # whole-answer readers, in order (json is tried first, on the raw text)
    readers: tuple[tuple[str, Callable[[str], str | None]], ...] = (
        ("boolean", lambda t: boolean(t, strict=True)),
        ("choice", lambda t: choice(t, strict=True)),
        ("date", lambda t: dates.value(answer_part(t), strict=True)),
        ("number", whole_number),
    )

    def key(text: str) -> AnswerKey | None:
        cleaned = clean(text)
        if not cleaned or cleaned.casefold() in MISSING_ANSWERS:
            return None
        if len(text) > MAX_TYPED_CHARS:
            return _text_key(text)
        if text.lstrip().startswith(("{", "[", "```")):
            value = _safely(lambda t: json_value(t, strict=True), text)
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
        "date": _typed("date", lambda t: dates.value(answer_part(t), strict=False)),
        "choice": _typed("choice", lambda t: choice(t, strict=False)),
        "boolean": _typed("boolean", lambda t: boolean(t, strict=False)),
        "text": _text_key,
        "json": _typed("json", lambda t: json_value(t, strict=False)),
    }
    return AnswerType(spec, readers[spec], date_order=date_order)
