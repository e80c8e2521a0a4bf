"""Head sampling decided by cascade for the SDK's own samplers (``_telemetry/_sampling.py``),
checked against the SDK: the same decisions and the same span contexts for the same random
draws, sampled traces exported whole under the trace id their decision was drawn for (over
OTLP/HTTP), a non-sampled parent's decision inherited, and anything unrecognised (a custom
sampler or id generator, the SDK's self-metrics) left to ``start_span``."""

from __future__ import annotations

import inspect
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import Tracer, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    DEFAULT_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

import cascade
from cascade import Cascade
from cascade._telemetry import Telemetry
from cascade._telemetry._sampling import DROP, head_sampler
from cascade._types import RequestOptions
from cascade.testing import FakeOpenAIServer

from .helpers import USER, provider, tier
from .otlp_receiver import OTLPReceiver, span_tree
from .sdk_features import HEAD_SAMPLING, NEEDS_HEAD_SAMPLING

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
MASK = (1 << 64) - 1
OPTS = RequestOptions()

SAMPLERS: dict[str, Sampler] = {
    "always_off": ALWAYS_OFF,
    "parentbased_always_off": ParentBased(ALWAYS_OFF),
    "ratio": TraceIdRatioBased(0.25),
    "parentbased_ratio": ParentBased(TraceIdRatioBased(0.25)),
    "parentbased_traceidratio": ParentBasedTraceIdRatio(0.25),
    "ratio_delegates": ParentBased(
        TraceIdRatioBased(0.25),
        remote_parent_not_sampled=ALWAYS_ON,
        local_parent_sampled=TraceIdRatioBased(0.5),
        local_parent_not_sampled=TraceIdRatioBased(0.5),
    ),
    # a delegate cascade leaves to start_span (RECORD_ONLY), beside ones it decides
    "mixed_delegates": ParentBased(
        StaticSampler(Decision.DROP),
        remote_parent_sampled=TraceIdRatioBased(0.5),
        local_parent_sampled=StaticSampler(Decision.DROP),
        local_parent_not_sampled=StaticSampler(Decision.RECORD_ONLY),
    ),
}
_STATE = TraceState([("vendor", "v1")])
PARENTS: dict[str, SpanContext | None] = {
    "root": None,
    "local_sampled": SpanContext(0xA1B2C3D4 << 64 | 0x5, 0x77, False, TraceFlags(1)),
    "local_not_sampled": SpanContext(0x1234 << 64 | (1 << 63), 0x78, False, TraceFlags(0)),
    "remote_sampled": SpanContext(0xBEEF << 64 | 0x9, 0x79, True, TraceFlags(3), _STATE),
    "remote_not_sampled": SpanContext(0xF00D << 64 | 0x3, 0x7A, True, TraceFlags(2), _STATE),
    # every flag bit set: sampled and random-trace-id, and bits no one defines yet
    "remote_all_flags": SpanContext(0xF00D << 64 | 1 << 63, 0x7B, True, TraceFlags(0xFF), _STATE),
    # not a parent (no span id): a new trace, without the trace state it carries
    "invalid_with_state": SpanContext(0xBAD << 64 | 0x3, 0, True, TraceFlags(1), _STATE),
}


@contextmanager
def under(parent: SpanContext | None) -> Iterator[None]:
    """``parent`` current (as a caller's span, or an extracted traceparent, would be)."""
    if parent is None:
        yield
        return
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        yield
    finally:
        otel_context.detach(token)


def described(span: trace.Span) -> tuple[Any, ...]:
    c = span.get_span_context()
    return (c.trace_id, c.span_id, c.is_remote, int(c.trace_flags), c.trace_state, c.is_valid,
            span.is_recording())  # fmt: skip


def run_span_of(tel: Telemetry) -> tuple[Any, ...]:
    """What is current while a run lasts: its span (sampled), or the one made for a drop."""
    with tel.run([], OPTS):
        return described(trace.get_current_span())


