"""Gateway keys' limits and budgets shared through a real redis-server on loopback
(gated as ``test_shared_redis.py`` is: ``CASCADE_TEST_REDIS=1`` makes a missing Redis
fail, ``CASCADE_TEST_REDIS_URL`` names one to use)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from structlog.testing import capture_logs

from cascade.gateway import Admission, GatewayDenied, GatewayKeys, KeyEntry, KeysConfig, hash_key
from cascade.resilience.shared import SharedState
from cascade.testing import FakeClock

from . import test_shared_redis as _redis
from .test_shared_redis import UP_TIMEOUT_S, RedisServer, _prefix

pytestmark = pytest.mark.anyio

# the fixtures that start (or find) a redis-server
redis_bin = _redis.redis_bin
redis_server = _redis.redis_server
redis_url = _redis.redis_url

KEY = "sk-gw-shared-0123456789abcdef"
MIDNIGHT = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86400


def config(**limits: Any) -> KeysConfig:
    return KeysConfig(entries=[KeyEntry(name="team", sha256=hash_key(KEY), **limits)])


def replica(
    state: SharedState, clock: FakeClock, *, epoch_s: float = MIDNIGHT + 3600, **limits: Any
) -> GatewayKeys:
    return GatewayKeys.from_config(config(**limits), clock=clock, shared=state, epoch_s=epoch_s)


@pytest.fixture
async def states(redis_url: str) -> AsyncIterator[tuple[SharedState, SharedState]]:
    prefix = _prefix()
    a = SharedState(redis_url=redis_url, key_prefix=prefix, timeout_s=2.0)
    b = SharedState(redis_url=redis_url, key_prefix=prefix, timeout_s=2.0)
    async with a, b:
        yield a, b


async def _admit_all(keys: GatewayKeys, n: int, cost: float) -> list[Admission]:
    outcomes = await asyncio.gather(
        *(keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=cost) for _ in range(n)),
        return_exceptions=True,
    )
    for o in outcomes:
        if isinstance(o, BaseException) and not isinstance(o, GatewayDenied):
            raise o
    return [o for o in outcomes if isinstance(o, Admission)]


async def test_two_replicas_keep_one_daily_budget(
    states: tuple[SharedState, SharedState],
) -> None:
    a, b = states
    clock = FakeClock()
    one, two = replica(a, clock, usd_per_day=1.0), replica(b, clock, usd_per_day=1.0)
    admitted = await asyncio.gather(_admit_all(one, 10, 0.3), _admit_all(two, 10, 0.3))
    total = admitted[0] + admitted[1]
    assert len(total) == 4  # reserved 0, 0.3, 0.6, 0.9 < 1.0: the 4th crosses, no 5th
    for admission in admitted[0]:
        await one.settle(admission, tokens=1, cost_usd=0.25)
    for admission in admitted[1]:
        await two.settle(admission, tokens=1, cost_usd=0.25)
    await a.flush()
    await b.flush()
    # 1.0 spent over both replicas: each refuses now, with Retry-After to midnight
    for keys in (one, two):
        with pytest.raises(GatewayDenied) as info:
            await keys.admit(KEY, estimated_tokens=1)
        assert info.value.code == "insufficient_quota"
        assert info.value.retry_after_s == pytest.approx(DAY - 3600)
    assert two.spent_today("team") == pytest.approx(1.0)


async def test_settled_spend_from_one_replica_stops_the_other(
    states: tuple[SharedState, SharedState],
) -> None:
    a, b = states
    clock = FakeClock()
    one, two = replica(a, clock, usd_per_day=0.5), replica(b, clock, usd_per_day=0.5)
    admission = await one.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.01)
    await two.admit(KEY, estimated_tokens=1)  # 0.01 reserved of 0.5: admitted
    await one.settle(admission, tokens=1, cost_usd=0.6)  # cost more than estimated
    await a.flush()
    with pytest.raises(GatewayDenied):
        await two.admit(KEY, estimated_tokens=1)


async def test_the_day_rolls_over_in_redis_too(
    states: tuple[SharedState, SharedState], redis_url: str
) -> None:
    a, _ = states
    clock = FakeClock()
    keys = replica(a, clock, epoch_s=MIDNIGHT + DAY - 60, usd_per_day=0.1)
    admission = await keys.admit(KEY, estimated_tokens=1)
    await keys.settle(admission, tokens=1, cost_usd=0.2)
    await a.flush()
    with pytest.raises(GatewayDenied) as info:
        await keys.admit(KEY, estimated_tokens=1)
    assert info.value.retry_after_s == pytest.approx(60.0)
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        day = int((MIDNIGHT + DAY - 60) // DAY)
        ttl = await client.pttl(a.key("spend", f"team:{day}"))
        assert 60_000 < ttl <= 121_000  # the rest of the day and a minute of slack
        clock.advance(60.0)
        await keys.admit(KEY, estimated_tokens=1)  # a new day, a new record
        assert await client.exists(a.key("spend", f"team:{day + 1}"))
    finally:
        await client.aclose()


async def test_two_replicas_share_one_requests_per_minute(
    states: tuple[SharedState, SharedState],
) -> None:
    a, b = states
    clock = FakeClock()
    one = replica(a, clock, requests_per_minute=5)
    two = replica(b, clock, requests_per_minute=5)
    admitted = await asyncio.gather(_admit_all(one, 5, 0.0), _admit_all(two, 5, 0.0))
    assert len(admitted[0]) + len(admitted[1]) == 5
    with pytest.raises(GatewayDenied) as info:
        await one.admit(KEY, estimated_tokens=1)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.retry_after_s is not None
    assert 0 < info.value.retry_after_s <= 12.0  # one request refills every 12 s


@pytest.mark.parametrize("garbage", [{"spent": "abc"}, {"reserved": "-5"}, {"spent": "1e308"}])
async def test_a_malformed_spend_record_is_reset_and_logged_once(
    states: tuple[SharedState, SharedState], redis_url: str, garbage: dict[str, str]
) -> None:
    a, _ = states
    keys = replica(a, FakeClock(), usd_per_day=1.0)
    day = int((MIDNIGHT + 3600) // DAY)
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.hset(a.key("spend", f"team:{day}"), mapping=garbage)
        with capture_logs() as logs:
            first = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.1)
            await client.hset(a.key("spend", f"team:{day}"), mapping=garbage)
            await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.1)
        warned = [e for e in logs if e["event"] == "reset a malformed shared spend record"]
        assert len(warned) == 1
        assert warned[0]["fields"] == next(iter(garbage))
        assert await client.ttl(a.key("spend", f"team:{day}")) > 0
        await keys.settle(first, tokens=1, cost_usd=0.1)
        await a.flush()
        spent = float(await client.hget(a.key("spend", f"team:{day}"), "spent") or 0)
        assert spent == pytest.approx(0.1)
    finally:
        await client.aclose()


async def test_redis_down_falls_back_to_the_local_budget(redis_server: RedisServer) -> None:
    state = SharedState(redis_url=redis_server.url, key_prefix=_prefix(), timeout_s=0.5)
    async with state:
        keys = replica(state, FakeClock(), usd_per_day=1.0)
        admission = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.1)
        redis_server.kill()
        await keys.settle(admission, tokens=1, cost_usd=0.6)
        second = await keys.admit(KEY, estimated_tokens=1)  # Redis gone: local 0.6 < 1
        assert not state.available
        await keys.settle(second, tokens=1, cost_usd=0.6)
        with pytest.raises(GatewayDenied) as info:
            await keys.admit(KEY, estimated_tokens=1)
        assert info.value.code == "insufficient_quota"


def quick_syncing(url: str, prefix: str) -> SharedState:
    """A shared state that notices Redis back within 0.05 s (its sync loop), with
    ``UP_TIMEOUT_S`` (a paused Redis's call: ``_blip``'s own 0.2 s)."""
    return SharedState(
        redis_url=url, key_prefix=prefix, timeout_s=UP_TIMEOUT_S, sync_interval_s=0.05
    )


async def _until_available(state: SharedState) -> None:
    for _ in range(400):  # the sync loop reconnects every sync_interval_s (0.05 s here)
        if state.available:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("Redis did not come back")


@contextmanager
def _impatient(state: SharedState) -> Iterator[None]:
    """The calls made within give up on Redis after 0.2 s (a paused one, to take the state
    down quickly); the others keep ``UP_TIMEOUT_S``: 0.2 s throughout, a loop that stalled
    as long once Redis was back took the state down again."""
    state.timeout_s = 0.2
    try:
        yield
    finally:
        state.timeout_s = UP_TIMEOUT_S


async def _blip(state: SharedState, server: RedisServer) -> None:
    """Redis stops answering: the next call times out and the state goes down."""
    server.pause()
    with _impatient(state):
        assert await state.run(lambda client: client.ping()) is None
    assert not state.available


async def test_a_settlement_made_while_redis_was_down_reaches_it_once_back(
    redis_server: RedisServer,
) -> None:
    """A reservation held in Redis and settled while Redis was down must not stay held
    there once it is back (it would refuse the key for the rest of the day)."""
    state = SharedState(
        redis_url=redis_server.url,
        key_prefix=_prefix(),
        timeout_s=UP_TIMEOUT_S,
        sync_interval_s=0.05,
    )
    async with state:
        keys = replica(state, FakeClock(), usd_per_day=1.0)
        big = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=1.5)
        await _blip(state, redis_server)
        await keys.settle(big, tokens=1, cost_usd=0.1)  # it cost far less than it held
        redis_server.resume()
        await _until_available(state)
        second = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.1)
        await keys.settle(second, tokens=1, cost_usd=0.1)
        await state.flush()
        assert keys.spent_today("team") == pytest.approx(0.2)


async def test_spend_made_while_redis_was_down_reaches_the_other_replicas(
    redis_server: RedisServer,
) -> None:
    """Each replica holds the budget on its own spend while Redis is down; once it is
    back, what was spent meanwhile counts for every replica."""
    prefix = _prefix()
    a, b = (quick_syncing(redis_server.url, prefix) for _ in range(2))
    async with a, b:
        clock = FakeClock()
        one, two = replica(a, clock, usd_per_day=1.0), replica(b, clock, usd_per_day=1.0)
        await _blip(a, redis_server)
        during = await one.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.1)  # local
        settled = await one.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.1)
        await one.settle(settled, tokens=1, cost_usd=0.6)  # settled while down
        redis_server.resume()
        await _until_available(a)
        # b's own polls may have timed out too while Redis was paused (each replica finds out
        # on its own, and comes back on its own): until b is back, two would admit on its local
        # budget, which knows nothing of one's spend
        await _until_available(b)
        await one.settle(during, tokens=1, cost_usd=0.6)  # admitted while down, settled after
        await a.flush()
        with pytest.raises(GatewayDenied) as info:  # 1.2 spent of 1.0, all told
            await two.admit(KEY, estimated_tokens=1)
        assert info.value.code == "insufficient_quota"


@pytest.mark.parametrize("limits", [{"requests_per_minute": 1e-9}, {"tokens_per_minute": 1e-9}])
async def test_a_tiny_per_minute_limit_keeps_redis_up(
    states: tuple[SharedState, SharedState], limits: dict[str, float]
) -> None:
    """A rate the shared script cannot take as is (one request in two thousand years)
    must not make every call to it an error, each one taking the shared state down (and
    every key's budget with it back to per-replica)."""
    a, _ = states
    keys = replica(a, FakeClock(), **limits)
    with capture_logs() as logs:
        await keys.admit(KEY, estimated_tokens=1)
        with pytest.raises(GatewayDenied):
            await keys.admit(KEY, estimated_tokens=1)
    assert a.available
    assert not [e for e in logs if e["log_level"] == "warning"]


async def test_a_record_of_the_wrong_type_is_replaced_not_an_outage(
    states: tuple[SharedState, SharedState], redis_url: str
) -> None:
    """A string where a key's spend or rate-limit hash belongs (an older version, another
    tenant on the prefix) is a malformed record: reset and logged once, not a script
    error that takes the shared state down at every request of that key."""
    a, _ = states
    keys = replica(a, FakeClock(), usd_per_day=1.0, requests_per_minute=100)
    day = int((MIDNIGHT + 3600) // DAY)
    spend, limit = a.key("spend", f"team:{day}"), a.key("limit", "gateway-key:team")
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(spend, "garbage")
        await client.set(limit, "garbage")
        with capture_logs() as logs:
            for _ in range(3):
                admission = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.1)
                assert a.available
                await keys.settle(admission, tokens=1, cost_usd=0.1)
                await a.flush()
        assert not [e for e in logs if "unavailable" in e["event"]]
        reset = sorted(e["key"] for e in logs if e["event"].startswith("reset a malformed"))
        assert reset == sorted([spend, limit])
        for key in (spend, limit):
            assert await client.type(key) == b"hash"
            assert await client.ttl(key) > 0
        assert float(await client.hget(spend, "spent") or 0) == pytest.approx(0.3)
    finally:
        await client.aclose()


async def test_a_day_spent_past_the_record_bound_stays_spent(
    states: tuple[SharedState, SharedState],
) -> None:
    """A settlement that takes the shared spend past the bound the script trusts (1e15:
    the most one reservation may hold, on top of a spent budget) must not turn the record
    into "garbage" that the next request resets to nothing spent."""
    a, b = states
    clock = FakeClock()
    one, two = replica(a, clock, usd_per_day=1e12), replica(b, clock, usd_per_day=1e12)
    first = await one.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.5e12)
    await one.settle(first, tokens=1, cost_usd=0.5e12)
    huge = await one.admit(KEY, estimated_tokens=1, estimated_cost_usd=1e300)
    await one.settle(huge, tokens=1, cost_usd=huge.reserved_usd)  # its client left
    await a.flush()
    with capture_logs() as logs, pytest.raises(GatewayDenied) as info:
        await two.admit(KEY, estimated_tokens=1)
    assert info.value.code == "insufficient_quota"
    assert not [e for e in logs if e["event"].startswith("reset a malformed")]


