"""Anthropic's Messages API (``POST /v1/messages``), JSON and SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from .._config import ProviderConfig
from .._errors import MalformedResponse, ProviderConnectionError, ProviderStatusError, RateLimited
from .._sse import SSEDecoder
from .._types import Chunk, Message, RequestOptions
from ._http import map_exceptions, redact, status_error

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


class _Block(msgspec.Struct):
    type: str
    text: str = ""


class _Usage(msgspec.Struct):
    input_tokens: int = 0
    output_tokens: int = 0


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
    message: _StartMessage | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _ErrorInfo | None = None


_encode = msgspec.json.Encoder().encode
_decode_message = msgspec.json.Decoder(_Message).decode
_decode_event = msgspec.json.Decoder(_Event).decode

_ERROR_STATUS = {"overloaded_error": 529, "rate_limit_error": 429, "api_error": 500}


def messages_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base + ("/messages" if base.endswith("/v1") else "/v1/messages")


def request_body(
    model: str,
    messages: tuple[Message, ...],
    options: RequestOptions,
    *,
    max_tokens: int,
    stream: bool,
) -> dict[str, Any]:
    system = [m.content for m in messages if m.role == "system"]
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": options.max_tokens or max_tokens,
        "messages": [m for m in messages if m.role != "system"] if system else messages,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if options.temperature is not None:
        body["temperature"] = min(options.temperature, 1.0)  # Anthropic's range is [0, 1]
    if options.stop is not None:
        body["stop_sequences"] = options.stop
    if stream:
        body["stream"] = True
    return body


class AnthropicProvider:
    """A model behind Anthropic's Messages API.

    ``config.base_url`` is the API root (``https://api.anthropic.com``); ``/v1/messages``
    is appended. System messages become the top-level ``system`` field. Anthropic requires
    ``max_tokens``: it comes from the request, else ``config.max_tokens``, else 1024.
    """

    def __init__(
        self, config: ProviderConfig, *, session: aiohttp.ClientSession, api_key: str | None
    ) -> None:
        self.config = config
        self.name = config.name
        self.model = config.model
        self._session = session
        self._secret = api_key
        self._url = messages_url(config.base_url)
        headers = {
            "Content-Type": "application/json",
            "anthropic-version": API_VERSION,
            **config.headers,
        }
        if api_key:
            headers["x-api-key"] = api_key
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(
            total=config.timeout_s, sock_connect=config.connect_timeout_s
        )
        self._max_tokens = config.max_tokens or DEFAULT_MAX_TOKENS

    def __repr__(self) -> str:
        return f"<AnthropicProvider {self.name!r} model={self.model!r} url={self._url!r}>"

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the Cascade."""

    async def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]:
        stream = self.config.stream
        body = request_body(
            self.model, messages, options, max_tokens=self._max_tokens, stream=stream
        )
        with map_exceptions(self.name, self.model, self._secret):
            async with self._session.post(
                self._url, data=_encode(body), headers=self._headers, timeout=self._timeout
            ) as resp:
                if resp.status >= 300:
                    raise await status_error(
                        resp, provider=self.name, model=self.model, secret=self._secret
                    )
                if not stream:
                    yield self._whole(await resp.read())
                    return
                async for chunk in self._sse(resp):
                    yield chunk

    def _whole(self, raw: bytes) -> Chunk:
        msg = _decode_message(raw)
        usage = msg.usage
        return Chunk(
            text="".join(b.text for b in msg.content if b.type == "text"),
            finish_reason=_STOP_REASONS.get(msg.stop_reason or "", msg.stop_reason),
            input_tokens=usage.input_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            model=msg.model,
        )

    async def _sse(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
        decoder = SSEDecoder()
        input_tokens: int | None = None
        model: str | None = None
        async for raw in resp.content.iter_any():
            for event in decoder.feed(raw):
                ev = _decode_event(event.data)
                kind = ev.type
                if kind == "content_block_delta":
                    if ev.delta is not None and ev.delta.type == "text_delta" and ev.delta.text:
                        yield Chunk(text=ev.delta.text)
                elif kind == "message_start":
                    if ev.message is not None:
                        model = ev.message.model
                        if ev.message.usage is not None:
                            input_tokens = ev.message.usage.input_tokens
                elif kind == "message_delta":
                    stop = ev.delta.stop_reason if ev.delta is not None else None
                    yield Chunk(
                        finish_reason=_STOP_REASONS.get(stop or "", stop),
                        input_tokens=input_tokens,
                        output_tokens=ev.usage.output_tokens if ev.usage is not None else None,
                        model=model,
                    )
                elif kind == "message_stop":
                    return
                elif kind == "error":
                    raise self._stream_error(ev.error or _ErrorInfo())
        raise ProviderConnectionError(
            "stream ended before message_stop", provider=self.name, model=self.model
        )

    def _stream_error(self, info: _ErrorInfo) -> ProviderStatusError | MalformedResponse:
        message = redact(info.message or info.type, self._secret)
        status = _ERROR_STATUS.get(info.type)
        if status is None:
            return MalformedResponse(
                f"error event {info.type}: {message}", provider=self.name, model=self.model
            )
        if status in (429, 529):
            return RateLimited(message, provider=self.name, model=self.model, status=status)
        return ProviderStatusError(message, provider=self.name, model=self.model, status=status)
