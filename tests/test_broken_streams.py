"""A broken stream is a typed attempt failure that fails over, never a truncated answer
reported as success: every case, in both wire formats, over loopback HTTP.

Each case streams from a primary whose answer breaks; the fallback (same tier) answers.
``MODES`` is where a ``stream()`` mode (buffered, speculative) joins ``run()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import pytest

from cascade import Cascade, Result
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

FakeServer = FakeOpenAIServer | FakeAnthropicServer

ANSWER = "The primary's answer, long enough to arrive in several deltas."
FALLBACK = "the fallback's answer"
MODES = ["run"]


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


async def answer(c: Cascade, mode: str) -> Result:
    assert mode == "run"
    return await c.run(messages=USER)


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
