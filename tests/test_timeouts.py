"""Connect, first-token, idle and total timeouts of one call, over loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import cascade
from cascade import Cascade, Chunk, ConfigError, ProviderTimeout
from cascade.providers import register_provider_kind
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = "The answer is forty-two, as computed."


def one_tier(*providers: dict[str, object]) -> dict[str, object]:
    return {"tiers": [tier("only", *providers)]}


async def failed(cfg: dict[str, object]) -> ProviderTimeout:
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(cascade.AllProvidersFailed) as info:
            await c.run(messages=USER)
    cause = info.value.__cause__
    assert isinstance(cause, ProviderTimeout)
    assert info.value.attempts[-1].error_type == "ProviderTimeout"
    return cause


@pytest.mark.parametrize("stream", [True, False])
async def test_first_token_timeout_fails_over_to_a_sibling(
    openai_server: FakeOpenAIServer, stream: bool
) -> None:
    openai_server.script("slow", Reply(text=ANSWER, latency_s=5))
    openai_server.script("fast", ANSWER)
    cfg = one_tier(
        provider("a", openai_server.url, "slow", stream=stream, first_token_timeout_s=0.1),
        provider("b", openai_server.url, "fast", stream=stream),
    )
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert result.provider == "b"
    first = result.attempts[0]
    assert (first.provider, first.error_type) == ("a", "ProviderTimeout")
    assert first.error is not None and "first_token_timeout_s" in first.error


async def test_idle_timeout_cuts_a_stalled_stream_and_costs_what_arrived(
    openai_server: FakeOpenAIServer,
) -> None:
    # After its first delta the server sends only keep-alive comments: bytes arrive,
    # chunks do not, and that is what idle_timeout_s measures.
    openai_server.script("m", Reply(text=ANSWER, fault="stall", chunk_delay_s=0.02))
    cfg = one_tier(provider("a", openai_server.url, "m", stream=True, idle_timeout_s=0.15))
    error = await failed(cfg)
    assert error.phase == "idle"
    assert error.received_chars == 8  # the first delta, then silence
    assert "idle_timeout_s" in str(error)


async def test_idle_timeout_on_anthropic_stream(anthropic_server: FakeAnthropicServer) -> None:
    anthropic_server.script("claude", Reply(text=ANSWER, fault="stall"))
    cfg = one_tier(
        provider(
            "a", anthropic_server.url, "claude", kind="anthropic", stream=True, idle_timeout_s=0.1
        )
    )
    error = await failed(cfg)
    assert error.phase == "idle"


async def test_a_stream_that_keeps_flowing_is_not_cut(openai_server: FakeOpenAIServer) -> None:
    # 5 chunks 0.03 s apart: 0.12 s in all, longer than the idle limit but never idle.
    openai_server.script("m", Reply(text=ANSWER[:40], chunk_chars=8, chunk_delay_s=0.03))
    cfg = one_tier(
        provider(
            "a",
            openai_server.url,
            "m",
            stream=True,
            idle_timeout_s=0.5,
            first_token_timeout_s=1,
        )
    )
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert result.text == ANSWER[:40]


async def test_first_token_timeout_is_not_reset_by_chunks_without_text(
    openai_server: FakeOpenAIServer,
) -> None:
    # The role chunk arrives at once, then the stream stalls before any text: the
    # first-token limit still applies (a generous idle limit does not extend it).
    openai_server.script("m", Reply(text="", fault="stall"))
    cfg = one_tier(
        provider(
            "a", openai_server.url, "m", stream=True, first_token_timeout_s=0.1, idle_timeout_s=30
        )
    )
    error = await failed(cfg)
    assert error.phase == "first_token"


async def test_total_timeout(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m", Reply(fault="hang"))
    cfg = one_tier(provider("a", openai_server.url, "m", timeout_s=0.1))
    error = await failed(cfg)
    assert error.phase == "total"


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: a new connection's SYN goes unanswered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):  # fill the accept queue (its size is backlog + 1 on Linux)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        yield port
    finally:
        for s in fillers:
            s.close()
        listener.close()


async def test_connect_timeout(unanswered_port: int) -> None:
    url = f"http://127.0.0.1:{unanswered_port}/v1"
    cfg = one_tier(provider("a", url, "m", connect_timeout_s=0.2, timeout_s=5))
    error = await failed(cfg)
    assert error.phase == "connect"


@pytest.mark.parametrize("field", ["first_token_timeout_s", "idle_timeout_s"])
def test_timeouts_must_be_positive(field: str) -> None:
    cfg = one_tier(provider("a", "http://127.0.0.1:9/v1", "m", **{field: 0}))
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg)
    assert info.value.path == f"tiers[0].providers[0].{field}"


async def test_a_stream_cut_by_the_deadline_is_costed_for_what_arrived(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m", Reply(text="x" * 400, chunk_chars=8, chunk_delay_s=0.02))
    cfg = one_tier(provider("a", openai_server.url, "m", stream=True))
    cfg["on_exhausted"] = "error"
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(cascade.DeadlineExceeded) as info:
            await c.run(messages=USER, deadline_s=0.2)
    (cut,) = info.value.attempts
    assert cut.error_type == "DeadlineExceeded"
    assert cut.input_tokens > 0 and 0 < cut.output_tokens < 100  # some of the 400 chars
    assert cut.cost_usd == pytest.approx(cut.input_tokens * 1e-6 + cut.output_tokens * 2e-6)


async def test_a_deadline_before_any_text_bills_the_prompt(
    openai_server: FakeOpenAIServer,
) -> None:
    # The request was sent: providers bill its prompt, text or not (issue #12, D8).
    openai_server.script("m", Reply(text="late", latency_s=5))
    cfg = one_tier(provider("a", openai_server.url, "m", stream=True))
    cfg["on_exhausted"] = "error"
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(cascade.DeadlineExceeded) as info:
            await c.run(messages=USER, deadline_s=0.1)
    (cut,) = info.value.attempts
    assert cut.output_tokens == 0
    assert cut.input_tokens > 0
    assert cut.cost_usd == pytest.approx(cut.input_tokens * 1e-6)


class _Sleepy:
    """A plug-in provider that does not stream and never answers."""

    def __init__(self, config: Any, *, session: Any, api_key: str | None) -> None:
        self.config, self.name, self.model = config, config.name, config.model

    async def stream(self, messages: Any, options: Any) -> AsyncIterator[Chunk]:
        await asyncio.sleep(30)
        yield Chunk(text="late")

    async def aclose(self) -> None:
        pass


register_provider_kind("timeouts-sleepy", _Sleepy, replace=True)


async def test_timeout_s_bounds_a_plug_in_provider_that_does_not_stream() -> None:
    cfg = one_tier({"name": "a", "kind": "timeouts-sleepy", "model": "m", "timeout_s": 0.1})
    error = await failed(cfg)
    assert error.phase == "total"
