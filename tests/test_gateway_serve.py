"""A real ``cascade serve`` process: it drains on SIGTERM (requests in flight finish, new
connections are refused, then it exits 0) and reloads its config on SIGHUP without
dropping the requests in flight."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import openai
import pytest

from cascade import InputError
from cascade._cli_serve import _use_uvloop
from cascade.testing import FakeOpenAIServer, Reply

from .gateway import write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

UVLOOP = pytest.mark.skipif(
    sys.platform == "win32" or importlib.util.find_spec("uvloop") is None,
    reason="uvloop is not installed (the dev extra has it)",
)

HI = [{"role": "user", "content": "Hi"}]


class Served:
    """A ``cascade serve`` subprocess and the JSON lines it has logged."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []
        self.port = 0
        self.listening = asyncio.Event()
        self.stderr = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def events(self) -> list[str]:
        return [line.get("event", "") for line in self.lines]

    async def collect(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            self.lines.append(line)
            if line.get("event") == "gateway.listening":
                self.port = line["port"]
                self.listening.set()


@asynccontextmanager
async def cascade_serve(path: Path, *args: str, listening: bool = True) -> AsyncIterator[Served]:
    """``cascade serve`` on ``path`` (killed at the end if still running); with
    ``listening``, once it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cascade._cli",
        "serve",
        "--config",
        str(path),
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    served = Served(proc)
    reader = asyncio.create_task(served.collect())
    try:
        if listening:
            async with asyncio.timeout(30):
                await served.listening.wait()
        yield served
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await reader
        assert proc.stderr is not None
        served.stderr = (await proc.stderr.read()).decode(errors="replace")


def config(url: str, model: str, route: str, **gateway: Any) -> dict[str, Any]:
    return {
        "tiers": [tier("t", provider("a", url, model))],
        "gateway": {"routes": [{"name": route}], **gateway},
    }


def client(served: Served) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=served.base_url, api_key="k", max_retries=0)


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


LOOPS = ["asyncio", pytest.param("uvloop", marks=UVLOOP)]


@pytest.mark.parametrize("loop", LOOPS)
async def test_sigterm_drains_requests_in_flight_then_exits(
    openai_server: FakeOpenAIServer, tmp_path: Path, loop: str
) -> None:
    openai_server.script("m1", Reply(text="finished", latency_s=1.5))
    path = write_config(tmp_path / "c.toml", config(openai_server.url, "m1", "r"))
    async with cascade_serve(path, "--loop", loop) as served, client(served) as c:
        listening = next(x for x in served.lines if x["event"] == "gateway.listening")
        assert listening["loop"] == loop
        call = asyncio.create_task(c.chat.completions.create(model="r", messages=HI))  # type: ignore[arg-type]
        await eventually(lambda: openai_server.active_requests == 1, "the slow call under way")
        served.proc.send_signal(signal.SIGTERM)
        # stops accepting while the request in flight is still being served
        stop = asyncio.get_running_loop().time() + 5
        while not await refused(served.port):
            assert asyncio.get_running_loop().time() < stop, "still accepting after SIGTERM"
            await asyncio.sleep(0.02)
        assert not call.done()
        completion = await call
        assert completion.choices[0].message.content == "finished"
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    events = served.events()
    assert "gateway.draining" in events
    assert events[-1] == "gateway.stopped"
    access = [line for line in served.lines if line.get("event") == "gateway.request"]
    assert [line["status"] for line in access] == [200]


def access_lines(served: Served) -> list[dict[str, Any]]:
    return [line for line in served.lines if line.get("event") == "gateway.request"]


async def test_sigterm_cuts_off_what_outlives_the_drain_timeout(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """What is left when ``drain_timeout_s`` is over gets a 503 ``shutting_down`` with
    ``Retry-After: 1`` (an SDK retries it, on another replica behind a balancer), not a
    connection closed under it; its upstream call is closed, the access line says so."""
    openai_server.script("m1", Reply(fault="hang"))
    path = write_config(
        tmp_path / "c.toml", config(openai_server.url, "m1", "r", drain_timeout_s=0.2)
    )
    async with cascade_serve(path) as served, client(served) as c:
        call = asyncio.create_task(
            c.chat.completions.with_raw_response.create(model="r", messages=HI)  # type: ignore[arg-type]
        )
        await eventually(lambda: openai_server.active_requests == 1, "the call under way")
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
        with pytest.raises(openai.InternalServerError) as caught:
            await call
    assert caught.value.status_code == 503
    assert caught.value.code == "shutting_down"
    assert caught.value.response.headers["retry-after"] == "1"
    await eventually(lambda: openai_server.active_requests == 0, "the upstream call closed")
    cut = next(line for line in served.lines if line.get("event") == "gateway.drain_cut")
    assert (cut["in_flight"], cut["reason"]) == (1, "timeout")
    [line] = access_lines(served)
    assert (line["status"], line["error"]) == (503, "shutting_down")
    assert served.events()[-1] == "gateway.stopped"
    assert "Traceback" not in served.stderr


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_a_stream_the_drain_gives_up_on_ends_with_an_error_event(
    openai_server: FakeOpenAIServer, tmp_path: Path, mode: str
) -> None:
    """A stream whose status line is out when the drain gives up ends with its format's
    error event (the SDK raises), never as a truncated success."""
    openai_server.script("m1", Reply(text="never finished", fault="stall"))
    cfg = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1", stream=True))],
        "gateway": {"routes": [{"name": "r", "mode": mode}], "drain_timeout_s": 0.3},
    }
    path = write_config(tmp_path / "c.toml", cfg)
    async with cascade_serve(path) as served, client(served) as c:
        texts: list[str] = []

        async def read() -> None:
            stream = await c.chat.completions.create(model="r", messages=HI, stream=True)  # type: ignore[arg-type]
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    texts.append(chunk.choices[0].delta.content)

        reading = asyncio.create_task(read())
        await eventually(lambda: openai_server.active_requests == 1, "the call under way")
        if mode == "speculative":
            await eventually(lambda: bool(texts), "the first delta relayed")
        served.proc.send_signal(signal.SIGTERM)
        with pytest.raises(openai.APIError, match="shutting down"):
            await asyncio.wait_for(reading, 30)
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    await eventually(lambda: openai_server.active_requests == 0, "the upstream call closed")
    [line] = access_lines(served)
    # buffered: nothing was sent before the answer, so a 503; speculative: the 200 was out
    status = 503 if mode == "buffered" else 200
    assert (line["status"], line["error"]) == (status, "shutting_down")


@pytest.mark.parametrize("loop", LOOPS)
async def test_a_second_sigterm_cuts_the_drain_short(
    openai_server: FakeOpenAIServer, tmp_path: Path, loop: str
) -> None:
    """A second SIGTERM while requests drain ends the drain there (not after
    ``drain_timeout_s``): the call in flight is cut, its upstream call closed, and the
    gateway closes and exits 0, logging the cut."""
    openai_server.script("m1", Reply(fault="hang"))
    path = write_config(
        tmp_path / "c.toml", config(openai_server.url, "m1", "r", drain_timeout_s=600)
    )
    async with cascade_serve(path, "--loop", loop) as served, client(served) as c:
        call = asyncio.create_task(c.chat.completions.create(model="r", messages=HI))  # type: ignore[arg-type]
        await eventually(lambda: openai_server.active_requests == 1, "the call under way")
        served.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: "gateway.draining" in served.events(), "draining")
        assert served.proc.returncode is None
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 60) == 0  # not 600 s
        with pytest.raises(openai.InternalServerError) as caught:
            await call
        assert caught.value.code == "shutting_down"
    await eventually(lambda: openai_server.active_requests == 0, "the upstream call closed")
    events = served.events()
    cut = next(line for line in served.lines if line.get("event") == "gateway.drain_cut")
    assert (cut["in_flight"], cut["reason"]) == (1, "signal")
    assert events.index("gateway.draining") < events.index("gateway.drain_cut")
    assert events[-1] == "gateway.stopped"
    assert "Traceback" not in served.stderr


@pytest.mark.parametrize("loop", LOOPS)
async def test_sighup_reloads_without_dropping_requests(
    openai_server: FakeOpenAIServer, tmp_path: Path, loop: str
) -> None:
    openai_server.script("m1", Reply(text="old", latency_s=1.0))
    openai_server.script("m2", Reply(text="new"))
    path = write_config(tmp_path / "c.toml", config(openai_server.url, "m1", "one"))
    async with cascade_serve(path, "--loop", loop) as served, client(served) as c:
        call = asyncio.create_task(c.chat.completions.create(model="one", messages=HI))  # type: ignore[arg-type]
        await eventually(lambda: openai_server.active_requests == 1, "the slow call under way")
        write_config(path, config(openai_server.url, "m2", "two"))
        served.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "gateway.reloaded" in served.events(), "reloaded")
        assert [m.id for m in (await c.models.list()).data] == ["two"]
        new = await c.chat.completions.create(model="two", messages=HI)  # type: ignore[arg-type]
        assert new.choices[0].message.content == "new"
        old = await call  # began on the old cascade, finished on it
        assert old.choices[0].message.content == "old"
        # a broken config is refused; the gateway goes on with the one it has
        path.write_text("[[tiers]]\nname = 1\n")
        served.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "gateway.reload_failed" in served.events(), "reload refused")
        again = await c.chat.completions.create(model="two", messages=HI)  # type: ignore[arg-type]
        assert again.choices[0].message.content == "new"
        assert openai_server.request_count == 3
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0


SLOW_BUILD = '''
import os
import time

import cascade

HERE = os.path.dirname(__file__)


@cascade.validator("slow_build")
class SlowBuild:
    """Built slowly while the file ``block`` lies beside it (at most 60 s)."""

    def __init__(self, name: str = "slow_build") -> None:
        self.name = name
        if os.path.exists(os.path.join(HERE, "block")):
            open(os.path.join(HERE, "building"), "w").close()
            for _ in range(600):
                if not os.path.exists(os.path.join(HERE, "block")):
                    break
                time.sleep(0.1)
            open(os.path.join(HERE, "built"), "w").close()

    async def validate(self, completion, context):
        return cascade.Verdict(validator=self.name, passed=True)
'''


async def test_sigterm_during_a_slow_reload_exits_without_waiting_for_it(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """SIGHUP starts a build that will not end (a plug-in built slowly), then SIGTERM: the
    process drains and exits while that build is still under way."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow_build.py").write_text(SLOW_BUILD)
    cfg = config(openai_server.url, "m1", "r")
    cfg["validator_paths"] = ["plugins"]
    cfg["tiers"][0]["validators"] = [{"name": "slow_build"}]
    path = write_config(tmp_path / "c.toml", cfg)
    async with cascade_serve(path) as served:
        (plugins / "block").touch()
        try:
            served.proc.send_signal(signal.SIGHUP)
            await eventually(lambda: (plugins / "building").exists(), "the build under way")
            served.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(served.proc.wait(), 30) == 0
            assert not (plugins / "built").exists()  # it exited before the build ended
        finally:
            (plugins / "block").unlink()
    assert "gateway.reload_abandoned" in served.events()
    assert "gateway.stopped" in served.events()


