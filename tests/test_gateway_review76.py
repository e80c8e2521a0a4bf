"""helper-76's review of the reload's keys: what a reload whose new routes fail to open
leaves behind and says (``cascade serve`` on loopback, the official SDK)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest

from cascade.gateway import hash_key
from cascade.gateway._routes import Generation
from cascade.testing import FakeOpenAIServer

from .gateway import serving, write_config
from .helpers import provider, tier

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]
GOOD = '{"answer": 42}'
TEAM, LEAKED = "sk-h76-team-0123456789", "sk-h76-leaked-0123456789"


def keyed(url: str, route: str, *entries: tuple[str, str]) -> dict[str, Any]:
    keys = [{"name": n, "sha256": hash_key(raw)} for n, raw in entries]
    return {
        "tiers": [tier("t", provider("a", url, "m1"))],
        "gateway": {
            "keys": {"entries": keys},
            "routes": [{"name": route, "default": True}],
        },
    }


async def test_a_reload_whose_routes_fail_to_open_is_a_failed_reload_its_keys_applied(
    openai_server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new routes fail to open (a provider plug-in's bug, a MemoryError): the old
    routes stay, the keys the file lists apply all the same (they were applied as soon
    as it was read), and the reload is logged as failed, saying so. It raised out of the
    reload's task instead: no ``gateway.reload_failed``, an exception nobody logs (the
    asyncio handler's "never retrieved" at best), and a ``gateway.keys_reloaded`` alone
    said the reload had gone through."""
    from structlog.testing import capture_logs

    from cascade.gateway._reload import reload_config

    openai_server.default = GOOD
    path = write_config(
        tmp_path / "c.toml", keyed(openai_server.url, "start", ("team", TEAM), ("leaked", LEAKED))
    )
    async with serving(path) as g:
        write_config(path, keyed(openai_server.url, "next", ("team", TEAM)))

        async def broken(self: Generation) -> None:
            raise RuntimeError("a provider that cannot open")

        monkeypatch.setattr(Generation, "open", broken)
        with capture_logs() as logs:
            await reload_config(g.gateway, str(path))  # no exception out of the reload
        monkeypatch.undo()
        assert [r.name for r in g.gateway.generation.routes] == ["start"]
        assert g.gateway.reload_build is None and not g.gateway.reloading.locked()
        async with openai.AsyncOpenAI(base_url=g.base_url, api_key=LEAKED, max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError):
                await c.chat.completions.create(model="start", messages=HI)  # type: ignore[arg-type]
        async with openai.AsyncOpenAI(base_url=g.base_url, api_key=TEAM, max_retries=0) as c:
            await c.chat.completions.create(model="start", messages=HI)  # type: ignore[arg-type]
    events = [e["event"] for e in logs]
    assert "gateway.keys_reloaded" in events
    assert "gateway.reloaded" not in events
    failed = [e for e in logs if e["event"] == "gateway.reload_failed"]
    assert [(e["error_type"], e["error"]) for e in failed] == [
        ("RuntimeError", "a provider that cannot open")
    ]
    assert failed[0]["keys_applied"] is True
