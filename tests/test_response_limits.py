"""Hostile bodies over loopback: oversized, endless, compressed, nested too deep.

Each is read only up to ``max_response_bytes`` (decoded), fails with a typed error, and
fails over to a provider that answers. Bounds are asserted on the bytes read, not on time.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest

from cascade import (
    Cascade,
    Chunk,
    ConfigError,
    MalformedResponse,
    Message,
    ProviderConfig,
    ProviderStatusError,
    RequestOptions,
    ResponseTooLarge,
)
from cascade.providers import AnthropicProvider, OpenAIProvider
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

MSGS = (Message(role="user", content="Say hi"),)
LIMIT = 256 * 1024
BIG = 64 * 1024 * 1024
ONE_READ = 1024 * 1024
"""More than any one read from aiohttp's flow-controlled buffer (a few hundred KiB)."""
DEFAULT_LIMIT = 8 * 1024 * 1024


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(params=["openai", "anthropic"])
async def server(
    request: pytest.FixtureRequest,
) -> AsyncIterator[FakeOpenAIServer | FakeAnthropicServer]:
    cls = FakeOpenAIServer if request.param == "openai" else FakeAnthropicServer
    async with cls() as s:
        yield s


def make(
    server: FakeOpenAIServer | FakeAnthropicServer,
    session: aiohttp.ClientSession,
    *,
    stream: bool,
    limit: int = LIMIT,
) -> OpenAIProvider | AnthropicProvider:
    openai = isinstance(server, FakeOpenAIServer)
    config = ProviderConfig(
        name="p",
        kind="openai" if openai else "anthropic",
        base_url=server.url,
        model="m",
        stream=stream,
        timeout_s=10,
        max_response_bytes=limit,
    )
    cls = OpenAIProvider if openai else AnthropicProvider
    return cls(config, session=session, api_key="sk-test")


async def collect(p: OpenAIProvider | AnthropicProvider) -> list[Chunk]:
    return [chunk async for chunk in p.stream(MSGS, RequestOptions())]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["huge", "gzip_bomb", "endless"])
async def test_an_oversized_body_stops_at_the_cap(
    server: FakeOpenAIServer | FakeAnthropicServer,
    session: aiohttp.ClientSession,
    fault: str,
    stream: bool,
) -> None:
    # 64 MiB of body (a gzip bomb: 64 KiB on the wire), or no end at all; a cap of 256 KiB.
    server.script("m", Reply(text="hi", fault=fault, fault_bytes=BIG))  # type: ignore[arg-type]
    with pytest.raises(ResponseTooLarge) as info:
        await collect(make(server, session, stream=stream))
    error = info.value
    assert isinstance(error, MalformedResponse)  # fails over, and counts, as one
    assert error.limit == LIMIT
    # decoded bytes are counted (a bomb's wire bytes stay under the cap), and reading
    # stopped within one read of the cap
    assert LIMIT < error.received <= LIMIT + ONE_READ
    assert f"max_response_bytes ({LIMIT})" in str(error)
    # the half-read connection was closed, not put back in the pool
    assert session.connector is not None
    assert not session.connector._acquired
    assert not any(session.connector._conns.values())


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("fault", ["huge", "gzip_bomb"])
async def test_a_body_under_the_cap_is_read_compressed_or_not(
    server: FakeOpenAIServer | FakeAnthropicServer,
    session: aiohttp.ClientSession,
    fault: str,
    stream: bool,
) -> None:
    server.script("m", Reply(text="hi", fault=fault, fault_bytes=100_000))  # type: ignore[arg-type]
    chunks = await collect(make(server, session, stream=stream, limit=200_000))
    assert "".join(c.text for c in chunks) == " " * 100_000


