"""The async circuit breaker, driven by a FakeClock: no test sleeps for real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from cascade import (
    InputError,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
)
from cascade._clock import FakeClock
from cascade.resilience import AsyncBreaker, BreakerState, CircuitOpen, counts_as_failure

pytestmark = pytest.mark.anyio

P: dict[str, Any] = {"provider": "p", "model": "m"}


def state(b: AsyncBreaker) -> str:
    """The state, read through a call so mypy does not narrow it across transitions."""
    return b.state


def timeout() -> ProviderTimeout:
    return ProviderTimeout("read timeout", **P)


def breaker(clock: FakeClock, **kwargs: Any) -> AsyncBreaker:
    return AsyncBreaker("p", fail_max=3, reset_timeout_s=30.0, clock=clock, **kwargs)


async def fail(b: AsyncBreaker, exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        async with b.admit():
            raise exc


async def trip(b: AsyncBreaker) -> None:
    for _ in range(b.fail_max):
        await fail(b, timeout())
    assert state(b) == "open"


@pytest.mark.parametrize(
    ("exc", "counted"),
    [
        (ProviderTimeout("t", **P), True),
        (ProviderConnectionError("reset", **P), True),
        (MalformedResponse("bad json", **P), True),
        (ProviderStatusError("oops", status=500, **P), True),
        (ProviderStatusError("bad gateway", status=502, **P), True),
        (ProviderStatusError("bad request", status=400, **P), False),
        (ProviderStatusError("unauthorised", status=401, **P), False),
        (RateLimited("slow down", **P), False),
        (RateLimited("overloaded", status=529, **P), False),
        (ProviderError("other", **P), False),
        (InputError("bad input"), False),
        (ValueError("bug"), False),
        (asyncio.CancelledError(), False),
    ],
)
def test_counts_as_failure(exc: BaseException, counted: bool) -> None:
    assert counts_as_failure(exc, count_rate_limits=False) is counted


def test_rate_limits_count_when_asked() -> None:
    assert counts_as_failure(RateLimited("x", **P), count_rate_limits=True)
    assert counts_as_failure(RateLimited("x", status=529, **P), count_rate_limits=True)


async def test_opens_after_fail_max_counted_failures() -> None:
    clock = FakeClock()
    b = breaker(clock)
    await fail(b, timeout())
    await fail(b, ProviderConnectionError("refused", **P))
    assert state(b) == "closed"
    assert b.fail_counter == 2
    await fail(b, ProviderStatusError("down", status=503, **P))
    assert state(b) == "open"
    with pytest.raises(CircuitOpen) as info:
        b.admit()
    assert isinstance(info.value, ProviderError)
    assert info.value.provider == "p"
    assert info.value.retry_in_s == pytest.approx(30.0)
    assert "circuit open" in str(info.value)


async def test_success_resets_the_consecutive_count() -> None:
    b = breaker(FakeClock())
    await fail(b, timeout())
    await fail(b, timeout())
    async with b.admit():
        pass
    assert b.fail_counter == 0
    await fail(b, timeout())
    await fail(b, timeout())
    assert state(b) == "closed"


async def test_rate_limits_and_uncounted_errors_keep_it_closed() -> None:
    b = breaker(FakeClock())
    for _ in range(10):
        await fail(b, RateLimited("429", retry_after=1.0, **P))
        await fail(b, ProviderStatusError("bad request", status=400, **P))
        await fail(b, ValueError("not the provider's fault"))
    assert state(b) == "closed"
    assert b.fail_counter == 0


async def test_rate_limits_open_it_when_counted() -> None:
    b = breaker(FakeClock(), count_rate_limits=True)
    for _ in range(3):
        await fail(b, RateLimited("429", **P))
    assert state(b) == "open"


async def test_cancellation_is_not_counted() -> None:
    b = breaker(FakeClock())
    for _ in range(5):
        await fail(b, asyncio.CancelledError())
    assert state(b) == "closed"
    assert b.fail_counter == 0


async def test_open_turns_half_open_after_the_reset_timeout() -> None:
    clock = FakeClock()
    b = breaker(clock)
    await trip(b)
    clock.advance(29.5)
    with pytest.raises(CircuitOpen) as info:
        b.admit()
    assert info.value.retry_in_s == pytest.approx(0.5)
    assert state(b) == "open"
    clock.advance(0.5)
    permit = b.admit()
    assert permit.probe
    assert state(b) == "half_open"
    permit.release()


async def test_exactly_one_probe_under_concurrency() -> None:
    clock = FakeClock()
    b = breaker(clock)
    await trip(b)
    clock.advance(30.0)
    gate = asyncio.Event()
    calls = 0

    async def call() -> str:
        nonlocal calls
        try:
            async with b.admit():
                calls += 1
                await gate.wait()  # the probe is in flight while the others arrive
                return "called"
        except CircuitOpen:
            return "refused"

    tasks = [asyncio.create_task(call()) for _ in range(50)]
    for _ in range(3):
        await asyncio.sleep(0)
    assert calls == 1
    assert "probe=out" in repr(b)
    gate.set()
    results = await asyncio.gather(*tasks)
    assert results.count("called") == 1
    assert results.count("refused") == 49
    assert state(b) == "closed"


async def test_successful_probe_closes() -> None:
    clock = FakeClock()
    b = breaker(clock)
    await trip(b)
    clock.advance(30.0)
    b.admit().success()
    assert state(b) == "closed"
    assert b.fail_counter == 0
    assert not b.admit().probe


async def test_failed_probe_reopens_for_a_new_window() -> None:
    clock = FakeClock()
    b = breaker(clock)
    await trip(b)
    clock.advance(45.0)
    await fail(b, timeout())
    assert state(b) == "open"
    assert b.retry_in_s() == pytest.approx(30.0)  # counted from the probe's failure
    clock.advance(29.0)
    with pytest.raises(CircuitOpen):
        b.admit()
    clock.advance(1.0)
    assert b.admit().probe


async def test_uncounted_probe_error_closes() -> None:
    # The provider answered (a 429 or a 400): it is up, as pybreaker treats excluded errors.
    clock = FakeClock()
    b = breaker(clock)
    await trip(b)
    clock.advance(30.0)
    await fail(b, RateLimited("429", **P))
    assert state(b) == "closed"


async def test_released_probe_frees_the_slot() -> None:
    clock = FakeClock()
    b = breaker(clock)
    await trip(b)
    clock.advance(30.0)
    await fail(b, asyncio.CancelledError())  # the probe was cancelled: no verdict
    assert state(b) == "half_open"
    permit = b.admit()
    assert permit.probe
    with pytest.raises(CircuitOpen) as info:
        b.admit()
    assert info.value.retry_in_s == 0.0
    permit.success()
    assert state(b) == "closed"


async def test_stale_permits_are_ignored() -> None:
    clock = FakeClock()
    b = breaker(clock)
    late = [b.admit() for _ in range(5)]  # in flight when the breaker trips
    await trip(b)
    for permit in late:
        permit.failure()
    assert b.retry_in_s() == pytest.approx(30.0)
    clock.advance(30.0)
    probe = b.admit()
    late[0].success()  # reported twice, and stale: no effect
    assert state(b) == "half_open"
    probe.failure()
    assert state(b) == "open"


async def test_permit_reports_once() -> None:
    b = breaker(FakeClock())
    permit = b.admit()
    permit.failure()
    permit.failure()
    permit.success()
    assert b.fail_counter == 1
    assert "done" in repr(permit)


async def test_listeners_see_every_transition() -> None:
    clock = FakeClock()
    seen: list[tuple[str, BreakerState, BreakerState]] = []

    def boom(name: str, old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("a broken listener must not break the breaker")

    b = breaker(clock, listeners=[lambda *t: seen.append(t), boom])
    await trip(b)
    clock.advance(30.0)
    b.admit().failure()
    clock.advance(30.0)
    b.admit().success()
    assert seen == [
        ("p", "closed", "open"),
        ("p", "open", "half_open"),
        ("p", "half_open", "open"),
        ("p", "open", "half_open"),
        ("p", "half_open", "closed"),
    ]


async def test_repr() -> None:
    clock = FakeClock()
    b = breaker(clock)
    assert repr(b) == "<AsyncBreaker 'p' closed failures=0/3>"
    await fail(b, timeout())
    assert repr(b) == "<AsyncBreaker 'p' closed failures=1/3>"
    await fail(b, timeout())
    await fail(b, timeout())
    clock.advance(10.0)
    assert repr(b) == "<AsyncBreaker 'p' open failures=3/3 half_open_in=20s>"
    clock.advance(20.0)
    permit = b.admit()
    assert repr(b) == "<AsyncBreaker 'p' half_open failures=3/3 probe=out>"
    assert repr(permit) == "<Permit probe for 'p'>"


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="fail_max"):
        AsyncBreaker("p", fail_max=0)
    with pytest.raises(ValueError, match="reset_timeout_s"):
        AsyncBreaker("p", reset_timeout_s=-1)


async def test_system_clock_by_default() -> None:
    b = AsyncBreaker("p", fail_max=1, reset_timeout_s=60.0)
    await fail(b, timeout())
    with pytest.raises(CircuitOpen) as info:
        b.admit()
    assert 59.0 < info.value.retry_in_s <= 60.0


async def test_fake_clock_wakes_sleepers_in_deadline_order() -> None:
    clock = FakeClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [
        asyncio.create_task(sleeper("late", 10.0)),
        asyncio.create_task(sleeper("early", 5.0)),
        asyncio.create_task(sleeper("cancelled", 1.0)),
    ]
    await asyncio.sleep(0)
    assert clock.sleepers == 3
    tasks[2].cancel()
    clock.advance(4.0)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(1.0)
    await asyncio.sleep(0)
    assert woke == ["early"]
    clock.advance(100.0)
    await asyncio.gather(*tasks[:2])
    assert woke == ["early", "late"]
    assert clock.monotonic() == 105.0
    assert repr(clock) == "<FakeClock now=105 sleepers=0>"
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1.0)
    await clock.sleep(0)  # a checkpoint, no waiting


async def test_fake_clock_autojump() -> None:
    clock = FakeClock(autojump=True)
    await clock.sleep(2.5)
    await clock.sleep(0.5)
    assert clock.monotonic() == 3.0
