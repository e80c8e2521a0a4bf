"""A hostile client's request bodies against the gateway (a fourth pass): what a request
may ask of the gateway's own CPU (its ``response_format`` schema) and of its arithmetic
(numbers no model takes). Each test is an attack that should fail to hurt it."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from cascade import ConfigError
from cascade._types import MAX_REPORTED_TOKENS
from cascade.gateway import hash_key
from cascade.testing import FakeOpenAIServer, Reply
from cascade.validators import JsonSchemaValidator

from .gateway import Running, serving, write_config
from .helpers import provider, tier
from .leaks import eventually, in_use

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
KEY = "sk-attack4"


def one_tier(url: str, **gateway: Any) -> dict[str, Any]:
    return {"tiers": [tier("t", provider("a", url, "m1"))], "gateway": gateway or None}


async def post(gw: Running, path: str, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=30)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{gw.url}{path}", json=body, headers=headers) as r,
    ):
        return r.status, json.loads(await r.read())


def head(path: str, length: int, *extra: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [*extra, f"Content-Length: {length}", "", ""]
    return "\r\n".join(lines).encode()


async def status_line(reader: asyncio.StreamReader) -> int:
    line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 10)
    return int(line.split()[1])


async def answer_of(reader: asyncio.StreamReader) -> tuple[int, Any]:
    status = await status_line(reader)
    fields = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = next(
        int(line.split(b":", 1)[1])
        for line in fields.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return status, json.loads(await asyncio.wait_for(reader.readexactly(length), 10))


@pytest.fixture
async def gw(openai_server: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Running]:
    openai_server.default = "ok"
    async with serving(write_config(tmp_path / "c.toml", one_tier(openai_server.url))) as g:
        yield g


# -- a schema whose references fan out ---------------------------------------------------


def fanned(width: int, depth: int, *, applicator: str = "allOf") -> dict[str, Any]:
    """A schema of ``depth`` definitions, each referring ``width`` times to the next: a
    kilobyte of JSON, ``width ** depth`` subschemas for a validator to walk."""
    defs: dict[str, Any] = {
        f"d{d}": {applicator: [{"$ref": f"#/$defs/d{d + 1}"}] * width} for d in range(depth)
    }
    defs[f"d{depth}"] = {"type": ["object", "array", "string", "number", "boolean", "null"]}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


FANS = [
    pytest.param(fanned(10, 5), id="allOf"),
    pytest.param(fanned(10, 5, applicator="oneOf"), id="oneOf"),
    pytest.param({**fanned(10, 5), "unevaluatedProperties": False}, id="unevaluated"),
]


@pytest.mark.parametrize("schema", FANS)
def test_a_schema_whose_references_fan_out_is_refused_when_built(schema: dict[str, Any]) -> None:
    """Building the validator checks the schema's references on trivial answers (to
    catch a reference that loops): that check's work is bounded, not ``10 ** 5``
    subschemas walked on the caller's thread (the gateway's event loop)."""
    assert len(json.dumps(schema)) < 2048
    with pytest.raises(ConfigError, match="references") as caught:
        JsonSchemaValidator(schema=schema)
    assert caught.value.path == "schema"


def test_recursive_schemas_of_real_use_are_still_built() -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
                },
                "required": ["name"],
                "unevaluatedProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    }
    JsonSchemaValidator(schema=tree)
    # many references, each walked once: wide, not fanned out
    wide = {
        "$defs": {f"d{i}": {"type": "string", "maxLength": i + 1} for i in range(500)},
        "anyOf": [{"$ref": f"#/$defs/d{i}"} for i in range(500)],
    }
    JsonSchemaValidator(schema=wide)


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/v1/chat/completions", "response_format"),
        ("/v1/messages", "output_config"),
    ],
)
async def test_a_fanned_out_schema_in_a_request_is_400_and_reaches_no_provider(
    gw: Running, openai_server: FakeOpenAIServer, path: str, field: str
) -> None:
    """A 1.4 KB schema held the event loop (every request of every client) for 12 s
    before it was refused or served; ``fanned(8, 6)`` for 40 s."""
    schema = fanned(10, 5)
    body: dict[str, Any] = {"model": "cascade", "messages": HI}
    if field == "response_format":
        body[field] = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        param = "response_format.json_schema.schema"
    else:
        body[field] = {"format": {"type": "json_schema", "schema": schema}}
        body["max_tokens"] = 16
        param = "output_config.format.schema"
    status, answer = await post(gw, path, body)
    assert status == 400, answer
    if field == "response_format":
        assert answer["error"]["param"] == param
        assert "references" in answer["error"]["message"]
    else:
        assert answer["error"]["type"] == "invalid_request_error"
        assert answer["error"]["message"].startswith(param + ":")
    assert openai_server.request_count == 0


async def test_a_requests_schema_is_built_off_the_event_loop(
    gw: Running, openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checking a schema against its draft's meta-schema is linear, but a 64 KiB one holds
    the thread for ~0.5 s; a client sending a new one each time (the cache is by schema
    text) would stall every other request's stream that long: it is built elsewhere."""
    from cascade.gateway import _gateway

    built_on: list[int] = []

    class Recorded(JsonSchemaValidator):
        def __init__(self, **kwargs: Any) -> None:
            built_on.append(threading.get_ident())
            super().__init__(**kwargs)

    monkeypatch.setattr(_gateway, "JsonSchemaValidator", Recorded)
    schemas = [{"type": "object", "properties": {"a": {"type": "number"}}}, fanned(2, 2)]
    for schema in schemas:
        rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
        status, answer = await post(
            gw, "/v1/chat/completions", {"model": "cascade", "messages": HI, "response_format": rf}
        )
        assert status == 200, answer
    assert len(built_on) == 2
    assert threading.get_ident() not in built_on


