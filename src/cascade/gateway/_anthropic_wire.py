"""Anthropic's Messages API on the gateway (``POST /v1/messages``), JSON and SSE.

The request is parsed by :mod:`._anthropic_request`; this module renders what the run
gives back: a :class:`~cascade.Result` as a ``message`` object, the run's events as
Anthropic's SSE events, errors as ``{"type": "error", "error": {"type", "message"}}``.

A stream is ``message_start``, ``content_block_start`` (one text block), ``ping``,
``content_block_delta`` per piece of text, ``content_block_stop``, ``message_delta``
(``stop_reason`` and the run's usage) and ``message_stop``. The format has no way to
withdraw text: in speculative mode, an answer withdrawn after its text was sent ends the
stream with an ``error`` event (the client's SDK raises it), never with a shortened
answer presented as complete.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Final

import msgspec

from .._types import Result
from ..engine import AttemptStarted, Delta, Event, Finished, Retracted
from ._anthropic_request import parse_request
from ._errors import WITHDRAWN, GatewayError
from ._wire import GatewayRequest, Limits, RunInfo, summary

__all__ = ["AnthropicSSE", "AnthropicWire", "error_type", "stop_reason"]

_encode = msgspec.json.Encoder().encode

# cascade's finish reasons (OpenAI's vocabulary) in Anthropic's.
_STOP_REASONS: Final = {
    "stop": "end_turn",
    "length": "max_tokens",
    "content_filter": "refusal",
    "tool_calls": "tool_use",
}

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


def stop_reason(result: Result) -> str:
    """The answer's ``stop_reason``: ``end_turn`` unless it was cut at ``max_tokens`` or
    is a refusal. (A stop sequence reads as ``end_turn``: providers in OpenAI's format do
    not say which one matched.)"""
    if result.refusal is not None:
        return "refusal"
    return _STOP_REASONS.get(result.finish_reason or "stop", "end_turn")


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status (``api_error`` for other 5xx)."""
    found = _ERROR_TYPES.get(status)
    if found is not None:
        return found
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def _usage(result: Result) -> dict[str, int]:
    # The whole run's tokens, every attempt included: what the request consumed, as
    # x-cascade-cost-usd prices it (the OpenAI format counts the same).
    return {"input_tokens": result.usage.input_tokens, "output_tokens": result.usage.output_tokens}


def _event(kind: str, payload: Any) -> bytes:
    # msgspec escapes control characters: the JSON is one line, so one data field.
    return b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


def _error_event(error_kind: str, message: str) -> bytes:
    return _event("error", {"type": "error", "error": {"type": error_kind, "message": message}})


_PING: Final = _event("ping", {"type": "ping"})
_BLOCK_START: Final = _event(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
_BLOCK_STOP: Final = _event("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP: Final = _event("message_stop", {"type": "message_stop"})


class AnthropicSSE:
    """The SSE events of one streamed answer, in the order Anthropic sends them.

    :meth:`start` (``message_start``, ``content_block_start``, ``ping``), :meth:`delta`
    per piece of text, then :meth:`finish`. ``message_start`` reports 0 tokens: the run is
    not over when it is sent; ``message_delta`` carries the run's input and output tokens
    (the SDK takes both from it).
    """

    __slots__ = ("_msg_id", "started")

    def __init__(self, *, msg_id: str) -> None:
        self._msg_id = msg_id
        self.started = False
        """Whether :meth:`start` was sent (after it, a failure is an ``error`` event)."""

    def __repr__(self) -> str:
        return f"<AnthropicSSE {self._msg_id} {'started' if self.started else 'idle'}>"

    def start(self, model: str) -> bytes:
        self.started = True
        message: dict[str, Any] = {
            "id": self._msg_id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        start = _event("message_start", {"type": "message_start", "message": message})
        return start + _BLOCK_START + _PING

    @staticmethod
    def delta(text: str) -> bytes:
        delta = {"type": "text_delta", "text": text}
        return _event(
            "content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}
        )

    def finish(self, result: Result, cascade: dict[str, Any] | None = None) -> bytes:
        """The events that end an answer (:meth:`start` first if no text came before);
        ``cascade``, the run's summary, rides on ``message_delta``."""
        head = b"" if self.started else self.start(result.model)
        delta: dict[str, Any] = {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason(result), "stop_sequence": None},
            "usage": _usage(result),
        }
        if cascade is not None:
            delta["cascade"] = cascade
        return head + _BLOCK_STOP + _event("message_delta", delta) + _MESSAGE_STOP


class AnthropicWire:
    """Anthropic Messages, at ``/v1/messages``: the :class:`~._wire.WireFormat` the
    official ``anthropic`` SDK speaks (``messages.create``, ``messages.stream``)."""

    path = "/v1/messages"
    request_id_header = "request-id"
    text_only = False  # message_start names the model of the call (AttemptStarted)

    def __repr__(self) -> str:
        return f"<AnthropicWire {self.path}>"

    def parse(self, body: bytes, limits: Limits) -> GatewayRequest:
        return parse_request(body, limits)

    def render_json(self, result: Result, request: GatewayRequest, info: RunInfo) -> bytes:
        return _encode(
            {
                "id": _message_id(info),
                "type": "message",
                "role": "assistant",
                "model": result.model,
                "content": [{"type": "text", "text": result.text}],
                "stop_reason": stop_reason(result),
                "stop_sequence": None,
                "usage": _usage(result),
                "cascade": summary(result, info),
            }
        )

    async def sse(
        self, events: AsyncIterator[Event], request: GatewayRequest, info: RunInfo
    ) -> AsyncGenerator[bytes, None]:
        stream = AnthropicSSE(msg_id=_message_id(info))
        models: dict[str, str] = {}  # provider -> model, for message_start's model
        async for event in events:
            kind = type(event)
            if kind is Delta:
                assert isinstance(event, Delta)
                head = (
                    b""
                    if stream.started
                    else stream.start(models.get(event.provider, request.model))
                )
                yield head + stream.delta(event.text)
            elif kind is AttemptStarted:
                assert isinstance(event, AttemptStarted)
                models[event.provider] = event.model
            elif kind is Retracted and stream.started:
                assert isinstance(event, Retracted)
                raise GatewayError(
                    502,
                    f"the answer being streamed was withdrawn ({event.reason[:200]}); "
                    "Anthropic's format cannot replace text already sent: retry the request",
                    code=WITHDRAWN,
                )
            elif kind is Finished:
                assert isinstance(event, Finished)
                yield stream.finish(event.result, summary(event.result, info))
                return

    def error(self, error: GatewayError) -> bytes:
        return _encode(
            {
                "type": "error",
                "error": {"type": error_type(error.status), "message": _message(error)},
            }
        )

    def sse_error(self, error: GatewayError) -> bytes:
        # Mid-stream, capacity is "overloaded_error", as Anthropic's own streams say it.
        kind = "overloaded_error" if error.status in (429, 503, 529) else error_type(error.status)
        return _error_event(kind, _message(error))


def _message(error: GatewayError) -> str:
    """The error's message, led by the field at fault (Anthropic's messages name it)."""
    return f"{error.param}: {error.message}" if error.param else error.message


def _message_id(info: RunInfo) -> str:
    """``msg_...``, from the gateway's response id."""
    return "msg_" + info.id.rpartition("-")[2]
