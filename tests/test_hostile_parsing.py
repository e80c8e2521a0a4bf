"""Every built-in parser is linear in the answer's length: hostile families at 200,000
characters (99,000 for the typed answer readers, which read up to ``MAX_TYPED_CHARS``).

No timing is asserted: each family ran for minutes to hours on the old patterns (cubic in a
run of blanks, quadratic in a run of digits), so the per-test timeout fails them there.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade import Completion, answer_type
from cascade._answers import ANSWER_TYPES, MAX_TYPED_CHARS
from cascade.validators import extract_json, get_extractor, normalize, parse_confidence
from cascade.validators._extract import single_number
from cascade.validators.confidence import ConfidenceValidator

N = 200_000

FAMILIES: dict[str, Callable[[int], str]] = {
    "confidence then blanks": lambda n: "confidence" + " " * n + "x",
    "confidence is then blanks": lambda n: "Confidence is" + " \t" * (n // 2) + "x",
    "confidence, repeated": lambda n: "confidence " * (n // 11),
    "digits": lambda n: "1" * n,
    "digits then percent blanks": lambda n: "9" * (n // 2) + " " * (n // 2) + "% x",
    "dotted digits": lambda n: "1." * (n // 2),
    "grouped digits": lambda n: "1,000" * (n // 5) + "x",
    "exponent then letters": lambda n: "1e" + "1" * n + "x",
    "fence then blanks": lambda n: "```" + " " * n + "x",
    "fence json then blanks": lambda n: "```json" + " \t" * (n // 2) + "x",
    "unclosed fences": lambda n: "```\n{" * (n // 5),
    "answer then newlines": lambda n: "answer:" + "\n" * n,
    "answer then blanks": lambda n: "The answer is" + " " * n,
    "the then blanks": lambda n: "the" + " " * n + "x",
    "final answer, repeated": lambda n: "final answer = " * (n // 15),
    "hashes then newlines": lambda n: "####" + "\n" * n,
    "month then blanks": lambda n: "May" + " " * n + "x",
    "day then blanks": lambda n: "1st" + " " * n + "of x",
    "numeric dates": lambda n: "05/01/" * (n // 6),
    "open brackets": lambda n: "[" * n,
    "open braces": lambda n: '{"a":' * (n // 5),
    "brackets in prose": lambda n: "{x} [y] " * (n // 8),
    "option letters": lambda n: "(A) " * (n // 4),
    "equals signs": lambda n: "= " * (n // 2) + "x",
}


def _readers(n: int) -> list[Callable[[str], object]]:
    def extractor(name: str) -> Callable[[str], object]:
        extract = get_extractor(name)
        return lambda text: extract(Completion(text=text, provider="p", model="m"))

    confidence = ConfidenceValidator(min=0.5)
    completion = lambda text: Completion(text=text, provider="p", model="m")  # noqa: E731
    return [
        parse_confidence,
        _quiet(extract_json),
        lambda text: confidence.confidence(completion(text)),
        lambda text: confidence.confidence(completion('{"confidence": "0.5' + text + '"}')),
        *(extractor(name) for name in ("auto", "last_number", "hashes", "answer_is")),
        extractor("json:a.b"),
        normalize,
        single_number,
    ]


def _typed_readers() -> list[Callable[[str], object]]:
    types = [answer_type(name) for name in ANSWER_TYPES]
    types += [answer_type("date", date_order="strict"), answer_type("auto", date_order="dmy")]
    return [t.key for t in types]


def _quiet(parse: Callable[[str], object]) -> Callable[[str], object]:
    def read(text: str) -> object:
        try:
            return parse(text)
        except ValueError:
            return None

    return read


@pytest.mark.timeout(60)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hostile_families_are_linear(family: str) -> None:
    text = FAMILIES[family](N)
    for read in _readers(N):
        read(text)
    typed = FAMILIES[family](MAX_TYPED_CHARS - 1000)
    for key in _typed_readers():
        key(typed)


ATOMS = [" ", "\n", "\t", "1", "9", ".", ",", "e", "%", "/", ":", "=", "(", ")", "[", "]",
         "{", "}", '"', "*", "`", "```", "####", "confidence", "answer", "the ", "final ",
         "is ", "of ", "percent", "sure", "May ", "1st ", "05/01/2021", "json", "x"]  # fmt: skip


@pytest.mark.timeout(120)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(ATOMS), min_size=1, max_size=3),
    st.lists(st.sampled_from(ATOMS), min_size=0, max_size=2),
)
def test_repeated_atoms_are_linear(run: list[str], head: list[str]) -> None:
    # a short prefix, then one short unit repeated to 50,000 characters
    unit = "".join(run)
    text = "".join(head) + unit * (50_000 // len(unit)) + "x"
    for read in [*_readers(len(text)), *_typed_readers()]:
        read(text)


def test_deep_nesting_is_no_json_rather_than_a_crash() -> None:
    for text in ("[" * 100_000, "x " + "[" * 100_000, '{"a":' * 50_000):
        with pytest.raises(ValueError, match="JSON"):
            extract_json(text)
