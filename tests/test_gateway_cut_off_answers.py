"""A JSON answer cut off as it is written (the client gone, or reading nothing for
``write_timeout_s``) leaves no reference cycle behind: its response, body and all, goes as
the request ends, not at the garbage collector's next pass over the old generation (a
client that asks for big answers and never reads them would have the gateway hold each)."""

from __future__ import annotations

import asyncio
import gc
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from cascade.testing import FakeOpenAIServer, Reply

from .gateway import serving, write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
BIG = 3_000_000


def request(path: str) -> bytes:
    body = json.dumps({"model": "cascade", "messages": HI, "max_tokens": 16}).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def gateway_answers() -> int:
    """The gateway's responses alive now (big ones: the answers cut off)."""
    return sum(
        1
        for o in gc.get_objects()
        if type(o) is web.Response
        and "x-cascade-route" in o.headers
        and isinstance(o.body, bytes)
        and len(o.body) > BIG
    )


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("how", ["stops_reading", "resets"])
async def test_an_answer_cut_off_as_it_is_written_is_freed_with_its_request(
    openai_server: FakeOpenAIServer, tmp_path: Path, no_gc: None, path: str, how: str
) -> None:
    openai_server.default = Reply(text="y" * BIG)
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1"))],
        "gateway": {"write_timeout_s": 0.3},
    }
    loop = asyncio.get_running_loop()
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            for i in range(3):
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, ("127.0.0.1", gw.port))
                    await loop.sock_sendall(sock, request(path))
                    await eventually(lambda n=i + 1: openai_server.request_count >= n, "the call")
                    if how == "resets":
                        await eventually(lambda: gateway_answers() > 0, "the answer written")
                        # SO_LINGER 0: the close is a RST, while the answer is being written
                        linger = b"\x01\x00\x00\x00\x00\x00\x00\x00"
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                        sock.close()
                    await eventually(lambda: gw.gateway.in_flight == 0, "cut off", within_s=8)
                finally:
                    sock.close()
                await asyncio.sleep(0.05)  # the connection's own cleanup
                assert gateway_answers() == 0
    access = [e for e in logs if e["event"] == "gateway.request"]
    assert [e["status"] for e in access] == [499] * 3
