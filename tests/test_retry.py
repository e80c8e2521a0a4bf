"""Retries: full-jitter backoff, which errors are retried, and the deadline (FakeClock)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade import (
    ConfigError,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
)
from cascade._clock import FakeClock
from cascade.resilience import CircuitOpen, RetryPolicy, backoff_s, call_with_retries, retryable

pytestmark = pytest.mark.anyio

P: dict[str, Any] = {"provider": "p", "model": "m"}

seconds = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(seconds)
    return RetryPolicy(
        attempts=draw(st.integers(1, 10)),
        base_s=base,
        max_s=draw(st.floats(min_value=base, max_value=2e6, allow_nan=False)),
        honour_retry_after=draw(st.booleans()),
    )


@given(
    policy=policies(),
    attempt=st.integers(0, 10_000),
    seed=st.integers(0, 2**32),
    retry_after=st.none() | seconds,
)
def test_full_jitter_bounds(
    policy: RetryPolicy, attempt: int, seed: int, retry_after: float | None
) -> None:
    wait = backoff_s(policy, attempt, rng=random.Random(seed), retry_after=retry_after)
    assert 0.0 <= wait <= policy.max_s
    if policy.honour_retry_after and retry_after is not None:
        assert wait >= min(retry_after, policy.max_s)
    else:
        assert wait <= min(policy.max_s, policy.base_s * 2.0 ** min(attempt, 64))


def test_jitter_spreads_over_the_whole_window() -> None:
    policy = RetryPolicy(base_s=1.0, max_s=100.0)
    rng = random.Random(7)
    waits = [backoff_s(policy, 3, rng=rng, retry_after=None) for _ in range(2000)]
    assert max(waits) <= 8.0
    assert min(waits) < 0.5
    assert max(waits) > 7.5


def test_retry_after_ignored_when_not_honoured() -> None:
    policy = RetryPolicy(base_s=0.0, max_s=5.0, honour_retry_after=False)
    assert backoff_s(policy, 0, rng=random.Random(1), retry_after=3.0) == 0.0


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ProviderTimeout("t", **P), False),  # a silent provider fails over at once
        (ProviderConnectionError("reset", **P), True),
        (ProviderStatusError("oops", status=500, **P), True),
        (ProviderStatusError("unavailable", status=503, **P), True),
        (RateLimited("slow down", **P), True),
        (RateLimited("overloaded", status=529, **P), True),
        (ProviderStatusError("bad request", status=400, **P), False),
        (ProviderStatusError("not found", status=404, **P), False),
        (MalformedResponse("bad json", **P), False),
        (CircuitOpen(provider="p", retry_in_s=3.0), False),
        (ProviderError("other", **P), False),
        (ValueError("bug"), False),
    ],
)
def test_retryable(exc: BaseException, expected: bool) -> None:
    assert retryable(exc) is expected


def test_policy_checks() -> None:
    assert RetryPolicy() == RetryPolicy(attempts=2, base_s=0.1, max_s=5.0, honour_retry_after=True)
    with pytest.raises(ConfigError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError, match="max_s"):
        RetryPolicy(base_s=2.0, max_s=1.0)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"attempts": 3, "jitter": True}, RetryPolicy)
    assert msgspec.convert({"attempts": 3}, RetryPolicy).attempts == 3


class Flaky:
    """Raises the given errors in turn, then answers."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_retries_until_success_and_reports_each_retry() -> None:
    clock = FakeClock(autojump=True)
    fn = Flaky(ProviderConnectionError("reset", **P), ProviderStatusError("down", status=502, **P))
    seen: list[tuple[int, str, float]] = []
    result = await call_with_retries(
        fn,
        policy=RetryPolicy(attempts=3, base_s=1.0, max_s=10.0),
        clock=clock,
        deadline=None,
        rng=random.Random(0),
        on_retry=lambda n, exc, wait: seen.append((n, type(exc).__name__, wait)),
    )
    assert result == "ok"
    assert fn.calls == 3
    assert [(n, name) for n, name, _ in seen] == [
        (1, "ProviderConnectionError"),
        (2, "ProviderStatusError"),
    ]
    assert 0 <= seen[0][2] <= 1.0
    assert 0 <= seen[1][2] <= 2.0
    assert clock.monotonic() == pytest.approx(seen[0][2] + seen[1][2])  # it slept exactly that


