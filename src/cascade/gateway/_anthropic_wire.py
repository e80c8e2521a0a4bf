"""Anthropic's Messages API on the gateway: ``POST /v1/messages``, JSON and SSE.

Pure functions, no I/O: a request body in, cascade messages and options out; a
:class:`~cascade.Result` or the events of a run in, Anthropic's wire format out.

Only text is carried: ``system`` as a string or a list of text blocks, each message's
``content`` as a string or a list of text blocks (joined into one string). Tools, images,
documents and extended thinking are a 400 naming the field, never silently dropped.
``metadata``, ``top_p``, ``top_k``, ``service_tier``, ``cache_control``, ``container`` and
``inference_geo`` are accepted and ignored; any other field is a 400.
"""

from __future__ import annotations

import re
import secrets
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from .._errors import InputError
from .._types import MAX_REPORTED_TOKENS, Message, RequestOptions, Result

__all__ = [
    "MAX_BLOCKS",
    "MAX_MESSAGES",
    "MAX_STOP_SEQUENCES",
    "AnthropicRequest",
    "AnthropicSSE",
    "error_body",
    "error_type",
    "message_id",
    "parse_request",
    "render_message",
    "stop_reason",
]

MAX_MESSAGES: Final = 4096
"""The most messages one request may carry."""
MAX_BLOCKS: Final = 1024
"""The most content blocks in one message's ``content``, or in ``system``."""
MAX_STOP_SEQUENCES: Final = 64
"""The most ``stop_sequences``, each of at most 1024 characters."""
_MAX_MODEL_CHARS: Final = 256

# -- the request ---------------------------------------------------------------------------


class _Block(msgspec.Struct, frozen=True):
    # A content block of any type (unknown keys such as cache_control and citations are
    # skipped): only "text" is carried, and the check that says so names the block.
    type: str
    text: str | None = None


_Content = str | Annotated[list[_Block], Meta(max_length=MAX_BLOCKS)]


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["user", "assistant"]
    content: _Content


class _Metadata(msgspec.Struct, frozen=True):
    user_id: str | None = None


class _Thinking(msgspec.Struct, frozen=True):
    type: str
    budget_tokens: int | None = None


class _Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: Annotated[str, Meta(min_length=1, max_length=_MAX_MODEL_CHARS)]
    max_tokens: Annotated[int, Meta(ge=1, le=MAX_REPORTED_TOKENS)]
    messages: Annotated[list[_Message], Meta(min_length=1, max_length=MAX_MESSAGES)]
    system: _Content | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop_sequences: (
        Annotated[
            list[Annotated[str, Meta(min_length=1, max_length=1024)]],
            Meta(max_length=MAX_STOP_SEQUENCES),
        ]
        | None
    ) = None
    stream: bool | None = None
    # Accepted, not carried: cascade has no such option, or it is Anthropic's business.
    metadata: _Metadata | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    top_k: Annotated[int, Meta(ge=0)] | None = None
    service_tier: str | None = None
    cache_control: dict[str, str] | None = None
    container: str | None = None
    inference_geo: str | None = None
    # Refused with a reason rather than as unknown fields: cascade carries text only.
    thinking: _Thinking | None = None
    tools: list[msgspec.Raw] | None = None
    tool_choice: msgspec.Raw | None = None
    output_config: msgspec.Raw | None = None


_decode_body = msgspec.json.Decoder(_Body).decode

# msgspec's messages end in " - at `$.messages[0].content`"; the path is the field's.
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = re.compile(r"(?:missing required|contains unknown) field `([^`]+)`")


class AnthropicRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A ``POST /v1/messages`` body as cascade runs it."""

    model: str
    """The model the client asked for: the gateway's route name."""
    messages: tuple[Message, ...]
    """``system`` first (when given), then the conversation."""
    options: RequestOptions
    stream: bool


