"""A broken stream is a typed attempt failure that fails over, never a truncated answer
reported as success: every case, in both wire formats, over loopback HTTP.

Each case streams from a primary whose answer breaks; the fallback (same tier) answers.
``MODES`` is where a ``stream()`` mode (buffered, speculative) joins ``run()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import aiohttp
import pytest

from cascade import Cascade
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import VIAS, answer, provider, tier

pytestmark = pytest.mark.anyio

FakeServer = FakeOpenAIServer | FakeAnthropicServer

ANSWER = "The primary's answer, long enough to arrive in several deltas."
FALLBACK = "the fallback's answer"
MODES = VIAS


class Case(NamedTuple):
    name: str
    reply: Reply
    error_type: str
    message: str
    """A fragment of the failed attempt's error."""
    costed: bool
    """Text had arrived before the break: the failed attempt is billed for it."""


CASES = [
    Case("cut", Reply(text=ANSWER, fault="drop"), "ProviderConnectionError", "", True),
    Case(
        "stall",
        Reply(text=ANSWER, fault="stall", chunk_delay_s=0.02),
        "ProviderTimeout",
        "idle_timeout_s",
        True,
    ),
    Case("malformed_chunk", Reply(text=ANSWER, fault="malformed"), "MalformedResponse", "", True),
    Case(
        "error_event",
        Reply(text=ANSWER, fault="error_event", status=503, error_message="engine died"),
        "ProviderStatusError",
        "engine died",
        True,
    ),
    Case(
        "json_body",
        Reply(text=ANSWER, fault="wrong_content_type"),
        "MalformedResponse",
        "expected text/event-stream, got application/json",
        False,
    ),
    Case(
        "html_body",
        Reply(text=ANSWER, fault="wrong_content_type", headers={"Content-Type": "text/html"}),
        "MalformedResponse",
        "expected text/event-stream, got text/html",
        False,
    ),
    Case("reset_before_headers", Reply(fault="reset"), "ProviderConnectionError", "", False),
    Case(
        "terminator_without_finish",
        Reply(text=ANSWER, fault="done_early"),
        "ProviderConnectionError",
        "without a finish reason",
        True,
    ),
]


@pytest.fixture(params=["openai", "anthropic"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeServer]:
    cls = FakeOpenAIServer if request.param == "openai" else FakeAnthropicServer
    async with cls() as fake:
        yield fake


def config(server: FakeServer) -> dict[str, Any]:
    kind = "openai" if isinstance(server, FakeOpenAIServer) else "anthropic"
    common = {"kind": kind, "stream": True, "idle_timeout_s": 0.3}
    return {
        "tiers": [
            tier(
                "only",
                provider("primary", server.url, "m-primary", **common),
                provider("fallback", server.url, "m-fallback", **common),
            )
        ]
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_a_broken_stream_fails_over(server: FakeServer, case: Case, mode: str) -> None:
    server.script("m-primary", case.reply)
    server.script("m-fallback", FALLBACK)
    async with Cascade.from_dict(config(server)) as c:
        result = await answer(c, mode)
    assert result.text == FALLBACK
    assert result.provider == "fallback"
    failed, answered = result.attempts
    assert failed.provider == "primary"
    assert failed.outcome == "failed"
    assert failed.error_type == case.error_type
    assert case.message in (failed.error or "")
    assert failed.completion is None  # nothing of the broken answer is kept as one
    assert (failed.cost_usd > 0) is case.costed
    assert answered.outcome == "accepted"
    assert result.cost_usd == pytest.approx(failed.cost_usd + answered.cost_usd)


@pytest.mark.parametrize("mode", MODES)
async def test_no_terminator_after_finish_and_usage_is_complete(
    server: FakeServer, mode: str
) -> None:
    server.script("m-primary", Reply(text=ANSWER, fault="no_done", output_tokens=13))
    async with Cascade.from_dict(config(server)) as c:
        result = await answer(c, mode)
    assert result.provider == "primary"
    assert result.text == ANSWER
    assert result.usage.output_tokens == 13  # the server's count, not an estimate
    assert [a.outcome for a in result.attempts] == ["accepted"]
    assert server.request_count == 1


# -- the fake servers' faults, as bytes on the wire ------------------------------------


def request_for(server: FakeServer, model: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 16,
        "stream": True,
    }
    if isinstance(server, FakeOpenAIServer):
        body["stream_options"] = {"include_usage": True}
        return server.url + "/chat/completions", body, {}
    return server.url + "/v1/messages", body, {"anthropic-version": "2023-06-01"}


async def test_no_done_leaves_out_only_the_terminator(server: FakeServer) -> None:
    server.script("m", Reply(text="hello", fault="no_done"))
    url, body, headers = request_for(server, "m")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as r,
    ):
        raw = await r.read()
    assert r.content_type == "text/event-stream"
    assert b"hello" in raw
    assert b"[DONE]" not in raw
    assert b"message_stop" not in raw
    assert b'"usage"' in raw
    assert (b'"finish_reason":"stop"' in raw) or (b'"stop_reason":"end_turn"' in raw)


async def test_wrong_content_type_answers_json(server: FakeServer) -> None:
    server.script("m", Reply(text="hello", fault="wrong_content_type"))
    url, body, headers = request_for(server, "m")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as r,
    ):
        payload = await r.json()
    assert r.status == 200
    assert "hello" in str(payload)


async def test_reset_sends_no_header(server: FakeServer) -> None:
    server.script("m", Reply(fault="reset"))
    url, body, headers = request_for(server, "m")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.post(url, json=body, headers=headers):
                pass


@pytest.mark.parametrize("fault", ["context_length", "content_filter"])
async def test_refusals_use_each_apis_body(server: FakeServer, fault: str) -> None:
    server.script("m", Reply(fault=fault))  # type: ignore[arg-type]
    url, body, headers = request_for(server, "m")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, json=body, headers=headers) as r,
    ):
        payload = await r.json()
    assert r.status == 400
    error = payload["error"]
    if isinstance(server, FakeOpenAIServer):
        assert error["code"] == (
            "context_length_exceeded" if fault == "context_length" else "content_filter"
        )
    else:
        assert payload["type"] == "error"
        assert error["type"] == "invalid_request_error"
        assert ("prompt is too long" in error["message"]) is (fault == "context_length")
