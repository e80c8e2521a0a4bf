"""The routing-decision record: one structlog event per run, carrying its trace ids.

The library never configures structlog. Unconfigured, structlog prints every event to
standard output, which a library must not do once per request: the record is written only
when the application has configured structlog (``structlog.is_configured()``, true under
``structlog.testing.capture_logs`` too).
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from opentelemetry.trace import Span

if TYPE_CHECKING:
    from .._types import Attempt, RequestOptions, Result
    from ..engine._events import Routed

__all__ = ["ROUTE_EVENT", "add_trace_ids", "emit", "route_record", "trace_ids", "write_directly"]

log = structlog.get_logger("cascade")

ROUTE_EVENT = "cascade.route"

DirectWriter = Callable[[str, str, dict[str, Any]], bool]
"""``(level, event, fields)``: the line written, or False for structlog to write it."""

_direct: DirectWriter | None = None


def write_directly(writer: DirectWriter | None) -> None:
    """For ``cascade serve``, which configures structlog itself: cascade's own lines (the
    routing record, the gateway's access lines) go to ``writer`` first, which writes them
    as that configuration would without structlog's per-call machinery, or declines
    (returns False) once structlog is configured otherwise. None: structlog alone."""
    global _direct
    _direct = writer


def emit(logger: Any, level: str, event: str, fields: dict[str, Any]) -> None:
    """``logger.<level>(event, **fields)``, or the same line by the direct writer."""
    direct = _direct
    if direct is None or not direct(level, event, fields):
        getattr(logger, level)(event, **fields)


def trace_ids(span: Span | None) -> dict[str, str]:
    """``trace_id`` and ``span_id`` of ``span`` in hex (W3C form); nothing for a span the
    sampler dropped (its trace is never exported: the ids would point nowhere)."""
    if span is None:
        return {}
    ctx = span.get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def add_trace_ids(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A structlog processor adding the current span's ``trace_id`` / ``span_id`` (hex,
    as trace backends show them) to every event, when that span is sampled.

    For applications to put in their own ``structlog.configure(processors=[...])``, so
    their own events line up with cascade's spans; the routing record carries the ids of
    its run span whether or not it is used. Exported as ``cascade.add_trace_ids``.
    """
    if "trace_id" not in event_dict:
        event_dict.update(trace_ids(trace.get_current_span()))
    return event_dict


def route_record(
    result: Result | None,
    exc: BaseException | None,
    attempts: Sequence[Attempt],
    *,
    options: RequestOptions | None,
    escalations: list[str],
    latency_s: float,
    span: Span | None,
    route: Routed | None = None,
) -> None:
    """Log the run's routing decision: the router's decision (``route``, with a router),
    the tiers it went through and what it cost (the caller checks
    ``structlog.is_configured()`` first)."""
    metadata = options.metadata if options is not None and options.metadata else {}
    if result is not None:
        attempts = result.attempts
    elif exc is not None:
        attempts = getattr(exc, "attempts", None) or attempts
    path: list[str] = []
    for a in attempts:
        if not a.tier:
            continue  # the router's own calls (tier 0): under "route"
        if not path or path[-1] != a.tier_name:
            path.append(a.tier_name)
    fields: dict[str, Any] = {
        "task_id": metadata.get("task_id"),
        "tier_path": path,
        "escalations": escalations,
        "attempts": len(attempts),
        "latency_s": round(latency_s, 6),
    }
    if metadata:
        fields["metadata"] = dict(metadata)
    if route is not None:
        decision = route.route
        fields["route"] = {
            "router": decision.router,
            "start_tier": route.start_tier,
            "max_tier": route.max_tier,
            "variant": decision.variant,
            "reason": decision.reason,
            "score": decision.score,
            "cost_usd": sum(a.cost_usd for a in attempts if not a.tier),
        }
    fields.update(trace_ids(span))
    if result is not None:
        record = {
            "outcome": "accepted" if result.validated else "best",
            "tier": result.tier,
            "tier_name": result.tier_name,
            "provider": result.provider,
            "model": result.model,
            "input_tokens": result.usage.input_tokens,
            "output_tokens": result.usage.output_tokens,
            "cost_usd": result.cost_usd,
            "validated": result.validated,
            **fields,
        }
        emit(log, "info", ROUTE_EVENT, record)
    else:
        record = {
            "outcome": "error",
            "error_type": type(exc).__name__ if exc is not None else None,
            "error": str(exc)[:500] if exc is not None else None,
            "input_tokens": sum(a.input_tokens for a in attempts),
            "output_tokens": sum(a.output_tokens for a in attempts),
            "cost_usd": sum(a.cost_usd for a in attempts),
            **fields,
        }
        emit(log, "warning", ROUTE_EVENT, record)
