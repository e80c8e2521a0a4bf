"""self_consistency over loopback HTTP, its early-stop arithmetic, extractors, scored mode,
and early rejection on the stream."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

import cascade
from cascade import Cascade, Completion, ConfigError
from cascade.testing import FakeOpenAIServer, FakeRequest, Reply, Responder
from cascade.validators import get_extractor, normalize
from cascade.validators._extract import single_number
from cascade.validators.consistency import next_batch, votes_needed

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

# -- the early-stop arithmetic ------------------------------------------------------------


def _sequential(votes: list[str | None], samples: int, needed: int) -> tuple[int, bool]:
    """One sample at a time, stopping at the first decided point: the reference."""
    counts: Counter[str] = Counter()
    for drawn, vote in enumerate(votes[:samples], 1):
        if vote is not None:
            counts[vote] += 1
        top = max(counts.values(), default=0)
        if top >= needed or top + samples - drawn < needed:
            return drawn, top >= needed
    return samples, max(counts.values(), default=0) >= needed


def _batched(votes: list[str | None], samples: int, needed: int) -> tuple[int, bool]:
    counts: Counter[str] = Counter()
    drawn = 0
    while True:
        top = max(counts.values(), default=0)
        batch = next_batch(top, drawn, samples, needed)
        if batch == 0:
            return drawn, top >= needed
        for vote in votes[drawn : drawn + batch]:
            if vote is not None:
                counts[vote] += 1
        drawn += batch


@given(
    st.integers(min_value=1, max_value=9).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(min_value=1, max_value=n),
            st.lists(st.sampled_from(["a", "b", "c", None]), min_size=n, max_size=n),
        )
    )
)
def test_batches_draw_exactly_what_one_at_a_time_draws(
    case: tuple[int, int, list[str | None]],
) -> None:
    samples, needed, votes = case
    assert _batched(votes, samples, needed) == _sequential(votes, samples, needed)


def test_votes_needed() -> None:
    assert votes_needed(5, 0.6) == 3  # a 3-of-5 vote
    assert votes_needed(4, 0.75) == 3
    assert votes_needed(2, 1.0) == 2
    assert votes_needed(3, 0.5) == 2
    assert votes_needed(5, 0.01) == 1


def test_next_batch_examples() -> None:
    assert next_batch(top=1, drawn=1, samples=5, needed=3) == 2  # two more could settle it
    assert next_batch(top=1, drawn=2, samples=4, needed=3) == 1  # one miss decides it: one
    assert next_batch(top=3, drawn=3, samples=5, needed=3) == 0  # agreement reached
    assert next_batch(top=1, drawn=3, samples=4, needed=3) == 0  # no longer reachable


# -- extractors and normalisation ---------------------------------------------------------


def c(text: str, answer: str | None = None) -> Completion:
    return Completion(text=text, provider="p", model="m", answer=answer)


@given(st.integers(min_value=-(10**9), max_value=10**9))
def test_numbers_normalise_whatever_their_dress(n: int) -> None:
    plain = normalize(str(n))
    assert plain == str(n)
    assert normalize(f"{n:,}") == plain
    assert normalize(f"{n}.00") == plain
    assert normalize(f"{n} dollars") == plain
    if n >= 0:
        assert normalize(f"${n:,}") == plain


@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).map(lambda f: round(f, 3)))
def test_float_noise_is_ignored(f: float) -> None:
    assert normalize(repr(f + 1e-10)) == normalize(repr(f))


@given(st.text(alphabet="abcXYZ \t\n", min_size=1, max_size=20))
def test_text_normalisation_is_idempotent_and_case_blind(s: str) -> None:
    once = normalize(s)
    assert normalize(once) == once
    assert normalize(s.upper()) == normalize(s.lower())


def test_missing_markers() -> None:
    assert normalize(None) is None
    assert normalize("  ") is None
    assert normalize("[invalid]") is None


@pytest.mark.parametrize(
    ("spec", "text", "answer", "value"),
    [
        ("auto", "so 9*2 = 18\n#### 18", None, "18"),
        ("auto", "Thus the answer is $1,200.", None, "$1,200"),
        ("auto", "whatever 7", "$18", "$18"),
        ("auto", "It is 3, then 4, finally 5.", None, "5"),
        ("hashes", "#### 42", None, "42"),
        ("answer_is", "The final answer is Paris.", None, "Paris"),
        ("last_number", "a 1 b 2.5 c", None, "2.5"),
        ("json:result.total", 'ok {"result": {"total": 12.5}}', None, "12.5"),
        ("json:items.1", '{"items": ["a", "b"]}', None, "b"),
        ("regex:ANS=(\\w+)", "ANS=x then ANS=y", None, "y"),
        ("recorded", "text", None, None),
    ],
)
def test_extractors(spec: str, text: str, answer: str | None, value: str | None) -> None:
    assert get_extractor(spec)(c(text, answer)) == value


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("$1,200", True),
        ("18 eggs", True),
        ("-3.5", True),
        ("5 * 3 = 15", True),  # the result follows the last "="
        ("$765 / 3 months = $255 per month", True),
        ("(86, 42)", False),  # a pair
        ("86 glasses and 42 plates", False),
        ("40.0 + 60/speed_beach", False),  # an expression
        ("3/4", False),
        ("2:00", False),  # a time
        ("x = 2 * 3", False),
        ("[invalid]", False),  # no number at all
        ("", False),
    ],
)
def test_single_number(raw: str, kept: bool) -> None:
    assert single_number(raw) == (raw if kept else None)


def test_single_number_of_nothing() -> None:
    assert single_number(None) is None


@given(st.integers(min_value=-(10**9), max_value=10**9), st.integers(0, 10**6))
def test_single_number_keeps_numbers_and_drops_pairs(n: int, m: int) -> None:
    for dressed in (str(n), f"{n:,}", f"{n} dollars", f"{m} + {m} = {n}"):
        assert normalize(single_number(dressed)) == str(n)
    assert single_number(f"({n}, {m})") is None
    assert single_number(f"{n} apples and {m} pears") is None


def test_bad_extractors() -> None:
    with pytest.raises(ValueError, match="unknown extractor"):
        get_extractor("nope")
    with pytest.raises(ValueError, match="bad extractor regex"):
        get_extractor("regex:(")
    assert get_extractor(lambda comp: "x")(c("y")) == "x"


# -- end to end over loopback -------------------------------------------------------------

VARIANTS = [{"name": n, "system": f"variant {n}"} for n in ("A", "B", "C", "D", "E")]


def by_variant(answers: dict[str, str]) -> Responder:
    def respond(request: FakeRequest) -> Reply:
        system = next(m["content"] for m in request.messages if m["role"] == "system")
        variant = system.removeprefix("variant ")
        return Reply(text=f"Reasoning... The answer is {answers[variant]}.",
                     input_tokens=100, output_tokens=10)  # fmt: skip

    return respond


def sc_config(url: str, *, samples: int, agreement: float, **extra: object) -> dict[str, object]:
    small = tier("small", provider("s", url, "small"),
                 validators=[{"name": "self_consistency", "samples": samples,
                              "min_agreement": agreement, **extra}])  # fmt: skip
    small["variants"] = VARIANTS
    return {"tiers": [small, tier("large", provider("l", url, "large"))]}


async def test_agreement_stops_early_and_costs_every_sample(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.respond(
        "small", by_variant({"A": "$1,000", "B": "1000.0", "C": "7", "D": "7", "E": "7"})
    )
    async with Cascade.from_dict(sc_config(openai_server.url, samples=5, agreement=0.4)) as cc:
        result = await cc.run(messages=USER)
    # 2 of 5 needed: A and B agree (after normalisation) -> no third sample drawn
    assert openai_server.request_count == 2
    assert result.tier == 1 and result.validated and result.parsed == "1000"
    (attempt,) = result.attempts
    assert len(attempt.samples) == 1 and attempt.samples[0].variant == "B"
    assert result.variant == "A" and "$1,000" in result.text
    # 2 calls x (100 input at $1/M + 10 output at $2/M)
    assert result.cost_usd == pytest.approx(2 * 120e-6)
    assert attempt.cost_usd == pytest.approx(result.cost_usd)
    assert result.usage.input_tokens == 200
    (verdict,) = attempt.verdicts
    assert verdict.score == 1.0 and "2 of 2 samples agree on '1000'" in verdict.reason


async def test_majority_among_variants(openai_server: FakeOpenAIServer) -> None:
    openai_server.respond("small", by_variant({"A": "3", "B": "5", "C": "5", "D": "5", "E": "9"}))
    async with Cascade.from_dict(sc_config(openai_server.url, samples=5, agreement=0.6)) as cc:
        result = await cc.run(messages=USER)
    assert result.validated and result.parsed == "5"
    assert result.variant == "B"  # the result text is the first sample carrying the majority
    assert openai_server.request_count == 4  # A, then B+C together, then D settles it


async def test_unreachable_agreement_stops_and_escalates(openai_server: FakeOpenAIServer) -> None:
    openai_server.respond("small", by_variant({"A": "1", "B": "2", "C": "3", "D": "4", "E": "5"}))
    openai_server.script("large", "The answer is 42.")
    async with Cascade.from_dict(sc_config(openai_server.url, samples=5, agreement=0.8)) as cc:
        result = await cc.run(messages=USER)
    # 4 of 5 needed: after A, B and C all differ it is out of reach (D and E are not drawn)
    assert [a.tier for a in result.attempts] == [1, 2]
    first = result.attempts[0]
    assert first.outcome == "rejected" and len(first.samples) == 2
    assert "needs 4 of 5" in first.verdicts[0].reason
    assert result.tier == 2 and result.cost_usd == pytest.approx(
        3 * 120e-6 + result.attempts[1].cost_usd
    )


async def test_best_falls_back_to_the_plurality_sample(openai_server: FakeOpenAIServer) -> None:
    openai_server.respond("small", by_variant({"A": "1", "B": "2", "C": "2", "D": "4", "E": "5"}))
    cfg = sc_config(openai_server.url, samples=5, agreement=1.0)
    cfg["tiers"] = cfg["tiers"][:1]  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    assert not result.validated and result.variant == "A" and result.parsed is None


async def test_sampling_without_variants_repeats_the_request(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("small", "The answer is 4.", "The answer is 5.", "The answer is 4.")
    cfg = sc_config(openai_server.url, samples=3, agreement=0.6)
    del cfg["tiers"][0]["variants"]  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    assert result.validated and result.parsed == "4" and openai_server.request_count == 3


async def test_sampling_failure_rejects_with_the_reason(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("small", "The answer is 4.", Reply(status=500))
    openai_server.script("large", "The answer is 4.")
    cfg = sc_config(openai_server.url, samples=3, agreement=0.6)
    del cfg["tiers"][0]["variants"]  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    assert result.tier == 2
    assert "sampling failed: ProviderStatusError" in result.attempts[0].verdicts[0].reason


@pytest.mark.parametrize(
    "option", [{}, {"single_number": True}, {"answer_type": "number"}, {"answer_type": "auto"}]
)
async def test_answers_with_several_numbers_cast_no_stray_votes(
    openai_server: FakeOpenAIServer, option: dict[str, object]
) -> None:
    # "86 glasses and 42 plates" used to vote for its last number and agree with "42" by
    # accident. Under "number" it states no one number (no vote); under "auto" it is text,
    # which no number equals. Either way B and C disagree and the question escalates.
    openai_server.respond(
        "small", by_variant({"A": "86 glasses and 42 plates", "B": "42", "C": "128"})
    )
    openai_server.script("large", "The answer is 128.")
    cfg = sc_config(openai_server.url, samples=3, agreement=0.6, **option)
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    first = result.attempts[0]
    assert result.tier == 2 and len(first.samples) == 2
    assert "'42': 1, '128': 1" in first.verdicts[0].reason
    numeric = option.get("answer_type") == "number" or "single_number" in option
    assert ("'86 glasses and 42 plates': 1" in first.verdicts[0].reason) is not numeric


@pytest.mark.parametrize(
    ("first", "requests", "variant", "parsed"),
    [("26", 1, "A", "26"), ("[invalid]", 2, "B", "7"), ("(86, 42)", 2, "B", "7")],
)
async def test_first_single_number_is_accepted(
    openai_server: FakeOpenAIServer, first: str, requests: int, variant: str, parsed: str
) -> None:
    openai_server.respond("small", by_variant({"A": first, "B": "7"}))
    cfg = sc_config(openai_server.url, samples=2, agreement=0.5, single_number=True)
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    # a second variant is asked only when the first answer is not one number
    assert openai_server.request_count == requests
    assert result.tier == 1 and result.validated
    assert (result.variant, result.parsed) == (variant, parsed)


@pytest.mark.parametrize(
    ("params", "path"),
    [
        ({"samples": 0}, "tiers[0].validators[0].samples"),
        ({"samples": 3, "min_agreement": 0}, "tiers[0].validators[0].min_agreement"),
        ({"samples": 3, "extractor": "nope"}, "tiers[0].validators[0].extractor"),
    ],
)
def test_bad_parameters(params: dict[str, object], path: str) -> None:
    cfg = {"tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m"),
                          validators=[{"name": "self_consistency", **params}])]}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg)
    assert info.value.path == path


# -- scored mode ---------------------------------------------------------------------------


@pytest.fixture
def scored_validators() -> None:
    @cascade.validator("test_fixed", replace=True)
    class Fixed:
        def __init__(self, *, score: float) -> None:
            self.name = f"fixed-{score}"
            self.score = score

        async def validate(
            self, completion: Completion, context: cascade.ValidationContext
        ) -> cascade.Verdict:
            return cascade.Verdict(validator=self.name, passed=self.score >= 0.5, score=self.score)


@pytest.mark.usefixtures("scored_validators")
@pytest.mark.parametrize(("threshold", "tier_hit"), [(0.7, 1), (0.8, 2)])
async def test_scored_mode_weighs_scores(
    openai_server: FakeOpenAIServer, threshold: float, tier_hit: int
) -> None:
    openai_server.default = Reply(text="x")
    first = tier("a", provider("a", openai_server.url, "m1"), validators=[
        {"name": "test_fixed", "score": 1.0, "weight": 3},
        {"name": "test_fixed", "score": 0.0, "weight": 1},
    ])  # fmt: skip
    first.update(mode="scored", threshold=threshold)
    cfg = {"tiers": [first, tier("b", provider("b", openai_server.url, "m2"))]}
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    # weighted score (3 * 1.0 + 1 * 0.0) / 4 = 0.75: passes 0.7, fails 0.8,
    # although one validator failed outright
    assert result.tier == tier_hit
    assert [v.passed for v in result.attempts[0].verdicts] == [True, False]


def test_bad_weight() -> None:
    cfg = {"tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m"),
                          validators=[{"name": "json_schema", "schema": {}, "weight": -1}])]}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg)
    assert info.value.path == "tiers[0].validators[0].weight"


# -- early rejection on the stream ------------------------------------------------------------


async def test_early_rejection_cancels_the_upstream_stream(openai_server: FakeOpenAIServer) -> None:
    prose = "Let me think about this carefully. " * 40
    openai_server.script("m1", Reply(text=prose, chunk_chars=8, chunk_delay_s=0.005,
                                     output_tokens=len(prose) // 4))  # fmt: skip
    openai_server.script("m2", '{"answer": 42}')
    schema = {"type": "object", "required": ["answer"]}
    cfg = {
        "tiers": [
            tier("a", provider("a", openai_server.url, "m1", stream=True),
                 validators=[{"name": "json_schema", "schema": schema, "early_reject": True}]),
            tier("b", provider("b", openai_server.url, "m2"),
                 validators=[{"name": "json_schema", "schema": schema}]),
        ]
    }  # fmt: skip
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
        assert openai_server.active_connections <= 1  # the stream's connection was closed
    first = result.attempts[0]
    assert first.outcome == "rejected" and "rejected while streaming" in first.verdicts[0].reason
    assert first.completion is not None and first.completion.finish_reason == "rejected_early"
    # billed for what arrived (one chunk), not for the whole answer it would have streamed
    assert first.output_tokens <= 3 < len(prose) // 4
    assert result.tier == 2 and result.parsed == {"answer": 42}


@pytest.mark.parametrize(
    ("partial", "rejected"),
    [
        ("  ", False),
        ("{", False),
        ("``", False),
        ("```js", False),
        ("```json\n", False),
        ("```json\n{", False),
        ("```python\n", True),
        ("Sure", True),
        ("```json\nHere", True),
        ("`x", True),
    ],
)
def test_json_partial_rules(partial: str, rejected: bool) -> None:
    from cascade.validators import JsonSchemaValidator

    v = JsonSchemaValidator(schema={"type": "object"}, early_reject=True)
    ctx = cascade.ValidationContext(
        messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t"
    )
    verdict = v.check_partial(partial, ctx)
    assert (verdict is not None) is rejected


async def test_weighted_variants(openai_server: FakeOpenAIServer) -> None:
    openai_server.respond("small", by_variant({"A": "7", "B": "5", "C": "5", "D": "5", "E": "5"}))
    cfg = sc_config(openai_server.url, samples=4, agreement=0.6)
    weights = {"A": 0.5, "B": 1, "C": 1, "D": 1, "E": 1}
    cfg["tiers"][0]["variants"] = [dict(v, weight=weights[v["name"]]) for v in VARIANTS]  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    # planned weight 0.5 + 1 + 1 + 1 = 3.5; 0.6 of it is 2.1: B and C (2.0) are not enough,
    # D makes 3.0
    assert result.validated and result.parsed == "5" and openai_server.request_count == 4
    assert "weighing 3" in result.attempts[0].verdicts[0].reason
    weights["A"] = 3
    cfg["tiers"][0]["variants"] = [dict(v, weight=weights[v["name"]]) for v in VARIANTS]  # type: ignore[index]
    openai_server.reset()
    openai_server.respond("small", by_variant({"A": "7", "B": "5", "C": "5", "D": "5", "E": "5"}))
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    # planned 6, needs 3.6: a heavy dissenter (A weighs 3) blocks B, C and D (3.0 together)
    assert result.attempts[0].outcome == "rejected" and result.parsed is None
    assert len(result.attempts[0].samples) == 3


async def test_without_early_stop_every_sample_is_drawn(openai_server: FakeOpenAIServer) -> None:
    openai_server.respond("small", by_variant({"A": "5", "B": "5", "C": "5", "D": "7", "E": "5"}))
    cfg = sc_config(openai_server.url, samples=5, agreement=0.6, early_stop=False)
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    assert result.parsed == "5" and openai_server.request_count == 5
    assert "4 of 5 samples agree" in result.attempts[0].verdicts[0].reason


async def test_samples_without_variants_come_from_one_request_with_n(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script(
        "small",
        Reply(text="The answer is 4.", input_tokens=100, output_tokens=10),
        Reply(text="It is 4.", input_tokens=100, output_tokens=10),
        Reply(text="The answer is 4.", output_tokens=10),
    )
    cfg = sc_config(openai_server.url, samples=5, agreement=0.6)
    del cfg["tiers"][0]["variants"]  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    # 3 of 5 needed: the first answer, then one request with n = 2 for the two that could
    # settle it, which do
    assert openai_server.request_count == 2
    assert openai_server.requests[1].body["n"] == 2
    assert result.validated and result.parsed == "4"
    (attempt,) = result.attempts
    assert [s.text for s in attempt.samples] == ["It is 4.", "The answer is 4."]
    # the prompt is billed once per request (100 + 100); completions 10 + (10 + 10)
    assert attempt.input_tokens == 200 and attempt.output_tokens == 30
    assert result.cost_usd == pytest.approx((200 * 1 + 30 * 2) / 1e6)


# -- review fixes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("5 * 3 = 15", "15"),
        ("So the answer is 20 - 5 = 15", "15"),
        ("9 eggs make $18", "18"),
        ("She pays 45-30", "30"),
        ("12345678901234567891", "12345678901234567891"),
        ("12345678901234567890", "12345678901234567890"),
    ],
)
def test_normalise_takes_the_result(raw: str, value: str) -> None:
    assert normalize(raw) == value


def test_normalise_survives_huge_exponents() -> None:
    assert normalize("1e999") == "1e999"  # kept as text, no OverflowError


async def test_all_mode_stops_at_the_first_failure(openai_server: FakeOpenAIServer) -> None:
    openai_server.respond("small", by_variant({"A": "1", "B": "1", "C": "1", "D": "1", "E": "1"}))
    openai_server.script("large", "ok")
    cfg = sc_config(openai_server.url, samples=3, agreement=1.0)
    cfg["tiers"][0]["validators"].insert(0, {"name": "json_schema", "schema": {"type": "object"}})  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    first = result.attempts[0]
    # the answer is not JSON: self_consistency never ran, so no sample was paid for
    assert [v.validator for v in first.verdicts] == ["json_schema"]
    assert first.samples == () and openai_server.request_count == 2


async def test_weighted_score_counts_answerless_samples(openai_server: FakeOpenAIServer) -> None:
    def respond(request: FakeRequest) -> Reply:
        system = next(m["content"] for m in request.messages if m["role"] == "system")
        return Reply(text="The answer is 42." if system.endswith("A") else "I am not sure.")

    openai_server.respond("small", respond)
    cfg = sc_config(openai_server.url, samples=5, agreement=0.6)
    cfg["tiers"][0]["variants"] = [dict(v, weight=2 if v["name"] == "A" else 1) for v in VARIANTS]  # type: ignore[index]
    cfg["tiers"] = cfg["tiers"][:1]  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    (verdict,) = result.attempts[0].verdicts
    # planned weight 6, needs 3.6: after A (2) and three answerless samples (1 each) it is
    # out of reach; the score is 2 of the 5 drawn, not 2 of the 2 that answered
    assert not verdict.passed and verdict.score == pytest.approx(2 / 5)


async def test_a_failed_sample_keeps_the_paid_ones(openai_server: FakeOpenAIServer) -> None:
    def respond(request: FakeRequest) -> Reply:
        system = next(m["content"] for m in request.messages if m["role"] == "system")
        if system.endswith("C"):
            return Reply(status=500)
        return Reply(text="The answer is 7.", input_tokens=100, output_tokens=10)

    openai_server.respond("small", respond)
    async with Cascade.from_dict(sc_config(openai_server.url, samples=5, agreement=0.6)) as cc:
        result = await cc.run(messages=USER)
    first = result.attempts[0]
    # A, then B and C together (C fails), then D: 3 answers agree on 7
    assert result.validated and result.parsed == "7"
    assert [s.variant for s in first.samples] == ["B", "D"]
    assert first.cost_usd == pytest.approx(3 * 120e-6)


def test_variant_weights_must_not_all_be_zero() -> None:
    cfg = sc_config("http://127.0.0.1:9/v1", samples=3, agreement=0.5)
    cfg["tiers"][0]["variants"] = [dict(v, weight=0) for v in VARIANTS]  # type: ignore[index]
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg)
    assert info.value.path == "tiers[0].variants"


# -- answers that are not numbers ------------------------------------------------------------


def by_variant_plain(answers: dict[str, str]) -> Responder:
    def respond(request: FakeRequest) -> Reply:
        system = next(m["content"] for m in request.messages if m["role"] == "system")
        return Reply(text=answers[system.removeprefix("variant ")], input_tokens=100,
                     output_tokens=10)  # fmt: skip

    return respond


@pytest.mark.parametrize(
    ("a", "b", "agree", "parsed"),
    [
        ("05/01/2021", "05/02/2021", False, None),  # used to agree on "2021"
        ("3:30", "2:30", False, None),  # used to agree on "30"
        ("1.2.3", "1.2.4", False, None),
        ("(A)", "A", True, "A"),
        ("05/01/2021", "May 1, 2021", True, "2021-05-01"),
        ("$1,000", "1000.0", True, "1000"),
    ],
)
async def test_samples_agree_only_on_the_same_answer(
    openai_server: FakeOpenAIServer, a: str, b: str, agree: bool, parsed: str | None
) -> None:
    openai_server.respond("small", by_variant_plain({"A": a, "B": b}))
    openai_server.script("large", "The answer is 42.")
    cfg = sc_config(openai_server.url, samples=2, agreement=1.0, extractor="answer_is")
    cfg["tiers"][0]["validators"][0]["extractor"] = lambda c: c.text  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    assert (result.tier == 1) is agree
    if agree:
        assert result.parsed == parsed and result.text == a


async def test_date_order_decides_which_dates_agree(openai_server: FakeOpenAIServer) -> None:
    openai_server.respond("small", by_variant_plain({"A": "05/01/2021", "B": "5 January 2021"}))
    openai_server.script("large", "The answer is 42.")
    for order, tier_no in (("mdy", 2), ("dmy", 1), ("strict", 2)):
        cfg = sc_config(openai_server.url, samples=2, agreement=1.0, answer_type="date",
                        date_order=order)  # fmt: skip
        cfg["tiers"][0]["validators"][0]["extractor"] = lambda c: c.text  # type: ignore[index]
        async with Cascade.from_dict(cfg) as cc:
            result = await cc.run(messages=USER)
        assert result.tier == tier_no, order


async def test_samples_of_one_variant_share_a_request_with_n(
    openai_server: FakeOpenAIServer,
) -> None:
    # Two variants, six samples without early stopping: samples 1-5 are B, A, B, A, B, so
    # they go as two requests, n = 3 (B) and n = 2 (A), each billing its prompt once.
    openai_server.respond("small", by_variant({"A": "4", "B": "4"}))
    cfg = sc_config(openai_server.url, samples=6, agreement=0.5, early_stop=False)
    cfg["tiers"][0]["variants"] = VARIANTS[:2]  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    assert openai_server.request_count == 3
    ns = sorted(r.body.get("n", 1) for r in openai_server.requests)
    assert ns == [1, 2, 3]
    (attempt,) = result.attempts
    assert [s.variant for s in attempt.samples] == ["B", "A", "B", "A", "B"]
    assert attempt.input_tokens == 3 * 100  # one prompt per request
    # with batching off, every sample is its own request
    cfg["tiers"][0]["providers"][0]["batch_samples"] = False  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    assert openai_server.request_count == 3 + 6
    assert result.attempts[0].input_tokens == 6 * 100


class _NProvider:
    """A provider whose ``complete_n`` answers with nothing, or never."""

    def __init__(self, config: cascade.ProviderConfig, *, session: object, api_key: object) -> None:
        self.name, self.model, self.config = config.name, config.model, config
        self.calls = 0

    async def stream(self, messages: object, options: object):  # type: ignore[no-untyped-def]
        yield cascade.Chunk(text="4", input_tokens=1, output_tokens=1)

    async def complete_n(self, messages: object, options: object, n: int) -> list[cascade.Chunk]:
        self.calls += 1
        if self.model == "hang":
            await anyio.sleep(3600)
        return []

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize("model", ["empty", "hang"])
async def test_a_batch_with_no_answers_or_no_end_stops_the_vote(model: str) -> None:
    cascade.register_provider_kind("n-test", _NProvider, replace=True)
    validator = {
        "name": "self_consistency",
        "samples": 3,
        "min_agreement": 1.0,
        "early_stop": False,
    }
    cfg = {"tiers": [{"name": "t", "validators": [validator], "providers": [
        {"name": "p", "kind": "n-test", "model": model, "timeout_s": 0.05}]}]}  # fmt: skip
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
        (provider,) = cc._tiers[0].providers
    assert isinstance(provider, _NProvider) and provider.calls == 1
    reason = result.attempts[0].verdicts[0].reason
    failure = "MalformedResponse" if model == "empty" else "ProviderTimeout"
    assert f"sampling failed: {failure}" in reason and not result.validated


async def test_more_choices_than_asked_are_no_samples_but_are_billed(
    openai_server: FakeOpenAIServer,
) -> None:
    # a server that ignores n: the request for 2 answers gets 5 choices
    openai_server.script(
        "small",
        Reply(text="The answer is 4.", input_tokens=100, output_tokens=10),
        Reply(text="It is 4.", input_tokens=100, output_tokens=10, extra_choices=3),
        Reply(text="The answer is 4.", output_tokens=10),
        *(Reply(text=text, output_tokens=7) for text in ("5", "6", "7")),
    )
    cfg = sc_config(openai_server.url, samples=5, agreement=0.6)
    del cfg["tiers"][0]["variants"]  # type: ignore[index]
    async with Cascade.from_dict(cfg) as cc:
        result = await cc.run(messages=USER)
    assert openai_server.requests[1].body["n"] == 2
    assert result.validated and result.parsed == "4"
    (attempt,) = result.attempts
    assert [s.text for s in attempt.samples] == ["It is 4.", "The answer is 4."]
    assert "3 of 3 samples agree" in attempt.verdicts[0].reason
    # every billed completion token counts, the unasked choices' 21 included
    assert attempt.output_tokens == 10 + (10 + 10 + 21)
    assert result.cost_usd == pytest.approx((200 * 1 + 51 * 2) / 1e6)