async def test_a_schema_the_gateway_has_no_thread_for_is_503_not_the_clients_400(
    gw: Running, openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build waits for one of a few shared threads, for a while: busy threads are
    the gateway's state, not a fault of the request (no time left at all, here)."""
    from cascade.gateway import _gateway

    monkeypatch.setattr(_gateway, "_SCHEMA_BUILD_S", 0.0)
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": fanned(10, 3)}}
    status, answer = await post(
        gw, "/v1/chat/completions", {"model": "cascade", "messages": HI, "response_format": rf}
    )
    assert status == 503, answer
    assert answer["error"]["code"] == "server_busy"
    assert openai_server.request_count == 0


async def test_a_client_that_leaves_while_its_schema_is_built_is_499_once(
    gw: Running, openai_server: FakeOpenAIServer, caplog: pytest.LogCaptureFixture
) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": fanned(10, 3)}}
    payload = json.dumps({"model": "cascade", "messages": HI, "response_format": rf}).encode()
    with capture_logs() as logs:
        _reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        writer.write(head("/v1/chat/completions", len(payload)) + payload)
        await writer.drain()
        await eventually(lambda: gw.gateway.in_flight == 1, "the request in flight")
        writer.close()
        await eventually(lambda: gw.gateway.in_flight == 0, "the slot freed")
        await eventually(lambda: openai_server.active_requests == 0, "no upstream call left")
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [499]
    assert not [r for r in caplog.records if r.exc_info]


DRAFT3 = "http://json-schema.org/draft-03/schema#"
PATTERNS = [
    pytest.param({"$id": "http://[", "$ref": "#"}, id="id-not-a-uri"),
    pytest.param({"$defs": {"x": {"$id": "http://[::1/", "$ref": "#"}}}, id="inner-id-not-a-uri"),
    pytest.param({"$id": "http://x/", "$ref": "http://[x"}, id="ref-not-a-uri"),
    pytest.param(
        {"$schema": DRAFT3, "$ref": "#/definitions/x", "definitions": {"x": {"extends": "y"}}},
        id="draft3-extends-a-string",
    ),
    pytest.param({"type": "string", "pattern": "a{4294967296}"}, id="pattern"),
    pytest.param({"patternProperties": {"a{99999999999999999999}": {}}}, id="patternProperties"),
    pytest.param(
        {"type": "object", "propertyNames": {"pattern": "(?:x{4294967296})?"}}, id="propertyNames"
    ),
]


@pytest.mark.parametrize("schema", PATTERNS)
def test_a_schema_python_cannot_read_is_a_config_error(schema: dict[str, Any]) -> None:
    """``re.compile("a{4294967296}")`` raises OverflowError, not ``re.error`` (jsonschema's
    check of the ``regex`` format let it through), ``urljoin`` a ValueError for an ``$id``
    such as ``http://[``, and ``referencing`` an AttributeError for a draft 3 ``extends``
    that is a string: all came out of the validator's constructor."""
    with pytest.raises(ConfigError, match="invalid JSON Schema") as caught:
        JsonSchemaValidator(schema=schema)
    assert caught.value.path.startswith("schema")


@pytest.mark.parametrize("schema", PATTERNS)
async def test_a_schema_python_cannot_read_is_400_not_a_logged_500(
    gw: Running,
    openai_server: FakeOpenAIServer,
    caplog: pytest.LogCaptureFixture,
    schema: dict[str, Any],
) -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}
    with capture_logs() as logs:
        status, answer = await post(
            gw, "/v1/chat/completions", {"model": "cascade", "messages": HI, "response_format": rf}
        )
    assert status == 400, answer
    assert answer["error"]["param"] == "response_format.json_schema.schema"
    assert not [e for e in logs if e["event"] == "gateway.internal_error"]
    assert not [r for r in caplog.records if r.exc_info]
    assert openai_server.request_count == 0


