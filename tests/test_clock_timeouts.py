"""Every timeout of a run on the injectable Clock: the run's deadline, the first-token and
idle timeouts, the hedge delay. With a FakeClock nothing fires until the test advances it,
so these tests have no wall-clock margins: each waits (a bounded poll) until the call is
under way, moves the clock, and checks the outcome."""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from typing import Any

import pytest

from cascade import Cascade, DeadlineExceeded, Delta
from cascade._clock import timeout_after
from cascade.testing import FakeClock, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
ONCE = {"retry": {"attempts": 1}}


def failover(url: str, **first: Any) -> dict[str, Any]:
    """One tier: provider a (with ``first``'s settings), then b."""
    return {
        "tiers": [
            tier(
                "t",
                provider("a", url, "m1", stream=True, timeout_s=7200, **ONCE, **first),
                provider("b", url, "m2", stream=True, timeout_s=7200, **ONCE),
            )
        ]
    }


async def ended(run: asyncio.Task[Any]) -> None:
    """The run ends (on the old, loop-clock timeouts it would not, for half an hour)."""
    await eventually(run.done, "the run ended")


async def started(server: FakeOpenAIServer, count: int = 1) -> None:
    await eventually(lambda: server.active_requests >= count, f"{count} calls under way")


def test_fake_clock_timers() -> None:
    clock = FakeClock()
    fired: list[str] = []
    clock.call_at(5.0, lambda: fired.append("five"))
    cancelled = clock.call_at(3.0, lambda: fired.append("three"))
    cancelled.cancel()
    clock.advance(4.9)
    assert fired == []
    clock.advance(0.1)
    assert fired == ["five"]
    clock.call_at(1.0, lambda: fired.append("past"))  # already due: runs at once
    assert fired == ["five", "past"]


async def test_the_run_deadline_is_on_the_clock(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(fault="hang"))
    clock = FakeClock()
    cfg = failover(openai_server.url)
    async with Cascade.from_dict(cfg, clock=clock) as c:
        run = asyncio.create_task(c.run(messages=USER, deadline_s=3600))
        await started(openai_server)
        clock.advance(3599.9)
        await asyncio.sleep(0.01)
        assert not run.done()  # 29.9 s on the clock: not yet
        clock.advance(0.1)
        await ended(run)
        with pytest.raises(DeadlineExceeded) as raised:
            await run
    assert [a.error_type for a in raised.value.attempts] == ["DeadlineExceeded"]


async def test_the_first_token_timeout_is_on_the_clock(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(fault="hang"))
    openai_server.script("m2", Reply(text=ANSWER))
    clock = FakeClock()
    cfg = failover(openai_server.url, first_token_timeout_s=1800)
    async with Cascade.from_dict(cfg, clock=clock) as c:
        run = asyncio.create_task(c.run(messages=USER))
        await started(openai_server)
        clock.advance(1800)
        await ended(run)
        result = await run
    assert result.provider == "b"
    failed = result.attempts[0]
    assert failed.error_type == "ProviderTimeout"
    assert "first_token_timeout_s" in (failed.error or "")


async def test_the_idle_timeout_is_on_the_clock(openai_server: FakeOpenAIServer) -> None:
    # A first delta, then only keep-alive comments: no progress until the clock says so.
    openai_server.script("m1", Reply(text="the start", fault="stall", chunk_delay_s=0.01))
    openai_server.script("m2", Reply(text=ANSWER))
    clock = FakeClock()
    cfg = failover(openai_server.url, idle_timeout_s=1800)
    async with (
        Cascade.from_dict(cfg, clock=clock) as c,
        c.stream(messages=USER, mode="speculative") as events,
    ):
        async for event in events:
            if isinstance(event, Delta):
                break  # "the start": the stall follows
        await asyncio.sleep(0.05)  # comments keep coming; the clock stands still
        assert [a.outcome for a in events.attempts] == []
        clock.advance(1800)
        async with asyncio.timeout(5):  # a guard against hanging, not a margin
            seen = [event async for event in events]
    finished = seen[-1]
    result = finished.result  # type: ignore[union-attr]
    assert result.provider == "b"
    assert "idle_timeout_s" in (result.attempts[0].error or "")


