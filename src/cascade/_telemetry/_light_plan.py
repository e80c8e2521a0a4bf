"""The plan of a tracer's light spans (:mod:`._light`): what is checked once, when cascade
first looks at a tracer, so that a span's start asks only what can change between spans.

Whether spans can be light at all is a fact of the installed SDK (:func:`light_enabled`:
its spans, started and ended both ways, must come out the same), probed once per process.
Whether a tracer's can is a fact of that tracer (:func:`light_plan`: no attribute length
limit, the SDK's own ``on_end`` fan-out, no ``_on_ending`` that would see the live span).
What its light spans then need (the sampler's leaves, the span limits, whether its trace
ids are random, its processors and the methods to check again) is read into a
:class:`LightPlan` then, not at each span: :meth:`LightPlan.start` decides at a span's
start only what can change between spans (the current parent and the sampler leaf for it,
a method replaced since). A plan is stale once its tracer's processors change, which each
light span checks at its end.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry.trace import Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from ._attributes import _Untouchable, as_stored, same_methods
from ._context import SPAN_KEY, current
from ._light import LightSpan
from ._sampling import _ALL_SAMPLED, _RANDOM_FLAG, _leaves, _local_context

__all__ = ["LightPlan", "light_plan"]

try:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
except ImportError:  # pragma: no cover - no SDK
    BatchSpanProcessor = SimpleSpanProcessor = None  # type: ignore[assignment,misc]


_ENDINGS: Final = (
    {kind: getattr(kind, "_on_ending", None) for kind in (BatchSpanProcessor, SimpleSpanProcessor)}
    if BatchSpanProcessor is not None
    else {}
)
"""Their ``_on_ending`` as imported (None: the SDK has none)."""


class LightPlan:
    """What a tracer's light spans need, as found when its processors and sampler were
    checked (:func:`light_plan`); stale once its processors change (see
    :meth:`._light.LightSpan.end`)."""

    __slots__ = (
        "endings",
        "event_attributes",
        "event_length",
        "flags",
        "leaves",
        "max_events",
        "maxlen",
        "processor",
        "processors",
        "random_ids",
        "starts",
        "tracer",
    )

    def __init__(self, tracer: Any, processor: Any, processors: tuple[Any, ...],
                 starts: tuple[tuple[Any, str, Any], ...]) -> None:  # fmt: skip
        self.tracer = tracer
        self.processor = processor
        self.processors = processors
        leaves = _leaves(tracer.sampler)
        assert leaves is not None  # quiet_start accepted the sampler
        self.leaves = leaves
        limits = tracer._span_limits
        self.maxlen: int | None = limits.max_span_attributes
        self.max_events: int | None = limits.max_events
        self.event_attributes: int | None = limits.max_event_attributes
        # An event's values are cut at the global length limit, not the span's (which a
        # light plan has none of): SpanLimits(max_attribute_length=n,
        # max_span_attribute_length=SpanLimits.UNSET) cuts only events.
        self.event_length: int | None = limits.max_attribute_length
        self.random_ids = bool(tracer.id_generator.is_trace_id_random())
        self.flags = (_SAMPLED, _SAMPLED_RANDOM)
        # What same_methods() checks, as (object, the method's name, the method as
        # imported): what the SDK calls at a span's start (start_checks) before a light
        # span starts, _on_ending before one ends (none on an SDK without _on_ending,
        # which calls none).
        self.starts = starts
        self.endings = (
            (
                (processor, "_on_ending", _MULTI_ON_ENDING),
                *((p, "_on_ending", _ENDINGS.get(type(p), _Untouchable)) for p in processors),
            )
            if _MULTI_ON_ENDING is not None
            else ()
        )

    def start(self, name: str, kind: SpanKind, attributes: Mapping[str, Any], *, sampled: bool,
              trace_id: int = 0) -> LightSpan | None:  # fmt: skip
        """The span the SDK's tracer would start now (the current context its parent), or
        None when its decision is not known here (then the caller asks the SDK).
        ``sampled``: head sampling sampled it, in the trace ``trace_id`` (0: the
        parent's)."""
        config = getattr(self.tracer, "_tracer_config", None)
        if (config is not None and not config.is_enabled) or not same_methods(self.starts):
            return None
        stored = as_stored(attributes)
        if stored is None or (self.maxlen is not None and len(stored) > self.maxlen):
            return None
        found = current().get(SPAN_KEY)  # type: ignore[arg-type]
        parent = None
        if found is not None:
            if not isinstance(found, Span):
                return None
            parent = found.get_span_context()
            if type(parent) is not SpanContext:
                return None  # the SDK's TypeError, or another class: its business
            if not parent.is_valid:
                parent = None
        if parent is None:
            if trace_id:
                pass  # head sampling's draw
            elif sampled or self.leaves[0] != _ALL_SAMPLED:
                return None
            else:  # RandomIdGenerator.generate_trace_id's draw (again on zero)
                trace_id = random.getrandbits(128) or self.tracer.id_generator.generate_trace_id()
            random_ids = self.random_ids
            state = DEFAULT_TRACE_STATE
        else:
            if trace_id:
                return None  # decided for a new trace, now under a parent
            if not sampled:
                flags = parent.trace_flags
                if parent.is_remote:
                    leaf = self.leaves[1 if flags.sampled else 2]
                else:
                    leaf = self.leaves[3 if flags.sampled else 4]
                if leaf != _ALL_SAMPLED:
                    return None
            trace_id = parent.trace_id
            random_ids = parent.trace_flags.random_trace_id
            state = parent.trace_state
        span_id = random.getrandbits(64) or self.tracer.id_generator.generate_span_id()
        context = _local_context(trace_id, span_id, self.flags[random_ids], state)
        return LightSpan(self, name, context, parent, kind, dict(stored))


_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_SAMPLED_RANDOM: Final = TraceFlags(TraceFlags.SAMPLED | (_RANDOM_FLAG or 0))


_LIGHT: list[bool] = []
_PROBING: Final = threading.Lock()


def light_enabled() -> bool:
    """Whether this SDK's spans can be light ones (:func:`._light_check.probe`, run once, when the
    first tracer is looked at: not at import; the global ``random`` state its ids drew
    from is put back, so an application's seeded sequence is unchanged)."""
    if not _LIGHT:
        with _PROBING:
            if not _LIGHT:
                from opentelemetry import context as otel_context

                from ._light_check import probe

                state = random.getstate()
                token = otel_context.attach(otel_context.Context())  # not the caller's span
                try:
                    _LIGHT.append(probe())
                finally:
                    otel_context.detach(token)
                    random.setstate(state)
    return _LIGHT[0]


def light_plan(
    tracer: Any,
    processor: Any,
    processors: tuple[Any, ...],
    starts: tuple[tuple[Any, str, Any], ...],
) -> LightPlan | None:
    """A :class:`LightPlan` for a tracer :func:`._attributes.quiet_start` accepted, when
    its limits cannot change the values cascade stores (no length limit) and this SDK's
    spans can be light (:func:`light_enabled`). ``starts``: what a light span checks at
    its start (:func:`._attributes.start_checks`)."""
    if not light_enabled():
        return None
    try:
        if tracer._span_limits.max_span_attribute_length is not None:
            return None
        if type(processor).on_end is not _MULTI_ON_END or "on_end" in vars(processor):
            return None
        plan = LightPlan(tracer, processor, processors, starts)
        # No _on_ending that would see the live span replaced (quiet_start checked the
        # on_start ones): checked again at each light span's end, as at any time.
        return plan if same_methods(plan.endings) else None
    except AttributeError:  # pragma: no cover - another SDK layout
        return None


try:
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor as _Multi

    _MULTI_ON_END: Any = _Multi.on_end
    _MULTI_ON_ENDING: Any = getattr(_Multi, "_on_ending", None)
except ImportError:  # pragma: no cover - no SDK
    _MULTI_ON_END = _MULTI_ON_ENDING = None
