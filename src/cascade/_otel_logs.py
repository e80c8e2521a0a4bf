"""OpenTelemetry log export for the ``cascade`` command: structlog events, the routing
record among them, as OpenTelemetry log records.

``OTEL_LOGS_EXPORTER`` (``otlp``, ``console``, ``none``; an OTLP endpoint implies
``otlp``) asks for it. The command then configures structlog (the library never does) so
that every event goes to a :class:`~opentelemetry.sdk._logs.LoggerProvider` instead of
standard output: the event name is the record's body, its other fields the record's
attributes, its level the severity, and its ``trace_id`` / ``span_id`` (which the routing
record carries, and a processor adds from the current span to every other event) the
record's trace context, so a backend shows each run's record beside its trace.

``exc_info`` becomes the ``exception.type`` / ``exception.message`` /
``exception.stacktrace`` attributes. The OpenTelemetry logs SDK is not stable yet; this
uses its 1.39 names (``LogRecordExporter``).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from ._telemetry import add_trace_ids

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExporter
    from opentelemetry.sdk.resources import Resource

__all__ = ["StructlogToOTel", "configure_structlog", "logger_provider"]

_SEVERITY = {
    "debug": SeverityNumber.DEBUG,
    "info": SeverityNumber.INFO,
    "msg": SeverityNumber.INFO,
    "warn": SeverityNumber.WARN,
    "warning": SeverityNumber.WARN,
    "error": SeverityNumber.ERROR,
    "exception": SeverityNumber.ERROR,
    "critical": SeverityNumber.FATAL,
    "fatal": SeverityNumber.FATAL,
}
_NOT_ATTRIBUTES = frozenset({"event", "level", "trace_id", "span_id", "timestamp", "exc_info"})


def _value(value: Any) -> Any:
    """A structlog field as an OpenTelemetry attribute value (maps and lists kept)."""
    if value is None or isinstance(value, str | bool | int | float | bytes):
        return value
    if isinstance(value, Mapping):
        return {str(k): _value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set | frozenset):
        return [_value(v) for v in value if v is not None]
    return str(value)


def _context(event: Mapping[str, Any]) -> Context | None:
    """The trace context the event names (hex ``trace_id`` / ``span_id``), if any: the
    current span's when it is that span (its flags as they are), else a sampled one (ids
    are only added for sampled spans; see ``trace_ids``)."""
    trace_id, span_id = event.get("trace_id"), event.get("span_id")
    if not (isinstance(trace_id, str) and isinstance(span_id, str)):
        return None
    try:
        ids = int(trace_id, 16), int(span_id, 16)
    except ValueError:
        return None
    if not all(ids):
        return None
    current = trace.get_current_span().get_span_context()
    if (current.trace_id, current.span_id) == ids:
        return None  # the record's default: the current context
    span = NonRecordingSpan(SpanContext(*ids, False, TraceFlags(TraceFlags.SAMPLED)))
    return trace.set_span_in_context(span)


def _exception(exc_info: Any) -> dict[str, str]:
    """``exc_info`` (True, an exception or a ``sys.exc_info()`` triple) as the semantic
    conventions' ``exception.*`` attributes."""
    if exc_info is True:
        exc_info = sys.exc_info()
    if isinstance(exc_info, BaseException):
        exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
    if not (isinstance(exc_info, tuple) and len(exc_info) == 3 and exc_info[1] is not None):
        return {}
    kind, exc, tb = exc_info
    return {
        "exception.type": kind.__qualname__,
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(kind, exc, tb)),
    }


class StructlogToOTel:
    """The last structlog processor: emit the event as a log record of ``provider``'s
    logger ``cascade``, then drop it (nothing is printed). It never raises: a record it
    cannot make is lost, said once through the standard library's logging."""

    def __init__(self, provider: LoggerProvider) -> None:
        from . import __version__

        self._logger = provider.get_logger("cascade", __version__)
        self._failed = False

    def __call__(self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
        try:
            self._emit(method_name, event_dict)
        except Exception:
            if not self._failed:
                self._failed = True
                logging.getLogger("cascade").warning(
                    "a log record could not be exported; said once", exc_info=True
                )
        raise structlog.DropEvent

    def _emit(self, method_name: str, event_dict: MutableMapping[str, Any]) -> None:
        body = event_dict.get("event")
        attributes = {
            k: _value(v)
            for k, v in event_dict.items()
            if k not in _NOT_ATTRIBUTES and v is not None
        }
        if "exc_info" in event_dict:
            attributes.update(_exception(event_dict["exc_info"]))
        self._logger.emit(
            LogRecord(
                timestamp=time.time_ns(),
                context=_context(event_dict),
                severity_number=_SEVERITY.get(method_name, SeverityNumber.INFO),
                severity_text=method_name.upper(),
                body=body if isinstance(body, str) else _value(body),
                attributes=attributes,
            )
        )


def configure_structlog(provider: LoggerProvider) -> None:
    """Route every structlog event to ``provider`` (the command's own set-up)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_trace_ids,
            StructlogToOTel(provider),
        ],
    )


def logger_provider(resource: Resource, exporters: list[LogRecordExporter]) -> LoggerProvider:
    """A provider exporting through ``exporters``, each behind a batch processor."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider(resource=resource)
    for exporter in exporters:
        provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    return provider
