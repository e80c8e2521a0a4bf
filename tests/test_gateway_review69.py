"""Review of the drain's cut, a key's ``max_in_flight``, the request ids and the zero
usage estimate, as a hostile client (or a hostile moment) would try them."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from structlog.testing import capture_logs

from cascade.gateway import Gateway, build_gateway, hash_key, load_gateway
from cascade.gateway._server import _CLOSE_S, _drain, app_runner
from cascade.testing import FakeOpenAIServer, Reply

from . import test_shared_redis as _redis
from .gateway import write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

# the fixtures that start a redis-server of a test's own
redis_bin = _redis.redis_bin
redis_server = _redis.redis_server

HI = [{"role": "user", "content": "Hi"}]
KEY = "sk-review-0123456789"


def keyed(url: str, *, max_in_flight: int = 2, **gateway: Any) -> dict[str, Any]:
    keys = {"entries": [{"name": "team", "sha256": hash_key(KEY), "max_in_flight": max_in_flight}]}
    return {
        "tiers": [tier("t", provider("a", url, "m1"))],
        "gateway": {"keys": keys, **gateway},
    }


class Served:
    def __init__(self, gateway: Gateway, runner: web.AppRunner, port: int) -> None:
        self.gateway = gateway
        self.runner = runner
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def cut(self) -> None:
        """What SIGTERM then the end of ``drain_timeout_s`` do (``_server.serve``)."""
        self.gateway.draining = True
        await _drain(self.gateway, self.runner, 0.0, asyncio.Event())


@asynccontextmanager
async def served(path: Path) -> AsyncIterator[Served]:
    """The gateway as ``cascade serve`` runs it, its runner at hand for the drain."""
    gateway = build_gateway(load_gateway(path))
    runner = app_runner(gateway, shutdown_timeout=_CLOSE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Served(gateway, runner, runner.addresses[0][1])
    finally:
        await runner.cleanup()


def access_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "gateway.request"]


async def post(
    url: str, body: dict[str, Any], *, path: str = "/v1/chat/completions", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, json=body, headers=headers) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


def key_slots(gateway: Gateway) -> int:
    from cascade.gateway._key_gate import KeyGate

    gate = gateway.gate
    assert isinstance(gate, KeyGate)
    return sum(k.in_flight for k in gate.keys._by_index.values())


# -- a key's max_in_flight and the access line ------------------------------------------


async def test_a_key_busy_429_names_its_key_on_the_access_line(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The CHANGELOG: the access line names the request's key "also for a key's 429s":
    a key at its ``max_in_flight`` is one (the operator looks for which tenant is
    refused)."""
    openai_server.script("m1", Reply(text="slow", latency_s=30))
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url, max_in_flight=1))
    with capture_logs() as logs:
        async with served(path) as gw:
            auth = {"Authorization": f"Bearer {KEY}"}
            slow = asyncio.create_task(post(gw.url, {"model": "m", "messages": HI}, **auth))
            try:
                await eventually(lambda: openai_server.active_requests == 1, "the slow call")
                status, headers, body = await post(gw.url, {"model": "m", "messages": HI}, **auth)
                assert status == 429, body
                assert b"key_busy" in body
            finally:
                slow.cancel()
                await asyncio.gather(slow, return_exceptions=True)
            await eventually(lambda: key_slots(gw.gateway) == 0, "the key's slots back")
    busy = [e for e in access_lines(logs) if e.get("error") == "key_busy"]
    assert [(e["status"], e["key"]) for e in busy] == [(429, "team")]
    assert busy[0]["request_id"] == headers["x-request-id"]


# -- request ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "header"), [("/v1/chat/completions", "x-request-id"), ("/v1/messages", "request-id")]
)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Expect": "something-else"}, 417),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "http://evil.example"}, 403),
    ],
)
async def test_a_chat_refusal_before_the_handler_carries_a_request_id(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    path: str,
    header: str,
    headers: dict[str, str],
    status: int,
) -> None:
    """ "Every chat response, errors included, carries a request id": also the refusals the
    middleware answers before the chat handler runs, and their access line names it."""
    path_ = write_config(tmp_path / "c.toml", keyed(openai_server.url))
    body = {"model": "m", "max_tokens": 10, "messages": HI}
    with capture_logs() as logs:
        async with served(path_) as gw:
            got, answer_headers, answer = await post(
                gw.url, body, path=path, Authorization=f"Bearer {KEY}", **headers
            )
    assert got == status, answer
    request_id = answer_headers.get(header)
    assert request_id is not None and request_id.startswith("req_"), answer_headers
    [line] = access_lines(logs)
    assert line["request_id"] == request_id
    assert openai_server.request_count == 0


