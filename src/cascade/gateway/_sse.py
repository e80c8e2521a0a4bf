"""A streamed chat answer (``stream: true``), sent as the run's events come: the SSE half
of ``_serve.py``'s request path."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from .._errors import CascadeError
from .._types import Result
from ..engine import Delta, Event, Failed, Finished, Retracted, Stream
from ._errors import WITHDRAWN, GatewayError, from_run_error, internal_error
from ._respond import header_value, result_headers, run_headers, send
from ._routes import Route
from ._wire import GatewayRequest, RunInfo, WireFormat

if TYPE_CHECKING:
    from ._access import _Access

__all__ = ["sse_answer"]

_MAX_PENDING = 64
"""Most rendered events held for one write (the stream holds at most ~8 KiB of text)."""


@dataclass(eq=False)
class _Seen:
    """What the app saw of a run's events on their way to the wire format."""

    first: Delta | None = None
    result: Result | None = None
    error: CascadeError | None = None
    sent: bool = False
    """Whether the response was prepared (its first bytes are being written)."""


async def sse_answer(
    request: web.Request,
    wire: WireFormat,
    stream: Stream,
    route: Route,
    req: GatewayRequest,
    info: RunInfo,
    access: _Access,
    timeout_s: float,
) -> web.StreamResponse:
    """Send the run's events as the format's SSE, as they come (several at once when more
    are ready); an error before the first byte is raised (an error status, as for JSON),
    after it the stream ends with the format's error event. ``access`` notes the answer
    sent (``access.sent``) and its tier, model and error."""
    seen = _Seen()
    response: web.StreamResponse | None = None
    pending: list[bytes] = []  # rendered, not yet written
    try:
        # Both generators closed here: a format's generator returns at the run's last
        # event, and a ``_tap`` left suspended would be closed by the garbage collector's
        # hook, through the loop's self-pipe (a syscall and a wake-up more per request).
        while True:
            try:
                async with (
                    aclosing(_tap(stream, seen)) as events,
                    aclosing(wire.sse(events, req, info)) as chunks,
                ):
                    async for data in chunks:
                        pending.append(data)
                        ready = stream.ready or seen.result is not None
                        if ready and len(pending) < _MAX_PENDING:
                            continue  # more is ready (or the end): one write for all
                        if response is None:
                            response = _prepare(wire, stream, route, seen, info, access)
                        await _write(request, response, pending, timeout_s)
                break
            except GatewayError as exc:
                if response is not None or exc.code != WITHDRAWN:
                    raise
                # The answer withdrawn was rendered, not sent: the client saw none of
                # it, so the format's stream starts afresh with the next answer (the
                # run's stream goes on where it was).
                pending.clear()
    except GatewayError as exc:
        # The format cannot carry what the run did (Anthropic's cannot withdraw text sent):
        # the stream ends with that error, and leaving the ``async with`` cancels the run.
        if response is None:
            raise
        if exc.code == WITHDRAWN:
            pending.clear()  # the withdrawn answer's text held back: not sent after all
        seen.error = exc
    if seen.result is not None:
        access.tier, access.model = seen.result.tier, seen.result.model
    error = None
    if seen.error is not None:
        error = from_run_error(seen.error)
    elif seen.result is None:
        error = internal_error()  # the stream ended without its last event: never a success
    if error is not None:
        access.error = error.code or error.type
        if response is None:  # nothing sent yet: an error status, as for JSON
            try:
                raise error
            finally:  # the error's traceback holds this frame: no local may hold it
                del error
        pending.append(wire.sse_error(error))  # the status (200) is sent already
    if response is None:
        response = _prepare(wire, stream, route, seen, info, access)
    await _write(request, response, pending, timeout_s, last=True)
    access.sent = True
    return response


def _prepare(
    wire: WireFormat, stream: Stream, route: Route, seen: _Seen, info: RunInfo, access: _Access
) -> web.StreamResponse:
    """The stream's response, its headers as they stand now; its status line and headers
    go out with its first write (``_write``: one ``send``)."""
    headers = _sse_headers(stream, route, seen)
    headers[wire.request_id_header] = access.request_id
    if info.trace_id is not None:
        headers["x-cascade-trace-id"] = info.trace_id
    response = _EventStream(headers=headers)
    access.response = response
    seen.sent = True
    return response


class _EventStream(web.StreamResponse):
    """A stream whose status line and headers go out with its first bytes, in one
    write (as aiohttp's ``web.Response`` sends them): ``prepare`` is always followed by a
    write here, and two writes would wake the client twice (two TCP segments)."""

    # aiohttp 3.14 reads it in prepare() (a version without it sends them at once).
    _send_headers_immediately = False


async def _write(
    request: web.Request,
    response: web.StreamResponse,
    pending: list[bytes],
    timeout_s: float,
    *,
    last: bool = False,
) -> None:
    """Write ``pending``; a client that stopped reading raises ``ClientGone``, which
    leaving the stream turns into the run cancelled."""
    data = b"".join(pending)
    pending.clear()
    await send(request, response, data, last=last, timeout_s=timeout_s)


async def _tap(stream: Stream, seen: _Seen) -> AsyncGenerator[Event, None]:
    """The run's events for the wire format, noting the first text and the end; the
    ``Failed`` event ends the iteration instead (the app renders the error), and a
    ``Retracted`` one before any byte was written raises ``WITHDRAWN`` (the app drops
    what was rendered and taps the stream afresh)."""
    async for event in stream:
        kind = type(event)
        if kind is Delta:
            if seen.first is None:
                seen.first = event  # type: ignore[assignment]
        elif kind is Finished:
            seen.result = event.result  # type: ignore[union-attr]
        elif kind is Failed:
            seen.error = event.error  # type: ignore[union-attr]
            return
        elif kind is Retracted and not seen.sent:
            # Nothing was written: the withdrawn answer's text held back is dropped, and
            # the format starts afresh (a retraction of nothing shown is not sent either).
            raise GatewayError(502, "the answer was withdrawn before it was sent", code=WITHDRAWN)
        yield event


def _sse_headers(stream: Stream, route: Route, seen: _Seen) -> dict[str, str]:
    """A stream's headers, sent with its first bytes. Buffered, the first text comes once
    its answer was accepted (every attempt is then made): the headers are final.
    Speculative, they are not known yet: only the last chunk's ``cascade`` field says."""
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",  # a proxy in front (nginx) passes each event on at once
        "x-cascade-mode": stream.mode,
    }
    if seen.result is not None:
        return headers | result_headers(route_name=route.name, result=seen.result)
    first = seen.first
    if stream.mode == "buffered" and first is not None:
        attempts = stream.attempts
        model = next((a.model for a in reversed(attempts) if a.provider == first.provider), "")
        tier_name = next((a.tier_name for a in attempts if a.tier == first.tier), "")
        headers |= run_headers(
            route.name, tier=first.tier, tier_name=tier_name, model=model, attempts=attempts
        )
    else:
        headers["x-cascade-route"] = header_value(route.name)
    return headers
