"""The CLI's SDK set-up from OTEL_* variables, and export over OTLP/HTTP and gRPC."""

from __future__ import annotations

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

from .otlp_receiver import OTLPReceiver, attributes, span_tree

OTEL_VARS = (
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
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
    assert sdk_from_env({"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}) is None
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}
    assert sdk_from_env(disabled) is None


def test_an_endpoint_means_otlp_over_http(sdks: list[SDK], monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    sdk = build(sdks, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, monkeypatch)
    (spans,) = span_exporters(sdk)
    (metrics,) = metric_exporters(sdk)
    assert isinstance(spans, OTLPSpanExporter) and isinstance(metrics, OTLPMetricExporter)
    assert sdk.tracer_provider is not None
    assert sdk.tracer_provider.resource.attributes["service.name"] == "cascade"
    assert repr(sdk) == "<SDK traces + metrics>"


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
    assert sdk.tracer_provider is not None
    assert sdk.tracer_provider.resource.attributes["service.name"] == "my-gateway"


@pytest.mark.parametrize(
    ("env", "path"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
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
            with run.tier(tier) as tt:
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
