"""End to end over OTLP/HTTP: an escalated run's spans reach a receiver in the test, which
decodes ``ExportTraceServiceRequest`` as a Collector would; then the same from the
``cascade`` command, configured by OTEL_* variables alone, its routing record exported as
a log record in the run's trace."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from cascade import Cascade
from cascade._telemetry import _semconv as sc
from cascade.testing import FakeOpenAIServer

from .helpers import JSON_SCHEMA, USER, provider, tier
from .otlp_receiver import OTLPReceiver, attributes, span_tree

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
CANARY = "sk-canary-0d9e8f7a6b5c4d3e"
ESCALATED = [
    (0, "cascade.run"),
    (1, "cascade.tier small"),
    (2, "chat ms"),
    (1, "cascade.tier large"),
    (2, "chat ml"),
]


def check_escalated_tree(spans: list[Span]) -> None:
    assert [(d, s.name) for d, s in span_tree(spans)] == ESCALATED
    assert len({s.trace_id for s in spans}) == 1
    by_name = {s.name: s for s in spans}
    run = by_name["cascade.run"]
    assert run.parent_span_id == b"" and run.kind == Span.SPAN_KIND_INTERNAL
    for name, parent in (
        ("cascade.tier small", "cascade.run"),
        ("cascade.tier large", "cascade.run"),
        ("chat ms", "cascade.tier small"),
        ("chat ml", "cascade.tier large"),
    ):
        assert by_name[name].parent_span_id == by_name[parent].span_id, name
    chat = by_name["chat ml"]
    assert chat.kind == Span.SPAN_KIND_CLIENT
    a = attributes(chat)
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat" and a[sc.GEN_AI_REQUEST_MODEL] == "ml"
    assert a[sc.SERVER_ADDRESS] == "127.0.0.1" and isinstance(a[sc.SERVER_PORT], int)
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] > 0 and a[sc.CASCADE_VALIDATED] is True
    (verdict,) = by_name["chat ms"].events
    assert verdict.name == sc.EVENT_VALIDATION
    assert attributes(verdict)[sc.CASCADE_VALIDATION_PASSED] is False
    (escalation,) = run.events
    assert escalation.name == sc.EVENT_ESCALATION
    e = attributes(escalation)
    assert (e[sc.CASCADE_ESCALATION_FROM], e[sc.CASCADE_ESCALATION_TO]) == ("small", "large")
    assert e[sc.CASCADE_ESCALATION_REASON] == "rejected"


def escalating(server: FakeOpenAIServer) -> None:
    server.script("ms", "Sure. The answer is 42.")
    server.script("ml", ANSWER)


def config(url: str) -> dict[str, object]:
    return {
        "tiers": [
            tier("small", provider("s", url, "ms", api_key_env="K"), validators=[JSON_SCHEMA]),
            tier("large", provider("l", url, "ml", api_key_env="K")),
        ]
    }


async def test_escalated_run_over_otlp_http(openai_server: FakeOpenAIServer) -> None:
    escalating(openai_server)
    with OTLPReceiver() as receiver:
        resource = Resource.create({"service.name": "cascade-test"})
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces"))
        )
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(endpoint=f"{receiver.url}/v1/metrics"),
            export_interval_millis=60_000,
        )
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
        try:
            async with Cascade.from_dict(
                config(openai_server.url),
                environ={"K": CANARY},
                tracer_provider=tracer_provider,
                meter_provider=meter_provider,
                capture_content=True,
            ) as c:
                result = await c.run(messages=USER)
        finally:
            # The receiver runs on its own thread: flushing from here cannot deadlock.
            tracer_provider.shutdown()
            meter_provider.shutdown()
        receiver.wait_for(lambda: len(receiver.spans()) == 5 and bool(receiver.metrics))
    assert result.tier == 2
    spans = [s for s, _ in receiver.spans()]
    assert {r["service.name"] for _, r in receiver.spans()} == {"cascade-test"}
    check_escalated_tree(spans)
    assert {
        sc.GEN_AI_CLIENT_OPERATION_DURATION,
        sc.GEN_AI_CLIENT_TOKEN_USAGE,
        sc.METRIC_COST,
        sc.METRIC_ESCALATIONS,
        sc.METRIC_BREAKER_STATE,
    } <= receiver.metric_names()
    wire = b"".join(r.SerializeToString() for r in receiver.traces + receiver.metrics)
    assert CANARY.encode() not in wire  # nowhere on the wire, content capture on


async def test_cli_exports_from_otel_environment(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    escalating(openai_server)
    cfg = tmp_path / "cascade.toml"
    cfg.write_text(
        f"""
[[tiers]]
name = "small"
validators = [{{ name = "json_schema", schema = {{ type = "object", required = ["answer"] }} }}]
[[tiers.providers]]
name = "s"
kind = "openai"
base_url = "{openai_server.url}"
model = "ms"
api_key_env = "CASCADE_TEST_KEY"

[[tiers]]
name = "large"
[[tiers.providers]]
name = "l"
kind = "openai"
base_url = "{openai_server.url}"
model = "ml"
api_key_env = "CASCADE_TEST_KEY"
"""
    )
    with OTLPReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_SERVICE_NAME="cascade-cli-test",
            OTEL_METRIC_EXPORT_INTERVAL="60000",
            CASCADE_TEST_KEY=CANARY,
        )
        # The fake server runs on this event loop: wait for the command without blocking it.
        done = await anyio.run_process(
            [sys.executable, "-m", "cascade._cli", "run", "--config", str(cfg), "6 * 7?"],
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        assert ANSWER in done.stdout.decode()
        receiver.wait_for(
            lambda: (
                len(receiver.spans()) == 5
                and bool(receiver.metrics)
                and bool(receiver.log_records())
            )
        )
    check_escalated_tree([s for s, _ in receiver.spans()])
    assert {r["service.name"] for _, r in receiver.spans()} == {"cascade-cli-test"}
    # The routing record, as an OpenTelemetry log record in the run span's trace.
    (route,) = receiver.log_records()
    run = next(s for s, _ in receiver.spans() if s.name == "cascade.run")
    assert route.body.string_value == "cascade.route"
    assert (route.trace_id, route.span_id) == (run.trace_id, run.span_id)
    fields = attributes(route)
    assert fields["tier_path"] == ("small", "large") and fields["model"] == "ml"
    assert fields["outcome"] == "accepted" and fields["cost_usd"] >= 0
    assert "cascade.route" not in done.stdout.decode()  # exported, not printed
    wire = b"".join(
        r.SerializeToString() for r in receiver.traces + receiver.metrics + receiver.logs
    )
    assert CANARY.encode() not in wire
    assert openai_server.requests[-1].headers["authorization"] == f"Bearer {CANARY}"
