"""An application's own OpenTelemetry and structlog set-up, with cascade inside it: run it
with `python examples/tracing.py` (fake servers on loopback, no API keys).

The application configures the SDK (cascade never does), opens its own span for the
request it serves, and configures structlog with `cascade.add_trace_ids`, so that its own
events carry the trace's ids, as cascade's routing record does by itself. The cheap tier
answers in prose where JSON was asked for; the validator rejects it and the run escalates.
At the end the spans are printed as a tree, the way a trace backend shows them. With
OTEL_EXPORTER_OTLP_ENDPOINT set (and `pip install -e '.[otlp]'`), they are also sent there
(OTEL_EXPORTER_OTLP_PROTOCOL=grpc for gRPC): see examples/jaeger/.
"""

from __future__ import annotations

import os

import anyio
import structlog
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import cascade
from cascade.testing import FakeOpenAIServer

SCHEMA = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}
SHOWN = (  # the attributes printed per span (each span carries more)
    "cascade.outcome",
    "cascade.tier.outcome",
    "gen_ai.request.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "cascade.cost_usd",
    "cascade.validated",
)


def set_up_telemetry() -> tuple[TracerProvider, InMemorySpanExporter]:
    provider = TracerProvider(resource=Resource.create({"service.name": "tracing-example"}))
    # For this demo only: keeps every span in memory, for the tree printed at the end.
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):  # what a service does: batch, export
        if os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            cascade.add_trace_ids,  # trace_id / span_id of the current span
            structlog.processors.JSONRenderer(sort_keys=True),
        ]
    )
    return provider, spans


def print_tree(spans: tuple[ReadableSpan, ...]) -> None:
    by_parent: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        by_parent.setdefault(span.parent.span_id if span.parent else None, []).append(span)

    def show(span: ReadableSpan, depth: int) -> None:
        pad = "  " * depth
        attrs = span.attributes or {}
        shown = "".join(f" {k}={attrs[k]}" for k in SHOWN if k in attrs)
        print(f"{pad}{span.name} [{span.kind.name}]{shown}")
        for event in span.events:
            fields = ", ".join(f"{k}={v}" for k, v in (event.attributes or {}).items())
            print(f"{pad}  * {event.name}: {fields}")
        assert span.context is not None
        for child in sorted(by_parent.get(span.context.span_id, []), key=_start):
            show(child, depth + 1)

    for root in sorted(by_parent.get(None, []), key=_start):
        assert root.context is not None
        print(f"trace {root.context.trace_id:032x}")
        show(root, 0)


def _start(span: ReadableSpan) -> int:
    return span.start_time or 0


async def main() -> None:
    provider, spans = set_up_telemetry()
    log = structlog.get_logger("app")
    tracer = trace.get_tracer("tracing-example")
    async with FakeOpenAIServer() as server:
        server.script("small", "The total is 12.50.")
        server.script("large", '{"total": 12.5}')
        validators = [{"name": "json_schema", "schema": SCHEMA}]
        config = {
            "tiers": [
                {"name": "small", "validators": validators, "providers": [
                    {"name": "small-a", "kind": "openai", "base_url": server.url,
                     "model": "small", "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.6}]},
                {"name": "large", "validators": validators, "providers": [
                    {"name": "large-a", "kind": "openai", "base_url": server.url,
                     "model": "large", "input_cost_per_mtok": 2.5, "output_cost_per_mtok": 10}]},
            ]
        }  # fmt: skip
        async with cascade.Cascade.from_dict(config) as engine:
            with tracer.start_as_current_span("POST /receipts", kind=trace.SpanKind.SERVER):
                log.info("request received", route="/receipts")
                result = await engine.run(
                    messages=[{"role": "user", "content": "Total of 10.00 and 2.50, as JSON"}],
                    options=cascade.RequestOptions(metadata={"task_id": "receipt-1"}),
                )
                log.info("request answered", tier=result.tier, cost_usd=result.cost_usd)
    finished = spans.get_finished_spans()
    provider.shutdown()  # flushes the OTLP exporter, if any
    print()
    print_tree(finished)


if __name__ == "__main__":
    anyio.run(main)
