"""Breakers and retries inside the engine, over loopback HTTP, on a fake clock."""

from __future__ import annotations

import asyncio

import pytest

import cascade
from cascade import Cascade
from cascade.testing import FakeClock, FakeOpenAIServer, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier

pytestmark = pytest.mark.anyio


def two_providers(url: str, **first: object) -> dict[str, object]:
    first.setdefault("breaker", {"fail_max": 2, "reset_timeout_s": 30})
    return {
        "tiers": [
            tier(
                "small",
                provider("a", url, "ma", **first),
                provider("b", url, "mb"),
                validators=[JSON_SCHEMA],
            ),
        ]
    }


async def test_open_breaker_fails_over_at_once_and_recovers_through_one_probe(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock()
    changes: list[tuple[str, str, str]] = []
    openai_server.script("ma", Reply(status=503))
    openai_server.script("mb", '{"answer": 1}')
    cfg = two_providers(openai_server.url)
    async with Cascade.from_dict(
        cfg, clock=clock, breaker_listeners=[lambda n, o, s: changes.append((n, o, s))]
    ) as c:
        for _ in range(2):  # two outages open a's breaker (fail_max = 2)
            result = await c.run(messages=USER)
            assert result.provider == "b"
        assert c.breakers["a"].state == "open"
        assert "open" in repr(c.breakers["a"])
        calls = openai_server.request_count
        result = await c.run(messages=USER)
        first = result.attempts[0]
        assert (first.provider, first.error_type) == ("a", "CircuitOpen")
        assert openai_server.request_count == calls + 1  # a was not called at all
        # half-open after the reset timeout: one probe, which now succeeds
        openai_server.reset()
        openai_server.script("ma", '{"answer": 2}')
        clock.advance(30)
        result = await c.run(messages=USER)
        assert result.provider == "a" and c.breakers["a"].state == "closed"
    assert changes == [
        ("a", "closed", "open"),
        ("a", "open", "half_open"),
        ("a", "half_open", "closed"),
    ]


async def test_rejections_and_rate_limits_do_not_open_the_breaker(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("ma", "not json", Reply(status=429), "not json", Reply(status=429))
    openai_server.script("mb", '{"answer": 1}')
    async with Cascade.from_dict(two_providers(openai_server.url), clock=FakeClock()) as c:
        for _ in range(4):
            await c.run(messages=USER)
        assert c.breakers["a"].state == "closed"


async def test_retries_are_recorded_and_never_sleep_for_real(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock(autojump=True)
    openai_server.script("ma", Reply(status=503), Reply(status=500), '{"answer": 3}')
    cfg = two_providers(
        openai_server.url, retry={"attempts": 3, "base_s": 1, "max_s": 60}, breaker={}
    )
    async with Cascade.from_dict(cfg, clock=clock) as c:
        result = await c.run(messages=USER)
    assert result.provider == "a" and result.parsed == {"answer": 3}
    assert [(a.provider, a.outcome) for a in result.attempts] == [
        ("a", "failed"),
        ("a", "failed"),
        ("a", "accepted"),
    ]
    assert 0 <= clock.monotonic() <= 1 + 2  # full jitter: at most base * 2**0 + base * 2**1


async def test_retries_stop_at_the_deadline(openai_server: FakeOpenAIServer) -> None:
    clock = FakeClock(autojump=True)
    openai_server.script("ma", Reply(status=503))
    openai_server.script("mb", '{"answer": 1}')
    cfg = two_providers(openai_server.url, retry={"attempts": 5, "base_s": 100, "max_s": 100})
    async with Cascade.from_dict(cfg, clock=clock) as c:
        # a backoff of up to 100 s cannot fit in a 5 s deadline on the fake clock, unless
        # the jitter draws below 5 s: either way the deadline is never passed
        result = await c.run(messages=USER, deadline_s=5)
    assert result.provider == "b"
    assert clock.monotonic() <= 5


def test_breaker_config_errors_name_the_path() -> None:
    cfg = two_providers("http://127.0.0.1:9/v1")
    cfg["tiers"][0]["providers"][0]["breaker"] = {"fail_max": 0}  # type: ignore[index]
    with pytest.raises(cascade.ConfigError) as info:
        Cascade.from_dict(cfg)
    assert info.value.path == "tiers[0].providers[0].breaker.fail_max"


# -- rate limits -------------------------------------------------------------------------


def limited(url: str, limits: dict[str, object], *, sibling: bool = True) -> dict[str, object]:
    providers = [provider("a", url, "ma", limits=limits)]
    if sibling:
        providers.append(provider("b", url, "mb"))
    return {"tiers": [tier("small", *providers, validators=[JSON_SCHEMA])]}


async def test_a_busy_provider_is_passed_over_for_a_sibling(
    openai_server: FakeOpenAIServer,
) -> None:
    import anyio

    openai_server.script("ma", Reply(text='{"answer": 1}', latency_s=0.2))
    openai_server.script("mb", '{"answer": 2}')
    results: list[cascade.Result] = []
    async with Cascade.from_dict(limited(openai_server.url, {"max_concurrency": 1})) as c:

        async def one() -> None:
            results.append(await c.run(messages=USER))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one)
            await anyio.sleep(0.05)  # the first call holds a's only slot
            tg.start_soon(one)
    assert sorted(r.provider for r in results) == ["a", "b"]
    assert sum(r.model == "ma" for r in openai_server.requests) == 1


async def test_with_no_headroom_anywhere_a_request_waits_its_turn(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock(autojump=True)
    openai_server.script("ma", '{"answer": 1}')
    cfg = limited(openai_server.url, {"requests_per_minute": 1, "burst_s": 0}, sibling=False)
    async with Cascade.from_dict(cfg, clock=clock) as c:
        first = await c.run(messages=USER)
        second = await c.run(messages=USER)  # waits a minute of fake time for its turn
    assert first.validated and second.validated
    assert clock.monotonic() >= 59


async def test_waiting_never_passes_the_deadline(openai_server: FakeOpenAIServer) -> None:
    clock = FakeClock(autojump=True)
    openai_server.script("ma", '{"answer": 1}')
    cfg = limited(openai_server.url, {"requests_per_minute": 1, "burst_s": 0}, sibling=False)
    async with Cascade.from_dict(cfg, clock=clock) as c:
        await c.run(messages=USER)
        with pytest.raises(cascade.AllProvidersFailed) as info:
            await c.run(messages=USER, deadline_s=5)
    (attempt,) = info.value.attempts
    assert attempt.error_type == "LimiterTimeout"
    assert clock.monotonic() < 5  # it did not sleep towards a turn it could not have


async def test_rate_limit_headers_steer_to_the_sibling(openai_server: FakeOpenAIServer) -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "30s"}
    openai_server.script("ma", Reply(text='{"answer": 1}', headers=headers))
    openai_server.script("mb", '{"answer": 2}')
    cfg = limited(openai_server.url, {"requests_per_minute": 600})
    async with Cascade.from_dict(cfg, clock=FakeClock()) as c:
        assert (await c.run(messages=USER)).provider == "a"
        # a said it has no requests left for 30 s: the next request goes to b
        assert (await c.run(messages=USER)).provider == "b"


@pytest.mark.parametrize("on_outage", ["next_tier", "error"])
async def test_an_outage_of_a_whole_tier_escalates_only_when_configured(
    openai_server: FakeOpenAIServer, on_outage: str
) -> None:
    openai_server.script("ma", Reply(status=503))
    openai_server.script("mb", Reply(status=503))
    openai_server.script("big", '{"answer": 3}')
    cfg = two_providers(openai_server.url)
    cfg["tiers"].append(tier("large", provider("c", openai_server.url, "big")))  # type: ignore[attr-defined]
    cfg["on_outage"] = on_outage
    async with Cascade.from_dict(cfg) as c:
        if on_outage == "next_tier":
            result = await c.run(messages=USER)
            assert (result.tier_name, result.provider) == ("large", "c")
        else:
            with pytest.raises(cascade.AllProvidersFailed) as info:
                await c.run(messages=USER)
            assert [a.provider for a in info.value.attempts] == ["a", "b"]
            assert not any(r.model == "big" for r in openai_server.requests)


async def test_closing_a_cascade_with_runs_in_flight_counts_no_breaker_failure() -> None:
    # A rolling deploy closes a Cascade while runs wait on a healthy provider: the runs fail
    # as their connections close, which is no outage of the provider.
    async with FakeOpenAIServer() as server:
        server.default = Reply(text="late", latency_s=30)
        cfg = {"tiers": [tier("t", provider("p", server.url, "m", breaker={"fail_max": 3}))]}
        cascade = Cascade.from_dict(cfg)
        await cascade.open()
        runs = [asyncio.ensure_future(cascade.run(messages=USER)) for _ in range(10)]
        for _ in range(500):
            if server.active_requests == 10:
                break
            await asyncio.sleep(0.01)
        assert server.active_requests == 10
        await cascade.aclose()
        outcomes = await asyncio.gather(*runs, return_exceptions=True)
    assert all(isinstance(o, BaseException) for o in outcomes)
    breaker = cascade.breakers["p"]
    assert breaker.state == "closed"
    assert breaker.fail_counter == 0
