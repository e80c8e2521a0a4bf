"""A hostile client against the gateway's leaner request path (issue #13, c=1 work): no
timer around a body that came with its headers nor around a write the transport's buffer
takes whole, one middleware, no server span when it would be a no-op, uvloop, and the
once-a-second log stamper. Each test is an attack that should fail to hurt it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from structlog.testing import capture_logs

from cascade.gateway import hash_key
from cascade.testing import FakeClock, FakeOpenAIServer, Reply

from .gateway import Running, serving, write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


def one_tier(url: str, **gateway: Any) -> dict[str, Any]:
    return {"tiers": [tier("t", provider("a", url, "m1"))], "gateway": gateway or None}


def head(n: int | None, *, extra: bytes = b"") -> bytes:
    length = b"" if n is None else b"Content-Length: %d\r\n" % n
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n" + extra + length + b"\r\n"
    )


def chat_body(**extra: Any) -> bytes:
    return json.dumps({"model": "cascade", "messages": HI, **extra}).encode()


async def send(
    writer: asyncio.StreamWriter, first: bytes, payload: bytes, *, split_at: int | None
) -> None:
    """The head and the payload in one packet, or (``split_at``) the payload's first bytes
    with the head and the rest in a later packet."""
    if split_at is None:
        writer.write(first + payload)
    else:
        writer.write(first + payload[:split_at])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(payload[split_at:])
    await writer.drain()


async def status_of(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    return int(line.split()[1])


async def response_of(reader: asyncio.StreamReader) -> tuple[int, Any]:
    """The status and JSON body of a response with a Content-Length."""
    status = await status_of(reader)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n") if b": " in line)
    body = await asyncio.wait_for(reader.readexactly(int(fields[b"Content-Length"])), 10)
    return status, json.loads(body)


@pytest.fixture
async def gw(openai_server: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Running]:
    openai_server.default = "ok"
    config = one_tier(openai_server.url, body_timeout_s=0.3, max_body_bytes=4096)
    async with serving(write_config(tmp_path / "c.toml", config)) as g:
        yield g


# -- a body that never comes whole ---------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", LOOPS)
@pytest.mark.parametrize("how", ["short", "nothing", "chunked_stall", "trickle"])
async def test_a_body_that_never_comes_whole_is_408_and_logged_once(
    gw: Running, openai_server: FakeOpenAIServer, how: str
) -> None:
    body = chat_body()
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            if how == "short":
                writer.write(head(len(body) + 10) + body)
            elif how == "nothing":
                writer.write(head(len(body)))
            elif how == "chunked_stall":
                writer.write(
                    head(None, extra=b"Transfer-Encoding: chunked\r\n") + b"%x\r\n" % 5 + body[:5]
                )
            else:
                writer.write(head(len(body)) + body[:1])
            await writer.drain()
            if how == "trickle":
                for b in body[1:20]:
                    await asyncio.sleep(0.05)
                    writer.write(bytes([b]))
            assert await status_of(reader) == 408
        finally:
            writer.close()
        await eventually(lambda: gw.gateway.in_flight == 0, "the slot freed")
    access = [e for e in logs if e["event"] == "gateway.request"]
    assert [(e["status"], e.get("error")) for e in access] == [(408, "body_timeout")]
    assert openai_server.request_count == 0


# -- a client that stops reading --------------------------------------------------------


@pytest.mark.parametrize("anyio_backend", LOOPS)
@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_stops_reading_is_cut_off_on_either_loop(
    openai_server: FakeOpenAIServer, tmp_path: Path, stream: bool
) -> None:
    openai_server.default = Reply(text="y" * 3_000_000, chunk_chars=65536)
    route = {"name": "cascade", "default": True, "mode": "speculative"}
    config = one_tier(openai_server.url, routes=[route], write_timeout_s=0.5)
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
            _reader, writer = await asyncio.open_connection(sock=sock)
            writer.transport.pause_reading()  # type: ignore[attr-defined]
            writer.write(
                head(None).replace(b"\r\n\r\n", b"\r\n")
                + b"Content-Length: %d\r\n\r\n" % len(chat_body(stream=stream))
                + chat_body(stream=stream)
            )
            await writer.drain()
            try:
                await eventually(lambda: openai_server.request_count == 1, "the call")
                await eventually(lambda: gw.gateway.in_flight == 0, "cut off", within_s=8)
            finally:
                writer.close()
    access = [e for e in logs if e["event"] == "gateway.request"]
    assert [e["status"] for e in access] == [499]


# -- the body limit, whichever packet the body comes in ----------------------------------


def padded(size: int) -> bytes:
    body = chat_body()
    return body[:-1] + b" " * (size - len(body)) + b"}"


@pytest.mark.parametrize("anyio_backend", LOOPS)
@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("later", [False, True])
@pytest.mark.parametrize(("size", "status"), [(4096, 200), (4097, 413)])
async def test_a_body_at_or_over_the_limit_in_any_packet(
    gw: Running, openai_server: FakeOpenAIServer, chunked: bool, later: bool, size: int, status: int
) -> None:
    body = padded(size)
    assert len(body) == size
    if chunked:
        first = head(None, extra=b"Transfer-Encoding: chunked\r\n")
        payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    else:
        first = head(len(body))
        payload = body
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            await send(writer, first, payload, split_at=10 if later else None)
            assert await status_of(reader) == status
        finally:
            writer.close()
        await eventually(lambda: gw.gateway.in_flight == 0, "the slot freed")
    access = [e["status"] for e in logs if e["event"] == "gateway.request"]
    assert access == [status]


# -- pipelined and half-closed clients ---------------------------------------------------


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_pipelined_requests_are_each_answered_in_order(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    bodies = [chat_body(), b"{not json", chat_body(stream=True)]
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(b"".join(head(len(b)) + b for b in bodies))
            await writer.drain()
            got = []
            for _ in bodies:
                got.append(await status_of(reader))
                headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                fields = dict(
                    line.split(b": ", 1) for line in headers.split(b"\r\n") if b": " in line
                )
                if b"Content-Length" in fields:
                    await reader.readexactly(int(fields[b"Content-Length"]))
                else:  # chunked
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
        finally:
            writer.close()
    assert got == [200, 400, 200]
    access = [e["status"] for e in logs if e["event"] == "gateway.request"]
    assert access == [200, 400, 200]


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_client_that_half_closes_is_a_client_that_left(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    """A FIN after the request cannot be told from a client that closed its socket: the
    gateway treats both as gone (its run cancelled at once, the slot freed, one 499
    line), as before the leaner path; it never hangs on the half-open connection."""
    openai_server.default = Reply(text="slow", latency_s=5.0)
    body = chat_body()
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(head(len(body)) + body)
            await writer.drain()
            await eventually(lambda: openai_server.active_requests == 1, "the call")
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b""
        finally:
            writer.close()
        await eventually(lambda: gw.gateway.in_flight == 0, "the slot freed")
        await eventually(lambda: openai_server.active_requests == 0, "the call cancelled")
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [499]


@pytest.mark.parametrize("anyio_backend", LOOPS)
@pytest.mark.parametrize("later", [False, True])
@pytest.mark.parametrize("encoding", [b"gzip", b"deflate"])
async def test_a_body_that_cannot_be_decompressed_is_400_once_not_a_logged_500(
    gw: Running,
    openai_server: FakeOpenAIServer,
    caplog: pytest.LogCaptureFixture,
    encoding: bytes,
    later: bool,
) -> None:
    """A ``Content-Encoding`` body that does not decode is the client's error: 400 in
    the API's format (not a 500 ``internal_error`` and its traceback in the log, which
    any client could make the operator's alerts fire with), logged once, the connection
    closed after it (aiohttp would otherwise answer the same request a second time, or
    log its own traceback reading what is left of the body)."""
    payload = b"this is not " + encoding
    first = head(len(payload), extra=b"Content-Encoding: " + encoding + b"\r\n")
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            await send(writer, first, payload, split_at=1 if later else None)
            status, body = await response_of(reader)
            rest = await asyncio.wait_for(reader.read(), 5)  # closed: no second response
        finally:
            writer.close()
        await eventually(lambda: gw.gateway.in_flight == 0, "the slot freed")
    assert status == 400
    assert body["error"]["code"] == "invalid_body"
    assert rest == b""
    assert [(e["status"], e.get("error")) for e in logs if e["event"] == "gateway.request"] == [
        (400, "invalid_body")
    ]
    assert not [e for e in logs if e["event"] == "gateway.internal_error"]
    assert not [r for r in caplog.records if r.exc_info]
    assert openai_server.request_count == 0


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_chunked_body_whose_framing_breaks_later_is_still_cut_off(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    """aiohttp does not tell the handler that a chunked body's framing broke after the
    headers: the body's timer (kept: the body had not come whole) ends the wait."""
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(head(None, extra=b"Transfer-Encoding: chunked\r\n") + b"3")
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(b"\r\nabcXY0\r\n\r\n")
            status, _body = await response_of(reader)
        finally:
            writer.close()
    assert status == 408
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [408]


