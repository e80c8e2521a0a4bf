"""One chat request through the gateway, whatever its wire format.

Its key checked from the headers (``check_key``: a client without a valid key holds no
in-flight slot and has no body read) -> an in-flight slot -> the body read within
``max_body_bytes`` and ``body_timeout_s`` -> parsed by its :class:`~._wire.WireFormat` ->
its route found by ``model`` and admitted by the key gate (``_gate.py``; an unknown
model's 404 only after that) -> for a JSON answer, run in the handler's own task, the
response sent as the run hands over its result (``ResultSink``); for SSE, run as a stream
(buffered unless the route is speculative), sent as the events come (``_sse.py``) -> the
gate settles what was spent, also when the client left or the run failed. A client that disconnects
cancels the handler (``handler_cancellation``), which cancels the run (or leaves the
``async with`` of the stream) and so the upstream call at once; a client that stops
reading is cut off the same way once one write waited ``write_timeout_s`` (the
connection is aborted). Once a response's status line is sent, nothing starts a second
one: a failure after it ends a stream with the format's error event, or aborts the
connection. Every request gets a SERVER span (a child of the caller's ``traceparent``, the
parent of ``cascade.run``) and one access-log line.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry.trace import INVALID_SPAN, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .._errors import InputError
from .._telemetry._logs import emit
from ..engine import Failed, Finished, Stream
from ..engine._core import Plan
from ..engine._stream import ResultSink
from ._errors import GatewayError, from_run_error, internal_error
from ._gate import OPEN_GATE, check_key
from ._gateway import GATEWAY, Gateway
from ._respond import (
    ClientGone,
    abandon,
    error_response,
    result_headers,
    send,
)
from ._routes import Route
from ._sse import sse_answer
from ._wire import GatewayRequest, RunInfo, WireFormat

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from ..validators import Validator

__all__ = ["ACCESS_EVENT", "LOGGED", "chat_handler"]

log = structlog.get_logger("cascade.gateway")
ACCESS_EVENT = "gateway.request"
LOGGED = web.RequestKey("cascade_logged", bool)
"""Set on a request whose handler writes its own access line (the middleware, the rest)."""

_propagator = TraceContextTextMapPropagator()
_UNTRACED = nullcontext(INVALID_SPAN)
"""A request's span when it gets none (``Gateway.traced``): its attributes go nowhere."""


@dataclass(eq=False)
class _Access:
    """One access-log line: never a key, never message text."""

    method: str
    path: str
    status: int = 0
    route: str | None = None
    stream: bool = False
    tier: int | None = None
    model: str | None = None
    cost_usd: float = 0.0
    attempts: int = 0
    error: str | None = None
    response: web.StreamResponse | None = None
    """The response whose status line was sent (or was being sent), if any."""
    sent: bool = False
    """Its last byte was written: a client leaving after it took the whole answer."""


# -- chat --------------------------------------------------------------------------------


def chat_handler(wire: WireFormat) -> Any:
    """The ``POST`` handler of ``wire``'s path."""

    name = f"POST {wire.path}"

    async def handle(request: web.Request) -> web.StreamResponse:
        gateway = request.app[GATEWAY]
        t0 = perf_counter()
        access = _Access(method=request.method, path=wire.path)
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
            try:
                response = await _serve(request, gateway, wire, access, trace_id)
            except GatewayError as exc:
                response = error_response(wire, exc)
                access.error = exc.code or exc.type
            except asyncio.CancelledError:
                # the client closed the connection: before its answer was whole (499), or
                # after it (while the request settled what it spent): as answered
                sent = access.response if access.sent and _left_cleanly(request) else None
                access.status = 499 if sent is None else sent.status
                _finish(span, access, t0, trace_id)
                raise
            except ClientGone as gone:
                access.status = 499
                _finish(span, access, t0, trace_id)
                return gone.response
            except Exception:
                log.exception("gateway.internal_error", path=wire.path, trace_id=trace_id)
                access.error = "internal_error"
                if access.response is not None and access.response.prepared:
                    # The status line is out: a second response would corrupt the stream.
                    access.status = access.response.status
                    try:
                        await abandon(request, wire, access.response, gateway.write_timeout_s)
                    except asyncio.CancelledError:  # it left while the error event waited
                        access.status = 499
                        _finish(span, access, t0, trace_id)
                        raise
                    _finish(span, access, t0, trace_id)
                    return access.response
                response = error_response(wire, internal_error())
            if trace_id is not None:
                response.headers.setdefault("x-cascade-trace-id", trace_id)
            if not access.status:
                access.status = response.status
            if not response.prepared:
                # An error's answer, sent here (not by the middleware once the line is
                # written): the line then says whether the client got it.
                try:
                    await send(request, response, last=True, timeout_s=gateway.write_timeout_s)
                except ClientGone:  # its connection is aborted
                    access.status = 499
                except asyncio.CancelledError:  # it left while the answer was written
                    access.status = 499
                    _finish(span, access, t0, trace_id)
                    raise
            _finish(span, access, t0, trace_id)
        return response

    return handle