# -- numbers no model takes -------------------------------------------------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize(
    "value",
    [pytest.param(10**400, id="1e400"), pytest.param(MAX_REPORTED_TOKENS + 1, id="over-1e9")],
)
async def test_a_max_tokens_no_model_takes_is_400_not_a_logged_500(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    field: str,
    value: int,
) -> None:
    """``max_tokens = 10**400`` (any JSON integer msgspec reads) reached the key gate's
    price estimate, whose float overflowed: a 500 and a traceback in the operator's log
    for any client with a key that has a budget. It is bounded as /v1/messages bounds it."""
    openai_server.default = "ok"
    entry = {"name": "k", "sha256": hash_key(KEY), "usd_per_day": 5.0}
    config = one_tier(openai_server.url, keys={"entries": [entry]})
    body = {"model": "cascade", "messages": HI, field: value}
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            status, answer = await post(
                gw, "/v1/chat/completions", body, Authorization=f"Bearer {KEY}"
            )
            ok, _ = await post(
                gw,
                "/v1/chat/completions",
                {**body, field: MAX_REPORTED_TOKENS},
                Authorization=f"Bearer {KEY}",
            )
    assert status == 400, answer
    assert answer["error"]["param"] == field
    assert answer["error"]["type"] == "invalid_request_error"
    assert ok == 200
    assert not [e for e in logs if e["event"] == "gateway.internal_error"]
    assert not [r for r in caplog.records if r.exc_info]
    assert openai_server.request_count == 1


# -- Expect: 100-continue ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "extra", "status"),
    [
        pytest.param(10**9, (f"Authorization: Bearer {KEY}",), 413, id="over-the-limit"),
        pytest.param(64, (), 401, id="no-key"),
        pytest.param(64, ("Authorization: Bearer sk-wrong",), 401, id="wrong-key"),
        pytest.param(64, (f"Authorization: Bearer {KEY}", "Origin: http://evil.test"), 403,
                     id="cross-origin"),
    ],
)  # fmt: skip
async def test_a_request_refused_on_its_headers_gets_no_100_continue(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    length: int,
    extra: tuple[str, ...],
    status: int,
) -> None:
    """aiohttp answered ``Expect: 100-continue`` before any check: a client with no key,
    or a 1 GB body, was told to send it, and the gateway then read and dropped it. The
    100 now comes when the gateway is about to read the body."""
    entry = {"name": "k", "sha256": hash_key(KEY)}
    config = one_tier(openai_server.url, keys={"entries": [entry]})
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            try:
                writer.write(head("/v1/chat/completions", length, "Expect: 100-continue", *extra))
                await writer.drain()
                got, body = await answer_of(reader)
            finally:
                writer.close()
    assert got == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [status]
    assert openai_server.request_count == 0


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_request_that_will_be_read_gets_100_continue_then_its_answer(
    gw: Running, openai_server: FakeOpenAIServer, path: str
) -> None:
    body: dict[str, Any] = {"model": "cascade", "messages": HI, "max_tokens": 8}
    payload = json.dumps(body).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    try:
        writer.write(head(path, len(payload), "Expect: 100-continue"))
        await writer.drain()
        assert await status_line(reader) == 100
        assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 10) == b"\r\n"
        writer.write(payload)
        await writer.drain()
        status, _answer = await answer_of(reader)
    finally:
        writer.close()
    assert status == 200
    assert openai_server.request_count == 1


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        ("/v1/chat/completions", {"message", "type", "param", "code"}),
        ("/v1/messages", {"type", "message"}),
    ],
)
async def test_an_expectation_other_than_100_continue_is_417_in_the_api_format(
    gw: Running, openai_server: FakeOpenAIServer, path: str, fields: set[str]
) -> None:
    """aiohttp's own 417 was text/plain, sent before the gateway's middleware: no
    access-log line."""
    payload = json.dumps({"model": "cascade", "messages": HI, "max_tokens": 8}).encode()
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(head(path, len(payload), "Expect: something-else") + payload)
            await writer.drain()
            status, answer = await answer_of(reader)
        finally:
            writer.close()
    assert status == 417
    assert set(answer["error"]) == fields
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [417]
    assert openai_server.request_count == 0