async def test_the_hedge_delay_is_on_the_clock(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(fault="hang"))
    openai_server.script("m2", Reply(text=ANSWER))
    clock = FakeClock()
    cfg = failover(openai_server.url)
    cfg["tiers"][0]["hedge"] = {"after_s": 1800}
    async with Cascade.from_dict(cfg, clock=clock) as c:
        run = asyncio.create_task(c.run(messages=USER))
        await started(openai_server)
        await asyncio.sleep(0.05)
        assert openai_server.request_count == 1  # no hedge before the clock says so
        clock.advance(1800)
        await ended(run)
        result = await run
    assert result.provider == "b"
    assert sorted((a.provider, a.outcome) for a in result.attempts) == [
        ("a", "cancelled"),
        ("b", "accepted"),
    ]


async def test_a_whole_calls_timeout_is_on_the_clock(openai_server: FakeOpenAIServer) -> None:
    # stream = false: post_whole bounds the call, on the Cascade's clock too.
    openai_server.script("m1", Reply(fault="hang"))
    openai_server.script("m2", Reply(text=ANSWER))
    clock = FakeClock()
    cfg = failover(openai_server.url)
    cfg["tiers"][0]["providers"][0]["stream"] = False
    async with Cascade.from_dict(cfg, clock=clock) as c:
        run = asyncio.create_task(c.run(messages=USER))
        await started(openai_server)
        clock.advance(7200)
        await ended(run)
        result = await run
    assert result.provider == "b"
    failed = result.attempts[0]
    assert failed.error_type == "ProviderTimeout"
    assert "timeout_s" in (failed.error or "")


@pytest.mark.parametrize("stream", [True, False])
async def test_autojump_jumps_to_a_timer_once_the_run_is_idle(
    openai_server: FakeOpenAIServer, stream: bool
) -> None:
    # Nothing sleeps: the hung call's timeout_s is the only timer, and autojump reaches it.
    openai_server.script("m1", Reply(fault="hang"))
    openai_server.script("m2", Reply(text=ANSWER))
    clock = FakeClock(autojump=True, autojump_threshold=0.05)
    cfg = failover(openai_server.url)
    cfg["tiers"][0]["providers"][0]["stream"] = stream
    async with Cascade.from_dict(cfg, clock=clock) as c:
        run = asyncio.create_task(c.run(messages=USER))
        await ended(run)
        result = await run
    assert result.provider == "b"
    assert [a.error_type for a in result.attempts] == ["ProviderTimeout", None]
    assert clock.monotonic() >= 7200


async def test_autojump_waits_while_the_clock_is_in_use() -> None:
    clock = FakeClock(autojump=True, autojump_threshold=0.05)
    fired: list[float] = []
    clock.call_at(10.0, lambda: fired.append(clock.monotonic()))
    clock.call_at(20.0, lambda: fired.append(clock.monotonic()))
    cancelled = clock.call_at(5.0, lambda: fired.append(-1.0))
    cancelled.cancel()
    await eventually(lambda: len(fired) == 2, "both timers fired")
    assert fired == [10.0, 20.0]  # one at a time, in order, the cancelled one skipped
    assert clock.sleepers == 0


async def test_a_loop_clock_timeout_fires_on_the_loop() -> None:
    with pytest.raises(TimeoutError):
        async with timeout_after(None, 0.0) as bound:  # due at once: the next turns
            await asyncio.sleep(3600)
    assert bound.expired()
    async with timeout_after(None, 3600.0) as idle:
        await asyncio.sleep(0)
    assert not idle.expired()


async def test_a_loop_clock_timer_keeps_nothing_of_the_callers_context() -> None:
    """A timeout left early leaves its cancelled timer queued in the loop (until the loop
    sweeps cancelled timers out); that timer must not keep what the caller's context held
    (a traced call's span) alive: it runs in an empty context, not a copy of the caller's,
    as ``asyncio.timeout``'s does."""
    var: contextvars.ContextVar[object] = contextvars.ContextVar("held")

    class Held:
        pass

    held = Held()
    gone = weakref.ref(held)
    token = var.set(held)
    async with timeout_after(None, 3600.0):
        await asyncio.sleep(0)
    var.reset(token)
    del held
    assert gone() is None  # freed by its reference count, the timer still queued
