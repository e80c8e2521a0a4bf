"""OpenTelemetry SDK set-up for the ``cascade`` command, from the standard ``OTEL_*``
environment variables. The library never does this; applications configure their own SDK.

Nothing is set up unless asked for: ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``
/ ``OTEL_LOGS_EXPORTER`` (``otlp``, ``console``, ``none``), or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT``, or the signal's own ``OTEL_EXPORTER_OTLP_{signal}_ENDPOINT``),
which implies ``otlp``. ``OTEL_SDK_DISABLED=true`` wins over everything.
``OTEL_EXPORTER_OTLP[_TRACES|_METRICS|_LOGS]_PROTOCOL`` picks ``http/protobuf`` (the
default) or ``grpc``. Logs are structlog's events, the routing record of every run among
them (``_otel_logs.py``). The exporters read their own variables (endpoint, headers, timeout,
compression), the batch span processor ``OTEL_BSP_*``, the metric reader
``OTEL_METRIC_EXPORT_INTERVAL``, and the resource ``OTEL_SERVICE_NAME`` and
``OTEL_RESOURCE_ATTRIBUTES`` (service name ``cascade`` when neither names one).

    OTEL_EXPORTER_OTLP_ENDPOINT=http://localhost:4318 cascade demo --requests 20
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from ._errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import LogRecordExporter

__all__ = ["SDK", "configure_from_env", "sdk_from_env"]

_PROTOCOLS = ("http/protobuf", "grpc")
_INSTALL = "OTLP export needs the exporters: pip install 'cascade-engine[otlp]'"


class SDK:
    """The providers set up from the environment; ``shutdown`` flushes and stops them."""

    def __init__(
        self,
        tracer_provider: TracerProvider | None,
        meter_provider: MeterProvider | None,
        logger_provider: LoggerProvider | None = None,
        *,
        span_exporters: Sequence[SpanExporter] = (),
        metric_exporters: Sequence[MetricExporter] = (),
        log_exporters: Sequence[LogRecordExporter] = (),
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.logger_provider = logger_provider
        self.span_exporters = tuple(span_exporters)
        self.metric_exporters = tuple(metric_exporters)
        self.log_exporters = tuple(log_exporters)
        self._closed = False

    def __repr__(self) -> str:
        providers = (
            ("traces", self.tracer_provider),
            ("metrics", self.meter_provider),
            ("logs", self.logger_provider),
        )
        return f"<SDK {' + '.join(n for n, p in providers if p)}>"

    def shutdown(self) -> None:
        """Flush and stop every provider (once: a second call does nothing)."""
        if self._closed:
            return
        self._closed = True
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()  # flushes the batch processor first
        if self.meter_provider is not None:
            self.meter_provider.shutdown()  # one last collection and export
        if self.logger_provider is not None:
            self.logger_provider.shutdown()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def _exporters(env: Mapping[str, str], signal: str) -> list[str]:
    """The exporter names asked for ``signal`` (``TRACES`` / ``METRICS`` / ``LOGS``)."""
    raw = env.get(f"OTEL_{signal}_EXPORTER")
    if raw is None:
        endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in ("otlp", "console", "none"):
            raise ConfigError(
                f"unsupported exporter {name!r} (otlp, console or none)",
                path=f"OTEL_{signal}_EXPORTER",
            )
    return [n for n in names if n != "none"]


def _protocol(env: Mapping[str, str], signal: str) -> str:
    var = f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL"
    if var not in env:
        var = "OTEL_EXPORTER_OTLP_PROTOCOL"
    protocol = env.get(var, "http/protobuf").strip().lower()
    if protocol not in _PROTOCOLS:
        raise ConfigError(
            f"unsupported OTLP protocol {protocol!r} (http/protobuf or grpc)", path=var
        )
    return protocol


# signal -> (module under opentelemetry.exporter.otlp.proto.{http,grpc}, exporter class)
_OTLP = {
    "TRACES": ("trace_exporter", "OTLPSpanExporter"),
    "METRICS": ("metric_exporter", "OTLPMetricExporter"),
    "LOGS": ("_log_exporter", "OTLPLogExporter"),
}


def _exporter(signal: str, name: str, env: Mapping[str, str], console: Any) -> Any:
    """Exporter ``name`` of ``signal``: ``console`` (to standard error: standard output is
    the command's own, ``--json`` included) or OTLP over the protocol the environment
    picks, which reads its endpoint, headers, timeout and compression from it itself."""
    if name == "console":
        return console(out=sys.stderr)
    transport = "grpc" if _protocol(env, signal) == "grpc" else "http"
    module, cls = _OTLP[signal]
    try:
        found = importlib.import_module(f"opentelemetry.exporter.otlp.proto.{transport}.{module}")
    except ImportError:
        raise ConfigError(_INSTALL) from None
    return getattr(found, cls)()


def sdk_from_env(environ: Mapping[str, str] | None = None) -> SDK | None:
    """Build the providers the environment asks for (None: it asks for none).

    Exporters read their settings from ``os.environ``; ``environ`` only decides which
    exporters are made (tests pass their own).
    """
    env = os.environ if environ is None else environ
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return None
    from opentelemetry.sdk._logs.export import ConsoleLogRecordExporter  # SDK 1.39 on

    span_exporters: list[SpanExporter] = [
        _exporter("TRACES", n, env, ConsoleSpanExporter) for n in _exporters(env, "TRACES")
    ]
    metric_exporters: list[MetricExporter] = [
        _exporter("METRICS", n, env, ConsoleMetricExporter) for n in _exporters(env, "METRICS")
    ]
    log_exporters: list[LogRecordExporter] = [
        _exporter("LOGS", n, env, ConsoleLogRecordExporter) for n in _exporters(env, "LOGS")
    ]
    if not span_exporters and not metric_exporters and not log_exporters:
        return None
    attrs: dict[str, Any] = {}
    if not env.get("OTEL_SERVICE_NAME") and "service.name=" not in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attrs["service.name"] = "cascade"
    resource = Resource.create(attrs)
    tracer_provider = None
    if span_exporters:
        tracer_provider = TracerProvider(resource=resource)
        for exporter in span_exporters:
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    meter_provider = None
    if metric_exporters:
        readers = [PeriodicExportingMetricReader(e) for e in metric_exporters]
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    log_provider = None
    if log_exporters:
        from ._otel_logs import logger_provider

        log_provider = logger_provider(resource, log_exporters)
    return SDK(
        tracer_provider,
        meter_provider,
        log_provider,
        span_exporters=span_exporters,
        metric_exporters=metric_exporters,
        log_exporters=log_exporters,
    )


def configure_from_env(environ: Mapping[str, str] | None = None) -> SDK | None:
    """:func:`sdk_from_env`, installed as the global providers (once per process); with
    logs asked for, structlog is configured to send its events there."""
    sdk = sdk_from_env(environ)
    if sdk is not None:
        if sdk.tracer_provider is not None:
            trace.set_tracer_provider(sdk.tracer_provider)
        if sdk.meter_provider is not None:
            metrics.set_meter_provider(sdk.meter_provider)
        if sdk.logger_provider is not None:
            from opentelemetry._logs import set_logger_provider

            from ._otel_logs import configure_structlog

            set_logger_provider(sdk.logger_provider)
            configure_structlog(sdk.logger_provider)
    return sdk
