"""The check that light spans (:mod:`._light`) end, on the installed SDK, as its own spans
do: run once, at the first traced run (:func:`._light_plan.light_enabled`)."""

from __future__ import annotations

from collections.abc import Sequence
from time import time_ns
from typing import Any

from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from . import _light
from ._attributes import _AS_IS, _LISTS, _Untouchable
from ._context import SPAN_KEY
from ._light_plan import _SAMPLED_RANDOM, LightPlan
from ._sampling import _FAST, _RANDOM_FLAG, _local_context

__all__ = ["probe"]

try:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
except ImportError:  # pragma: no cover - no SDK
    BatchSpanProcessor = SimpleSpanProcessor = None  # type: ignore[assignment,misc]


def _no_op_on_ending() -> bool:
    """Whether the SDK's batch and simple span processors do nothing in ``_on_ending``
    (which the SDK calls with the live span just before ``on_end``; an SDK without it, as
    older ones, calls nothing): found by calling it with a span it must not touch."""
    for kind in (BatchSpanProcessor, SimpleSpanProcessor):
        ending = getattr(kind, "_on_ending", None)
        if ending is None:
            continue
        _Untouchable.touched = False
        probe = _Untouchable()
        try:
            ending(probe, probe)
        except Exception:
            return False
        if _Untouchable.touched:
            return False
    return True


def probe() -> bool:
    """Whether light spans of this SDK end as its own spans do: spans started and ended
    both ways, as a sampled root and as a child of a local and of a remote parent with a
    trace state, give the same readable spans (every field, the attributes' store with
    its limits), and a light span made the SDK's one carries what it held."""
    if (
        getattr(_light, "_SdkSpan", None) is None
        or not _AS_IS
        or not _LISTS
        or not _FAST
        or _RANDOM_FLAG is None
        or SPAN_KEY is None
        or not _no_op_on_ending()
    ):
        return False
    try:
        from opentelemetry import context as otel_context
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
        from opentelemetry.trace.span import TraceState

        ended: list[Any] = []

        class Keep(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                ended.extend(spans)
                return SpanExportResult.SUCCESS

        provider = TracerProvider(shutdown_on_exit=False)
        provider.add_span_processor(SimpleSpanProcessor(Keep()))
        tracer: Any = provider.get_tracer("cascade.probe", "1")
        processor = tracer.span_processor
        # No checks of replaced methods (starts: none): what this probes is the SDK's
        # layout, whatever an application replaced at the time.
        plan = LightPlan(tracer, processor, processor._span_processors, ())
        attrs: dict[str, Any] = {"s": "x", "i": 1, "f": 0.5, "b": True, "t": ("a", "b")}
        ok = Status(StatusCode.OK)
        remote = SpanContext(7, 9, True, TraceFlags(_SAMPLED_RANDOM), TraceState([("k", "v")]))
        parent: Any
        for parent in (None, "local", remote):
            token = None
            outer = None
            if parent == "local":
                outer = tracer.start_span("outer")
                token = otel_context.attach(trace.set_span_in_context(outer))
            elif parent is not None:
                token = otel_context.attach(
                    trace.set_span_in_context(trace.NonRecordingSpan(parent))
                )
            try:
                sdk: Any = tracer.start_span("probe", kind=SpanKind.CLIENT, attributes=attrs)
                sdk.set_status(ok)
                light = plan.start("probe", SpanKind.CLIENT, attrs, sampled=False)
                if light is None:
                    return False
                light.set_attributes({"s": "y"})
                sdk.set_attributes({"s": "y"})
                for span in (sdk, light):
                    span.add_event("e", {"k": 1, "l": ["a", "b"], "b": False}, 5)
                    span.add_event("bare", None, 6)
                light.set_status(ok)
                light._start_time = sdk._start_time
                light._context = _local_context(
                    sdk.context.trace_id,
                    sdk.context.span_id,
                    light._context.trace_flags,
                    light._context.trace_state,
                )
                when = time_ns()
                sdk.end(when)
                light.end(when)
            finally:
                if token is not None:
                    otel_context.detach(token)
                if outer is not None:
                    outer.end()
            theirs, mine = [s for s in ended if s.name == "probe"][-2:]
            if not _same(mine, theirs):
                return False
        # Made the SDK's own midway: what it held, then the SDK's own doing.
        light = plan.start("probe", SpanKind.CLIENT, attrs, sampled=False)
        if light is None:
            return False
        light.set_status(ok)
        light.add_event("e", {"k": 1})
        light.end()
        made = ended[-1]
        provider.shutdown()
        return (
            dict(made.attributes) == {**attrs}
            and made.status is ok
            and [e.name for e in made.events] == ["e"]
            and made.start_time == light._start_time
        )
    except Exception:  # pragma: no cover - another SDK layout
        return False


def _same(mine: Any, theirs: Any) -> bool:
    """Whether two readable spans carry the same: every instance field (the attribute
    store's content, order, limits and drop count)."""
    a, b = vars(mine), vars(theirs)
    if a.keys() != b.keys() or type(mine) is not type(theirs):
        return False
    for key, value in a.items():
        other = b[key]
        if key == "_attributes":
            if not _same_store(value, other):
                return False
        elif key == "_events":
            if getattr(value, "dropped", 0) != getattr(other, "dropped", 0) or len(value) != len(
                other
            ):
                return False
            if not all(map(_same_event, value, other)):
                return False
        elif key == "_links":  # the SDK's empty list, or the shared one
            listed: Any = value
            if getattr(listed, "dropped", 0) or tuple(listed) or tuple(other):
                return False
        elif key == "_context":
            if tuple(value) != tuple(other) or type(value) is not type(other):
                return False
        elif value is not other and value != other:
            return False
    return True


def _same_store(mine: Any, theirs: Any) -> bool:
    """Whether two attribute stores hold the same, in the same order, with the same
    limits, drop count and kind of dict."""
    if type(mine) is not type(theirs) or list(mine.items()) != list(theirs.items()):
        return False
    if any(
        getattr(mine, name) != getattr(theirs, name)
        for name in ("maxlen", "dropped", "max_value_len", "_immutable")
    ):
        return False
    return type(mine._dict) is type(theirs._dict)


def _same_event(mine: Any, theirs: Any) -> bool:
    """Whether two span events are the same: every instance field."""
    a, b = vars(mine), vars(theirs)
    if a.keys() != b.keys() or type(mine) is not type(theirs):
        return False
    return all(
        _same_store(value, b[key])
        if key == "_attributes"
        else (value is b[key] or (value == b[key] and type(value) is type(b[key])))
        for key, value in a.items()
    )