async def test_a_reservation_whose_reply_was_lost_is_released(
    redis_server: RedisServer,
) -> None:
    state = SharedState(
        redis_url=redis_server.url,
        key_prefix=_prefix(),
        timeout_s=UP_TIMEOUT_S,
        sync_interval_s=0.05,
    )
    async with state:
        keys = replica(state, FakeClock(), usd_per_day=1.0)
        await keys.settle(await keys.admit(KEY, estimated_tokens=1), tokens=1, cost_usd=0.0)
        redis_server.pause()  # the script waits in the socket; it runs once Redis resumes
        with _impatient(state):
            slow = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=1.5)
        assert not state.available
        redis_server.resume()
        await _until_available(state)
        await keys.settle(slow, tokens=1, cost_usd=0.01)
        await state.flush()
        after = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.5)
        await keys.settle(after, tokens=1, cost_usd=0.01)
        await state.flush()
        # 0.02 spent of 1.0: room for another request of 0.5
        await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.5)


async def test_settlements_kept_while_redis_was_down_reach_it_at_shutdown(
    redis_server: RedisServer,
) -> None:
    """A replica that stops (a deploy, a scale-down) once Redis is back sends what it
    kept while Redis was down: the reservation it held there is released and its spend
    counted, though no request of that key came in between."""
    from cascade.gateway._key_gate import KeyGate

    prefix = _prefix()
    state = SharedState(
        redis_url=redis_server.url, key_prefix=prefix, timeout_s=UP_TIMEOUT_S, sync_interval_s=0.05
    )
    await state.open()
    clock = FakeClock()
    keys = replica(state, clock, usd_per_day=1.0)
    gate = KeyGate(keys, shared=state)
    try:
        big = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=1.5)
        await _blip(state, redis_server)
        await keys.settle(big, tokens=1, cost_usd=0.1)  # kept: Redis is down
        redis_server.resume()
        await _until_available(state)
    finally:
        await gate.aclose()
    other = SharedState(redis_url=redis_server.url, key_prefix=prefix, timeout_s=2.0)
    async with other:
        two = replica(other, clock, usd_per_day=1.0)
        # 0.1 spent, nothing held: room for a request of 0.5
        await two.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.5)
        assert two.spent_today("team") == pytest.approx(0.1)


