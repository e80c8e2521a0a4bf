"""The ``llm`` router over real loopback HTTP: a provider of the cascade rates the
request, through the engine's own path (breaker, limits, retries), costed into the run;
ratings parsed robustly and cached; a failed call is no opinion and the run goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cascade import (
    AttemptFinished,
    AttemptStarted,
    Cascade,
    Delta,
    Finished,
    RequestOptions,
    Routed,
)
from cascade.routing import LLMRouter, RouteRequest, TierInfo, parse_rating
from cascade.testing import FakeClock, FakeOpenAIServer, FakeRequest, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
ONCE = {"retry": {"attempts": 1}}


def cfg(url: str, *, router: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("small-a", url, "m1", **ONCE), validators=[JSON_SCHEMA]),
            tier("medium", provider("medium-a", url, "m2", **ONCE), validators=[JSON_SCHEMA]),
            tier("large", provider("large-a", url, "m3", **ONCE), validators=[JSON_SCHEMA]),
        ],
        "router": router or {"kind": "llm", "provider": "small-a", "thresholds": [3, 5]},
        **extra,
    }


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("4", 4),
        ("Difficulty: 4/5", 4),
        ('{"difficulty": 2}', 2),
        ("I'd say three.", 3),
        ("5.", 5),
        ("Rating - 1", 1),
        ("10", None),
        ("4.5", None),
        ("0", None),
        ("six", None),
        ("", None),
        ("x" * 10_000 + " 3", None),  # a rating is near the start, never scanned far
    ],
)
def test_parse_rating(reply: str, rating: int | None) -> None:
    assert parse_rating(reply) == rating


@given(st.text(max_size=2000))
def test_parse_rating_never_fails(reply: str) -> None:
    assert parse_rating(reply) in (None, 1, 2, 3, 4, 5)


def test_rating_to_tier() -> None:
    r = LLMRouter(provider="p", thresholds=[3, 5])
    assert [r.tier_for(n) for n in range(1, 6)] == [1, 1, 2, 2, 3]
    assert LLMRouter(provider="p", thresholds=[]).tier_for(5) == 1


async def test_rated_costed_and_cached(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(text="Difficulty: 4", input_tokens=100, output_tokens=2))
    openai_server.script("m2", Reply(text=ANSWER, input_tokens=10, output_tokens=10))
    async with Cascade.from_dict(cfg(openai_server.url)) as c:
        result = await c.run(messages=USER)
        again = await c.run(messages=USER)
    rating_call = openai_server.requests[0]
    assert [r.model for r in openai_server.requests] == ["m1", "m2", "m2"]  # cached
    assert rating_call.messages[0]["role"] == "system"
    assert "difficult" in rating_call.messages[0]["content"]
    assert rating_call.messages[1]["content"] == USER[0]["content"]
    assert rating_call.body["max_tokens"] == 8 and rating_call.body["temperature"] == 0
    router_attempt, answered = result.attempts
    assert (router_attempt.tier, router_attempt.tier_name) == (0, "router")
    assert (router_attempt.provider, router_attempt.outcome) == ("small-a", "accepted")
    # 100 input tokens at $1/M + 2 output tokens at $2/M, on the run's cost and usage
    assert router_attempt.cost_usd == pytest.approx(0.000104)
    assert result.cost_usd == pytest.approx(router_attempt.cost_usd + answered.cost_usd)
    assert result.usage.input_tokens == 110
    assert result.tier == 2 and result.escalations == 0
    assert result.route is not None
    assert (result.route.start_tier, result.route.score) == (2, 4.0)
    assert result.route.reason == "difficulty 4/5" and result.route.router == "llm"
    assert again.route is not None and again.route.reason == "difficulty 4/5 (cached)"
    assert [a.tier for a in again.attempts] == [2]
    assert again.cost_usd == pytest.approx(answered.cost_usd)


def rating_or_answer(request: FakeRequest) -> str:
    """m1 rates (1) when asked with the router's system prompt, else answers."""
    return "1" if request.messages[0]["role"] == "system" else ANSWER


async def test_the_cache_is_a_bounded_lru(openai_server: FakeOpenAIServer) -> None:
    openai_server.respond("m1", rating_or_answer)
    router = {"kind": "llm", "provider": "small-a", "thresholds": [3], "cache_size": 2}
    asked: list[int] = []
    async with Cascade.from_dict(cfg(openai_server.url, router=router)) as c:
        for text in ("a", "b", "a", "c", "b"):
            before = openai_server.request_count
            result = await c.run(messages=[{"role": "user", "content": text}])
            assert result.tier == 1
            asked.append(openai_server.request_count - before - 1)
        assert repr(c.router).endswith("cached=2>")
    # a, b: rated; a: cached (now the newest); c: rated, b evicted; b: rated again
    assert asked == [1, 1, 0, 1, 1]


