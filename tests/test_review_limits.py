"""Review of the issue #11 limits: usage a server reports never blocks a provider for longer
than ``max_wait_s`` (locally or through Redis), and a garbage rate-limit record in Redis is
reset, given a TTL and logged once. Limiter tests run on a FakeClock; the Redis ones on a
real redis-server and skip like tests/test_shared_redis.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from cascade._clock import FakeClock
from cascade.resilience.limiter import LimiterTimeout, RateLimiter
from cascade.resilience.shared import SharedState

from .test_shared_redis import UP_TIMEOUT_S, _prefix, redis_bin, redis_url  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio

HUGE = 2 * 10**9  # prompt 1e9 + completion 1e9: within MAX_REPORTED_TOKENS
RESET = "reset a malformed shared rate-limit record"


# -- D2: one reported usage, however large, owes at most max_wait_s ----------------------


@pytest.mark.parametrize(
    ("per_minute", "burst_s", "max_wait_s", "span_s"),
    [
        (100_000, 60.0, 5.0, 5.0),  # the review's case: max_wait_s binds
        (600, 2.0, 300.0, 2.0),  # a small bucket binds: one bucket of debt at most
    ],
)
async def test_reported_usage_blocks_no_longer_than_max_wait(
    per_minute: float, burst_s: float, max_wait_s: float, span_s: float
) -> None:
    clock = FakeClock()
    lim = RateLimiter(
        "p",
        tokens_per_minute=per_minute,
        burst_s=burst_s,
        max_wait_s=max_wait_s,
        clock=clock,
    )
    lease = lim.try_acquire(tokens=1)
    assert lease is not None
    lease.release(used_tokens=HUGE)
    assert lim.try_acquire(tokens=1) is None
    with pytest.raises(LimiterTimeout) as caught:
        await lim.acquire(tokens=1, deadline=clock.monotonic())
    # refill the owed span, then the bucket to the one lost token (a full bucket less one)
    assert caught.value.retry_in_s <= span_s + 60.0 / per_minute * 2
    clock.advance(span_s + 60.0 / per_minute * 2)
    assert lim.try_acquire(tokens=1) is not None


async def test_concurrent_overcharges_do_not_add_up() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", tokens_per_minute=60_000, max_wait_s=5, clock=clock)
    leases = [lim.try_acquire(tokens=10) for _ in range(5)]
    for lease in leases:
        assert lease is not None
        lease.release(used_tokens=HUGE)
    # 5 s of refill owed (5,000 tokens), not five times that
    clock.advance(5.01)
    assert lim.try_acquire(tokens=5) is not None


async def test_a_legitimate_overage_is_still_charged_in_full() -> None:
    clock = FakeClock()
    lim = RateLimiter("p", tokens_per_minute=6_000, clock=clock)  # 100/s, 6,000 max
    lease = lim.try_acquire(tokens=5_000)
    assert lease is not None
    lease.release(used_tokens=9_000)  # 4,000 over: the bucket owes 3,000
    clock.advance(29.9)
    assert lim.try_acquire(tokens=1) is None
    clock.advance(0.2)
    assert lim.try_acquire(tokens=1) is not None


# -- D2 and D8 through Redis --------------------------------------------------------------


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:  # noqa: F811
    import redis.asyncio as aioredis

    c = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


@pytest.fixture
async def state(redis_url: str) -> AsyncIterator[SharedState]:  # noqa: F811
    s = SharedState(
        redis_url=redis_url, key_prefix=_prefix(), timeout_s=UP_TIMEOUT_S, sync_interval_s=0.05
    )
    await s.open()
    try:
        yield s
    finally:
        await s.aclose()


async def _redis_now(client: Any) -> float:
    seconds, micros = await client.time()
    return float(seconds) + micros / 1e6


async def test_reported_usage_owes_max_wait_on_every_replica(
    state: SharedState, client: Any
) -> None:
    one = RateLimiter("p", tokens_per_minute=100_000, max_wait_s=5, shared=state)
    lease = await one.reserve(tokens=10)
    assert lease is not None
    lease.release(used_tokens=HUGE)
    await state.flush()
    key = state.key("limit", "p")
    tat = float(await client.hget(key, "tokens"))
    assert tat - await _redis_now(client) <= 60 + 5  # tau + max_wait_s at most
    assert 0 < await client.pttl(key) <= 67_000
    other = RateLimiter("p", tokens_per_minute=100_000, max_wait_s=5, shared=state)
    assert other._shared is not None
    wait = await other._shared.take(10)
    assert wait is not None
    assert wait <= 5.0 + 10 * 60 / 100_000  # the owed span, then this take's own cost


@pytest.mark.parametrize(
    "fields",
    [
        {"requests": "1e308", "tokens": "1e400"},  # the review's record
        {"tokens": "FAR"},  # a plain number, beyond any charge this code writes
        {"blocked": "1e308"},
        {"requests": "abc"},
    ],
)
async def test_a_garbage_limit_record_is_reset_with_a_ttl_and_logged_once(
    state: SharedState, client: Any, fields: dict[str, str]
) -> None:
    key = state.key("limit", "p")
    far = repr(await _redis_now(client) + 1e6)
    await client.hset(key, mapping={k: far if v == "FAR" else v for k, v in fields.items()})
    lim = RateLimiter(
        "p", requests_per_minute=600, tokens_per_minute=1e6, max_wait_s=5, shared=state
    )
    with capture_logs() as logs:
        for _ in range(3):
            lease = await lim.reserve(tokens=10)
            assert lease is not None
            lease.release()
    resets = [e for e in logs if e["event"] == RESET]
    assert len(resets) == 1
    assert resets[0]["key"] == key
    assert 0 < await client.pttl(key) <= (60 + 5 + 2) * 1000
    record = await client.hgetall(key)
    assert "blocked" not in record
    now = await _redis_now(client)
    for field in ("requests", "tokens"):
        assert float(record[field]) - now <= 60 + 5


async def test_a_denied_take_gives_a_key_without_ttl_one(state: SharedState, client: Any) -> None:
    key = state.key("limit", "p")
    # a believable record (a nearly empty bucket) that someone wrote without a TTL
    await client.hset(key, "tokens", repr(await _redis_now(client) + 50))
    assert await client.pttl(key) == -1
    lim = RateLimiter("p", tokens_per_minute=60_000, max_wait_s=5, shared=state)
    assert await lim.reserve(tokens=50_000) is None
    assert await client.pttl(key) > 0
    assert await client.hget(key, "tokens") is not None  # a good record is kept
