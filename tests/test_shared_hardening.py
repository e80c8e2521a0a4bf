"""Shared state against a hostile or broken Redis, on a real redis-server: waits that
never become unbounded TTLs, scripts that never half-apply, malformed records that are
logged once and ignored by a sync task that never dies, one half-open probe across
replicas, and a password from the environment. Skips like tests/test_shared_redis.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from cascade import Cascade, ConfigError
from cascade.resilience._redis_scripts import BREAKER_LUA, LIMIT_LUA, MAX_TTL_S
from cascade.resilience.breaker import AsyncBreaker
from cascade.resilience.limiter import RateLimiter
from cascade.resilience.shared import SharedBreaker, SharedState
from cascade.testing import FakeClock, FakeOpenAIServer, FakeRequest, Reply

from .helpers import USER
from .test_shared_redis import (  # noqa: F401 (fixtures)
    BACK,
    DOWN,
    UP_TIMEOUT_S,
    RedisServer,
    _events,
    _prefix,
    _until,
    breaker_cfg,
    redis_bin,
    redis_server,
    redis_url,
    shared_cfg,
)

pytestmark = pytest.mark.anyio

BAD_RECORD = "ignoring a malformed shared breaker record"


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[Any]:  # noqa: F811
    import redis.asyncio as aioredis

    c = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield c
    finally:
        await c.aclose()


async def _state(url: str, prefix: str) -> SharedState:
    state = SharedState(
        redis_url=url, key_prefix=prefix, timeout_s=UP_TIMEOUT_S, sync_interval_s=0.05
    )
    await state.open()
    return state


# -- item 6: no unbounded TTL, no half-applied script -------------------------------------


async def test_a_429_asking_for_ages_blocks_replicas_for_the_ceiling_at_most(
    redis_url: str,  # noqa: F811
    client: Any,
) -> None:
    prefix = _prefix()
    state = await _state(redis_url, prefix)
    try:
        limiter = RateLimiter("p", requests_per_minute=60, shared=state)  # 300 s ceiling
        limiter.observe({"retry-after": "1e12"}, status=429)
        await state.flush()
        key = f"{prefix}:limit:p"
        ttl_ms = await client.pttl(key)
        assert 0 < ttl_ms <= 301_000 + 1_000
        # another replica is held back no longer than that either
        other = RateLimiter("p", requests_per_minute=60, shared=state)
        assert await other.reserve(tokens=1) is None
        blocked = float(await client.hget(key, "blocked"))
        now_s, now_us = await client.time()
        assert blocked - (now_s + now_us / 1e6) <= 300.5
    finally:
        await state.aclose()


async def test_shared_block_is_bounded_whatever_the_caller_asks(
    redis_url: str,  # noqa: F811
    client: Any,
) -> None:
    prefix = _prefix()
    state = await _state(redis_url, prefix)
    try:
        limiter = RateLimiter("p", requests_per_minute=60, shared=state)
        assert limiter._shared is not None
        limiter._shared.block(1e17)
        await state.flush()
        ttl_ms = await client.pttl(f"{prefix}:limit:p")
        assert 0 < ttl_ms <= (MAX_TTL_S + 1) * 1000
        assert state.available
    finally:
        await state.aclose()


@pytest.mark.parametrize("seconds", ["1e17", "inf", "nan", "-1", "abc"])
async def test_the_limit_script_checks_its_arguments_before_writing(
    client: Any, seconds: str
) -> None:
    from redis.exceptions import ResponseError

    key = f"{_prefix()}:limit:p"
    await client.hset(key, mapping={"requests": "1.000000"})
    with pytest.raises(ResponseError):
        await client.eval(LIMIT_LUA, 1, key, "block", seconds)
    assert await client.hgetall(key) == {"requests": "1.000000"}  # nothing half-written
    await client.delete(key)


@pytest.mark.parametrize("window", ["1e300", "inf", "nan", "-3"])
async def test_the_breaker_script_checks_its_arguments_before_writing(
    client: Any, window: str
) -> None:
    from redis.exceptions import ResponseError

    key = f"{_prefix()}:breaker:p"
    await client.hset(key, mapping={"state": "closed", "epoch": "3"})
    with pytest.raises(ResponseError):
        await client.eval(BREAKER_LUA, 1, key, "open", "2", window)
    assert await client.hgetall(key) == {"state": "closed", "epoch": "3"}
    await client.delete(key)


async def test_the_breaker_script_overwrites_garbage_instead_of_failing(client: Any) -> None:
    key = f"{_prefix()}:breaker:p"
    await client.hset(key, mapping={"epoch": "abc", "failures": "x", "open_until": "y"})
    reply = await client.eval(BREAKER_LUA, 1, key, "fail", "1", "30")
    assert reply[0] == "open"
    record = await client.hgetall(key)
    assert record["state"] == "open"
    assert record["epoch"] == "1"
    assert record["failures"] == "0"
    await client.delete(key)


# -- item 9: malformed records, and a sync task that never dies ---------------------------


async def test_a_malformed_record_is_logged_once_and_a_good_one_is_picked_up_after(
    redis_url: str,  # noqa: F811
    client: Any,
) -> None:
    prefix = _prefix()
    with capture_logs() as logs:
        state = await _state(redis_url, prefix)
        try:
            breaker = AsyncBreaker("p", reset_timeout_s=30, shared=state)
            key = f"{prefix}:breaker:p"
            await client.hset(key, "epoch", "abc")
            await _until(lambda: bool(_events(logs, BAD_RECORD)))
            await asyncio.sleep(0.3)  # several more polls of the same garbage
            now_s, now_us = await client.time()
            open_until = f"{now_s + now_us / 1e6 + 20:.6f}"
            await client.hset(key, mapping={"state": "open", "open_until": open_until})
            await client.hset(key, "epoch", "7")
            await _until(lambda: breaker.state == "open")
            assert 15 < breaker.retry_in_s() <= 20
            assert state.available
        finally:
            await state.aclose()
    bad = _events(logs, BAD_RECORD)
    assert len(bad) == 1  # once per key, not once per poll
    assert bad[0]["log_level"] == "warning"
    assert bad[0]["key"] == key
    assert bad[0]["field"] == "epoch"
    assert not _events(logs, DOWN)


async def test_a_key_of_the_wrong_type_does_not_take_the_others_down(
    redis_url: str,  # noqa: F811
    client: Any,
) -> None:
    prefix = _prefix()
    with capture_logs() as logs:
        state = await _state(redis_url, prefix)
        try:
            AsyncBreaker("q", shared=state)
            good = AsyncBreaker("p", reset_timeout_s=30, shared=state)
            await client.set(f"{prefix}:breaker:q", "not a hash")
            await _until(lambda: bool(_events(logs, BAD_RECORD)))
            now_s, _ = await client.time()
            await client.hset(
                f"{prefix}:breaker:p",
                mapping={"state": "open", "open_until": str(now_s + 20), "epoch": "1"},
            )
            await _until(lambda: good.state == "open")
            assert state.available
        finally:
            await state.aclose()
    assert not _events(logs, DOWN)


async def test_a_breaker_key_of_the_wrong_type_is_replaced_not_an_outage(
    redis_url: str,  # noqa: F811
    client: Any,
) -> None:
    """A string where a breaker's hash belongs (an older version, another tenant on the
    prefix), or a hash where its probe lease belongs: the breaker's writes replace it, as
    the limit and spend scripts do, instead of a WRONGTYPE error that takes the whole
    shared state down (every limit and budget local) at each of the breaker's outcomes."""
    prefix = _prefix()
    with capture_logs() as logs:
        state = await _state(redis_url, prefix)
        try:
            breaker = AsyncBreaker("q", fail_max=5, shared=state)
            await client.set(f"{prefix}:breaker:q", "not a hash")
            breaker.admit().failure()
            await state.flush()
            assert state.available
            assert await client.type(f"{prefix}:breaker:q") == "hash"
            assert await client.hget(f"{prefix}:breaker:q", "failures") == "1"
            await client.hset(f"{prefix}:probe:q", mapping={"not": "a lease"})
            clock = FakeClock()
            probing = AsyncBreaker("q", fail_max=1, reset_timeout_s=10, clock=clock, shared=state)
            probing.force_open(0)
            permit = await probing.acquire()
            assert permit.probe
            await state.flush()
            assert state.available
            assert await client.get(f"{prefix}:probe:q") == state.token
            permit.release()
            await state.flush()
        finally:
            await state.aclose()
    assert not _events(logs, DOWN)


