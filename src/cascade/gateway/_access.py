"""A chat request's access-log line (``gateway.request``) and the ids it names.

The chat handler (``_chat.py``) fills one :class:`_Access` as the request goes
(``_serve.py`` notes its route, tier, cost and what was sent) and writes it once with
:func:`_finish`, whichever way the request ends; the middleware of ``_app.py`` writes the
lines of every other request. A line never holds a key nor message text.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING

import structlog
from aiohttp import web
from opentelemetry.trace import Status, StatusCode

from .._telemetry._logs import emit

if TYPE_CHECKING:
    from opentelemetry.trace import Span

__all__ = ["ACCESS_EVENT", "LOGGED", "new_request_id"]

log = structlog.get_logger("cascade.gateway")
ACCESS_EVENT = "gateway.request"
LOGGED = web.RequestKey("cascade_logged", bool)
"""Set on a request whose handler writes its own access line (the middleware, the rest)."""


@dataclass(eq=False)
class _Access:
    """One access-log line: never a key, never message text."""

    method: str
    path: str
    request_id: str
    """``req_`` and 32 hex digits: sent as the API's request-id header, logged."""
    status: int = 0
    key: str | None = None
    """The configured name of the request's gateway key (never the key)."""
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


_ids = random.Random()
"""Response ids: 128 random bits each, drawn without a system call (seeded from
``os.urandom`` once; its own generator, which no ``random.seed`` elsewhere resets). Unique,
not unguessable (a Mersenne Twister): an id names a response, it grants nothing.
Seeded again in a forked child, as ``random``'s own generator is: workers forked from one
imported app (a pre-forking server) would otherwise hand out the same ids."""
os.register_at_fork(after_in_child=_ids.seed)


def new_request_id() -> str:
    """A chat request's id: ``req_`` and 32 hex digits."""
    return "req_" + format(_ids.getrandbits(128), "032x")


def _finish(span: Span, access: _Access, t0: float, trace_id: str | None) -> None:
    span.set_attribute("http.response.status_code", access.status)
    span.set_attribute("cascade.request_id", access.request_id)
    if access.route is not None:
        span.set_attribute("cascade.route", access.route)
    if access.status >= 500:
        span.set_status(Status(StatusCode.ERROR))
        span.set_attribute("error.type", access.error or str(access.status))
    fields = {
        "method": access.method,
        "path": access.path,
        "status": access.status,
        "request_id": access.request_id,
        "key": access.key,
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