async def test_a_request_that_leaves_while_its_key_catches_up_loses_nothing(
    redis_server: RedisServer,
) -> None:
    """The settlements kept while Redis was down go out with the key's next reservation:
    that request's client leaving meanwhile must not drop them (they are the key's, not
    the request's)."""
    prefix = _prefix()
    state = SharedState(
        redis_url=redis_server.url, key_prefix=prefix, timeout_s=UP_TIMEOUT_S, sync_interval_s=0.05
    )
    async with state:
        keys = replica(state, FakeClock(), usd_per_day=1.0)
        big = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=1.5)
        await _blip(state, redis_server)
        await keys.settle(big, tokens=1, cost_usd=0.1)  # kept: Redis is down
        redis_server.resume()
        await _until_available(state)
        # no idle connection left: the next call connects first. Only the idle ones: one the
        # sync loop's poll holds, cut under it, would take the state down (a local admit
        # then has nothing to cancel)
        await state.run(lambda client: client.connection_pool.disconnect(inuse_connections=False))
        assert state.available
        leaving = asyncio.ensure_future(keys.admit(KEY, estimated_tokens=1))
        await asyncio.sleep(0)  # under way: connecting to send what the key kept
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await state.flush()
    other = SharedState(redis_url=redis_server.url, key_prefix=prefix, timeout_s=2.0)
    async with other:
        two = replica(other, FakeClock(), usd_per_day=1.0)
        # 0.1 spent, nothing held: room for a request of 0.5
        await two.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.5)
        assert two.spent_today("team") == pytest.approx(0.1)


