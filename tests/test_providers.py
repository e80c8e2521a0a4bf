"""Providers over real loopback HTTP: both wire formats, JSON and SSE, every error mapped."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from cascade import (
    Chunk,
    MalformedResponse,
    Message,
    ProviderConfig,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
    RequestOptions,
)
from cascade.providers import AnthropicProvider, OpenAIProvider
from cascade.providers._http import retry_after_s
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

pytestmark = pytest.mark.anyio

MSGS = (Message(role="system", content="Be brief."), Message(role="user", content="Say hi"))
OPTS = RequestOptions()
KEY = "sk-canary-0123456789abcdef"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def make(
    kind: str, url: str, session: aiohttp.ClientSession, *, stream: bool, timeout_s: float = 5
) -> OpenAIProvider | AnthropicProvider:
    config = ProviderConfig(
        name=f"{kind}-p", kind=kind, base_url=url, model="m", stream=stream, timeout_s=timeout_s
    )
    cls = OpenAIProvider if kind == "openai" else AnthropicProvider
    return cls(config, session=session, api_key=KEY)


async def collect(provider: OpenAIProvider | AnthropicProvider) -> list[Chunk]:
    return [chunk async for chunk in provider.stream(MSGS, OPTS)]


@pytest.fixture(params=["openai", "anthropic"])
async def server(
    request: pytest.FixtureRequest,
) -> AsyncIterator[FakeOpenAIServer | FakeAnthropicServer]:
    cls = FakeOpenAIServer if request.param == "openai" else FakeAnthropicServer
    async with cls() as s:
        yield s


def kind_of(server: FakeOpenAIServer | FakeAnthropicServer) -> str:
    return "openai" if isinstance(server, FakeOpenAIServer) else "anthropic"


@pytest.mark.parametrize("stream", [False, True])
async def test_answer_usage_and_finish(
    server: FakeOpenAIServer | FakeAnthropicServer, session: aiohttp.ClientSession, stream: bool
) -> None:
    text = "Hello there, this is a longer answer split into pieces."
    server.script("m", Reply(text=text, chunk_chars=5, input_tokens=11, output_tokens=13,
                             finish_reason="length"))  # fmt: skip
    chunks = await collect(make(kind_of(server), server.url, session, stream=stream))
    assert "".join(c.text for c in chunks) == text
    if stream:
        assert len([c for c in chunks if c.text]) == -(-len(text) // 5)
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["length"]
    assert [c.input_tokens for c in chunks if c.input_tokens is not None] == [11]
    assert [c.output_tokens for c in chunks if c.output_tokens is not None] == [13]
    assert server.requests[0].stream is stream


async def test_openai_request_shape(
    openai_server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    openai_server.script("m", "hi")
    await collect(make("openai", openai_server.url, session, stream=True))
    req = openai_server.requests[0]
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hi"},
    ]
    assert req.body["stream_options"] == {"include_usage": True}


async def test_anthropic_request_shape(
    anthropic_server: FakeAnthropicServer, session: aiohttp.ClientSession
) -> None:
    anthropic_server.script("m", "hi")
    await collect(make("anthropic", anthropic_server.url, session, stream=False))
    req = anthropic_server.requests[0]
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == "2023-06-01"
    assert req.body["system"] == "Be brief."
    assert req.body["messages"] == [{"role": "user", "content": "Say hi"}]
    assert req.body["max_tokens"] == 1024


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("reply", "error", "status"),
    [
        (Reply(status=500), ProviderStatusError, 500),
        (Reply(status=503), ProviderStatusError, 503),
        (Reply(status=400, error_message="bad request"), ProviderStatusError, 400),
        (Reply(status=401, error_message=f"Incorrect API key provided: {KEY}"), ProviderStatusError, 401),
        (Reply(status=429, retry_after_s=7), RateLimited, 429),
        (Reply(fault="malformed", text="x" * 40), MalformedResponse, None),
        (Reply(fault="drop", text="y" * 400), ProviderConnectionError, None),
    ],
)  # fmt: skip
async def test_errors_are_translated(
    server: FakeOpenAIServer | FakeAnthropicServer,
    session: aiohttp.ClientSession,
    stream: bool,
    reply: Reply,
    error: type[ProviderError],
    status: int | None,
) -> None:
    server.script("m", reply)
    provider = make(kind_of(server), server.url, session, stream=stream)
    with pytest.raises(error) as info:
        await collect(provider)
    exc = info.value
    assert type(exc) is error
    assert exc.provider == provider.name and exc.model == "m"
    assert KEY not in str(exc) and KEY not in repr(exc) and KEY not in repr(provider)
    if status is not None:
        assert isinstance(exc, ProviderStatusError)
        assert exc.status == status
        assert KEY not in exc.body
    if isinstance(exc, RateLimited):
        assert exc.retry_after == 7


async def test_anthropic_overloaded_is_rate_limited(
    anthropic_server: FakeAnthropicServer, session: aiohttp.ClientSession
) -> None:
    anthropic_server.script("m", Reply(status=529, error_message="Overloaded"))
    with pytest.raises(RateLimited) as info:
        await collect(make("anthropic", anthropic_server.url, session, stream=True))
    assert info.value.status == 529 and "Overloaded" in str(info.value)


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_times_out(
    server: FakeOpenAIServer | FakeAnthropicServer, session: aiohttp.ClientSession, stream: bool
) -> None:
    server.script("m", Reply(fault="hang"))
    with pytest.raises(ProviderTimeout):
        await collect(make(kind_of(server), server.url, session, stream=stream, timeout_s=0.2))


async def test_connection_refused(session: aiohttp.ClientSession) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ProviderConnectionError):
        await collect(make("openai", f"http://127.0.0.1:{port}/v1", session, stream=False))


async def test_stream_without_terminator_is_a_connection_error(
    openai_server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    openai_server.script("m", Reply(fault="drop", text="z" * 200, chunk_chars=10))
    with pytest.raises(ProviderConnectionError):
        await collect(make("openai", openai_server.url, session, stream=True))


async def test_closing_the_stream_early_releases_the_connection(
    openai_server: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    openai_server.script("m", Reply(text="a" * 1000, chunk_chars=1, chunk_delay_s=0.001))
    provider = make("openai", openai_server.url, session, stream=True)
    stream = provider.stream(MSGS, OPTS)
    first = await anext(stream)  # type: ignore[call-overload]
    assert first.text == "a"
    await stream.aclose()  # type: ignore[attr-defined]
    assert session.connector is not None
    # the half-read response was closed, not returned to the pool as reusable
    assert len(session.connector._acquired) == 0


def test_retry_after_forms() -> None:
    assert retry_after_s({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({}) is None
    assert retry_after_s({"retry-after": "soon"}) is None
    later = retry_after_s({"retry-after": "Wed, 21 Oct 2065 07:28:00 GMT"})
    assert later is not None and later > 0
