"""Answer types: when two answers are the same answer (``cascade.answer_type``).

Property tests generate answers from families whose truth is known independently (dates
as ``datetime.date``, letters, booleans, JSON values, times, versions, lists, phone
numbers, IDs, ranges, fractions) and check that ``auto`` calls two answers the same exactly
when their values are equal, across spellings and across families.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade import AnswerKey, AnswerType, AnswerTypeError, answer_type
from cascade.validators import normalize
from cascade.validators._extract import single_number

AUTO = answer_type("auto")
NUMBER = answer_type("number")

# -- what the issue asks, literally ----------------------------------------------------------


def test_different_dates_times_and_equal_letters() -> None:
    assert not AUTO.same("05/01/2021", "05/02/2021")
    assert not AUTO.same("3:30", "2:30")
    assert AUTO.same("(A)", "A")


@pytest.mark.parametrize(
    ("kind", "a", "b", "same"),
    [
        ("number", "$1,000.00", "1000", True),
        ("number", "60%", "60", True),
        ("number", "5 * 3 = 15", "15", True),
        ("number", "18 dollars", "$18", True),
        ("number", "86 glasses and 42 plates", "42", False),
        ("number", "3:30", "3:30", False),  # a time states no one number: no answer at all
        ("date", "05/01/2021", "2021-05-01", True),
        ("date", "May 1, 2021", "2021-05-01", True),
        ("date", "1st of May 2021", "05/01/2021", True),
        ("date", "Sat, May 1st 2021", "2021/05/01", True),
        ("date", "(A) 05/01/2021", "May 1, 2021", True),
        ("date", "05/01/2021", "05/02/2021", False),
        ("date", "02/30/2021", "02/30/2021", False),  # no such day: no answer
        ("choice", "B", "(B)", True),
        ("choice", "B)", "the answer is B", True),
        ("choice", "The answer is (b).", "[B]", True),
        ("choice", "Option C", "C.", True),
        ("choice", "(B) 05/01/2021", "B", True),
        ("choice", "the answer is a dog", "A", False),
        ("choice", "B", "C", False),
        ("boolean", "Yes", "true", True),
        ("boolean", "No.", "false", True),
        ("boolean", "Yes, because Paris is in France", "yes", True),
        ("boolean", "Not sure", "no", False),
        ("text", "  Paris. ", "paris", True),
        ("text", "New  York!", "new york", True),
        ("text", "Paris", "Parisian", False),
        ("text", "3:30", "2:30", False),
        ("json", '{"a": 1.0, "b": [1, 2]}', '{"b":[1,2],"a":1}', True),
        ("json", "```json\n[1e2]\n```", "[100]", True),
        ("json", '{"a": 1}', '{"a": 2}', False),
        ("json", '{"a": 1}', '{"a": "1"}', False),
        ("auto", "(A)", "a", True),
        ("auto", "$18", "18.0", True),
        ("auto", "2021-05-01", "May 1, 2021", True),
        ("auto", "the answer is yes", "Yes", True),
        ("auto", "18 dollars", "18", False),  # auto keeps units; use "number" for that
        ("auto", "1.2.3", "1.2.4", False),
        ("auto", "1/2", "0.5", False),
        ("auto", "1,2", "12", False),
        ("auto", "A", "a dog", False),
        ("auto", "[invalid]", "[invalid]", False),  # a missing answer agrees with nothing
    ],
)
def test_examples(kind: str, a: str, b: str, same: bool) -> None:
    t = answer_type(kind)
    assert t.same(a, b) is same
    assert t.same(b, a) is same


def test_date_order_is_configurable_and_strict_refuses_ambiguity() -> None:
    assert answer_type("date").key("05/01/2021") == AnswerKey("date", "2021-05-01")
    assert answer_type("date", date_order="dmy").key("05/01/2021") == AnswerKey(
        "date", "2021-01-05"
    )
    strict = answer_type("date", date_order="strict")
    assert strict.key("05/01/2021") is None  # May 1st or January 5th: no answer
    assert strict.key("05/05/2021") == AnswerKey("date", "2021-05-05")
    assert strict.key("25/01/2021") == AnswerKey("date", "2021-01-25")  # only one reading
    assert strict.key("2021-05-01") == AnswerKey("date", "2021-05-01")  # ISO is never ambiguous
    assert answer_type("date", date_formats=["%d.%m.%Y"]).key("17.05.2021") == AnswerKey(
        "date", "2021-05-17"
    )


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"spec": "dates"}, "answer_type"),
        ({"spec": 3}, "answer_type"),
        ({"date_order": "ymd"}, "date_order"),
        ({"date_formats": "%d.%m.%Y"}, "date_formats"),
        ({"date_formats": ["%d.%m.%Y", "%H:%M"]}, "date_formats[1]"),  # no date in it
        ({"date_formats": ["%Q"]}, "date_formats[0]"),  # not a directive
        ({"date_formats": [""]}, "date_formats[0]"),
        ({"date_formats": [3]}, "date_formats[0]"),
    ],
)
def test_bad_options_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    spec = kwargs.pop("spec", "auto")
    with pytest.raises(AnswerTypeError) as info:
        answer_type(spec, **kwargs)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_a_callable_is_the_users_key() -> None:
    def last_word(answer: str) -> str | None:
        words = answer.split()
        return words[-1].casefold() if words else None

    t = answer_type(last_word)
    assert isinstance(t, AnswerType) and t.name == "last_word"
    assert t.same("so: Paris", "PARIS") and not t.same("Paris", "Rome")
    assert t.key(None) is None and t.key("   ") is None
    assert answer_type(t) is t


def test_keys_are_readable() -> None:
    key = AUTO.key("(b)")
    assert key == AnswerKey("choice", "B") and str(key) == "B"
    assert repr(AUTO) == "<AnswerType auto date_order=mdy>"
    assert repr(answer_type("text")) == "<AnswerType text>"


# -- families with known truth ------------------------------------------------------------

_MONTH_NAMES = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]  # fmt: skip

dates = st.dates(min_value=date(1000, 1, 1), max_value=date(9999, 12, 31))


def _render_date(d: date, style: int) -> str:
    month = _MONTH_NAMES[d.month - 1]
    return [
        f"{d.month:02d}/{d.day:02d}/{d.year}",
        f"{d.month}/{d.day}/{d.year}",
        d.isoformat(),
        f"{month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{month[:3]} {d.day} {d.year}",
        f"{d.year}/{d.month:02d}/{d.day:02d}",
    ][style]


styles = st.integers(min_value=0, max_value=6)


@given(dates, dates, styles, styles)
def test_dates_agree_exactly_when_they_are_the_same_day(
    d1: date, d2: date, s1: int, s2: int
) -> None:
    a, b = _render_date(d1, s1), _render_date(d2, s2)
    assert AUTO.same(a, b) is (d1 == d2)
    assert answer_type("date").same(a, b) is (d1 == d2)


@given(dates, dates, styles, styles)
def test_dmy_dates_read_day_first(d1: date, d2: date, s1: int, s2: int) -> None:
    def dmy(d: date, style: int) -> str:
        return f"{d.day:02d}/{d.month:02d}/{d.year}" if style < 2 else _render_date(d, style)

    t = answer_type("date", date_order="dmy")
    assert t.same(dmy(d1, s1), dmy(d2, s2)) is (d1 == d2)


letters = st.sampled_from("ABCDEFGHIJ")
_LETTER_STYLES: list[Callable[[str], str]] = [
    lambda c: c,
    lambda c: f"({c})",
    lambda c: f"{c})",
    lambda c: f"{c}.",
    lambda c: f"[{c}]",
    lambda c: f"({c.lower()})",
    lambda c: f"The answer is ({c.lower()}).",
    lambda c: f"the answer is {c}",
    lambda c: f"Answer: {c}",
    lambda c: f"Option {c}",
    lambda c: f"**{c}**",
]
letter_styles = st.integers(min_value=0, max_value=len(_LETTER_STYLES) - 1)


@given(letters, letters, letter_styles, letter_styles)
def test_letters_agree_exactly_when_they_are_the_same_option(
    c1: str, c2: str, s1: int, s2: int
) -> None:
    a, b = _LETTER_STYLES[s1](c1), _LETTER_STYLES[s2](c2)
    assert AUTO.same(a, b) is (c1 == c2)
    assert answer_type("choice").same(a, b) is (c1 == c2)


_BOOL_WORDS = {True: ["yes", "Yes.", "TRUE", "true", "The answer is yes"], False: ["no", "No.", "False", "the answer is no"]}  # fmt: skip


@given(st.booleans(), st.booleans(), st.integers(0, 3), st.integers(0, 3))
def test_booleans_agree_exactly_when_equal(b1: bool, b2: bool, i: int, j: int) -> None:
    a, b = _BOOL_WORDS[b1][i], _BOOL_WORDS[b2][j]
    assert AUTO.same(a, b) is (b1 == b2)
    assert answer_type("boolean").same(a, b) is (b1 == b2)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**12), max_value=10**12)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip


def _canonical_equal(x: Any, y: Any) -> bool:
    """JSON equality that tells booleans from numbers (Python's 1 == True would not)."""
    if isinstance(x, bool) or isinstance(y, bool) or x is None or y is None:
        return type(x) is type(y) and x == y
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_canonical_equal(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(map(_canonical_equal, x, y))
    return type(x) is type(y) and x == y


@given(json_values, json_values, st.booleans(), st.booleans())
def test_json_agrees_exactly_when_the_values_are_equal(
    v1: Any, v2: Any, indent1: bool, indent2: bool
) -> None:
    a = json.dumps(v1, indent=2 if indent1 else None, sort_keys=not indent1)
    b = json.dumps(v2, indent=2 if indent2 else None)
    assert answer_type("json").same(a, b) is _canonical_equal(v1, v2)
    if isinstance(v1, dict | list) and isinstance(v2, dict | list):
        assert AUTO.same(a, b) is _canonical_equal(v1, v2)


@given(st.integers(-(10**9), 10**9), st.sampled_from(["{}", "{}.0", "{}.00", "{}e0"]))
def test_json_number_formatting_does_not_matter(n: int, form: str) -> None:
    assert answer_type("json").same(f'{{"x": {n}}}', f'{{"x": {form.format(n)}}}')


# Answers that are not one number, a date, a letter, a boolean or JSON: auto compares
# them as text, so two of them agree only when they are the same text.
def _rendered(strategy: st.SearchStrategy[Any], render: Callable[[Any], str]) -> Any:
    return strategy.map(lambda v: (render(v), v))


small = st.integers(min_value=0, max_value=999)
other_families = st.one_of(
    _rendered(st.tuples(st.integers(0, 23), st.integers(0, 59)), lambda t: f"{t[0]}:{t[1]:02d}"),
    _rendered(st.tuples(small, st.integers(1, 99)), lambda t: f"{t[0]}/{t[1]}"),  # fractions
    _rendered(st.tuples(small, small), lambda t: f"{t[0]}-{t[1]}"),  # ranges
    _rendered(st.tuples(small, small, small), lambda t: ".".join(map(str, t))),  # versions
    _rendered(st.lists(small, min_size=2, max_size=4), lambda v: ", ".join(map(str, v))),
    _rendered(st.tuples(st.integers(200, 999), st.integers(0, 9999)), lambda t: f"{t[0]}-{t[1]:04d}"),  # phone
    _rendered(st.tuples(st.sampled_from(["ID", "INV", "X"]), small), lambda t: f"{t[0]}-{t[1]}"),
    _rendered(st.text("abcdefghijklmnopqrstuvwxyz ", min_size=2, max_size=12).filter(
        lambda s: s.strip() not in ("yes", "no", "true", "false", "none", "null", "nan")
        and len(s.strip()) > 1
    ), str.strip),  # words
)  # fmt: skip


@given(other_families, other_families)
def test_auto_never_makes_two_different_non_numeric_answers_equal(
    a: tuple[str, Any], b: tuple[str, Any]
) -> None:
    (text_a, _), (text_b, _) = a, b
    same_text = " ".join(text_a.split()).casefold() == " ".join(text_b.split()).casefold()
    assert AUTO.same(text_a, text_b) is same_text


any_family = st.one_of(
    dates.flatmap(lambda d: styles.map(lambda s: ("date", _render_date(d, s), d))),
    letters.flatmap(lambda c: letter_styles.map(lambda s: ("choice", _LETTER_STYLES[s](c), c))),
    st.booleans().map(lambda v: ("boolean", _BOOL_WORDS[v][0], v)),
    other_families.map(lambda t: ("text", t[0], " ".join(t[0].split()).casefold())),
    st.integers(-(10**6), 10**6).map(lambda n: ("number", f"{n:,}", n)),
)


@given(any_family, any_family)
def test_answers_of_different_kinds_never_agree(
    a: tuple[str, str, Any], b: tuple[str, str, Any]
) -> None:
    if a[0] != b[0]:
        assert not AUTO.same(a[1], b[1])
    else:
        assert AUTO.same(a[1], b[1]) is (a[2] == b[2])


@given(st.text(max_size=40), st.text(max_size=40))
def test_auto_agreement_is_an_equivalence_of_keys(a: str, b: str) -> None:
    ka, kb = AUTO.key(a), AUTO.key(b)
    assert AUTO.same(a, b) is (ka is not None and ka == kb)
    if AUTO.same(a, b) and isinstance(ka, AnswerKey) and ka.kind == "text":
        assert " ".join(a.split()).casefold().rstrip(".!?,;: ") == ka.value


# -- number keeps GSM8K's figures -----------------------------------------------------------


@given(st.integers(min_value=-(10**12), max_value=10**12))
def test_number_reads_every_dress_of_one_number(n: int) -> None:
    plain = str(n)
    for dressed in (f"{n:,}", f"{n}.00", f"{n} dollars", f"5 * 3 = {n}", f"{n}%"):
        assert NUMBER.key(dressed) == AnswerKey("number", plain)
    if n >= 0:
        assert NUMBER.key(f"${n:,}") == AnswerKey("number", plain)
        assert AUTO.key(f"${n:,}") == AnswerKey("number", plain)


@given(st.text(alphabet="0123456789$=+-*/ abc%", max_size=30))
def test_number_is_what_single_number_votes_were(text: str) -> None:
    """What the number type reads, the old ``normalize(single_number(x))`` vote read too;
    it reads nothing where a number runs on into a longer token ("1.2.3", "1,0000"), and
    the GSM8K figures that depend on it are checked in test_datasets.py."""
    old = normalize(single_number(text))
    new = NUMBER.key(text)
    if new is not None:
        assert new.value == old  # type: ignore[union-attr]


# -- hostile answers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile",
    [
        "1" * 100_000,
        "answer is " + " " * 50_000 + "x",
        "[" * 50_000,
        "{" * 20_000 + "}" * 20_000,
        "(" * 50_000,
        "05/" * 30_000,
        "May " * 25_000,
        "```" + " " * 50_000 + "x",
        "1," * 50_000,
        "=" * 100_000 + "1",
    ],
)
@pytest.mark.parametrize("kind", ["auto", "number", "date", "choice", "boolean", "text", "json"])
def test_hostile_answers_are_read_at_all(hostile: str, kind: str) -> None:
    # No time is asserted (speed belongs in benchmarks): a quadratic parse of these
    # 300,000 characters runs for minutes and trips the suite's per-test timeout.
    t = answer_type(kind)
    t.key(hostile)
    t.key(hostile * 3)


def test_deep_json_is_no_answer_under_json() -> None:
    deep = "[" * 200 + "]" * 200
    assert answer_type("json").key(deep) is None
    assert answer_type("json").key("[" * 5 + "]" * 5) == AnswerKey("json", "[[[[[]]]]]")


@pytest.mark.parametrize(
    "text",
    ["Apr\u0131l 5, 2021", "Apr\u0130l 5, 2021", "[1e999999999999999999999]", "1e999999999999999999999",
     '{"a": 1e99999999999}', "1" * 30 + "e5", "10000000000000000000000"],
)  # fmt: skip
@pytest.mark.parametrize("kind", ["auto", "number", "date", "choice", "boolean", "text", "json"])
def test_nothing_an_answer_holds_raises(text: str, kind: str) -> None:
    answer_type(kind).key(text)


@pytest.mark.parametrize(
    ("kind", "a", "b"),
    [
        ("auto", "007", "7"),  # an ID, not a number
        ("auto", "02134", "2134"),
        ("auto", "3!", "3"),  # a factorial
        ("number", "1.2.3", "1.2"),
        ("number", "192.168.1.1", "192.168.9.9"),
        ("number", "0x1F", "0x2A"),
        ("number", "10²", "10³"),
        ("number", "1_000", "1"),
        ("number", "\u22125", "5"),  # the typographic minus keeps its sign
    ],
)
def test_review_findings_do_not_agree(kind: str, a: str, b: str) -> None:
    assert not answer_type(kind).same(a, b)


def test_review_findings_that_agree() -> None:
    assert AUTO.same('```json\n{"a": 1}\n```', '{"a":1}')
    assert NUMBER.same("\u22125", "-5")
    dotted = answer_type("date", date_formats=["%d.%m.%Y"])
    assert (
        dotted.key("Answer: 05.01.2021")
        == dotted.key("05.01.2021")
        == AnswerKey("date", "2021-01-05")
    )
    with pytest.raises(AnswerTypeError) as info:
        answer_type("date", date_formats=["%Y%m%d%Y"])  # a directive twice
    assert info.value.field == "date_formats[0]"
