"""The engine over real loopback HTTP: every escalation path, failover, budget, deadline."""

from __future__ import annotations

import pytest

import cascade
from cascade import (
    AllProvidersFailed,
    BudgetExceeded,
    Cascade,
    CascadeExhausted,
    DeadlineExceeded,
    InputError,
    RequestOptions,
)
from cascade._types import coerce_messages, estimate_prompt_tokens
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, FakeRequest, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier

pytestmark = pytest.mark.anyio


def three_tiers(url: str, **config: object) -> dict[str, object]:
    return {
        "tiers": [
            tier("small", provider("small-a", url, "m1"), validators=[JSON_SCHEMA]),
            tier("medium", provider("medium-a", url, "m2"), validators=[JSON_SCHEMA]),
            tier("large", provider("large-a", url, "m3"), validators=[JSON_SCHEMA]),
        ],
        **config,
    }


async def test_tier_one_accepts(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(text='{"answer": 42}', input_tokens=1000, output_tokens=500))
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.validated
    assert (result.tier, result.tier_name, result.provider, result.model) == (
        1,
        "small",
        "small-a",
        "m1",
    )
    assert result.parsed == {"answer": 42}
    assert result.text == '{"answer": 42}'
    # 1000 input tokens at $1/M + 500 output tokens at $2/M
    assert result.cost_usd == pytest.approx(0.002)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (1000, 500)
    assert [a.outcome for a in result.attempts] == ["accepted"]
    assert result.attempts[0].verdicts[0].passed
    assert result.escalations == 0
    assert openai_server.request_count == 1


async def test_rejection_escalates_and_records_verdicts(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(text="forty-two", input_tokens=10, output_tokens=10))
    openai_server.script("m2", Reply(text='{"answer": "x"}', input_tokens=10, output_tokens=10))
    openai_server.script("m3", Reply(text='```json\n{"answer": 42}\n```', input_tokens=10,
                                     output_tokens=10))  # fmt: skip
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.validated and result.tier == 3 and result.parsed == {"answer": 42}
    assert [a.outcome for a in result.attempts] == ["rejected", "rejected", "accepted"]
    assert "no JSON" in result.attempts[0].verdicts[0].reason
    assert result.attempts[1].verdicts[0].reason.startswith("at $.answer")
    # every attempt is paid for: 3 x (10 in at $1/M + 10 out at $2/M)
    assert result.cost_usd == pytest.approx(3 * 30e-6)
    assert result.usage.input_tokens == 30
    assert result.escalations == 2


