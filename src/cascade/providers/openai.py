"""OpenAI-compatible ``/v1/chat/completions``: OpenAI, vLLM, llama.cpp, Ollama, Groq, ..."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgspec

from .._config import ProviderConfig
from .._errors import MalformedResponse, ProviderConnectionError
from .._sse import SSEDecoder
from .._types import Chunk, Message, RequestOptions
from ._http import map_exceptions, status_error

__all__ = ["OpenAIProvider"]


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _Response(msgspec.Struct):
    choices: list[_Choice]
    usage: _Usage | None = None
    model: str | None = None


class _Delta(msgspec.Struct):
    content: str | None = None


class _StreamChoice(msgspec.Struct):
    delta: _Delta | None = None
    finish_reason: str | None = None


class _StreamChunk(msgspec.Struct):
    choices: list[_StreamChoice] = []
    usage: _Usage | None = None
    model: str | None = None


_encode = msgspec.json.Encoder().encode
_decode_response = msgspec.json.Decoder(_Response).decode
_decode_chunk = msgspec.json.Decoder(_StreamChunk).decode


def request_body(
    model: str, messages: tuple[Message, ...], options: RequestOptions, *, stream: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages}
    if options.temperature is not None:
        body["temperature"] = options.temperature
    if options.max_tokens is not None:
        body["max_tokens"] = options.max_tokens
    if options.n is not None:
        body["n"] = options.n
    if options.stop is not None:
        body["stop"] = options.stop
    if options.seed is not None:
        body["seed"] = options.seed
    if options.response_format is not None:
        body["response_format"] = options.response_format
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


class OpenAIProvider:
    """A deployment behind an OpenAI-compatible chat completions endpoint.

    ``config.base_url`` is the API root including ``/v1`` (``https://api.openai.com/v1``,
    ``http://127.0.0.1:8000/v1`` for vLLM). With ``stream = true`` the answer is read as
    SSE, event by event off the socket; otherwise as one JSON body.
    """

    def __init__(
        self, config: ProviderConfig, *, session: aiohttp.ClientSession, api_key: str | None
    ) -> None:
        self.config = config
        self.name = config.name
        self.model = config.model
        self._session = session
        self._secret = api_key
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json", **config.headers}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(
            total=config.timeout_s, sock_connect=config.connect_timeout_s
        )
        self._max_tokens = config.max_tokens

    def __repr__(self) -> str:
        return f"<OpenAIProvider {self.name!r} model={self.model!r} url={self._url!r}>"

    async def aclose(self) -> None:
        """Nothing to release: the session belongs to the Cascade."""

    async def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]:
        if options.max_tokens is None and self._max_tokens is not None:
            options = msgspec.structs.replace(options, max_tokens=self._max_tokens)
        stream = self.config.stream
        data = _encode(request_body(self.model, messages, options, stream=stream))
        with map_exceptions(self.name, self.model, self._secret):
            async with self._session.post(
                self._url, data=data, headers=self._headers, timeout=self._timeout
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
        body = _decode_response(raw)
        if not body.choices:
            raise MalformedResponse("no choices in response", provider=self.name, model=self.model)
        choice = body.choices[0]
        usage = body.usage
        return Chunk(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason,
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            model=body.model,
        )

    async def _sse(self, resp: aiohttp.ClientResponse) -> AsyncIterator[Chunk]:
        decoder = SSEDecoder()
        async for raw in resp.content.iter_any():
            for event in decoder.feed(raw):
                if event.data == "[DONE]":
                    return
                if event.event == "error":
                    raise MalformedResponse(
                        f"error event in stream: {event.data[:200]}",
                        provider=self.name,
                        model=self.model,
                    )
                chunk = _decode_chunk(event.data)
                text = ""
                finish = None
                if chunk.choices:
                    choice = chunk.choices[0]
                    if choice.delta is not None and choice.delta.content:
                        text = choice.delta.content
                    finish = choice.finish_reason
                usage = chunk.usage
                if text or finish or usage:
                    yield Chunk(
                        text=text,
                        finish_reason=finish,
                        input_tokens=usage.prompt_tokens if usage else None,
                        output_tokens=usage.completion_tokens if usage else None,
                        model=chunk.model,
                    )
        raise ProviderConnectionError(
            "stream ended before [DONE]", provider=self.name, model=self.model
        )
