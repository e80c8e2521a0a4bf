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

import threading
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

__all__ = ["DROP", "SAMPLE", "SLOW", "HeadSampler", "PresetIds", "head_sampler"]

try:  # the SDK's classes, compared by identity: a subclass may decide otherwise
    from opentelemetry.sdk.trace import Tracer as _SdkTracer
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics as _NoMetrics
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator as _RandomIds
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_OFF as _ALWAYS_OFF,
    )
    from opentelemetry.sdk.trace.sampling import (
        ALWAYS_ON as _ALWAYS_ON,
    )
    from opentelemetry.sdk.trace.sampling import (
        Decision as _Decision,
    )
    from opentelemetry.sdk.trace.sampling import (
        ParentBased as _ParentBased,
    )
    from opentelemetry.sdk.trace.sampling import (
        ParentBasedTraceIdRatio as _ParentBasedRatio,
    )
    from opentelemetry.sdk.trace.sampling import (
        StaticSampler as _Static,
    )
    from opentelemetry.sdk.trace.sampling import (
        TraceIdRatioBased as _Ratio,
    )

    _RANDOM_FLAG: int | None = int(TraceFlags.RANDOM_TRACE_ID)
except (ImportError, AttributeError):  # pragma: no cover - no SDK, or another layout
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
    if sampler is _ALWAYS_OFF:
        return _ALL_DROPPED
    if sampler is _ALWAYS_ON:
        return _ALL_SAMPLED
    if type(sampler) is _Static:
        decision = sampler._decision
        if decision is _Decision.DROP:
            return _ALL_DROPPED
        if decision is _Decision.RECORD_AND_SAMPLE:
            return _ALL_SAMPLED
        return SLOW  # RECORD_ONLY: a recording span that is not sampled
    if type(sampler) is _Ratio:
        bound = sampler.bound
        if type(bound) is int and _Ratio.TRACE_ID_LIMIT == _ID_MASK:
            return bound
    return SLOW


class PresetIds:
    """The SDK's random id generator, except that the next trace id drawn in this thread
    can be set beforehand (:meth:`preset`): the id a head-sampling decision was drawn for.
    Thread-safe: the preset is per thread, and ``start_span`` takes it synchronously."""

    __slots__ = ("_local", "inner")

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._local = threading.local()

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
        return int(self.inner.generate_trace_id())

    def generate_span_id(self) -> int:
        return int(self.inner.generate_span_id())

    def is_trace_id_random(self) -> bool:
        return bool(self.inner.is_trace_id_random())


class HeadSampler:
    """The head-sampling decision of one SDK tracer, made by cascade (see module doc)."""

    __slots__ = ("_ids", "_leaves", "_root_flags", "tracer")

    def __init__(self, tracer: Any, ids: PresetIds, leaves: tuple[int, int, int, int, int]):
        self.tracer = tracer
        self._ids = ids
        self._leaves = leaves
        """By parent: none, remote sampled, remote not, local sampled, local not."""
        random_ids = ids.inner.is_trace_id_random()
        assert _RANDOM_FLAG is not None
        self._root_flags = _RANDOM if random_ids else _NOT_SAMPLED

    def decide(self) -> tuple[int, Any]:
        """``(DROP, span)``: the non-recording span the SDK would have made, to be made
        current; ``(SAMPLE, trace_id)``: start the span with :meth:`start` (``trace_id``
        0 under a parent, whose trace id the SDK takes); ``(SLOW, None)``: ask
        ``start_span``, as without a plan."""
        if not self.tracer._tracer_config.is_enabled:
            return SLOW, None  # start_span's own shortcut: the parent's context, unchanged
        parent = trace.get_current_span().get_span_context()
        if parent.is_valid:
            flags = parent.trace_flags
            if parent.is_remote:
                leaf = self._leaves[1 if flags.sampled else 2]
            else:
                leaf = self._leaves[3 if flags.sampled else 4]
            if leaf < _ALL_DROPPED:
                return SLOW, None
            trace_id = parent.trace_id
            if trace_id & _ID_MASK < leaf:  # never for _ALL_DROPPED (-1)
                return SAMPLE, 0
            child_flags = _RANDOM if flags.random_trace_id else _NOT_SAMPLED
            span_id = self._ids.inner.generate_span_id()
            context = SpanContext(trace_id, span_id, False, child_flags, parent.trace_state)
            return DROP, NonRecordingSpan(context)
        leaf = self._leaves[0]
        if leaf < _ALL_DROPPED:
            return SLOW, None
        ids = self._ids.inner
        trace_id = ids.generate_trace_id()
        if trace_id & _ID_MASK < leaf:
            return SAMPLE, trace_id
        context = SpanContext(trace_id, ids.generate_span_id(), False, self._root_flags)
        return DROP, NonRecordingSpan(context)

    def start(self, name: str, trace_id: int, attributes: dict[str, Any] | None) -> Any:
        """The SDK's span for a run :meth:`decide` sampled, in the trace ``trace_id`` (0:
        the parent's)."""
        if not trace_id:
            return self.tracer.start_span(name, attributes=attributes)
        preset = self._ids
        preset.preset(trace_id)
        try:
            return self.tracer.start_span(name, attributes=attributes)
        finally:
            preset.clear()  # taken by start_span; never left for another span


_NOT_SAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)
_RANDOM: Final = TraceFlags(_RANDOM_FLAG or 0)
_LOCK = threading.Lock()


def head_sampler(tracer: Any) -> HeadSampler | None:
    """A :class:`HeadSampler` for an SDK tracer whose sampler and id generator cascade
    recognises, else None. Wraps the tracer's id generator (once: the SDK shares a tracer
    between callers of the same scope, and the wrapper hands out the same ids as the
    generator it wraps unless a trace id was preset in this thread)."""
    if _RANDOM_FLAG is None or type(tracer) is not _SdkTracer:
        return None
    ids: Any
    try:
        if type(tracer._tracer_metrics) is not _NoMetrics:
            return None  # the SDK's span self-metrics count every span started
        leaves = _leaves(tracer.sampler)
        if leaves is None or all(leaf == SLOW for leaf in leaves):
            return None
        tracer._tracer_config.is_enabled  # noqa: B018 - the attribute decide() reads
        with _LOCK:
            ids = tracer.id_generator
            if type(ids) is not PresetIds:
                if type(ids) is not _RandomIds:
                    return None  # a custom generator: its ids are its own business
                ids = PresetIds(ids)
                tracer.id_generator = ids
    except AttributeError:  # pragma: no cover - another SDK layout
        return None
    return HeadSampler(tracer, ids, leaves)


def _leaves(sampler: Any) -> tuple[int, int, int, int, int] | None:
    """Each parent case's leaf (see HeadSampler), or None for a sampler not recognised."""
    if type(sampler) in (_ParentBased, _ParentBasedRatio):
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
