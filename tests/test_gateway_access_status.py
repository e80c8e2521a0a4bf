"""The access log's status for a client that leaves after its whole answer was written:
the request is still settling what it spent (its key's budget) when the connection
closes and aiohttp cancels the handler. The line says what the client got (200), not
499 (which says the client left before its answer was whole)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from cascade.testing import FakeOpenAIServer, Reply

from .gateway import serving, write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


class SlowSettle:
    """A gate that admits everyone and takes its time settling (a shared store far away)."""

    def __init__(self) -> None:
        self.settling = asyncio.Event()
        self.settled = 0

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def admit(self, headers: Mapping[str, str], *, request: Any, route: Any) -> None:
        return None

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        self.settling.set()
        await asyncio.sleep(30)  # cancelled when the client leaves
        self.settled += 1


async def read_whole(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response, read to its end: a Content-Length body, or chunks to the last."""
    status = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).split()[1])
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n") if b": " in line)
    if b"Content-Length" in fields:
        return status, await reader.readexactly(int(fields[b"Content-Length"]))
    body = b""
    while True:
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)).strip(), 16)
        body += (await reader.readexactly(size + 2))[:-2]
        if size == 0:
            return status, body


@pytest.mark.parametrize("anyio_backend", LOOPS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_client_leaving_after_its_whole_answer_is_logged_as_answered(
    openai_server: FakeOpenAIServer, tmp_path: Path, stream: bool
) -> None:
    openai_server.default = Reply(text="the answer")
    config = {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    gate = SlowSettle()
    body = json.dumps({"model": "m1", "messages": HI, "stream": stream}).encode()
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config), gate=gate) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
                status, got = await read_whole(reader)
                await asyncio.wait_for(gate.settling.wait(), 10)
            finally:
                writer.close()
            await eventually(lambda: gw.gateway.in_flight == 0, "the handler ended")
    assert status == 200
    assert (b"data: [DONE]" in got) if stream else json.loads(got)["choices"]
    assert gate.settled == 0  # the handler was cancelled while settling
    access = [e for e in logs if e["event"] == "gateway.request"]
    assert [(e["status"], e.get("error"), e["stream"]) for e in access] == [(200, None, stream)]


async def test_a_client_leaving_before_its_answer_is_still_499(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.default = Reply(text="slow", latency_s=5.0)
    config = {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    body = json.dumps({"model": "m1", "messages": HI, "stream": True}).encode()
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body
                )
                await writer.drain()
                await eventually(lambda: openai_server.active_requests == 1, "the call")
            finally:
                writer.close()
            await eventually(lambda: gw.gateway.in_flight == 0, "the handler ended")
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [499]


async def test_every_request_gets_one_access_line_and_never_the_clients_path(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The listing, the probes and refusals before a handler are logged as chat requests
    are: one line each, the route's pattern as the path (a URL can hold anything)."""
    config = {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    pasted = "sk-pasted-into-the-url-0123456789"
    with capture_logs() as logs:
        async with (
            serving(write_config(tmp_path / "c.toml", config)) as gw,
            aiohttp.ClientSession() as session,
        ):
            for method, path in [
                ("GET", "/v1/models"),
                ("GET", f"/v1/models/{pasted}"),
                ("GET", "/healthz"),
                ("GET", "/readyz"),
                ("GET", "/v1/chat/completions"),  # 405
                ("GET", f"/{pasted}"),  # 404: no route
            ]:
                async with session.request(method, gw.url + path) as resp:
                    await resp.read()
    access = [e for e in logs if e["event"] == "gateway.request"]
    assert [(e["method"], e["path"], e["status"], e.get("error")) for e in access] == [
        ("GET", "/v1/models", 200, None),
        ("GET", "/v1/models/{model}", 200, None),  # the default route answers any name
        ("GET", "/healthz", 200, None),
        ("GET", "/readyz", 200, None),
        ("GET", "/v1/chat/completions", 405, "invalid_request_error"),
        ("GET", None, 404, "not_found_error"),
    ]
    assert pasted not in repr(logs)
    assert all(e["duration_ms"] >= 0 for e in access)


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_client_leaving_with_its_json_answer_half_read_is_499(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The answer's last write returned (aiohttp waits only for the transport's buffer to
    drain below its low mark, the rest in the socket's buffers) and the request is
    settling, but the client read part of it and left, its unread bytes reset: it did not
    get its answer."""
    openai_server.default = Reply(text="x" * (6 << 20))
    big = provider("a", openai_server.url, "m1", max_response_bytes=64 << 20)
    config = {"tiers": [tier("t", big)]}
    gate = SlowSettle()
    body = json.dumps({"model": "m1", "messages": HI}).encode()
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config), gate=gate) as gw:
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            got = 0
            try:
                await loop.sock_connect(sock, ("127.0.0.1", gw.port))
                await loop.sock_sendall(
                    sock,
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(body) + body,
                )
                while not gate.settling.is_set():  # reading, until the request settles
                    got += len(await asyncio.wait_for(loop.sock_recv(sock, 65536), 10))
                # more is on its way: left unread, the close resets the connection
                assert await asyncio.wait_for(loop.sock_recv(sock, 1), 10)
            finally:
                sock.close()
            await eventually(lambda: gw.gateway.in_flight == 0, "the handler ended")
    assert got < 6 << 20
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [499]