@pytest.mark.parametrize(
    "value",
    [
        {"open_until": "1e300", "state": "open", "epoch": "2"},
        {"state": "sideways", "epoch": "2"},
        {"failures": "-4", "epoch": "2"},
        {"epoch": "1e400"},
    ],
)
async def test_values_that_parse_but_make_no_sense_are_ignored_too(
    redis_url: str,  # noqa: F811
    client: Any,
    value: dict[str, str],
) -> None:
    prefix = _prefix()
    with capture_logs() as logs:
        state = await _state(redis_url, prefix)
        try:
            breaker = AsyncBreaker("p", shared=state)
            await client.hset(f"{prefix}:breaker:p", mapping=value)
            await _until(lambda: bool(_events(logs, BAD_RECORD)))
            assert breaker.state == "closed"
        finally:
            await state.aclose()


async def test_after_garbage_and_a_redis_restart_shared_state_comes_back(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    import redis.asyncio as aioredis

    prefix = _prefix()
    key = f"{prefix}:breaker:p"
    with capture_logs() as logs:
        state = await _state(redis_server.url, prefix)
        try:
            breaker = AsyncBreaker("p", reset_timeout_s=30, shared=state)
            raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            await raw.hset(key, "epoch", "abc")
            await raw.aclose()
            await _until(lambda: bool(_events(logs, BAD_RECORD)))
            redis_server.kill()
            await _until(lambda: not state.available)
            redis_server.start()  # the same port, empty
            await _until(lambda: state.available)
            raw = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
            now_s, _ = await raw.time()
            await raw.hset(
                key, mapping={"state": "open", "open_until": str(now_s + 20), "epoch": "1"}
            )
            await raw.aclose()
            await _until(lambda: breaker.state == "open")
        finally:
            await state.aclose()
    assert len(_events(logs, DOWN)) == 1
    assert len(_events(logs, BACK)) == 1


async def test_the_sync_task_survives_an_error_it_did_not_foresee(
    redis_url: str,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = 0
    real_apply = SharedBreaker.apply

    def broken_apply(self: SharedBreaker, *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError("a bug")
        real_apply(self, *args)

    monkeypatch.setattr(SharedBreaker, "apply", broken_apply)
    with capture_logs() as logs:
        state = await _state(redis_url, _prefix())
        try:
            AsyncBreaker("p", shared=state)
            await _until(lambda: calls > 5)
            assert state._sync_task is not None
            assert not state._sync_task.done()
        finally:
            await state.aclose()
    assert len(_events(logs, "shared state sync failed, retrying")) == 1
    assert len(_events(logs, "shared state sync recovered")) == 1


# -- item 10: one half-open probe across replicas -----------------------------------------


async def test_one_half_open_probe_across_replicas(
    openai_server: FakeOpenAIServer,
    redis_url: str,  # noqa: F811
    client: Any,
) -> None:
    prefix = _prefix()
    openai_server.script("ma", Reply(status=500))
    openai_server.script("mb", "fine")
    cfg = breaker_cfg(openai_server.url, redis_url, prefix)
    clock_a, clock_b = FakeClock(), FakeClock()
    async with (
        Cascade.from_dict(cfg, clock=clock_a) as ca,
        Cascade.from_dict(cfg, clock=clock_b) as cb,
    ):
        for c in (ca, cb):  # fail_max = 2, one failure in each replica
            assert (await c.run(messages=USER)).provider == "b"
            shared = c._calls.shared
            assert shared is not None
            await shared.flush()
        await _until(lambda: ca.breakers["a"].state == "open")
        await _until(lambda: cb.breakers["a"].state == "open")
        # the provider is back, but slow: the probe is in flight while B is asked
        release = asyncio.Event()
        probes = 0

        async def slow(request: FakeRequest) -> Reply:
            nonlocal probes
            probes += 1
            await release.wait()
            return Reply(text="back")

        openai_server.respond("ma", slow)
        clock_a.advance(30)
        clock_b.advance(30)
        probe = asyncio.create_task(ca.run(messages=USER))
        await _until(lambda: probes == 1)
        for _ in range(3):
            result = await cb.run(messages=USER, deadline_s=5)
            assert result.provider == "b"
            assert result.attempts[0].error_type == "CircuitOpen"
        assert probes == 1  # B never probed while A's probe was out
        ttl_ms = await client.pttl(f"{prefix}:probe:a")
        assert 0 < ttl_ms <= 30_000  # a lease that outlives no window
        release.set()
        assert (await probe).provider == "a"
        await _until(lambda: cb.breakers["a"].state == "closed")
        assert (await cb.run(messages=USER)).provider == "a"
        assert not await client.exists(f"{prefix}:probe:a")  # the lease ended with the probe


async def test_a_cancelled_probe_gives_its_lease_back(
    redis_url: str,  # noqa: F811
    client: Any,
) -> None:
    prefix = _prefix()
    state = await _state(redis_url, prefix)
    try:
        clock = FakeClock()
        breaker = AsyncBreaker("p", fail_max=1, reset_timeout_s=10, clock=clock, shared=state)
        breaker.force_open(0)
        permit = await breaker.acquire()
        assert permit.probe
        assert await client.get(f"{prefix}:probe:p") == state.token
        permit.release()  # cancelled: no verdict
        await state.flush()
        assert not await client.exists(f"{prefix}:probe:p")
    finally:
        await state.aclose()


async def test_a_lease_without_expiry_left_by_hand_gets_one(
    redis_url: str,  # noqa: F811
    client: Any,
) -> None:
    from cascade import CircuitOpen

    prefix = _prefix()
    await client.set(f"{prefix}:probe:p", "someone else")
    state = await _state(redis_url, prefix)
    try:
        breaker = AsyncBreaker("p", reset_timeout_s=10, clock=FakeClock(), shared=state)
        breaker.force_open(0)
        with pytest.raises(CircuitOpen) as info:
            await breaker.acquire()
        assert 0 < info.value.retry_in_s <= 10
        assert 0 < await client.pttl(f"{prefix}:probe:p") <= 10_000
    finally:
        await state.aclose()
        await client.delete(f"{prefix}:probe:p")


# -- item 10: the Redis password from the environment -------------------------------------


async def test_password_env_reads_the_password_and_never_shows_it(
    openai_server: FakeOpenAIServer,
    redis_bin: str,  # noqa: F811
) -> None:
    server = RedisServer(redis_bin, password="s3cret-pw")
    server.start()
    try:
        url = f"redis://127.0.0.1:{server.port}/0"
        openai_server.script("ma", "fine")
        cfg = {
            "tiers": [
                {
                    "name": "t",
                    "providers": [
                        {
                            "name": "a",
                            "kind": "openai",
                            "base_url": openai_server.url,
                            "model": "ma",
                            "limits": {"requests_per_minute": 1},
                        }
                    ],
                }
            ],
            "shared": shared_cfg(url, _prefix(), password_env="CASCADE_REDIS_PW"),
        }
        with capture_logs() as logs:
            c = Cascade.from_dict(cfg, environ={"CASCADE_REDIS_PW": "s3cret-pw"})
            async with c:
                shared = c._calls.shared
                assert shared is not None
                assert shared.available
                assert (await c.run(messages=USER)).provider == "a"
                limiter = c._calls.limiters["a"]
                assert await limiter.reserve(tokens=1) is None  # the shared budget: 1/min
                texts = [repr(shared), repr(c.config), repr(c.config.shared), repr(limiter)]
        assert not _events(logs, DOWN)
        assert "CASCADE_REDIS_PW" in repr(c.config.shared)
        assert not any("s3cret" in text for text in [*texts, repr(logs)])
        # without the password the same server refuses
        with capture_logs() as logs:
            async with SharedState(redis_url=url) as nopw:
                assert not nopw.available
        assert len(_events(logs, DOWN)) == 1
    finally:
        server.kill()


def _shared_only(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "tiers": [
            {
                "name": "t",
                "providers": [
                    {"name": "a", "kind": "openai", "base_url": "http://127.0.0.1:1", "model": "m"}
                ],
            }
        ],
        "shared": {"redis_url": url, **extra},
    }


@pytest.mark.parametrize("environ", [{}, {"PW": ""}])
def test_password_env_must_name_a_set_variable(
    redis_bin: str,  # noqa: F811
    environ: dict[str, str],
) -> None:
    cfg = _shared_only("redis://127.0.0.1:6379/0", password_env="PW")
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg, environ=environ)
    assert info.value.path == "shared.password_env"
    assert "PW" in str(info.value)


@pytest.mark.parametrize(
    "url", ["redis://:inurl@127.0.0.1:6379/0", "redis://127.0.0.1:6379/0?password=inurl"]
)
def test_a_password_in_the_url_and_in_password_env_is_an_error(
    redis_bin: str,  # noqa: F811
    url: str,
) -> None:
    cfg = _shared_only(url, password_env="PW")
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg, environ={"PW": "fromenv"})
    assert info.value.path == "shared.password_env"
    assert "inurl" not in str(info.value)
    assert "fromenv" not in str(info.value)