@pytest.mark.parametrize("parent", list(PARENTS))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_the_same_decisions_and_span_contexts_as_the_sdk(
    sampler: str, parent: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For the same random draws, a run's span context is the SDK's own, sampled or not:
    the same trace id (drawn for a new trace, else the parent's), span id, remote flag,
    trace flags (sampled, random-trace-id) and trace state; and a run the decision drops
    never reaches ``start_span``."""
    reference = TracerProvider(sampler=SAMPLERS[sampler]).get_tracer("cascade")
    provider_ = TracerProvider(sampler=SAMPLERS[sampler])
    exporter = InMemorySpanExporter()
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(tracer_provider=provider_, environ={})
    started = []
    real_start = Tracer.start_span

    def start_span(self: Tracer, name: str, *args: Any, **kw: Any) -> trace.Span:
        if self is not reference:
            started.append(name)
        return real_start(self, name, *args, **kw)

    monkeypatch.setattr(Tracer, "start_span", start_span)
    theirs, ours = [], []
    with under(PARENTS[parent]):
        for seed in range(200):
            random.seed(seed)
            span = reference.start_span("cascade.run")
            theirs.append(described(span))
            span.end()
            random.seed(seed)
            ours.append(run_span_of(tel))
    provider_.shutdown()
    assert ours == theirs
    sampled = sum(1 for d in ours if d[3] & TraceFlags.SAMPLED)
    assert len(exporter.get_finished_spans()) == sampled
    recording = sum(1 for d in ours if d[-1])  # sampled, or RECORD_ONLY's
    if HEAD_SAMPLING:
        assert len(started) == recording  # the drops were decided without the SDK
    else:
        assert len(started) == len(ours)  # the SDK decided each run
    if parent == "root" and sampler.endswith("ratio"):  # 0.25 of new traces
        assert 30 <= sampled <= 70
        assert all(d[0] & MASK < TraceIdRatioBased.get_bound_for_rate(0.25) for d in ours if d[-1])


def test_the_sampled_fraction_of_many_new_traces_is_the_rate() -> None:
    """Over 4,000 new traces (seeded draws), the runs sampled are exactly those whose drawn
    trace id is below the ratio's bound, and each is exported with that id: sampling is at
    the rate, not at the rate squared (as a second draw by the SDK would make it)."""
    exporter = InMemorySpanExporter()
    provider_ = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.1)))
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(tracer_provider=provider_, environ={})
    random.seed(15)
    seen = [run_span_of(tel) for _ in range(4000)]
    provider_.shutdown()
    bound = TraceIdRatioBased.get_bound_for_rate(0.1)
    expected = [d[0] for d in seen if d[0] & MASK < bound]
    assert [d[0] for d in seen if d[-1]] == expected
    assert sorted(s.context.trace_id for s in exporter.get_finished_spans()) == sorted(expected)
    assert 340 <= len(expected) <= 460  # 10% of 4,000, within five standard deviations
    assert all(d[1] and d[5] for d in seen)  # every run had a valid span, sampled or not


@cascade.validator("test_head_span", replace=True)
class HeadSpan:
    """Passes everything; records what an instrumented HTTP client under the run would
    see: the current span, and a span it starts itself with another tracer."""

    seen: ClassVar[list[tuple[SpanContext, bool, SpanContext]]] = []
    tracer_provider: ClassVar[TracerProvider | None] = None

    def __init__(self) -> None:
        self.name = "head_span"

    async def validate(
        self, completion: cascade.Completion, context: cascade.ValidationContext
    ) -> cascade.Verdict:
        current = trace.get_current_span()
        assert HeadSpan.tracer_provider is not None
        child = HeadSpan.tracer_provider.get_tracer("an.http.client").start_span("GET")
        recording = child.is_recording()
        child.end()
        HeadSpan.seen.append((current.get_span_context(), recording, child.get_span_context()))
        return cascade.Verdict(validator=self.name, passed=True)


def config(url: str) -> dict[str, Any]:
    return {"tiers": [tier("t", provider("p", url, "m"), validators=[{"name": "test_head_span"}])]}


async def test_sampled_traces_are_exported_whole_with_the_drawn_trace_id(
    openai_server: FakeOpenAIServer,
) -> None:
    """Over OTLP/HTTP, with half the new traces sampled: each sampled run's trace arrives
    whole (run > tier > call, and the instrumented client's span under the call) under the
    trace id its decision was drawn for; a dropped run exports nothing, and the client's
    span under it is dropped with it, in the run's trace."""
    openai_server.default = ANSWER
    HeadSpan.seen = []
    with OTLPReceiver() as receiver:
        provider_ = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
        provider_.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces"))
        )
        HeadSpan.tracer_provider = provider_
        random.seed(1202)
        try:
            async with Cascade.from_dict(
                config(openai_server.url), tracer_provider=provider_, environ={}
            ) as c:
                for _ in range(24):
                    await c.run(messages=USER)
        finally:
            provider_.shutdown()
            HeadSpan.tracer_provider = None
        bound = TraceIdRatioBased.get_bound_for_rate(0.5)
        sampled = {ctx.trace_id for ctx, _, _ in HeadSpan.seen if ctx.trace_id & MASK < bound}
        receiver.wait_for(lambda: len(receiver.spans()) == 4 * len(sampled))
    assert len(HeadSpan.seen) == 24 and 4 <= len(sampled) <= 20
    spans = [s for s, _ in receiver.spans()]
    by_trace: dict[int, list[Any]] = {}
    for s in spans:
        by_trace.setdefault(int.from_bytes(s.trace_id, "big"), []).append(s)
    assert set(by_trace) == sampled
    for trace_spans in by_trace.values():
        assert [(d, s.name) for d, s in span_tree(trace_spans)] == [
            (0, "cascade.run"),
            (1, "cascade.tier t"),
            (2, "chat m"),
            (3, "GET"),
        ]
    for current, child_recording, child in HeadSpan.seen:
        assert child.trace_id == current.trace_id  # the client continued the run's trace
        assert child_recording is (current.trace_id in sampled)
        assert current.trace_flags.sampled is (current.trace_id in sampled)


class Recording(Sampler):
    """A custom sampler: every decision it is asked for is recorded."""

    def __init__(self, inner: Sampler) -> None:
        self.inner = inner
        self.asked: list[tuple[str, SpanContext]] = []

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        parent = trace.get_current_span(parent_context).get_span_context()
        self.asked.append((name, parent))
        return self.inner.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        return f"Recording({self.inner.get_description()})"


async def test_a_non_sampled_parent_drops_the_run_and_its_children(
    openai_server: FakeOpenAIServer,
) -> None:
    """A caller's span (or traceparent) that is not sampled: the run is dropped by its
    decision, in its trace, and an instrumented client under the run is asked about with a
    non-sampled parent (the run's span: local, in the caller's trace)."""
    openai_server.default = ANSWER
    HeadSpan.seen = []
    children = Recording(ALWAYS_ON)  # a child of a non-sampled parent would be sampled!
    exporter = InMemorySpanExporter()
    provider_ = TracerProvider(
        sampler=ParentBased(
            TraceIdRatioBased(1.0),
            local_parent_not_sampled=children,
            remote_parent_not_sampled=ALWAYS_OFF,
        )
    )
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    HeadSpan.tracer_provider = provider_
    caller = SpanContext(0xCA11E4 << 64 | 0xAB, 0xC0FFEE, True, TraceFlags(0), _STATE)
    try:
        async with Cascade.from_dict(
            config(openai_server.url), tracer_provider=provider_, environ={}
        ) as c:
            with under(caller):
                await c.run(messages=USER)
    finally:
        provider_.shutdown()
        HeadSpan.tracer_provider = None
    ((current, _, child),) = HeadSpan.seen
    assert current.trace_id == caller.trace_id and current.span_id != caller.span_id
    assert not current.is_remote and not current.trace_flags.sampled
    assert current.trace_state == _STATE
    # The client's tracer asked the custom delegate, with the run's span as its parent.
    assert children.asked == [("GET", current)]
    assert child.trace_id == caller.trace_id
    assert [s.name for s in exporter.get_finished_spans()] == ["GET"]  # ALWAYS_ON's doing


async def test_a_custom_sampler_and_a_custom_id_generator_are_still_used(
    openai_server: FakeOpenAIServer,
) -> None:
    """A sampler of the application's own is asked about every span; ids come from the
    application's generator: cascade decides nothing for them."""
    openai_server.default = ANSWER
    sampler = Recording(TraceIdRatioBased(0.5))

    class Counting(IdGenerator):
        def __init__(self) -> None:
            self.n = 0

        def generate_span_id(self) -> int:
            self.n += 1
            return self.n

        def generate_trace_id(self) -> int:
            self.n += 1
            return self.n << 64 | self.n  # low bits small: under the bound, sampled

    exporter = InMemorySpanExporter()
    provider_ = TracerProvider(sampler=sampler)
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    ids = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)), id_generator=Counting())
    ids.add_span_processor(SimpleSpanProcessor(exporter))
    cfg = {"tiers": [tier("t", provider("p", openai_server.url, "m"))]}
    try:
        async with Cascade.from_dict(cfg, tracer_provider=provider_, environ={}) as c:
            await c.run(messages=USER)
            await c.run(messages=USER)
        async with Cascade.from_dict(cfg, tracer_provider=ids, environ={}) as c:
            await c.run(messages=USER)
    finally:
        provider_.shutdown()
        ids.shutdown()
    assert [name for name, _ in sampler.asked].count("cascade.run") == 2
    counted = [s for s in exporter.get_finished_spans() if s.context.trace_id < 1 << 72]
    assert [s.name for s in counted] == ["chat m", "cascade.tier t", "cascade.run"]
    assert {s.context.trace_id for s in counted} == {1 << 64 | 1}


