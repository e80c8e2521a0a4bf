"""The fake provider servers of `cascade.testing`, driven over real loopback HTTP."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest

import cascade.testing
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, FakeRequest, Reply
from cascade.testing.__main__ import main as cli_main

pytestmark = pytest.mark.anyio

ANTHROPIC_HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "sk-test"}
FakeServer = FakeOpenAIServer | FakeAnthropicServer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def openai() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def anthropic() -> AsyncIterator[FakeAnthropicServer]:
    async with FakeAnthropicServer() as server:
        yield server


@pytest.fixture(params=["openai", "anthropic"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[FakeServer]:
    cls = FakeOpenAIServer if request.param == "openai" else FakeAnthropicServer
    async with cls() as fake:
        yield fake


def endpoint(server: FakeServer) -> str:
    if isinstance(server, FakeOpenAIServer):
        return server.url + "/chat/completions"
    return server.url + "/v1/messages"


def body_for(server: FakeServer, model: str, content: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": content}]}
    if isinstance(server, FakeAnthropicServer):
        body["max_tokens"] = 256
    return body | extra


def post(
    session: aiohttp.ClientSession,
    server: FakeServer,
    model: str = "m",
    content: str = "hello",
    *,
    timeout: float | None = None,
    **extra: Any,
) -> Any:
    """Start a chat request (use as ``async with``)."""
    options: dict[str, Any] = {}
    if isinstance(server, FakeAnthropicServer):
        options["headers"] = ANTHROPIC_HEADERS
    if timeout is not None:
        options["timeout"] = aiohttp.ClientTimeout(total=timeout)
    return session.post(endpoint(server), json=body_for(server, model, content, **extra), **options)


def parse_sse(raw: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) for each event of an SSE body."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events


async def read_stream(
    session: aiohttp.ClientSession, server: FakeServer, into: list[bytes], **extra: Any
) -> None:
    """Read a response into ``into`` piece by piece, so a failure keeps what came."""
    async with post(session, server, **extra) as response:
        assert response.status == 200
        async for data in response.content.iter_any():
            into.append(data)


async def answer_text(session: aiohttp.ClientSession, server: FakeServer, model: str) -> str:
    async with post(session, server, model) as response:
        assert response.status == 200
        body = await response.json()
    if isinstance(server, FakeOpenAIServer):
        return str(body["choices"][0]["message"]["content"])
    return str(body["content"][0]["text"])


# -- OpenAI wire format ------------------------------------------------------


async def test_openai_json(openai: FakeOpenAIServer, session: aiohttp.ClientSession) -> None:
    openai.script("tier1", Reply(text="Paris is the capital", finish_reason="length"))
    async with post(session, openai, "tier1", "x" * 40) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int)
    assert body["model"] == "tier1"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris is the capital"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


@pytest.mark.parametrize("include_usage", [True, False])
async def test_openai_stream(
    openai: FakeOpenAIServer, session: aiohttp.ClientSession, include_usage: bool
) -> None:
    openai.script("m", Reply(text="The quick brown fox", chunk_chars=5, output_tokens=7))
    extra: dict[str, Any] = {"stream": True}
    if include_usage:
        extra["stream_options"] = {"include_usage": True}
    async with post(session, openai, **extra) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = parse_sse(await response.read())

    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    chunks = [msgspec.json.decode(data) for _, data in events[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[0]["choices"][0]["finish_reason"] is None
    pieces = [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:5]]
    assert pieces == ["The q", "uick ", "brown", " fox"]
    finish = chunks[5]["choices"][0]
    assert finish["delta"] == {}
    assert finish["finish_reason"] == "stop"
    if include_usage:
        assert len(chunks) == 7
        assert chunks[6]["choices"] == []
        assert chunks[6]["usage"] == {
            "prompt_tokens": 1,
            "completion_tokens": 7,
            "total_tokens": 8,
        }
    else:
        assert len(chunks) == 6


async def test_openai_rejects_invalid_bodies(
    openai: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    openai.script("m", "unused")
    for payload in (b"not json", b"[1]", b'{"model": "m"}', b'{"model": "m", "messages": []}'):
        async with session.post(endpoint(openai), data=payload) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert error["type"] == "invalid_request_error"
            assert error["param"] is None
    assert openai.request_count == 4
    assert openai.requests == []


async def test_models_endpoint(openai: FakeOpenAIServer, session: aiohttp.ClientSession) -> None:
    openai.script("b", "x")
    openai.respond("a", lambda request: "y")
    async with session.get(openai.url + "/models") as response:
        body = await response.json()
    assert [model["id"] for model in body["data"]] == ["a", "b"]


# -- Anthropic wire format ---------------------------------------------------


async def test_anthropic_json(
    anthropic: FakeAnthropicServer, session: aiohttp.ClientSession
) -> None:
    anthropic.script("claude", Reply(text="Bonjour", finish_reason="length", input_tokens=3))
    async with post(session, anthropic, "claude", system="Be brief.") as response:
        assert response.status == 200
        assert response.headers["request-id"]
        body = await response.json()
    assert body["id"].startswith("msg_")
    assert body | {"id": None} == {
        "id": None,
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [{"type": "text", "text": "Bonjour"}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    assert anthropic.requests[0].messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello"},
    ]


async def test_anthropic_stream(
    anthropic: FakeAnthropicServer, session: aiohttp.ClientSession
) -> None:
    text = "Streaming works, one piece at a time."
    anthropic.script("m", Reply(text=text, chunk_chars=6))
    async with post(session, anthropic, "m", "y" * 80, stream=True) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = parse_sse(await response.read())

    names = [name for name, _ in events]
    payloads = [msgspec.json.decode(data) for _, data in events]
    assert [payload["type"] for payload in payloads] == names
    deltas = names.count("content_block_delta")
    assert deltas == 7
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = payloads[0]["message"]
    assert start["content"] == []
    assert start["stop_reason"] is None
    assert start["usage"] == {"input_tokens": 20, "output_tokens": 1}
    assert payloads[1]["content_block"] == {"type": "text", "text": ""}
    pieces = [p["delta"]["text"] for p in payloads if p["type"] == "content_block_delta"]
    assert "".join(pieces) == text
    assert payloads[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert payloads[-2]["usage"] == {"output_tokens": len(text) // 4}


async def test_anthropic_requires_version_header(
    anthropic: FakeAnthropicServer, session: aiohttp.ClientSession
) -> None:
    anthropic.script("m", "unused")
    body = body_for(anthropic, "m", "hi")
    async with session.post(endpoint(anthropic), json=body) as response:
        assert response.status == 400
        assert response.headers["request-id"]
        error = await response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "anthropic-version" in error["error"]["message"]


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (529, "overloaded_error"),
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (500, "api_error"),
        (503, "api_error"),
    ],
)
async def test_anthropic_error_types(
    anthropic: FakeAnthropicServer, session: aiohttp.ClientSession, status: int, kind: str
) -> None:
    anthropic.script("m", Reply(status=status, error_message="busy"))
    async with post(session, anthropic) as response:
        assert response.status == status
        assert response.headers["request-id"]
        assert await response.json() == {
            "type": "error",
            "error": {"type": kind, "message": "busy"},
        }


# -- scripting ---------------------------------------------------------------


async def test_script_is_fifo_and_repeats_the_last(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    server.script("m", "one", Reply(text="two"), "three")
    answers = [await answer_text(session, server, "m") for _ in range(5)]
    assert answers == ["one", "two", "three", "three", "three"]
    server.script("m", "four")  # appends behind the repeated last answer
    assert [await answer_text(session, server, "m") for _ in range(3)] == [
        "three",
        "four",
        "four",
    ]


async def test_responders_sync_and_async(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    def echo(request: FakeRequest) -> str:
        return f"echo: {request.messages[-1]['content']}"

    async def slow_upper(request: FakeRequest) -> Reply:
        await asyncio.sleep(0)
        return Reply(text=request.model.upper())

    server.script("sync", "replaced by the responder")
    server.respond("sync", echo)
    server.respond("async", slow_upper)
    assert await answer_text(session, server, "sync") == "echo: hello"
    assert await answer_text(session, server, "async") == "ASYNC"
    server.script("async", "scripted again")
    assert await answer_text(session, server, "async") == "scripted again"


async def test_unknown_model_without_default_is_404(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    async with post(session, server, "nope") as response:
        assert response.status == 404
        body = await response.json()
    if isinstance(server, FakeOpenAIServer):
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["code"] == "model_not_found"
        assert body["error"]["param"] is None
        assert "nope" in body["error"]["message"]
    else:
        assert body["type"] == "error"
        assert body["error"]["type"] == "not_found_error"


async def test_default_reply(session: aiohttp.ClientSession) -> None:
    async with FakeOpenAIServer(default="fallback") as server:
        server.script("known", "scripted")
        assert await answer_text(session, server, "anything") == "fallback"
        assert await answer_text(session, server, "known") == "scripted"


def test_reply_validation() -> None:
    with pytest.raises(ValueError, match="chunk_chars"):
        Reply(chunk_chars=0)
    with pytest.raises(ValueError, match="latency_s"):
        Reply(latency_s=-1)
    with pytest.raises(ValueError, match="status"):
        Reply(status=99)


# -- recording ---------------------------------------------------------------


async def test_requests_are_recorded(
    openai: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    openai.script("m", "ok")
    headers = {"Authorization": "Bearer sk-test", "X-Custom": "1"}
    body = body_for(openai, "m", "hi", temperature=0.5, stream=True)
    async with session.post(endpoint(openai), json=body, headers=headers) as response:
        await response.read()
    [seen] = openai.requests
    assert seen.model == "m"
    assert seen.stream is True
    assert seen.messages == [{"role": "user", "content": "hi"}]
    assert seen.body == body
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.headers["x-custom"] == "1"
    assert openai.request_count == 1
    assert "requests=1" in repr(openai)

    openai.reset()
    assert openai.requests == []
    assert openai.request_count == 0
    async with post(session, openai, "m") as response:
        assert response.status == 404  # the script went too


async def test_record_false_still_counts(session: aiohttp.ClientSession) -> None:
    async with FakeAnthropicServer(default="x", record=False) as server:
        for _ in range(3):
            assert await answer_text(session, server, "m") == "x"
        assert server.requests == []
        assert server.request_count == 3


async def test_active_connections_return_to_zero(openai: FakeOpenAIServer) -> None:
    openai.script("m", "ok")
    async with aiohttp.ClientSession() as client:
        await asyncio.gather(*(answer_text(client, openai, "m") for _ in range(4)))
        assert openai.active_connections >= 1  # kept alive by the client's pool
    deadline = time.monotonic() + 2
    while openai.active_connections and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert openai.active_connections == 0


# -- faults ------------------------------------------------------------------


async def test_error_status_with_retry_after(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    server.script(
        "m",
        Reply(status=429, retry_after_s=1.2, headers={"x-ratelimit-remaining-requests": "0"}),
        "recovered",
    )
    async with post(session, server) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == "2"
        assert response.headers["retry-after-ms"] == "1200"
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        body = await response.json()
    if isinstance(server, FakeOpenAIServer):
        assert body["error"]["message"] == "simulated error"
        assert body["error"]["param"] is None
        assert body["error"]["code"] is None
    else:
        assert body["error"]["type"] == "rate_limit_error"
    assert await answer_text(session, server, "m") == "recovered"


@pytest.mark.parametrize("stream", [False, True])
async def test_drop_cuts_the_connection(
    server: FakeServer, session: aiohttp.ClientSession, stream: bool
) -> None:
    server.script("m", Reply(text="a long answer that never arrives whole", fault="drop"), "ok")
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        await read_stream(session, server, [], stream=stream)
    assert await answer_text(session, server, "m") == "ok"


async def test_drop_stream_sends_first_delta(
    server: FakeServer, session: aiohttp.ClientSession
) -> None:
    server.script("m", Reply(text="abcdefghij", chunk_chars=4, fault="drop"))
    pieces: list[bytes] = []
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        await read_stream(session, server, pieces, stream=True)
    received = b"".join(pieces)
    assert b"abcd" in received
    assert b"efgh" not in received


async def test_malformed_json(server: FakeServer, session: aiohttp.ClientSession) -> None:
    server.script("m", Reply(text="broken", fault="malformed"))
    async with post(session, server) as response:
        assert response.status == 200
        raw = await response.read()
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(raw)


async def test_malformed_stream(server: FakeServer, session: aiohttp.ClientSession) -> None:
    server.script("m", Reply(text="abcdefghij", chunk_chars=4, fault="malformed"))
    async with post(session, server, stream=True) as response:
        assert response.status == 200
        events = parse_sse(await response.read())
    *good, (_, bad) = events
    decoded = [msgspec.json.decode(data) for _, data in good]
    assert "abcd" in str(decoded[-1])
    with pytest.raises(msgspec.DecodeError):
        msgspec.json.decode(bad)


async def test_hang_times_out_and_close_is_prompt(
    session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    server = FakeOpenAIServer()
    await server.start()
    server.script("m", "warm")
    server.script("stuck", Reply(fault="hang"))
    server.script("slow", Reply(latency_s=30))
    server.script("dribble", Reply(text="abcdef", chunk_chars=1, chunk_delay_s=30))
    assert await answer_text(session, server, "m") == "warm"  # leaves a keep-alive
    with pytest.raises(TimeoutError):
        await read_stream(session, server, [], model="stuck", timeout=0.2)

    pending = [
        asyncio.ensure_future(read_stream(session, server, [], model=model, stream=True))
        for model in ("stuck", "slow", "dribble")
    ]
    while server.request_count < 5:
        await asyncio.sleep(0.01)
    with anyio.fail_after(10):  # stuck handlers are cut, not waited for (they never end)
        await server.aclose()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(result, aiohttp.ClientError) for result in results), results
    assert server.active_connections == 0
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []


async def test_latency_and_chunk_delay(
    openai: FakeOpenAIServer, session: aiohttp.ClientSession
) -> None:
    openai.script("m", Reply(text="abcdef", chunk_chars=2, latency_s=0.1, chunk_delay_s=0.05))
    started = time.monotonic()
    async with post(session, openai, stream=True) as response:
        headers_after = time.monotonic() - started
        await response.read()
    assert headers_after >= 0.1
    assert time.monotonic() - started >= 0.2


# -- command line ------------------------------------------------------------


async def test_cli_serves_until_sigterm() -> None:
    src = str(Path(cascade.testing.__file__).parents[2])
    env = os.environ | {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cascade.testing",
        "anthropic",
        "--text",
        "from the cli",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ").strip()
        async with aiohttp.ClientSession() as client:
            body = {"model": "any", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
            async with client.post(
                url + "/v1/messages", json=body, headers=ANTHROPIC_HEADERS
            ) as response:
                assert response.status == 200
                assert (await response.json())["content"][0]["text"] == "from the cli"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert stdout == b""


def test_cli_refuses_non_loopback_host(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["openai", "--host", "0.0.0.0"])
    assert exit_info.value.code == 2
    assert "loopback" in capsys.readouterr().err


async def test_default_is_settable() -> None:
    async with FakeOpenAIServer() as server, aiohttp.ClientSession() as session:
        body = {"model": "anything", "messages": [{"role": "user", "content": "hi"}]}
        url = server.url + "/chat/completions"
        async with session.post(url, json=body) as resp:
            assert resp.status == 404
        server.default = "fallback"
        assert server.default == Reply(text="fallback")
        async with session.post(url, json=body) as resp:
            assert (await resp.json())["choices"][0]["message"]["content"] == "fallback"
        server.default = None
        async with session.post(url, json=body) as resp:
            assert resp.status == 404