async def test_exhausted_best_returns_best_unvalidated(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", "no")
    openai_server.script("m2", "still no")
    openai_server.script("m3", "nope")
    async with Cascade.from_dict(three_tiers(openai_server.url, on_exhausted="best")) as c:
        result = await c.run(messages=USER)
    assert not result.validated
    assert result.parsed is None
    # equal scores: the highest tier's answer wins
    assert result.tier == 3 and result.text == "nope"
    assert [a.outcome for a in result.attempts] == ["rejected"] * 3


async def test_exhausted_best_prefers_higher_score() -> None:
    @cascade.validator("test_score_by_length", replace=True)
    class ByLength:
        def __init__(self) -> None:
            self.name = "by_length"

        async def validate(
            self, completion: cascade.Completion, context: cascade.ValidationContext
        ) -> cascade.Verdict:
            return cascade.Verdict(
                validator=self.name, passed=False, score=min(1.0, len(completion.text) / 10)
            )

    async with FakeOpenAIServer() as server:
        server.script("m1", "aaaaaaaa")
        server.script("m2", "bb")
        cfg = {
            "tiers": [
                tier("a", provider("a1", server.url, "m1"), validators=[{"name": "test_score_by_length"}]),
                tier("b", provider("b1", server.url, "m2"), validators=[{"name": "test_score_by_length"}]),
            ]
        }  # fmt: skip
        async with Cascade.from_dict(cfg) as c:
            result = await c.run(messages=USER)
    assert result.tier == 1 and result.text == "aaaaaaaa" and not result.validated


async def test_exhausted_error_raises_with_attempts(openai_server: FakeOpenAIServer) -> None:
    openai_server.default = Reply(text="not json")
    async with Cascade.from_dict(three_tiers(openai_server.url, on_exhausted="error")) as c:
        with pytest.raises(CascadeExhausted) as info:
            await c.run(messages=USER)
    assert [a.outcome for a in info.value.attempts] == ["rejected"] * 3
    assert isinstance(info.value, cascade.RunError)


async def test_failover_within_tier(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("a", Reply(status=503))
    openai_server.script("b", Reply(status=429, retry_after_s=3))
    openai_server.script("c", '{"answer": 1}')
    cfg = {
        "tiers": [
            tier(
                "small",
                provider("p-a", openai_server.url, "a"),
                provider("p-b", openai_server.url, "b"),
                provider("p-c", openai_server.url, "c"),
                validators=[JSON_SCHEMA],
            ),
            tier("large", provider("p-d", openai_server.url, "d")),
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert result.tier == 1 and result.provider == "p-c"
    failed = result.attempts[:2]
    assert [a.outcome for a in failed] == ["failed", "failed"]
    assert [a.error_type for a in failed] == ["ProviderStatusError", "RateLimited"]
    assert all(a.cost_usd == 0 for a in failed)


async def test_failed_tier_escalates_to_next(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(fault="drop", text='{"answer": 1, "pad": "xxxxxxxxxxxx"}'))
    openai_server.script("m2", Reply(fault="malformed"))
    openai_server.script("m3", '{"answer": 3}')
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.tier == 3
    assert [a.error_type for a in result.attempts[:2]] == [
        "ProviderConnectionError",
        "MalformedResponse",
    ]


async def test_all_providers_failed_is_typed_and_carries_attempts(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.default = Reply(status=500, error_message="boom")
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        with pytest.raises(AllProvidersFailed) as info:
            await c.run(messages=USER)
    err = info.value
    assert len(err.attempts) == 3
    assert {a.error_type for a in err.attempts} == {"ProviderStatusError"}
    assert isinstance(err.__cause__, cascade.ProviderStatusError)
    assert err.__cause__.status == 500
    assert "boom" in str(err.__cause__)


async def test_budget_skips_tiers_it_cannot_afford(openai_server: FakeOpenAIServer) -> None:
    url = openai_server.url
    openai_server.script("m1", "bad")
    openai_server.script("m2", '{"answer": 2}')
    cfg = {
        "tiers": [
            tier("small", provider("s", url, "m1"), validators=[JSON_SCHEMA]),
            tier("huge", provider("h", url, "m9", input_cost_per_mtok=1e6,
                                  output_cost_per_mtok=1e6), validators=[JSON_SCHEMA]),
            tier("medium", provider("m", url, "m2"), validators=[JSON_SCHEMA]),
        ]
    }  # fmt: skip
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER, max_cost_usd=0.01)
    assert result.tier_name == "medium"
    assert [a.outcome for a in result.attempts] == ["rejected", "skipped", "accepted"]
    assert result.attempts[1].error_type == "BudgetExceeded"
    assert openai_server.request_count == 2  # the huge tier was never called
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(BudgetExceeded) as info:
            await c.run(messages=USER, max_cost_usd=0.0)
    assert [a.outcome for a in info.value.attempts] == ["skipped"] * 3


async def test_budget_counts_every_call_a_tier_pays_for(openai_server: FakeOpenAIServer) -> None:
    """A tier's estimate is one call times self_consistency's samples (twice when it
    hedges): a budget for one call but not five skips the sampling tier."""
    url = openai_server.url
    openai_server.script("m1", "7")
    price = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0, "max_tokens": 100}
    vote = {"name": "self_consistency", "samples": 5, "min_agreement": 0.6}
    cfg = {"tiers": [tier("voting", provider("v", url, "m1", **price), validators=[vote])]}
    async with Cascade.from_dict(cfg) as c:
        one = (
            c.config.tiers[0]
            .providers[0]
            .cost_usd(estimate_prompt_tokens(coerce_messages(USER)), 100)
        )
        with pytest.raises(BudgetExceeded) as info:
            await c.run(messages=USER, max_cost_usd=one * 4.5)
        assert info.value.attempts[0].outcome == "skipped"
        assert openai_server.request_count == 0
        result = await c.run(messages=USER, max_cost_usd=one * 5.5)
    assert result.validated and [a.outcome for a in result.attempts] == ["accepted"]


def _one_call(c: Cascade) -> float:
    return (
        c.config.tiers[0].providers[0].cost_usd(estimate_prompt_tokens(coerce_messages(USER)), 100)
    )


async def test_budget_counts_the_samples_of_a_requests_own_validators(
    openai_server: FakeOpenAIServer,
) -> None:
    """A request's own self_consistency validator (``run(validators=...)``) draws its
    samples from every tier's answer: the budget check counts them too."""
    from cascade.validators.consistency import SelfConsistencyValidator

    openai_server.script("m1", "7")
    price = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0, "max_tokens": 100}
    cfg = {"tiers": [tier("plain", provider("p", openai_server.url, "m1", **price))]}
    vote = SelfConsistencyValidator(samples=5, min_agreement=0.6, early_stop=False)
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(BudgetExceeded) as info:
            await c.run(messages=USER, max_cost_usd=_one_call(c) * 4.5, validators=[vote])
        assert info.value.attempts[0].outcome == "skipped"
        assert openai_server.request_count == 0


async def test_budget_counts_the_samples_of_every_sampling_validator(
    openai_server: FakeOpenAIServer,
) -> None:
    """Two self_consistency validators each draw their own samples (the first answer is
    both's): 1 + 2 + 2 calls, not the larger validator's 3."""
    openai_server.script("m1", "7")
    price = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0, "max_tokens": 100}
    price["batch_samples"] = False  # a call per sample: the server counts them
    votes = [
        {"name": "self_consistency", "samples": 3, "early_stop": False},
        {"name": "self_consistency", "samples": 3, "early_stop": False, "extractor": "last_number"},
    ]
    cfg = {
        "tiers": [tier("voting", provider("v", openai_server.url, "m1", **price), validators=votes)]
    }
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(BudgetExceeded) as info:
            await c.run(messages=USER, max_cost_usd=_one_call(c) * 4.5)
        assert info.value.attempts[0].outcome == "skipped"
        assert openai_server.request_count == 0
        result = await c.run(messages=USER, max_cost_usd=_one_call(c) * 5.5)
    assert result.validated and openai_server.request_count == 5


async def test_budget_does_not_count_a_hedge_a_tier_of_one_provider_cannot_send(
    openai_server: FakeOpenAIServer,
) -> None:
    """A hedge goes to a sibling provider: a hedged tier with one provider makes one call
    per answer, and a budget for it runs the tier."""
    openai_server.script("m1", "7")
    price = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 1.0, "max_tokens": 100}
    alone = tier("alone", provider("p", openai_server.url, "m1", **price))
    alone["hedge"] = {"after_s": 0.05}
    async with Cascade.from_dict({"tiers": [alone]}) as c:
        result = await c.run(messages=USER, max_cost_usd=_one_call(c) * 1.5)
    assert [a.outcome for a in result.attempts] == ["accepted"]


