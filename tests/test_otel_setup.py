"""The CLI's SDK set-up from OTEL_* variables, and export over OTLP/HTTP and gRPC."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter
from opentelemetry.sdk.trace.export import ConsoleSpanExporter

from cascade import ConfigError, ProviderConfig, RequestOptions
from cascade._otel import SDK, sdk_from_env
from cascade._telemetry import Telemetry
from cascade._telemetry import _semconv as sc
from cascade._types import Completion, Message

from .helpers import in_tier
from .otlp_receiver import OTLPReceiver, attributes, span_tree

OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_LOGS_EXPORTER",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def sdks() -> Iterator[list[SDK]]:
    made: list[SDK] = []
    yield made
    for sdk in made:
        sdk.shutdown()


def build(sdks: list[SDK], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> SDK:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    sdk = sdk_from_env()
    assert sdk is not None
    sdks.append(sdk)
    return sdk


def span_exporters(sdk: SDK) -> list[Any]:
    assert sdk.tracer_provider is not None
    return list(sdk.span_exporters)


def metric_exporters(sdk: SDK) -> list[Any]:
    assert sdk.meter_provider is not None
    return list(sdk.metric_exporters)


def test_nothing_is_set_up_unless_asked() -> None:
    assert sdk_from_env({}) is None
    assert sdk_from_env({"OTEL_SERVICE_NAME": "x"}) is None
    off = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    assert sdk_from_env(off) is None
    assert sdk_from_env({**off, "OTEL_LOGS_EXPORTER": "none"}) is None
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}
    assert sdk_from_env(disabled) is None


def test_an_endpoint_means_otlp_over_http(sdks: list[SDK], monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    sdk = build(sdks, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, monkeypatch)
    (spans,) = span_exporters(sdk)
    (metrics,) = metric_exporters(sdk)
    (logs,) = sdk.log_exporters
    assert isinstance(spans, OTLPSpanExporter) and isinstance(metrics, OTLPMetricExporter)
    assert isinstance(logs, OTLPLogExporter)
    assert sdk.tracer_provider is not None and sdk.logger_provider is not None
    assert sdk.tracer_provider.resource.attributes["service.name"] == "cascade"
    assert sdk.logger_provider.resource.attributes["service.name"] == "cascade"
    assert repr(sdk) == "<SDK traces + metrics + logs>"


def test_one_signal_alone(sdks: list[SDK], monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    env = {
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "grpc",
    }
    sdk = build(sdks, env, monkeypatch)
    (logs,) = sdk.log_exporters
    assert isinstance(logs, OTLPLogExporter)
    assert sdk.tracer_provider is None and sdk.meter_provider is None
    assert repr(sdk) == "<SDK logs>"


def test_grpc_protocol_and_console(sdks: list[SDK], monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    env = {
        "OTEL_TRACES_EXPORTER": "otlp,console",
        "OTEL_METRICS_EXPORTER": "console",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_SERVICE_NAME": "my-gateway",
    }
    sdk = build(sdks, env, monkeypatch)
    grpc, console = span_exporters(sdk)
    assert isinstance(grpc, OTLPSpanExporter) and isinstance(console, ConsoleSpanExporter)
    (metrics,) = metric_exporters(sdk)
    assert isinstance(metrics, ConsoleMetricExporter)
    # Console output goes to stderr: stdout is the command's own (cascade demo --json).
    assert console.out is sys.stderr and metrics.out is sys.stderr
    assert sdk.tracer_provider is not None
    assert sdk.tracer_provider.resource.attributes["service.name"] == "my-gateway"


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_LOGS_EXPORTER": "otlp,syslog"}, "OTEL_LOGS_EXPORTER"),
        (
            {"OTEL_LOGS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL": "thrift"},
            "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ),
    ],
)
def test_bad_settings_are_config_errors(env: dict[str, str], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        sdk_from_env(env)
    assert info.value.path == path


def one_run(tel: Telemetry) -> None:
    """An escalated run through the telemetry hooks alone (no engine, no network)."""
    from cascade import Attempt, Verdict

    class Tier:
        def __init__(self, index: int, name: str) -> None:
            self.index, self.name = index, name

    class Provider:
        def __init__(self, name: str, model: str) -> None:
            self.name, self.model = name, model
            self.config = ProviderConfig(
                name=name, kind="openai", base_url="http://127.0.0.1:1/v1", model=model
            )

    msgs = (Message(role="user", content="hi"),)
    opts = RequestOptions()
    attempts: list[Attempt] = []
    bad = Verdict(validator="json_schema", passed=False, score=0.0, reason="not JSON")
    with tel.run(attempts, opts) as run:
        for tier, provider, verdicts, outcome in (
            (Tier(1, "cheap"), Provider("small", "m-small"), (bad,), "rejected"),
            (Tier(2, "big"), Provider("large", "m-large"), (), "accepted"),
        ):
            with in_tier(run, tier) as tt:
                at = tt.attempt(provider, msgs, opts)
                at.completed(Completion(text="x", provider=provider.name, model=provider.model))
                at.judged(verdicts, outcome == "accepted")
                attempts.append(
                    Attempt(
                        tier=tier.index,
                        tier_name=tier.name,
                        provider=provider.name,
                        model=provider.model,
                        outcome=outcome,  # type: ignore[arg-type]
                        verdicts=verdicts,
                    )
                )


def test_export_over_otlp_http(sdks: list[SDK], monkeypatch: pytest.MonkeyPatch) -> None:
    with OTLPReceiver() as receiver:
        sdk = build(sdks, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url}, monkeypatch)
        tel = Telemetry(
            tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider, environ={}
        )
        one_run(tel)
        sdk.shutdown()  # flushes spans and one last metric collection
        receiver.wait_for(lambda: len(receiver.spans()) == 5 and bool(receiver.metrics))
    spans = receiver.spans()
    assert {res["service.name"] for _, res in spans} == {"cascade"}
    tree = [(depth, s.name) for depth, s in span_tree([s for s, _ in spans])]
    assert tree == [
        (0, "cascade.run"),
        (1, "cascade.tier cheap"),
        (2, "chat m-small"),
        (1, "cascade.tier big"),
        (2, "chat m-large"),
    ]
    run = next(s for s, _ in spans if s.name == "cascade.run")
    (event,) = run.events
    assert event.name == sc.EVENT_ESCALATION
    assert attributes(event)[sc.CASCADE_ESCALATION_REASON] == "rejected"
    names = receiver.metric_names()
    assert {sc.GEN_AI_CLIENT_OPERATION_DURATION, sc.GEN_AI_CLIENT_TOKEN_USAGE} <= names
    assert sc.METRIC_ESCALATIONS in names
    assert all(h.get("Content-Type") == "application/x-protobuf" for h in receiver.headers)


def test_export_over_otlp_grpc(sdks: list[SDK], monkeypatch: pytest.MonkeyPatch) -> None:
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    received: list[Any] = []

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: Any, context: Any) -> Any:
            received.append(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        }
        sdk = build(sdks, env, monkeypatch)
        one_run(Telemetry(tracer_provider=sdk.tracer_provider, environ={}))
        sdk.shutdown()
    finally:
        server.stop(None)
    spans = [
        s for r in received for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
    ]
    assert sorted(s.name for s in spans) == sorted(
        ["cascade.run", "cascade.tier cheap", "chat m-small", "cascade.tier big", "chat m-large"]
    )


def test_logs_carry_the_run_span_ids(
    sdks: list[SDK], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With logs asked for, the command routes structlog to the logs SDK: the routing
    record arrives as a log record in the run span's trace, and nothing is printed."""
    import structlog
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        InMemoryLogRecordExporter,
        SimpleLogRecordProcessor,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cascade._otel_logs import configure_structlog

    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    configure_structlog(logger_provider)
    try:
        one_run(Telemetry(tracer_provider=tracer_provider, environ={}))
        with tracer_provider.get_tracer("app").start_as_current_span("handler") as handler:
            structlog.get_logger("app").warning("app.event", user="u1", tags=("a", None))
    finally:
        structlog.reset_defaults()
        tracer_provider.shutdown()
        logger_provider.shutdown()
    assert capsys.readouterr().out == ""
    (run,) = [s for s in spans.get_finished_spans() if s.name == "cascade.run"]
    route, app = (r.log_record for r in logs.get_finished_logs())
    assert route.body == "cascade.route"
    # one_run ends without a Result: the record of a run that did not answer is a warning
    assert route.severity_text == "WARNING" and route.severity_number is not None
    assert route.severity_number.name == "WARN"
    assert run.context is not None
    assert (route.trace_id, route.span_id) == (run.context.trace_id, run.context.span_id)
    attrs = dict(route.attributes or {})
    assert attrs["tier_path"] == ("cheap", "big") and attrs["attempts"] == 2
    assert attrs["escalations"] == ("cheap: rejected (json_schema: rejected)",)
    assert "trace_id" not in attrs and "event" not in attrs and "task_id" not in attrs
    # Any other event takes the current span's ids (the add_trace_ids processor).
    assert app.body == "app.event" and app.severity_text == "WARNING"
    assert app.trace_id == handler.get_span_context().trace_id
    assert app.trace_flags == handler.get_span_context().trace_flags  # as they are
    assert dict(app.attributes or {}) == {"user": "u1", "tags": ("a",)}
    assert route.timestamp and app.timestamp