# -- traceparent, good and bad ----------------------------------------------------------

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
GOOD = f"00-{TRACE}-{PARENT}-01"


@pytest.mark.parametrize(
    ("values", "parent"),
    [
        pytest.param([GOOD], PARENT, id="good"),
        pytest.param(["garbage"], None, id="malformed"),
        pytest.param([GOOD.upper()], None, id="uppercase"),
        pytest.param([f"00-{'0' * 32}-{PARENT}-01"], None, id="zero-trace"),
        pytest.param([f"ff-{TRACE}-{PARENT}-01"], None, id="version-ff"),
        pytest.param([GOOD + "-x"], None, id="v00-with-more"),
        pytest.param([f"01-{TRACE}-{PARENT}-01-later"], PARENT, id="future-version"),
        pytest.param([f"01-{TRACE}-{PARENT}-01-" + "x" * 7000], None, id="oversized"),
        pytest.param([" " * 4000 + GOOD + " " * 3000], PARENT, id="padded"),
        pytest.param([GOOD, f"00-{TRACE}-{'1' * 16}-01"], PARENT, id="repeated"),
        pytest.param(["garbage", GOOD], None, id="repeated-bad-first"),
    ],
)
async def test_a_traceparent_good_or_bad_gets_one_server_span_parent_of_the_run(
    openai_server: FakeOpenAIServer, tmp_path: Path, values: list[str], parent: str | None
) -> None:
    exporter = InMemorySpanExporter()
    provider_ = TracerProvider()
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    openai_server.default = "ok"
    path = write_config(tmp_path / "c.toml", one_tier(openai_server.url))
    headers = [("traceparent", v) for v in values] + [("tracestate", "k=" + "v" * 4000)]
    try:
        async with (
            serving(path, tracer_provider=provider_) as gw,
            aiohttp.ClientSession() as session,
            session.post(
                f"{gw.base_url}/chat/completions",
                data=chat_body(),
                headers=[("Content-Type", "application/json"), *headers],
            ) as r,
        ):
            assert r.status == 200
            trace_id = r.headers["x-cascade-trace-id"]
            await r.read()
    finally:
        provider_.shutdown()
    servers = [s for s in exporter.get_finished_spans() if s.name.startswith("POST ")]
    assert len(servers) == 1
    server = servers[0]
    assert server.context is not None
    assert format(server.context.trace_id, "032x") == trace_id
    if parent is None:
        assert server.parent is None
        assert trace_id != TRACE
    else:
        assert server.parent is not None
        assert format(server.parent.span_id, "016x") == parent
        assert trace_id == TRACE
    (run,) = [s for s in exporter.get_finished_spans() if s.name == "cascade.run"]
    assert run.parent is not None
    assert run.parent.span_id == server.context.span_id


