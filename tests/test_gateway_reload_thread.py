"""A reload (SIGHUP) reads the config and builds every route's cascade in a worker
thread, not on the event loop (a router file of up to 64 MiB takes seconds to decode,
and the loop serves every request meanwhile); reloads apply in the order they came."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from cascade import ConfigError
from cascade.gateway import serve
from cascade.gateway._app import Gateway
from cascade.gateway._config import LoadedConfig
from cascade.gateway._reload import reload_config as _reload
from cascade.gateway._routes import Generation
from cascade.testing import FakeOpenAIServer

from .gateway import serving, write_config
from .helpers import provider, tier
from .leaks import eventually

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
        building = threading.Event()

        def gated(fresh: LoadedConfig) -> Generation:
            if fresh.gateway.routes and fresh.gateway.routes[0].name == "slow":
                building.set()
                assert release.wait(10)
            return rebuild(fresh)

        gateway.rebuild = gated
        async with anyio.create_task_group() as tg:
            tg.start_soon(_reload, gateway, str(slow))
            await eventually(building.is_set, "the slow build under way")
            tg.start_soon(_reload, gateway, str(fast))
            await eventually(lambda: gateway.reload_waiting, "the fast reload waiting")
            release.set()
        assert [r.name for r in gateway.generation.routes] == ["fast"]


async def test_a_reload_failing_with_any_error_is_logged_and_the_next_one_applies(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Not only a ConfigError: whatever a build raises (a plug-in's bug, a MemoryError
    decoding a router file) is logged as a failed reload, the routes stay as they were,
    and the next reload applies."""
    path = write_config(tmp_path / "c.toml", config_for(openai_server.url, "start"))
    async with serving(path) as gw:
        gateway = gw.gateway
        assert gateway.rebuild is not None
        rebuild = gateway.rebuild
        fail = [True]

        def flaky(fresh: LoadedConfig) -> Generation:
            if fail.pop():
                raise RuntimeError("a bug in a plug-in")
            return rebuild(fresh)

        gateway.rebuild = flaky
        write_config(path, config_for(openai_server.url, "next"))
        with capture_logs() as logs:
            await _reload(gateway, str(path))
            assert [r.name for r in gateway.generation.routes] == ["start"]
            fail.append(False)
            await _reload(gateway, str(path))
        assert [r.name for r in gateway.generation.routes] == ["next"]
    failed = [e for e in logs if e["event"] == "gateway.reload_failed"]
    assert [(e["error_type"], e["error"]) for e in failed] == [
        ("RuntimeError", "a bug in a plug-in")
    ]
    assert [e["event"] for e in logs][-1] == "gateway.reloaded"


class Gated:
    """A rebuild that waits for ``release`` on its first call and counts its calls."""

    def __init__(self, rebuild: Any) -> None:
        self.rebuild = rebuild
        self.release = threading.Event()
        self.calls = 0
        self.started = threading.Event()

    def __call__(self, fresh: LoadedConfig) -> Generation:
        self.calls += 1
        self.started.set()
        assert self.release.wait(10)
        return self.rebuild(fresh)  # type: ignore[no-any-return]


@asynccontextmanager
async def gated_reloads(url: str, tmp_path: Path) -> AsyncIterator[tuple[Gateway, Gated, Path]]:
    """A gateway serving the route ``start`` whose reloads build through :class:`Gated`,
    and its config file."""
    path = write_config(tmp_path / "c.toml", config_for(url, "start"))
    async with serving(path) as gw:
        gated = Gated(gw.gateway.rebuild)
        gw.gateway.rebuild = gated
        yield gw.gateway, gated, path