def parse_request(raw: bytes) -> AnthropicRequest:
    """Decode a Messages API request body, or raise :class:`~cascade.InputError` whose
    ``path`` names the bad field (``messages[2].content[0].type``).

    Every part is bounded: the number of messages, blocks and stop sequences, the model
    name, and JSON nesting (a body nested deeper than the decoder goes is a 400 too).
    """
    try:
        body = _decode_body(raw)
    except msgspec.ValidationError as exc:
        raise _input_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InputError(f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError("body is not valid JSON: nested too deeply") from None
    _refuse_unsupported(body)
    messages: list[Message] = []
    if body.system is not None:
        messages.append(Message(role="system", content=_text(body.system, "system")))
    for i, msg in enumerate(body.messages):
        messages.append(Message(role=msg.role, content=_text(msg.content, f"messages[{i}]")))
    options = RequestOptions(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        stop=None if not body.stop_sequences else tuple(body.stop_sequences),
    )
    return AnthropicRequest(
        model=body.model, messages=tuple(messages), options=options, stream=body.stream is True
    )


def _input_error(text: str) -> InputError:
    """msgspec's validation message as an InputError naming the field."""
    match = _AT.search(text)
    path = match.group(1) if match else ""
    message = text[: match.start()] if match else text
    field = _FIELD.search(message)
    if field:  # a missing or unknown field: name it, not its parent object
        path = f"{path}.{field.group(1)}" if path else field.group(1)
        message = "unknown field" if "unknown" in message else "field required"
    return InputError(message, path=path)


def _refuse_unsupported(body: _Body) -> None:
    if body.tools:
        raise InputError("tools are not supported by this gateway", path="tools")
    if body.tool_choice is not None:
        raise InputError("tools are not supported by this gateway", path="tool_choice")
    if body.thinking is not None and body.thinking.type != "disabled":
        raise InputError("extended thinking is not supported by this gateway", path="thinking")
    if body.output_config is not None:
        raise InputError("output_config is not supported by this gateway", path="output_config")


def _text(content: str | list[_Block], path: str) -> str:
    """A message's (or the system prompt's) text: its text blocks joined."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, block in enumerate(content):
        where = f"{path}.content[{j}]" if path != "system" else f"system[{j}]"
        if block.type != "text":
            raise InputError(
                f"only text content blocks are supported, got {block.type[:64]!r}",
                path=f"{where}.type",
            )
        if block.text is None:
            raise InputError("field required", path=f"{where}.text")
        parts.append(block.text)
    return "".join(parts)


# -- the answer ----------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode

# cascade's finish reasons (OpenAI's vocabulary) in Anthropic's.
_STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
}


def message_id() -> str:
    """A fresh ``msg_...`` id, shaped like Anthropic's."""
    return "msg_" + secrets.token_hex(12)


def stop_reason(result: Result) -> str:
    """The answer's ``stop_reason``: ``end_turn`` unless it was cut at ``max_tokens`` or
    is a refusal. (A stop sequence reads as ``end_turn``: providers in OpenAI's format do
    not say which one matched.)"""
    if result.refusal is not None:
        return "refusal"
    return _STOP_REASONS.get(result.finish_reason or "stop", "end_turn")


def _usage(result: Result) -> dict[str, int]:
    return {
        "input_tokens": result.usage.input_tokens,
        "output_tokens": result.usage.output_tokens,
    }


def render_message(result: Result, *, msg_id: str, model: str) -> bytes:
    """A run's answer as an Anthropic ``message`` object (the JSON response body).

    ``usage`` counts the whole run's tokens, every attempt included: what the request
    consumed, as ``x-cascade-cost-usd`` prices it.
    """
    return _encode(
        {
            "id": msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": result.text}],
            "stop_reason": stop_reason(result),
            "stop_sequence": None,
            "usage": _usage(result),
        }
    )


def _event(kind: str, payload: Any) -> bytes:
    # msgspec escapes control characters, so the JSON is one line: one data field.
    return b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


_PING: Final = _event("ping", {"type": "ping"})
_BLOCK_STOP: Final = _event("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP: Final = _event("message_stop", {"type": "message_stop"})


class AnthropicSSE:
    """The SSE events of one streamed answer, in the order Anthropic sends them.

    ``start()`` (``message_start``, ``content_block_start`` of the one text block,
    ``ping``), ``delta()`` per piece of text, then ``finish()`` (``content_block_stop``,
    ``message_delta`` with ``stop_reason`` and the run's usage, ``message_stop``), or
    ``error()`` when the run fails after the response began: an ``error`` event the
    client's SDK raises, never a stream that simply ends (a truncated success).

    ``message_start`` reports ``usage`` of 0 tokens: the run is not over when it is sent,
    and ``message_delta`` carries the whole run's input and output tokens.
    """

    __slots__ = ("_model", "_msg_id", "_started")

    def __init__(self, *, msg_id: str, model: str) -> None:
        self._msg_id = msg_id
        self._model = model
        self._started = False

    def __repr__(self) -> str:
        state = "started" if self._started else "idle"
        return f"<AnthropicSSE {self._msg_id} {self._model!r} {state}>"

    @property
    def started(self) -> bool:
        """Whether ``start()`` was sent: after it, failures are ``error`` events."""
        return self._started

    def start(self) -> bytes:
        self._started = True
        message: dict[str, Any] = {
            "id": self._msg_id,
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        block = {"type": "content_block_start", "index": 0, "content_block": _EMPTY_TEXT}
        return (
            _event("message_start", {"type": "message_start", "message": message})
            + _event("content_block_start", block)
            + _PING
        )

    @staticmethod
    def ping() -> bytes:
        return _PING

    @staticmethod
    def delta(text: str) -> bytes:
        return _event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        )

    def finish(self, result: Result) -> bytes:
        """The events that end an answer (``start()`` first if no text came before)."""
        head = b"" if self._started else self.start()
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(result), "stop_sequence": None},
            "usage": _usage(result),
        }
        return head + _BLOCK_STOP + _event("message_delta", delta) + _MESSAGE_STOP

    @staticmethod
    def error(status: int, message: str) -> bytes:
        """The ``error`` event standing for an HTTP ``status`` the response can no longer
        carry (``api_error``, ``overloaded_error``, ...)."""
        return _event("error", _error_payload(status, message))


_EMPTY_TEXT: Final = {"type": "text", "text": ""}

# -- errors --------------------------------------------------------------------------------

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (``api_error`` for other 5xx)."""
    found = _ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def _error_payload(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


def error_body(status: int, message: str) -> bytes:
    """An error response body in Anthropic's format:
    ``{"type": "error", "error": {"type": "not_found_error", "message": "..."}}``."""
    return _encode(_error_payload(status, message))
