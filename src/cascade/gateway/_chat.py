"""The ``POST`` handler of a chat path, whatever its wire format: HTTP around the request
served (``_serve.py``).

A client that disconnects cancels the handler (``handler_cancellation``), which cancels
the run (or leaves the ``async with`` of the stream) and so the upstream call at once; a
client that stops reading is cut off the same way once one write waited
``write_timeout_s`` (the connection is aborted). Once a response's status line is sent,
nothing starts a second one: a failure after it ends a stream with the format's error
event, or aborts the connection. A request the drain gives up on (``_server._drain``)
answers 503 ``shutting_down`` instead. Every request gets a SERVER span (a child of the
caller's ``traceparent``, the parent of ``cascade.run``), a request id, and one
access-log line (``_access.py``).
"""

from __future__ import annotations

import asyncio
from contextlib import AbstractContextManager, nullcontext
from time import perf_counter
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from opentelemetry.trace import INVALID_SPAN, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ._access import LOGGED, _Access, _finish, new_request_id
from ._errors import GatewayError, internal_error, shutting_down
from ._gateway import GATEWAY
from ._respond import ClientGone, abandon, error_response, send
from ._serve import serve_chat
from ._wire import WireFormat

if TYPE_CHECKING:
    from opentelemetry.trace import Span


__all__ = ["chat_handler"]

log = structlog.get_logger("cascade.gateway")
_propagator = TraceContextTextMapPropagator()
_UNTRACED = nullcontext(INVALID_SPAN)
"""A request's span when it gets none (``Gateway.traced``): its attributes go nowhere."""


# -- chat --------------------------------------------------------------------------------


def chat_handler(wire: WireFormat) -> Any:
    """The ``POST`` handler of ``wire``'s path."""

    name = f"POST {wire.path}"

    async def handle(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        t0 = perf_counter()
        access = _Access(
            method=request.method,
            path=wire.path,
            request_id=new_request_id(),
        )
        request[LOGGED] = True  # every way out of this handler writes its line
        scope: AbstractContextManager[Span] = _UNTRACED
        if gateway.traced(request.headers):
            scope = gateway.tracer.start_as_current_span(
                name,
                context=_propagator.extract(request.headers),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": "POST",
                    "http.route": wire.path,
                    "url.path": wire.path,
                },
                record_exception=False,
                set_status_on_exception=False,
            )
        with scope as span:
            trace_id = _trace_id(span)
            write_s = gateway.write_timeout_s
            try:
                response = await serve_chat(request, gateway, wire, access, trace_id)
            except GatewayError as exc:
                response = error_response(wire, exc)
                access.error = exc.code or exc.type
            except asyncio.CancelledError:
                if not gateway.cut or access.sent or not _connected(request):
                    # the client closed the connection: before its answer was whole
                    # (499), or after it (while the request settled what it spent): as
                    # answered
                    sent = access.response if access.sent and _left_cleanly(request) else None
                    access.status = 499 if sent is None else sent.status
                    _finish(span, access, t0, trace_id)
                    raise
                # The drain gave up on it (its run, and so its upstream call, is
                # cancelled): it is told so, briefly, rather than cut off.
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                failure = shutting_down()
                access.error = failure.code
                write_s = min(write_s, _CUT_WRITE_S)
                if access.response is not None and access.response.prepared:
                    return await _abandon(
                        request, wire, access, failure, write_s, span, t0, trace_id
                    )
                response = error_response(wire, failure)
            except ClientGone as gone:
                access.status = 499
                _finish(span, access, t0, trace_id)
                return gone.response
            except Exception:
                log.exception("gateway.internal_error", path=wire.path, trace_id=trace_id)
                failure = internal_error()
                access.error = failure.code
                if access.response is not None and access.response.prepared:
                    # The status line is out: a second response would corrupt the stream.
                    return await _abandon(
                        request, wire, access, failure, write_s, span, t0, trace_id
                    )
                response = error_response(wire, failure)
            if trace_id is not None:
                response.headers.setdefault("x-cascade-trace-id", trace_id)
            response.headers.setdefault(wire.request_id_header, access.request_id)
            if not access.status:
                access.status = response.status
            if not response.prepared:
                # An error's answer, sent here (not by the middleware once the line is
                # written): the line then says whether the client got it.
                try:
                    await send(request, response, last=True, timeout_s=write_s)
                except ClientGone:  # its connection is aborted
                    access.status = 499
                except asyncio.CancelledError:  # it left while the answer was written
                    access.status = 499
                    _finish(span, access, t0, trace_id)
                    raise
            _finish(span, access, t0, trace_id)
        return response

    return handle


async def _abandon(
    request: web.Request,
    wire: WireFormat,
    access: _Access,
    error: GatewayError,
    timeout_s: float,
    span: Span,
    t0: float,
    trace_id: str | None,
) -> web.StreamResponse:
    """End the response whose status line is out with ``error`` (``abandon``), and write
    its line: its status as sent, or 499 if the client left while the error waited."""
    response = access.response
    assert response is not None
    access.status = response.status
    try:
        await abandon(request, wire, response, timeout_s, error)
    except asyncio.CancelledError:  # it left while the error event waited
        access.status = 499
        _finish(span, access, t0, trace_id)
        raise
    _finish(span, access, t0, trace_id)
    return response


_CUT_WRITE_S = 1.0
"""Longest a request the drain gave up on takes to send its 503 (or its stream's error
event): the drain's end waits for it."""


def _trace_id(span: Span) -> str | None:
    ctx = span.get_span_context()
    if not span.is_recording() or not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x")


def _connected(request: web.Request) -> bool:
    """The request's connection is still open (the client has not left)."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


def _left_cleanly(request: web.Request) -> bool:
    """The client closed its connection (FIN), not reset it: a reset comes from a client
    that closed with bytes of its answer unread (the last write returns once the
    transport's buffer drains below its low mark; the rest is in the sockets' buffers)."""
    exc = request.content.exception()  # what aiohttp's connection_lost handed the request
    return exc is None or getattr(exc, "errno", None) is None  # "Connection lost": a FIN