_ids = random.Random()
"""Response ids: 128 random bits each, drawn without a system call (seeded from
``os.urandom`` once; its own generator, which no ``random.seed`` elsewhere resets). Unique,
not unguessable (a Mersenne Twister): an id names a response, it grants nothing.
Seeded again in a forked child, as ``random``'s own generator is: workers forked from one
imported app (a pre-forking server) would otherwise hand out the same ids."""
os.register_at_fork(after_in_child=_ids.seed)


def _trace_id(span: Span) -> str | None:
    ctx = span.get_span_context()
    if not span.is_recording() or not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x")


def _left_cleanly(request: web.Request) -> bool:
    """The client closed its connection (FIN), not reset it: a reset comes from a client
    that closed with bytes of its answer unread (the last write returns once the
    transport's buffer drains below its low mark; the rest is in the sockets' buffers)."""
    exc = request.content.exception()  # what aiohttp's connection_lost handed the request
    return exc is None or getattr(exc, "errno", None) is None  # "Connection lost": a FIN


def _finish(span: Span, access: _Access, t0: float, trace_id: str | None) -> None:
    span.set_attribute("http.response.status_code", access.status)
    if access.route is not None:
        span.set_attribute("cascade.route", access.route)
    if access.status >= 500:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", access.error or str(access.status))
    fields = {
        "method": access.method,
        "path": access.path,
        "status": access.status,
        "route": access.route,
        "stream": access.stream,
        "duration_ms": round((perf_counter() - t0) * 1000, 3),
        "cost_usd": access.cost_usd,
        "attempts": access.attempts,
    }
    if access.tier is not None:
        fields["tier"] = access.tier
        fields["model"] = access.model
    if access.error is not None:
        fields["error"] = access.error
    if trace_id is not None:
        fields["trace_id"] = trace_id
    emit(log, "info", ACCESS_EVENT, fields)


async def _read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise GatewayError(413, f"the request body is over {limit} bytes", code="body_too_large")
    try:
        if request.content.is_eof():
            return await request.read()  # it came with the headers: nothing to wait for
        async with asyncio.timeout(timeout_s):
            if request.headers.get("Expect") is not None and request.version == HttpVersion11:
                # the client waits for this to send its body: sent only now, once its
                # headers passed every check (aiohttp's own expect handler sends it at once)
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0  # the response proper has not started
            return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise GatewayError(
            413, f"the request body is over {limit} bytes", code="body_too_large"
        ) from None
    except TimeoutError:
        raise GatewayError(
            408, "the request body took too long to arrive", code="body_timeout"
        ) from None
    except (web.RequestPayloadError, HttpProcessingError):
        # Its Content-Encoding did not decode, or its chunked framing is invalid (aiohttp's
        # pure-Python parser fails the body with its own error, which quotes the bytes):
        # the client's error, not the gateway's. What is left of the body cannot be read
        # (aiohttp would log a traceback trying, then answer the request a second time):
        # the connection closes after the 400.
        request.content.feed_eof()
        request.protocol.close()
        raise GatewayError(
            400, "the request body could not be decoded", code="invalid_body"
        ) from None


