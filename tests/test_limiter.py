"""The per-provider rate limiter, driven by a FakeClock: no test sleeps for real."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade import ProviderError
from cascade._clock import FakeClock
from cascade.resilience.limiter import Headroom, LimiterTimeout, RateLimiter

pytestmark = pytest.mark.anyio

DATE = "Mon, 01 Jan 2024 00:00:00 GMT"  # the server's "now" for reset timestamps
DATE_TS = 1704067200.0  # DATE as a timestamp: our wall clock agrees with the server's


def limiter(clock: FakeClock, **kwargs: Any) -> RateLimiter:
    return RateLimiter("p", clock=clock, wall=lambda: DATE_TS + clock.monotonic(), **kwargs)


async def settle() -> None:
    """Let every ready task run (woken waiters hand over in turn)."""
    for _ in range(10):
        await asyncio.sleep(0)


# -- budgets -----------------------------------------------------------------------------


async def test_requests_per_minute_holds_and_refills_continuously() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=60)
    assert all(lim.try_acquire(tokens=0) for _ in range(60))
    assert lim.try_acquire(tokens=0) is None
    clock.advance(0.5)
    assert lim.try_acquire(tokens=0) is None
    clock.advance(0.5)
    assert lim.try_acquire(tokens=0) is not None
    assert lim.try_acquire(tokens=0) is None
    clock.advance(600)  # refills to the burst, never beyond
    assert lim.headroom.requests == pytest.approx(60)


async def test_burst_zero_spaces_requests_evenly() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=60, burst_s=0)
    assert lim.try_acquire(tokens=0) is not None
    assert lim.try_acquire(tokens=0) is None
    clock.advance(1.0)
    assert lim.try_acquire(tokens=0) is not None


async def test_refusal_reserves_nothing() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=10, tokens_per_minute=1000, max_concurrency=3)
    assert lim.try_acquire(tokens=800) is not None
    before = lim.headroom
    assert before == Headroom(requests=9, tokens=200, slots=2, blocked_until=None)
    assert lim.try_acquire(tokens=300) is None
    assert lim.headroom == before


async def test_oversized_request_waits_for_a_full_bucket_and_charges_it_all() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=1000)
    assert lim.try_acquire(tokens=10) is not None
    assert lim.try_acquire(tokens=1500) is None  # waits for a full bucket
    clock.advance(0.6)
    lease = lim.try_acquire(tokens=1500)
    assert lease is not None
    assert lease.tokens == 1000  # the whole bucket, not a debt
    assert lim.try_acquire(tokens=1) is None
    clock.advance(0.06)
    assert lim.try_acquire(tokens=1) is not None


async def test_a_huge_estimate_owes_at_most_a_bucket_and_gets_its_refund() -> None:
    """An estimate is the caller's word (a client's ``max_tokens`` of 1e9): one
    reservation charges at most the whole bucket, and a call that used only its prompt
    gives the rest back at once."""
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=60_000, max_wait_s=1)
    lease = await lim.acquire(tokens=10**9, deadline=clock.monotonic() + 1)
    assert lease.tokens == 60_000
    assert lim.headroom.tokens == 0
    assert lim.wait_s(tokens=10**9) == pytest.approx(60.0)  # a full bucket, not 1e6 s
    lease.release(used_tokens=12)  # the prompt, and no answer
    assert lim.headroom.tokens == pytest.approx(60_000 - 12)
    assert lim.try_acquire(tokens=100) is not None


async def test_without_a_burst_a_huge_estimate_owes_at_most_max_wait() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600, burst_s=0, max_wait_s=5)
    lease = lim.try_acquire(tokens=10**12)
    assert lease is not None
    assert lease.tokens == 50  # 5 s of refill at 10 tokens a second
    assert lim.wait_s(tokens=1) == pytest.approx(5.0)
    clock.advance(5.0)
    assert lim.try_acquire(tokens=1) is not None


async def test_a_huge_estimate_does_not_widen_the_float_slack() -> None:
    """``Bucket.wait`` forgives a float rounding error of the size at stake: an uncapped
    1e15 estimate once made that slack a million tokens wide."""
    from cascade.resilience._buckets import Bucket

    bucket = Bucket(60_000, 60.0, 0.0)
    bucket.level = 10.0
    assert bucket.wait(10**15, 0.0) == pytest.approx(59_990 / 1000)


async def test_concurrency_cap() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=2)
    a, b = lim.try_acquire(tokens=10), lim.try_acquire(tokens=10)
    assert a is not None and b is not None
    assert lim.try_acquire(tokens=10) is None
    assert lim.headroom.slots == 0
    a.release()
    a.release()  # idempotent: frees one slot, once
    assert lim.headroom.slots == 1
    c = lim.try_acquire(tokens=10)
    assert c is not None
    with c:
        assert lim.try_acquire(tokens=10) is None
    assert c.released
    assert lim.headroom.slots == 1


async def test_acquire_waits_for_a_released_slot() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=1)
    held = lim.try_acquire(tokens=1)
    assert held is not None
    task = asyncio.create_task(lim.acquire(tokens=1, deadline=None))
    await settle()
    assert not task.done() and lim.waiters == 1
    held.release()
    lease = await task
    assert lim.headroom.slots == 0 and lim.waiters == 0
    async with lease:
        pass
    assert lim.headroom.slots == 1


async def test_slot_wait_times_out_at_the_deadline() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=1)
    assert lim.try_acquire(tokens=1) is not None
    task = asyncio.create_task(lim.acquire(tokens=1, deadline=5.0))
    await settle()
    clock.advance(4.9)
    await settle()
    assert not task.done()
    clock.advance(0.1)
    with pytest.raises(LimiterTimeout):
        await task
    assert lim.waiters == 0 and clock.sleepers == 0


async def test_release_reconciles_with_real_usage() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=1000)
    lease = lim.try_acquire(tokens=600)
    assert lease is not None
    lease.release(used_tokens=100)  # refund the unused 500
    assert lim.headroom.tokens == pytest.approx(900)
    lease.release(used_tokens=0)  # already settled
    assert lim.headroom.tokens == pytest.approx(900)

    lease = lim.try_acquire(tokens=400)
    assert lease is not None
    lease.release(used_tokens=1300)  # charge the 900 over the estimate: 400 in debt
    assert lim.headroom.tokens == 0
    assert lim.try_acquire(tokens=1) is None
    clock.advance(23.9)
    assert lim.try_acquire(tokens=1) is None
    clock.advance(6.1)
    assert lim.headroom.tokens == pytest.approx(100)

    lease = lim.try_acquire(tokens=50)
    assert lease is not None
    lease.release()  # no usage reported: the estimate stands
    assert lim.headroom.tokens == pytest.approx(50)


async def test_refund_never_overfills() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=1000)
    lease = lim.try_acquire(tokens=500)
    assert lease is not None
    clock.advance(60)
    lease.release(used_tokens=0)
    assert lim.headroom.tokens == pytest.approx(1000)


# -- waiting -----------------------------------------------------------------------------


async def test_acquire_sleeps_exactly_as_long_as_the_bucket_needs() -> None:
    clock = FakeClock(autojump=True)
    lim = limiter(clock, tokens_per_minute=600, burst_s=10)  # 10 tokens/s, 100 max
    await lim.acquire(tokens=100, deadline=None)
    await lim.acquire(tokens=30, deadline=None)
    assert clock.monotonic() == pytest.approx(3.0)


async def test_fifo_a_big_head_is_not_starved_by_small_ones() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600, burst_s=10)
    assert lim.try_acquire(tokens=100) is not None  # empty now
    order: list[str] = []

    async def take(label: str, tokens: int) -> None:
        await lim.acquire(tokens=tokens, deadline=None)
        order.append(label)

    big = asyncio.create_task(take("big", 80))
    await settle()
    smalls = [asyncio.create_task(take(f"s{i}", 5)) for i in range(3)]
    await settle()
    assert lim.try_acquire(tokens=1) is None  # no jumping the queue either
    for _ in range(7):
        clock.advance(1.0)
        await settle()
    assert order == []  # 70 tokens in: enough for every small one, not for the head
    clock.advance(1.0)
    await settle()
    assert order == ["big"]
    clock.advance(1.5)
    await settle()
    assert order == ["big", "s0", "s1", "s2"]
    await asyncio.gather(big, *smalls)


async def test_deadline_raises_at_once_without_sleeping() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600, burst_s=10)
    assert lim.try_acquire(tokens=100) is not None
    waiting = asyncio.create_task(lim.acquire(tokens=50, deadline=None))  # ready at 5 s
    await settle()
    with pytest.raises(LimiterTimeout) as info:
        await lim.acquire(tokens=20, deadline=6.0)  # its turn: 7 s
    assert isinstance(info.value, ProviderError)
    assert info.value.provider == "p"
    assert info.value.retry_in_s == pytest.approx(7.0)
    assert clock.monotonic() == 0 and lim.waiters == 1
    lease = await asyncio.wait_for(_advance_until(clock, waiting), 1)
    assert lease.tokens == 50


async def _advance_until(clock: FakeClock, task: asyncio.Task[Any]) -> Any:
    while not task.done():
        clock.advance(0.5)
        await settle()
    return task.result()


async def test_deadline_met_waits() -> None:
    clock = FakeClock(autojump=True)
    lim = limiter(clock, requests_per_minute=60, burst_s=0)
    assert lim.try_acquire(tokens=0) is not None
    await lim.acquire(tokens=0, deadline=1.0)
    assert clock.monotonic() == pytest.approx(1.0)


async def test_cancelled_waiter_frees_its_place() -> None:
    clock = FakeClock()
    lim = limiter(clock, tokens_per_minute=600, burst_s=10)
    assert lim.try_acquire(tokens=100) is not None
    head = asyncio.create_task(lim.acquire(tokens=100, deadline=None))
    second = asyncio.create_task(lim.acquire(tokens=20, deadline=None))
    await settle()
    assert lim.waiters == 2
    head.cancel()
    await settle()
    assert head.cancelled() and lim.waiters == 1
    clock.advance(2.0)
    await settle()
    lease = await second
    assert lease.tokens == 20
    assert lim.headroom.tokens == pytest.approx(0)  # the cancelled 100 were never taken
    assert clock.sleepers == 0 and lim.waiters == 0


async def test_cancelled_middle_waiter_keeps_the_order() -> None:
    clock = FakeClock()
    lim = limiter(clock, max_concurrency=1)
    held = lim.try_acquire(tokens=1)
    assert held is not None
    tasks = [asyncio.create_task(lim.acquire(tokens=1, deadline=None)) for _ in range(3)]
    await settle()
    tasks[1].cancel()
    held.release()
    first = await tasks[0]
    await settle()
    assert not tasks[2].done()
    first.release()
    (await tasks[2]).release()
    assert tasks[1].cancelled() and lim.waiters == 0 and lim.headroom.slots == 1


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0, 20), st.integers(1, 400)),
        min_size=1,
        max_size=40,
    ),
    burst_s=st.sampled_from([0.0, 5.0, 60.0]),
)
async def test_tokens_per_sliding_window(steps: list[tuple[float, int]], burst_s: float) -> None:
    tpm, rpm = 1000.0, 20.0
    clock = FakeClock(autojump=True)
    lim = limiter(clock, requests_per_minute=rpm, tokens_per_minute=tpm, burst_s=burst_s)
    grants: list[tuple[float, int]] = []
    for gap, size in steps:
        clock.advance(gap)
        lease = lim.try_acquire(tokens=size) or await lim.acquire(tokens=size, deadline=None)
        grants.append((clock.monotonic(), lease.tokens))  # charged: at most a bucket
        lease.release()
    biggest = max(size for _, size in grants)
    for start, _ in grants:
        window = [size for t, size in grants if start <= t <= start + 60.0]
        # A bucket's invariant: its burst, a minute of refill, and one oversized request.
        assert sum(window) <= tpm * (1 + burst_s / 60) + biggest + 1e-6
        assert len(window) <= rpm * (1 + burst_s / 60) + 1
        if burst_s == 0:
            assert sum(window) <= tpm + biggest + 1e-6


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.integers(1, 300), min_size=2, max_size=12))
async def test_waiters_are_granted_in_arrival_order(sizes: list[int]) -> None:
    clock = FakeClock(autojump=True)
    lim = limiter(clock, tokens_per_minute=600, burst_s=10)
    assert lim.try_acquire(tokens=100) is not None
    order: list[int] = []

    async def take(i: int) -> None:
        (await lim.acquire(tokens=sizes[i], deadline=None)).release()
        order.append(i)

    await asyncio.gather(*(take(i) for i in range(len(sizes))))
    assert order == list(range(len(sizes)))


# -- learning from headers ---------------------------------------------------------------


async def test_openai_remaining_caps_and_reset_refills() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=60, tokens_per_minute=6000)
    lim.observe(
        {
            "x-ratelimit-remaining-requests": "10",
            "x-ratelimit-remaining-tokens": "1000",
            "x-ratelimit-reset-requests": "1m40s",  # slower than our 1/s: the provider knows
            "x-ratelimit-reset-tokens": "500ms",
        }
    )
    room = lim.headroom
    assert (room.requests, room.tokens) == (10, 1000)
    clock.advance(0.25)
    assert lim.headroom.tokens == pytest.approx(3500)  # half way to full
    clock.advance(0.25)
    assert lim.headroom.tokens == pytest.approx(6000)
    clock.advance(49.5)
    assert lim.headroom.requests == pytest.approx(35)
    clock.advance(50)
    assert lim.headroom.requests == pytest.approx(60)


async def test_remaining_never_raises_a_bucket() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=60, tokens_per_minute=1000)
    assert lim.try_acquire(tokens=900) is not None
    lim.observe({"X-RateLimit-Remaining-Tokens": "1000000", "x-ratelimit-remaining-requests": "99"})
    assert lim.headroom.tokens == pytest.approx(100)
    assert lim.headroom.requests == pytest.approx(59)


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("2.5", 2.5)],
)
async def test_openai_durations(raw: str, seconds: float) -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=1, max_wait_s=86400)
    lim.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": raw})
    assert lim.try_acquire(tokens=0) is None
    clock.advance(seconds * 0.999)
    assert lim.try_acquire(tokens=0) is None
    clock.advance(seconds * 0.002)
    assert lim.try_acquire(tokens=0) is not None


async def test_anthropic_timestamps_and_scarcest_token_family() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=50, tokens_per_minute=10_000)
    lim.observe(
        {
            "date": DATE,
            "anthropic-ratelimit-requests-remaining": "5",
            "anthropic-ratelimit-requests-reset": "2024-01-01T00:00:09Z",
            "anthropic-ratelimit-input-tokens-remaining": "4000",
            "anthropic-ratelimit-input-tokens-reset": "2024-01-01T00:00:30Z",
            "anthropic-ratelimit-output-tokens-remaining": "1000",
            "anthropic-ratelimit-output-tokens-reset": "2024-01-01T00:00:03+00:00",
            "anthropic-ratelimit-tokens-limit": "10000",
        },
        status=200,
    )
    assert lim.headroom == Headroom(requests=5, tokens=1000, slots=None, blocked_until=None)
    clock.advance(3)
    assert lim.headroom.tokens == pytest.approx(10_000)
    clock.advance(6)
    assert lim.headroom.requests == pytest.approx(50)


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "7"},
        {"retry-after-ms": "7000", "retry-after": "1"},  # the precise one wins
        {"date": DATE, "retry-after": "Mon, 01 Jan 2024 00:00:07 GMT"},
    ],
)
async def test_retry_after_on_429_blocks(headers: dict[str, str]) -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=60)
    lim.observe(headers, status=429)
    assert lim.headroom.blocked_until == pytest.approx(7.0)
    assert lim.try_acquire(tokens=0) is None
    with pytest.raises(LimiterTimeout) as info:
        await lim.acquire(tokens=0, deadline=5.0)
    assert info.value.retry_in_s == pytest.approx(7.0)
    clock.advance(7.0)
    assert lim.try_acquire(tokens=0) is not None
    assert lim.headroom.blocked_until is None


async def test_acquire_waits_out_a_block() -> None:
    clock = FakeClock(autojump=True)
    lim = limiter(clock, max_concurrency=4)
    lim.observe({"retry-after-ms": "250"}, status=429)
    await lim.acquire(tokens=1, deadline=None)
    assert clock.monotonic() == pytest.approx(0.25)


async def test_retry_after_without_429_is_ignored() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=60)
    lim.observe({"retry-after": "30"}, status=503)
    lim.observe({"retry-after": "30"})
    assert lim.headroom.blocked_until is None


@pytest.mark.parametrize(
    "headers",
    [
        {"x-ratelimit-remaining-requests": "lots", "x-ratelimit-remaining-tokens": "-5"},
        {"x-ratelimit-remaining-tokens": "nan", "x-ratelimit-reset-tokens": "soon"},
        {"x-ratelimit-remaining-tokens": "inf"},
        {"anthropic-ratelimit-tokens-remaining": "", "date": "yesterday"},
        {"retry-after": "Thu, 99 Foo 2024 99:99:99 GMT", "retry-after-ms": "1e999"},
        {"retry-after": "-3"},
        {"anthropic-ratelimit-requests-reset": "2024-13-45T00:00:00"},
    ],
)
async def test_garbage_headers_are_ignored(headers: dict[str, str]) -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=60, tokens_per_minute=1000)
    lim.observe(headers, status=429)
    assert lim.headroom == Headroom(requests=60, tokens=1000, slots=None, blocked_until=None)


HEADER_NAMES = [
    "date",
    "retry-after",
    "retry-after-ms",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
]


@given(
    st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(max_size=40)),
    st.sampled_from([None, 200, 429]),
)
def test_observe_never_raises(headers: dict[str, str], status: int | None) -> None:
    lim = limiter(FakeClock(), requests_per_minute=60, tokens_per_minute=1000)
    lim.observe(headers, status=status)
    room = lim.headroom
    assert room.requests is not None and 0 <= room.requests <= 60
    assert room.tokens is not None and 0 <= room.tokens <= 1000


# -- surface -----------------------------------------------------------------------------


async def test_repr_shows_levels_and_waiters() -> None:
    clock = FakeClock()
    lim = limiter(clock, requests_per_minute=60, tokens_per_minute=90_000, max_concurrency=4)
    lease = lim.try_acquire(tokens=1000)
    assert repr(lim) == "<RateLimiter 'p' requests=59/60 tokens=89000/90000 slots=3/4 waiters=0>"
    assert repr(lease) == "<Lease 1000 tokens on 'p'>"
    lim.observe({"retry-after": "2"}, status=429)
    assert "blocked_for=2s" in repr(lim)
    assert repr(RateLimiter("q")) == "<RateLimiter 'q' waiters=0>"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"requests_per_minute": 0},
        {"tokens_per_minute": -1},
        {"tokens_per_minute": float("nan")},
        {"max_concurrency": 0},
        {"burst_s": -1},
    ],
)
async def test_bad_config_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimiter("p", **kwargs)
