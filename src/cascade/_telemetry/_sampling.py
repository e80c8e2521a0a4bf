"""Head sampling of a run decided by cascade, for the SDK samplers it can reproduce exactly.

A run the sampler drops costs the SDK's ``Tracer.start_span`` (ids, the sampler, its
result, the span context, the self-metrics hook) for a span that records nothing. For the
OpenTelemetry SDK's own samplers, whose decisions depend only on the parent's sampled and
remote flags and on the trace id, cascade makes the same decision itself
(:meth:`HeadSampler.decide`): a dropped run gets the ``NonRecordingSpan`` the SDK would
have made (same trace id rule, a fresh span id, the parent's trace state, the same trace
flags), made current so that whatever runs under it inherits the drop. A sampled run's span
is started by the SDK as before, and a new trace keeps the trace id its decision was drawn
for: the tracer's id generator is wrapped (:class:`PresetIds`) so that ``start_span``
takes that id instead of drawing another (which would sample at the rate squared).

Anything this module does not recognise (another tracer class, a custom sampler or id
generator, the SDK's span self-metrics turned on, another SDK layout) gets no plan: the
run goes through ``start_span`` as before.
"""

from __future__ import annotations

import random
import threading
from typing import Any, Final

from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState

from ._context import SPAN_KEY, attach, current

__all__ = [
    "DROP",
    "SAMPLE",
    "SLOW",
    "HeadSampler",
    "PresetIds",
    "head_sampler",
]

try:  # the SDK's classes, compared by identity: a subclass may decide otherwise
    from opentelemetry.sdk.trace import Tracer as _SdkTracer
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator as _RandomIds
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF,
        ALWAYS_ON,
        Decision,
        ParentBased,
        ParentBasedTraceIdRatio,
        StaticSampler,
        TraceIdRatioBased,
    )

    _SAMPLERS = True
except ImportError:  # pragma: no cover - no SDK, or another layout
    _SAMPLERS = False
    IdGenerator = object  # type: ignore[assignment,misc]

try:  # what head sampling needs besides (newer SDKs: 1.39 has neither)
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics as _NoMetrics

    _RANDOM_FLAG: int | None = int(TraceFlags.RANDOM_TRACE_ID) if _SAMPLERS else None
except (ImportError, AttributeError):
    _RANDOM_FLAG = None

DROP: Final = 0
"""The run is not sampled: cascade made its non-recording span."""
SAMPLE: Final = 1
"""The run is sampled: start its span with ``start_span`` (a new trace keeps the id)."""

SLOW: Final = -2
"""Cascade cannot decide (or a leaf it cannot): ``start_span`` decides."""
# A leaf (a sampler that does not look at the parent) is a ratio's bound (>= 0) or one of:
_ALL_DROPPED: Final = -1  # drops whatever the trace id
_ALL_SAMPLED: Final = -3  # samples whatever the trace id: nothing to save, start_span
_ID_MASK: Final = (1 << 64) - 1  # TraceIdRatioBased.TRACE_ID_LIMIT: the low 64 bits decide


def _leaf(sampler: Any) -> int:
    """What a sampler that looks at no parent decides: a ratio's bound, or a constant."""
    if sampler is ALWAYS_OFF:
        return _ALL_DROPPED
    if sampler is ALWAYS_ON:
        return _ALL_SAMPLED
    if type(sampler) is StaticSampler:
        decision = sampler._decision
        if decision is Decision.DROP:
            return _ALL_DROPPED
        if decision is Decision.RECORD_AND_SAMPLE:
            return _ALL_SAMPLED
        return SLOW  # RECORD_ONLY: a recording span that is not sampled
    if type(sampler) is TraceIdRatioBased:
        bound = sampler.bound
        if type(bound) is int and TraceIdRatioBased.TRACE_ID_LIMIT == _ID_MASK:
            return bound
    return SLOW


class PresetIds(IdGenerator):
    """The SDK's random id generator, except that the next trace id drawn in this thread
    can be set beforehand (:meth:`preset`): the id a head-sampling decision was drawn for.
    Thread-safe: the preset is per thread, and ``start_span`` takes it synchronously."""

    def __init__(self, inner: IdGenerator) -> None:
        self.inner = inner
        self._local = threading.local()
        # The wrapped generator's own methods, one call less for every span.
        self.generate_span_id = inner.generate_span_id  # type: ignore[method-assign]
        self.is_trace_id_random = inner.is_trace_id_random  # type: ignore[method-assign]

    def preset(self, trace_id: int) -> None:
        self._local.trace_id = trace_id

    def clear(self) -> None:
        self._local.trace_id = 0

    def generate_trace_id(self) -> int:
        local = self._local
        trace_id: int = getattr(local, "trace_id", 0)
        if trace_id:
            local.trace_id = 0
            return trace_id
        return self.inner.generate_trace_id()

    def generate_span_id(self) -> int:  # replaced by the inner one's (see __init__)
        return self.inner.generate_span_id()


