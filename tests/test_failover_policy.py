"""What is retried, failed over or surfaced: the pure table, its config overrides, and the
engine following it over loopback HTTP in both wire formats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

import cascade
from cascade import (
    Cascade,
    ConfigError,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
    RequestRejected,
)
from cascade._sse import SSEEvent
from cascade.providers.openai import OpenAIProvider
from cascade.resilience import CircuitOpen, OnError, RetryPolicy, classify
from cascade.testing import FakeAnthropicServer, FakeClock, FakeOpenAIServer, Reply

from .helpers import VIAS, answer, provider, tier

pytestmark = pytest.mark.anyio

P = {"provider": "p", "model": "m"}
FakeServer = FakeOpenAIServer | FakeAnthropicServer


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ProviderTimeout("no first token", phase="first_token", **P), "failover"),
        (ProviderTimeout("connect", phase="connect", **P), "failover"),
        (ProviderTimeout("stalled", phase="idle", **P), "failover"),
        (RateLimited("slow down", retry_after=1.0, **P), "retry"),
        (RateLimited("overloaded", status=529, **P), "retry"),
        (ProviderStatusError("boom", status=500, **P), "retry"),
        (ProviderStatusError("unavailable", status=503, **P), "retry"),
        (ProviderConnectionError("reset", **P), "retry"),
        (MalformedResponse("not SSE", **P), "failover"),
        (ContextLengthExceeded("too long", status=400, **P), "failover"),
        (ContentFiltered("blocked", **P), "surface"),
        (ProviderStatusError("bad request", status=400, **P), "failover"),
        (ProviderStatusError("no key", status=401, **P), "failover"),
        (CircuitOpen(provider="p", retry_in_s=3.0), "failover"),
        (ProviderError("other", **P), "failover"),
        (ValueError("a bug"), "surface"),
    ],
)
def test_the_default_table(exc: BaseException, expected: str) -> None:
    assert classify(exc) == expected


def test_overrides_change_only_their_row() -> None:
    table = OnError(timeout="retry", content_filter="failover", status_4xx="surface")
    assert classify(ProviderTimeout("t", **P), table) == "retry"
    assert classify(ContentFiltered("blocked", **P), table) == "failover"
    assert classify(ProviderStatusError("bad", status=400, **P), table) == "surface"
    assert classify(ContextLengthExceeded("long", status=400, **P), table) == "failover"
    assert classify(ProviderStatusError("boom", status=500, **P), table) == "retry"


@pytest.mark.parametrize(
    ("on_error", "path"),
    [
        ({"timeout": "again"}, "tiers[0].providers[0].retry.on_error.timeout"),
        ({"timeouts": "retry"}, "tiers[0].providers[0].retry.on_error.timeouts"),
        ("retry", "tiers[0].providers[0].retry.on_error"),
    ],
)
def test_a_bad_override_names_its_path(on_error: Any, path: str) -> None:
    cfg = {
        "tiers": [
            tier("t", provider("a", "http://127.0.0.1:1/v1", "m", retry={"on_error": on_error}))
        ]
    }
    with pytest.raises(ConfigError) as info:
        cascade.Config.from_dict(cfg)
    assert info.value.path == path


def test_the_policy_defaults_are_the_table() -> None:
    assert RetryPolicy().on_error == OnError()


# -- the engine, over HTTP --------------------------------------------------------------


class RecordingClock(FakeClock):
    """Jumps to each sleep's end at once, and remembers how long each was."""

    def __init__(self) -> None:
        super().__init__(autojump=True)
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        await super().sleep(seconds)


@pytest.fixture(params=VIAS)
def via(request: pytest.FixtureRequest) -> str:
    """Each engine test reads its run with run() and as a stream in both modes."""
    return str(request.param)


