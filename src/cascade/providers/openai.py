"""OpenAI-compatible ``/v1/chat/completions``: OpenAI, vLLM, llama.cpp, Ollama, Groq, ..."""

from __future__ import annotations

from typing import Any

import aiohttp
import msgspec

from .._config import ProviderConfig
from .._sse import SSEEvent
from .._types import Chunk, Message, RequestOptions, estimate_text_tokens
from ._http import DONE, HTTPProvider, post_whole

__all__ = ["OpenAIProvider"]


class _Message(msgspec.Struct):
    content: str | None = None
    refusal: str | None = None


class _TokenLogprob(msgspec.Struct):
    logprob: float | None = None  # some servers send null for a token they cannot score


class _Logprobs(msgspec.Struct):
    content: list[_TokenLogprob] | None = None


class _Choice(msgspec.Struct):
    message: _Message
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


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
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _StreamError(msgspec.Struct):
    message: str = ""
    code: int | str | None = None


class _StreamChunk(msgspec.Struct):
    choices: list[_StreamChoice] = []
    usage: _Usage | None = None
    model: str | None = None
    error: _StreamError | None = None  # vLLM and OpenAI report mid-stream errors so
    object: str | None = None


def _token_logprobs(logprobs: _Logprobs | None) -> tuple[float, ...] | None:
    """``choices[i].logprobs.content[].logprob``; None when the server sent none."""
    if logprobs is None or not logprobs.content:
        return None
    return tuple(t.logprob for t in logprobs.content if t.logprob is not None) or None


_decode_response = msgspec.json.Decoder(_Response).decode
_decode_chunk = msgspec.json.Decoder(_StreamChunk).decode


class OpenAIProvider(HTTPProvider):
    """A deployment behind an OpenAI-compatible chat completions endpoint.

    ``config.base_url`` is the API root including ``/v1`` (``https://api.openai.com/v1``,
    ``http://127.0.0.1:8000/v1`` for vLLM). With ``stream = true`` the answer is read as
    SSE, event by event off the socket; otherwise as one JSON body.
    """

    kind = "openai"

    def __init__(
        self, config: ProviderConfig, *, session: aiohttp.ClientSession, api_key: str | None
    ) -> None:
        super().__init__(config, session=session, api_key=api_key)
        self._url = (config.base_url or "").rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json", **config.headers}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers
        self._max_tokens = config.max_tokens

    def _body(
        self, messages: tuple[Message, ...], options: RequestOptions, *, stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        max_tokens = options.max_tokens or self._max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.n is not None:
            body["n"] = options.n
        if options.stop is not None:
            body["stop"] = options.stop
        if options.seed is not None:
            body["seed"] = options.seed
        if options.response_format is not None:
            body["response_format"] = options.response_format
        if options.logprobs:
            body["logprobs"] = True
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    def _whole(self, raw: bytes) -> Chunk:
        body = _decode_response(raw)
        if not body.choices:
            raise self._error("no choices in the response")
        choice = body.choices[0]
        if choice.message.content is None:
            # A refusal, a content filter, a tool call: no text answer to validate.
            why = choice.message.refusal or f"finish_reason={choice.finish_reason}"
            raise self._error(f"no content in the answer ({why})")
        usage = body.usage
        return Chunk(
            text=choice.message.content,
            finish_reason=choice.finish_reason,
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            model=body.model,
            logprobs=_token_logprobs(choice.logprobs),
        )

    async def complete_n(
        self, messages: tuple[Message, ...], options: RequestOptions, n: int
    ) -> list[Chunk]:
        """``n`` answers from one request (the API's ``n``), one chunk per choice.

        The prompt is billed once: its tokens go to the first answer. The completion tokens
        the server reports for all choices are shared out by each answer's length.
        """
        body = self._body(messages, msgspec.structs.replace(options, n=n), stream=False)
        return await post_whole(self, body, self._choices)

    def _choices(self, raw: bytes) -> list[Chunk]:
        body = _decode_response(raw)
        texts = [c.message.content for c in body.choices if c.message.content is not None]
        if not texts:
            raise self._error("no content in any choice")
        usage = body.usage
        total = usage.completion_tokens if usage else sum(estimate_text_tokens(t) for t in texts)
        chars = sum(len(t) for t in texts) or 1
        shares = [total * len(t) // chars for t in texts]
        shares[0] += total - sum(shares)  # rounding: the sum stays what the server billed
        choices = [c for c in body.choices if c.message.content is not None]
        return [
            Chunk(
                text=text,
                finish_reason=choice.finish_reason,
                input_tokens=(usage.prompt_tokens if usage else None) if i == 0 else 0,
                output_tokens=share,
                model=body.model,
            )
            for i, (text, choice, share) in enumerate(zip(texts, choices, shares, strict=True))
        ]

    def _event(self, event: SSEEvent, state: dict[str, Any]) -> Chunk | None:
        data = event.data
        if data == b"[DONE]":
            return DONE
        if not data:
            return None  # an empty keep-alive event
        if event.event == "error":
            raise self._error(f"error event in stream: {data[:200].decode('utf-8', 'replace')}")
        chunk = _decode_chunk(data)
        if chunk.error is not None or chunk.object == "error":
            err = chunk.error or _StreamError()
            code = err.code if isinstance(err.code, int) and 400 <= err.code < 600 else 500
            raise self._status_error(err.message or "error in stream", code)
        text = ""
        finish = None
        logprobs = None
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # with n > 1 only the first choice is the answer
            if choice.delta is not None and choice.delta.content:
                text = choice.delta.content
            finish = choice.finish_reason
            logprobs = _token_logprobs(choice.logprobs)
        usage = chunk.usage
        if not (text or finish or usage or logprobs):
            return None
        return Chunk(
            text=text,
            finish_reason=finish,
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            model=chunk.model,
            logprobs=logprobs,
        )
