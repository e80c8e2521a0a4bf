"""The router's place before the tier loop, over real loopback HTTP: its decision sets
the range, an explicit start_tier/max_tier wins, a router that fails loses nothing, and
the decision is on the Result, in the stream (both modes), on the run span and in the
routing record."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from cascade import (
    Cascade,
    Finished,
    RequestOptions,
    Result,
    Routed,
    RouteDecision,
    RouteRequest,
    TierStarted,
)
from cascade.testing import FakeClock, FakeOpenAIServer

from .helpers import JSON_SCHEMA, USER, VIAS, provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'


def three_tiers(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("small-a", url, "m1"), validators=[JSON_SCHEMA]),
            {
                **tier("medium", provider("medium-a", url, "m2"), validators=[JSON_SCHEMA]),
                "variants": [{"name": "plain"}, {"name": "cot", "suffix": "Think step by step."}],
            },
            tier("large", provider("large-a", url, "m3"), validators=[JSON_SCHEMA]),
        ],
        **extra,
    }


class Fixed:
    """A router that always says the same, counting how often it is asked."""

    def __init__(self, decision: RouteDecision, name: str = "fixed") -> None:
        self.name = name
        self.decision = decision
        self.asked: list[RouteRequest] = []

    async def route(self, request: RouteRequest) -> RouteDecision:
        self.asked.append(request)
        return self.decision


class Raising:
    name = "raising"

    async def route(self, request: RouteRequest) -> RouteDecision:
        raise RuntimeError("the router broke")


async def go(c: Cascade, via: str, **kw: Any) -> tuple[Result, list[Any]]:
    """The run's Result and its events (none for run())."""
    if via == "run":
        return await c.run(messages=USER, **kw), []
    events: list[Any] = []
    async with c.stream(messages=USER, mode=via, **kw) as stream:  # type: ignore[arg-type]
        async for event in stream:
            events.append(event)
    last = events[-1]
    assert isinstance(last, Finished)
    return last.result, events


@pytest.mark.parametrize("via", VIAS)
async def test_the_decision_sets_the_range(openai_server: FakeOpenAIServer, via: str) -> None:
    openai_server.script("m2", "not json")
    openai_server.script("m3", ANSWER)
    router = Fixed(RouteDecision(start_tier=2, reason="looks hard", score=0.9))
    async with Cascade.from_dict(three_tiers(openai_server.url), router=router) as c:
        result, events = await go(c, via)
    assert [r.model for r in openai_server.requests] == ["m2", "m3"]  # tier 1 never called
    assert result.tier == 3 and result.escalations == 1
    assert result.route == RouteDecision(
        start_tier=2, reason="looks hard", score=0.9, router="fixed"
    )
    (request,) = router.asked
    assert [t.name for t in request.tiers] == ["small", "medium", "large"]
    assert request.tiers[0].est_cost_usd > 0 and request.max_cost_usd is None
    if via != "run":
        kinds = [type(e) for e in events]
        assert kinds.index(Routed) < kinds.index(TierStarted)
        (routed,) = [e for e in events if isinstance(e, Routed)]
        assert (routed.start_tier, routed.max_tier) == (2, 3)
        assert (routed.start_tier_name, routed.max_tier_name) == ("medium", "large")
        assert routed.route == result.route


