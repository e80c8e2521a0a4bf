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
from cascade._attempt import complete
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
    # A whole-body call bounds itself (post_whole); a stream is bounded by the engine's
    # complete(), which pauses the timer while a slow reader holds the stream up.
    server.script("m", Reply(fault="hang"))
    provider = make(kind_of(server), server.url, session, stream=stream, timeout_s=0.2)
    call = complete(provider, MSGS, OPTS, 0.0) if stream else collect(provider)
    with pytest.raises(ProviderTimeout, match=r"timeout_s"):
        await call


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
    assert not any(session.connector._conns.values())


def test_retry_after_forms() -> None:
    assert retry_after_s({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({}) is None
    assert retry_after_s({"retry-after": "soon"}) is None
    later = retry_after_s({"retry-after": "Wed, 21 Oct 2065 07:28:00 GMT"})
    assert later is not None and later > 0


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (500, ProviderStatusError),
        (400, ProviderStatusError),
        (429, RateLimited),
        (529, RateLimited),
    ],
)
async def test_error_event_inside_a_stream(
    server: FakeOpenAIServer | FakeAnthropicServer,
    session: aiohttp.ClientSession,
    status: int,
    error: type[ProviderStatusError],
) -> None:
    server.script("m", Reply(fault="error_event", status=status, text="partial answer " * 4,
                             error_message="upstream broke"))  # fmt: skip
    with pytest.raises(error) as info:
        await collect(make(kind_of(server), server.url, session, stream=True))
    assert info.value.status == status and "upstream broke" in str(info.value)


def test_request_options_bounds_are_input_errors() -> None:
    from cascade import InputError

    with pytest.raises(InputError) as info:
        RequestOptions(max_tokens=0)
    assert info.value.path == "max_tokens"
    with pytest.raises(InputError):
        RequestOptions(temperature=9)
    with pytest.raises(InputError):
        RequestOptions(n=0)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


# -- raw servers: responses the fake servers do not produce --------------------------


@pytest.fixture
async def raw() -> AsyncIterator[tuple[str, dict[str, object]]]:
    """An aiohttp app whose one handler the test sets: (base url, {"handler": fn})."""
    from aiohttp import web

    slot: dict[str, object] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        handler = slot["handler"]
        return await handler(request)  # type: ignore[operator,no-any-return]

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1", slot  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_null_content_is_malformed(
    raw: tuple[str, dict[str, object]], session: aiohttp.ClientSession
) -> None:
    from aiohttp import web

    url, slot = raw

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"choices": [{"index": 0, "finish_reason": "content_filter",
                                               "message": {"role": "assistant", "content": None}}]})  # fmt: skip

    slot["handler"] = handler
    with pytest.raises(MalformedResponse, match="content_filter"):
        await collect(make("openai", url, session, stream=False))


async def test_redirects_are_not_followed(
    raw: tuple[str, dict[str, object]], session: aiohttp.ClientSession
) -> None:
    from aiohttp import web

    url, slot = raw
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path.startswith("/elsewhere"):
            return web.json_response({"choices": [{"message": {"content": "stolen"}}]})
        raise web.HTTPTemporaryRedirect(location="/elsewhere")

    slot["handler"] = handler
    with pytest.raises(ProviderStatusError) as info:
        await collect(make("anthropic", url, session, stream=False))
    assert info.value.status == 307
    assert seen == ["/v1/messages"]  # the key never travelled to the redirect target


async def test_error_body_split_across_writes_is_read_whole(
    raw: tuple[str, dict[str, object]], session: aiohttp.ClientSession
) -> None:
    import anyio
    from aiohttp import web

    url, slot = raw

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=429, headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"error": {"message": ')
        await anyio.sleep(0.05)
        await resp.write(b'"slow down please"}}')
        await resp.write_eof()
        return resp

    slot["handler"] = handler
    with pytest.raises(RateLimited) as info:
        await collect(make("openai", url, session, stream=False))
    assert "slow down please" in str(info.value)


async def test_broken_http_is_malformed_and_keeps_no_key_in_the_chain(
    session: aiohttp.ClientSession,
) -> None:
    import asyncio

    async def bad_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nBad Header Without Colon\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(bad_http, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ProviderError) as info:
            await collect(make("openai", f"http://127.0.0.1:{port}/v1", session, stream=False))
    finally:
        server.close()
        await server.wait_closed()
    for exc in _chain(info.value):
        assert KEY not in repr(exc) and KEY not in str(exc)
        assert KEY not in repr(vars(exc))  # e.g. an aiohttp request_info with the headers
    assert info.value.__context__ is None or info.value.__suppress_context__


async def test_stream_drains_so_the_connection_is_reused(
    raw: tuple[str, dict[str, object]],
) -> None:
    import anyio
    from aiohttp import web

    url, slot = raw
    peers: set[int] = set()

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername")[1])
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}}]}\n\n')
        await resp.write(b'data: {"choices": [{"index": 0, "finish_reason": "stop"}]}\n\n')
        await resp.write(b"data: [DONE]\n\n")
        await anyio.sleep(0.02)  # the chunked terminator comes a moment after [DONE]
        await resp.write_eof()
        return resp

    slot["handler"] = handler
    async with aiohttp.ClientSession() as session:
        provider = make("openai", url, session, stream=True)
        for _ in range(5):
            assert "".join(c.text for c in await collect(provider)) == "hi"
    assert len(peers) == 1  # one connection, reused five times
