"""A provider that reports zero tokens for a prompt or an answer that has text is not
believed: no model reads or writes text for free. Its counts are estimated (about four
characters a token), so the call costs something: a gateway key's daily budget moves,
and a cost-aware router is not misled into calling a "free" model for everything.

An Anthropic prompt read whole from its cache reports 0 ``input_tokens`` beside its
``cache_read_input_tokens``: that zero is true, and kept.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cascade import Cascade
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .gateway import serving, write_config
from .helpers import provider, tier

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "Say something about the weather, please. " * 10}]
TEXT = "It is sunny, with a light breeze from the west. " * 4  # 192 characters: ~48 tokens
OPENAI_ZERO = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
ANTHROPIC_ZERO = {"input_tokens": 0, "output_tokens": 0}


@pytest.mark.parametrize("stream", [False, True])
async def test_openai_zero_usage_is_estimated(
    openai_server: FakeOpenAIServer, stream: bool
) -> None:
    openai_server.script("m1", Reply(text=TEXT, usage=OPENAI_ZERO))
    cfg = {"tiers": [tier("a", provider("a", openai_server.url, "m1", stream=stream))]}
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert result.text == TEXT
    (attempt,) = result.attempts
    assert attempt.input_tokens >= 100  # 420 characters of prompt
    assert attempt.output_tokens == len(TEXT) // 4
    assert result.cost_usd > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropic_zero_usage_is_estimated(
    anthropic_server: FakeAnthropicServer, stream: bool
) -> None:
    anthropic_server.script(
        "claude", Reply(text=TEXT, usage=ANTHROPIC_ZERO, start_usage=ANTHROPIC_ZERO)
    )
    cfg = {
        "tiers": [
            tier(
                "a", provider("a", anthropic_server.url, "claude", kind="anthropic", stream=stream)
            )
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    (attempt,) = result.attempts
    assert attempt.input_tokens >= 100
    assert attempt.output_tokens == len(TEXT) // 4
    assert result.cost_usd > 0


async def test_a_prompt_read_from_anthropics_cache_keeps_its_zero(
    anthropic_server: FakeAnthropicServer,
) -> None:
    usage = {"input_tokens": 0, "output_tokens": 40, "cache_read_input_tokens": 2000}
    anthropic_server.script("claude", Reply(text=TEXT, usage=usage))
    cfg = {"tiers": [tier("a", provider("a", anthropic_server.url, "claude", kind="anthropic"))]}
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    (attempt,) = result.attempts
    assert attempt.input_tokens == 2000  # the cached prompt, not estimated again beside it
    assert attempt.output_tokens == 40


async def test_a_key_budget_moves_when_the_upstream_reports_zero_tokens(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    import aiohttp

    from cascade.gateway import hash_key

    openai_server.script("m1", Reply(text=TEXT, usage=OPENAI_ZERO))
    key = "sk-team-0123456789"
    cfg = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1"))],
        "gateway": {
            "keys": {"entries": [{"name": "team", "sha256": hash_key(key), "usd_per_day": 1.0}]}
        },
    }
    async with serving(write_config(tmp_path / "c.toml", cfg)) as gw:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{gw.base_url}/chat/completions",
                json={"model": "cascade", "messages": USER},
                headers={"Authorization": f"Bearer {key}"},
            ) as r,
        ):
            assert r.status == 200
            body = await r.json()
        assert body["usage"]["completion_tokens"] == len(TEXT) // 4
        from cascade.gateway._key_gate import KeyGate

        gate = gw.gateway.gate
        assert isinstance(gate, KeyGate)
        assert (gate.keys.spent_today("team") or 0.0) > 0


async def test_refused_samples_reported_as_free_are_estimated(
    openai_server: FakeOpenAIServer,
) -> None:
    """A refusal's text is billed as output like an answer's: a sample that refused,
    reported with zero tokens, is estimated from its refusal."""
    refusal = "I cannot help with that request, sorry. " * 4
    openai_server.script(
        "m1", Reply(text=TEXT, usage=OPENAI_ZERO), Reply(refusal=refusal, usage=OPENAI_ZERO)
    )
    cfg = {
        "tiers": [
            tier(
                "a",
                provider("a", openai_server.url, "m1"),
                validators=[{"name": "self_consistency", "samples": 3, "min_agreement": 0.5}],
            )
        ],
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    [attempt] = result.attempts
    samples = list(attempt.samples)
    assert samples, attempt
    assert all(s.output_tokens == len(refusal) // 4 for s in samples), samples