@pytest.mark.parametrize(
    "sampler",
    [
        pytest.param(DEFAULT_ON, id="every-new-trace"),
        pytest.param(ALWAYS_ON, id="always-on"),
        pytest.param(StaticSampler(Decision.RECORD_ONLY), id="record-only"),
        pytest.param(ParentBased(Recording(ALWAYS_OFF)), id="custom-root"),
        pytest.param(ParentBased(TraceIdRatioBased(0.1)), id="sdk-self-metrics"),
    ],
)
def test_nothing_is_decided_for_what_cascade_does_not_recognise(
    sampler: Sampler, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samplers that never drop a new trace (nothing to save), a sampler of the
    application's own, and a tracer counting its spans in the SDK's self-metrics (each
    span started must be counted): ``start_span`` for every run, the tracer untouched."""
    meter_provider = None
    if request.node.callspec.id == "sdk-self-metrics":
        monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    if meter_provider is None:
        provider_ = TracerProvider(sampler=sampler)
    elif "meter_provider" in inspect.signature(TracerProvider).parameters:
        provider_ = TracerProvider(sampler=sampler, meter_provider=meter_provider)
    else:
        meter_provider.shutdown()
        pytest.skip("this SDK (before 1.40) has no span self-metrics")
    tracer = provider_.get_tracer("cascade")
    ids = tracer.id_generator
    assert head_sampler(tracer) is None
    assert tracer.id_generator is ids  # left as it was
    provider_.shutdown()
    if meter_provider is not None:
        meter_provider.shutdown()


@NEEDS_HEAD_SAMPLING
def test_a_preset_trace_id_never_reaches_another_span() -> None:
    """The shared tracer's wrapped generator hands out the drawn id to the sampled run's
    span only: a span started on the same tracer afterwards, or in another thread while
    runs go on, gets ids of its own; every sampled run satisfies the ratio's rule."""
    exporter = InMemorySpanExporter()
    provider_ = TracerProvider(sampler=TraceIdRatioBased(0.5))
    provider_.add_span_processor(SimpleSpanProcessor(exporter))
    tel = Telemetry(tracer_provider=provider_, environ={})
    shared = provider_.get_tracer("cascade", cascade.__version__)
    assert head_sampler(shared) is not None
    seen: list[tuple[Any, ...]] = []
    others: list[int] = []

    def runs() -> None:
        for _ in range(300):
            seen.append(run_span_of(tel))

    def others_spans() -> None:
        for _ in range(300):
            span = shared.start_span("other")
            others.append(span.get_span_context().trace_id)
            span.end()

    threads = [threading.Thread(target=f) for f in (runs, runs, others_spans)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    provider_.shutdown()
    bound = TraceIdRatioBased.get_bound_for_rate(0.5)
    runs_sampled = {d[0] for d in seen if d[-1]}
    assert runs_sampled == {d[0] for d in seen if d[0] & MASK < bound}
    assert not runs_sampled & set(others)
    exported = [s for s in exporter.get_finished_spans() if s.name == "cascade.run"]
    assert sorted(s.context.trace_id for s in exported) == sorted(runs_sampled)
    assert len(set(others)) == len(others)


@NEEDS_HEAD_SAMPLING
def test_a_disabled_tracer_is_left_to_the_sdk() -> None:
    """A tracer the SDK's configurator disabled hands out the parent's context: so does a
    run (the SDK's own path)."""
    from opentelemetry.sdk.trace import _TracerConfig

    provider_ = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    tel = Telemetry(tracer_provider=provider_, environ={})
    tracer = provider_.get_tracer("cascade", cascade.__version__)
    run_span_of(tel)  # the plan is made
    tracer._set_tracer_config(_TracerConfig(is_enabled=False))
    parent = PARENTS["local_not_sampled"]
    with under(parent):
        assert run_span_of(tel)[:2] == (parent.trace_id, parent.span_id)
    provider_.shutdown()


@NEEDS_HEAD_SAMPLING
def test_a_current_span_without_a_span_context_starts_a_new_trace() -> None:
    """A user's Span whose ``get_span_context()`` is None: ``start_span`` takes it for no
    parent, and so does cascade's decision (it used to raise AttributeError)."""

    class Contextless(NonRecordingSpan):
        def get_span_context(self) -> Any:
            return None

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.0)))
    sampler = head_sampler(provider.get_tracer("cascade"))
    assert sampler is not None
    token = otel_context.attach(trace.set_span_in_context(Contextless(SpanContext(0, 0, False))))
    try:
        verdict, detach_token = sampler.decide()  # no AttributeError
        assert verdict == DROP  # a new trace at ratio 0, as start_span would decide
        made = trace.get_current_span().get_span_context()
        assert made.is_valid  # a new trace's dropped span, not the contextless one
        assert not made.trace_flags.sampled
        otel_context.detach(detach_token)
    finally:
        otel_context.detach(token)
    provider.shutdown()
