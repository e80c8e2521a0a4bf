"""Light spans (``_telemetry/_light.py``): under a quiet SDK tracer a sampled span is started
and ended by cascade, which hands the processors the readable span the SDK's own span would
have made. The exported spans are the same as the SDK's, whatever the sampler and parent,
and anything else done to a light span is done by the SDK's span it becomes."""

from __future__ import annotations

import logging
import random
import threading
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from cascade import Cascade, RequestOptions
from cascade._telemetry import _light_plan
from cascade._telemetry._core import Telemetry
from cascade._telemetry._light import LightSpan
from cascade.testing import FakeOpenAIServer

from .helpers import USER, provider, tier
from .sdk_features import LIGHT_SPANS

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
OPTIONS = RequestOptions(metadata={"team": "search"})


class Subclassed(SimpleSpanProcessor):
    """The SDK's processor, subclassed: no quiet start, so no light spans."""


@LIGHT_SPANS
def test_this_sdk_has_light_spans() -> None:
    assert _light_plan.light_enabled()


def telemetry(**kwargs: Any) -> tuple[Telemetry, TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    processor = kwargs.pop("processor", SimpleSpanProcessor)
    tp = TracerProvider(**kwargs)
    tp.add_span_processor(processor(exporter))
    return Telemetry(tracer_provider=tp, environ={}), tp, exporter


@LIGHT_SPANS
def test_a_quiet_tracer_starts_light_spans_and_another_the_sdks() -> None:
    tel, tp, _ = telemetry()
    assert type(tel.start_span("s", SpanKind.CLIENT, {"a": 1})) is LightSpan
    tel2, tp2, _ = telemetry(processor=Subclassed)
    assert type(tel2.start_span("s", SpanKind.CLIENT, {"a": 1})) is not LightSpan
    tel3, tp3, _ = telemetry(span_limits=SpanLimits(max_span_attribute_length=8))
    assert type(tel3.start_span("s", SpanKind.CLIENT, {"a": 1})) is not LightSpan
    for p in (tp, tp2, tp3):
        p.shutdown()


def shape(spans: list[ReadableSpan]) -> list[tuple[Any, ...]]:
    """Everything of each span but its own ids and times, its parent as the name of the
    span it names (or the remote parent's id)."""
    index = {s.context.span_id: s.name for s in spans}
    out = []
    for s in spans:
        parent = s.parent
        out.append(
            (
                s.name,
                s.kind,
                s.context.trace_flags,
                str(s.context.trace_state),
                None if parent is None else index.get(parent.span_id, parent.span_id),
                None if parent is None else parent.is_remote,
                tuple((k, type(v), v) for k, v in (s.attributes or {}).items()),
                s.dropped_attributes,
                s.status.status_code,
                s.status.description,
                tuple((e.name, dict(e.attributes or {})) for e in s.events),
                s.dropped_events,
                len(s.links),
                s.resource is not None and dict(s.resource.attributes)["telemetry.sdk.name"],
                s.instrumentation_scope.name if s.instrumentation_scope else None,
                s.end_time is not None and s.start_time is not None and s.end_time >= s.start_time,
            )
        )
    return out


async def exported(url: str, sampler: Sampler | None, parent: str, *, light: bool) -> list[Any]:
    """Spans of three escalated runs (tier 1 rejects, tier 2 answers) and one of a provider
    that fails, under ``parent``, random seeded: the same draws either way."""
    exporter = InMemorySpanExporter()
    tp = TracerProvider(sampler=sampler)
    tp.add_span_processor((SimpleSpanProcessor if light else Subclassed)(exporter))
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
    outer = None
    token = None
    random.seed(4)  # before any span (an id drawn again would name two); a sampled outer
    if parent == "remote":
        remote = SpanContext(
            0x0AF7651916CD43DD0448EB211C80319C,
            0xB7AD6B7169203331,
            True,
            TraceFlags(TraceFlags.SAMPLED),
            TraceState([("vendor", "x")]),
        )
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
    elif parent == "local":
        outer = tp.get_tracer("app").start_span("outer")
        token = otel_context.attach(trace.set_span_in_context(outer))
    try:
        async with Cascade.from_dict(cfg, tracer_provider=tp, environ={}) as c:
            for _ in range(6):
                await c.run(messages=USER, options=OPTIONS, max_cost_usd=1.0)
        broken = {"tiers": [tier("t", provider("p", "http://127.0.0.1:9/v1", "m"))]}
        async with Cascade.from_dict(broken, tracer_provider=tp, environ={}) as c:
            with pytest.raises(Exception):  # noqa: B017 - any typed failure: its spans count
                await c.run(messages=USER)
    finally:
        if token is not None:
            otel_context.detach(token)
        if outer is not None:
            outer.end()
        tp.shutdown()
    # in the order they ended, but for runs whose spans may end in either order: a
    # failed call's tier and run
    return sorted(shape(list(exporter.get_finished_spans())), key=repr)


@pytest.mark.parametrize(
    "sampler",
    [None, ALWAYS_ON, ParentBased(TraceIdRatioBased(0.5)), TraceIdRatioBased(0.5)],
    ids=["default", "always_on", "parent_ratio", "ratio"],
)
@pytest.mark.parametrize("parent", ["none", "local", "remote"])
async def test_the_same_spans_light_or_not(
    openai_server: FakeOpenAIServer, sampler: Sampler | None, parent: str
) -> None:
    openai_server.default = ANSWER
    light = await exported(openai_server.url, sampler, parent, light=True)
    sdk = await exported(openai_server.url, sampler, parent, light=False)
    assert light == sdk
    assert light  # something was sampled


def act(span: Any) -> None:
    """What an application may do to the current span."""
    span.set_attributes({"a": 1, "b": ["x", "y"]})
    span.set_attribute("c", 2.5)
    span.set_attributes({"bad": {"nested": 1}})  # the SDK drops it, with a warning
    span.add_event("e", {"k": "v"})
    span.update_name(span.name + "-renamed")
    span.record_exception(ValueError("boom"))
    span.set_status(StatusCode.ERROR, "bad")
    span.set_status(Status(StatusCode.OK))


def test_what_else_is_done_to_a_light_span_the_sdks_span_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    forms = []
    logs = []
    for processor in (SimpleSpanProcessor, Subclassed):
        tel, tp, exporter = telemetry(processor=processor)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            span = tel.start_span("s", SpanKind.CLIENT, {"start": "x"})
            act(span)
            assert span.attributes["a"] == 1 and span.is_recording()
            span.end()
            assert not span.is_recording()
            span.set_attribute("late", 1)
            span.end()
        logs.append([r.getMessage() for r in caplog.records])
        (got,) = exporter.get_finished_spans()
        forms.append((shape([got]), got.events[1].attributes["exception.type"]))
        tp.shutdown()
    assert forms[0] == forms[1]
    assert logs[0] == logs[1] and any("ended span" in m for m in logs[0])


def event_forms(span: ReadableSpan) -> list[tuple[Any, ...]]:
    return [
        (
            type(e),
            e.name,
            e.timestamp,
            [(k, type(v), v) for k, v in (e.attributes or {}).items()],
            e.dropped_attributes,
        )
        for e in span.events
    ]


@pytest.mark.parametrize(
    "limits",
    [SpanLimits(), SpanLimits(max_events=2), SpanLimits(max_event_attributes=1)],
    ids=["default", "two events", "one attribute"],
)
def test_events_on_a_light_span_are_the_sdks(limits: SpanLimits) -> None:
    """Events (an escalation's, a verdict's) keep a span light while its limits drop
    nothing, and end as the SDK's span's events: names, times, attributes (a list of
    strings stored as a tuple), what the limits dropped."""
    forms = []
    for processor in (SimpleSpanProcessor, Subclassed):
        tel, tp, exporter = telemetry(processor=processor, span_limits=limits)
        span = tel.start_span("s", SpanKind.INTERNAL, {"a": 1})
        span.add_event("first", {"k": 1, "l": ["x", "y"]}, timestamp=5)
        span.add_event("second", None, timestamp=6)
        if processor is SimpleSpanProcessor and limits.max_event_attributes is None:
            assert type(span) is LightSpan and span._real is None  # still light
        span.add_event("third", {"k": 2.5}, timestamp=7)
        span.end()
        span.add_event("late", {"k": 3})  # the SDK warns, and keeps nothing
        (got,) = exporter.get_finished_spans()
        forms.append((shape([got]), event_forms(got), got.dropped_events))
        tp.shutdown()
    assert forms[0] == forms[1]
    assert [f[1] for f in forms[0][1]] == (
        ["second", "third"] if limits.max_events == 2 else ["first", "second", "third"]
    )


async def test_a_validated_runs_spans_stay_light(openai_server: FakeOpenAIServer) -> None:
    """A run whose answer is validated and escalated (its call spans get a verdict event
    each, its run span an escalation event): no span becomes the SDK's."""
    openai_server.default = ANSWER
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    made: list[str] = []
    original = LightSpan.sdk_span

    def sdk_span(self: LightSpan) -> Any:
        made.append(self._name)
        return original(self)

    schema = {"type": "object", "required": ["missing"]}
    cfg = {
        "tiers": [
            tier("small", provider("s", openai_server.url, "m1"),
                 validators=[{"name": "json_schema", "schema": schema}]),
            tier("large", provider("l", openai_server.url, "m2"),
                 validators=[{"name": "json_schema", "schema": {"type": "object"}}]),
        ],
    }  # fmt: skip
    LightSpan.sdk_span = sdk_span  # type: ignore[method-assign]
    try:
        async with Cascade.from_dict(cfg, tracer_provider=tp, environ={}) as c:
            result = await c.run(messages=USER)
    finally:
        LightSpan.sdk_span = original  # type: ignore[method-assign]
    assert result.tier_name == "large"
    spans = exporter.get_finished_spans()
    assert sorted(s.name for s in spans) == sorted(
        ["cascade.run", "cascade.tier small", "cascade.tier large", "chat m1", "chat m2"]
    )
    events = {s.name: [e.name for e in s.events] for s in spans}
    assert events["chat m1"] and events["chat m2"] and events["cascade.run"]
    assert made == []
    tp.shutdown()


def test_after_its_end_a_light_span_says_so_as_the_sdks_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logs = []
    for processor in (SimpleSpanProcessor, Subclassed):
        tel, tp, exporter = telemetry(processor=processor)
        span = tel.start_span("s", SpanKind.INTERNAL, {"a": 1})
        span.set_status(Status(StatusCode.OK))
        span.end()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            span.set_attributes({"b": 2})
            span.set_status(Status(StatusCode.ERROR))
            span.add_event("late")
            span.end()
        logs.append([r.getMessage() for r in caplog.records])
        (got,) = exporter.get_finished_spans()
        assert dict(got.attributes or {}) == {"a": 1} and got.status.status_code is StatusCode.OK
        assert not got.events
        tp.shutdown()
    assert logs[0] == logs[1] and len(logs[0]) == 4


def test_limits_that_bite_are_the_sdks() -> None:
    forms = []
    for processor in (SimpleSpanProcessor, Subclassed):
        tel, tp, exporter = telemetry(
            processor=processor, span_limits=SpanLimits(max_span_attributes=3)
        )
        span = tel.start_span("s", SpanKind.INTERNAL, {"a": 1, "b": 2})
        span.set_attributes({"c": 3, "d": 4, "e": 5})
        span.end()
        too_many = tel.start_span("t", SpanKind.INTERNAL, {str(i): i for i in range(5)})
        too_many.end()
        forms.append(shape(list(exporter.get_finished_spans())))
        tp.shutdown()
    assert forms[0] == forms[1]
    assert forms[0][0][7] == 2 and forms[0][1][7] == 2  # dropped


@LIGHT_SPANS
def test_a_processor_added_while_a_light_span_is_open_gets_it() -> None:
    tel, tp, first = telemetry()
    span = tel.start_span("s", SpanKind.INTERNAL, {"a": 1})
    assert type(span) is LightSpan
    second = InMemorySpanExporter()
    tp.add_span_processor(SimpleSpanProcessor(second))
    span.end()
    assert [s.name for s in first.get_finished_spans()] == ["s"]
    assert [dict(s.attributes or {}) for s in second.get_finished_spans()] == [{"a": 1}]
    tp.shutdown()


def test_another_thread_touching_a_light_span_keeps_what_it_does() -> None:
    tel, tp, exporter = telemetry()
    span = tel.start_span("s", SpanKind.INTERNAL, {"a": 1})
    start = threading.Barrier(9)

    def touch(i: int) -> None:
        start.wait()
        if i % 2:
            span.set_attribute(f"t{i}", i)
        else:
            span.set_attributes({f"t{i}": i})

    threads = [threading.Thread(target=touch, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()
    span.end()
    (got,) = exporter.get_finished_spans()
    assert set(got.attributes or {}) == {"a", *(f"t{i}" for i in range(8))}
    tp.shutdown()


def test_a_light_span_reads_as_the_sdks() -> None:
    tel, tp, _ = telemetry()
    span = tel.start_span("s", SpanKind.CLIENT, {"a": 1})
    assert span.name == "s" and span.kind is SpanKind.CLIENT and span.parent is None
    assert repr(span).startswith('_Span(name="s"')
    with pytest.raises(AttributeError):
        span.no_such_thing  # noqa: B018
    span.end()
    tp.shutdown()


def test_an_exception_leaving_with_span_is_recorded_as_by_the_sdks() -> None:
    forms = []
    for processor in (SimpleSpanProcessor, Subclassed):
        tel, tp, exporter = telemetry(processor=processor)
        span = tel.start_span("s", SpanKind.INTERNAL, {"a": 1})
        with pytest.raises(ValueError), span:
            raise ValueError("boom")
        (got,) = exporter.get_finished_spans()
        forms.append((shape([got]), got.status.description))
        tp.shutdown()
    assert forms[0] == forms[1]
    assert forms[0][0][0][8] is StatusCode.ERROR and forms[0][0][0][10][0][0] == "exception"


@LIGHT_SPANS
@pytest.mark.parametrize("on", ["object", "class"])
@pytest.mark.parametrize("where", ["span processor", "processor"])
def test_an_on_ending_replaced_at_any_time_sees_the_live_span(
    where: str, on: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_on_ending`` (SDK 1.4x) gets the live span before ``on_end``: one replaced on the
    provider's span processor or on one of its processors (the object or its class),
    after spans were light, even while a light span is open, gets it at its end."""
    tel, tp, exporter = telemetry()
    first = tel.start_span("first", SpanKind.INTERNAL, {"a": 1})
    assert type(first) is LightSpan
    first.end()
    seen: list[str] = []
    multi = tp._active_span_processor
    target = multi if where == "span processor" else multi._span_processors[0]
    if not hasattr(target, "_on_ending"):
        pytest.skip("this SDK has no _on_ending")
    open_span = tel.start_span("open", SpanKind.INTERNAL, {"a": 1})
    assert type(open_span) is LightSpan
    if on == "object":
        target._on_ending = lambda span: seen.append(type(span).__name__)
    else:
        monkeypatch.setattr(
            type(target), "_on_ending", lambda self, span: seen.append(type(span).__name__)
        )
    open_span.end()
    second = tel.start_span("second", SpanKind.INTERNAL, {"a": 1})
    second.end()
    assert seen == ["_Span", "_Span"]
    assert [s.name for s in exporter.get_finished_spans()] == ["first", "open", "second"]
    tp.shutdown()


@LIGHT_SPANS
@pytest.mark.parametrize("on", ["object", "class"])
def test_an_on_start_replaced_after_light_spans_sees_the_next_start(
    on: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor's ``on_start`` replaced after spans were light (the tracer's plan
    made): the next span is the SDK's, started with its attributes, as ``on_start``
    sees it."""
    tel, tp, exporter = telemetry()
    first = tel.start_span("first", SpanKind.INTERNAL, {"a": 1})
    assert type(first) is LightSpan
    first.end()
    seen: list[dict[str, Any]] = []
    target = tp._active_span_processor._span_processors[0]

    def on_start(span: Any, parent_context: Any = None) -> None:
        seen.append(dict(span.attributes or {}))

    if on == "object":
        target.on_start = on_start  # type: ignore[method-assign]
    else:
        monkeypatch.setattr(
            type(target), "on_start", lambda self, span, parent_context=None: on_start(span)
        )
    second = tel.start_span("second", SpanKind.INTERNAL, {"a": 1})
    assert type(second) is not LightSpan
    second.end()
    assert seen == [{"a": 1}]
    assert [s.name for s in exporter.get_finished_spans()] == ["first", "second"]
    tp.shutdown()


def test_a_start_span_wrapped_after_light_spans_starts_the_next() -> None:
    """The tracer's ``start_span`` wrapped (by an instrumentation) after spans were
    light: the next span is started through it."""
    tel, tp, exporter = telemetry()
    tel.start_span("first", SpanKind.INTERNAL, {"a": 1}).end()
    tracer = tel.tracer
    original = tracer.start_span
    wrapped: list[str] = []

    def start_span(name: str, *args: Any, **kwargs: Any) -> Any:
        wrapped.append(name)
        return original(name, *args, **kwargs)

    tracer.start_span = start_span  # type: ignore[method-assign]
    tel.start_span("second", SpanKind.INTERNAL, {"a": 1}).end()
    assert wrapped == ["second"]
    assert [dict(s.attributes or {}) for s in exporter.get_finished_spans()] == [{"a": 1}] * 2
    tp.shutdown()


@LIGHT_SPANS
def test_the_check_of_the_sdk_leaves_the_applications_random_sequence_alone() -> None:
    _light_plan._LIGHT.clear()
    random.seed(7)
    expected = random.random()
    random.seed(7)
    assert _light_plan.light_enabled()
    assert random.random() == expected


@LIGHT_SPANS
def test_the_check_of_the_sdk_looks_past_the_callers_current_span() -> None:
    """The first traced run may come under a span of the application's (not sampled,
    say): the check builds its spans as new traces all the same."""
    _light_plan._LIGHT.clear()
    dropped = SpanContext(5, 6, True, TraceFlags(TraceFlags.DEFAULT))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(dropped)))
    try:
        assert _light_plan.light_enabled()
        assert trace.get_current_span().get_span_context() is dropped
    finally:
        otel_context.detach(token)
