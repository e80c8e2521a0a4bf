"""``idle_timeout_s`` measures answer text: events without text do not keep a call alive."""

from __future__ import annotations

import pytest

import cascade
from cascade import Cascade, ProviderTimeout
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = "The answer is forty-two, as computed."


@pytest.mark.parametrize("text", [ANSWER, ""])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_usage_and_finish_events_do_not_reset_the_idle_timer(
    openai_server: FakeOpenAIServer, anthropic_server: FakeAnthropicServer, kind: str, text: str
) -> None:
    # After the first delta (or none), the server sends only usage and finish events, every
    # 20 ms and forever. They are chunks, but no progress: idle_timeout_s ends the call
    # long before timeout_s would.
    server = openai_server if kind == "openai" else anthropic_server
    server.script("m", Reply(text=text, fault="trickle", chunk_delay_s=0.02))
    p = provider("a", server.url, "m", kind=kind, stream=True, idle_timeout_s=0.2, timeout_s=5)
    async with Cascade.from_dict({"tiers": [tier("only", p)]}) as c:
        with pytest.raises(cascade.AllProvidersFailed) as info:
            await c.run(messages=USER)
    error = info.value.__cause__
    assert isinstance(error, ProviderTimeout)
    assert error.phase == "idle"
    assert error.received_chars == (8 if text else 0)
