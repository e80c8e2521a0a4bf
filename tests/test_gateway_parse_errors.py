"""Requests aiohttp's HTTP parser refuses before any handler runs (a header line or the
request line too long, too many headers, a malformed request line, bad chunked framing,
an invalid header name, a bad Content-Length) are answered in JSON both APIs' SDKs raise
as their error, never aiohttp's plain text quoting the bytes it refused (a header line too
long may hold a key); oversized headers are 431, a request line too long 414; the
connection closes after the answer; each gets a ``gateway.request`` access line naming no
byte of the request."""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from cascade.testing import FakeOpenAIServer

from .gateway import Running, serving, write_config
from .helpers import provider, tier
from .test_gateway_serve import cascade_serve

pytestmark = pytest.mark.anyio

SECRET = b"sk-live-PARSEREFUSED0123456789"
"""In the bytes each request is refused for: never in an answer nor a log line."""
CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
HEAD = b"Host: 127.0.0.1\r\nContent-Type: application/json\r\n"
LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
]


def _line(path: str) -> bytes:
    return b"POST " + path.encode() + b" HTTP/1.1\r\n"


KINDS: dict[str, tuple[Callable[[str], bytes], int, str]] = {
    # name: (the request for a path, status, error code)
    "header_value_too_long": (
        lambda p: _line(p) + HEAD + b"Authorization: Bearer " + SECRET + b"x" * 9000 + b"\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "header_name_too_long": (
        lambda p: _line(p) + HEAD + b"X-" + SECRET + b"n" * 9000 + b": 1\r\n\r\n",
        431,
        "headers_too_large",
    ),
    "too_many_headers": (
        lambda p: (
            _line(p) + HEAD + b"".join(b"X-H%d: %s\r\n" % (i, SECRET) for i in range(200)) + b"\r\n"
        ),
        431,
        "headers_too_large",
    ),
    "malformed_request_line": (
        lambda p: b"POST " + p.encode() + b" HTTP/1.1 " + SECRET + b"\r\n" + HEAD + b"\r\n",
        400,
        "malformed_request",
    ),
    "bad_chunked_encoding": (
        lambda p: (
            _line(p)
            + HEAD
            + b"Transfer-Encoding: chunked\r\n\r\nzz"
            + SECRET
            + b"\r\n{}\r\n0\r\n\r\n"
        ),
        400,
        "malformed_request",
    ),
    "invalid_header_name": (
        lambda p: _line(p) + HEAD + b"Bad(Name: " + SECRET + b"\r\n\r\n",
        400,
        "malformed_request",
    ),
    "bad_content_length": (
        lambda p: _line(p) + HEAD + b"Content-Length: 12" + SECRET + b"\r\n\r\n{}",
        400,
        "malformed_request",
    ),
    "url_too_long": (
        lambda p: (
            b"POST "
            + p.encode()
            + b"?key="
            + SECRET
            + b"u" * 9000
            + b" HTTP/1.1\r\n"
            + HEAD
            + b"\r\n"
        ),
        414,
        "uri_too_long",
    ),
}


class Answer:
    """One response read off a raw connection, and whether the server closed it after."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes, closed: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.closed = closed
        self.raw = b""


async def _answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:] if x)
    }
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    answer = Answer(status, headers, body, closed=False)
    answer.raw = head + body
    return answer


async def send(port: int, *parts: bytes, pause_s: float = 0.0) -> Answer:
    """Send ``parts`` on a fresh connection (``pause_s`` apart), read the one answer, then
    whether the server closes the connection (EOF within 10 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, part in enumerate(parts):
            if i and pause_s:
                await asyncio.sleep(pause_s)
            writer.write(part)
            try:
                await writer.drain()
            except ConnectionError:  # the server answered and closed before reading it all
                break
        answer = await _answer(reader)
        try:
            rest = await asyncio.wait_for(reader.read(), 10)
        except ConnectionError:
            rest = b""
        answer.closed = rest == b"" and reader.at_eof()
        return answer
    finally:
        writer.close()


def access_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "gateway.request"]


@pytest.fixture
async def gateway(openai_server: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Running]:
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1"))],
        # a body that never comes would be answered 408 after this: well past every read
        "gateway": {"body_timeout_s": 60},
    }
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        yield gw