@pytest.mark.parametrize(
    "values", [[], [GOOD], ["garbage"], [GOOD + "-" + "x" * 7000], [GOOD, "garbage"]]
)
async def test_without_a_tracer_provider_any_traceparent_is_served_untraced(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    values: list[str],
) -> None:
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)
    openai_server.default = "ok"
    path = write_config(tmp_path / "c.toml", one_tier(openai_server.url))
    with capture_logs() as logs:
        async with (
            serving(path) as gw,
            aiohttp.ClientSession() as session,
            session.post(
                f"{gw.base_url}/chat/completions",
                data=chat_body(stream=True),
                headers=[("Content-Type", "application/json")]
                + [("traceparent", v) for v in values],
            ) as r,
        ):
            assert r.status == 200
            assert "x-cascade-trace-id" not in r.headers
            assert b"data: [DONE]" in await r.read()
    access = [e for e in logs if e["event"] == "gateway.request"]
    assert [(e["status"], "trace_id" in e) for e in access] == [(200, False)]


# -- every stage's error, through the one middleware -------------------------------------

KEY = "sk-attack3-0123456789abcdef"


@pytest.mark.parametrize(
    ("stage", "status", "code"),
    [
        ("host", 403, "host_not_allowed"),
        ("no_key", 401, None),
        ("too_large", 413, "body_too_large"),
        ("upstream_429", 429, "upstream_rate_limited"),
        ("upstream_500", 502, "all_providers_failed"),
        ("deadline", 504, "deadline_exceeded"),
        ("bug", 500, "internal_error"),
    ],
)
async def test_every_stages_error_is_openai_format_logged_once_without_a_key(
    openai_server: FakeOpenAIServer, tmp_path: Path, stage: str, status: int, code: str | None
) -> None:
    from .test_gateway_errors import BrokenGate

    exporter = InMemorySpanExporter()
    provider_ = TracerProvider()
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    clock = FakeClock()
    openai_server.default = "ok"
    if stage == "upstream_429":
        openai_server.script("m1", Reply(status=429, retry_after_s=3))
    elif stage == "upstream_500":
        openai_server.script("m1", Reply(status=500))
    elif stage == "deadline":
        openai_server.script("m1", Reply(fault="hang"))
    keys = {"entries": [{"name": "k", "sha256": hash_key(KEY)}]}
    config = one_tier(openai_server.url, keys=keys, max_body_bytes=4096, max_deadline_s=5)
    path = write_config(tmp_path / "c.toml", config)
    kwargs: dict[str, Any] = {"tracer_provider": provider_, "clock": clock}
    if stage == "bug":
        kwargs["gate"] = BrokenGate()
    headers = {"traceparent": GOOD}
    if stage == "host":
        headers["Host"] = "evil.example"
    api_key = "sk-not-a-key-of-this-gateway" if stage == "no_key" else KEY
    content = "x" * 5000 if stage == "too_large" else "Hi"
    with capture_logs() as logs:
        async with (
            serving(path, **kwargs) as gw,
            openai.AsyncOpenAI(base_url=gw.base_url, api_key=api_key, max_retries=0) as c,
        ):
            call = asyncio.create_task(
                c.chat.completions.create(
                    model="cascade",
                    messages=[{"role": "user", "content": content}],
                    extra_headers=headers,
                )
            )
            if stage == "deadline":
                await eventually(lambda: openai_server.active_requests == 1, "the call")
                clock.advance(5)
            with pytest.raises(openai.APIStatusError) as caught:
                await call
    provider_.shutdown()
    assert caught.value.status_code == status
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["code"] == code
    text = caught.value.response.text
    assert "Traceback" not in text
    assert KEY not in text
    access = [e for e in logs if e["event"] == "gateway.request"]
    # every request is logged once: the guard's refusals (before any handler ran) by
    # the app's middleware, with the route's path and the refusal's code
    assert [e["status"] for e in access] == [status]
    assert access[0]["path"] == "/v1/chat/completions"
    if code is not None:
        assert access[0]["error"] == code
    spans = exporter.get_finished_spans()
    # the server span is the handler's: none for a request refused before it
    assert len([s for s in spans if s.name.startswith("POST ")]) == (stage != "host")
    everything = repr(logs) + repr([(s.name, s.attributes, s.events) for s in spans])
    assert KEY not in everything
    assert "sk-not-a-key" not in everything
    assert "sk-live" not in everything


