"""Hostile review of the batched read path (s14-gw): a provider that overrides ``stream``
(a subclass, a delegating wrapper) is read through its own ``stream``, never around it;
two tasks closing one Stream both return; a hostile stream cut at every byte decodes as
it does a byte at a time; an answer read a socket read at a time (joined) is the answer
read chunk by chunk, limits and errors included."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest
from aiohttp import web

from cascade import CascadeError, Chunk, Message, ProviderConfig, RequestOptions
from cascade._attempt import complete
from cascade._sse import EventTooLarge, SSEDecoder, SSEEvent
from cascade.engine import Stream
from cascade.providers import OpenAIProvider, batches_of
from cascade.testing import FakeOpenAIServer, Reply

pytestmark = pytest.mark.anyio

MSGS = (Message(role="user", content="Say hi"),)
OPTS = RequestOptions()
TEXT = "an answer in many small pieces, each its own event"


def _config(url: str) -> ProviderConfig:
    return ProviderConfig(name="p", kind="openai", base_url=url, model="m", stream=True)


class Counted(OpenAIProvider):
    """A user's subclass that looks at every chunk (metering, logging)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[Chunk] = []

    async def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]:
        async for chunk in super().stream(messages, options):
            self.seen.append(chunk)
            yield chunk


class Wrapper:
    """A wrapper that overrides ``stream`` and hands everything else to the provider it
    wraps (``__getattr__``): ``stream_batches`` is found on it, but is not its own."""

    def __init__(self, inner: OpenAIProvider) -> None:
        self.inner = inner
        self.seen: list[Chunk] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]:
        async for chunk in self.inner.stream(messages, options):
            self.seen.append(chunk)
            yield chunk