async def test_a_request_id_the_client_sends_is_neither_echoed_nor_logged(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.default = "hello"
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url))
    spoof = {"x-request-id": "req_" + "0" * 32, "request-id": "req_" + "1" * 32}
    with capture_logs() as logs:
        async with served(path) as gw:
            auth = {"Authorization": f"Bearer {KEY}", **spoof}
            status, headers, _ = await post(gw.url, {"model": "m", "messages": HI}, **auth)
            refused = await post(gw.url, {"model": "m", "messages": HI}, **spoof)
    assert status == 200
    assert refused[0] == 401
    ids = [headers["x-request-id"], refused[1]["x-request-id"]]
    assert not set(ids) & set(spoof.values())
    assert "request-id" not in headers  # (the other API's header is not sent either)
    assert [e["request_id"] for e in access_lines(logs)] == ids
    assert not any(v in json.dumps(logs) for v in spoof.values())


# -- the drain's cut ---------------------------------------------------------------------


def hung_tiers(url: str, how: str) -> list[dict[str, Any]]:
    if how == "hedged":
        both = tier("t", provider("a", url, "m1"), provider("b", url, "m1"))
        return [{**both, "hedge": {"after_s": 0.05}}]
    if how == "sampled":
        return [
            tier(
                "t",
                provider("a", url, "m1"),
                validators=[{"name": "self_consistency", "samples": 3, "min_agreement": 1.0}],
            )
        ]
    return [tier("t", provider("a", url, "m1"))]


@pytest.mark.parametrize("how", ["plain", "hedged", "sampled"])
async def test_the_cut_answers_every_request_in_flight_and_frees_every_slot(
    openai_server: FakeOpenAIServer, tmp_path: Path, how: str
) -> None:
    openai_server.default = Reply(fault="hang")
    cfg = keyed(openai_server.url, max_in_flight=50)
    cfg["tiers"] = hung_tiers(openai_server.url, how)
    path = write_config(tmp_path / "c.toml", cfg)
    calls = {"plain": 1, "hedged": 2, "sampled": 1}[how] * 20  # (samples: one call with n)
    with capture_logs() as logs:
        async with served(path) as gw:
            auth = {"Authorization": f"Bearer {KEY}"}
            asks = [
                asyncio.create_task(post(gw.url, {"model": "m", "messages": HI}, **auth))
                for _ in range(20)
            ]
            await eventually(lambda: openai_server.active_requests == calls, "the calls")
            await gw.cut()
            answers = await asyncio.wait_for(asyncio.gather(*asks), 10)
            await eventually(lambda: gw.gateway.in_flight == 0, "nothing in flight")
            assert key_slots(gw.gateway) == 0
    for status, headers, body in answers:
        assert status == 503, body
        assert b"shutting_down" in body
        assert headers["Retry-After"] == "1"
        assert headers["x-request-id"].startswith("req_")
    lines = access_lines(logs)
    assert [(e["status"], e.get("error"), e["key"]) for e in lines] == [
        (503, "shutting_down", "team")
    ] * 20
    await eventually(lambda: openai_server.active_requests == 0, "the upstream calls closed")


async def test_a_cut_while_the_body_trickles_answers_503(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url, body_timeout_s=30.0))
    with capture_logs() as logs:
        async with served(path) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                    b'{"model": '
                )
                await writer.drain()
                await eventually(lambda: gw.gateway.in_flight == 1, "the body arriving")
                await gw.cut()
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            finally:
                writer.close()
            assert head.startswith(b"HTTP/1.1 503 "), head
            assert b"x-request-id: req_" in head.lower()
            await eventually(lambda: gw.gateway.in_flight == 0, "nothing in flight")
            assert key_slots(gw.gateway) == 0
    [line] = access_lines(logs)
    assert (line["status"], line["error"]) == (503, "shutting_down")


