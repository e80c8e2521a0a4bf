"""The access line of an answer the middleware sends (the listing, the probes, every
refusal before a handler ran) when the client does not take it: cut off after
``write_timeout_s`` without reading, or gone (a reset) while it was being written. The
line says 499, as a chat answer's does, never the status the client did not get, and
no such request goes without its line."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from cascade.gateway import hash_key
from cascade.testing import FakeOpenAIServer

from .gateway import serving, write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]
MODELS = 28_000
"""Model names listed: a listing of some 5.7 MB, more than loopback's socket buffers hold."""


def many_models(url: str, **gateway: Any) -> dict[str, Any]:
    names = [f"m{n:06d}-" + "x" * 120 for n in range(MODELS)]
    route = {"name": "big", "models": names, "default": True}
    return {
        "tiers": [tier("t", provider("a", url, "m1"))],
        "gateway": {"routes": [route], **gateway},
    }


def small_window() -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    return sock


async def ask_for_the_listing(sock: socket.socket, port: int) -> None:
    """Connect ``sock`` to the gateway on ``port`` and send ``GET /v1/models``."""
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, ("127.0.0.1", port))
    await loop.sock_sendall(sock, b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")


def access_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "gateway.request"]


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_listing_the_client_never_reads_is_logged_499(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = many_models(openai_server.url, write_timeout_s=0.3)
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            sock = small_window()
            try:
                await ask_for_the_listing(sock, gw.port)
                # nothing read: write_timeout_s later the gateway cuts the connection
                await eventually(lambda: bool(access_lines(logs)), "the access line", within_s=20)
            finally:
                sock.close()
    assert [(e["path"], e["status"]) for e in access_lines(logs)] == [("/v1/models", 499)]


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_client_reset_while_its_listing_is_written_gets_one_line(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = many_models(openai_server.url, write_timeout_s=60)
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            loop = asyncio.get_running_loop()
            sock = small_window()
            try:
                await ask_for_the_listing(sock, gw.port)
                assert await asyncio.wait_for(loop.sock_recv(sock, 1), 10)  # being written
            finally:
                # SO_LINGER 0: the close is a reset, in the middle of the listing
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                sock.close()
            await eventually(lambda: bool(access_lines(logs)), "the access line", within_s=20)
            await eventually(lambda: gw.gateway.in_flight == 0, "nothing in flight")
    assert [(e["path"], e["status"]) for e in access_lines(logs)] == [("/v1/models", 499)]


class Unready:
    """A generation whose readiness check fails: a bug, as the gateway would meet it."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def ready(self) -> bool:
        raise RuntimeError("a bug in the readiness check")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


async def test_a_plain_route_that_raises_gets_its_line_and_an_error_in_the_api_format(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            real = gw.gateway.generation
            gw.gateway.generation = Unready(real)  # type: ignore[assignment]
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(gw.url + "/readyz") as resp,
                ):
                    status, body = resp.status, await resp.json()
            finally:
                gw.gateway.generation = real
    assert status == 500
    assert body["error"]["code"] == "internal_error"
    assert [(e["path"], e["status"], e.get("error")) for e in access_lines(logs)] == [
        ("/readyz", 500, "internal_error")
    ]
    assert [e["path"] for e in logs if e["event"] == "gateway.internal_error"] == ["/readyz"]


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_chat_refusal_the_client_never_reads_is_logged_499(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A chat request refused (401: no key) by a client that pipelines such requests and
    reads nothing: the one whose answer the gateway could not write is logged 499, not
    with the status it never got."""
    keys = {"entries": [{"name": "k", "sha256": hash_key("sk-" + "k" * 40)}]}
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1"))],
        "gateway": {"keys": keys, "write_timeout_s": 0.3, "idle_timeout_s": 60},
    }
    one = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    )
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            loop = asyncio.get_running_loop()
            sock = small_window()
            try:
                await loop.sock_connect(sock, ("127.0.0.1", gw.port))
                stop = loop.time() + 30
                while loop.time() < stop:  # until the gateway cuts the connection
                    try:
                        sock.send(one * 64)
                    except BlockingIOError:
                        await asyncio.sleep(0.05)
                    except OSError:
                        break
            finally:
                sock.close()
            await eventually(lambda: gw.gateway.in_flight == 0, "nothing in flight")
    statuses = [e["status"] for e in access_lines(logs)]
    assert statuses[-1] == 499
    assert set(statuses[:-1]) == {401}


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_reset_while_a_bug_ends_a_stream_gets_its_line(
    openai_server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug after a stream's first bytes ends it with the error event; a client that
    resets while that event waits behind unread bytes is logged 499, not left out."""
    from cascade.gateway import _sse

    async def buggy(request: Any, response: Any, data: bytes, **_: Any) -> None:
        await response.prepare(request)  # its status line goes with the first bytes
        request.transport.write(b"x" * 8_000_000)  # more than the socket buffers hold
        raise RuntimeError("a bug after the first bytes")

    monkeypatch.setattr(_sse, "send", buggy)
    openai_server.default = "42"
    config = {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    body = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]}'
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            loop = asyncio.get_running_loop()
            sock = small_window()
            try:
                await loop.sock_connect(sock, ("127.0.0.1", gw.port))
                head = (
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                await loop.sock_sendall(sock, head.encode() + body)
                assert await asyncio.wait_for(loop.sock_recv(sock, 1), 10)  # being written
                await eventually(
                    lambda: any(e["event"] == "gateway.internal_error" for e in logs), "the bug"
                )
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                sock.close()
            await eventually(lambda: gw.gateway.in_flight == 0, "nothing in flight")
            await eventually(lambda: bool(access_lines(logs)), "the access line", within_s=20)
    lines = access_lines(logs)
    assert [(e["path"], e["status"], e.get("error")) for e in lines] == [
        ("/v1/chat/completions", 499, "internal_error")
    ]
