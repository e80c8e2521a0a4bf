"""Streams through the gateway: a stream that breaks upstream mid-answer reaches the SDK as
a complete answer from the next provider (buffered) or as an SSE error the SDK raises
(speculative; a retraction then that answer for a client that opted in to retractions),
never as a truncated success; a client that
leaves cancels the upstream call and leaves no connection in use."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from cascade.testing import FakeOpenAIServer, Reply

from .gateway import Running, serving, write_config
from .helpers import provider, tier
from .leaks import eventually, in_use, open_on

pytestmark = pytest.mark.anyio

ANSWER = "The answer is forty-two, as everyone knows."
HI = [{"role": "user", "content": "Hi"}]
BREAKS = {
    "cut": Reply(text=ANSWER, fault="drop", chunk_chars=4),
    "error_event": Reply(text=ANSWER, fault="error_event", status=503, chunk_chars=4),
    "malformed": Reply(text=ANSWER, fault="malformed", chunk_chars=4),
    "done_early": Reply(text=ANSWER, fault="done_early", chunk_chars=4),
}


def failover(url: str, mode: str) -> dict[str, Any]:
    """One tier, two streaming providers: the primary's break fails over to the fallback."""
    return {
        "tiers": [
            tier(
                "t",
                provider("primary", url, "m-primary", stream=True),
                provider("fallback", url, "m-fallback", stream=True),
            )
        ],
        "gateway": {"routes": [{"name": "cascade", "default": True, "mode": mode}]},
    }


