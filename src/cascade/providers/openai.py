"""OpenAI-compatible ``/v1/chat/completions``: OpenAI, vLLM, llama.cpp, Ollama, Groq, ...

What the server sends is decoded by ``_openai_decode.py`` (the wire types, the stream's
text-event template); this module builds the request and makes chunks of the replies.
"""

from __future__ import annotations

from operator import attrgetter
from typing import Any

import aiohttp
import msgspec

from .._config import ProviderConfig
from .._sse import SSEEvent
from .._types import (
    Chunk,
    Message,
    RequestOptions,
    estimate_text_tokens,
    join_chunks,
)
from ._http import DONE, HTTPProvider
from ._http_whole import post_whole
from ._openai_decode import (
    _answered,
    _cut_texts,
    _decode_chunk,
    _decode_response,
    _StreamChunk,
    _StreamError,
    _Template,
    _text_delta,
    _token_logprobs,
)
from ._redact import Scrubber, redact, shorten
from ._status import stream_status

__all__ = ["OpenAIProvider"]


_DATA = attrgetter("data")
_EVENT_NAME = attrgetter("event")
_PLAIN = {"message"}

_TEMPLATE = "__text_event__"  # a stream's _Template, in its state


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
        self._max_tokens_field = config.max_tokens_field
        self._scrub = Scrubber(api_key)

    def _body(
        self, messages: tuple[Message, ...], options: RequestOptions, *, stream: bool
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages}
        max_tokens = options.max_tokens or self._max_tokens
        if max_tokens is not None:
            body[self._max_tokens_field] = max_tokens
        if options.temperature is not None:
            body["temperature"] = options.temperature
        if options.top_p is not None:
            body["top_p"] = options.top_p
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

    def _refusal(self, text: str | None) -> str | None:
        """A refusal's text becomes a verdict's reason (logs, spans, stderr): redacted here,
        where the key is known. A streamed one is redacted piece by piece, each piece of
        the key of 8 or more characters included."""
        return None if text is None else redact(text, self._secret)

    def _whole(self, raw: bytes) -> Chunk:
        body = _decode_response(raw)
        if not body.choices:
            raise self._error("no choices in the response")
        choice = body.choices[0]
        message = choice.message
        if message.content is None and message.refusal is None:
            # A content filter, a tool call: no text answer to validate.
            raise self._error(f"no content in the answer (finish_reason={choice.finish_reason})")
        usage = body.usage
        return Chunk(
            text=message.content or "",
            finish_reason=self._scrub(choice.finish_reason),
            input_tokens=usage.prompt_tokens if usage else None,
            output_tokens=usage.completion_tokens if usage else None,
            model=self._scrub(body.model),
            logprobs=_token_logprobs(choice.logprobs),
            cache_read_tokens=usage.cached() if usage else None,
            refusal=self._refusal(message.refusal),
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
        # A refusal is an answer (empty text, the refusal beside it); a tool call is not.
        choices = [c for c in body.choices if _answered(c.message)]
        texts = [c.message.content or "" for c in choices]
        if not texts:
            raise self._error("no content in any choice")
        usage = body.usage
        total = usage.completion_tokens if usage else sum(estimate_text_tokens(t) for t in texts)
        chars = sum(len(t) for t in texts) or 1
        shares = [total * len(t) // chars for t in texts]
        shares[0] += total - sum(shares)  # rounding: the sum stays what the server billed
        model = self._scrub(body.model)
        return [
            Chunk(
                text=text,
                finish_reason=self._scrub(choice.finish_reason),
                input_tokens=(usage.prompt_tokens if usage else None) if i == 0 else 0,
                output_tokens=share,
                model=model,
                cache_read_tokens=(usage.cached() if usage else None) if i == 0 else None,
                refusal=self._refusal(choice.message.refusal),
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
            shown = shorten(data.decode("utf-8", "replace"), self._secret)
            raise self._error(f"error event in stream: {shown}")
        return self._chunk_of(_decode_chunk(data))

    def _chunks(
        self, events: list[SSEEvent], state: dict[str, Any], limit: int, *, scan: bool
    ) -> tuple[list[Chunk], Chunk | Exception | None]:
        """One read's events, as the base class reads them, in fewer steps when they are
        plain (a data object each, the last perhaps ``[DONE]``): decoded in one ``map``,
        each made a chunk without the checks for keep-alives, named and error events.
        Anything else (or a body that does not decode) goes the event by event way, which
        raises where it should, after the chunks before it."""
        if scan or len(events) < 2 or set(map(_EVENT_NAME, events)) != _PLAIN:
            return super()._chunks(events, state, limit, scan=scan)
        datas = list(map(_DATA, events))
        end: Chunk | None = None
        if datas[-1] == b"[DONE]":
            datas.pop()
            end = DONE
        if b"" in datas or b"[DONE]" in datas:
            return super()._chunks(events, state, limit, scan=scan)
        try:
            decoded = list(map(_decode_chunk, datas))
        except (msgspec.DecodeError, RecursionError):
            return super()._chunks(events, state, limit, scan=scan)
        chunks: list[Chunk] = []
        chunk_of = self._chunk_of
        try:
            for one in decoded:
                chunk = chunk_of(one)
                if chunk is not None:
                    chunks.append(chunk)
        except Exception as exc:
            return chunks, exc
        return chunks, end

    _joins_plain = True

    def _join_plain(
        self, datas: list[bytes], state: dict[str, Any]
    ) -> tuple[Chunk | None, Chunk | None] | None:
        """A read of lone data lines joined, in fewer steps than its chunks made and then
        joined. An event that is the stream's text event (``_Template``) but for its text
        is not decoded: its text is cut out of it. Any other is decoded; of a plain one
        (one choice, a piece of text and nothing else) only the text is kept, no chunk
        made. The model (the last one sent with a chunk, as ``join_chunks`` keeps it) is
        scrubbed once. Anything the event by event way would stop at (a keep-alive,
        ``[DONE]`` before the last event, a body that does not decode, an error) is left
        to it."""
        end = None
        if datas[-1] == b"[DONE]":
            datas = datas[:-1]
            end = DONE
        template: _Template | None = state.get(_TEMPLATE)
        prefix = suffix = b"\0"  # (no event starts with a NUL: none is the template's)
        start = size = 0
        if template is not None:
            prefix, suffix = template.prefix, template.suffix
            start, size = template.start, template.size
        texts: list[str] = []
        pieces: list[bytes] = []  # texts cut out since the last one in texts
        others: list[Chunk] = []
        model = None
        chunk_of = self._chunk_of
        for data in datas:
            if data.startswith(prefix) and data.endswith(suffix) and len(data) >= size:
                # the template's event: its text cut out of it
                cut = data[start : len(data) - len(suffix)]
                if cut:
                    pieces.append(cut)
                    model = template.model or model  # type: ignore[union-attr]
                continue
            try:  # (a keep-alive's empty data, a [DONE] before the end: neither decodes)
                one = _decode_chunk(data)
            except (msgspec.DecodeError, RecursionError):
                return None
            delta = _text_delta(one)
            if delta is not None:  # as _chunk_of: a piece of text and nothing else
                content = delta.content
                if content:
                    if pieces:
                        if (cuts := _cut_texts(pieces)) is None:
                            return None
                        texts.append(cuts)
                    texts.append(content)
                    if one.model:
                        model = one.model
                    if template is None:
                        template = _Template.of(data, content, one.model)
                        if template is not None:
                            state[_TEMPLATE] = template
                            prefix, suffix = template.prefix, template.suffix
                            start, size = template.start, template.size
                continue
            try:
                chunk = chunk_of(one)
            except Exception:
                return None
            if chunk is not None:
                if pieces:
                    if (cuts := _cut_texts(pieces)) is None:
                        return None
                    texts.append(cuts)
                texts.append(chunk.text)
                others.append(chunk)
                if one.model:
                    model = one.model
        if pieces:
            if (cuts := _cut_texts(pieces)) is None:
                return None
            texts.append(cuts)
        if not texts:  # (a text for each chunk, if empty)
            return None, end
        # A model scrubbed is empty only if it was: the last one sent, scrubbed.
        if not others:
            return Chunk(text="".join(texts), model=self._scrub(model)), end
        joined = others[0] if len(others) == 1 else join_chunks(others)
        text = "".join(texts)
        return msgspec.structs.replace(joined, text=text, model=self._scrub(model)), end

    def _chunk_of(self, chunk: _StreamChunk) -> Chunk | None:
        """The chunk of one decoded event (None: nothing in it); raises for an error the
        server reported in it."""
        delta = _text_delta(chunk)
        if delta is not None:  # most events
            if not delta.content:
                return None
            return Chunk(text=delta.content, model=self._scrub(chunk.model))
        if chunk.error is not None or chunk.object == "error":
            err = chunk.error or _StreamError()
            message = err.message or "error in stream"
            named = err.code if isinstance(err.code, int) else None
            # Azure's content_filter, a context_length_exceeded code: a 400 (never the text)
            status = stream_status(named, code=err.code, kind=err.type)
            raise self._status_error(message, status, code=err.code, kind=err.type)
        text = ""
        finish = None
        logprobs = None
        refusal = None
        for choice in chunk.choices:
            if choice.index != 0:
                continue  # with n > 1 only the first choice is the answer
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    text = delta.content
                if delta.refusal:
                    refusal = self._refusal(delta.refusal)
            finish = choice.finish_reason
            if choice.logprobs is not None:
                logprobs = _token_logprobs(choice.logprobs)
        usage = chunk.usage
        if usage is None:
            if not (text or finish or logprobs or refusal):
                return None
            # most events: a piece of text, no usage (the Struct built in one call)
            return Chunk(
                text=text,
                finish_reason=None if finish is None else self._scrub(finish),
                model=self._scrub(chunk.model),
                logprobs=logprobs,
                refusal=refusal,
            )
        return Chunk(
            text=text,
            finish_reason=None if finish is None else self._scrub(finish),
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            model=self._scrub(chunk.model),
            logprobs=logprobs,
            cache_read_tokens=usage.cached(),
            refusal=refusal,
        )
