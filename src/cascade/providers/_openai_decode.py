"""What an OpenAI-compatible ``/v1/chat/completions`` server sends, decoded: the wire
types of a JSON body and of a stream's events (msgspec Structs, their decoders built
once), and the stream's text event learned as a template (:class:`_Template`), so that
most events' text is cut out of their bytes rather than decoded.

:class:`~cascade.providers.openai.OpenAIProvider` (``openai.py``) sends the request and
makes chunks of what these decode to.
"""

from __future__ import annotations

import msgspec

from .._types import ReportedTokens

# Private to the OpenAI provider (openai.py), their one reader.
__all__ = [
    "_StreamChunk",
    "_StreamError",
    "_Template",
    "_answered",
    "_cut_texts",
    "_decode_chunk",
    "_decode_response",
    "_text_delta",
    "_token_logprobs",
]

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
