"""helper-75's review of the reload's keys, the retired cascades' wait, streamed refusals
and the models named on stream chunks: the official SDKs against ``cascade serve`` on
loopback, and the keys' counters in memory and in a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from cascade.gateway import GatewayDenied, GatewayKeys, KeyEntry, KeysConfig, hash_key
from cascade.gateway._keys_config import resolved_keys
from cascade.resilience.shared import SharedState
from cascade.testing import FakeClock, FakeOpenAIServer

from . import test_shared_redis as _redis
from .gateway import serving, write_config
from .helpers import provider, tier
from .test_shared_redis import _prefix

pytestmark = pytest.mark.anyio

redis_bin = _redis.redis_bin
redis_url = _redis.redis_url

HI = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]
GOOD = '{"answer": 42}'
TEAM, OTHER = "sk-h75-team-0123456789", "sk-h75-other-0123456789"
MIDNIGHT = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def keyed(url: str, *entries: tuple[str, str], **limits: Any) -> dict[str, Any]:
    keys = [{"name": n, "sha256": hash_key(raw), **limits} for n, raw in entries]
    return {
        "tiers": [tier("t", provider("a", url, "m1"))],
        "gateway": {"keys": {"entries": keys}},
    }


# -- a key removed, then listed again ----------------------------------------------------


async def test_a_key_removed_then_listed_again_keeps_its_day_and_minute(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A key taken out of the file (a slip, or revoked for a while) and put back by a
    later reload is the same key: its day's budget and its requests per minute go on
    where they were, as a rotation's do (and as they do in a shared Redis, by name). They
    started afresh: two SIGHUPs gave a tenant a new day's budget."""
    from cascade.gateway._server import _reload

    openai_server.default = GOOD
    limits = {"requests_per_minute": 2}
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url, ("team", TEAM), **limits))
    async with (
        serving(path) as g,
        openai.AsyncOpenAI(base_url=g.base_url, api_key=TEAM, max_retries=0) as sdk,
    ):
        for _ in range(2):
            await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError):
            await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        write_config(path, keyed(openai_server.url, ("other", OTHER), **limits))
        await _reload(g.gateway, str(path))
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        write_config(path, keyed(openai_server.url, ("team", TEAM), **limits))
        await _reload(g.gateway, str(path))
        with pytest.raises(openai.RateLimitError) as denied:
            await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        assert denied.value.code == "rate_limit_exceeded"
    assert openai_server.request_count == 2


def _config(*entries: tuple[str, str], **limits: Any) -> KeysConfig:
    return KeysConfig(
        entries=[KeyEntry(name=n, sha256=hash_key(raw), **limits) for n, raw in entries]
    )


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
async def test_a_key_listed_again_keeps_its_requests_in_flight_and_budget(
    shared: bool, request: pytest.FixtureRequest
) -> None:
    """Removed and listed again while one of its requests is under way: that request
    still counts against its ``max_in_flight``, and what it holds of the day's budget
    and what was spent still count (in memory as in Redis)."""
    state = None
    if shared:
        url = request.getfixturevalue("redis_url")
        state = SharedState(redis_url=url, key_prefix=_prefix(), timeout_s=2.0)
        await state.open()
    try:
        limits = {"usd_per_day": 1.0, "max_in_flight": 1}
        start = _config(("team", TEAM), **limits)
        keys = GatewayKeys.from_config(
            start, clock=FakeClock(), shared=state, epoch_s=MIDNIGHT + 3600
        )
        spent = await keys.admit(TEAM, estimated_tokens=1, estimated_cost_usd=0.6)
        await keys.settle(spent, tokens=1, cost_usd=0.6)
        held = keys.enter(TEAM)  # under way, holding the rest of the day
        holding = await keys.admit(TEAM, estimated_tokens=1, estimated_cost_usd=0.4)
        removed = _config(("other", OTHER), **limits)
        assert keys.reload(removed, resolved_keys(removed)).revoked == ["team"]
        changes = keys.reload(start, resolved_keys(start))
        assert (changes.added, changes.kept, changes.settings_kept) == (["team"], [], False)
        with pytest.raises(GatewayDenied) as busy:
            keys.enter(TEAM)
        assert busy.value.code == "key_busy"
        with pytest.raises(GatewayDenied) as spent_up:
            await keys.admit(TEAM, estimated_tokens=1, estimated_cost_usd=0.01)
        assert spent_up.value.code == "insufficient_quota"
        held.leave()
        await keys.settle(holding, tokens=1, cost_usd=0.3)
        keys.enter(TEAM).leave()
        assert keys.spent_today("team") == pytest.approx(0.9)
    finally:
        if state is not None:
            await asyncio.wait_for(state.aclose(), 10)
