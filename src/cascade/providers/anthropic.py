"""Anthropic's Messages API (``POST /v1/messages``), JSON and SSE."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from .._config import ProviderConfig
from .._sse import SSEEvent
from .._types import Chunk, Message, ReportedTokens, RequestOptions
from ._http import DONE, HTTPProvider
from ._redact import Scrubber

__all__ = ["AnthropicProvider"]

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024

# Anthropic's stop reasons in the vocabulary every other part of cascade uses.
_STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

REFUSAL = "stop_reason: refusal"
"""``Completion.refusal`` of an answer Anthropic stopped with ``stop_reason: "refusal"``
(the API sends no refusal text of its own)."""

# The HTTP status each error type of an in-stream `error` event stands for.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class _Block(msgspec.Struct):
    type: str
    text: str = ""


class _Usage(msgspec.Struct):
    # Bounded and integral, or the body is malformed. ``input_tokens`` leaves out the
    # prompt's cache reads and writes; ``message_delta``'s counts are cumulative.
    input_tokens: ReportedTokens | None = None
    output_tokens: ReportedTokens | None = None
    cache_creation_input_tokens: ReportedTokens | None = None
    cache_read_input_tokens: ReportedTokens | None = None


class _Message(msgspec.Struct):
    content: list[_Block]
    model: str | None = None
    stop_reason: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str = ""
    stop_reason: str | None = None


class _ErrorInfo(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _StartMessage(msgspec.Struct):
    model: str | None = None
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    type: str
    index: int = 0
    message: _StartMessage | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _ErrorInfo | None = None


_USAGE_FIELDS = _Usage.__struct_fields__


def _usage_chunk(usage: _Usage | None, **fields: Any) -> Chunk:
    """A chunk of ``fields`` with the token counts of Anthropic's usage: the prompt as the
    sum of its uncached, cache-read and cache-written parts (as cascade counts it)."""
    if usage is None:
        return Chunk(**fields)
    parts = (usage.input_tokens, usage.cache_read_input_tokens, usage.cache_creation_input_tokens)
    return Chunk(
        input_tokens=None if parts == (None, None, None) else sum(p or 0 for p in parts),
        output_tokens=usage.output_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
        cache_write_tokens=usage.cache_creation_input_tokens,
        **fields,
    )


def _merge(seen: _Usage | None, usage: _Usage) -> _Usage:
    """Usage so far and a later report of it: each count the larger of the two (a
    ``message_delta`` repeats the counts cumulatively, or reports the prompt only there)."""
    if seen is None:
        return usage
    larger = {}
    for name in _USAGE_FIELDS:
        a, b = getattr(seen, name), getattr(usage, name)
        larger[name] = b if a is None else a if b is None else max(a, b)
    return _Usage(**larger)


_decode_message = msgspec.json.Decoder(_Message).decode
_decode_event = msgspec.json.Decoder(_Event).decode


def messages_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base + ("/messages" if base.endswith("/v1") else "/v1/messages")


class AnthropicProvider(HTTPProvider):
    """A model behind Anthropic's Messages API.

    ``config.base_url`` is the API root (``https://api.anthropic.com``); ``/v1/messages``
    is appended. System messages become the top-level ``system`` field. Anthropic requires
    ``max_tokens``: it comes from the request, else ``config.max_tokens``, else 1024.
    """

    kind = "anthropic"

    def __init__(
        self, config: ProviderConfig, *, session: aiohttp.ClientSession, api_key: str | None
    ) -> None:
        super().__init__(config, session=session, api_key=api_key)
        self._url = messages_url(config.base_url or "")
        headers = {
            "Content-Type": "application/json",
            "anthropic-version": API_VERSION,
            **config.headers,
        }
        if api_key:
            headers["x-api-key"] = api_key
        self._headers = headers
        self._max_tokens = config.max_tokens or DEFAULT_MAX_TOKENS
        self._scrub = Scrubber(api_key)

    def _body(
        self, messages: tuple[Message, ...], options: RequestOptions, *, stream: bool
    ) -> dict[str, Any]:
        system = [m.content for m in messages if m.role == "system"]
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": options.max_tokens or self._max_tokens,
            "messages": [m for m in messages if m.role != "system"] if system else messages,
        }
        if system:
            body["system"] = "\n\n".join(system)
        if options.temperature is not None:
            body["temperature"] = min(options.temperature, 1.0)  # Anthropic's range is [0, 1]
        if options.top_p is not None:
            body["top_p"] = options.top_p
        if options.stop is not None:
            body["stop_sequences"] = options.stop
        if stream:
            body["stream"] = True
        return body

    def _whole(self, raw: bytes) -> Chunk:
        msg = _decode_message(raw)
        return _usage_chunk(
            msg.usage,
            text="".join(b.text for b in msg.content if b.type == "text"),
            finish_reason=self._stop(msg.stop_reason),
            model=self._scrub(msg.model),
            refusal=REFUSAL if msg.stop_reason == "refusal" else None,
        )

    def _stop(self, reason: str | None) -> str | None:
        found = _STOP_REASONS.get(reason or "")
        return found if found is not None else self._scrub(reason)

    def _event(self, event: SSEEvent, state: dict[str, Any]) -> Chunk | None:
        if not event.data:
            return None
        ev = _decode_event(event.data)
        kind = ev.type
        if kind == "content_block_delta":
            delta = ev.delta
            if delta is not None and delta.type == "text_delta" and delta.text:
                return Chunk(text=delta.text)
        elif kind == "message_start":
            if ev.message is not None:
                state["model"] = self._scrub(ev.message.model)
                if ev.message.usage is not None:
                    state["usage"] = ev.message.usage
        elif kind == "message_delta":
            stop = ev.delta.stop_reason if ev.delta is not None else None
            usage = state.get("usage")
            if ev.usage is not None:
                usage = state["usage"] = _merge(usage, ev.usage)
            elif usage is not None:  # message_start's output count is a placeholder
                usage = msgspec.structs.replace(usage, output_tokens=None)
            return _usage_chunk(
                usage,
                finish_reason=self._stop(stop),
                model=state.get("model"),
                refusal=REFUSAL if stop == "refusal" else None,
            )
        elif kind == "message_stop":
            return DONE
        elif kind == "error":
            info = ev.error or _ErrorInfo()
            status = _ERROR_STATUS.get(info.type, 500)
            raise self._status_error(f"{info.type}: {info.message}", status, kind=info.type)
        return None
