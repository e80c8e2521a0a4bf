"""Wire-level pieces both formats share: JSON codec, answer shapes, faulty writes.

Nothing here knows OpenAI from Anthropic: a format renders its bytes, and
these helpers decide how much of them reaches the socket.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
from aiohttp import web

from cascade.testing._reply import Reply

__all__ = [
    "Call",
    "SSEEvents",
    "content_chars",
    "decode_json",
    "encode_json",
    "make_call",
    "send_cut_json",
    "send_sse",
]

# Built once: per-request encoder construction would dominate a fast path.
decode_json = msgspec.json.Decoder().decode
encode_json = msgspec.json.Encoder().encode


class Call(NamedTuple):
    """A validated chat request, as a wire format needs it to render an answer."""

    n: int
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    body: dict[str, Any]
    created: int
    input_tokens: int
    output_tokens: int
    extra: tuple[Reply, ...] = ()
    """Further choices of a non-streaming request with ``n`` > 1 (OpenAI)."""


class SSEEvents(NamedTuple):
    """A stream split where faults cut it: before, per content delta, after."""

    head: list[bytes]
    deltas: list[bytes]
    tail: list[bytes]


def content_chars(content: Any) -> int:
    """Characters of text in a message's ``content`` (a string or content parts)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(
            len(part["text"])
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return 0


def make_call(
    n: int,
    model: str,
    messages: list[dict[str, Any]],
    stream: bool,
    body: dict[str, Any],
    reply: Reply,
) -> Call:
    """Bundle a request with its answer's timestamp and token counts."""
    input_tokens = reply.input_tokens
    if input_tokens is None:
        input_tokens = max(1, sum(content_chars(m.get("content")) for m in messages) // 4)
    output_tokens = reply.output_tokens
    if output_tokens is None:
        output_tokens = max(1, len(reply.text) // 4)
    if reply.model is not None:
        model = reply.model  # the name the response reports
    return Call(n, model, messages, stream, body, int(time.time()), input_tokens, output_tokens)


def extra_output_tokens(reply: Reply) -> int:
    return reply.output_tokens if reply.output_tokens is not None else max(1, len(reply.text) // 4)


async def send_cut_json(
    request: web.Request, payload: bytes, headers: dict[str, str]
) -> web.StreamResponse:
    """Promise ``payload`` in Content-Length, send half of it, drop the connection."""
    response = web.StreamResponse(headers=headers)
    response.content_length = len(payload)
    response.force_close()
    await response.prepare(request)
    await response.write(payload[: len(payload) // 2])
    _cut(request)
    return response


async def send_sse(
    request: web.Request,
    headers: dict[str, str],
    events: SSEEvents,
    reply: Reply,
    malformed: bytes,
    error_event: bytes,
    pause: Callable[[float], Awaitable[None]],
) -> web.StreamResponse:
    """Stream ``events`` as ``reply`` asks: paced, cut short, or with a bad event."""
    response = web.StreamResponse(headers=headers)
    if reply.fault is not None:
        response.force_close()
    await response.prepare(request)
    first = [*events.head, *events.deltas[:1]]
    if reply.fault == "drop":
        await response.write(b"".join(first))
        _cut(request)
    elif reply.fault == "malformed":
        await response.write(b"".join([*first, malformed]))
    elif reply.fault == "error_event":
        await response.write(b"".join([*first, error_event]))
    elif reply.fault == "stall":
        await response.write(b"".join(first))
        while True:  # until the client disconnects or the server closes (_Closing)
            await pause(reply.chunk_delay_s or 0.05)
            await response.write(b": keep-alive\n\n")
    elif reply.chunk_delay_s <= 0 or len(events.deltas) < 2:
        # One write: most of the cost of a fast stream is per write.
        await response.write(b"".join(events.head + events.deltas + events.tail))
    else:
        await response.write(b"".join(first))
        for delta in events.deltas[1:]:
            await pause(reply.chunk_delay_s)
            await response.write(delta)
        await response.write(b"".join(events.tail))
    return response


def _cut(request: web.Request) -> None:
    """Close the connection mid-body, keeping what was already written."""
    transport = request.transport
    if transport is None:
        return
    # abort() discards unsent bytes; if any are still buffered, close() sends
    # them first and the body is still cut short.
    if transport.get_write_buffer_size():
        transport.close()
    else:
        transport.abort()
