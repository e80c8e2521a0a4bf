"""Hostile review of the batched read path (s14-gw): a provider that overrides ``stream``
(a subclass, a delegating wrapper) is read through its own ``stream``, never around it;
two tasks closing one Stream both return."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import anyio
import pytest

from cascade import Chunk, Message, ProviderConfig, RequestOptions
from cascade._attempt import complete
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