async def test_a_reset_while_the_cut_ends_a_stream_gets_its_line(
    openai_server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut ends a stream whose status line is out with its error event; a client that
    resets while that event waits behind unread bytes is logged 499 (as the internal
    error's ``abandon`` is), not left without a line."""
    from cascade.gateway import _sse

    async def stuck(request: Any, response: Any, data: bytes, **_: Any) -> None:
        await response.prepare(request)  # its status line goes with the first bytes
        request.transport.write(b"x" * 8_000_000)  # more than the socket buffers hold
        await asyncio.Event().wait()  # a write that waits for the client (until the cut)

    monkeypatch.setattr(_sse, "send", stuck)
    openai_server.default = "42"
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url))
    body = json.dumps({"model": "m", "stream": True, "messages": HI}).encode()
    with capture_logs() as logs:
        async with served(path) as gw:
            loop = asyncio.get_running_loop()
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", gw.port))
                head = (
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    f"Authorization: Bearer {KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                )
                await loop.sock_sendall(sock, head.encode() + body)
                assert await asyncio.wait_for(loop.sock_recv(sock, 1), 10)  # being written
                await gw.cut()
                await asyncio.sleep(0.1)  # the error event waits behind the unread bytes
            finally:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00" * 2)
                sock.close()
            await eventually(lambda: gw.gateway.in_flight == 0, "nothing in flight")
            await eventually(lambda: bool(access_lines(logs)), "the access line", within_s=5)
            assert key_slots(gw.gateway) == 0
    lines = access_lines(logs)
    assert [(e["status"], e.get("error"), e["key"]) for e in lines] == [
        (499, "shutting_down", "team")
    ]


# -- signals to a real ``cascade serve`` -------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
async def test_sigterm_while_the_start_opens_its_routes_exits_without_listening(
    openai_server: FakeOpenAIServer, tmp_path: Path, loop: str
) -> None:
    """SIGTERM after the routes are built but while they open (here: a ``[shared]`` Redis
    that takes connections and never answers, for up to its ``timeout_s``): nothing is in
    flight, so the process exits 0 at once, never starting to listen after the signal."""
    import signal
    import time

    from .test_gateway_serve import Silent, cascade_serve, config

    silent = Silent()
    silent.server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    try:
        cfg = config(openai_server.url, "m1", "r")
        cfg["gateway"]["keys"] = keyed(openai_server.url)["gateway"]["keys"]
        cfg["shared"] = {"redis_url": f"redis://127.0.0.1:{silent.port}/0", "timeout_s": 10}
        path = write_config(tmp_path / "c.toml", cfg)
        async with cascade_serve(path, "--loop", loop, listening=False) as served:
            await eventually(
                lambda: silent.asked.is_set() or served.proc.returncode is not None,
                "the start opens its routes",
                within_s=30,
            )
            assert served.proc.returncode is None, served.lines
            served.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert await asyncio.wait_for(served.proc.wait(), 60) == 0
            waited = time.monotonic() - signalled
    finally:
        silent.server.close()
        await silent.server.wait_closed()
    assert "gateway.listening" not in served.events(), f"listened after SIGTERM ({waited:.1f} s)"
    assert served.events()[-1] == "gateway.stopped"
    assert "Traceback" not in served.stderr
    assert "Unclosed" not in served.stderr


# -- zero usage --------------------------------------------------------------------------

SAY = [{"role": "user", "content": "Say something about the weather, please. " * 10}]
TEXT = "It is sunny, with a light breeze from the west. " * 4  # 192 characters: ~48 tokens


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        {
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "prompt_tokens_details": {"cached_tokens": 500},
        },
    ],
)
async def test_samples_of_one_call_with_zero_usage_are_estimated(
    openai_server: FakeOpenAIServer, usage: dict[str, Any]
) -> None:
    """``self_consistency``'s samples from one call (``n``) reported as free: estimated,
    the prompt once; a cache count beside a zero OpenAI prompt changes nothing (OpenAI's
    ``prompt_tokens`` holds its cached part)."""
    from cascade import Cascade

    openai_server.default = Reply(text=TEXT, usage=usage)
    cfg = {
        "tiers": [
            tier(
                "a",
                provider("a", openai_server.url, "m1"),
                validators=[{"name": "self_consistency", "samples": 3, "min_agreement": 0.5}],
            )
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=SAY)
    [attempt] = result.attempts
    assert attempt.completion is not None
    answers = [attempt.completion, *attempt.samples]
    assert len(answers) >= 2
    assert openai_server.request_count == 2  # the first answer, then one call with n
    for answer in answers:
        assert answer.input_tokens >= 100  # 420 characters of prompt, once per call
        assert answer.output_tokens == len(TEXT) // 4
    assert result.cost_usd > 0


async def test_a_cut_of_many_requests_answers_each_and_exits(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Hundreds of requests in flight when the drain gives up: each gets its 503 on its
    own connection, half of them streams, and the process exits 0."""
    import signal

    from .test_gateway_serve import cascade_serve, config

    openai_server.default = Reply(fault="hang")
    count = 300
    path = write_config(
        tmp_path / "c.toml", config(openai_server.url, "m1", "r", drain_timeout_s=0.5)
    )
    async with cascade_serve(path) as served:
        url = f"http://127.0.0.1:{served.port}"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def ask(i: int) -> tuple[int, bytes]:
                body = {"model": "r", "messages": HI, "stream": i % 2 == 1}
                async with session.post(url + "/v1/chat/completions", json=body) as r:
                    return r.status, await r.read()

            asks = [asyncio.create_task(ask(i)) for i in range(count)]
            await eventually(
                lambda: openai_server.active_requests == count, "every call", within_s=30
            )
            served.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(served.proc.wait(), 30) == 0
            answers = await asyncio.wait_for(asyncio.gather(*asks, return_exceptions=True), 10)
    failed = [a for a in answers if isinstance(a, BaseException) or a[0] != 503]
    assert not failed, failed[:3]
    assert all(b"shutting_down" in a[1] for a in answers if not isinstance(a, BaseException))
    lines = [x for x in served.lines if x.get("event") == "gateway.request"]
    assert len(lines) == count
    assert {(x["status"], x.get("error")) for x in lines} == {(503, "shutting_down")}
    assert "Traceback" not in served.stderr


# -- the drain's last answers --------------------------------------------------------------


@pytest.mark.parametrize("ending", ["answered", "cut"])
async def test_an_answer_sent_while_draining_says_connection_close(
    openai_server: FakeOpenAIServer, tmp_path: Path, ending: str
) -> None:
    """The gateway closes each connection after the answer it sends while draining: the
    answer says so (``Connection: close``), or a client's pool reuses the connection for
    its next request, which then meets the close (``Server disconnected``)."""
    reply = Reply(text="done", latency_s=0.5) if ending == "answered" else Reply(fault="hang")
    openai_server.default = reply
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url))
    async with served(path) as gw:
        auth = {"Authorization": f"Bearer {KEY}"}
        ask = asyncio.create_task(post(gw.url, {"model": "m", "messages": HI}, **auth))
        await eventually(lambda: openai_server.active_requests == 1, "the call")
        gw.gateway.draining = True
        cut = asyncio.Event()
        drain = asyncio.create_task(_drain(gw.gateway, gw.runner, 10.0, cut))
        if ending == "cut":
            cut.set()  # a second SIGTERM
        status, headers, body = await asyncio.wait_for(ask, 10)
        await asyncio.wait_for(drain, 10)
    assert status == (200 if ending == "answered" else 503), body
    assert headers.get("Connection", "").lower() == "close", headers


# -- a key's slots come back, however the request ends -------------------------------------


async def raw(port: int, head: bytes, body: bytes = b"", *, leave: bool = False) -> bytes:
    """Send ``head`` and ``body`` on a connection of their own; the first line of the
    answer (``leave``: read the first bytes, then reset the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + body)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        if leave:
            writer.transport.abort()
        return line
    finally:
        writer.close()


def head_of(path: str, body: bytes, *extra: str) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: Bearer {KEY}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_every_ending_gives_the_key_its_slot_back(
    openai_server: FakeOpenAIServer, tmp_path: Path, path: str
) -> None:
    openai_server.default = Reply(text="never finished", fault="stall")
    cfg = keyed(openai_server.url, max_in_flight=1, body_timeout_s=0.2, max_body_bytes=2000)
    cfg["tiers"] = [tier("t", provider("a", openai_server.url, "m1", stream=True))]
    cfg["gateway"]["routes"] = [{"name": "r", "mode": "speculative"}]
    streamed = json.dumps({"model": "r", "max_tokens": 10, "stream": True, "messages": HI}).encode()
    async with served(write_config(tmp_path / "c.toml", cfg)) as gw:
        # a stream the client abandons
        line = await raw(gw.port, head_of(path, streamed), streamed, leave=True)
        assert line.startswith(b"HTTP/1.1 200"), line
        await eventually(lambda: key_slots(gw.gateway) == 0, "abandoned stream")
        # a body that never comes whole (408), one too large (413), one that is not JSON
        line = await raw(gw.port, head_of(path, b"x" * 100), b"{")
        assert line.startswith(b"HTTP/1.1 408"), line
        line = await raw(gw.port, head_of(path, b"x" * 5000), b"")
        assert line.startswith(b"HTTP/1.1 413"), line
        line = await raw(gw.port, head_of(path, b"not json"), b"not json")
        assert line.startswith(b"HTTP/1.1 400"), line
        # an Expect: 100-continue the client gives up on before its body
        line = await raw(gw.port, head_of(path, streamed, "Expect: 100-continue"), leave=True)
        assert line.startswith(b"HTTP/1.1 100"), line
        await eventually(lambda: key_slots(gw.gateway) == 0, "every ending")
        assert gw.gateway.in_flight == 0


async def test_clients_leaving_as_the_drain_gives_up_each_get_one_line(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Clients that reset their connections around the moment the drain gives up (some
    before, some after the cut's cancel): each request gets one access line, 499 or 503,
    nothing raises in the gateway, and it exits 0."""
    import random
    import signal

    from .test_gateway_serve import cascade_serve, config

    openai_server.default = Reply(fault="hang")
    count = 60
    path = write_config(
        tmp_path / "c.toml", config(openai_server.url, "m1", "r", drain_timeout_s=0.3)
    )
    body = json.dumps({"model": "r", "messages": HI}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    rng = random.Random(69)
    async with cascade_serve(path) as served:
        conns = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(count)]
        for _, writer in conns:
            writer.write(head + body)
        await eventually(lambda: openai_server.active_requests == count, "every call")
        served.proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def leave(writer: asyncio.StreamWriter, at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            writer.transport.abort()

        # the cut comes about 0.3 s after the signal
        await asyncio.gather(*(leave(w, 0.25 + rng.random() * 0.1) for _, w in conns[: count // 2]))
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
        for _, writer in conns:
            writer.close()
    lines = [x for x in served.lines if x.get("event") == "gateway.request"]
    assert len(lines) == count
    assert {x["status"] for x in lines} <= {499, 503}
    assert sum(x["status"] == 503 for x in lines) >= count // 2
    assert "Traceback" not in served.stderr
    assert "Task exception was never retrieved" not in served.stderr


async def test_a_cut_while_requests_wait_on_a_paused_redis_in_admission(
    openai_server: FakeOpenAIServer, tmp_path: Path, redis_server: Any
) -> None:
    """Requests waiting in the key gate's admission on a ``[shared]`` Redis that stopped
    answering (SIGSTOP) when the drain gives up: each gets its 503, and the process exits
    0 within the Redis ``timeout_s`` bound, not hanging on the paused Redis."""
    import signal
    import time

    from .test_gateway_serve import cascade_serve, config

    openai_server.default = "hello"
    cfg = config(openai_server.url, "m1", "r", drain_timeout_s=0.3)
    keys = keyed(openai_server.url, max_in_flight=10)["gateway"]["keys"]
    keys["entries"][0]["usd_per_day"] = 100.0
    cfg["gateway"]["keys"] = keys
    cfg["shared"] = {"redis_url": redis_server.url, "key_prefix": "r69", "timeout_s": 3}
    path = write_config(tmp_path / "c.toml", cfg)
    async with cascade_serve(path) as served:
        url = f"http://127.0.0.1:{served.port}"
        auth = {"Authorization": f"Bearer {KEY}"}
        status, _, body = await post(url, {"model": "r", "messages": HI}, **auth)
        assert status == 200, body  # Redis up: admitted through it
        redis_server.pause()
        try:
            asks = [
                asyncio.create_task(post(url, {"model": "r", "messages": HI}, **auth))
                for _ in range(5)
            ]
            await asyncio.sleep(0.3)  # each waits for Redis in its admission
            served.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            assert await asyncio.wait_for(served.proc.wait(), 30) == 0
            took = time.monotonic() - signalled
            answers = await asyncio.wait_for(asyncio.gather(*asks), 10)
        finally:
            redis_server.resume()
    assert [a[0] for a in answers] == [503] * 5, answers
    assert took < 15, took
    assert "Traceback" not in served.stderr
