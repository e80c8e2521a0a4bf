"""A tier's quality breaker: its state machine on a fake clock, and in the engine over
loopback HTTP: a provider answering garbage with status 200 opens its tier's breaker,
later runs skip the tier (the fake server sees no request), and after the cool-down one
probe decides. Visible in the events, on the tier span and on a metric."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cascade import (
    AllProvidersFailed,
    AttemptFinished,
    Cascade,
    CascadeExhausted,
    ConfigError,
    Escalated,
    Finished,
    Result,
)
from cascade._config import Config, QualityConfig
from cascade._telemetry import _semconv as sc
from cascade.resilience.quality import QUALITY_OPEN, QualityBreaker
from cascade.testing import FakeClock, FakeOpenAIServer, FakeRequest, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
GARBAGE = "lorem ipsum, not JSON at all"
QUALITY = {"window": 4, "min_samples": 4, "min_pass_rate": 0.5, "cooldown_s": 60}


def two_tiers(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "tiers": [
            {
                **tier("small", provider("s", url, "ms"), validators=[JSON_SCHEMA]),
                "quality": QUALITY,
            },
            tier("large", provider("l", url, "ml"), validators=[JSON_SCHEMA]),
        ],
        **extra,
    }


def small_calls(server: FakeOpenAIServer) -> int:
    return sum(r.model == "ms" for r in server.requests)


# -- the state machine --------------------------------------------------------------------


def breaker(clock: FakeClock, **kw: Any) -> tuple[QualityBreaker, list[tuple[str, str, str]]]:
    changes: list[tuple[str, str, str]] = []
    config = QualityConfig(**{**QUALITY, **kw})
    qb = QualityBreaker(
        "small", config, clock=clock, listeners=[lambda t, o, n: changes.append((t, o, n))]
    )
    return qb, changes


def test_opens_below_the_floor_only_once_min_samples_are_in() -> None:
    clock = FakeClock()
    qb, changes = breaker(clock)
    for _ in range(3):
        assert qb.admit() == "closed"
        qb.record(False, probe=False)
    assert qb.state == "closed"  # 0/3 passed, but min_samples is 4
    qb.record(False, probe=False)
    assert qb.state == "open" and changes == [("small", "closed", "open")]
    assert qb.admit() is None
    assert qb.retry_in_s() == 60.0
    assert "open: 0/4 passed" in repr(qb) and "next probe in 60s" in repr(qb)


def test_the_window_slides() -> None:
    qb, _ = breaker(FakeClock())
    for passed in (True, True, False, False):  # 2/4 = the floor: not below it
        qb.record(passed, probe=False)
    assert qb.state == "closed" and qb.pass_rate == 0.5
    qb.record(False, probe=False)  # the first True leaves the window: 1/4
    assert qb.state == "open" and qb.pass_rate == 0.25 and qb.samples == 4


def test_one_probe_after_the_cool_down_decides() -> None:
    clock = FakeClock()
    qb, changes = breaker(clock)
    for _ in range(4):
        qb.record(False, probe=False)
    clock.advance(59.9)
    assert qb.admit() is None
    clock.advance(0.1)
    assert qb.admit() == "probe"
    assert qb.admit() is None  # one probe at a time
    assert qb.state == "half_open" and "probe out" in repr(qb)
    qb.record(True, probe=False)  # a run admitted before it opened: stale, ignored
    assert qb.state == "half_open"
    qb.record(False, probe=True)  # the probe failed: open for another cool-down
    assert qb.state == "open" and qb.retry_in_s() == 60.0
    clock.advance(60)
    assert qb.admit() == "probe"
    qb.release(probe=True)  # no verdict (its provider failed): the next run probes
    assert qb.state == "half_open" and qb.admit() == "probe"
    qb.record(True, probe=True)
    assert qb.state == "closed" and qb.samples == 0  # a fresh window
    assert [c[1:] for c in changes] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    assert qb.transitions == 5


def test_config_errors_name_their_path() -> None:
    base = tier("small", provider("s", "http://127.0.0.1:1", "ms"))
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"tiers": [{**base, "quality": {"window": 10, "min_samples": 11}}]})
    assert info.value.path == "tiers[0].quality.min_samples"
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"tiers": [{**base, "quality": {"min_pass_rate": 1.5}}]})
    assert info.value.path == "tiers[0].quality.min_pass_rate"
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"tiers": [{**base, "quality": {"cooldown_s": float("inf")}}]})
    assert info.value.path == "tiers[0].quality.cooldown_s"
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"tiers": [{**base, "quality": {"floor": 0.2}}]})
    assert info.value.path == "tiers[0].quality.floor"


# -- in the engine, over loopback ------------------------------------------------------------


async def test_garbage_opens_the_tier_and_later_runs_skip_it_until_a_probe_passes(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock()
    openai_server.script("ms", GARBAGE)
    openai_server.script("ml", ANSWER)
    async with Cascade.from_dict(two_tiers(openai_server.url), clock=clock) as c:
        qb = c.quality_breakers["small"]
        for _ in range(4):
            result = await c.run(messages=USER)
            assert [a.outcome for a in result.attempts] == ["rejected", "accepted"]
        assert qb.state == "open" and small_calls(openai_server) == 4

        events: list[Any] = []
        async with c.stream(messages=USER) as stream:
            async for event in stream:
                events.append(event)
        assert small_calls(openai_server) == 4  # skipped: the server saw no request
        skipped = next(e.attempt for e in events if isinstance(e, AttemptFinished))
        assert (skipped.outcome, skipped.tier_name) == ("skipped", "small")
        assert skipped.error_type == QUALITY_OPEN
        assert skipped.error is not None and "quality breaker open" in skipped.error
        assert "0% of its last 4 answers passed; next probe in 60s" in skipped.error
        (up,) = [e for e in events if isinstance(e, Escalated)]
        assert (up.from_tier_name, up.to_tier_name, up.reason) == ("small", "large", "quality_open")
        assert isinstance(events[-1], Finished) and events[-1].result.tier_name == "large"

        clock.advance(30)
        result = await c.run(messages=USER)  # still cooling down
        assert result.attempts[0].outcome == "skipped" and small_calls(openai_server) == 4

        openai_server.respond("ms", lambda r: ANSWER)  # the provider has recovered
        clock.advance(30)
        result = await c.run(messages=USER)  # the probe
        assert result.tier_name == "small" and small_calls(openai_server) == 5
        assert qb.state == "closed"
        result = await c.run(messages=USER)
        assert result.tier_name == "small" and small_calls(openai_server) == 6


async def test_a_probe_that_is_rejected_opens_it_again(openai_server: FakeOpenAIServer) -> None:
    clock = FakeClock()
    openai_server.script("ms", GARBAGE)
    openai_server.script("ml", ANSWER)
    async with Cascade.from_dict(two_tiers(openai_server.url), clock=clock) as c:
        for _ in range(4):
            await c.run(messages=USER)
        clock.advance(60)
        result = await c.run(messages=USER)  # the probe: garbage again
        assert [a.outcome for a in result.attempts] == ["rejected", "accepted"]
        assert c.quality_breakers["small"].state == "open"
        assert c.quality_breakers["small"].retry_in_s() == 60
        result = await c.run(messages=USER)
        assert result.attempts[0].error_type == QUALITY_OPEN
        assert small_calls(openai_server) == 5


async def test_while_the_probe_is_out_other_runs_skip_the_tier(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock()
    openai_server.script("ms", GARBAGE)
    openai_server.script("ml", ANSWER)
    async with Cascade.from_dict(two_tiers(openai_server.url), clock=clock) as c:
        for _ in range(4):
            await c.run(messages=USER)
        clock.advance(60)
        arrived, go = asyncio.Event(), asyncio.Event()

        async def held(request: FakeRequest) -> str:
            arrived.set()
            await go.wait()
            return ANSWER

        openai_server.respond("ms", held)
        probe = asyncio.create_task(c.run(messages=USER))
        await asyncio.wait_for(arrived.wait(), 5)
        assert c.quality_breakers["small"].state == "half_open"
        other = await c.run(messages=USER)
        assert other.attempts[0].error_type == QUALITY_OPEN
        assert other.attempts[0].error is not None
        assert "a probe is under way" in other.attempts[0].error
        go.set()
        result: Result = await asyncio.wait_for(probe, 5)
        assert result.tier_name == "small" and c.quality_breakers["small"].state == "closed"
        assert small_calls(openai_server) == 5


async def test_transport_failures_are_not_verdicts(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ms", Reply(status=500))
    openai_server.script("ml", ANSWER)
    cfg = two_tiers(openai_server.url)
    cfg["tiers"][0]["providers"][0]["retry"] = {"attempts": 1}
    async with Cascade.from_dict(cfg, clock=FakeClock()) as c:
        for _ in range(6):
            result = await c.run(messages=USER)
            assert [a.outcome for a in result.attempts] == ["failed", "accepted"]
        qb = c.quality_breakers["small"]
        assert qb.state == "closed" and qb.samples == 0


async def test_a_probe_with_no_verdict_hands_the_probe_on(openai_server: FakeOpenAIServer) -> None:
    clock = FakeClock()
    openai_server.script("ms", GARBAGE)
    openai_server.script("ml", ANSWER)
    cfg = two_tiers(openai_server.url)
    cfg["tiers"][0]["providers"][0]["retry"] = {"attempts": 1}
    async with Cascade.from_dict(cfg, clock=clock) as c:
        for _ in range(4):
            await c.run(messages=USER)
        clock.advance(60)
        openai_server.respond("ms", lambda r: Reply(status=500))
        result = await c.run(messages=USER)  # the probe's call fails: no verdict
        assert result.attempts[0].outcome == "failed"
        assert c.quality_breakers["small"].state == "half_open"
        openai_server.respond("ms", lambda r: ANSWER)
        result = await c.run(messages=USER)  # the next run is the probe
        assert result.tier_name == "small" and c.quality_breakers["small"].state == "closed"


@pytest.mark.parametrize("on_exhausted", ["best", "error"])
async def test_every_tier_skipped_ends_with_all_providers_failed(
    openai_server: FakeOpenAIServer, on_exhausted: str
) -> None:
    openai_server.script("ms", GARBAGE)
    cfg = {
        "tiers": [
            {
                **tier("small", provider("s", openai_server.url, "ms"), validators=[JSON_SCHEMA]),
                "quality": QUALITY,
            }
        ],
        "on_exhausted": on_exhausted,
    }
    async with Cascade.from_dict(cfg, clock=FakeClock()) as c:
        for _ in range(4):
            if on_exhausted == "best":
                result = await c.run(messages=USER)  # the garbage, unvalidated
                assert not result.validated
            else:
                with pytest.raises(CascadeExhausted):
                    await c.run(messages=USER)
        with pytest.raises(AllProvidersFailed) as info:
            await asyncio.wait_for(c.run(messages=USER), 5)
    assert "every tier was skipped: its quality breaker is open" in str(info.value)
    assert [a.error_type for a in info.value.attempts] == [QUALITY_OPEN]
    assert openai_server.request_count == 4


@pytest.fixture
def otel(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[InMemorySpanExporter, Any, Any]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        yield exporter, reader, (tracer_provider, meter_provider)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    tracer_provider.shutdown()
    meter_provider.shutdown()


async def test_skips_and_transitions_on_spans_and_metrics(
    openai_server: FakeOpenAIServer, otel: tuple[InMemorySpanExporter, Any, Any]
) -> None:
    exporter, reader, (tracer_provider, meter_provider) = otel
    clock = FakeClock()
    openai_server.script("ms", GARBAGE)
    openai_server.script("ml", ANSWER)
    async with Cascade.from_dict(
        two_tiers(openai_server.url),
        clock=clock,
        environ={},
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    ) as c:
        for _ in range(4):
            await c.run(messages=USER)
        exporter.clear()
        await c.run(messages=USER)
        spans = exporter.get_finished_spans()
        (small,) = [s for s in spans if s.name == "cascade.tier small"]
        assert dict(small.attributes or {})[sc.CASCADE_TIER_OUTCOME] == "skipped"
        (skip,) = [e for e in small.events if e.name == sc.EVENT_QUALITY_SKIP]
        assert dict(skip.attributes or {}) == {
            sc.CASCADE_QUALITY_STATE: "open",
            sc.CASCADE_QUALITY_RETRY_IN_S: 60.0,
        }
        (run,) = [s for s in spans if s.name == "cascade.run"]
        (up,) = [e for e in run.events if e.name == sc.EVENT_ESCALATION]
        assert dict(up.attributes or {})[sc.CASCADE_ESCALATION_REASON] == "quality_open"
        openai_server.respond("ms", lambda r: ANSWER)
        clock.advance(60)
        exporter.clear()
        await c.run(messages=USER)  # the probe, which closes it
        (small,) = [s for s in exporter.get_finished_spans() if s.name == "cascade.tier small"]
        changes = [
            dict(e.attributes or {}) for e in small.events if e.name == sc.EVENT_QUALITY_CHANGE
        ]
        assert [(a[sc.CASCADE_QUALITY_FROM], a[sc.CASCADE_QUALITY_TO]) for a in changes] == [
            ("open", "half_open"),
            ("half_open", "closed"),
        ]
    data = reader.get_metrics_data()
    points = [
        p
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == sc.METRIC_QUALITY_TRANSITIONS
        for p in m.data.data_points
    ]
    counted = {
        (p.attributes[sc.CASCADE_QUALITY_FROM], p.attributes[sc.CASCADE_QUALITY_TO]): p.value
        for p in points
    }
    assert counted == {("closed", "open"): 1, ("open", "half_open"): 1, ("half_open", "closed"): 1}
    assert all(p.attributes[sc.CASCADE_TIER_NAME] == "small" for p in points)