def check_format(answer: Answer, status: int, code: str) -> None:
    assert answer.status == status, answer.raw[:300]
    assert answer.headers["content-type"].split(";")[0] == "application/json"
    body = json.loads(answer.body)
    # OpenAI's error object in Anthropic's envelope: what both SDKs read
    assert body == {
        "type": "error",
        "error": {
            "message": body["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": code,
        },
    }
    assert answer.closed
    assert SECRET not in answer.raw
    assert b"Traceback" not in answer.raw


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
@pytest.mark.parametrize("kind", list(KINDS))
async def test_a_request_the_parser_refuses_gets_json_both_sdks_read(
    gateway: Running, openai_server: FakeOpenAIServer, kind: str, path: str
) -> None:
    build, status, code = KINDS[kind]
    with capture_logs() as logs:
        answer = await send(gateway.port, build(path))
    check_format(answer, status, code)
    [line] = access_lines(logs)
    assert (line["method"], line["path"], line["status"], line["error"]) == (
        "_OTHER",
        None,
        status,
        code,
    )
    assert SECRET.decode() not in repr(logs)
    assert openai_server.request_count == 0


async def test_a_request_line_with_no_path_gets_json(gateway: Running) -> None:
    with capture_logs() as logs:
        answer = await send(gateway.port, SECRET + b"\r\n" + HEAD + b"\r\n")
    check_format(answer, 400, "malformed_request")
    [line] = access_lines(logs)
    assert (line["method"], line["path"], line["status"], line["error"]) == (
        "_OTHER",
        None,
        400,
        "malformed_request",
    )
    assert SECRET.decode() not in repr(logs)


async def test_a_path_no_route_serves_is_not_logged_as_sent(gateway: Running) -> None:
    """The access line names a route's path, never the client's text (a key pasted in a
    URL): a path no route serves is ``null``."""
    path = "/v1/" + SECRET.decode()
    with capture_logs() as logs:
        answer = await send(gateway.port, KINDS["header_value_too_long"][0](path))
    check_format(answer, 431, "headers_too_large")
    [line] = access_lines(logs)
    assert (line["path"], line["status"]) == (None, 431)
    assert SECRET.decode() not in repr(logs)


@pytest.mark.parametrize("anyio_backend", LOOPS)
async def test_a_refusal_on_a_kept_alive_connection_is_json(
    gateway: Running,
) -> None:
    """A first request answered, then on the same connection a second one refused: JSON,
    the connection closed after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    try:
        with capture_logs() as logs:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            first = await _answer(reader)
            writer.write(KINDS["too_many_headers"][0](MESSAGES))
            await writer.drain()
            second = await _answer(reader)
            assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()
    assert first.status == 200
    assert second.status == 431
    assert json.loads(second.body)["error"]["code"] == "headers_too_large"
    assert [(e["path"], e["status"]) for e in access_lines(logs)] == [
        ("/healthz", 200),
        (None, 431),
    ]


async def test_curl_with_a_header_too_large_gets_a_431_in_json(gateway: Running) -> None:
    secret = SECRET.decode() + "c" * 9000
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "--silent",
        "--show-error",
        "--include",
        "--max-time",
        "10",
        "-H",
        "Content-Type: application/json",
        "-H",
        f"x-api-key: {secret}",
        "--data",
        "{}",
        f"{gateway.url}{MESSAGES}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split()[1] == b"431"
    assert b"content-type: application/json" in head.lower()
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert SECRET not in out


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_cascade_serve_refuses_in_json_and_logs_no_byte_of_it(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parser: str,
) -> None:
    """``cascade serve`` as run, with aiohttp's C parser and its pure-Python one (PyPy,
    ``AIOHTTP_NO_EXTENSIONS``): each kind of refusal, and bad chunked framing after the
    headers (the Python parser fails the body with its own error, quoting the bytes: a
    400; the C parser drops that body without a word: the body's timer ends the wait)."""
    if parser == "python":
        monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1"))],
        "gateway": {"body_timeout_s": 1},
    }
    got: list[tuple[str, int]] = []
    async with cascade_serve(write_config(tmp_path / "c.toml", config)) as served:
        for kind, (build, status, code) in KINDS.items():
            answer = await send(served.port, build(MESSAGES))
            check_format(answer, status, code)
            got.append((kind, answer.status))
        head = _line(MESSAGES) + HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            writer.write(head)
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(b"zz" + SECRET + b"\r\n")
            await writer.drain()
            split = await _answer(reader)  # (/v1/messages: Anthropic's error format)
        finally:
            writer.close()
        late = (400 if parser == "python" else 408, "invalid_request_error")
        assert (split.status, json.loads(split.body)["error"]["type"]) == late, split.raw
        assert SECRET not in split.raw
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    access = [e for e in served.lines if e.get("event") == "gateway.request"]
    assert [(e["path"], e["status"]) for e in access] == [(None, s) for _, s in got] + [
        (MESSAGES, late[0])
    ]
    logged = served.stderr + json.dumps(served.lines)
    assert SECRET.decode() not in logged
    assert "Traceback" not in logged