@pytest.fixture(params=["openai", "anthropic"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeServer]:
    cls = FakeOpenAIServer if request.param == "openai" else FakeAnthropicServer
    async with cls() as fake:
        yield fake


def config(server: FakeServer, **retry: Any) -> dict[str, Any]:
    kind = "openai" if isinstance(server, FakeOpenAIServer) else "anthropic"
    common: dict[str, Any] = {"kind": kind, "stream": True, "first_token_timeout_s": 30}
    retry = {"attempts": 3, "base_s": 0.0, "max_s": 5.0, **retry}
    return {
        "tiers": [
            tier(
                "only",
                provider("primary", server.url, "m-primary", retry=retry, **common),
                provider("fallback", server.url, "m-fallback", **common),
            )
        ]
    }


def calls(server: FakeServer, model: str) -> int:
    return sum(1 for r in server.requests if r.model == model)


@pytest.mark.parametrize("reply", [Reply(fault="hang"), Reply(text="late", latency_s=5)])
async def test_a_timed_out_provider_fails_over_at_once(
    server: FakeServer, reply: Reply, via: str
) -> None:
    server.script("m-primary", reply)
    server.script("m-fallback", "from the fallback")
    # the first-token timeout runs on the clock, which jumps to it once the run is idle
    async with Cascade.from_dict(config(server), clock=FakeClock(autojump=True)) as c:
        result = await answer(c, via)
    assert result.provider == "fallback"
    assert calls(server, "m-primary") == 1  # not retried, though attempts = 3
    assert [a.error_type for a in result.attempts] == ["ProviderTimeout", None]


async def test_a_timeout_is_retried_when_the_config_says_so(server: FakeServer, via: str) -> None:
    server.script("m-primary", Reply(fault="hang"), "second try")
    cfg = config(server, attempts=2, on_error={"timeout": "retry"})
    async with Cascade.from_dict(cfg, clock=FakeClock(autojump=True)) as c:
        result = await answer(c, via)
    assert result.provider == "primary"
    assert calls(server, "m-primary") == 2


async def test_429_waits_out_retry_after_then_answers(server: FakeServer, via: str) -> None:
    server.script("m-primary", Reply(status=429, retry_after_s=2), "after the wait")
    clock = RecordingClock()
    async with Cascade.from_dict(config(server), clock=clock) as c:
        result = await answer(c, via)
    assert result.provider == "primary"
    assert result.text == "after the wait"
    assert clock.slept == [2.0]
    assert [a.error_type for a in result.attempts] == ["RateLimited", None]


async def test_429_retry_after_past_max_s_fails_over(server: FakeServer, via: str) -> None:
    server.script("m-primary", Reply(status=429, retry_after_s=60), "never asked")
    server.script("m-fallback", "from the fallback")
    clock = RecordingClock()
    async with Cascade.from_dict(config(server), clock=clock) as c:
        result = await answer(c, via)
    assert result.provider == "fallback"
    assert clock.slept == []
    assert calls(server, "m-primary") == 1


@pytest.mark.parametrize(
    "reply", [Reply(status=503), Reply(fault="reset"), Reply(text="cut short", fault="drop")]
)
async def test_5xx_and_resets_are_retried_then_failed_over(
    server: FakeServer, reply: Reply, via: str
) -> None:
    server.script("m-primary", reply)
    server.script("m-fallback", "from the fallback")
    async with Cascade.from_dict(config(server), clock=RecordingClock()) as c:
        result = await answer(c, via)
    assert result.provider == "fallback"
    assert calls(server, "m-primary") == 3
    assert [a.outcome for a in result.attempts] == ["failed"] * 3 + ["accepted"]


async def test_context_length_goes_to_the_next_provider_unretried(
    server: FakeServer, via: str
) -> None:
    server.script("m-primary", Reply(fault="context_length"))
    server.script("m-fallback", "a bigger window")
    async with Cascade.from_dict(config(server)) as c:
        result = await answer(c, via)
    assert result.provider == "fallback"
    assert calls(server, "m-primary") == 1
    assert result.attempts[0].error_type == "ContextLengthExceeded"


async def test_a_content_filter_is_surfaced_with_the_providers_reason(
    server: FakeServer, via: str
) -> None:
    server.script("m-primary", Reply(fault="content_filter"))
    server.script("m-fallback", "routed around")
    async with Cascade.from_dict(config(server)) as c:
        with pytest.raises(RequestRejected) as info:
            await answer(c, via)
    err = info.value
    assert isinstance(err.error, ContentFiltered)
    assert isinstance(err.__cause__, ContentFiltered)
    assert "content" in err.reason
    assert "policy" in err.reason
    assert err.reason in str(err)
    assert [a.error_type for a in err.attempts] == ["ContentFiltered"]
    assert calls(server, "m-primary") == 1
    assert calls(server, "m-fallback") == 0


async def test_a_content_filter_fails_over_when_the_config_says_so(
    server: FakeServer, via: str
) -> None:
    server.script("m-primary", Reply(fault="content_filter"))
    server.script("m-fallback", "routed around")
    async with Cascade.from_dict(config(server, on_error={"content_filter": "failover"})) as c:
        result = await answer(c, via)
    assert result.provider == "fallback"


@pytest.mark.parametrize(
    ("message", "error_type"),
    [
        ("prompt is too long: 208310 tokens > 200000 maximum", "ContextLengthExceeded"),
        ("This model's maximum context length is 8192 tokens.", "ContextLengthExceeded"),
        ("Output blocked by content filtering policy", "ContentFiltered"),
        ("some other bad request", "ProviderStatusError"),
    ],
)
async def test_a_400_inside_a_200_stream_is_classified_too(
    server: FakeServer, message: str, error_type: str, via: str
) -> None:
    server.script(
        "m-primary", Reply(text="partial", fault="error_event", status=400, error_message=message)
    )
    server.script("m-fallback", "from the fallback")
    cfg = config(server, on_error={"content_filter": "failover"})
    async with Cascade.from_dict(cfg) as c:
        result = await answer(c, via)
    assert result.provider == "fallback"
    assert result.attempts[0].error_type == error_type
    assert calls(server, "m-primary") == 1


async def test_azure_content_filter_in_a_stream_chunk_is_a_content_filter() -> None:
    # Azure reports it as an error chunk whose code is a string ("content_filter").
    data = b'{"error": {"message": "filtered by policy", "code": "content_filter"}}'
    cfg = cascade.Config.from_dict(
        {"tiers": [tier("t", provider("a", "http://127.0.0.1:1/v1", "m", stream=True))]}
    )
    async with aiohttp.ClientSession() as session:
        p = OpenAIProvider(cfg.tiers[0].providers[0], session=session, api_key=None)
        with pytest.raises(ContentFiltered) as info:
            p._event(SSEEvent("message", data), {})
    assert info.value.status == 400
    assert info.value.reason == "filtered by policy"


async def test_a_content_filter_in_a_hedged_tier_stops_the_race(
    server: FakeServer, via: str
) -> None:
    server.script("m-primary", Reply(text="slow", latency_s=30))
    server.script("m-fallback", Reply(fault="content_filter"))
    cfg = config(server)
    cfg["tiers"][0]["hedge"] = {"after_s": 0.05}
    cfg["tiers"][0]["providers"][0]["first_token_timeout_s"] = 30
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(RequestRejected) as info:
            await answer(c, via)
    assert isinstance(info.value.error, ContentFiltered)
    assert info.value.error.provider == "fallback"
    assert [a.error_type for a in info.value.attempts] == ["ContentFiltered"]
    with anyio.fail_after(5):  # the slow call was cancelled with the race: its request ends
        while server.active_requests:
            await anyio.sleep(0.01)
