"""Whether the parts of an SDK tracer that a span's start calls, besides its span
processors, are the SDK's own as imported: its sampler, id generator, span self-metrics
and the API's runtime context.

A quiet start (:func:`._attributes.quiet_start`) hands the SDK a span without its
attributes, under the processors' lock; that is safe only while no code of the
application's runs in ``start_span`` (it could look for the attributes, or add a
processor under the lock and never return). The SDK's own parts are known by their class
(a subclass may decide otherwise) and by their methods as imported here (an
instrumentation may wrap one at any time, on the class or on the object): what the tracer
is checked for once (the functions below) and what is checked again before each span
(:data:`_SHOULD` and :data:`_IDS`, in :func:`._attributes.start_checks` and
:func:`._attributes.id_checks`). Anything not recognised makes no quiet start.
"""

from __future__ import annotations

from typing import Any, Final

from opentelemetry import context as _otel_context

from ._sampling import SLOW, PresetIds, _leaf

__all__ = ["blind_to_attributes", "default_context", "no_self_metrics", "samplers", "sdk_ids"]

try:  # the SDK's classes, compared by identity: a subclass may decide otherwise
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator as _RandomIds
    from opentelemetry.sdk.trace.sampling import (
        ParentBased,
        ParentBasedTraceIdRatio,
        StaticSampler,
        TraceIdRatioBased,
    )

    _SAMPLERS = True
    _BLIND_KINDS: tuple[Any, ...] = (
        ParentBased,
        ParentBasedTraceIdRatio,
        StaticSampler,
        TraceIdRatioBased,
    )
except ImportError:  # pragma: no cover - no SDK, or another layout
    _SAMPLERS = False
    _BLIND_KINDS = ()

_NO_METRICS: Any = None
try:  # the SDK's span self-metrics, none recorded (newer SDKs: 1.39 has none)
    from opentelemetry.sdk.trace._tracer_metrics import NoOpTracerMetrics as _NoMetrics

    _NO_METRICS = _NoMetrics
except ImportError:
    pass

try:
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext as _CONTEXTS
except ImportError:  # pragma: no cover - another API layout
    _CONTEXTS = None  # type: ignore[assignment,misc]


_SHOULD: Final = {kind: kind.should_sample for kind in _BLIND_KINDS} if _SAMPLERS else {}
"""Their ``should_sample`` as imported: one replaced since (on the class, or on a sampler)
may look at the attributes."""


def _own(sampler: Any) -> bool:
    """Whether ``sampler`` decides with its class's ``should_sample`` as imported."""
    kind = type(sampler)
    return _SHOULD.get(kind, _own) is getattr(kind, "should_sample", None) and (
        "should_sample" not in getattr(sampler, "__dict__", {"should_sample": None})
    )


_IDS: Final = (
    (_RandomIds, _RandomIds.generate_span_id, _RandomIds.generate_trace_id) if _SAMPLERS else None
)


def sdk_ids(ids: Any) -> bool:
    """Whether ``ids`` is the SDK's random id generator as imported (or cascade's
    :class:`PresetIds` around it): no code of the application's runs when ids are drawn."""
    if type(ids) is PresetIds:
        ids = ids.inner
    if _IDS is None or type(ids) is not _IDS[0]:
        return False
    state = getattr(ids, "__dict__", {})
    return (
        _IDS[0].generate_span_id is _IDS[1]
        and _IDS[0].generate_trace_id is _IDS[2]
        and "generate_span_id" not in state
        and "generate_trace_id" not in state
    )


def no_self_metrics(tracer: Any) -> bool:
    """Whether ``tracer`` records none of the SDK's span self-metrics: their instruments are
    the meter provider's, code of the application's (an SDK without them, as 1.39, none)."""
    found = getattr(tracer, "_tracer_metrics", None)
    return found is None or (_NO_METRICS is not None and type(found) is _NO_METRICS)


def default_context() -> bool:
    """Whether the API's runtime context is its default one (a context variable), not one
    of the application's (``OTEL_PYTHON_CONTEXT``), whose code ``start_span`` would run."""
    return _CONTEXTS is not None and type(_otel_context._RUNTIME_CONTEXT) is _CONTEXTS


def blind_to_attributes(sampler: Any) -> bool:
    """Whether ``sampler`` is made of the SDK's own samplers alone, which decide without a
    span's attributes and hand them on unchanged (a RECORD_ONLY static one too), none of
    their ``should_sample`` replaced."""
    if not _SAMPLERS:  # pragma: no cover - no SDK, or another layout
        return False
    if type(sampler) in (ParentBased, ParentBasedTraceIdRatio):
        return _own(sampler) and all(
            (_leaf(s) != SLOW or type(s) is StaticSampler) and _own(s) for s in _delegates(sampler)
        )
    return (_leaf(sampler) != SLOW or type(sampler) is StaticSampler) and _own(sampler)


def samplers(sampler: Any) -> tuple[Any, ...]:
    """``sampler`` and, a parent-based one, the samplers it asks (each once): those whose
    ``should_sample`` the SDK calls."""
    if type(sampler) in (ParentBased, ParentBasedTraceIdRatio):
        found = {id(sampler): sampler}
        for s in _delegates(sampler):
            found.setdefault(id(s), s)
        return tuple(found.values())
    return (sampler,)


def _delegates(sampler: Any) -> tuple[Any, ...]:
    """The samplers a parent-based ``sampler`` asks: for a root, then for each parent."""
    return (
        sampler._root,
        sampler._remote_parent_sampled,
        sampler._remote_parent_not_sampled,
        sampler._local_parent_sampled,
        sampler._local_parent_not_sampled,
    )
