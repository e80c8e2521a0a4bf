"""A chat request served, whatever its wire format: from its key to what it spent.

Its key checked from the headers and counted in the key's requests in flight
(``enter_key``: a client without a valid key, or whose key is at its ``max_in_flight``,
holds no in-flight slot and has no body read) -> an in-flight slot -> the body read within
``max_body_bytes`` and ``body_timeout_s`` -> parsed by its :class:`~._wire.WireFormat` ->
its route found by ``model`` and admitted by the key gate (``_gate.py``; an unknown
model's 404 only after that) -> for a JSON answer, run in the handler's own task, the
response sent as the run hands over its result (``ResultSink``); for SSE, run as a stream
(buffered unless the route is speculative), sent as the events come (``_sse.py``) -> the
gate settles what was spent, also when the client left or the run failed. A refusal is
raised as a ``GatewayError``, which the handler (``_chat.py``) answers.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import HttpProcessingError

from .._errors import InputError
from ..engine import Failed, Finished, Stream
from ..engine._core import Plan
from ..engine._stream import ResultSink
from ._access import _Access
from ._errors import GatewayError, from_run_error, shutting_down
from ._gate import OPEN_GATE, enter_key
from ._gateway import Gateway
from ._keys import GatewayDenied
from ._respond import result_headers, send
from ._routes import Route
from ._sse import sse_answer
from ._wire import GatewayRequest, RunInfo, WireFormat

if TYPE_CHECKING:
    from ..validators import Validator

__all__ = ["serve_chat"]


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


async def serve_chat(
    request: web.Request,
    gateway: Gateway,
    wire: WireFormat,
    access: _Access,
    trace_id: str | None,
) -> web.StreamResponse:
    gate = gateway.gate
    try:
        held = enter_key(gate, request.headers)  # before a slot is taken or a byte read
    except GatewayDenied as exc:
        access.key = exc.key  # a key at its max_in_flight: its line names it
        raise
    if held is not None:
        access.key = held.name
    try:
        if gateway.in_flight >= gateway.max_in_flight:
            raise GatewayError(
                429,
                "the gateway is at its limit of requests in flight",
                code="gateway_busy",
                retry_after_s=1.0,
            )
        if gateway.cut:  # (a request the drain's cut found still queued on its connection)
            raise shutting_down()
        gateway.in_flight += 1
        task = asyncio.current_task()
        gateway.requests.add(task)  # type: ignore[arg-type]  # (a handler runs in a task)
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
                    id="chatcmpl-" + access.request_id[4:],  # one draw: the request id's digits
                    created=int(time.time()),
                    route=route.name,
                    trace_id=trace_id,
                    models=route.models,
                )
                timeout_s = gateway.write_timeout_s
                validators = () if req.json_schema is None else await _validators(gateway, req)
                if not req.stream:
                    answered: list[web.Response] = []

                    async def answer(end: Finished) -> None:
                        answered.append(
                            await _json(request, wire, end, req, info, access, timeout_s)
                        )

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
                    return await sse_answer(
                        request, wire, stream, route, req, info, access, timeout_s
                    )
            finally:
                attempts = runs.attempts if runs is not None else ()
                access.cost_usd = sum(a.cost_usd for a in attempts)
                access.attempts = len(attempts)
                tokens = sum(a.input_tokens + a.output_tokens for a in attempts)
                if gate is not OPEN_GATE:  # it counts nothing: no coroutine to ask it to
                    await gate.settle(admission, tokens=tokens, cost_usd=access.cost_usd)
        finally:
            gateway.in_flight -= 1
            gateway.requests.discard(task)
            generation.leave()
            if gateway.draining and not gateway.in_flight:
                gateway.drained.set()
    finally:
        if held is not None:
            held.leave()


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
    headers[wire.request_id_header] = access.request_id
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