async def test_a_subclass_overriding_stream_is_read_through_it(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m", Reply(text=TEXT, chunk_chars=3))
    async with aiohttp.ClientSession() as session:
        provider = Counted(_config(openai_server.url), session=session, api_key=None)
        assert not batches_of(provider)
        done, _ = await complete(provider, MSGS, OPTS, 0.0)
    assert done.text == TEXT
    assert "".join(c.text for c in provider.seen) == TEXT


async def test_a_wrapper_overriding_stream_is_read_through_it(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m", Reply(text=TEXT, chunk_chars=3))
    async with aiohttp.ClientSession() as session:
        inner = OpenAIProvider(_config(openai_server.url), session=session, api_key=None)
        wrapper = Wrapper(inner)
        assert batches_of(inner)
        assert not batches_of(wrapper)
        done, _ = await complete(wrapper, MSGS, OPTS, 0.0)  # type: ignore[arg-type]
    assert done.text == TEXT
    assert "".join(c.text for c in wrapper.seen) == TEXT


async def test_two_tasks_closing_one_stream_both_return() -> None:
    ended = asyncio.Event()

    async def run(stream: Stream) -> None:
        try:
            await asyncio.sleep(60)
        finally:
            await asyncio.sleep(0.01)  # a cancelled run records its attempt first
            ended.set()

    stream = Stream("buffered", run)
    async with stream:
        await asyncio.sleep(0)
        closer = asyncio.create_task(stream.aclose())  # say, a watchdog of the caller's
        await asyncio.sleep(0)
        with anyio.fail_after(5):
            await stream.aclose()
        with anyio.fail_after(5):
            await closer
    assert ended.is_set()


class Batched:
    """A user's provider with a ``stream_batches`` of its own that sends an empty batch
    (a read that completed no chunk): the protocol asks for none, but it must not crash
    the engine with a ValueError from inside it."""

    name = "b"
    model = "m"

    def __init__(self) -> None:
        self.config = _config("http://127.0.0.1:9/v1")

    async def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]:
        async for batch in self.stream_batches(messages, options):
            for chunk in batch:
                yield chunk

    async def stream_batches(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[list[Chunk]]:
        yield [Chunk(text="4")]
        yield []
        yield [Chunk(text="2"), Chunk(finish_reason="stop", output_tokens=1)]

    async def aclose(self) -> None:
        return None


async def test_an_empty_batch_is_skipped() -> None:
    provider = Batched()
    assert batches_of(provider)
    done, _ = await complete(provider, MSGS, OPTS, 0.0)  # type: ignore[arg-type]
    assert done.text == "42"
    assert done.finish_reason == "stop"


KEY = "sk-test-0123456789abcdef"
_TEXT = b'{"model":"%s","choices":[{"index":0,"delta":{"content":"%s"}}]}'
_FINISH = b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
_USAGE = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'


def _data(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads)


HOSTILE = b"".join(
    [
        b"\xef\xbb\xbf: a comment first\r\n\r\n",
        _data(_TEXT % (b"m", b"a"), _TEXT % (b"m", b"\xc3\xa9")),
        b"id: 1\nretry: 5\nevent: message\ndata:" + _TEXT % (b"m", b"b") + b"\r\r",
        b'data: {"model":"m",\ndata: "choices":[{"index":0,"delta":{"content":"c"}}]}\n\n',
        b"data:\n\n\n\n",  # an empty keep-alive, blank lines
        _data(_TEXT % (b"m", b"\\u0000nul"), _TEXT % (b"m", b"\xf0\x9f\x98\x80")),
        b"event: ping\ndata: {}\n\n",
        _data(_FINISH, _USAGE, b"[DONE]", _TEXT % (b"m", b"late")),
    ]
)


def _decoded(pieces: list[bytes]) -> list[SSEEvent] | str:
    decoder = SSEDecoder(max_event_bytes=200)
    out: list[SSEEvent] = []
    try:
        for piece in pieces:
            out.extend(decoder.feed(piece))
    except EventTooLarge:
        return "too large"
    return out


def test_a_hostile_stream_cut_anywhere_decodes_as_byte_by_byte() -> None:
    # A byte at a time no read completes an event whole: the line by line path alone.
    reference = _decoded([HOSTILE[i : i + 1] for i in range(len(HOSTILE))])
    assert isinstance(reference, list)
    assert len(reference) == 12  # the comment first makes none
    for cut in range(len(HOSTILE) + 1):
        assert _decoded([HOSTILE[:cut], HOSTILE[cut:]]) == reference, cut
    for cut in range(1, len(HOSTILE) - 1):
        pieces = [HOSTILE[:cut], HOSTILE[cut : cut + 1], HOSTILE[cut + 1 :]]
        assert _decoded(pieces) == reference, cut


# A stream, and the pieces it is written in (each a read of its own, most of the time).
STREAMS = {
    "plain": [_data(*[_TEXT % (b"m", b"x")] * 20, _FINISH, _USAGE, b"[DONE]")],
    "key in model": [_data(*[_TEXT % (KEY.encode(), b"y")] * 5, _FINISH, _USAGE, b"[DONE]")],
    "refusal and logprobs": [
        _data(
            b'{"choices":[{"index":0,"delta":{"refusal":"I will not"}}]}',
            b'{"choices":[{"index":0,"delta":{"content":"p"},"logprobs":{"content":'
            b'[{"logprob":-0.5},{"logprob":-1.0}]}}]}',
            b'{"choices":[{"index":1,"delta":{"content":"other"}}]}',
            _FINISH,
            _USAGE,
            b"[DONE]",
        )
    ],
    "error after text": [_data(*[_TEXT % (b"m", b"z")] * 5), _data(b'{"error":{"message":"x"}}')],
    "malformed mid read": [_data(_TEXT % (b"m", b"q"), b'{"choices":[', _TEXT % (b"m", b"r"))],
    "past the cap": [_data(*[_TEXT % (b"m", b"\xc4\x80" * 10)] * 30)],
    "past the cap across reads": [_data(_TEXT % (b"m", b"w" * 30)) for _ in range(12)],
    "no terminator": [_data(*[_TEXT % (b"m", b"t")] * 3)],
}


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_an_answer_read_joined_is_the_answer_read_chunk_by_chunk(name: str) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for piece in STREAMS[name]:
            await response.write(piece)
            await asyncio.sleep(0.001)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    results: list[object] = []
    try:
        async with aiohttp.ClientSession() as session:
            config = ProviderConfig(
                name="p", kind="openai", base_url=url, model="m", stream=True,
                max_response_bytes=400, timeout_s=5,
            )  # fmt: skip
            provider = OpenAIProvider(config, session=session, api_key=KEY)
            for on_delta in (None, lambda text: None):
                try:
                    done, _ = await complete(provider, MSGS, OPTS, 0.0, on_delta=on_delta)
                    results.append(msgspec_tuple(done))
                except CascadeError as exc:
                    received = getattr(exc, "received_chars", None)
                    results.append((type(exc).__name__, str(exc), received))
    finally:
        await runner.cleanup()
    joined, chunk_by_chunk = results
    assert joined == chunk_by_chunk
    assert KEY not in repr(joined)


def msgspec_tuple(done: object) -> tuple[object, ...]:
    fields = ("text", "finish_reason", "input_tokens", "output_tokens", "model")
    more = ("logprobs", "refusal", "cache_read_tokens")
    return tuple(getattr(done, f) for f in fields + more)