async def test_a_reload_storm_builds_once_more_not_once_per_signal(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """SIGHUPs while a reload builds: one more reload, which reads the file as it is
    once the first is done, not one full build per signal (each of seconds, in turn)."""
    async with gated_reloads(openai_server.url, tmp_path) as (gateway, gated, path):
        async with anyio.create_task_group() as tg:
            tg.start_soon(_reload, gateway, str(path))
            await anyio.to_thread.run_sync(gated.started.wait, 10)
            for n in range(10):
                write_config(path, config_for(openai_server.url, f"storm{n}"))
                tg.start_soon(_reload, gateway, str(path))
                await anyio.sleep(0)
            gated.release.set()
        assert gated.calls == 2
        assert [r.name for r in gateway.generation.routes] == ["storm9"]


async def test_a_reload_still_to_come_when_the_gateway_drains_is_not_applied(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """SIGTERM during a slow reload: the one building is not swapped in (the gateway is
    closing) and the one waiting does not build at all; the shutdown waits for no more
    than the build under way."""
    async with gated_reloads(openai_server.url, tmp_path) as (gateway, gated, path):
        write_config(path, config_for(openai_server.url, "late"))
        with capture_logs() as logs:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_reload, gateway, str(path))
                await anyio.to_thread.run_sync(gated.started.wait, 10)
                tg.start_soon(_reload, gateway, str(path))
                await anyio.sleep(0)
                gateway.draining = True  # what SIGTERM does first
                gated.release.set()
        assert gated.calls == 1
        assert [r.name for r in gateway.generation.routes] == ["start"]
    assert "gateway.reloaded" not in [e["event"] for e in logs]


async def test_a_build_abandoned_by_sigterm_is_not_waited_for(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """SIGTERM cancels the build under way (``reload_build``): the reload returns while the
    build is still blocked in its thread, swaps nothing in and says so."""
    async with gated_reloads(openai_server.url, tmp_path) as (gateway, gated, path):
        write_config(path, config_for(openai_server.url, "late"))
        with capture_logs() as logs:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_reload, gateway, str(path))
                    await anyio.to_thread.run_sync(gated.started.wait, 10)
                    assert gateway.reload_build is not None
                    gateway.draining = True  # what SIGTERM does, then:
                    gateway.reload_build.cancel()
                assert not gated.release.is_set()  # the build still waits in its thread
                assert gateway.reload_build is None
                assert not gateway.reloading.locked()
            finally:
                gated.release.set()
        assert [r.name for r in gateway.generation.routes] == ["start"]
    assert [e["event"] for e in logs] == ["gateway.reload_abandoned"]


async def test_a_reload_cancelled_from_outside_is_cancelled(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Only the build's own cancellation (SIGTERM's) ends a reload quietly: the reload's
    task cancelled (its task group's) still ends cancelled."""
    async with gated_reloads(openai_server.url, tmp_path) as (gateway, gated, path):
        try:
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(_reload, gateway, str(path))
                    await anyio.to_thread.run_sync(gated.started.wait, 10)
                    scope.cancel()
            assert scope.cancelled_caught
            assert gateway.reload_build is None and not gateway.reloading.locked()
        finally:
            gated.release.set()


LOOP_BOUND = '''
import asyncio

import cascade


@cascade.validator("loop_bound")
class LoopBound:
    """Takes the running loop when built (as an aiohttp.ClientSession made in __init__)."""

    def __init__(self, name: str = "loop_bound") -> None:
        self.name = name
        self.loop = asyncio.get_running_loop()

    async def validate(self, completion, context):
        return cascade.Verdict(validator=self.name, passed=True)
'''


async def test_what_cascade_serve_starts_with_it_can_reload(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A reload builds off the loop; so does the start: a plug-in that can only be built
    on the loop fails when the gateway starts, not at every SIGHUP after it started."""
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "loop_bound.py").write_text(LOOP_BOUND)
    config = {
        "validator_paths": ["plugins"],
        "tiers": [
            tier("t", provider("a", openai_server.url, "m1"), validators=[{"name": "loop_bound"}])
        ],
    }
    path = write_config(tmp_path / "c.toml", config)

    def started(port: int) -> None:
        raise AssertionError("it started: it would fail every reload")

    with pytest.raises(ConfigError, match="no running event loop"):
        await serve(path, port=0, ready=started)


async def test_a_failed_reload_names_its_file_as_a_failed_start_does(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "c.toml", config_for(openai_server.url, "start"))
    async with serving(path) as gw:
        broken = config_for(openai_server.url, "next")
        broken["tiers"][0]["providers"][0]["api_key_env"] = "CASCADE_TEST_NEVER_SET"
        write_config(path, broken)
        with capture_logs() as logs:
            await _reload(gw.gateway, str(path))
    [failed] = [e for e in logs if e["event"] == "gateway.reload_failed"]
    assert failed["error"].startswith(f"{path}: tiers[0].providers[0].api_key_env")


@pytest.mark.parametrize("cancelled", [False, True], ids=["opened", "cancelled"])
async def test_routes_a_reload_opens_while_the_gateway_drains_are_closed_not_swapped_in(
    openai_server: FakeOpenAIServer, tmp_path: Path, cancelled: bool
) -> None:
    """SIGTERM while a reload's swap opens the new routes (a ``[shared]`` Redis that
    does not answer): whether the open then ends (timed out) or is cancelled (as
    ``serve`` cancels the reloads left once drained), the routes are closed, not
    swapped in."""
    from .test_gateway_serve import Silent

    silent = Silent()
    silent.server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    path = write_config(tmp_path / "c.toml", config_for(openai_server.url, "start"))
    try:
        async with serving(path) as gw:
            gateway = gw.gateway
            assert gateway.rebuild is not None
            rebuild = gateway.rebuild
            built: list[Generation] = []

            def recording(fresh: LoadedConfig) -> Generation:
                built.append(rebuild(fresh))
                return built[-1]

            gateway.rebuild = recording
            cfg = config_for(openai_server.url, "next")
            cfg["shared"] = {
                "redis_url": f"redis://127.0.0.1:{silent.port}/0",
                "timeout_s": 10 if cancelled else 0.2,
            }
            write_config(path, cfg)
            with capture_logs() as logs:
                task = asyncio.create_task(_reload(gateway, str(path)))
                async with asyncio.timeout(30):
                    await silent.asked.wait()  # the swap opens the new routes
                gateway.draining = True  # what SIGTERM does first
                if cancelled:
                    task.cancel()
                async with asyncio.timeout(30):
                    await asyncio.gather(task, return_exceptions=True)
            assert [r.name for r in gateway.generation.routes] == ["start"]
            [generation] = built
            assert all(c._closed for c in generation.cascades)
        assert "gateway.reloaded" not in [e["event"] for e in logs]
    finally:
        silent.server.close()
        await silent.server.wait_closed()


async def test_a_reload_applies_the_request_limits_and_names_what_needs_a_restart(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The ``[gateway]`` settings each request reads (``allowed_hosts``, ``max_messages``,
    ``max_in_flight``, the body and write timeouts) apply from the reload on, as its
    routes do; those fixed at start (the body limit, the idle and drain timeouts, the
    keys) stay, and the reload says which of them changed (``gateway.reload_kept``)
    instead of claiming them applied."""
    import aiohttp

    openai_server.script("m1", "an answer")
    path = write_config(tmp_path / "c.toml", config_for(openai_server.url, "start"))
    body = {"model": "next", "messages": [{"role": "user", "content": "Hi"}] * 2}
    async with serving(path) as gw, aiohttp.ClientSession() as session:

        async def status(host: str) -> int:
            url = f"{gw.url}/v1/chat/completions"
            async with session.post(url, json=body, headers={"Host": host}) as resp:
                return resp.status

        assert await status("api.example.com") == 403  # loopback: only IPs and localhost
        cfg = config_for(openai_server.url, "next")
        cfg["gateway"] |= {
            "allowed_hosts": ["api.example.com"],
            "max_in_flight": 7,
            "body_timeout_s": 3.0,
            "write_timeout_s": 4.0,
            "idle_timeout_s": 5.0,
            "max_body_bytes": 4096,
        }
        write_config(path, cfg)
        with capture_logs() as logs:
            await _reload(gw.gateway, str(path))
        assert await status("api.example.com") == 200
        gateway = gw.gateway
        assert (gateway.max_in_flight, gateway.body_timeout_s, gateway.write_timeout_s) == (
            7,
            3.0,
            4.0,
        )
        cfg["gateway"]["max_messages"] = 1
        write_config(path, cfg)
        await _reload(gw.gateway, str(path))
        assert await status("127.0.0.1") == 400  # two messages, one allowed
    events = [e["event"] for e in logs]
    assert events == ["gateway.reload_kept", "gateway.reloaded"]
    assert logs[0]["fields"] == ["idle_timeout_s", "max_body_bytes"]
