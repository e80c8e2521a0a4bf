"""The Anthropic Messages wire format of the gateway, as pure functions: requests parsed
into cascade messages and options, answers and streams rendered as the official SDK's own
types read them."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from anthropic.types import Message as SDKMessage
from anthropic.types import RawMessageStreamEvent
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from cascade import (
    AttemptStarted,
    Delta,
    Event,
    Finished,
    InputError,
    Message,
    Result,
    Retracted,
    TierStarted,
    Usage,
)
from cascade._sse import SSEDecoder
from cascade.gateway._anthropic_request import MAX_BLOCKS, MAX_STOP_SEQUENCES
from cascade.gateway._anthropic_request import parse_request as parse
from cascade.gateway._anthropic_wire import AnthropicWire, error_type, stop_reason
from cascade.gateway._errors import GatewayError
from cascade.gateway._wire import GatewayRequest, Limits, RunInfo
from cascade.testing._hostile import DEEP_JSON

USER = [{"role": "user", "content": "Hi"}]
LIMITS = Limits(max_messages=64)
WIRE = AnthropicWire()
INFO = RunInfo(id="chatcmpl-abc123", created=0, route="fast")


def parse_request(raw: bytes) -> GatewayRequest:
    return parse(raw, LIMITS)


def body(**fields: Any) -> bytes:
    return json.dumps({"model": "fast", "max_tokens": 64, "messages": USER, **fields}).encode()


def bad_path(raw: bytes) -> str:
    with pytest.raises(InputError) as info:
        parse_request(raw)
    return info.value.path


def result(
    text: str = "Hello there",
    *,
    finish_reason: str | None = "stop",
    refusal: str | None = None,
) -> Result:
    return Result(
        text=text,
        parsed=None,
        tier=2,
        tier_name="big",
        provider="big-a",
        model="gpt-big",
        cost_usd=0.001,
        usage=Usage(input_tokens=30, output_tokens=7),
        latency_s=0.2,
        attempts=(),
        validated=True,
        finish_reason=finish_reason,
        refusal=refusal,
    )


# -- requests --------------------------------------------------------------------------------


def test_a_plain_request_becomes_messages_and_options() -> None:
    req = parse_request(body(temperature=0.5, stop_sequences=["END"], stream=True))
    assert req.model == "fast"
    assert req.stream is True
    assert req.messages == (Message(role="user", content="Hi"),)
    assert req.options.max_tokens == 64
    assert req.options.temperature == 0.5
    assert req.options.stop == ("END",)


def test_system_and_text_blocks_are_joined_into_strings() -> None:
    req = parse_request(
        body(
            system=[
                {"type": "text", "text": "Be brief. ", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Be kind."},
            ],
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": "c"},
                {"role": "user", "content": [{"type": "text", "text": "d", "citations": []}]},
            ],
        )
    )
    assert [(m.role, m.content) for m in req.messages] == [
        ("system", "Be brief. Be kind."),
        ("user", "ab"),
        ("assistant", "c"),
        ("user", "d"),
    ]
    assert parse_request(body(system="S")).messages[0] == Message(role="system", content="S")


def test_fields_cascade_does_not_carry_are_accepted_and_ignored() -> None:
    req = parse_request(
        body(
            metadata={"user_id": "u-1"},
            top_p=1,  # the default: any other is a 400 (test_gateway_fields.py)
            service_tier="auto",
            thinking={"type": "disabled"},
            stream=False,
        )
    )
    assert req.stream is False
    assert req.options.metadata is None


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "64"}, "max_tokens"),
        ({"model": ""}, "model"),
        ({"model": "m" * 300}, "model"),
        ({"messages": []}, "messages"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": {"type": "text"}}]}, "messages[0].content"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"stop_sequences": [""]}, "stop_sequences[0]"),
        ({"system": [{"type": "image", "source": {}}]}, "system[0].type"),
        ({"system": 5}, "system"),
        ({"stream": "yes"}, "stream"),
        ({"tools": [{"name": "get_weather", "input_schema": {}}]}, "tools"),
        ({"tool_choice": {"type": "auto"}}, "tool_choice"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"output_config": {"format": {"type": "json_schema"}}}, "output_config.format.schema"),
        ({"output_config": {"format": {"type": "xml", "schema": {}}}}, "output_config.format.type"),
        (
            {"output_config": {"format": {"type": "json_schema", "schema": []}}},
            ("output_config.format.schema"),
        ),
        ({"output_config": {"verbosity": "low"}}, "output_config.verbosity"),
        ({"frequency_penalty": 1}, "frequency_penalty"),
    ],
)
def test_a_bad_field_is_an_input_error_naming_it(fields: dict[str, Any], path: str) -> None:
    data = {"model": "fast", "max_tokens": 64, "messages": USER, **fields}
    if fields.get("max_tokens", 1) is None:
        del data["max_tokens"]
    assert bad_path(json.dumps(data).encode()) == path


def test_an_output_format_makes_its_schema_the_requests_validator() -> None:
    schema = {"type": "object", "required": ["answer"]}
    req = parse_request(body(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert req.json_schema == schema
    assert req.options.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema},
    }
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(LIMITS.max_schema_depth + 1):
        node["items"] = {}
        node = node["items"]
    fmt = {"type": "json_schema", "schema": deep}
    assert bad_path(body(output_config={"format": fmt})) == "output_config.format.schema"


def test_the_estimate_charged_up_front_counts_prompt_and_max_tokens() -> None:
    req = parse_request(body(messages=[{"role": "user", "content": "x" * 400}]))
    assert req.estimated_tokens == 100 + 4 + 64


def test_a_non_text_block_is_named_by_its_index() -> None:
    messages = [
        *USER,
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "x"}}]},
    ]
    with pytest.raises(InputError) as info:
        parse_request(body(messages=messages))
    assert info.value.path == "messages[2].content[0].type"
    assert "only text" in info.value.message
    blocks = [{"type": "text", "text": "a"}, {"type": "tool_result", "tool_use_id": "t"}]
    assert bad_path(body(messages=[{"role": "user", "content": blocks}])) == (
        "messages[0].content[1].type"
    )
    text_less = [{"role": "user", "content": [{"type": "text"}]}]
    assert bad_path(body(messages=text_less)) == "messages[0].content[0].text"


def test_hostile_bodies_are_bounded_input_errors() -> None:
    too_many = [{"role": "user", "content": "x"}] * (LIMITS.max_messages + 1)
    assert bad_path(body(messages=too_many)) == "messages"
    blocks = [{"type": "text", "text": "x"}] * (MAX_BLOCKS + 1)
    assert bad_path(body(messages=[{"role": "user", "content": blocks}])) == "messages[0].content"
    assert bad_path(body(stop_sequences=["x"] * (MAX_STOP_SEQUENCES + 1))) == "stop_sequences"
    for raw in (
        DEEP_JSON,
        b'{"model": "m", "max_tokens": 5, "messages": [], "tools": ' + b"[" * 50_000,
        b"[1, 2",
        b"\xff\xfe",
        b"",
        b"null",
    ):
        with pytest.raises(InputError):
            parse_request(raw)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "model": _json,
            "max_tokens": _json,
            "messages": _json | st.just(USER),
            "system": _json,
            "stream": _json,
            "stop_sequences": _json,
        },
    )
)
def test_any_json_body_parses_or_is_an_input_error(data: dict[str, Any]) -> None:
    try:
        req = parse_request(json.dumps(data).encode())
    except InputError:
        return
    assert req.messages


# -- answers ---------------------------------------------------------------------------------


def test_an_answer_renders_as_the_sdks_message() -> None:
    request = parse_request(body())
    raw = WIRE.render_json(result(), request, INFO)
    msg = SDKMessage.model_validate_json(raw)
    assert msg.id == "msg_abc123"
    assert msg.model == "gpt-big"
    assert msg.role == "assistant"
    block = msg.content[0]
    assert block.type == "text"
    assert block.text == "Hello there"
    assert msg.stop_reason == "end_turn"
    assert msg.stop_sequence is None
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (30, 7)
    cascade = json.loads(raw)["cascade"]
    assert cascade["tier_name"] == "big"
    assert cascade["route"] == "fast"


@pytest.mark.parametrize(
    ("finish", "refusal", "reason"),
    [
        ("stop", None, "end_turn"),
        (None, None, "end_turn"),
        ("length", None, "max_tokens"),
        ("content_filter", None, "refusal"),
        ("stop", "stop_reason: refusal", "refusal"),
        ("tool_calls", None, "tool_use"),
        ("something_new", None, "end_turn"),
    ],
)
def test_stop_reasons(finish: str | None, refusal: str | None, reason: str) -> None:
    assert stop_reason(result(finish_reason=finish, refusal=refusal)) == reason


def sse_events(raw: bytes) -> list[tuple[str, Any]]:
    return [(e.event, json.loads(e.data)) for e in SSEDecoder().feed(raw)]


_event_adapter: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)


def accumulate(events: list[tuple[str, Any]]) -> SDKMessage:
    """The message the events spell, each read as the SDK's own event type (the SDK's
    ``messages.stream()`` reads them over HTTP in tests/test_gateway_anthropic.py)."""
    message: SDKMessage | None = None
    for kind, data in events:
        if kind == "ping":
            continue
        assert data["type"] == kind
        event = _event_adapter.validate_python(data)
        if event.type == "message_start":
            message = event.message
            continue
        assert message is not None
        if event.type == "content_block_start":
            message.content.append(event.content_block)  # type: ignore[arg-type]
        elif event.type == "content_block_delta":
            block = message.content[event.index]
            assert block.type == "text"
            assert event.delta.type == "text_delta"
            block.text += event.delta.text
        elif event.type == "message_delta":
            message.stop_reason = event.delta.stop_reason
            message.usage.output_tokens = event.usage.output_tokens
            if event.usage.input_tokens is not None:
                message.usage.input_tokens = event.usage.input_tokens
    assert message is not None
    return message


async def events_of(*events: Event) -> AsyncIterator[Event]:
    for event in events:
        yield event


async def render_sse(*events: Event) -> list[bytes]:
    request = parse_request(body(stream=True))
    return [piece async for piece in WIRE.sse(events_of(*events), request, INFO)]


STARTED = AttemptStarted(tier=2, tier_name="big", provider="big-a", model="gpt-big")


@pytest.mark.anyio
async def test_a_stream_renders_as_the_sdk_accumulates_it() -> None:
    text = "Hello there\n\ndata: x"
    pieces = await render_sse(
        TierStarted(tier=2, tier_name="big"),
        STARTED,
        Delta(text="Hello", tier=2, provider="big-a"),
        Delta(text=" there\n\ndata: x", tier=2, provider="big-a"),
        Finished(result=result(text, finish_reason="length")),
    )
    assert len(pieces) == 3  # nothing before the first text: the app sends headers with it
    events = sse_events(b"".join(pieces))
    assert [kind for kind, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    msg = accumulate(events)
    assert msg.id == "msg_abc123"
    assert msg.model == "gpt-big"
    block = msg.content[0]
    assert block.type == "text"
    assert block.text == text
    assert msg.stop_reason == "max_tokens"
    assert (msg.usage.input_tokens, msg.usage.output_tokens) == (30, 7)
    assert events[-2][1]["cascade"]["tier"] == 2


@pytest.mark.anyio
async def test_an_empty_answer_still_has_its_one_text_block() -> None:
    events = sse_events(b"".join(await render_sse(STARTED, Finished(result=result("")))))
    assert events[0][0] == "message_start"
    block = accumulate(events).content[0]
    assert block.type == "text"
    assert block.text == ""


@pytest.mark.anyio
async def test_text_withdrawn_after_it_was_sent_is_an_error_not_a_shorter_answer() -> None:
    retracted = Retracted(tier=1, provider="big-a", chars=5, reason="rejected")
    delta = Delta(text="Hello", tier=1, provider="big-a")
    pieces: list[bytes] = []

    async def read() -> None:
        request = parse_request(body())
        async for piece in WIRE.sse(events_of(STARTED, delta, retracted), request, INFO):
            pieces.append(piece)

    with pytest.raises(GatewayError) as info:
        await read()
    assert info.value.status == 502
    assert [kind for kind, _ in sse_events(b"".join(pieces))][-1] == "content_block_delta"
    # Withdrawn before any text was sent: nothing to take back, the stream goes on.
    quiet = Retracted(tier=1, provider="big-a", chars=0, reason="rejected")
    events = sse_events(b"".join(await render_sse(STARTED, quiet, Finished(result=result()))))
    assert accumulate(events).stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("status", "kind", "in_stream"),
    [
        (400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", "authentication_error"),
        (403, "permission_error", "permission_error"),
        (404, "not_found_error", "not_found_error"),
        (405, "invalid_request_error", "invalid_request_error"),
        (413, "request_too_large", "request_too_large"),
        (429, "rate_limit_error", "overloaded_error"),
        (500, "api_error", "api_error"),
        (502, "api_error", "api_error"),
        (503, "api_error", "overloaded_error"),
        (504, "timeout_error", "timeout_error"),
        (529, "overloaded_error", "overloaded_error"),
    ],
)
def test_errors(status: int, kind: str, in_stream: str) -> None:
    assert error_type(status) == kind
    error = GatewayError(status, "no", param="messages[0].role")
    decoded = msgspec.json.decode(WIRE.error(error))
    assert decoded == {"type": "error", "error": {"type": kind, "message": "messages[0].role: no"}}
    (event,) = sse_events(WIRE.sse_error(error))
    assert event[0] == "error"
    assert event[1]["error"]["type"] == in_stream