class HeadSampler:
    """The head-sampling decision of one SDK tracer, made by cascade (see module doc)."""

    __slots__ = ("_ids", "_leaves", "_preset", "_root", "_root_flags", "tracer")

    def __init__(
        self,
        tracer: Any,
        ids: IdGenerator,
        preset: PresetIds | None,
        leaves: tuple[int, int, int, int, int],
    ) -> None:
        self.tracer = tracer
        self._ids = ids
        self._preset = preset
        """The tracer's id generator when a new trace may be sampled (a ratio at the root),
        else None (the tracer's generator is ``ids``, unwrapped)."""
        self._leaves = leaves
        """By parent: none, remote sampled, remote not, local sampled, local not."""
        self._root = leaves[0]
        assert self._root >= _ALL_DROPPED  # else head_sampler makes no HeadSampler
        self._root_flags = _RANDOM if ids.is_trace_id_random() else _NOT_SAMPLED

    def decide(self) -> tuple[int, Any]:
        """``(DROP, token)``: the run is not sampled, and the non-recording span the SDK
        would have made for it is now current (``token`` detaches it); ``(SAMPLE,
        trace_id)``: start the run's span with :meth:`start` (``trace_id`` 0 under a
        parent, whose trace id the SDK takes); ``(SLOW, None)``: ask ``start_span``."""
        if not self.tracer._tracer_config.is_enabled:
            return _ASK  # start_span's own shortcut: the parent's context, unchanged
        context = current()
        parent_span = context.get(SPAN_KEY)  # type: ignore[arg-type]
        if parent_span is not None and isinstance(parent_span, Span):
            parent = parent_span.get_span_context()
            if parent is not None and parent.is_valid:  # None: a new trace, as the SDK
                return self._child(context, parent)
        # A new trace: the root's leaf is a ratio's bound or all dropped (head_sampler).
        # RandomIdGenerator's draws, inlined (the SDK draws again on a zero id).
        trace_id = random.getrandbits(128) or self._ids.generate_trace_id()
        if trace_id & _ID_MASK < self._root:  # TraceIdRatioBased's rule; never for -1
            return SAMPLE, trace_id
        span_id = random.getrandbits(64) or self._ids.generate_span_id()
        if _FAST:  # NonRecordingSpan(SpanContext(...)), without their frames and checks
            span = _object_new(NonRecordingSpan)
            span._context = _tuple_new(
                SpanContext, (trace_id, span_id, False, self._root_flags, _NO_STATE, True)
            )
        else:  # pragma: no cover - another API version
            span = _non_recording(_local_context(trace_id, span_id, self._root_flags, _NO_STATE))
        values = context.copy()  # set_span_in_context's copy of the current context
        values[SPAN_KEY] = span  # type: ignore[index]
        return DROP, attach(Context(values))

    def _child(self, current: Context, parent: SpanContext) -> tuple[int, Any]:
        """:meth:`decide` under a valid parent: the parent's trace id and trace state."""
        flags = parent.trace_flags
        if parent.is_remote:
            leaf = self._leaves[1 if flags.sampled else 2]
        else:
            leaf = self._leaves[3 if flags.sampled else 4]
        if leaf < _ALL_DROPPED:
            return _ASK
        trace_id = parent.trace_id
        if trace_id & _ID_MASK < leaf:
            return SAMPLE, 0
        child_flags = _RANDOM if flags.random_trace_id else _NOT_SAMPLED
        span_id = random.getrandbits(64) or self._ids.generate_span_id()
        context = _local_context(trace_id, span_id, child_flags, parent.trace_state)
        values = current.copy()
        values[SPAN_KEY] = _non_recording(context)  # type: ignore[index]
        return DROP, attach(Context(values))

    def start(self, name: str, trace_id: int, attributes: dict[str, Any] | None) -> Any:
        """The SDK's span for a run :meth:`decide` sampled, in the trace ``trace_id`` (0:
        the parent's)."""
        preset = self._preset
        if not trace_id or preset is None:  # no preset: decide() samples no new trace
            return self.tracer.start_span(name, attributes=attributes)
        preset.preset(trace_id)
        try:
            return self.tracer.start_span(name, attributes=attributes)
        finally:
            preset.clear()  # taken by start_span; never left for another span


