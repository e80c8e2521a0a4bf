"""Waits a server asks for are capped (``LimitsConfig.max_wait_s``), and absolute times are
measured from a believable ``Date`` only: a hostile or broken server cannot block a
provider for months. Driven by FakeClocks and a fixed wall clock; no test sleeps."""

from __future__ import annotations

import math
import random
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from cascade import AllProvidersFailed, Cascade, Config, ConfigError, RateLimited
from cascade._clock import FakeClock
from cascade._headers import MAX_WAIT_S, duration_s, retry_after_s, server_wall, until_s
from cascade.resilience import RetryPolicy, call_with_retries
from cascade.resilience.limiter import RateLimiter
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

NOW = 1_790_000_000.0  # our wall clock in these tests (2026)
DATE_NOW = "Mon, 21 Sep 2026 14:13:20 GMT"  # NOW, as a server would send it
FAR_DATE = "Fri, 31 Dec 9999 23:59:59 GMT"
EPOCH_DATE = "Thu, 01 Jan 1970 00:00:00 GMT"


def test_date_now_is_now() -> None:
    assert server_wall({"date": DATE_NOW}, local=NOW + 5) == NOW


# -- parsing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "1e12"},
        {"retry-after": "99999999999999999999999999999999999999"},
        {"retry-after-ms": "1e17"},
        {"retry-after": FAR_DATE},
        {"retry-after": FAR_DATE, "date": EPOCH_DATE},
    ],
)
def test_retry_after_is_capped(headers: dict[str, str]) -> None:
    assert retry_after_s(headers) == MAX_WAIT_S
    assert retry_after_s(headers, max_s=20) == 20


@pytest.mark.parametrize("raw", ["99999999h", "9" * 400 + "h", "9" * 400 + "s", "1e12"])
def test_reset_durations_are_capped(raw: str) -> None:
    assert duration_s(raw) == MAX_WAIT_S
    assert duration_s(raw, max_s=7) == 7


def test_reset_times_are_capped_and_never_negative() -> None:
    assert until_s("9999-12-31T23:59:59Z", NOW) == MAX_WAIT_S
    assert until_s(FAR_DATE, NOW, max_s=1) == 1
    assert until_s("1970-01-01T00:00:00Z", NOW) == 0.0


@pytest.mark.parametrize("date", [EPOCH_DATE, FAR_DATE, "Sat, 01 Jan 2000 00:00:00 GMT"])
def test_a_date_far_from_our_clock_is_not_believed(date: str) -> None:
    assert server_wall({"date": date}, local=NOW) == NOW


def test_a_date_a_little_off_is_the_servers_now() -> None:
    # The server's clock runs 2 hours fast: its reset times are on that clock too.
    assert server_wall({"date": DATE_NOW}, local=NOW - 7200) == NOW


def test_retry_after_date_is_measured_from_a_believable_date_only() -> None:
    in_a_minute = format_datetime(datetime.fromtimestamp(NOW + 60, UTC), usegmt=True)
    assert retry_after_s({"retry-after": in_a_minute}, wall=NOW) == 60
    # A server stuck in 1970 says "60 s from now" with a 2026 Retry-After and a 1970 Date:
    # measured from its Date that would be 56 years; from our clock it is 60 s.
    assert server_wall({"date": EPOCH_DATE}, local=NOW) == NOW


# -- the limiter --------------------------------------------------------------------------


def _limiter(clock: FakeClock, **kwargs: Any) -> RateLimiter:
    return RateLimiter(
        "p", requests_per_minute=60, clock=clock, wall=lambda: NOW + clock.monotonic(), **kwargs
    )


@pytest.mark.parametrize(
    "headers",
    [
        {"retry-after": "1e12"},
        {"retry-after": FAR_DATE},
        {"retry-after-ms": "1e17"},
        {"retry-after": "Sat, 01 Jan 2000 00:00:00 GMT", "date": EPOCH_DATE},
    ],
)
async def test_a_429_blocks_for_max_wait_s_at_most(headers: dict[str, str]) -> None:
    clock = FakeClock()
    lim = _limiter(clock, max_wait_s=30)
    lim.observe(headers, status=429)
    blocked = lim.headroom.blocked_until
    assert blocked is None or blocked <= 30
    clock.advance(30)
    assert lim.try_acquire(tokens=0) is not None


async def test_remaining_zero_with_an_absurd_reset_refills_within_the_ceiling() -> None:
    clock = FakeClock()
    lim = _limiter(clock)  # default ceiling: 300 s
    lim.observe(
        {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "99999999h"},
        status=200,
    )
    assert lim.try_acquire(tokens=0) is None
    clock.advance(MAX_WAIT_S)
    assert lim.headroom.requests == pytest.approx(60)


async def test_a_1970_date_does_not_turn_a_one_minute_reset_into_decades() -> None:
    clock = FakeClock()
    lim = _limiter(clock)
    in_a_minute = datetime.fromtimestamp(NOW + 60, UTC).isoformat()
    lim.observe(
        {
            "date": EPOCH_DATE,
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": in_a_minute,
        },
        status=200,
    )
    clock.advance(30)
    assert lim.headroom.requests == pytest.approx(30)  # half way to full in a minute
    clock.advance(30)
    assert lim.headroom.requests == pytest.approx(60)