async def test_gives_up_after_the_attempts_and_raises_the_last_error() -> None:
    clock = FakeClock(autojump=True)
    last = ProviderConnectionError("third", **P)
    fn = Flaky(ProviderConnectionError("first", **P), ProviderConnectionError("second", **P), last)
    seen: list[int] = []
    with pytest.raises(ProviderConnectionError) as info:
        await call_with_retries(
            fn,
            policy=RetryPolicy(attempts=3),
            clock=clock,
            deadline=None,
            rng=random.Random(0),
            on_retry=lambda n, exc, wait: seen.append(n),
        )
    assert info.value is last
    assert fn.calls == 3
    assert seen == [1, 2]


@pytest.mark.parametrize(
    "exc",
    [
        ProviderStatusError("bad request", status=400, **P),
        ProviderTimeout("no first token", phase="first_token", **P),
        MalformedResponse("bad json", **P),
        CircuitOpen(provider="p", retry_in_s=1.0),
        ValueError("bug"),
    ],
)
async def test_non_retryable_errors_are_raised_at_once(exc: Exception) -> None:
    clock = FakeClock(autojump=True)
    fn = Flaky(exc)
    seen: list[int] = []
    with pytest.raises(type(exc)):
        await call_with_retries(
            fn,
            policy=RetryPolicy(attempts=5),
            clock=clock,
            deadline=None,
            rng=random.Random(0),
            on_retry=lambda n, e, w: seen.append(n),
        )
    assert fn.calls == 1
    assert seen == []
    assert clock.monotonic() == 0.0


async def test_one_attempt_never_retries() -> None:
    fn = Flaky(ProviderConnectionError("reset", **P))
    with pytest.raises(ProviderConnectionError):
        await call_with_retries(
            fn,
            policy=RetryPolicy(attempts=1),
            clock=FakeClock(),
            deadline=None,
            rng=random.Random(),
        )
    assert fn.calls == 1


async def test_honours_retry_after() -> None:
    clock = FakeClock(autojump=True)
    fn = Flaky(RateLimited("429", retry_after=3.0, **P))
    waits: list[float] = []
    result = await call_with_retries(
        fn,
        policy=RetryPolicy(attempts=2, base_s=0.1, max_s=5.0),
        clock=clock,
        deadline=None,
        rng=random.Random(0),
        on_retry=lambda n, e, w: waits.append(w),
    )
    assert result == "ok"
    assert waits == [3.0]
    assert clock.monotonic() == 3.0


async def test_retry_after_beyond_max_fails_over_at_once() -> None:
    clock = FakeClock(autojump=True)
    fn = Flaky(RateLimited("429", retry_after=60.0, **P))
    with pytest.raises(RateLimited):
        await call_with_retries(
            fn,
            policy=RetryPolicy(attempts=3, max_s=5.0),
            clock=clock,
            deadline=None,
            rng=random.Random(0),
        )
    assert fn.calls == 1
    assert clock.monotonic() == 0.0


async def test_never_sleeps_past_the_deadline() -> None:
    clock = FakeClock(100.0, autojump=True)
    fn = Flaky(*(RateLimited("429", retry_after=2.0, **P) for _ in range(10)))
    waits: list[float] = []
    with pytest.raises(RateLimited):
        await call_with_retries(
            fn,
            policy=RetryPolicy(attempts=10, base_s=0.0, max_s=5.0),
            clock=clock,
            deadline=105.0,
            rng=random.Random(0),
            on_retry=lambda n, e, w: waits.append(w),
        )
    # 2 s waits: at 100 and 102 it retries; at 104 a wait would end at 106 > 105.
    assert waits == [2.0, 2.0]
    assert fn.calls == 3
    assert clock.monotonic() == 104.0


async def test_deadline_with_a_manual_clock() -> None:
    # Without autojump, nothing moves until the test advances the clock: the retry waits.
    clock = FakeClock()
    fn = Flaky(ProviderConnectionError("refused", **P))
    task = asyncio.create_task(
        call_with_retries(
            fn,
            policy=RetryPolicy(attempts=2, base_s=1.0, max_s=1.0),
            clock=clock,
            deadline=10.0,
            rng=random.Random(0),
        )
    )
    await asyncio.sleep(0)
    assert clock.sleepers == 1
    assert fn.calls == 1
    clock.advance(1.0)
    assert await task == "ok"
    assert fn.calls == 2