def _span_context(trace_id: int, span_id: int, flags: TraceFlags, state: TraceState) -> Any:
    """``SpanContext(trace_id, span_id, False, flags, state)`` for ids known to be valid
    (drawn non-zero, of their widths), without its constructor's checks."""
    return tuple.__new__(SpanContext, (trace_id, span_id, False, flags, state, True))


def _checked_constructor() -> Any:
    """:func:`_span_context` if it builds what ``SpanContext`` does, else the constructor
    itself (another API version may lay the tuple out otherwise)."""
    flags, state = TraceFlags(TraceFlags.SAMPLED), TraceState([("k", "v")])
    fast, slow = _span_context(7, 9, flags, state), SpanContext(7, 9, False, flags, state)
    same = tuple(fast) == tuple(slow) and all(
        getattr(fast, name) == getattr(slow, name)
        for name in ("trace_id", "span_id", "is_remote", "trace_flags", "trace_state", "is_valid")
    )
    if same:
        return _span_context
    return lambda trace_id, span_id, flags, state: SpanContext(
        trace_id, span_id, False, flags, state
    )


def _new_non_recording(context: SpanContext) -> Any:
    """``NonRecordingSpan(context)`` without its ``__init__``'s frame: what it sets."""
    span = _object_new(NonRecordingSpan)
    span._context = context
    return span


def _checked_non_recording() -> Any:
    """:func:`_new_non_recording` if it makes what ``NonRecordingSpan`` does (the same
    instance attributes), else the class itself."""
    context = SpanContext(7, 9, False)
    try:
        same = vars(_new_non_recording(context)) == vars(NonRecordingSpan(context))
    except (TypeError, AttributeError):  # no instance dict (slots): another API version
        same = False
    return _new_non_recording if same else NonRecordingSpan


_tuple_new = tuple.__new__
_object_new = object.__new__
_local_context = _checked_constructor()
_non_recording = _checked_non_recording()
_FAST: Final = _local_context is _span_context and _non_recording is _new_non_recording
_NO_STATE: Final = DEFAULT_TRACE_STATE
_NOT_SAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)
_RANDOM: Final = TraceFlags(_RANDOM_FLAG or 0)
_ASK: Final = (SLOW, None)
_LOCK = threading.Lock()


def head_sampler(tracer: Any) -> HeadSampler | None:
    """A :class:`HeadSampler` for an SDK tracer whose sampler and id generator cascade
    recognises, and whose sampler can drop a new trace, else None (a new trace always
    sampled, as by default, has nothing to save). For a ratio, wraps the tracer's id
    generator in :class:`PresetIds` (once: the SDK shares a tracer between the callers of
    one scope, and the wrapper hands out the ids of the generator it wraps unless a trace
    id was preset in this thread)."""
    if _RANDOM_FLAG is None or SPAN_KEY is None or type(tracer) is not _SdkTracer:
        return None
    try:
        if type(tracer._tracer_metrics) is not _NoMetrics:
            return None  # the SDK's span self-metrics count every span started
        leaves = _leaves(tracer.sampler)
        if leaves is None or leaves[0] < _ALL_DROPPED:
            return None
        tracer._tracer_config.is_enabled  # noqa: B018 - what decide() reads
        with _LOCK:
            ids = tracer.id_generator
            preset = ids if type(ids) is PresetIds else None
            inner = ids if preset is None else preset.inner
            if type(inner) is not _RandomIds:
                return None  # a custom generator: its ids are its own business
            if preset is None and leaves[0] >= 0:  # a ratio: a new trace keeps its id
                preset = tracer.id_generator = PresetIds(inner)
    except AttributeError:  # pragma: no cover - another SDK layout
        return None
    return HeadSampler(tracer, inner, preset, leaves)


def _leaves(sampler: Any) -> tuple[int, int, int, int, int] | None:
    """Each parent case's leaf (see HeadSampler), or None for a sampler not recognised."""
    if type(sampler) in (ParentBased, ParentBasedTraceIdRatio):
        return (
            _leaf(sampler._root),
            _leaf(sampler._remote_parent_sampled),
            _leaf(sampler._remote_parent_not_sampled),
            _leaf(sampler._local_parent_sampled),
            _leaf(sampler._local_parent_not_sampled),
        )
    leaf = _leaf(sampler)
    if leaf == SLOW:
        return None
    return (leaf, leaf, leaf, leaf, leaf)
