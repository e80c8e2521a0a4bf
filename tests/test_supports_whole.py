"""A provider declaring SupportsWhole answers a call that does not stream with one awaited
call; the engine keeps no timer of its own for it, and never iterates its stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

import pytest

import cascade
from cascade import Chunk, Message, ProviderConfig, RequestOptions, SupportsWhole

from .helpers import USER, VIAS, answer

pytestmark = pytest.mark.anyio


class _Whole:
    """Answers whole; counts which entry point the engine used."""

    calls: ClassVar[list[str]] = []

    def __init__(self, config: ProviderConfig, **_: Any) -> None:
        self.config = config
        self.name = config.name
        self.model = config.model

    async def complete_whole(self, messages: tuple[Message, ...], options: RequestOptions) -> Chunk:
        self.calls.append("whole")
        return Chunk(text="forty-two", finish_reason="stop", input_tokens=7, output_tokens=3)

    async def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]:
        self.calls.append("stream")
        yield Chunk(text="from the stream", input_tokens=7, output_tokens=3)

    async def aclose(self) -> None:
        pass


cascade.register_provider_kind("whole-test", _Whole, replace=True)


def config(**extra: Any) -> dict[str, Any]:
    p = {"name": "w", "kind": "whole-test", "model": "m", "output_cost_per_mtok": 1.0, **extra}
    return {"tiers": [{"name": "t", "providers": [p]}]}


def test_the_protocol_is_declared() -> None:
    assert isinstance(_Whole.__new__(_Whole), SupportsWhole)


@pytest.mark.parametrize("via", VIAS)
async def test_a_call_that_does_not_stream_is_one_awaited_call(via: str) -> None:
    _Whole.calls = []
    async with cascade.Cascade.from_dict(config()) as c:
        result = await answer(c, via)
    assert result.text == "forty-two"
    assert result.usage.output_tokens == 3
    assert _Whole.calls == ["whole"]


@pytest.mark.parametrize(
    "extra", [{"stream": True}, {"first_token_timeout_s": 5}, {"idle_timeout_s": 5}]
)
async def test_a_stream_or_a_chunk_timer_uses_the_stream(extra: dict[str, Any]) -> None:
    # first-token and idle timeouts are enforced on chunks: those calls are iterated.
    _Whole.calls = []
    async with cascade.Cascade.from_dict(config(**extra)) as c:
        result = await c.run(messages=USER)
    assert result.text == "from the stream"
    assert _Whole.calls == ["stream"]