# -- a compressed body the gateway will not read -----------------------------------------


def gzip_bomb(mib: int) -> bytes:
    """A JSON body of ``mib`` MiB (spaces, mostly), gzip-compressed about 1000 to 1."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    spaces = b" " * (1 << 20)
    parts = [packer.compress(b'{"model": "cascade", "messages": [], "pad": "')]
    parts += [packer.compress(spaces) for _ in range(mib)]
    return b"".join([*parts, packer.compress(b'"}'), packer.flush()])


@pytest.mark.parametrize(
    ("path", "extra", "status"),
    [
        pytest.param("/v1/chat/completions", (), 401, id="no-key"),
        pytest.param("/v1/messages", ("Origin: http://evil.test",), 403, id="cross-origin"),
        pytest.param("/v2/nothing", (), 404, id="unknown-path"),
    ],
)
async def test_a_compressed_body_refused_unread_is_not_decompressed_to_be_dropped(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    path: str,
    extra: tuple[str, ...],
    status: int,
) -> None:
    """aiohttp reads what is left of a request body after the answer, to keep the
    connection ("lingering"): through the decompressor, on the event loop. A 64 KB gzip
    bomb refused before its body was read (no key needed) cost 64 MiB of inflating on
    the loop, a 1 MB one ~0.3 s. The gateway now closes such a connection instead."""
    entry = {"name": "k", "sha256": hash_key(KEY)}
    config = one_tier(openai_server.url, keys={"entries": [entry]})
    bomb = gzip_bomb(64)
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(head(path, len(bomb), "Content-Encoding: gzip", *extra) + bomb)
            await writer.drain()
            got, _answer = await answer_of(reader)
            rest = await asyncio.wait_for(reader.read(), 5)  # closed, not kept alive
        finally:
            writer.close()
    assert got == status
    assert rest == b""
    assert openai_server.request_count == 0


async def test_a_plain_body_refused_unread_keeps_its_connection(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Reading what is left of an uncompressed body costs nothing but the bytes: the
    connection stays open for the next request, as before."""
    openai_server.default = "ok"
    entry = {"name": "k", "sha256": hash_key(KEY)}
    config = one_tier(openai_server.url, keys={"entries": [entry]})
    payload = json.dumps({"model": "cascade", "messages": HI}).encode()
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(head("/v1/chat/completions", len(payload)) + payload)
            first, _ = await answer_of(reader)
            auth = f"Authorization: Bearer {KEY}"
            writer.write(head("/v1/chat/completions", len(payload), auth) + payload)
            second, _ = await answer_of(reader)
        finally:
            writer.close()
    assert (first, second) == (401, 200)


# -- a client that leaves, at any moment, in either format --------------------------------


@pytest.mark.parametrize("close", ["fin", "rst"])
@pytest.mark.parametrize("moment", ["upstream_wait", "mid_stream"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_client_that_leaves_cancels_its_upstream_call_in_either_format(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    path: str,
    moment: str,
    close: str,
) -> None:
    """The answer stalls after its first text (speculative: that text is sent): a client
    closing (FIN) or resetting (RST) while the call is under way, or once text reached it,
    ends the upstream call at once, leaves no pooled connection in use, one 499 line."""
    openai_server.default = Reply(text="word " * 4, fault="stall", chunk_delay_s=0.05)
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1", stream=True))],
        "gateway": {"routes": [{"name": "cascade", "default": True, "mode": "speculative"}]},
    }
    body = {"model": "cascade", "messages": HI, "max_tokens": 8, "stream": moment == "mid_stream"}
    payload = json.dumps(body).encode()
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", config)) as gw:
            cascade = gw.gateway.generation.cascades[0]
            sock = socket.socket()
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                writer.write(head(path, len(payload)) + payload)
                await writer.drain()
                await eventually(lambda: openai_server.active_requests == 1, "the upstream call")
                if moment == "mid_stream":
                    seen = b""
                    while b"word" not in seen:
                        seen += await asyncio.wait_for(reader.read(4096), 10)
                if close == "rst":
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                writer.close()
            await eventually(lambda: openai_server.active_requests == 0, "the call cancelled")
            await eventually(lambda: gw.gateway.in_flight == 0, "the slot freed")
            await eventually(lambda: in_use(cascade) == 0, "no pooled connection in use")
    assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [499]
    assert openai_server.request_count == 1
    assert not [r for r in caplog.records if r.exc_info]
