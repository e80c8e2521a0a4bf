"""OpenTelemetry traces and metrics, and the routing record, of every run.

Only the OpenTelemetry API is used; the application (or the ``cascade`` CLI, see
``_otel.py``) configures the SDK and its exporters. Names live in :mod:`._semconv`.
"""

from __future__ import annotations

from ._core import Telemetry
from ._logs import ROUTE_EVENT, add_trace_ids, trace_ids
from ._metrics import Instruments
from ._spans import NOOP_ATTEMPT, NOOP_RUN, NOOP_TIER, AttemptTrace, RunTrace, TierTrace

__all__ = [
    "NOOP_ATTEMPT",
    "NOOP_RUN",
    "NOOP_TIER",
    "ROUTE_EVENT",
    "AttemptTrace",
    "Instruments",
    "RunTrace",
    "Telemetry",
    "TierTrace",
    "add_trace_ids",
    "trace_ids",
]
