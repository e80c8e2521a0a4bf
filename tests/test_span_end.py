"""Spans ended by cascade (``_telemetry/_attributes.end_span``) read as the SDK's own ended
spans (events, links, their dropped counts, the JSON and OTLP forms), while a span with
no events and no links waits in a processor's queue without its two empty lists."""

from __future__ import annotations

import gc
import logging
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags

from cascade._telemetry import _attributes
from cascade._telemetry._attributes import end_span

RESOURCE = Resource({"service.name": "end"})
START = 100_000
LINKED = SpanContext(trace_id=7, span_id=9, is_remote=True, trace_flags=TraceFlags(1))


def ended(
    build: Any, *, limits: SpanLimits | None = None, ours: bool = True
) -> tuple[ReadableSpan, Any]:
    """The exported span of one span started by the SDK, given to ``build``, then ended by
    ``end_span`` (ours) or its own ``end``; and the span itself."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=limits, resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = build(provider.get_tracer("t"))
    if ours:
        end_span(span, 123_456)
    else:
        span.end(123_456)
    (exported,) = exporter.get_finished_spans()
    provider.shutdown()
    return exported, span


def plain(tracer: Any) -> Any:
    span = tracer.start_span("plain", attributes={"a": 1}, start_time=START)
    span.set_attribute("b", "x")
    return span


def with_event(tracer: Any) -> Any:
    span = tracer.start_span("evented", start_time=START)
    span.add_event("e", {"k": "v"}, timestamp=5)
    return span


def with_link(tracer: Any) -> Any:
    return tracer.start_span("linked", links=[Link(LINKED, {"why": "retry"})], start_time=START)


def with_exception(tracer: Any) -> Any:
    span = tracer.start_span("failed", start_time=START)
    span.record_exception(ValueError("no"), timestamp=6)
    return span


def same_form(span: ReadableSpan) -> tuple[Any, ...]:
    """What readers of an ended span see, ids aside (each span has its own)."""
    form = span.to_json()
    proto = encode_spans([span])
    (scope,) = proto.resource_spans[0].scope_spans
    (encoded,) = scope.spans
    encoded.ClearField("trace_id")
    encoded.ClearField("span_id")
    return (
        tuple((e.name, dict(e.attributes or {}), e.timestamp) for e in span.events),
        tuple((link.context, dict(link.attributes or {})) for link in span.links),
        span.dropped_events,
        span.dropped_links,
        span.dropped_attributes,
        dict(span.attributes or {}),
        span.end_time,
        form[form.index('"kind"') :],
        encoded.SerializeToString(deterministic=True),
    )


BUILDS = {"plain": plain, "event": with_event, "link": with_link, "exception": with_exception}


@pytest.mark.parametrize("build", list(BUILDS))
@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(None, id="default"),
        pytest.param(SpanLimits(max_events=0, max_links=0), id="nothing-kept"),
    ],
)
def test_read_as_the_sdks_own(build: str, limits: SpanLimits | None) -> None:
    """Every reading of the exported span is the same as after the SDK's own ``end``,
    dropped counts included (a list of no room holds nothing but counts what it drops)."""
    ours, _ = ended(BUILDS[build], limits=limits)
    theirs, _ = ended(BUILDS[build], limits=limits, ours=False)
    assert same_form(ours) == same_form(theirs)


def held(span: ReadableSpan) -> int:
    """Objects the garbage collector counts that an exported span holds of its own."""
    return sum(
        1
        for o in gc.get_referents(*gc.get_referents(span))
        if gc.is_tracked(o) and type(o).__name__ in ("deque", "lock")
    ) + sum(1 for o in gc.get_referents(span) if type(o).__name__ == "BoundedList")


def test_a_span_without_events_or_links_holds_no_lists() -> None:
    """Two lists, their deques and their locks fewer (the attributes' lock stays: a
    ``lock`` on 1.45, an ``RLock`` on 1.39, not counted there)."""
    ours, _ = ended(plain)
    theirs, _ = ended(plain, ours=False)
    assert held(theirs) - held(ours) == 2 + 2 + 2


@pytest.mark.parametrize("build", ["event", "link", "exception"])
def test_a_span_with_events_or_links_keeps_its_lists(build: str) -> None:
    ours, _ = ended(BUILDS[build])
    theirs, _ = ended(BUILDS[build], ours=False)
    assert held(ours) == held(theirs)


def test_adding_after_the_end_is_the_sdks_warning(caplog: pytest.LogCaptureFixture) -> None:
    """An event or a link given to the ended span is refused as the SDK refuses it."""
    ours, span = ended(plain)
    span.add_event("late")
    span.add_link(LINKED)
    assert [r.getMessage() for r in caplog.records] == [
        "Tried calling _add_event on an ended span.",
        "Tried calling _add_link on an ended span.",
    ]
    assert ours.events == () and ours.links == ()


@pytest.mark.parametrize(
    ("shared", "word"), [("_NO_EVENTS", "_add_event"), ("_NO_LINKS", "_add_link")]
)
def test_the_shared_empty_list_takes_nothing(
    shared: str, word: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Appended to other than by an SDK span's own add (which gets a list of its own
    again): it warns as the SDK does for an add after the end, and stays empty (it is
    every ended span's)."""
    caplog.set_level(logging.WARNING)
    empty = getattr(_attributes, shared)
    empty.append("event")
    assert empty == ()
    assert caplog.records[-1].getMessage() == f"Tried calling {word} on an ended span."


def test_other_spans_end_as_they_would() -> None:
    """A span of another class, and an SDK span whose reader was not found to take the
    shared empty list, end with their lists (the end time as given)."""
    span = NonRecordingSpan(LINKED)
    end_span(span)  # nothing to end: no error
    exported, _ = ended(plain)
    assert exported.end_time == 123_456


def test_an_sdk_of_another_layout_ends_its_own_way(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_attributes, "_LISTS", False)
    ours, _ = ended(plain)
    theirs, _ = ended(plain, ours=False)
    assert held(ours) == held(theirs)


def test_an_ended_span_is_not_ended_again(caplog: pytest.LogCaptureFixture) -> None:
    """Ending twice is the SDK's warning, and the exported span is unchanged."""
    ours, span = ended(plain)
    end_span(span, 999)
    assert "Calling end() on an ended span." in [r.getMessage() for r in caplog.records]
    assert ours.end_time == 123_456