async def test_aiohttps_internals_are_as_the_gateways_connection_expects() -> None:
    """What ``_protocol.py`` builds on that aiohttp does not document, checked loudly: an
    aiohttp that renamed or reshaped these would break the gateway's answers to refused
    requests (or answer them in aiohttp's plain text again)."""
    params = list(inspect.signature(web.RequestHandler.handle_error).parameters)
    assert params == ["self", "request", "status", "exc", "message"]
    assert inspect.iscoroutinefunction(web.AppRunner._make_server)

    async def nothing(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response()

    server = web.Server(nothing, handler_cancellation=True, keepalive_timeout=7)
    assert server._kwargs == {"keepalive_timeout": 7}
    assert server._loop is asyncio.get_running_loop()
    assert (server.request_handler, server.handler_cancellation) == (nothing, True)


async def test_both_sdks_raise_the_refusal_as_their_apis_error(gateway: Running) -> None:
    """The one body both SDKs read: each raises its status error with the message."""
    import anthropic
    import openai

    huge = {"x-big": SECRET.decode() + "h" * 9000}
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="k", max_retries=0, default_headers=huge
    ) as client:
        with pytest.raises(openai.APIStatusError) as oai:
            await client.chat.completions.create(model="cascade", messages=[])
    async with anthropic.AsyncAnthropic(
        base_url=gateway.url, api_key="k", max_retries=0, default_headers=huge
    ) as aclient:
        with pytest.raises(anthropic.APIStatusError) as ant:
            await aclient.messages.create(model="cascade", max_tokens=5, messages=[])
    assert oai.value.status_code == ant.value.status_code == 431
    assert oai.value.request_id is not None and oai.value.request_id.startswith("req_")
    assert ant.value.request_id is not None and ant.value.request_id.startswith("req_")
    assert oai.value.code == "headers_too_large"
    assert "too large" in oai.value.message and "too large" in ant.value.message
    assert SECRET.decode() not in oai.value.message + ant.value.message


async def test_an_aiohttp_without_the_servers_internals_still_serves(
    gateway: Running, monkeypatch: pytest.MonkeyPatch, openai_server: FakeOpenAIServer
) -> None:
    """Should a later aiohttp rename what ``GatewayRunner`` reads, the gateway starts all
    the same (a warning; parse refusals in aiohttp's text), rather than not at all."""
    from cascade.gateway import _protocol

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise AttributeError("'Server' object has no attribute '_kwargs'")

    monkeypatch.setattr(_protocol, "_Server", broken)
    from cascade.gateway._server import app_runner

    runner = app_runner(gateway.gateway, shutdown_timeout=1)
    with capture_logs() as logs:
        await runner.setup()
    try:
        assert type(runner.server) is web.Server
        assert any(e["event"] == "gateway.parse_refusals_plain" for e in logs)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("path", [CHAT, MESSAGES])
async def test_a_content_encoding_the_gateway_cannot_decode_is_a_415(
    gateway: Running, openai_server: FakeOpenAIServer, path: str
) -> None:
    """``br`` without the brotli package: 415, not a 400 calling the request invalid HTTP."""
    try:
        import brotli  # type: ignore[import-not-found]  # noqa: F401

        pytest.skip("brotli is installed: br decodes")
    except ImportError:
        pass
    body = b'{"model": "cascade", "messages": []}'
    request = (
        _line(path)
        + HEAD
        + b"Content-Encoding: br\r\nContent-Length: %d\r\n\r\n" % len(body)
        + body
    )
    with capture_logs() as logs:
        answer = await send(gateway.port, request)
    check_format(answer, 415, "unsupported_encoding")
    [line] = access_lines(logs)
    assert (line["status"], line["error"]) == (415, "unsupported_encoding")
    assert openai_server.request_count == 0