def test_the_limiter_refuses_a_ceiling_that_is_no_number() -> None:
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="max_wait_s"):
            RateLimiter("p", requests_per_minute=1, max_wait_s=bad)


@pytest.mark.parametrize("value", ["inf", "nan", "0", "-5", "1e9"])
def test_config_max_wait_s_must_be_finite_and_positive(value: str) -> None:
    toml = f"""
[[tiers]]
name = "t"
[[tiers.providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:1"
model = "m"
limits = {{ requests_per_minute = 10, max_wait_s = {value} }}
"""
    with pytest.raises(ConfigError) as info:
        Config.from_toml(toml)
    assert info.value.path == "tiers[0].providers[0].limits.max_wait_s"
    good = Config.from_toml(toml.replace(f"max_wait_s = {value}", "max_wait_s = 60"))
    assert good.tiers[0].providers[0].limits.max_wait_s == 60


# -- retries ------------------------------------------------------------------------------


async def test_a_retry_waits_no_longer_than_the_ceiling_whatever_retry_after_says() -> None:
    clock = FakeClock(autojump=True)
    waits: list[float] = []
    calls = 0

    async def fn() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RateLimited("slow", provider="p", model="m", status=429, retry_after=1e12)
        return "ok"

    policy = RetryPolicy(attempts=2, base_s=0.0, max_s=1e9)
    result = await call_with_retries(
        fn,
        policy=policy,
        clock=clock,
        deadline=None,
        rng=random.Random(0),
        on_retry=lambda n, exc, wait: waits.append(wait),
    )
    assert result == "ok"
    assert waits == [MAX_WAIT_S]  # the default ceiling (LimitsConfig.max_wait_s)


# -- end to end: the fake servers send the headers ----------------------------------------


def _one_limited(url: str, kind: str = "openai") -> dict[str, Any]:
    return {
        "tiers": [tier("t", provider("a", url, "m", kind=kind, limits={"requests_per_minute": 60}))]
    }


async def test_a_429_with_retry_after_1e12_blocks_minutes_not_ages(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m", Reply(status=429, headers={"Retry-After": "1e12"}))
    clock = FakeClock()
    async with Cascade.from_dict(_one_limited(openai_server.url), clock=clock) as c:
        with pytest.raises(AllProvidersFailed):
            await c.run(messages=USER)
        limiter = c._calls.limiters["a"]
        blocked = limiter.headroom.blocked_until
        assert blocked is not None
        assert blocked <= MAX_WAIT_S
        clock.advance(MAX_WAIT_S)
        assert limiter.headroom.blocked_until is None
        openai_server.reset()
        openai_server.script("m", "fine")
        assert (await c.run(messages=USER)).text == "fine"


async def test_a_200_with_remaining_0_and_reset_99999999h_refills_within_the_ceiling(
    openai_server: FakeOpenAIServer,
) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "99999999h"}
    openai_server.script("m", Reply(text="one", headers=headers))
    clock = FakeClock()
    async with Cascade.from_dict(_one_limited(openai_server.url), clock=clock) as c:
        assert (await c.run(messages=USER)).text == "one"
        limiter = c._calls.limiters["a"]
        assert limiter.headroom.requests == pytest.approx(0)
        clock.advance(MAX_WAIT_S)
        assert limiter.headroom.requests == pytest.approx(60)


async def test_a_server_stuck_in_1970_is_measured_by_our_clock(
    anthropic_server: FakeAnthropicServer,
) -> None:
    in_a_minute = datetime.fromtimestamp(time.time(), UTC) + timedelta(seconds=60)
    headers = {
        "Date": EPOCH_DATE,
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-requests-reset": in_a_minute.isoformat(),
    }
    anthropic_server.script("m", Reply(text="one", headers=headers))
    clock = FakeClock()
    cfg = _one_limited(anthropic_server.url, kind="anthropic")
    async with Cascade.from_dict(cfg, clock=clock, environ={}) as c:
        assert (await c.run(messages=USER)).text == "one"
        limiter = c._calls.limiters["a"]
        clock.advance(61)
        assert limiter.headroom.requests == pytest.approx(60)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "raw",
    [
        "1" * 50_000,  # float() says inf: the duration pattern used to backtrack on it
        "1" * 50_000 + "x",
        "1." * 25_000,
        "1s" * 25_000,
        "9" * 8_000 + "h",
    ],
)
def test_a_long_duration_header_is_read_in_linear_time(raw: str) -> None:
    # An 8 KB digit run in x-ratelimit-reset-* took 1.9 s on every response (quadratic).
    assert duration_s(raw) in (None, MAX_WAIT_S)  # garbage, or "very long": the ceiling


def test_durations_still_read() -> None:
    assert duration_s("1h2m3.5s", max_s=86400) == pytest.approx(3723.5)
    assert duration_s("20ms") == pytest.approx(0.02)
    assert duration_s(".5s") == pytest.approx(0.5)
    assert duration_s("1.s") == pytest.approx(1.0)