async def test_an_open_breaker_is_no_opinion_and_the_run_goes_on(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(status=500))
    openai_server.script("m2", ANSWER)
    config = cfg(openai_server.url)
    config["tiers"][0]["providers"][0]["breaker"] = {"fail_max": 1, "reset_timeout_s": 60}
    async with Cascade.from_dict(config, clock=FakeClock()) as c:
        first = await c.run(messages=USER)
        assert c.breakers["small-a"].state == "open"
        openai_server.reset()
        openai_server.script("m2", ANSWER)
        second = await c.run(messages=USER)
    assert first.route is not None
    assert first.route.reason == "no rating: the call to 'small-a' failed"
    assert (first.route.start_tier, first.route.max_tier) == (None, None)
    assert first.attempts[0].tier == 0 and first.attempts[0].error_type == "ProviderStatusError"
    assert first.tier == 2  # tier 1's provider: breaker open, failed over to the next tier
    # the second run's rating is refused by the open breaker without any request
    assert [r.model for r in openai_server.requests] == ["m2"]
    assert second.attempts[0].tier == 0 and second.attempts[0].error_type == "CircuitOpen"
    assert second.tier == 2 and second.validated


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_the_rating_is_not_answer_text(openai_server: FakeOpenAIServer, mode: str) -> None:
    openai_server.script("m1", "5")
    openai_server.script("m3", ANSWER)
    config = cfg(openai_server.url)
    config["tiers"][0]["providers"][0]["stream"] = True
    events: list[Any] = []
    async with (
        Cascade.from_dict(config) as c,
        c.stream(messages=USER, mode=mode) as stream,  # type: ignore[arg-type]
    ):
        async for event in stream:
            events.append(event)
    assert "".join(e.text for e in events if isinstance(e, Delta)) == ANSWER
    kinds = [type(e).__name__ for e in events]
    assert kinds[:3] == ["AttemptStarted", "AttemptFinished", "Routed"]
    started, finished, routed = events[:3]
    assert isinstance(started, AttemptStarted) and started.tier_name == "router"
    assert isinstance(finished, AttemptFinished) and finished.attempt.tier == 0
    assert isinstance(routed, Routed) and routed.start_tier == 3
    last = events[-1]
    assert isinstance(last, Finished) and last.result.tier == 3


async def test_a_rating_past_the_timeout_is_cut_off_and_costed(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(fault="hang"), ANSWER)
    clock = FakeClock()
    config = cfg(openai_server.url, router_timeout_s=10)
    async with Cascade.from_dict(config, clock=clock) as c:
        run = asyncio.create_task(c.run(messages=USER))
        await eventually(lambda: openai_server.active_requests >= 1, "the rating call")
        clock.advance(10)
        await eventually(run.done, "the run went on")
        result = await run
    cut, answered = result.attempts
    assert (cut.tier, cut.outcome, cut.error_type) == (0, "cancelled", "RouterCancelled")
    assert cut.cost_usd > 0  # the prompt was sent: billed
    assert result.cost_usd == pytest.approx(cut.cost_usd + answered.cost_usd)
    assert result.tier == 1
    assert result.route is not None and "timed out after 10.0s" in result.route.reason


async def test_no_rating_in_the_reply(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", "I cannot rate that.", ANSWER)
    async with Cascade.from_dict(cfg(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.route is not None
    assert result.route.reason == "no rating in the reply 'I cannot rate that.'"
    assert result.tier == 1


async def test_the_rating_call_has_its_span(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", "1", ANSWER)
    exporter = InMemorySpanExporter()
    tracer = TracerProvider()
    tracer.add_span_processor(SimpleSpanProcessor(exporter))
    async with Cascade.from_dict(cfg(openai_server.url), tracer_provider=tracer, environ={}) as c:
        await c.run(messages=USER)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    run, router_tier = spans["cascade.run"], spans["cascade.tier router"]
    assert router_tier.parent is not None and router_tier.parent.span_id == run.context.span_id
    chats = [s for s in exporter.get_finished_spans() if s.name == "chat m1"]
    assert any(
        s.parent is not None and s.parent.span_id == router_tier.context.span_id for s in chats
    )
    assert dict(run.attributes or {})["cascade.route.start_tier"] == 1
    assert list(dict(run.attributes or {})["cascade.tier.path"]) == ["small"]
    tracer.shutdown()


async def test_outside_a_run_no_opinion() -> None:
    router = LLMRouter(provider="p", thresholds=[3])
    request = RouteRequest(
        messages=(),
        options=RequestOptions(),
        tiers=(TierInfo(index=1, name="a", est_cost_usd=0.0),),
        max_cost_usd=None,
    )
    decision = await router.route(request)
    assert decision.start_tier is None and "outside a run" in decision.reason
