"""The seam between the gateway and an API's wire format.

The app (``_app.py``) owns HTTP: reading the body within bounds, keys, routes, the run,
headers, tracing, the access log, disconnects. A :class:`WireFormat` owns one API's JSON:
it parses a request body into a :class:`GatewayRequest` and renders results, streams and
errors. OpenAI's is :mod:`._openai_wire`; Anthropic's plugs in the same way.

    GatewayRequest   what a request asks for, format-free (route model, messages, options)
    Limits           the bounds a format holds a request to while parsing it
    RunInfo          what the app knows of the response (id, route, trace id)
    summary()        the ``cascade`` object every format puts in its response
"""

from __future__ import annotations

import gc
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, Final, Protocol, TypeVar

import msgspec

from .._errors import InputError
from .._types import Message, RequestOptions, Result
from ..engine import Event
from ._errors import GatewayError

__all__ = [
    "QUIET_BYTES",
    "GatewayRequest",
    "Limits",
    "RunInfo",
    "WireFormat",
    "check_schema",
    "decode_quietly",
    "summary",
]

T = TypeVar("T")

QUIET_BYTES: Final = 64 << 10
"""A body over this many bytes is decoded by :func:`decode_quietly`."""


class GatewayRequest(msgspec.Struct, frozen=True, kw_only=True):
    """One request, parsed and checked, whatever API it came in.

    ``model`` names the route; ``json_schema`` (a request's structured-output schema,
    already held to the size and depth limits) makes that schema a validator every tier's
    answer must pass. ``estimated_tokens`` is what key limits are charged up front.
    """

    model: str
    messages: tuple[Message, ...]
    options: RequestOptions
    stream: bool = False
    include_usage: bool = False
    retractions: bool = False
    """The client opted in to speculative withdrawals as chunks of their own (OpenAI's
    ``stream_options.cascade_retractions``); else a withdrawal after text was sent ends
    the stream with an error event."""
    json_schema: dict[str, Any] | None = None
    json_schema_param: str = "response_format.json_schema.schema"
    """Where ``json_schema`` was in the request: the field a 400 for a bad schema names."""
    estimated_tokens: int = 0


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The bounds a format holds a request to while parsing it (from ``[gateway]``)."""

    max_messages: int = 2048
    max_schema_bytes: int = 64 << 10
    max_schema_depth: int = 32


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the app tells a format about the response it renders."""

    id: str
    """The response id (``chatcmpl-...``)."""
    created: int
    """Unix time the request arrived."""
    route: str
    trace_id: str | None = None
    """The W3C trace id (32 hex digits) when the request is traced."""
    models: Mapping[str, str] = msgspec.field(default_factory=dict)
    """The route's providers' models, by provider name (``Delta.provider``): the model a
    stream's text came from, for formats that name it on every chunk."""


class WireFormat(Protocol):
    """One API's request and response format, served at ``path`` (``POST``).

    Contract with the app:

    - ``parse`` raises :class:`~cascade.gateway.GatewayError` (400, ``param`` naming the
      field) for anything it cannot serve, never another exception for bad input; the
      body is at most ``max_body_bytes`` and ``limits`` carries the other bounds.
    - ``sse`` gets the run's events *without* its ``Failed`` event (the app turns a
      failure into an error status before any byte is sent, or :meth:`sse_error` after);
      it must yield nothing before the first event that carries text or ``Finished``:
      the app sends the status line and headers with the first bytes it yields.
    - the ``cascade`` object of :func:`summary` goes in the JSON body and on the last
      event of a stream.
    """

    path: str
    """Where the format is served, e.g. ``/v1/chat/completions``."""
    request_id_header: str
    """The response header the API's SDK reads the request id from (OpenAI's
    ``x-request-id``, Anthropic's ``request-id``: an SDK object's ``_request_id``)."""
    text_only: bool
    """Whether ``sse`` reads only ``Delta``, ``Retracted`` and ``Finished`` events (the
    run's stream then carries no other)."""

    def parse(self, body: bytes, limits: Limits) -> GatewayRequest: ...

    def render_json(self, result: Result, request: GatewayRequest, info: RunInfo) -> bytes: ...

    def sse(
        self, events: AsyncIterator[Event], request: GatewayRequest, info: RunInfo
    ) -> AsyncGenerator[bytes, None]: ...

    def error(self, error: GatewayError) -> bytes:
        """The JSON error body."""
        ...

    def sse_error(self, error: GatewayError) -> bytes:
        """An error inside a stream already under way (its last event)."""
        ...


def decode_quietly(decode: Callable[[bytes], T], body: bytes) -> T:
    """``decode(body)`` with the garbage collector paused. Every container a big body
    makes is new and stays until the request is done, so the ~2,000 collections its
    allocations set off (later ones walking the whole heap) find nothing: a 4 MiB body of
    a million ``[]`` (``"tools": [[], [], ...]``, refused at once) held the event loop
    ~1 s; ~0.2 s now (the decoding, and one collection of the young objects after it).
    The objects are freed by their counts when the request is done."""
    if not gc.isenabled():
        return decode(body)
    gc.disable()
    try:
        return decode(body)
    finally:
        gc.enable()


def check_schema(schema: object, limits: Limits, *, param: str) -> dict[str, Any]:
    """A request's JSON Schema held to the limits: an object, at most ``max_schema_bytes``
    as JSON and ``max_schema_depth`` deep (counted without recursion)."""
    if not isinstance(schema, dict):
        raise InputError(f"expected a JSON Schema object, got {type(schema).__name__}", path=param)
    size = len(msgspec.json.encode(schema))
    if size > limits.max_schema_bytes:
        raise InputError(
            f"the schema is {size} bytes as JSON, over the limit of {limits.max_schema_bytes}",
            path=param,
        )
    stack: list[tuple[object, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limits.max_schema_depth:
            raise InputError(
                f"the schema is nested deeper than {limits.max_schema_depth} levels", path=param
            )
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return schema


def summary(result: Result, info: RunInfo) -> dict[str, Any]:
    """What happened, as the ``cascade`` field of a response: the answering tier and
    model, the cost of every attempt together, the path through the tiers."""
    out: dict[str, Any] = {
        "route": info.route,
        "tier": result.tier,
        "tier_name": result.tier_name,
        "provider": result.provider,
        "model": result.model,
        "validated": result.validated,
        "cost_usd": result.cost_usd,
        "attempts": len(result.attempts),
        "escalations": result.escalations,
        "latency_s": round(result.latency_s, 6),
        "path": [
            {
                "tier": a.tier,
                "provider": a.provider,
                "model": a.model,
                "outcome": a.outcome,
                "cost_usd": a.cost_usd,
            }
            for a in result.attempts
        ],
    }
    if info.trace_id is not None:
        out["trace_id"] = info.trace_id
    return out
