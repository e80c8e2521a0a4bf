"""Writing a response to a client that may not read it, and its headers.

Every write (the status line and headers, each part of a stream, a JSON body) must reach
the client's socket within ``gateway.write_timeout_s``: a client that stopped reading
(a zero TCP window) is cut off after it, its connection aborted, and :class:`ClientGone`
raised, which the request handler turns into its run cancelled and its slot freed (a
write the transport's buffer takes whole cannot wait: it runs without a timer). A
response whose status line was sent is never followed by a second one: a failure after
it ends a stream with the format's error event (:func:`abandon`), or aborts the
connection. Header values carry no control character (:func:`header_value`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence

from aiohttp import web

from .._types import Attempt, Result
from ._errors import GatewayError, internal_error
from ._wire import WireFormat

__all__ = [
    "ClientGone",
    "abandon",
    "abort",
    "error_response",
    "header_value",
    "result_headers",
    "run_headers",
    "send",
]


class ClientGone(Exception):
    """The client closed the connection, or stopped reading, while its response was
    being written."""

    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response


def error_response(wire: WireFormat, error: GatewayError) -> web.Response:
    """``error`` as a response in ``wire``'s error format."""
    headers = {}
    if error.retry_after_header is not None:
        headers["Retry-After"] = error.retry_after_header
    if error.should_retry is not None:  # the official SDKs obey it over their own rules
        headers["x-should-retry"] = "true" if error.should_retry else "false"
    return web.Response(
        body=wire.error(error),
        status=error.status,
        content_type="application/json",
        headers=headers,
    )


async def send(
    request: web.Request,
    response: web.StreamResponse,
    data: bytes = b"",
    *,
    last: bool = False,
    timeout_s: float,
) -> None:
    """Send ``response``'s status line and headers if not yet sent, then ``data`` (and,
    ``last``, its end: a ``web.Response``'s body). Raises :class:`ClientGone` once the
    connection is aborted: the client left, or took nothing for ``timeout_s``."""
    try:
        if _fits(request, response, data):
            await _send(request, response, data, last=last)
        else:
            async with asyncio.timeout(timeout_s):
                await _send(request, response, data, last=last)
    except (TimeoutError, ConnectionResetError):
        abort(request)
        raise ClientGone(response) from None


async def _send(
    request: web.Request, response: web.StreamResponse, data: bytes, *, last: bool
) -> None:
    if not response.prepared:
        await response.prepare(request)
    if last:
        await response.write_eof(data)
    elif data:
        await response.write(data)


_HEAD_BYTES = 16384
"""Room kept for a status line and headers beside the data of a write."""


def _fits(request: web.Request, response: web.StreamResponse, data: bytes) -> bool:
    """``data`` (with a ``web.Response``'s body, and headers) goes into the transport's
    buffer without reaching its high water mark, and the connection is not waiting for
    the client: the write cannot wait, so it needs no timer. (aiohttp waits in a write
    only once the transport has paused it, past the high water mark.)"""
    transport = request.transport
    if transport is None or request.protocol.writing_paused:
        return False
    size = len(data) + _HEAD_BYTES
    if isinstance(response, web.Response):
        body = response.body
        if not isinstance(body, bytes):
            return body is None
        size += len(body)
    high = transport.get_write_buffer_limits()[1]
    return transport.get_write_buffer_size() + size <= high


def abort(request: web.Request) -> None:
    """Drop the connection at once, whatever is still buffered for it."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def abandon(
    request: web.Request,
    wire: WireFormat,
    response: web.StreamResponse,
    timeout_s: float,
    error: GatewayError | None = None,
) -> None:
    """End a response whose status line was sent, after a failure of the gateway's own
    (``error``, by default an internal error): a stream with the format's error event,
    anything else by aborting the connection (the client sees a broken response, never a
    success nor a second response)."""
    if response.content_type == "text/event-stream":
        try:
            async with asyncio.timeout(timeout_s):
                await response.write_eof(wire.sse_error(error or internal_error()))
        except Exception:  # the connection is dropped either way
            abort(request)
        return
    abort(request)


_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def header_value(text: str) -> str:
    """``text`` safe in a header: control characters (CR, LF...) percent-escaped. Config
    names cannot hold them; a model name an upstream reports might."""
    if text.isprintable():  # no control character (nor other unprintable ones): as is
        return text
    return _UNSAFE.sub(lambda m: f"%{ord(m[0]):02X}", text)


def run_headers(
    route_name: str, *, tier: int, tier_name: str, model: str, attempts: Sequence[Attempt]
) -> dict[str, str]:
    """The ``x-cascade-*`` headers of a run answered by ``tier`` after ``attempts``."""
    return {
        "x-cascade-route": header_value(route_name),
        "x-cascade-tier": str(tier),
        "x-cascade-tier-name": header_value(tier_name),
        "x-cascade-model": header_value(model),
        "x-cascade-cost-usd": f"{sum(a.cost_usd for a in attempts):.8f}",
        "x-cascade-attempts": str(len(attempts)),
        "x-cascade-escalations": str(len({a.tier for a in attempts if a.tier != tier})),
    }


def result_headers(*, route_name: str, result: Result) -> dict[str, str]:
    """The ``x-cascade-*`` headers of a finished run."""
    return run_headers(
        route_name,
        tier=result.tier,
        tier_name=result.tier_name,
        model=result.model,
        attempts=result.attempts,
    ) | {"x-cascade-validated": "true" if result.validated else "false"}
