"""Breakers and rate limits shared through a real redis-server on loopback.

Each test that stops Redis starts its own ``redis-server`` (on a free port, so it can be
killed, paused and restarted); the others use ``CASCADE_TEST_REDIS_URL`` when ``.ci/run``
provides one. Without the binary the tests skip, unless ``CASCADE_TEST_REDIS=1``: then
they fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from time import perf_counter
from typing import Any

import pytest
from structlog.testing import capture_logs

import cascade
from cascade import Cascade
from cascade.resilience.breaker import AsyncBreaker
from cascade.resilience.limiter import LimiterTimeout, RateLimiter
from cascade.resilience.shared import SharedState
from cascade.testing import FakeClock, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

REQUIRED = os.environ.get("CASCADE_TEST_REDIS") == "1"
DOWN = "shared state unavailable, using local limits"
BACK = "shared state available again"
# The Redis timeout of the tests whose Redis stays up (the default is 0.1 s): long beside a
# loaded machine's stalls of the event loop (a collection of a large heap, a CPU shared with
# other jobs). One that timed out took the shared state down, and the test then checked
# per-replica limits: these tests are about sharing, not about Redis timeouts.
UP_TIMEOUT_S = 2.0


def _unavailable(why: str) -> None:
    if REQUIRED:
        pytest.fail(f"CASCADE_TEST_REDIS=1 but {why}")
    pytest.skip(why)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_ping(port: int, password: str | None = None) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            if password is not None:
                s.sendall(f"AUTH {password}\r\n".encode())
                s.recv(64)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A ``redis-server`` child process on loopback: start, kill, pause, resume."""

    def __init__(self, binary: str, *, password: str | None = None) -> None:
        self.binary = binary
        self.port = _free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = "" if self.password is None else f":{self.password}@"
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(250):
            if _answers_ping(self.port, self.password):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.kill()
        _unavailable(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_bin() -> str:
    try:
        import redis  # noqa: F401
    except ImportError:
        _unavailable("the redis client is not installed (pip install -e '.[dev]')")
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("redis-server is not installed")
    assert binary is not None
    return binary


@pytest.fixture
def redis_server(redis_bin: str) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop."""
    server = RedisServer(redis_bin)
    server.start()
    try:
        yield server
    finally:
        if server.proc is not None:
            server.resume()
        server.kill()


@pytest.fixture
def redis_url(redis_bin: str) -> Iterator[str]:
    """A Redis that stays up: .ci/run's (CASCADE_TEST_REDIS_URL), else one of our own."""
    url = os.environ.get("CASCADE_TEST_REDIS_URL")
    if url:
        from urllib.parse import urlsplit

        port = urlsplit(url).port or 6379
        if not _answers_ping(port):
            _unavailable(f"CASCADE_TEST_REDIS_URL ({port}) does not answer")
        yield url
        return
    server = RedisServer(redis_bin)
    server.start()
    try:
        yield server.url
    finally:
        server.kill()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def shared_cfg(url: str, prefix: str, **extra: Any) -> dict[str, Any]:
    return {
        "redis_url": url,
        "key_prefix": prefix,
        "timeout_s": UP_TIMEOUT_S,
        "sync_interval_s": 0.05,
        **extra,
    }


@pytest.fixture
async def pair(redis_url: str) -> AsyncIterator[tuple[SharedState, SharedState]]:
    """Two replicas' shared states on one Redis and one key prefix."""
    prefix = _prefix()
    a, b = (
        SharedState(
            redis_url=redis_url, key_prefix=prefix, timeout_s=UP_TIMEOUT_S, sync_interval_s=0.05
        )
        for _ in "ab"
    )
    async with a, b:
        yield a, b


async def _until(check: Any, *, timeout_s: float = 3.0) -> None:
    deadline = perf_counter() + timeout_s
    while not check():
        assert perf_counter() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _key_exists(url: str, key: str) -> bool:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return bool(await client.exists(key))
    finally:
        await client.aclose()


# -- rate limits --------------------------------------------------------------------------


async def test_two_limiters_on_one_redis_admit_exactly_the_quota(
    pair: tuple[SharedState, SharedState],
) -> None:
    a, b = pair
    la = RateLimiter("p", requests_per_minute=5, shared=a)
    lb = RateLimiter("p", requests_per_minute=5, shared=b)
    leases = [await (la, lb)[i % 2].reserve(tokens=1) for i in range(12)]
    assert sum(lease is not None for lease in leases) == 5  # each alone would admit 5
    assert "shared=up" in repr(la)
    # a limiter that has seen the shared budget empty does not ask Redis again meanwhile
    assert la.try_acquire(tokens=1) is None


async def test_tokens_are_settled_against_the_shared_budget(
    pair: tuple[SharedState, SharedState],
) -> None:
    a, b = pair
    la = RateLimiter("p", tokens_per_minute=1_000, shared=a)
    lb = RateLimiter("p", tokens_per_minute=1_000, shared=b)
    first = await la.reserve(tokens=400)
    second = await lb.reserve(tokens=400)
    assert first is not None and second is not None
    assert await lb.reserve(tokens=400) is None  # 800 of 1000 reserved between them
    first.release(used_tokens=50)  # 350 refunded to the shared budget, in the background
    await a.flush()
    lc = RateLimiter("p", tokens_per_minute=1_000, shared=b)  # a third replica's view
    assert await lc.reserve(tokens=500) is not None


async def test_acquire_waits_for_shared_headroom_and_never_past_its_deadline(
    pair: tuple[SharedState, SharedState],
) -> None:
    a, b = pair
    fast_a = RateLimiter("fast", requests_per_minute=600, burst_s=0, shared=a)  # 1 per 0.1 s
    fast_b = RateLimiter("fast", requests_per_minute=600, burst_s=0, shared=b)
    assert await fast_a.reserve(tokens=1) is not None
    t0 = time.monotonic()
    lease = await fast_b.acquire(tokens=1, deadline=time.monotonic() + 5)
    waited = time.monotonic() - t0
    assert lease is not None  # within its deadline
    assert waited > 0.03  # it waited for the shared headroom
    slow_a = RateLimiter("slow", requests_per_minute=6, burst_s=0, shared=a)  # 1 per 10 s
    slow_b = RateLimiter("slow", requests_per_minute=6, burst_s=0, shared=b)
    assert await slow_a.reserve(tokens=1) is not None
    t0 = time.monotonic()
    with pytest.raises(LimiterTimeout) as info:
        await slow_b.acquire(tokens=1, deadline=time.monotonic() + 8)
    # Refused at once, not after sleeping towards a deadline it could never meet: its
    # turn is 10 s away, past the 8 s deadline (4 s of slack for a loaded machine).
    assert time.monotonic() - t0 < 4
    assert 8 < info.value.retry_in_s <= 10


async def test_a_429_in_one_replica_holds_back_every_replica(
    pair: tuple[SharedState, SharedState],
) -> None:
    a, b = pair
    la = RateLimiter("p", requests_per_minute=100, shared=a)
    lb = RateLimiter("p", requests_per_minute=100, shared=b)
    la.observe({"retry-after": "30"}, status=429)
    await a.flush()
    assert await lb.reserve(tokens=1) is None


async def test_a_request_cancelled_during_a_redis_call_is_cancelled(
    pair: tuple[SharedState, SharedState],
) -> None:
    # Python 3.11's asyncio.wait_for, used inside redis-py, can swallow a cancel that lands
    # as a socket write completes: a deadline would then never fire.
    a, _ = pair
    limiter = RateLimiter("p", requests_per_minute=1e9, shared=a)
    rng = random.Random(7)

    async def loop() -> None:
        while True:
            lease = await limiter.reserve(tokens=1)
            assert lease is not None
            lease.release()

    for _ in range(150):
        task = asyncio.create_task(loop())
        await asyncio.sleep(rng.random() * 0.002)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done and task.cancelled()


async def test_two_processes_share_one_requests_per_minute_quota(redis_url: str) -> None:
    quota, each = 6, 6
    script = textwrap.dedent(
        """
        import asyncio, json, sys
        import cascade

        url, redis_url, prefix, quota, each = sys.argv[1:]
        cfg = {
            "tiers": [{"name": "t", "providers": [{
                "name": "a", "kind": "openai", "base_url": url, "model": "m",
                "timeout_s": 5, "limits": {"requests_per_minute": float(quota)},
            }]}],
            # A loaded machine can take longer than the default 0.1 s to connect: this test
            # is about sharing the quota, not about Redis timeouts.
            "shared": {"redis_url": redis_url, "key_prefix": prefix, "timeout_s": 2},
        }

        async def main():
            async with cascade.Cascade.from_dict(cfg) as c:
                async def one():
                    try:
                        await c.run(messages=[{"role": "user", "content": "hi"}], deadline_s=1)
                    except cascade.RunError:
                        return False
                    return True
                done = await asyncio.gather(*(one() for _ in range(int(each))))
            print(json.dumps({"ok": sum(done)}))

        asyncio.run(main())
        """
    )
    prefix = _prefix()
    async with FakeOpenAIServer(default="hello") as server:
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                script,
                server.url,
                redis_url,
                prefix,
                str(quota),
                str(each),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        outputs = [await asyncio.wait_for(p.communicate(), timeout=30) for p in procs]
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err.decode()
        # the JSON line comes last; a "shared state unavailable" warning before it would mean
        # each process fell back to its own local quota
        lines = [out.decode().strip().splitlines() for out, _ in outputs]
        assert all(len(ls) == 1 for ls in lines), lines
        oks = [json.loads(ls[-1])["ok"] for ls in lines]
        # each process alone would send all 6: together they send the quota, no more
        assert server.request_count == quota
        assert sum(oks) == quota


# -- breakers -----------------------------------------------------------------------------


def breaker_cfg(url: str, redis_url: str, prefix: str) -> dict[str, Any]:
    return {
        "tiers": [
            tier(
                "small",
                provider("a", url, "ma", breaker={"fail_max": 2, "reset_timeout_s": 30}),
                provider("b", url, "mb"),
            )
        ],
        "shared": shared_cfg(redis_url, prefix),
    }


async def test_an_outage_seen_by_two_replicas_opens_both_and_one_probe_closes_both(
    openai_server: FakeOpenAIServer, redis_url: str
) -> None:
    openai_server.script("ma", Reply(status=500))
    openai_server.script("mb", "fine")
    cfg = breaker_cfg(openai_server.url, redis_url, _prefix())
    clock_a, clock_b = FakeClock(), FakeClock()
    changes_b: list[tuple[str, str, str]] = []
    async with (
        Cascade.from_dict(cfg, clock=clock_a) as ca,
        Cascade.from_dict(
            cfg, clock=clock_b, breaker_listeners=[lambda n, o, s: changes_b.append((n, o, s))]
        ) as cb,
    ):
        shared_a, shared_b = ca._calls.shared, cb._calls.shared
        assert shared_a is not None and shared_b is not None
        # one failure in each replica: neither reaches fail_max = 2 alone, together they do
        assert (await ca.run(messages=USER)).provider == "b"
        await shared_a.flush()
        assert (await cb.run(messages=USER)).provider == "b"
        await shared_b.flush()
        assert cb.breakers["a"].state == "open"
        assert ca.breakers["a"].fail_counter == 1
        await _until(lambda: ca.breakers["a"].state == "open")
        assert 25 < ca.breakers["a"].retry_in_s() <= 30
        calls = openai_server.request_count
        for c in (ca, cb):
            result = await c.run(messages=USER)
            assert result.attempts[0].error_type == "CircuitOpen"
        assert openai_server.request_count == calls + 2  # b only: a was not called
        # the provider recovers; A's probe succeeds and closes B's breaker as well
        openai_server.reset()
        openai_server.script("ma", "back")
        clock_a.advance(30)
        clock_b.advance(30)
        assert (await ca.run(messages=USER)).provider == "a"
        assert ca.breakers["a"].state == "closed"
        await _until(lambda: cb.breakers["a"].state == "closed")
        assert (await cb.run(messages=USER)).provider == "a"
    # B never probed: it followed A's transitions
    assert changes_b == [("a", "closed", "open"), ("a", "open", "closed")]


async def test_a_success_anywhere_restarts_the_consecutive_count(
    pair: tuple[SharedState, SharedState],
) -> None:
    a, b = pair
    ba = AsyncBreaker("p", fail_max=2, shared=a)
    bb = AsyncBreaker("p", fail_max=2, shared=b)
    ba.admit().failure()
    await a.flush()
    await _until(lambda: bb._shared is not None and bb._shared.failures == 1)
    bb.admit().success()  # B knows of a count to reset
    await b.flush()
    ba.admit().success()  # local only: the count is reset already
    bb.admit().failure()
    await b.flush()
    assert (ba.state, bb.state) == ("closed", "closed")


# -- Redis going away ---------------------------------------------------------------------


def limited_cfg(url: str, redis_url: str, prefix: str, timeout_s: float) -> dict[str, Any]:
    return {
        "tiers": [tier("small", provider("a", url, "ma", limits={"requests_per_minute": 6000}))],
        "shared": shared_cfg(redis_url, prefix, timeout_s=timeout_s),
    }


def _events(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == event]


async def test_redis_killed_mid_run_falls_back_to_local_limits_loudly_and_recovers(
    openai_server: FakeOpenAIServer, redis_server: RedisServer
) -> None:
    openai_server.script("ma", "fine")
    prefix = _prefix()
    timeout_s = 1.0  # long beside a run's few ms, so the bounds below hold under load
    cfg = limited_cfg(openai_server.url, redis_server.url, prefix, timeout_s)
    async with Cascade.from_dict(cfg) as c:
        shared = c._calls.shared
        assert shared is not None
        await c.run(messages=USER)
        assert await _key_exists(redis_server.url, f"{prefix}:limit:a")
        with capture_logs() as logs:
            redis_server.kill()
            durations = []
            for _ in range(10):
                t0 = perf_counter()
                result = await c.run(messages=USER)
                durations.append(perf_counter() - t0)
                assert result.provider == "a"
            assert max(durations) < timeout_s + 1  # none waits past Redis's timeout
            assert not shared.available
            assert "down" in repr(shared) and "shared=down" in repr(c._calls.limiters["a"])
            down = _events(logs, DOWN)
            assert len(down) == 1 and down[0]["log_level"] == "warning"
            assert "127.0.0.1" in down[0]["redis"] and "error" in down[0]
            redis_server.start()  # the same port, empty
            await _until(lambda: shared.available)
            assert len(_events(logs, BACK)) == 1
            for _ in range(3):  # the shared budget again, on fresh connections
                await c.run(messages=USER)
            assert await _key_exists(redis_server.url, f"{prefix}:limit:a")
            assert shared.available
        assert _events(logs, DOWN) == down  # one warning for the one outage


async def test_a_hung_redis_holds_a_request_no_longer_than_the_timeout(
    openai_server: FakeOpenAIServer, redis_server: RedisServer
) -> None:
    openai_server.script("ma", "fine")
    timeout_s = 1.0  # long beside a run's few ms, so the bounds below hold under load
    cfg = limited_cfg(openai_server.url, redis_server.url, _prefix(), timeout_s)
    async with Cascade.from_dict(cfg) as c:
        shared = c._calls.shared
        assert shared is not None
        await c.run(messages=USER)
        with capture_logs() as logs:
            redis_server.pause()  # accepts nothing, answers nothing: a partition
            t0 = perf_counter()
            assert (await c.run(messages=USER)).provider == "a"
            assert perf_counter() - t0 < timeout_s + 1  # the timeout, not a hang
            await _until(lambda: not shared.available)
            t0 = perf_counter()
            assert (await c.run(messages=USER)).provider == "a"
            assert perf_counter() - t0 < timeout_s / 2  # known down: not asked, no wait
            redis_server.resume()
            await _until(lambda: shared.available)
        assert len(_events(logs, DOWN)) == 1 and len(_events(logs, BACK)) == 1
        await c.run(messages=USER)


async def test_redis_down_at_open_is_logged_and_requests_run_on_local_limits(
    openai_server: FakeOpenAIServer, redis_bin: str
) -> None:
    openai_server.script("ma", "fine")
    url = f"redis://:s3cret-pw@127.0.0.1:{_free_port()}/0"  # nothing listens there
    cfg = limited_cfg(openai_server.url, url, _prefix(), 0.1)
    with capture_logs() as logs:
        async with Cascade.from_dict(cfg) as c:
            assert (await c.run(messages=USER)).provider == "a"
            shared = c._calls.shared
            assert shared is not None and not shared.available
            texts = [repr(shared), repr(c.config), repr(c._calls.limiters["a"])]
    assert len(_events(logs, DOWN)) == 1
    assert "***" in repr(shared)
    assert not any("s3cret" in text for text in [*texts, repr(logs)])


async def test_a_password_protected_redis_works_and_its_password_stays_out_of_logs(
    redis_bin: str,
) -> None:
    server = RedisServer(redis_bin, password="s3cret-pw")
    server.start()
    try:
        wrong = server.url.replace("s3cret-pw", "wrong-pw")
        with capture_logs() as logs:
            async with (
                SharedState(redis_url=server.url, timeout_s=UP_TIMEOUT_S) as good,
                SharedState(redis_url=wrong) as bad,
            ):
                assert good.available and not bad.available
                limiter = RateLimiter("p", requests_per_minute=1, shared=good)
                assert await limiter.reserve(tokens=1) is not None
                assert await limiter.reserve(tokens=1) is None
                texts = [repr(good), repr(bad)]
        assert len(_events(logs, DOWN)) == 1  # the wrong password
        assert not any("pw" in text for text in [*texts, repr(logs)])
    finally:
        server.kill()


async def test_config_with_shared_table_builds_shared_breakers_and_limiters(
    openai_server: FakeOpenAIServer, redis_url: str
) -> None:
    cfg = limited_cfg(openai_server.url, redis_url, _prefix(), UP_TIMEOUT_S)
    openai_server.script("ma", "fine")
    c = Cascade.from_dict(cfg)
    shared = c._calls.shared
    assert shared is not None and "idle" in repr(shared)
    async with c:
        assert shared.available
        assert (await c.run(messages=USER)).provider == "a"
    assert "closed" in repr(shared) and not shared.available
    assert isinstance(c.config.shared, cascade.SharedConfig)


async def test_closing_through_a_stalled_loop_does_not_raise(redis_url: str) -> None:
    """redis-py bounds each connection's close by the connect timeout (``timeout_s``): a
    loop that stalls longer than that while the state closes (a busy process shutting
    down) made ``aclose()`` raise redis's TimeoutError, out of ``Cascade.aclose()`` and
    the gateway's cleanup, leaving what was to close after it. Closing must close.
    (Whether a stall lands between the close and its wake-up depends on the loop's turn
    order: five closes, of which about half raised.)"""
    loop = asyncio.get_running_loop()
    for _ in range(5):
        state = SharedState(redis_url=redis_url, key_prefix=_prefix(), timeout_s=0.05)
        await state.open()
        assert await state.run(lambda client: client.ping()) is not None
        closing = asyncio.Event()
        closing.set()

        def stall(turns: Iterator[int], closing: asyncio.Event = closing) -> None:
            if closing.is_set() and next(turns, None) is not None:
                time.sleep(0.08)  # longer than timeout_s, every loop turn
                loop.call_soon(stall, turns)

        loop.call_soon(stall, iter(range(40)))  # bounded: 40 turns of 0.08 s at most
        try:
            await state.aclose()  # no TimeoutError
        finally:
            closing.clear()
        assert not state.available
