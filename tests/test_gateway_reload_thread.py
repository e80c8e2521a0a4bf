"""A reload (SIGHUP) reads the config and builds every route's cascade in a worker
thread, not on the event loop (a router file of up to 64 MiB takes seconds to decode,
and the loop serves every request meanwhile); reloads apply in the order they came."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from cascade.gateway._config import LoadedConfig
from cascade.gateway._routes import Generation
from cascade.gateway._server import _reload
from cascade.testing import FakeOpenAIServer

from .gateway import serving, write_config
from .helpers import provider, tier

pytestmark = pytest.mark.anyio


def config_for(url: str, route: str) -> dict[str, Any]:
    return {
        "tiers": [tier("t", provider("a", url, "m1"))],
        "gateway": {"routes": [{"name": route, "default": True}]},
    }


async def test_a_reload_builds_off_the_loop(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "c.toml", config_for(openai_server.url, "first"))
    async with serving(path) as gw:
        gateway = gw.gateway
        assert gateway.rebuild is not None
        rebuild = gateway.rebuild
        threads: list[int] = []

        def recording(fresh: LoadedConfig) -> Generation:
            threads.append(threading.get_ident())
            return rebuild(fresh)

        gateway.rebuild = recording
        write_config(path, config_for(openai_server.url, "second"))
        with capture_logs() as logs:
            await _reload(gateway, str(path))
        assert threads and threads[0] != threading.get_ident()
        assert [r.name for r in gateway.generation.routes] == ["second"]
        assert [e["event"] for e in logs] == ["gateway.reloaded"]


async def test_reloads_apply_in_the_order_they_came(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The first reload's build is slow and the second's fast: the second still applies
    last (unserialized, the first would swap in last and undo it)."""
    path = write_config(tmp_path / "c.toml", config_for(openai_server.url, "start"))
    slow = tmp_path / "slow.toml"
    fast = tmp_path / "fast.toml"
    write_config(slow, config_for(openai_server.url, "slow"))
    write_config(fast, config_for(openai_server.url, "fast"))
    async with serving(path) as gw:
        gateway = gw.gateway
        assert gateway.rebuild is not None
        rebuild = gateway.rebuild
        release = threading.Event()

        def gated(fresh: LoadedConfig) -> Generation:
            if fresh.gateway.routes and fresh.gateway.routes[0].name == "slow":
                assert release.wait(10)
            return rebuild(fresh)

        gateway.rebuild = gated
        async with anyio.create_task_group() as tg:
            tg.start_soon(_reload, gateway, str(slow))
            await anyio.sleep(0.05)
            tg.start_soon(_reload, gateway, str(fast))
            await anyio.sleep(0.05)
            release.set()
        assert [r.name for r in gateway.generation.routes] == ["fast"]
