"""What a fake server answers (`Reply`) and what it saw (`FakeRequest`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeAlias

import msgspec
from msgspec import Meta

__all__ = ["FakeRequest", "Reply", "Responder"]

NonNegative = Annotated[float, Meta(ge=0)]


class Reply(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One scripted answer of a fake server, success or failure.

    A non-200 ``status`` sends an error body in the wire format of the API;
    a ``fault`` takes precedence over ``status`` and breaks the transport or
    the payload instead.

    Example::

        Reply(text="Paris", latency_s=0.05)
        Reply(status=429, retry_after_s=1.5)          # rate limited
        Reply(text="half an answer", fault="drop")    # connection lost mid-body
    """

    text: str = ""
    #: HTTP status; anything but 200 sends an error body.
    status: Annotated[int, Meta(ge=200, le=599)] = 200
    #: Delay before the response starts (before the headers).
    latency_s: NonNegative = 0.0
    #: SSE: characters of content per delta event.
    chunk_chars: Annotated[int, Meta(ge=1)] = 8
    #: SSE: delay between delta events.
    chunk_delay_s: NonNegative = 0.0
    #: Sets ``Retry-After`` (whole seconds, rounded up) and ``retry-after-ms``.
    retry_after_s: NonNegative | None = None
    #: Extra response headers, e.g. rate-limit headers.
    headers: dict[str, str] = {}
    #: ``drop``: connection closed mid-body; ``malformed``: invalid JSON; ``hang``: never
    #: answers; ``error_event``: streaming, an in-stream error event carrying ``status``
    #: after the first delta (non-streaming: the same as an error status); ``stall``:
    #: streaming, the first delta and then only SSE keep-alive comments (every
    #: ``chunk_delay_s``, default 0.05 s) until the client leaves (non-streaming: ``hang``).
    #: Hostile bodies, generated as they are sent (never held whole): ``huge``, a JSON body
    #: (streaming: one SSE event) whose text is ``fault_bytes`` spaces; ``gzip_bomb``, the
    #: same gzip-encoded (a GiB of spaces is about 1 MB on the wire); ``endless``, text
    #: deltas without end (non-streaming: a JSON body whose text never ends);
    #: ``deep_json``, JSON nested 100,000 deep as the body or an event's data (with an
    #: error ``status``: as the error body); ``trickle``, streaming, the first delta, then
    #: only usage and finish events, without text, every ``chunk_delay_s`` (default
    #: 0.05 s) until the client leaves (non-streaming: ``hang``).
    #: Broken streams and refusals: ``reset``, the connection closed before any header;
    #: ``no_done``, streaming, every event but the terminator (OpenAI's ``data: [DONE]``,
    #: Anthropic's ``message_stop``), then a clean end of body; ``wrong_content_type``,
    #: streaming, the whole JSON body (``application/json``, or the ``Content-Type`` of
    #: ``headers``) as a server that ignores ``stream`` sends it; ``done_early``, streaming,
    #: the first delta then the terminator, without a finish reason or usage (a proxy that
    #: lost its upstream mid-answer and ends the stream as if it were done);
    #: ``context_length`` and ``content_filter``, a 400 with the API's own body for a
    #: prompt too long for the model and for a content-policy refusal.
    fault: (
        Literal[
            "drop",
            "malformed",
            "hang",
            "error_event",
            "stall",
            "huge",
            "gzip_bomb",
            "endless",
            "deep_json",
            "trickle",
            "reset",
            "no_done",
            "done_early",
            "wrong_content_type",
            "context_length",
            "content_filter",
        ]
        | None
    ) = None
    finish_reason: Literal["stop", "length"] = "stop"
    #: Default: ``max(1, total characters of all message contents // 4)``.
    input_tokens: Annotated[int, Meta(ge=0)] | None = None
    #: Default: ``max(1, len(text) // 4)``.
    output_tokens: Annotated[int, Meta(ge=0)] | None = None
    error_message: str = "simulated error"
    #: Token log-probabilities, sent (OpenAI format) when the request asks ``logprobs``;
    #: the text is split into as many tokens, spread over the SSE deltas with the text.
    logprobs: tuple[float, ...] | None = None
    #: The model name the response reports (default: the model requested).
    model: str | None = None
    #: The usage object sent as is instead of the counted one: OpenAI's ``usage`` (the
    #: JSON body's, or the SSE usage chunk's); Anthropic's (the JSON body's, or the SSE
    #: ``message_delta``'s). Nothing in it is checked: hostile values are the point.
    usage: dict[str, Any] | None = None
    #: Anthropic SSE: the ``message_start`` event's usage, sent as is.
    start_usage: dict[str, Any] | None = None
    #: The model refuses. OpenAI: ``message.refusal`` with ``content`` null (SSE:
    #: ``delta.refusal`` pieces instead of content); Anthropic: ``text`` (usually empty)
    #: with ``stop_reason: "refusal"``.
    refusal: str | None = None
    #: OpenAI SSE with ``fault = "error_event"``: an ``event: error`` SSE event whose data
    #: is ``error_message`` as is, instead of vLLM's ``data: {"error": ...}`` chunk.
    named_error_event: bool = False
    #: ``huge`` and ``gzip_bomb``: the bytes of filler in the body's text (default 1 GiB).
    fault_bytes: Annotated[int, Meta(ge=0)] = 1 << 30
    #: Non-streaming (OpenAI): this many choices more than the request's ``n`` asks for, as
    #: a server that ignores ``n`` sends them; the extra ones come from the script too.
    extra_choices: Annotated[int, Meta(ge=0, le=64)] = 0

    def __post_init__(self) -> None:
        # Meta bounds are only checked when decoding; direct construction is
        # how tests build replies, so check them here as well.
        if not 200 <= self.status <= 599:
            raise ValueError(f"status must be within 200..599, got {self.status}")
        if self.chunk_chars < 1:
            raise ValueError(f"chunk_chars must be >= 1, got {self.chunk_chars}")
        for name in (
            "latency_s",
            "chunk_delay_s",
            "retry_after_s",
            "input_tokens",
            "output_tokens",
            "fault_bytes",
            "extra_choices",
        ):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.logprobs is not None and any(not lp <= 0 for lp in self.logprobs):
            raise ValueError("logprobs must all be <= 0")


class FakeRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A chat request as a fake server received it.

    ``messages`` are as sent; for Anthropic a top-level ``system`` prompt is
    prepended as ``{"role": "system", "content": system}``. ``headers`` have
    lower-cased names.

    Example::

        assert server.requests[-1].model == "tier1"
        assert server.requests[-1].headers["authorization"] == "Bearer sk-test"
    """

    model: str
    messages: list[dict[str, Any]]
    stream: bool
    body: dict[str, Any]
    headers: dict[str, str]


Responder: TypeAlias = Callable[[FakeRequest], Reply | str | Awaitable[Reply | str]]
"""Decides the answer per request; a plain ``str`` means ``Reply(text=...)``."""


def as_reply(value: Reply | str) -> Reply:
    """Turn a scripted value into a `Reply` (a string is the reply's text)."""
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Reply(text=value)
    raise TypeError(f"expected Reply or str, got {type(value).__name__}")