async def test_deadline_raises_with_in_flight_attempt(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(fault="hang"))
    async with Cascade.from_dict(three_tiers(openai_server.url, on_exhausted="error")) as c:
        with pytest.raises(DeadlineExceeded) as info:
            await c.run(messages=USER, deadline_s=0.2)
    (attempt,) = info.value.attempts
    assert attempt.outcome == "failed" and attempt.error_type == "DeadlineExceeded"
    assert attempt.latency_s >= 0.15


async def test_deadline_carries_across_tiers(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(text="wrong", latency_s=0.05))
    openai_server.script("m2", Reply(fault="hang"))
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        # on_exhausted = "best": the deadline returns the rejected answer it already has
        result = await c.run(messages=USER, deadline_s=0.3)
    assert not result.validated and result.text == "wrong"
    assert [a.outcome for a in result.attempts] == ["rejected", "failed"]
    assert result.attempts[1].error_type == "DeadlineExceeded"


async def test_start_and_max_tier(openai_server: FakeOpenAIServer) -> None:
    openai_server.default = Reply(text="nope")
    openai_server.script("m2", '{"answer": 2}')
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        r = await c.run(messages=USER, start_tier=2)
        assert r.tier == 2 and len(r.attempts) == 1
        r = await c.run(messages=USER, start_tier="large")
        assert r.tier == 3 and not r.validated
        r = await c.run(messages=USER, max_tier=1)
        assert r.tier == 1 and not r.validated and len(r.attempts) == 1
        for kwargs in ({"start_tier": 4}, {"start_tier": "nope"}, {"start_tier": 3, "max_tier": 1},
                       {"max_tier": 0}):  # fmt: skip
            with pytest.raises(InputError):
                await c.run(messages=USER, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("messages", "path"),
    [
        ([], "messages"),
        ("hello", "messages"),
        ([{"role": "robot", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": "x"}, {"role": "user", "content": 3}], "messages[1].content"),
        ([3], "messages[0]"),
    ],
)
async def test_bad_input_names_the_field(
    openai_server: FakeOpenAIServer, messages: object, path: str
) -> None:
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        with pytest.raises(InputError) as info:
            await c.run(messages=messages)  # type: ignore[arg-type]
    assert info.value.path == path
    assert openai_server.request_count == 0


async def test_bad_budget_and_deadline_are_input_errors(openai_server: FakeOpenAIServer) -> None:
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        with pytest.raises(InputError, match="deadline"):
            await c.run(messages=USER, deadline_s=0)
        with pytest.raises(InputError, match="cost"):
            await c.run(messages=USER, max_cost_usd=-1)


async def test_options_reach_the_wire(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", '{"answer": 1}')
    opts = RequestOptions(temperature=0.2, max_tokens=50, stop=("\n\n",), seed=3,
                          response_format={"type": "json_object"}, metadata={"task": "t1"})  # fmt: skip
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        await c.run(messages=USER, options=opts)
    body = openai_server.requests[0].body
    assert body["temperature"] == 0.2 and body["max_tokens"] == 50 and body["seed"] == 3
    assert body["stop"] == ["\n\n"] and body["response_format"] == {"type": "json_object"}
    assert "metadata" not in body  # metadata tags the run; it is never sent upstream


async def test_mixed_openai_and_anthropic_tiers(
    openai_server: FakeOpenAIServer, anthropic_server: FakeAnthropicServer
) -> None:
    openai_server.script("m1", "nope")
    anthropic_server.script("claude", Reply(text='{"answer": 42}', chunk_chars=3))
    cfg = {
        "tiers": [
            tier("small", provider("s", openai_server.url, "m1", stream=True),
                 validators=[JSON_SCHEMA]),
            tier("large", provider("c", anthropic_server.url, "claude", kind="anthropic",
                                   stream=True), validators=[JSON_SCHEMA]),
        ]
    }  # fmt: skip
    messages = [{"role": "system", "content": "Be terse."}, *USER]
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=messages)
    assert result.tier_name == "large" and result.parsed == {"answer": 42}
    assert result.attempts[1].ttft_s is not None
    sent = anthropic_server.requests[0].body
    assert sent["system"] == "Be terse."
    assert [m["role"] for m in sent["messages"]] == ["user"]


async def test_session_is_closed_and_reusable_flow(openai_server: FakeOpenAIServer) -> None:
    openai_server.default = Reply(text='{"answer": 1}')
    c = Cascade.from_dict(three_tiers(openai_server.url))
    assert "idle" in repr(c)
    result = await c.run(messages=USER)  # opens lazily
    assert result.validated and "open" in repr(c)
    sessions = list(c._pools.values())  # a connection pool per provider
    await c.aclose()
    assert sessions
    assert all(session.closed for session in sessions)
    assert "closed" in repr(c)
    with pytest.raises(RuntimeError):
        await c.open()


async def test_a_providers_cookie_is_never_sent_back(openai_server: FakeOpenAIServer) -> None:
    """The Cascade's own pools keep no cookie: a provider (or whatever sits in front of
    it) cannot tie one request, or one gateway tenant, to the next."""
    openai_server.default = Reply(
        text='{"answer": 1}', headers={"Set-Cookie": "affinity=abc123; Path=/"}
    )
    # a host name: aiohttp's default jar would keep this cookie (it ignores IP hosts')
    url = openai_server.url.replace("127.0.0.1", "localhost")
    async with Cascade.from_dict(three_tiers(url)) as c:
        await c.run(messages=USER)
        await c.run(messages=USER)
    assert len(openai_server.requests) == 2
    assert all("cookie" not in r.headers for r in openai_server.requests)


async def test_external_session_is_not_closed(openai_server: FakeOpenAIServer) -> None:
    import aiohttp

    openai_server.default = Reply(text='{"answer": 1}')
    async with aiohttp.ClientSession() as session:
        async with Cascade.from_dict(three_tiers(openai_server.url), session=session) as c:
            await c.run(messages=USER)
        assert not session.closed


async def test_concurrent_runs_share_a_bounded_pool(openai_server: FakeOpenAIServer) -> None:
    import anyio

    in_flight = peak = 0

    async def respond(request: FakeRequest) -> Reply:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await anyio.sleep(0.01)
        in_flight -= 1
        return Reply(text='{"answer": 1}')

    openai_server.respond("m1", respond)
    results = []
    # 12 connections shared out among three providers: 4 each
    async with Cascade.from_dict(three_tiers(openai_server.url, max_connections=12)) as c:

        async def one() -> None:
            results.append(await c.run(messages=USER))

        async with anyio.create_task_group() as tg:
            for _ in range(40):
                tg.start_soon(one)
    assert len(results) == 40 and all(r.validated for r in results)
    assert peak == 4  # 40 concurrent runs, never more than the provider's 4 connections


async def test_crashing_validator_rejects_instead_of_losing_the_request() -> None:
    @cascade.validator("test_crashes", replace=True)
    class Crashes:
        name = "crashes"

        async def validate(
            self, completion: cascade.Completion, context: cascade.ValidationContext
        ) -> cascade.Verdict:
            raise KeyError("oops")

    async with FakeOpenAIServer() as server:
        server.script("m1", "a")
        server.script("m2", "b")
        cfg = {
            "tiers": [
                tier("a", provider("a", server.url, "m1"), validators=[{"name": "test_crashes"}]),
                tier("b", provider("b", server.url, "m2")),
            ]
        }
        async with Cascade.from_dict(cfg) as c:
            result = await c.run(messages=USER)
    assert result.tier == 2 and result.validated
    (verdict,) = result.attempts[0].verdicts
    assert not verdict.passed and "KeyError" in verdict.reason


async def test_caller_cancellation_closes_the_upstream_connection(
    openai_server: FakeOpenAIServer,
) -> None:
    import anyio

    openai_server.script("m1", Reply(fault="hang"))
    async with Cascade.from_dict(three_tiers(openai_server.url)) as c:
        with anyio.move_on_after(0.2) as scope:
            await c.run(messages=USER)
        assert scope.cancelled_caught
        pools = [session.connector for session in c._pools.values()]
        assert pools
        assert all(p is not None and not p._acquired for p in pools)  # none in use
        with anyio.fail_after(5):  # the server sees the client go away
            while openai_server.active_connections:
                await anyio.sleep(0.01)
    assert openai_server.request_count == 1


async def test_deadline_during_validation_keeps_the_paid_answer(
    openai_server: FakeOpenAIServer,
) -> None:
    import anyio

    @cascade.validator("test_slow", replace=True)
    class Slow:
        name = "slow"

        async def validate(
            self, completion: cascade.Completion, context: cascade.ValidationContext
        ) -> cascade.Verdict:
            await anyio.sleep(10)
            raise AssertionError("unreachable")

    openai_server.script("m1", Reply(text="answer", input_tokens=1_000_000, output_tokens=0))
    cfg = {"tiers": [tier("a", provider("a", openai_server.url, "m1"),
                          validators=[{"name": "test_slow"}])]}  # fmt: skip
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER, deadline_s=0.2)
    assert not result.validated and result.text == "answer"
    (attempt,) = result.attempts
    assert attempt.outcome == "rejected" and attempt.error_type == "DeadlineExceeded"
    # 1M input tokens at $1/M: paid, and counted; the answer's reported 0 is estimated (1)
    assert result.cost_usd == pytest.approx(1.0 + 2e-6)


async def test_run_after_close_is_refused(openai_server: FakeOpenAIServer) -> None:
    c = Cascade.from_dict(three_tiers(openai_server.url))
    async with c:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        await c.run(messages=USER)


def test_api_key_with_a_newline_is_a_config_error() -> None:
    cfg = {"tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m", api_key_env="K"))]}
    with pytest.raises(cascade.ConfigError) as info:
        Cascade.from_dict(cfg, environ={"K": "sk-abc\r"})
    assert info.value.path == "tiers[0].providers[0].api_key_env"
    assert "sk-abc" not in str(info.value)


def test_http_kinds_need_a_base_url() -> None:
    cfg = {"tiers": [{"name": "a", "providers": [{"name": "p", "kind": "openai", "model": "m"}]}]}
    with pytest.raises(cascade.ConfigError) as info:
        Cascade.from_dict(cfg)
    assert info.value.path == "tiers[0].providers[0].base_url"


async def test_a_stream_broken_mid_answer_is_costed_for_what_arrived(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(fault="drop", text="x" * 400, chunk_chars=40))
    openai_server.script("m2", '{"answer": 2}')
    cfg = {
        "tiers": [
            tier("a", provider("a", openai_server.url, "m1", stream=True)),
            tier("b", provider("b", openai_server.url, "m2"), validators=[JSON_SCHEMA]),
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    broken = result.attempts[0]
    assert broken.outcome == "failed" and broken.error_type == "ProviderConnectionError"
    # the first 40 characters arrived before the connection dropped: ~10 tokens billed
    assert broken.output_tokens == 10 and broken.cost_usd > 0
    assert result.cost_usd == pytest.approx(broken.cost_usd + result.attempts[1].cost_usd)