# -- the once-a-second stamper ----------------------------------------------------------


def test_the_stamper_writes_structlogs_text_across_seconds_and_a_clock_going_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """structlog's own ``TimeStamper(fmt="iso", utc=True)`` and the gateway's, on one
    clock that crosses second boundaries by a nanosecond, stands still, and goes back
    (NTP stepping it) into a second the cache held before, and before 1970."""
    import datetime as dt
    import time
    import types

    import structlog

    from cascade.gateway._log_writer import UTCStamper

    s = 1_764_654_000 * 10**9
    clock = [
        s - 1, s, s, s + 1, s + 999, s + 1000, s + 999_999_999, s + 10**9,
        s - 1, s + 10**9 + 1, s - 10**9, s - 10**9 + 500_000_000, s, -1, 0, -(10**9),
        s + 86_400 * 10**9 * 366 + 123_456_789,
    ]  # fmt: skip
    now_ns = [0]

    class Clocked(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Clocked:  # type: ignore[override]
            epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
            return epoch + dt.timedelta(microseconds=now_ns[0] // 1000)  # type: ignore[return-value]

    shim = types.SimpleNamespace(datetime=Clocked, timezone=dt.timezone)
    monkeypatch.setattr(structlog.processors, "datetime", shim)
    monkeypatch.setattr(time, "time_ns", lambda: now_ns[0])
    theirs = structlog.processors.TimeStamper(fmt="iso", utc=True)
    ours = UTCStamper()
    for ns in clock:
        now_ns[0] = ns
        expected = theirs(None, "info", {})["timestamp"]
        assert ours(None, "info", {})["timestamp"] == expected, ns


@pytest.mark.parametrize("anyio_backend", LOOPS)
@pytest.mark.parametrize("when", ["mid_body", "mid_run"])
async def test_a_client_that_resets_is_499_once_never_an_internal_error(
    gw: Running, openai_server: FakeOpenAIServer, when: str
) -> None:
    openai_server.default = Reply(text="slow", latency_s=5.0)
    body = chat_body()
    with capture_logs() as logs:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
        sent = head(len(body)) + (body[:5] if when == "mid_body" else body)
        await asyncio.get_running_loop().sock_sendall(sock, sent)
        if when == "mid_body":
            await asyncio.sleep(0.05)
        else:
            await eventually(lambda: openai_server.active_requests == 1, "the call")
        # SO_LINGER 0: the close is a RST
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()
        await eventually(lambda: gw.gateway.in_flight == 0, "the slot freed")
        await eventually(lambda: openai_server.active_requests == 0, "no call left")
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [499]
    assert not [e for e in logs if e["event"] == "gateway.internal_error"]


@pytest.mark.parametrize("anyio_backend", LOOPS)
@pytest.mark.parametrize("what", ["healthz", "not_found", "no_key"])
async def test_pipelined_small_answers_to_a_client_that_never_reads_are_cut_off(
    openai_server: FakeOpenAIServer, tmp_path: Path, what: str
) -> None:
    """Answers the handlers return (probes, 404s, every error) are written by aiohttp
    once the handler is done, with no timer: a client that pipelines thousands of small
    requests and reads nothing fills the socket, and the connection then waits forever
    in aiohttp's write, holding its descriptor and its queued requests."""
    keys = {"entries": [{"name": "k", "sha256": hash_key(KEY)}]}
    config = one_tier(openai_server.url, keys=keys, write_timeout_s=0.3, idle_timeout_s=60)
    if what == "healthz":
        one = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    elif what == "not_found":
        one = b"GET /nowhere" + b"x" * 200 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    else:
        one = head(2) + b"{}"
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", gw.port))
        try:
            sent = 0
            stop = loop.time() + 20
            while loop.time() < stop:  # until the server stops taking requests
                try:
                    sent += sock.send(one * 64)
                except BlockingIOError:
                    if not await writable(sock, within_s=0.5):
                        break
                except OSError:
                    break
            # once the server's socket buffers are full (some 17,000 answers on loopback),
            # its next write waits; write_timeout_s later it must close the connection
            # (which our next send then meets), not wait for us for ever
            with pytest.raises((ConnectionResetError, BrokenPipeError)):
                await sending_until_refused(sock, within_s=20)
        finally:
            sock.close()


async def sending_until_refused(sock: socket.socket, *, within_s: float) -> None:
    """Send a blank line (harmless between requests) now and then, until the server's
    end of the connection is gone (which raises) or ``within_s`` seconds are over."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + within_s
    while loop.time() < stop:
        with contextlib.suppress(BlockingIOError):
            sock.send(b"\r\n")
        await asyncio.sleep(0.05)


async def writable(sock: socket.socket, *, within_s: float) -> bool:
    """Whether ``sock`` can take more within ``within_s`` seconds, the loop (the gateway's
    too) running meanwhile: a ``select`` that blocked the loop froze the server it waited
    on, and a server slow to read (a loaded machine) was taken for one that stopped, before
    the client had sent enough to fill the server's writes (then never cut off)."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    loop.add_writer(sock.fileno(), lambda: ready.done() or ready.set_result(None))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready, within_s)
    finally:
        loop.remove_writer(sock.fileno())
    return ready.done()
