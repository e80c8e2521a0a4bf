"""A fake Anthropic server: ``POST /v1/messages``, JSON and SSE."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from cascade.testing._reply import Reply
from cascade.testing._server import FakeServer
from cascade.testing._wire import Call, SSEEvents, encode_json

__all__ = ["FakeAnthropicServer"]

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens"}

_PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def _stop_reason(reply: Reply) -> str:
    return "refusal" if reply.refusal is not None else _STOP_REASONS[reply.finish_reason]


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + encode_json(payload) + b"\n\n"


def _parse_system(system: Any) -> str | list[Any] | None:
    """The ``system`` prompt if well formed (a string or a list of text blocks)."""
    if isinstance(system, str):
        return system
    if isinstance(system, list) and all(
        isinstance(block, dict) and isinstance(block.get("text"), str) for block in system
    ):
        return system
    return None


class FakeAnthropicServer(FakeServer):
    """A scriptable Anthropic Messages API server on loopback.

    Serves ``POST /v1/messages`` (JSON, or SSE with ``"stream": true``) and
    ``GET /v1/models``. `url` has no path: Anthropic clients append
    ``/v1/messages`` themselves. Requests without an ``anthropic-version``
    header are rejected with 400, like the real API.

    Example::

        async with FakeAnthropicServer() as server:
            server.script("claude-haiku", Reply(status=529), "fine now")
            client = AsyncAnthropic(base_url=server.url, api_key="sk-test")
            ...
            assert server.requests[0].messages[0]["role"] == "system"
    """

    _url_path: ClassVar[str] = ""
    _chat_path: ClassVar[str] = "/v1/messages"
    _request_id_header: ClassVar[str] = "request-id"
    _unknown_model: ClassVar[str] = "model: {model}"

    def _parse(
        self, body: Any, headers: Mapping[str, str]
    ) -> tuple[str, list[dict[str, Any]], bool] | str:
        if "anthropic-version" not in headers:
            return "anthropic-version: header is required"
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        model = body.get("model")
        if not isinstance(model, str):
            return "model: Field required"
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            return "max_tokens: Field required"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        if not all(isinstance(message, dict) for message in messages):
            return "messages: each message must be an object"
        if "system" in body:
            system = _parse_system(body["system"])
            if system is None:
                return "system: must be a string or a list of text blocks"
            messages = [{"role": "system", "content": system}, *messages]
        return model, messages, body.get("stream") is True

    def _error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        kind = _ERROR_TYPES.get(status, "api_error")
        return encode_json({"type": "error", "error": {"type": kind, "message": message}})

    def _refusal_body(self, fault: str, model: str) -> bytes:
        message = (
            "prompt is too long: 208310 tokens > 200000 maximum"
            if fault == "context_length"
            else "Output blocked by content filtering policy"
        )
        error = {"type": "invalid_request_error", "message": message}
        return encode_json({"type": "error", "error": error, "request_id": "req_fake"})

    def _error_event(self, status: int, reply: Reply) -> bytes:
        return b"event: error\ndata: " + self._error_body(status, reply.error_message) + b"\n\n"

    def _json_body(self, call: Call, reply: Reply) -> bytes:
        return encode_json(
            {
                "id": f"msg_{call.n}",
                "type": "message",
                "role": "assistant",
                "model": call.model,
                "content": [{"type": "text", "text": reply.text}],
                "stop_reason": _stop_reason(reply),
                "stop_sequence": None,
                "usage": reply.usage
                if reply.usage is not None
                else {"input_tokens": call.input_tokens, "output_tokens": call.output_tokens},
            }
        )

    def _sse_events(self, call: Call, reply: Reply) -> SSEEvents:
        message: dict[str, Any] = {
            "id": f"msg_{call.n}",
            "type": "message",
            "role": "assistant",
            "model": call.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": reply.start_usage
            if reply.start_usage is not None
            else {"input_tokens": call.input_tokens, "output_tokens": 1},
        }
        head = [
            _event("message_start", {"type": "message_start", "message": message}),
            _event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                },
            ),
            _PING,
        ]
        text, size = reply.text, reply.chunk_chars
        deltas = [
            _event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": text[i : i + size]},
                },
            )
            for i in range(0, len(text), size)
        ]
        tail = [
            _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": _stop_reason(reply),
                        "stop_sequence": None,
                    },
                    "usage": reply.usage
                    if reply.usage is not None
                    else {"output_tokens": call.output_tokens},
                },
            ),
            _event("message_stop", {"type": "message_stop"}),
        ]
        return SSEEvents(head, deltas, tail)

    def _trickle_events(self, call: Call, reply: Reply) -> bytes:
        usage = {"output_tokens": call.output_tokens}
        return _event(
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": None}, "usage": usage},
        ) + _event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": _STOP_REASONS[reply.finish_reason]},
                "usage": usage,
            },
        )

    def _malformed_event(self, call: Call) -> bytes:
        # A delta cut off mid-object: what a proxy that truncates a line sends.
        return (
            b"event: content_block_delta\n"
            b'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_d\n\n'
        )

    def _models_body(self, models: list[str]) -> bytes:
        return encode_json(
            {
                "data": [
                    {
                        "type": "model",
                        "id": model,
                        "display_name": model,
                        "created_at": "1970-01-01T00:00:00Z",
                    }
                    for model in models
                ],
                "has_more": False,
                "first_id": models[0] if models else None,
                "last_id": models[-1] if models else None,
            }
        )