async def read(gw: Running, **kw: Any) -> tuple[list[Any], str]:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as c:
        stream = await c.chat.completions.create(model="cascade", messages=HI, stream=True, **kw)  # type: ignore[call-overload]
        chunks = [chunk async for chunk in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    return chunks, text


@pytest.mark.parametrize("fault", sorted(BREAKS))
async def test_buffered_a_broken_stream_becomes_the_next_providers_whole_answer(
    openai_server: FakeOpenAIServer, tmp_path: Path, fault: str
) -> None:
    openai_server.script("m-primary", BREAKS[fault])
    openai_server.script("m-fallback", Reply(text="A whole answer.", chunk_chars=3))
    path = write_config(tmp_path / "c.toml", failover(openai_server.url, "buffered"))
    async with serving(path) as g:
        chunks, text = await read(g)
    assert text == "A whole answer."
    summary = (chunks[-1].model_extra or {})["cascade"]
    assert summary["provider"] == "fallback"
    assert [p["outcome"] for p in summary["path"]] == ["failed", "accepted"]


async def test_speculative_a_broken_stream_is_retracted_before_the_next_answer(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script("m-primary", BREAKS["cut"])
    openai_server.script("m-fallback", Reply(text="A whole answer.", chunk_chars=3))
    path = write_config(tmp_path / "c.toml", failover(openai_server.url, "speculative"))
    async with serving(path) as g:  # a client that handles withdrawals opts in
        chunks, _ = await read(g, stream_options={"cascade_retractions": True})
    shown = ""
    retractions = []
    for ch in chunks:  # what a client that honours cascade.retracted displays
        retracted = ((ch.model_extra or {}).get("cascade") or {}).get("retracted")
        if retracted is not None:
            retractions.append(retracted)
            assert retracted["chars"] == len(shown)
            shown = ""
        elif ch.choices:
            shown += ch.choices[0].delta.content or ""
    assert shown == "A whole answer."
    assert len(retractions) == 1
    assert retractions[0]["provider"] == "primary"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_speculative_a_failure_after_text_is_an_sse_error_the_sdk_raises(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script("m-primary", BREAKS["cut"])
    openai_server.script("m-fallback", BREAKS["error_event"])
    path = write_config(tmp_path / "c.toml", failover(openai_server.url, "speculative"))
    async with serving(path) as g:
        with pytest.raises(openai.APIError) as caught:  # past the withdrawal, to the end
            await read(g, stream_options={"cascade_retractions": True})
    assert not isinstance(caught.value, openai.APIStatusError)  # inside a 200 stream
    assert caught.value.code == "all_providers_failed"
    assert "every provider failed" in caught.value.message


async def test_speculative_without_opting_in_a_withdrawal_is_an_sse_error(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script("m-primary", BREAKS["cut"])
    openai_server.script("m-fallback", Reply(text="A whole answer."))
    path = write_config(tmp_path / "c.toml", failover(openai_server.url, "speculative"))
    async with serving(path) as g:
        with pytest.raises(openai.APIError) as caught:
            await read(g)
    assert not isinstance(caught.value, openai.APIStatusError)  # inside a 200 stream
    assert caught.value.code == "answer_withdrawn"


async def test_speculative_a_failure_before_any_text_is_not_shown(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script("m-primary", Reply(status=503))  # fails before a byte of text
    openai_server.script("m-fallback", Reply(text="A whole answer.", chunk_chars=3))
    path = write_config(tmp_path / "c.toml", failover(openai_server.url, "speculative"))
    async with serving(path) as g:
        chunks, text = await read(g)
    assert text == "A whole answer."
    cascade = [(ch.model_extra or {}).get("cascade") or {} for ch in chunks]
    assert not [c for c in cascade if "retracted" in c]


async def test_speculative_headers_name_the_route_and_the_last_chunk_says_what_happened(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A speculative stream's headers go out with its first text, before the tier that
    will answer is known: they carry the mode and the route only. What happened (tier,
    model, cost, attempts) is the ``cascade`` field of the last chunk, on both APIs.
    (The answer trickles in, so that its first text goes out before its end.)"""
    openai_server.script("m-primary", Reply(status=503))
    slow = Reply(text="A whole answer.", chunk_chars=3, chunk_delay_s=0.2)
    openai_server.script("m-fallback", slow)
    path = write_config(tmp_path / "c.toml", failover(openai_server.url, "speculative"))
    async with (
        serving(path) as g,
        openai.AsyncOpenAI(base_url=g.base_url, api_key="k", max_retries=0) as c,
        anthropic.AsyncAnthropic(base_url=g.url, api_key="k", max_retries=0) as a,
    ):
        raw = await c.chat.completions.with_raw_response.create(
            model="cascade", messages=HI, stream=True
        )  # type: ignore[call-overload]
        assert raw.headers["x-cascade-mode"] == "speculative"
        assert raw.headers["x-cascade-route"] == "cascade"
        assert "x-cascade-tier" not in raw.headers
        assert "x-cascade-model" not in raw.headers
        chunks = [chunk async for chunk in raw.parse()]
        summary = (chunks[-1].model_extra or {})["cascade"]
        assert summary["tier"] == 1
        assert summary["provider"] == "fallback"
        assert summary["model"] == "m-fallback"
        assert summary["attempts"] == 2
        assert [p["outcome"] for p in summary["path"]] == ["failed", "accepted"]

        events = await a.messages.with_raw_response.create(
            model="cascade", max_tokens=64, messages=HI, stream=True
        )
        assert events.headers["x-cascade-mode"] == "speculative"
        assert "x-cascade-tier" not in events.headers
        last_delta = [e async for e in await events.parse() if e.type == "message_delta"][-1]
        assert (last_delta.model_extra or {})["cascade"]["provider"] == "fallback"


async def test_a_stream_never_ends_as_a_success_without_its_last_chunk(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script("m-primary", BREAKS["cut"])
    openai_server.script("m-fallback", BREAKS["malformed"])
    path = write_config(tmp_path / "c.toml", failover(openai_server.url, "buffered"))
    async with serving(path) as g:
        # buffered: no text was sent, so the failure is the response's status
        with pytest.raises(openai.InternalServerError) as caught:
            await read(g)
    assert caught.value.status_code == 502


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_a_client_that_leaves_cancels_the_upstream_call(
    openai_server: FakeOpenAIServer, tmp_path: Path, mode: str
) -> None:
    slow = Reply(text="word " * 400, chunk_chars=5, chunk_delay_s=0.02)
    openai_server.script("m-primary", slow)
    path = write_config(tmp_path / "c.toml", failover(openai_server.url, mode))
    async with serving(path) as g:
        cascade = g.gateway.generation.cascades[0]
        async with openai.AsyncOpenAI(base_url=g.base_url, api_key="k", max_retries=0) as c:
            if mode == "speculative":
                stream = await c.chat.completions.create(model="cascade", messages=HI, stream=True)  # type: ignore[arg-type]
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        break  # text is flowing: leave
                await stream.close()
            else:
                # buffered: nothing is sent before acceptance; the client gives up waiting
                call = asyncio.create_task(
                    c.chat.completions.create(model="cascade", messages=HI, stream=True)  # type: ignore[arg-type]
                )
                await eventually(lambda: openai_server.active_requests == 1, "upstream call")
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
        await eventually(lambda: open_on([openai_server]) == 0, "upstream connections closed")
        await eventually(lambda: g.gateway.in_flight == 0, "the request over")
        assert in_use(cascade) == 0
        assert openai_server.disconnects >= 1
        assert openai_server.request_count == 1  # cancelled, not failed over