async def _serve(
    request: web.Request,
    gateway: Gateway,
    wire: WireFormat,
    access: _Access,
    trace_id: str | None,
) -> web.StreamResponse:
    gate = gateway.gate
    check_key(gate, request.headers)  # before a slot is taken or a byte read
    if gateway.in_flight >= gateway.max_in_flight:
        raise GatewayError(
            429,
            "the gateway is at its limit of requests in flight",
            code="gateway_busy",
            retry_after_s=1.0,
        )
    gateway.in_flight += 1
    generation = gateway.generation
    generation.enter()
    try:
        body = await _read_body(request, gateway.max_body_bytes, gateway.body_timeout_s)
        try:
            req = wire.parse(body, gateway.limits)
        except InputError as exc:
            raise from_run_error(exc) from None
        access.stream = req.stream
        route = generation.find(req.model)
        if route is not None:
            access.route = route.name
        admission = (
            None
            if gate is OPEN_GATE
            else await gate.admit(request.headers, request=req, route=route)
        )
        runs: Stream | ResultSink | None = None  # where the run's attempts are kept
        try:
            if route is None:
                raise GatewayError(
                    404,
                    f"no route serves the model {req.model[:200]!r}",
                    param="model",
                    code="model_not_found",
                )
            access.route = route.name
            info = RunInfo(
                id="chatcmpl-" + format(_ids.getrandbits(128), "032x"),
                created=int(time.time()),
                route=route.name,
                trace_id=trace_id,
            )
            timeout_s = gateway.write_timeout_s
            validators = () if req.json_schema is None else await _validators(gateway, req)
            if not req.stream:
                answered: list[web.Response] = []

                async def answer(end: Finished) -> None:
                    answered.append(await _json(request, wire, end, req, info, access, timeout_s))

                runs = ResultSink(answer)
                plan = _plan(route, req, validators)
                end = await route.cascade._answer(plan, runs)
                if runs.error is not None:
                    raise runs.take_error()
                if type(end) is Failed:
                    raise from_run_error(end.error)
                return answered[0]
            runs = stream = _start(route, req, wire, validators)
            async with stream:
                return await sse_answer(request, wire, stream, route, req, info, access, timeout_s)
        finally:
            attempts = runs.attempts if runs is not None else ()
            access.cost_usd = sum(a.cost_usd for a in attempts)
            access.attempts = len(attempts)
            tokens = sum(a.input_tokens + a.output_tokens for a in attempts)
            if gate is not OPEN_GATE:  # it counts nothing: no coroutine to ask it to
                await gate.settle(admission, tokens=tokens, cost_usd=access.cost_usd)
    finally:
        gateway.in_flight -= 1
        generation.leave()


async def _validators(gateway: Gateway, req: GatewayRequest) -> tuple[Validator, ...]:
    """The request's own validators: its JSON Schema, if it asked for one (a bad one:
    a 400)."""
    if req.json_schema is None:
        return ()
    try:
        return (await gateway.schema_validator(req.json_schema, param=req.json_schema_param),)
    except InputError as exc:
        raise from_run_error(exc) from None


def _plan(route: Route, req: GatewayRequest, validators: tuple[Validator, ...]) -> Plan:
    """The run of a request, planned (bad input: a 400)."""
    config = route.config
    try:
        return route.cascade._plan(
            req.messages,
            req.options,
            config.start_tier,
            config.max_tier,
            route.max_cost_usd,
            route.deadline_s,
            validators,
        )
    except InputError as exc:
        raise from_run_error(exc) from None


def _start(
    route: Route, req: GatewayRequest, wire: WireFormat, validators: tuple[Validator, ...]
) -> Stream:
    """The run of a streamed answer: a stream of the text alone for a format that reads
    nothing else (``WireFormat.text_only``), else of every event."""
    plan = _plan(route, req, validators)
    mode = route.config.mode
    if wire.text_only:
        return route.cascade._text_stream(plan, mode)
    return route.cascade._stream(plan, mode)


async def _json(
    request: web.Request,
    wire: WireFormat,
    end: Finished,
    req: GatewayRequest,
    info: RunInfo,
    access: _Access,
    timeout_s: float,
) -> web.Response:
    """The JSON answer, sent as the run hands over its result (``ResultSink``): before
    it writes its span and routing record."""
    result = end.result
    access.tier, access.model = result.tier, result.model
    headers = result_headers(route_name=info.route, result=result)
    if info.trace_id is not None:
        headers["x-cascade-trace-id"] = info.trace_id
    response = web.Response(
        body=wire.render_json(result, req, info),
        content_type="application/json",
        headers=headers,
    )
    access.response = response
    # Sent here, not by aiohttp once the handler returns: within the write timeout, and
    # while the request still holds its slot.
    await send(request, response, last=True, timeout_s=timeout_s)
    access.sent = True
    return response
