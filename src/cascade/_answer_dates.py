"""Dates in answers: the forms ``answer_type("date")`` (and ``auto``) read, and how.

Numeric dates (``05/01/2021``, with ``/``, ``-`` or ``.``) are read in ``date_order``:
``mdy`` (May 1st), ``dmy`` (January 5th) or ``strict`` (no date when day and month could
be swapped); ISO (``2021-05-01``) and month names (``May 1, 2021``, ``1st of May 2021``,
English, ASCII only) are never ambiguous; a user's strptime ``formats`` are tried first.
Every form is a regular expression without nested repetition: linear in the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Final, Literal, get_args

__all__ = ["DATE_ORDERS", "DateOrder", "DateReader", "check_date_format"]

DateOrder = Literal["mdy", "dmy", "strict"]
DATE_ORDERS: Final[tuple[str, ...]] = get_args(DateOrder)

_MONTHS = {
    name: i
    for i, names in enumerate(
        (
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ),
        1,
    )
    for name in names
}
_MONTH = r"(" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_DAY = r"(\d{1,2})(?:st|nd|rd|th)?"
_ISO = re.compile(r"(?<![\d/.-])(\d{4})([-/.])(\d{1,2})\2(\d{1,2})(?![\d/.-])")
_NUMERIC = re.compile(r"(?<![\d/.-])(\d{1,2})([-/.])(\d{1,2})\2(\d{4})(?![\d/.-])")
_ASCII_NOCASE = re.IGNORECASE | re.ASCII  # dotless or dotted i never folds to i
_MONTH_FIRST = re.compile(r"\b" + _MONTH + r"\s+" + _DAY + r",?\s+(\d{4})\b", _ASCII_NOCASE)
_DAY_FIRST = re.compile(r"\b" + _DAY + r"\s+(?:of\s+)?" + _MONTH + r",?\s+(\d{4})\b", _ASCII_NOCASE)


def _date_of(y: int, m: int, d: int) -> str | None:
    try:
        return date(y, m, d).isoformat()
    except ValueError:
        return None


def _iso(m: re.Match[str], order: str) -> str | None:
    return _date_of(int(m[1]), int(m[3]), int(m[4]))


def _numeric(m: re.Match[str], order: str) -> str | None:
    a, b, year = int(m[1]), int(m[3]), int(m[4])
    if order == "strict":
        if a != b and a <= 12 and b <= 12:
            return None  # either could be the month
        order = "dmy" if a > 12 else "mdy"  # the only reading there is
    month, day = (b, a) if order == "dmy" else (a, b)
    return _date_of(year, month, day)


def _month_first(m: re.Match[str], order: str) -> str | None:
    return _date_of(int(m[3]), _MONTHS.get(m[1].lower(), 0), int(m[2]))


def _day_first(m: re.Match[str], order: str) -> str | None:
    return _date_of(int(m[3]), _MONTHS.get(m[2].lower(), 0), int(m[1]))


_DATE_FORMS: tuple[tuple[re.Pattern[str], Callable[[re.Match[str], str], str | None]], ...] = (
    (_ISO, _iso),
    (_NUMERIC, _numeric),
    (_MONTH_FIRST, _month_first),
    (_DAY_FIRST, _day_first),
)


class DateReader:
    """Date parsing under one day/month order and a user's extra formats."""

    __slots__ = ("formats", "order")

    def __init__(self, order: str, formats: Sequence[str]) -> None:
        self.order = order
        self.formats = tuple(formats)

    def value(self, s: str, *, strict: bool) -> str | None:
        """The ISO date ``s`` states: all of ``s`` with ``strict``, else the one date
        written in it (however often). ``s`` is the answer proper (see ``_answers``)."""
        for fmt in self.formats:
            try:
                return datetime.strptime(s, fmt).date().isoformat()
            except ValueError:
                continue
        if strict:
            for form, read in _DATE_FORMS:
                m = form.fullmatch(s)
                if m is not None:
                    return read(m, self.order)
            return None
        values = {read(m, self.order) for form, read in _DATE_FORMS for m in form.finditer(s)}
        values.discard(None)
        return values.pop() if len(values) == 1 else None  # one date, however often written


def check_date_format(fmt: object) -> None:
    """Raise ValueError unless ``fmt`` is a strptime format that reads back a date."""
    if not isinstance(fmt, str) or not fmt.strip():
        raise ValueError("expected a strptime format such as '%d.%m.%Y'")
    day = date(2021, 5, 17)
    try:
        shown = day.strftime(fmt)
        back = datetime.strptime(shown, fmt).date()
    except (ValueError, re.error) as exc:
        raise ValueError(f"date format {fmt!r} cannot be parsed: {exc}") from None
    if back != day:
        raise ValueError(
            f"date format {fmt!r} does not name a whole date (day, month and year): "
            f"{day.isoformat()} reads back as {back.isoformat()}"
        )