def test_log_bridge_exceptions_unsampled_spans_and_bad_values(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    import logging

    import structlog
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import (
        InMemoryLogRecordExporter,
        SimpleLogRecordProcessor,
    )
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    from cascade._otel_logs import configure_structlog

    class Unprintable:
        def __str__(self) -> str:
            raise RuntimeError("no text")

    logs = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    configure_structlog(logger_provider)
    log = structlog.get_logger("app")
    try:
        try:
            raise ValueError("bad input")
        except ValueError:
            log.exception("app.failed")
        log.error("app.task_failed", exc_info=KeyError("k"))
        dropped = TracerProvider(sampler=ALWAYS_OFF).get_tracer("app")
        with dropped.start_as_current_span("sampled out"):
            log.info("app.unsampled")
        with caplog.at_level(logging.WARNING, logger="cascade"):
            log.info("app.bad", value=Unprintable())  # lost, without raising
            log.info("app.bad", value=Unprintable())
    finally:
        structlog.reset_defaults()
        logger_provider.shutdown()
    assert capsys.readouterr().out == ""
    failed, task_failed, unsampled = (r.log_record for r in logs.get_finished_logs())
    a = dict(failed.attributes or {})
    assert failed.severity_text == "ERROR" and a["exception.type"] == "ValueError"
    assert a["exception.message"] == "bad input" and "raise ValueError" in str(
        a["exception.stacktrace"]
    )
    assert "exc_info" not in a
    b = dict(task_failed.attributes or {})
    assert b["exception.type"] == "KeyError" and task_failed.severity_text == "ERROR"
    # The current (dropped) span's context, flagged as not sampled, as the SDK does it.
    assert unsampled.trace_flags is not None and not unsampled.trace_flags.sampled
    assert "trace_id" not in dict(unsampled.attributes or {})
    (warning,) = [r for r in caplog.records if r.name == "cascade"]  # said once
    assert "could not be exported" in warning.getMessage()


def test_the_sampler_is_read_from_the_environment(
    sdks: list[SDK], monkeypatch: pytest.MonkeyPatch
) -> None:
    """OTEL_TRACES_SAMPLER applies (the SDK's own variable): how a busy gateway keeps
    tracing cheap."""
    with OTLPReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0",
        }
        sdk = build(sdks, env, monkeypatch)
        tel = Telemetry(
            tracer_provider=sdk.tracer_provider, meter_provider=sdk.meter_provider, environ={}
        )
        one_run(tel)
        sdk.shutdown()
        receiver.wait_for(lambda: bool(receiver.metrics))
    assert receiver.spans() == []  # sampled out; the metrics still count the run
    assert sc.METRIC_ESCALATIONS in receiver.metric_names()


def test_missing_exporters_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the `otlp` extra's gRPC exporter were not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(ConfigError, match=r"pip install 'cascade-engine\[otlp\]'"):
        sdk_from_env(env)