async def test_a_header_too_long_is_refused_and_its_bytes_never_logged(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    secret = "sk-live-" + "s" * 9000
    path = write_config(tmp_path / "c.toml", config(openai_server.url, "m1", "r"))
    async with cascade_serve(path) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {secret}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
        writer.close()
        await writer.wait_closed()
        assert head.split()[1] == b"431"  # Request Header Fields Too Large
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    logged = served.stderr + json.dumps(served.lines)
    assert "LineTooLong" in logged
    assert "sk-live" not in logged
    assert openai_server.request_count == 0


@UVLOOP
def test_loop_auto_is_uvloop_when_installed() -> None:
    assert _use_uvloop("auto") is True
    assert _use_uvloop("uvloop") is True
    assert _use_uvloop("asyncio") is False


def test_loop_uvloop_not_installed_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvloop" else real(name, *a)
    )
    assert _use_uvloop("auto") is False  # auto falls back to asyncio
    with pytest.raises(InputError, match="uvloop is not installed") as caught:
        _use_uvloop("uvloop")
    assert caught.value.path == "--loop"


async def test_a_method_of_the_clients_own_is_never_logged_as_sent(
    openai_server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiohttp's pure-Python parser (``AIOHTTP_NO_EXTENSIONS``, or where its C parser is
    not built) takes any token as a method: the access line names an HTTP method, or
    ``_OTHER`` (OpenTelemetry's word for the rest), never the client's own text."""
    monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    path = write_config(tmp_path / "c.toml", config(openai_server.url, "m1", "r"))
    async with cascade_serve(path) as served:
        for method in (b"SK-PROJ-0123456789AB", b"GET"):
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            writer.write(method + b" /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await reader.readuntil(b"\r\n\r\n")
            writer.close()
        await eventually(lambda: served.events().count("gateway.request") == 2, "two access lines")
    access = [line for line in served.lines if line["event"] == "gateway.request"]
    assert [(e["method"], e["status"]) for e in access] == [("_OTHER", 405), ("GET", 200)]
    assert "SK-PROJ" not in json.dumps(served.lines)


class Silent:
    """A TCP listener that takes connections and never answers (a Redis that hangs)."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        """A client connected and sent its first command."""
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while await reader.read(65536):
                self.asked.set()
        writer.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


def logged_at(line: dict[str, Any]) -> float:
    """A log line's timestamp, in seconds since the epoch."""
    return datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()


async def test_sigterm_while_a_reload_swaps_in_stops_accepting_at_once(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """SIGTERM while a reload opens its new routes (here: connecting to a ``[shared]``
    Redis that does not answer, for up to its ``timeout_s``): the listener closes before
    that open is over, not once the swap is done; routes opened after SIGTERM are not
    swapped in, and are closed before the exit."""
    silent = Silent()
    silent.server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    try:
        path = write_config(tmp_path / "c.toml", config(openai_server.url, "m1", "r"))
        async with cascade_serve(path) as served:
            cfg = config(openai_server.url, "m1", "r")
            cfg["shared"] = {"redis_url": f"redis://127.0.0.1:{silent.port}/0", "timeout_s": 10}
            write_config(path, cfg)
            served.proc.send_signal(signal.SIGHUP)
            async with asyncio.timeout(30):
                await silent.asked.wait()  # the swap opens the new routes
            served.proc.send_signal(signal.SIGTERM)
            loop = asyncio.get_running_loop()
            stop = loop.time() + 30
            while not await refused(served.port):
                assert loop.time() < stop, "still accepting after SIGTERM"
                await asyncio.sleep(0.02)
            stopped_accepting = time.time()
            assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    finally:
        silent.server.close()
        await silent.server.wait_closed()
    # (without the fix: the open timed out, was logged, then the listener closed)
    opened = [x for x in served.lines if x["event"].startswith("shared state unavailable")]
    assert all(stopped_accepting < logged_at(x) for x in opened), "accepting until swapped"
    assert "gateway.reloaded" not in served.events()
    assert served.events()[-1] == "gateway.stopped"
    assert "Unclosed" not in served.stderr


async def test_a_sighup_while_the_gateway_starts_is_a_reload_once_it_listens(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """SIGHUP's default action kills the process: one that comes while the routes are
    first built (seconds, for a large router file or a slow plug-in) must not, and the
    file changed meanwhile is read again once the gateway listens."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "slow_build.py").write_text(SLOW_BUILD)
    openai_server.script("m2", Reply(text="new"))
    cfg = config(openai_server.url, "m1", "one")
    cfg["validator_paths"] = ["plugins"]
    cfg["tiers"][0]["validators"] = [{"name": "slow_build"}]
    path = write_config(tmp_path / "c.toml", cfg)
    (plugins / "block").touch()
    async with cascade_serve(path, listening=False) as served:
        proc = served.proc
        try:
            await eventually(lambda: (plugins / "building").exists(), "the start's build under way")
            cfg["tiers"][0]["providers"][0]["model"] = "m2"
            write_config(path, cfg)
            proc.send_signal(signal.SIGHUP)
            (plugins / "block").unlink()
            started = served.listening.is_set
            await eventually(
                lambda: started() or proc.returncode is not None, "started, or killed", within_s=30
            )
            assert proc.returncode is None, "the SIGHUP killed it"
            await eventually(lambda: "gateway.reloaded" in served.events(), "reloaded")
            async with client(served) as c:
                new = await c.chat.completions.create(model="one", messages=HI)  # type: ignore[arg-type]
            assert new.choices[0].message.content == "new"
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
        finally:
            (plugins / "block").unlink(missing_ok=True)


async def test_sigterm_while_the_routes_are_first_built_exits_0(tmp_path: Path) -> None:
    """SIGTERM before the gateway listens (its config still being read and built, which
    a large router file makes seconds) is not the signal's default action (exit -15):
    nothing is in flight, the build is abandoned, and the process exits 0."""
    import os

    fifo = tmp_path / "c.toml"
    os.mkfifo(fifo)  # its reader (the build) waits for a writer, then for bytes
    async with cascade_serve(fifo, listening=False) as served:
        writer = None
        try:
            stop = asyncio.get_running_loop().time() + 30
            while writer is None:  # open for writing succeeds once the build reads it
                try:
                    writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    assert asyncio.get_running_loop().time() < stop, "the build never read"
                    await asyncio.sleep(0.02)
            served.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(served.proc.wait(), 30) == 0
        finally:
            if writer is not None:
                os.close(writer)
    assert served.events()[-1] == "gateway.stopped"
    assert "Traceback" not in served.stderr


async def test_drain_delay_keeps_serving_with_readyz_503_then_drains(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """``drain_delay_s``: after SIGTERM the gateway still accepts and serves (a balancer
    that has not yet seen ``/readyz`` turn 503 still sends here), each answer closing its
    connection; then the listener closes and the drain goes on as without it."""
    import aiohttp

    openai_server.default = Reply(text="still served")
    path = write_config(
        tmp_path / "c.toml", config(openai_server.url, "m1", "r", drain_delay_s=600)
    )
    async with cascade_serve(path) as served, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{served.port}"
        served.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: "gateway.drain_delay" in served.events(), "the delay begun")
        async with session.get(f"{url}/readyz") as ready:
            assert ready.status == 503
            assert (await ready.json())["status"] == "draining"
        async with session.post(
            f"{url}/v1/chat/completions", json={"model": "r", "messages": HI}
        ) as answered:
            assert answered.status == 200
            assert answered.headers["Connection"] == "close"
            assert (await answered.json())["choices"][0]["message"]["content"] == "still served"
        assert not await refused(served.port)
        served.proc.send_signal(signal.SIGTERM)  # a second one ends the wait (not 600 s)
        assert await asyncio.wait_for(served.proc.wait(), 60) == 0
    events = served.events()
    assert events.index("gateway.draining") < events.index("gateway.drain_delay")
    assert events[-1] == "gateway.stopped"
    assert "Traceback" not in served.stderr


async def test_a_request_started_in_the_drain_delay_is_drained_not_cut(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Requests that ended during the delay (the count touched 0) do not make the drain
    think it is over: one still in flight when the delay ends is waited for."""
    import aiohttp

    openai_server.script("m1", Reply(text="quick"), Reply(text="slow", latency_s=4.0))
    path = write_config(
        tmp_path / "c.toml", config(openai_server.url, "m1", "r", drain_delay_s=2.5)
    )
    body = {"model": "r", "messages": HI}
    async with cascade_serve(path) as served, aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{served.port}/v1/chat/completions"
        served.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: "gateway.drain_delay" in served.events(), "the delay begun")
        async with session.post(url, json=body) as quick:
            assert quick.status == 200
        slow = asyncio.create_task(session.post(url, json=body))
        await eventually(lambda: openai_server.active_requests == 1, "the slow call under way")
        response = await asyncio.wait_for(slow, 30)
        assert response.status == 200, await response.text()
        assert (await response.json())["choices"][0]["message"]["content"] == "slow"
        response.release()
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    assert "gateway.drain_cut" not in served.events()