async def test_max_tier_and_variant(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", "not json")
    openai_server.script("m2", "still not json")
    router = Fixed(RouteDecision(max_tier=2))
    async with Cascade.from_dict(three_tiers(openai_server.url), router=router) as c:
        result = await c.run(messages=USER)
        assert not result.validated  # the best rejected answer: tier 3 was never tried
        assert [r.model for r in openai_server.requests] == ["m1", "m2"]
        openai_server.reset()
        openai_server.script("m2", ANSWER)
        router.decision = RouteDecision(start_tier=2, variant="cot")
        result = await c.run(messages=USER)
    assert result.variant == "cot"
    (sent,) = openai_server.requests
    assert sent.messages[-1]["content"].endswith("Think step by step.")


@pytest.mark.parametrize("call", [{"start_tier": 1}, {"max_tier": "large"}])
async def test_an_explicit_tier_on_the_call_wins(
    openai_server: FakeOpenAIServer, call: dict[str, Any]
) -> None:
    openai_server.script("m1", ANSWER)
    openai_server.script("m3", ANSWER)
    router = Fixed(RouteDecision(start_tier=3))
    async with Cascade.from_dict(three_tiers(openai_server.url), router=router) as c:
        result = await c.run(messages=USER, **call)
        assert result.tier == 1 and result.route is None
        assert router.asked == []  # not asked at all
        result = await c.run(messages=USER)
    assert result.tier == 3 and len(router.asked) == 1


@pytest.mark.parametrize("via", VIAS)
async def test_a_router_that_raises_loses_nothing(
    openai_server: FakeOpenAIServer, via: str, caplog: pytest.LogCaptureFixture
) -> None:
    openai_server.script("m1", ANSWER)
    async with Cascade.from_dict(three_tiers(openai_server.url), router=Raising()) as c:
        with caplog.at_level(logging.WARNING, logger="cascade"):
            result, events = await go(c, via)
    assert result.tier == 1 and result.validated
    assert result.route is not None and result.route.router == "raising"
    assert (result.route.start_tier, result.route.max_tier) == (None, None)
    assert "failed: RuntimeError: the router broke" in result.route.reason
    assert any("the router broke" in r.getMessage() for r in caplog.records)
    if via != "run":
        (routed,) = [e for e in events if isinstance(e, Routed)]
        assert (routed.start_tier, routed.max_tier) == (1, 3)


@pytest.mark.parametrize(
    ("decision", "why"),
    [
        (RouteDecision(start_tier=4), "start_tier 4 is not a tier from 1 to 3"),
        (RouteDecision(start_tier=0), "start_tier 0 is not a tier"),
        (RouteDecision(start_tier=3, max_tier=2), "above max_tier"),
        (RouteDecision(start_tier=1, variant="cot"), "no prompt variant 'cot'"),
        ("tier 3", "returned str, not a RouteDecision"),
    ],
)
async def test_a_decision_out_of_range_is_a_failure(
    openai_server: FakeOpenAIServer, decision: Any, why: str
) -> None:
    openai_server.script("m1", ANSWER)
    async with Cascade.from_dict(
        three_tiers(openai_server.url), router=Fixed(decision, name="odd")
    ) as c:
        with capture_logs() as logs:
            result = await c.run(messages=USER)
    assert result.tier == 1
    assert result.route is not None and why in result.route.reason
    (warning,) = [e for e in logs if e["event"] == "cascade.router_failed"]
    assert warning["router"] == "odd" and why in warning["error"]


async def test_a_router_that_overruns_its_time_on_the_clock(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", ANSWER)
    clock = FakeClock()
    entered = asyncio.Event()

    class Slow:
        name = "slow"

        async def route(self, request: RouteRequest) -> RouteDecision:
            entered.set()
            await asyncio.Event().wait()  # never decides
            raise AssertionError("unreachable")

    cfg = three_tiers(openai_server.url, router_timeout_s=30)
    async with Cascade.from_dict(cfg, router=Slow(), clock=clock) as c:
        run = asyncio.create_task(c.run(messages=USER))
        await entered.wait()
        clock.advance(29.9)
        await asyncio.sleep(0.01)
        assert not run.done()
        clock.advance(0.1)
        await eventually(run.done, "the run went on without the router")
        result = await run
    assert result.tier == 1
    assert result.route is not None
    assert result.route.reason.startswith("router 'slow' timed out after 30.0s")


async def test_the_decision_on_the_span_and_in_the_record(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m2", ANSWER)
    exporter = InMemorySpanExporter()
    provider_ = TracerProvider()
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    router = Fixed(RouteDecision(start_tier=2, max_tier=2, reason="metadata says sql", score=3))
    async with Cascade.from_dict(
        three_tiers(openai_server.url), router=router, tracer_provider=provider_, environ={}
    ) as c:
        with capture_logs() as logs:
            result = await c.run(messages=USER, options=RequestOptions(metadata={"task": "sql"}))
    (run,) = [s for s in exporter.get_finished_spans() if s.name == "cascade.run"]
    attrs = dict(run.attributes or {})
    assert attrs["cascade.route.router"] == "fixed"
    assert (attrs["cascade.route.start_tier"], attrs["cascade.route.max_tier"]) == (2, 2)
    assert attrs["cascade.route.reason"] == "metadata says sql"
    assert attrs["cascade.route.score"] == 3
    assert list(attrs["cascade.tier.path"]) == ["medium"]
    (record,) = [e for e in logs if e["event"] == "cascade.route"]
    assert record["route"] == {
        "router": "fixed",
        "start_tier": 2,
        "max_tier": 2,
        "variant": None,
        "reason": "metadata says sql",
        "score": 3,
        "cost_usd": 0.0,
    }
    assert record["tier_path"] == ["medium"] and record["cost_usd"] == result.cost_usd
    provider_.shutdown()


async def test_the_router_sees_the_budget_left(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", ANSWER)
    router = Fixed(RouteDecision())
    async with Cascade.from_dict(three_tiers(openai_server.url), router=router) as c:
        result = await c.run(messages=USER, max_cost_usd=0.5)
    assert router.asked[0].max_cost_usd == 0.5
    assert result.route == RouteDecision(router="fixed")  # no opinion: the whole range
    assert result.tier == 1


async def test_a_configured_router_runs_from_config(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m3", ANSWER)
    cfg = three_tiers(
        openai_server.url,
        router={"kind": "rules", "rules": [{"keywords": ["6 * 7"], "start_tier": 3}]},
    )
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert result.tier == 3 and result.route is not None
    assert (result.route.router, result.route.reason) == ("rules", "rule 1 matched")
    assert [r.model for r in openai_server.requests] == ["m3"]
