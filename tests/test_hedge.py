"""Hedged requests: a slow first token starts a sibling; the first to answer is kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, ClassVar

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import cascade
from cascade import (
    AttemptFinished,
    Cascade,
    Chunk,
    ConfigError,
    Finished,
    HedgeConfig,
    ProviderConnectionError,
)
from cascade._hedge import hedge_delay
from cascade.providers import register_provider_kind
from cascade.testing import FakeOpenAIServer, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'


def hedged(url: str, *, hedge: dict[str, Any] | None = None, **a: Any) -> dict[str, Any]:
    t = tier(
        "small",
        provider("a", url, "ma", stream=True, **a),
        provider("b", url, "mb", stream=True),
        provider("c", url, "mc", stream=True),
        validators=[JSON_SCHEMA],
    )
    t["hedge"] = hedge or {"after_s": 0.05}
    return {"tiers": [t]}


async def settled(server: FakeOpenAIServer) -> None:
    """Wait (bounded) until the server has no request in progress."""
    for _ in range(200):
        if server.active_requests == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{server.active_requests} requests still in progress")


async def test_slow_first_token_starts_a_sibling_and_the_loser_is_cancelled_and_costed(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("ma", Reply(text=ANSWER, latency_s=30))
    openai_server.script("mb", ANSWER)
    async with Cascade.from_dict(hedged(openai_server.url)) as c:
        result = await c.run(messages=USER)
        await settled(openai_server)  # the loser's request was cancelled upstream
    assert (result.provider, result.validated) == ("b", True)
    by_provider = {a.provider: a for a in result.attempts}
    loser, winner = by_provider["a"], by_provider["b"]
    assert (loser.outcome, loser.error_type, loser.hedge) == ("cancelled", "HedgeLost", False)
    assert loser.cost_usd > 0 and loser.input_tokens > 0  # its prompt was sent
    assert (winner.outcome, winner.hedge) == ("accepted", True)
    assert result.cost_usd == pytest.approx(sum(a.cost_usd for a in result.attempts))
    assert openai_server.request_count == 2  # c was never called


async def test_no_hedge_when_the_first_token_comes_in_time(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.default = ANSWER
    async with Cascade.from_dict(hedged(openai_server.url, hedge={"after_s": 5})) as c:
        result = await c.run(messages=USER)
    assert result.provider == "a" and len(result.attempts) == 1
    assert openai_server.request_count == 1


async def test_the_first_call_can_still_win_after_the_hedge_started(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("ma", Reply(text=ANSWER, latency_s=0.2))
    openai_server.script("mb", Reply(text=ANSWER, latency_s=30))
    async with Cascade.from_dict(hedged(openai_server.url)) as c:
        result = await c.run(messages=USER)
        await settled(openai_server)
    assert result.provider == "a"
    hedge = next(a for a in result.attempts if a.provider == "b")
    assert (hedge.outcome, hedge.hedge) == ("cancelled", True)


async def test_a_failing_hedge_leaves_the_race_to_the_first_call(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("ma", Reply(text=ANSWER, latency_s=0.2))
    openai_server.script("mb", Reply(status=500))
    async with Cascade.from_dict(hedged(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.provider == "a"
    outcomes = [(a.provider, a.outcome, a.hedge) for a in result.attempts]
    assert ("b", "failed", True) in outcomes and ("a", "accepted", False) in outcomes


async def test_a_failing_first_call_leaves_the_race_to_the_hedge(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("ma", Reply(status=503, latency_s=0.2))
    openai_server.script("mb", Reply(text=ANSWER, latency_s=0.3))
    async with Cascade.from_dict(hedged(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.provider == "b"
    assert [a.outcome for a in result.attempts] == ["failed", "accepted"]


async def test_when_both_fail_the_tier_fails_over_to_the_next_untried_provider(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("ma", Reply(status=503, latency_s=0.1))
    openai_server.script("mb", Reply(status=503))
    openai_server.script("mc", ANSWER)
    async with Cascade.from_dict(hedged(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.provider == "c"
    assert [a.provider for a in result.attempts] == ["b", "a", "c"]


async def test_an_open_breaker_is_not_taken_as_a_hedge(openai_server: FakeOpenAIServer) -> None:
    cfg = hedged(openai_server.url)
    cfg["tiers"][0]["providers"][1]["breaker"] = {"fail_max": 1}
    # Run 1: a and b fail (b's breaker opens), c answers.
    openai_server.script("ma", Reply(status=500), Reply(text=ANSWER, latency_s=0.2))
    openai_server.script("mb", Reply(status=500))
    openai_server.script("mc", ANSWER, Reply(text=ANSWER, latency_s=30))
    async with Cascade.from_dict(cfg) as c:
        await c.run(messages=USER)
        assert c.breakers["b"].state == "open"
        # Run 2: a is slow to its first token; the hedge skips b and takes c.
        result = await c.run(messages=USER)
        await settled(openai_server)
    assert result.provider == "a"
    assert {(a.provider, a.outcome) for a in result.attempts} == {
        ("a", "accepted"),
        ("c", "cancelled"),
    }


async def test_deadline_during_a_race_records_both_calls(openai_server: FakeOpenAIServer) -> None:
    openai_server.default = Reply(text=ANSWER, latency_s=30)
    cfg = hedged(openai_server.url)
    cfg["on_exhausted"] = "error"
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(cascade.DeadlineExceeded) as info:
            await c.run(messages=USER, deadline_s=0.3)
        await settled(openai_server)
    recorded = {(a.provider, a.error_type, a.hedge) for a in info.value.attempts}
    assert recorded == {("a", "DeadlineExceeded", False), ("b", "DeadlineExceeded", True)}


async def test_percentile_hedge_learns_the_providers_time_to_first_token(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.default = ANSWER
    cfg = hedged(openai_server.url, hedge={"after_s": 0.01, "percentile": 95, "min_samples": 3})
    async with Cascade.from_dict(cfg) as c:
        for _ in range(3):
            await c.run(messages=USER)
        window = c._calls.ttft_windows["a"]
        assert len(window) >= 3
        policy = c.config.tiers[0].hedge
        assert policy is not None
        assert hedge_delay(policy, window) == max(window)  # p95 of 3 samples: the slowest


def test_hedge_delay_percentile() -> None:
    policy = HedgeConfig(after_s=2.0, percentile=90, min_samples=10)
    assert hedge_delay(policy, [0.1] * 9) == 2.0  # too few samples: after_s
    assert hedge_delay(policy, None) == 2.0
    ttfts = [i / 100 for i in range(1, 101)]  # 0.01 .. 1.00
    assert hedge_delay(policy, ttfts) == pytest.approx(0.90)
    assert hedge_delay(HedgeConfig(after_s=0.5), ttfts) == 0.5  # fixed


@pytest.mark.parametrize(
    ("hedge", "path"),
    [
        ({"after_s": 0}, "tiers[0].hedge.after_s"),
        ({"percentile": 100}, "tiers[0].hedge.percentile"),
        ({"min_samples": 0}, "tiers[0].hedge.min_samples"),
        ({"after": 1}, "tiers[0].hedge.after"),
    ],
)
def test_hedge_config_errors_name_the_field(hedge: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(hedged("http://127.0.0.1:9/v1", hedge=hedge))
    assert info.value.path == path


class _Scripted:
    """A provider whose streams are written by the test (plug-in path)."""

    streams: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: Any, *, session: Any, api_key: str | None) -> None:
        self.config, self.name, self.model = config, config.name, config.model

    def stream(self, messages: Any, options: Any) -> Any:
        return self.streams[self.name]()

    async def aclose(self) -> None:
        pass


register_provider_kind("hedge-scripted", _Scripted, replace=True)


def scripted(*names: str, **extra: Any) -> dict[str, Any]:
    providers = [
        {"name": n, "kind": "hedge-scripted", "model": n, "stream": True,
         "input_cost_per_mtok": 1, "output_cost_per_mtok": 1}
        for n in names
    ]  # fmt: skip
    return {"tiers": [{"name": "t", "hedge": {"after_s": 0.05}, "providers": providers}], **extra}


async def test_a_kept_call_that_breaks_gives_the_cancelled_one_another_turn() -> None:
    a_cancelled = asyncio.Event()  # the call b beat is on the run's record, cancelled

    async def healthy_but_slow() -> AsyncIterator[Chunk]:
        await asyncio.sleep(0.2)
        yield Chunk(text="42", finish_reason="stop", input_tokens=10, output_tokens=1)

    async def fast_then_broken() -> AsyncIterator[Chunk]:
        yield Chunk(text="4")
        # It breaks once the call it beat is recorded (which ends first is otherwise up to
        # the clock: b broke 10 ms after its text, and a loop that stalled as long recorded
        # b's failure before a's cancellation).
        with anyio.fail_after(5):
            await a_cancelled.wait()
        raise ProviderConnectionError("dropped", provider="b", model="b")

    _Scripted.streams = {"a": healthy_but_slow, "b": fast_then_broken}
    async with (
        Cascade.from_dict(scripted("a", "b", on_outage="error")) as c,
        c.stream(messages=USER) as stream,
    ):
        async for event in stream:
            if isinstance(event, AttemptFinished) and event.attempt.outcome == "cancelled":
                a_cancelled.set()
            if isinstance(event, Finished):
                result = event.result
    assert (result.provider, result.text) == ("a", "42")
    assert [(a.provider, a.outcome) for a in result.attempts] == [
        ("a", "cancelled"),
        ("b", "failed"),
        ("a", "accepted"),
    ]


async def test_no_call_outlives_a_race_cut_by_the_deadline() -> None:
    async def slow_to_close() -> AsyncIterator[Chunk]:
        try:
            await asyncio.sleep(30)
            yield Chunk(text="never")
        finally:
            await asyncio.sleep(0.2)  # closing the upstream takes a while

    async def slow_body() -> AsyncIterator[Chunk]:
        yield Chunk(text='{"answer"')
        await asyncio.sleep(0.5)
        yield Chunk(text=": 42}", finish_reason="stop", input_tokens=10, output_tokens=5)

    _Scripted.streams = {"a": slow_to_close, "b": slow_body}
    before = asyncio.all_tasks()
    async with Cascade.from_dict(scripted("a", "b", on_exhausted="error")) as c:
        with pytest.raises(cascade.DeadlineExceeded) as info:
            await c.run(messages=USER, deadline_s=0.15)
    assert asyncio.all_tasks() == before  # the kept call was cancelled with the run
    hedge = next(a for a in info.value.attempts if a.provider == "b")
    assert hedge.error_type == "DeadlineExceeded" and hedge.cost_usd > 0  # its text was paid


async def test_the_cost_metric_counts_the_hedge_that_lost(openai_server: FakeOpenAIServer) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    openai_server.script("ma", Reply(text=ANSWER, latency_s=30))
    openai_server.script("mb", ANSWER)
    async with Cascade.from_dict(hedged(openai_server.url), meter_provider=meters) as c:
        result = await c.run(messages=USER)
    costs = {
        dict(point.attributes or {})["cascade.provider"]: point.value
        for rm in reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "cascade.cost"
        for point in metric.data.data_points  # type: ignore[union-attr]
    }
    assert set(costs) == {"a", "b"}
    assert sum(costs.values()) == pytest.approx(result.cost_usd)
    meters.shutdown()
