"""Spans started without their attributes when nothing can see them at the start (the SDK's
own samplers, and only its batch and simple processors: ``_telemetry/_attributes.py``'s
``quiet_start``), the attributes stored right after: the exported spans are the same as
when they are handed to ``start_span``, and a sampler or processor that does look at a
starting span still sees them."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)

from cascade import Cascade, RequestOptions
from cascade._telemetry import _attributes
from cascade._telemetry._sdk_own import blind_to_attributes
from cascade.testing import FakeOpenAIServer

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
METADATA = {"team": "search", "ticket": "7"}
OPTIONS = RequestOptions(metadata=METADATA)


class Seeing(SpanProcessor):
    """Notes each span's attributes as its ``on_start`` finds them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        self.seen.append((span.name, dict(span.attributes or {})))


class Asking(Sampler):
    """Samples everything, noting the attributes it is asked with."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, dict[str, Any]]] = []

    def should_sample(  # type: ignore[override]
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        self.asked.append((name, dict(attributes or {})))
        return ALWAYS_ON.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return "Asking"


class Subclassed(SimpleSpanProcessor):
    """The SDK's processor, subclassed: not known to do nothing at a span's start."""


def form(span: ReadableSpan) -> tuple[Any, ...]:
    attrs = span.attributes or {}
    return (
        span.name,
        span.kind,
        tuple((k, type(v), v) for k, v in attrs.items()),
        span.dropped_attributes,
        span.status.status_code,
    )


async def exported(
    url: str,
    *,
    sampler: Sampler | None = None,
    processor: type = SimpleSpanProcessor,
    extra: SpanProcessor | None = None,
    semconv: tuple[str, ...] = ("gen_ai",),
) -> list[tuple[Any, ...]]:
    """Spans of an escalated run (tier 1 rejects, tier 2 answers), run metadata on it."""
    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=sampler)
    tp.add_span_processor(processor(exporter))
    if extra is not None:
        tp.add_span_processor(extra)
    schema = {"type": "object", "required": ["missing"]}
    cfg = {
        "tiers": [
            tier(
                "small",
                provider("s", url, "m1"),
                validators=[{"name": "json_schema", "schema": schema}],
            ),
            tier("large", provider("l", url, "m2")),
        ],
        "on_exhausted": "best",
    }
    try:
        async with Cascade.from_dict(cfg, tracer_provider=tp, environ={}, semconv=semconv) as c:
            await c.run(messages=USER, options=OPTIONS, max_cost_usd=1.0)
    finally:
        tp.shutdown()
    return [form(s) for s in exporter.get_finished_spans()]


@pytest.mark.parametrize("semconv", [("gen_ai",), ("gen_ai", "openinference")])
async def test_the_same_spans_as_with_attributes_at_the_start(
    openai_server: FakeOpenAIServer, semconv: tuple[str, ...]
) -> None:
    openai_server.default = ANSWER
    quiet = await exported(openai_server.url, semconv=semconv)
    told = await exported(openai_server.url, processor=Subclassed, semconv=semconv)
    assert len(quiet) == 5 and quiet == told
    run = dict(quiet[-1][2] and [(k, v) for k, _, v in quiet[-1][2]])
    assert run["cascade.metadata.team"] == "search" and run["cascade.request.max_cost_usd"] == 1.0


async def test_a_processor_that_looks_at_the_start_sees_the_attributes(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.default = ANSWER
    seeing = Seeing()
    spans = await exported(openai_server.url, extra=seeing)
    assert [name for name, _ in seeing.seen] == [
        "cascade.run",
        "cascade.tier small",
        "chat m1",
        "cascade.tier large",
        "chat m2",
    ]
    run, tier_, call = seeing.seen[:3]
    assert run[1]["cascade.metadata.team"] == "search"
    assert tier_[1]["cascade.tier.name"] == "small"
    assert call[1]["gen_ai.request.model"] == "m1"
    assert len(spans) == 5


async def test_a_sampler_of_its_own_is_asked_with_the_attributes(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.default = ANSWER
    asking = Asking()
    await exported(openai_server.url, sampler=ParentBased(asking))
    assert asking.asked[0][0] == "cascade.run"
    assert asking.asked[0][1]["cascade.metadata.ticket"] == "7"


async def test_a_processor_added_later_sees_the_attributes_of_later_spans(
    openai_server: FakeOpenAIServer,
) -> None:
    """The processors are looked at again when the provider's change (add_span_processor)."""
    openai_server.default = ANSWER
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    seeing = Seeing()
    cfg = {"tiers": [tier("t", provider("p", openai_server.url, "m"))]}
    try:
        async with Cascade.from_dict(cfg, tracer_provider=tp, environ={}) as c:
            await c.run(messages=USER, options=OPTIONS)
            tp.add_span_processor(seeing)
            await c.run(messages=USER, options=OPTIONS)
    finally:
        tp.shutdown()
    assert [name for name, _ in seeing.seen] == ["cascade.run", "cascade.tier t", "chat m"]
    assert seeing.seen[0][1]["cascade.metadata.team"] == "search"
    assert seeing.seen[2][1]["gen_ai.request.model"] == "m"


@pytest.mark.parametrize(
    ("sampler", "blind"),
    [
        (ALWAYS_ON, True),
        (TraceIdRatioBased(0.1), True),
        (ParentBased(TraceIdRatioBased(0.1)), True),
        (StaticSampler(Decision.RECORD_ONLY), True),
        (ParentBased(ALWAYS_ON, local_parent_sampled=StaticSampler(Decision.RECORD_ONLY)), True),
        (Asking(), False),
        (ParentBased(Asking()), False),
        (ParentBased(ALWAYS_ON, remote_parent_sampled=Asking()), False),
    ],
)
def test_which_samplers_decide_without_the_attributes(sampler: Sampler, blind: bool) -> None:
    assert blind_to_attributes(sampler) is blind


def test_only_processors_whose_start_does_nothing_are_blind() -> None:
    """The import-time probe: the SDK's batch and simple processors do nothing at a span's
    start; one that reads the span there, or fails, is not counted."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    assert {BatchSpanProcessor, SimpleSpanProcessor} == _attributes._BLIND_PROCESSORS

    class Reading(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            span.attributes  # noqa: B018

    class Failing(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            raise RuntimeError

    assert _attributes._blind_processors((Reading, Failing, SpanProcessor)) == {SpanProcessor}
