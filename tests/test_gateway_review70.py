"""Review of the request handling landed together: field strictness, ``top_p``, parse
refusals, request ids and the ``json_object`` validator, attacked as a hostile client and
as real-world clients (LangChain, LlamaIndex, the Vercel AI SDK, the OpenAI Agents SDK)
send their requests.

Regressions found:

- A ``response_format`` (``json_object``, ``json_schema``) or ``output_config.format``
  answer had only to *contain* JSON: prose around it, a Markdown fence, or two objects
  passed the validator and were returned as the content, which the client's
  ``json.loads`` (the SDKs' ``parse``) then failed on. Both APIs promise content that is
  the JSON value itself.
- A line too long was classified 414 or 431 by how its quoted text started: with the C
  parser, an absolute-form or ``*`` request target too long was a 431 and a header value
  starting with ``/`` or ``GET `` a 414; with the pure-Python parser, a method with a
  ``-`` (``M-SEARCH``) made its request line a 431.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .gateway import Running, serving, write_config
from .helpers import provider, tier
from .test_gateway_parse_errors import HEAD, SECRET, check_format, send
from .test_gateway_serve import cascade_serve

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
GOOD = '{"answer": 42}'


@pytest.fixture
async def claude(anthropic_server: FakeAnthropicServer, tmp_path: Path) -> AsyncIterator[Running]:
    """Two tiers of Anthropic-format providers: no ``response_format`` upstream, so their
    answers are whatever the model writes."""
    url = anthropic_server.url
    config = {
        "tiers": [
            tier("small", provider("a", url, "c1", kind="anthropic")),
            tier("big", provider("b", url, "c2", kind="anthropic")),
        ]
    }
    async with serving(write_config(tmp_path / "c.toml", config)) as g:
        yield g


# -- a JSON answer is the JSON, not text around it -------------------------------------------

WRAPPED = {
    "prose": 'Sure! Here is the JSON you asked for: {"answer": 41}',
    "fence": '```json\n{"answer": 41}\n```',
    "two_objects": '{"answer": 41} or maybe {"answer": 40}',
    "trailing_prose": '{"answer": 41}\nHope this helps!',
}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("wrapped", list(WRAPPED))
async def test_json_object_text_around_the_json_is_not_an_answer(
    claude: Running, anthropic_server: FakeAnthropicServer, wrapped: str, stream: bool
) -> None:
    anthropic_server.script("c1", Reply(text=WRAPPED[wrapped]))
    anthropic_server.script("c2", Reply(text=GOOD))
    args: dict[str, Any] = {
        "model": "cascade",
        "messages": HI,
        "response_format": {"type": "json_object"},
    }
    async with openai.AsyncOpenAI(
        base_url=claude.base_url, api_key="k", max_retries=0, timeout=20
    ) as c:
        if stream:
            chunks = await c.chat.completions.create(**args, stream=True)
            content = "".join([x.choices[0].delta.content or "" async for x in chunks if x.choices])
        else:
            content = (await c.chat.completions.create(**args)).choices[0].message.content or ""
    assert json.loads(content) == {"answer": 42}  # what the client does with it
    assert anthropic_server.request_count == 2  # the wrapped answer escalated


async def test_a_json_schema_answer_is_the_json_on_both_apis(
    claude: Running, anthropic_server: FakeAnthropicServer
) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
    }
    anthropic_server.script("c1", Reply(text=WRAPPED["fence"]), Reply(text=WRAPPED["prose"]))
    anthropic_server.script("c2", Reply(text=GOOD))
    async with openai.AsyncOpenAI(
        base_url=claude.base_url, api_key="k", max_retries=0, timeout=20
    ) as c:
        completion = await c.chat.completions.create(
            model="cascade",
            messages=HI,  # type: ignore[arg-type]
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": schema, "strict": True},
            },
        )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": 42}
    async with anthropic.AsyncAnthropic(
        base_url=claude.url, api_key="k", max_retries=0, timeout=20
    ) as a:
        msg = await a.messages.create(
            model="cascade",
            max_tokens=64,
            messages=HI,  # type: ignore[arg-type]
            extra_body={"output_config": {"format": {"type": "json_schema", "schema": schema}}},
        )
    assert json.loads(msg.content[0].text) == {"answer": 42}  # type: ignore[union-attr]
    assert anthropic_server.request_count == 4


@pytest.mark.parametrize(
    "answer",
    [
        '  {"answer": 42}\n',  # blanks around one JSON value are still that value
        '{"big": "' + "v" * 40_000 + '"}',  # checked off the loop (over 16 KiB)
    ],
    ids=["blanks", "big"],
)
async def test_a_json_answer_alone_passes_on_the_first_tier(
    claude: Running, anthropic_server: FakeAnthropicServer, answer: str
) -> None:
    anthropic_server.script("c1", Reply(text=answer))
    async with openai.AsyncOpenAI(
        base_url=claude.base_url, api_key="k", max_retries=0, timeout=20
    ) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="cascade",
            messages=HI,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
        )
    assert raw.headers["x-cascade-tier"] == "1"
    assert raw.parse().choices[0].message.content == answer


async def test_a_big_answer_wrapped_in_prose_escalates_too(
    claude: Running, anthropic_server: FakeAnthropicServer
) -> None:
    """Over 16 KiB the schema is checked in a worker process, which finds the JSON in the
    text: the answer is still not the JSON."""
    big = '{"big": "' + "v" * 40_000 + '"}'
    anthropic_server.script("c1", Reply(text="Here you go:\n" + big))
    anthropic_server.script("c2", Reply(text=GOOD))
    async with openai.AsyncOpenAI(
        base_url=claude.base_url, api_key="k", max_retries=0, timeout=20
    ) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="cascade",
            messages=HI,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
        )
    assert raw.headers["x-cascade-tier"] == "2"
    assert raw.parse().choices[0].message.content == GOOD


# -- what real-world clients send by default -------------------------------------------------


@pytest.fixture
async def gw(openai_server: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Running]:
    openai_server.default = Reply(text="42")
    config = {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    async with serving(write_config(tmp_path / "c.toml", config)) as g:
        yield g


CLIENT_BODIES: dict[str, dict[str, Any]] = {
    # langchain-openai ChatOpenAI (older releases: n and temperature always sent)
    "langchain": {"stream": False, "n": 1, "temperature": 0.7},
    "langchain_stream": {
        "stream": True,
        "n": 1,
        "temperature": 0.7,
        "stream_options": {"include_usage": True},
    },
    # llama-index-llms-openai: temperature 0.1, stream false, system first
    "llamaindex": {
        "stream": False,
        "temperature": 0.1,
        "messages": [{"role": "system", "content": "Be brief."}, *HI],
    },
    # the Vercel AI SDK (openai-compatible provider) streaming: include_usage
    "vercel_ai": {"stream": True, "stream_options": {"include_usage": True}},
    # the OpenAI Agents SDK at a non-OpenAI base URL: system instructions, a text part
    "agents_sdk": {
        "messages": [
            {"content": "You are helpful.", "role": "system"},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
    },
    # OpenAI's own defaults, spelled out (a client that sends every field it has)
    "explicit_defaults": {
        "top_p": 1,
        "presence_penalty": 0,
        "frequency_penalty": 0.0,
        "n": 1,
        "logit_bias": {},
        "logprobs": False,
        "store": False,
        "parallel_tool_calls": True,
        "service_tier": "auto",
        "response_format": {"type": "text"},
        "stream_options": None,
        "tools": None,
        "user": None,
    },
}


@pytest.mark.parametrize("client", list(CLIENT_BODIES))
async def test_real_world_clients_default_bodies_are_served(
    gw: Running, openai_server: FakeOpenAIServer, client: str
) -> None:
    body: dict[str, Any] = {"model": "cascade", "messages": HI, **CLIENT_BODIES[client]}
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="cascade",
            messages=body.pop("messages"),
            extra_body={k: v for k, v in body.items() if k != "model"},
        )
    assert raw.http_response.status_code == 200
    assert raw.headers["x-request-id"].startswith("req_")
    sent = openai_server.requests[0].body
    assert "top_p" not in sent and "presence_penalty" not in sent  # defaults not sent on


# -- 414 for the request line, 431 for a header: whatever the line starts with -------------

LONG = SECRET + b"u" * 9000
LINES: dict[str, tuple[bytes, int]] = {
    "absolute_form_target": (
        b"POST http://127.0.0.1/v1/messages?k=" + LONG + b" HTTP/1.1\r\n" + HEAD + b"\r\n",
        414,
    ),
    "asterisk_target": (b"OPTIONS *" + LONG + b" HTTP/1.1\r\n" + HEAD + b"\r\n", 414),
    "method_with_a_dash": (b"M-SEARCH /" + LONG + b" HTTP/1.1\r\n" + HEAD + b"\r\n", 414),
    "header_value_like_a_path": (
        b"POST /v1/messages HTTP/1.1\r\n" + HEAD + b"X-Forwarded-Uri: /" + LONG + b"\r\n\r\n",
        431,
    ),
    "header_value_like_a_request_line": (
        b"POST /v1/messages HTTP/1.1\r\n" + HEAD + b"X-Note: GET /" + LONG + b"\r\n\r\n",
        431,
    ),
    "origin_form_target": (b"POST /v1/messages?" + LONG + b" HTTP/1.1\r\n" + HEAD + b"\r\n", 414),
    "header_value": (
        b"POST /v1/messages HTTP/1.1\r\n" + HEAD + b"x-api-key: " + LONG + b"\r\n\r\n",
        431,
    ),
}


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_a_line_too_long_is_414_for_the_request_line_and_431_for_a_header(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    parser: str,
) -> None:
    if parser == "python":
        monkeypatch.setenv("AIOHTTP_NO_EXTENSIONS", "1")
    config = {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    got: dict[str, int] = {}
    async with cascade_serve(write_config(tmp_path / "c.toml", config)) as served:
        for name, (request, _) in LINES.items():
            answer = await send(served.port, request)
            got[name] = answer.status
            # JSON both SDKs read, the connection closed, no byte of the line echoed
            check_format(answer, answer.status, json.loads(answer.body)["error"]["code"])
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    assert got == {name: status for name, (_, status) in LINES.items()}
    logged = served.stderr + json.dumps(served.lines)
    assert SECRET.decode() not in logged


def test_aiohttps_parsers_quote_the_line_as_the_classification_expects() -> None:
    """What ``_protocol._is_request_line`` builds on, checked loudly on both parsers: the C
    parser quotes a request target too long in a ``bytearray`` and a header's value in
    ``bytes``; the pure-Python one quotes the whole line."""
    from aiohttp import http_parser
    from aiohttp.http_exceptions import LineTooLong

    from cascade.gateway._protocol import _is_request_line

    loop = asyncio.new_event_loop()
    try:
        parsers: list[Any] = [http_parser.HttpRequestParserPy]
        if hasattr(http_parser, "HttpRequestParserC"):
            parsers.append(http_parser.HttpRequestParserC)
        for cls in parsers:
            quoted = []
            for request, _ in LINES.values():
                parser = cls(object(), loop, 2**16, max_line_size=8190, max_field_size=8190)
                with pytest.raises(LineTooLong) as caught:
                    parser.feed_data(request)
                quoted.append(caught.value.args[0])
            is_c = cls is not http_parser.HttpRequestParserPy
            targets = [isinstance(q, bytearray) for q in quoted]
            assert targets == (
                [s == 414 for _, s in LINES.values()] if is_c else [False] * len(LINES)
            )
            if is_c == (http_parser.HttpRequestParser is not http_parser.HttpRequestParserPy):
                # the parser this process's connections use: classified as sent
                assert [_is_request_line(q) for q in quoted] == [
                    s == 414 for _, s in LINES.values()
                ]
    finally:
        loop.close()


# -- a big hostile body is decoded without the garbage collector walking it ------------------

_MANY = 1_300_000  # empty lists: ~4 MiB of JSON, the default max_body_bytes


def _bodies() -> dict[str, tuple[str, bytes]]:
    lists = b"[" + b"[]," * _MANY + b"[]]"
    chat = b'{"model":"m","messages":[{"role":"user","content":"hi"}],'
    return {
        # today's strict fields: decoded to be refused (or compared with their default)
        "tools": ("openai", chat + b'"tools":' + lists + b"}"),
        "message_name": (
            "openai",
            b'{"model":"m","messages":[{"role":"user","content":"hi","name":' + lists + b"}]}",
        ),
        "prompt_cache_options": ("openai", chat + b'"prompt_cache_options":{"a":' + lists + b"}}"),
        "schema": (
            "anthropic",
            b'{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}],'
            b'"output_config":{"format":{"type":"json_schema","schema":{"a":' + lists + b"}}}}",
        ),
    }


@pytest.mark.parametrize("field", ["tools", "message_name", "prompt_cache_options", "schema"])
def test_a_big_body_is_decoded_with_no_collection_running(field: str) -> None:
    """A 4 MiB body of a million containers (``"tools": [[], [], ...]``) made the garbage
    collector run ~2,000 times while it was decoded: ~1 s of the event loop for a request
    refused at once (~0.15 s decoded alone). No collection runs while a big body is
    decoded; the objects go when the request does."""
    import gc

    from cascade import InputError
    from cascade.gateway._anthropic_request import parse_request as anthropic_parse
    from cascade.gateway._errors import GatewayError
    from cascade.gateway._openai_request import parse_request as openai_parse
    from cascade.gateway._wire import Limits

    api, body = _bodies()[field]
    assert len(body) < 4 << 20
    parse = openai_parse if api == "openai" else anthropic_parse
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    assert gc.isenabled()
    gc.callbacks.append(count)
    try:
        try:
            parse(body, Limits())  # prompt_cache_options: accepted, and ignored
        except (GatewayError, InputError):
            assert field != "prompt_cache_options"
    finally:
        gc.callbacks.remove(count)
    assert gc.isenabled()
    assert len(collections) <= 1  # (the young objects', once their decoding is done)


# -- a client's own text is never echoed whole in a 400 --------------------------------------

_LONG = "k" * 100_000
_CHAT = {"model": "cascade", "messages": HI}
_MSGS = {"model": "cascade", "max_tokens": 8, "messages": HI}
ECHOES: dict[str, tuple[str, dict[str, Any]]] = {
    # an unknown key with a backtick slipped past the clip of its name
    "key_with_a_backtick": ("chat", {**_CHAT, "a`" + _LONG: 1}),
    "key_ending_in_a_backtick": ("chat", {**_CHAT, _LONG + "`": 1}),
    "message_key_with_a_backtick": (
        "chat",
        {**_CHAT, "messages": [{"role": "user", "content": "Hi", "a`" + _LONG: 1}]},
    ),
    "key_starting_with_a_backtick": ("messages", {**_MSGS, "`" + _LONG: 1}),
    # msgspec quotes an enum value it refuses
    "response_format_type": ("chat", {**_CHAT, "response_format": {"type": _LONG}}),
    "role": ("messages", {**_MSGS, "messages": [{"role": _LONG, "content": "Hi"}]}),
    "format_type": (
        "messages",
        {**_MSGS, "output_config": {"format": {"type": _LONG, "schema": {}}}},
    ),
    # jsonschema quotes the schema's value it refuses (the schema is at most 64 KiB)
    "schema_value": (
        "chat",
        {
            **_CHAT,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": {"type": "z" * 60_000}},
            },
        },
    ),
    "schema_key": (
        "messages",
        {
            **_MSGS,
            "output_config": {
                "format": {
                    "type": "json_schema",
                    "schema": {"properties": {"p" * 60_000: {"type": 5}}},
                }
            },
        },
    ),
}


@pytest.mark.parametrize("case", list(ECHOES))
async def test_a_400_never_echoes_the_clients_text_whole(
    gw: Running, openai_server: FakeOpenAIServer, case: str
) -> None:
    import aiohttp

    path, body = ECHOES[case]
    url = gw.base_url + ("/chat/completions" if path == "chat" else "/messages")
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        answer = await response.read()
    assert response.status == 400, answer[:300]
    assert len(answer) < 1000, answer[:300]
    error = json.loads(answer)["error"]
    assert error["type"] == "invalid_request_error"
    if case.startswith(("key", "message_key")):  # still named as unknown, clipped
        named = error["param"] if path == "chat" else error["message"].partition(":")[0]
        assert "kkkk" in named and len(named) < 100, named
        assert error.get("code", "unknown_parameter") == "unknown_parameter"
    assert openai_server.request_count == 0