async def _spend(state: SharedState, key: str, *args: str) -> tuple[str, float, float]:
    """One call of the spend script: (status, spent, reserved)."""
    reply = await state.script("spend", [key], *args)
    status, spent, reserved, _ = (v.decode() if isinstance(v, bytes) else v for v in reply)
    return status, float(spent), float(reserved)


async def test_a_settlement_before_its_late_reserve_leaves_nothing_held(
    states: tuple[SharedState, SharedState],
) -> None:
    """A reserve whose reply never came may run after its settlement (Redis paused, the
    reserve queued behind it on another connection): the settlement leaves word (x:id)
    and the late reserve holds nothing."""
    a, _ = states
    key = a.key("spend", "late:1")
    assert await _spend(a, key, "settle", "60000", "0", "0.25", "60000", "u:abc") == (
        "ok",
        0.25,
        0.0,
    )
    status, _, reserved = await _spend(a, key, "reserve", "1", "0.5", "0", "60000", "abc", "60000")
    assert (status, reserved) == ("ok", 0.0)
    # the word is used up: the same id reserved again holds
    assert (await _spend(a, key, "reserve", "1", "0.5", "0", "60000", "abc", "60000"))[2] == 0.5
    # a held reservation's release takes it off, whatever amount the settlement says
    assert (await _spend(a, key, "settle", "60000", "0", "0", "60000", "h:abc"))[2] == 0.0


async def test_a_reservation_nobody_settles_is_dropped_after_its_hold(
    states: tuple[SharedState, SharedState],
) -> None:
    """A replica that stopped without settling leaves its reservations in Redis: past
    their hold, a request they would refuse drops them and is admitted."""
    a, _ = states
    key = a.key("spend", "orphan:1")
    assert (await _spend(a, key, "reserve", "1", "0.9", "0", "60000", "gone", "1"))[0] == "ok"
    assert (await _spend(a, key, "reserve", "1", "0.5", "0", "60000", "kept", "60000"))[0] == "ok"
    await asyncio.sleep(0.01)  # "gone"'s 1 ms hold is over; "kept" holds 0.5 for a minute
    status, _, reserved = await _spend(a, key, "reserve", "1", "0.5", "0", "60000", "new", "60000")
    assert (status, reserved) == ("ok", pytest.approx(1.0))  # "kept" and "new"
    assert (await _spend(a, key, "reserve", "1", "0.4", "0", "60000", "more", "60000"))[0] == "over"
