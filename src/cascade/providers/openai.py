"""OpenAI-compatible ``/v1/chat/completions``: OpenAI, vLLM, llama.cpp, Ollama, Groq, ..."""

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
    ReportedTokens,
    RequestOptions,
    estimate_text_tokens,
    join_chunks,
)
from ._http import DONE, HTTPProvider, post_whole
from ._redact import Scrubber, redact, shorten
from ._status import stream_status

__all__ = ["OpenAIProvider"]


# The wire types below only hold what a body decodes to, which has no reference cycle: not
# tracked by the garbage collector (cheaper to make, and a stream's many events do not
# bring its collections on sooner).


class _Message(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None


class _TokenLogprob(msgspec.Struct, gc=False):
    logprob: float | None = None  # some servers send null for a token they cannot score


class _Logprobs(msgspec.Struct, gc=False):
    content: list[_TokenLogprob] | None = None


class _Choice(msgspec.Struct, gc=False):
    message: _Message
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _PromptDetails(msgspec.Struct, gc=False):
    cached_tokens: ReportedTokens | None = None


class _Usage(msgspec.Struct, gc=False):
    # Bounded and integral, or the body is malformed: a negative or astronomic count
    # would make a call look free or overflow the cost.
    prompt_tokens: ReportedTokens = 0
    completion_tokens: ReportedTokens = 0
    prompt_tokens_details: _PromptDetails | None = None

    def cached(self) -> int | None:
        """Prompt tokens served from the cache (part of ``prompt_tokens``, never more)."""
        details = self.prompt_tokens_details
        if details is None or details.cached_tokens is None:
            return None
        return min(details.cached_tokens, self.prompt_tokens)


class _Response(msgspec.Struct, gc=False):
    choices: list[_Choice]
    usage: _Usage | None = None
    model: str | None = None


class _Delta(msgspec.Struct, gc=False):
    content: str | None = None
    refusal: str | None = None


class _StreamChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None


class _StreamError(msgspec.Struct, gc=False):
    message: str = ""
    code: int | str | None = None
    type: str | None = None


class _StreamChunk(msgspec.Struct, gc=False):
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


def _answered(message: _Message) -> bool:
    return message.content is not None or message.refusal is not None


_decode_response = msgspec.json.Decoder(_Response).decode
_decode_chunk = msgspec.json.Decoder(_StreamChunk).decode
_DATA = attrgetter("data")
_EVENT_NAME = attrgetter("event")
_PLAIN = {"message"}


_TEMPLATE = "__text_event__"  # a stream's _Template, in its state
_CONTENT_KEY = b'"content"'  # the key, whatever spaces come before its colon
_VALUE = b'"content":"'
_decode_str = msgspec.json.Decoder(str).decode


def _text_delta(chunk: _StreamChunk) -> _Delta | None:
    """The delta of an event that is a piece of text and nothing else (one choice, the
    first, with no finish, logprobs, refusal, usage or error): most events. Else None."""
    choices = chunk.choices
    if len(choices) != 1 or chunk.usage is not None or chunk.error is not None:
        return None
    choice = choices[0]
    delta = choice.delta
    if (
        delta is None
        or choice.index != 0
        or choice.finish_reason is not None
        or choice.logprobs is not None
        or delta.refusal is not None
        or chunk.object == "error"
    ):
        return None
    return delta


class _Template:
    """A stream's text event but for its text (most of a stream's events: the same id,
    created time, model and frame, a different piece of text), learned from one decoded:
    an event that is this prefix, then a JSON string's body, then this suffix decodes
    as the learned one does, but for its text, which is that string. So its text is cut
    out of it, not decoded with the rest.

    Learned only from an event where that holds whatever the body: one with no backslash
    (so every quote in it is a string's end, none escaped: its text is in it as is) and
    one ``"content"`` in it, the delta's key (a duplicate key, or that key in another
    object too, is not learned: spaced before its colon, ``"content" :``, it is the same
    key)."""

    __slots__ = ("model", "prefix", "size", "start", "suffix")

    def __init__(self, prefix: bytes, suffix: bytes, model: str | None) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.start = len(prefix)
        self.size = len(prefix) + len(suffix)
        self.model = model

    @classmethod
    def of(cls, data: bytes, content: str, model: str | None) -> _Template | None:
        """The template of ``data``, a plain text event that decoded to ``content``
        (not empty) and ``model``; None if it cannot be one."""
        if b"\\" in data or data.count(_CONTENT_KEY) != 1:
            return None
        start = data.find(_VALUE) + len(_VALUE)
        end = start + len(raw := content.encode())
        if start < len(_VALUE) or data[start:end] != raw or data[end : end + 1] != b'"':
            return None
        return cls(data[:start], data[end:], model)


def _cut_texts(pieces: list[bytes]) -> str | None:
    """The texts cut out of events (``_Template``), joined: as they are when plain ASCII
    (nothing a JSON string holds escaped, nor a quote), else each decoded as a JSON
    string (as within its event). None if one is not a string's body alone (its event
    is then decoded, which tells what it is). Empties ``pieces``."""
    joined = b"".join(pieces)
    try:
        if joined.isascii():
            text = joined.decode("ascii")
            if text.isprintable() and '"' not in text and "\\" not in text:
                return text
        return "".join([_decode_str(b'"' + piece + b'"') for piece in pieces])
    except msgspec.DecodeError:
        return None
    finally:
        pieces.clear()


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