async def test_the_gzip_bomb_is_small_on_the_wire(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m", Reply(text="hi", fault="gzip_bomb", fault_bytes=16 << 20))
    body = {"model": "m", "messages": USER}
    async with (
        aiohttp.ClientSession(auto_decompress=False) as raw,
        raw.post(openai_server.url + "/chat/completions", json=body) as resp,
    ):
        assert resp.headers["Content-Encoding"] == "gzip"
        wire = await resp.content.read()
    assert len(wire) < 64 * 1024
    decoded = msgspec.json.decode(zlib.decompress(wire, 31))
    assert decoded["choices"][0]["message"]["content"] == " " * (16 << 20)


async def test_an_error_body_keeps_its_own_cap(
    server: FakeOpenAIServer | FakeAnthropicServer, session: aiohttp.ClientSession
) -> None:
    # A 5 KB error body with max_response_bytes = 100: still the status error, whole.
    server.script("m", Reply(status=503, error_message="e" * 5000))
    with pytest.raises(ProviderStatusError) as info:
        await collect(make(server, session, stream=False, limit=100))
    assert info.value.status == 503
    assert "e" * 5000 in str(info.value)


@pytest.mark.parametrize("stream", [False, True])
async def test_json_nested_too_deep_is_malformed(
    server: FakeOpenAIServer | FakeAnthropicServer, session: aiohttp.ClientSession, stream: bool
) -> None:
    server.script("m", Reply(text="hi", fault="deep_json"))
    with pytest.raises(MalformedResponse) as info:
        await collect(make(server, session, stream=stream))
    assert type(info.value) is MalformedResponse
    assert "nested too deep" in str(info.value)


async def test_an_error_body_nested_too_deep_keeps_its_status(
    server: FakeOpenAIServer | FakeAnthropicServer, session: aiohttp.ClientSession
) -> None:
    server.script("m", Reply(status=503, fault="deep_json"))
    with pytest.raises(ProviderStatusError) as info:
        await collect(make(server, session, stream=False))
    assert info.value.status == 503


@pytest.mark.parametrize("stream", [False, True])
async def test_a_too_large_answer_fails_over_to_a_sibling(
    openai_server: FakeOpenAIServer, stream: bool
) -> None:
    openai_server.script("bomb", Reply(text="x", fault="gzip_bomb"))  # 1 GiB of spaces
    openai_server.script("good", "42")
    cfg = {
        "tiers": [
            tier(
                "t",
                provider("a", openai_server.url, "bomb", stream=stream, max_response_bytes=LIMIT),
                provider("b", openai_server.url, "good", stream=stream),
            )
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert (result.provider, result.text) == ("b", "42")
    first = result.attempts[0]
    assert (first.provider, first.error_type) == ("a", "ResponseTooLarge")


async def test_an_endless_stream_fails_over_to_the_next_tier_at_the_default_cap(
    anthropic_server: FakeAnthropicServer, openai_server: FakeOpenAIServer
) -> None:
    anthropic_server.script("endless", Reply(text="more text ", fault="endless"))
    openai_server.script("good", "42")
    cfg = {
        "tiers": [
            tier(
                "one", provider("a", anthropic_server.url, "endless", kind="anthropic", stream=True)
            ),
            tier("two", provider("b", openai_server.url, "good", stream=True)),
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert (result.provider, result.text) == ("b", "42")
    first = result.attempts[0]
    assert first.error_type == "ResponseTooLarge"
    assert first.error is not None
    assert f"max_response_bytes ({DEFAULT_LIMIT})" in first.error


async def test_deep_json_fails_over_as_malformed(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("deep", Reply(fault="deep_json"))
    openai_server.script("good", "42")
    cfg = {
        "tiers": [
            tier(
                "t",
                provider("a", openai_server.url, "deep"),
                provider("b", openai_server.url, "good"),
            )
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert result.provider == "b"
    assert result.attempts[0].error_type == "MalformedResponse"


def test_max_response_bytes_default_and_bounds() -> None:
    assert ProviderConfig(name="p", kind="openai", model="m").max_response_bytes == DEFAULT_LIMIT
    cfg = {"tiers": [tier("t", provider("a", "http://127.0.0.1:1/v1", "m", max_response_bytes=0))]}
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg)
    assert info.value.path == "tiers[0].providers[0].max_response_bytes"


async def test_a_small_plain_body_over_a_small_cap_is_too_large(
    openai_server: FakeOpenAIServer,
) -> None:
    # A plain JSON body with a Content-Length (one read() on the fast path): a cap below
    # its size still fails it.
    openai_server.script("big", "y" * 5000)
    openai_server.script("good", "42")
    cfg = {
        "tiers": [
            tier(
                "t",
                provider("a", openai_server.url, "big", max_response_bytes=1000),
                provider("b", openai_server.url, "good"),
            )
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert (result.provider, result.text) == ("b", "42")
    assert result.attempts[0].error_type == "ResponseTooLarge"
