"""Attributes set on a span that is under way, as ``Span.set_attributes`` sets them, for the
values cascade itself makes (strings, numbers, booleans, sequences of strings).

The SDK's ``set_attributes`` checks every value (``_clean_attribute_value``: a type test
or three, abstract-class checks for a sequence, a new tuple) and stores each one with a
call of its own: a few thousand instructions an attribute, some 16 of them at the end of
every sampled run. For the SDK's own span whose limits cannot bite (no value length limit,
room for every attribute), cascade stores the values the SDK would have stored, in the
same order, under the same locks: a string, number, boolean or None as it is, a list or
tuple of strings as a tuple. Anything else (another span class, a value of another type,
limits that would truncate or drop, an ended span, another SDK layout) goes through
``set_attributes`` itself.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from typing import Any, ClassVar, Final

from opentelemetry.trace import Span

from ._sampling import PresetIds
from ._sdk_own import (
    _IDS,
    _SHOULD,
    blind_to_attributes,
    default_context,
    no_self_metrics,
    samplers,
    sdk_ids,
)

__all__ = ["as_stored", "end_span", "quiet_start", "set_attributes"]

try:  # the SDK's classes, compared by identity: a subclass may store otherwise
    from opentelemetry.attributes import BoundedAttributes as _Bounded
    from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor as _Processors
    from opentelemetry.sdk.trace import Tracer as _SdkTracer
    from opentelemetry.sdk.trace import _Span as _SdkSpan
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.util import BoundedList as _BoundedList
except ImportError:  # pragma: no cover - no SDK, or another layout
    _Processors = _SdkTracer = BatchSpanProcessor = SimpleSpanProcessor = None  # type: ignore[assignment,misc]
    _SdkSpan = None  # type: ignore[assignment,misc]
    _Bounded = None  # type: ignore[assignment,misc]
    _BoundedList = None  # type: ignore[assignment,misc]


def _as_is() -> frozenset[type]:
    """The value types the installed SDK stores unchanged, found by storing one of each
    in its own ``BoundedAttributes`` (an SDK that drops None, as some did, keeps it out:
    then such a value goes through ``set_attributes``); nothing when its layout is not
    the one :func:`_store` writes into."""
    if _Bounded is None:  # pragma: no cover - no SDK
        return frozenset()
    # An SDK that drops None says so in a warning (1.39 does): the probe's own, kept out
    # of the application's logs (with no logging set up, Python prints it on stderr).
    log = logging.getLogger(_Bounded.__module__)
    ident = threading.get_ident()

    def others(record: logging.LogRecord) -> bool:
        return record.thread not in (ident, None)

    log.addFilter(others)
    try:
        probe = _Bounded(immutable=False)
        samples: dict[str, Any] = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None}
        for key, value in samples.items():
            probe[key] = value
        kept = {type(v) for k, v in samples.items() if k in probe._dict and probe._dict[k] is v}
        probe["t"] = ["a", "b"]
        if probe._dict.get("t") != ("a", "b") or type(probe._lock).__name__ not in (
            "lock",
            "RLock",
        ):
            return frozenset()
    except Exception:  # pragma: no cover - another SDK layout
        return frozenset()
    finally:
        log.removeFilter(others)
    return frozenset(kept)


_AS_IS: Final = _as_is()
"""Types the SDK's check returns unchanged (bytes too, which cascade never sets); empty
when its layout is not the expected one (every value then goes through ``set_attributes``)."""
_SEQUENCES: Final = frozenset({list, tuple})
_STR: Final = frozenset({str})
_TUPLES: dict[tuple[str, ...], tuple[str, ...]] = {}
"""The sequences stored, one tuple each (a tier path, finish reasons: few distinct ones),
so that a span waiting in a batch processor's queue holds no tuple of its own: one
allocation less for the garbage collector to count, each, until the span is exported."""
_MAX_TUPLES: Final = 256
_MAX_SHARED_CHARS: Final = 256
"""A finish reason is the provider's text: a long one (or many distinct ones) is not kept
beyond its spans."""


def _shared(value: tuple[str, ...]) -> tuple[str, ...]:
    found = _TUPLES.get(value)
    if found is not None:
        return found
    if len(_TUPLES) < _MAX_TUPLES and sum(map(len, value)) <= _MAX_SHARED_CHARS:
        _TUPLES[value] = value
    return value


def set_attributes(span: Span, attributes: Mapping[str, Any]) -> None:
    """``span.set_attributes(attributes)``, stored directly when that stores the same."""
    if type(span) is not _SdkSpan or not _AS_IS or not _store(span, attributes):
        span.set_attributes(attributes)


def as_stored(attributes: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``attributes`` as the SDK's check stores them (the same mapping when it stores
    every value as it is); None when that is not certain (a value of another type, a key
    it drops with a warning)."""
    cleaned: dict[str, Any] | None = None
    for key, value in attributes.items():
        if type(key) is not str or not key:
            return None  # the SDK drops it, with a warning
        kind = type(value)
        if kind in _AS_IS:
            continue
        if kind not in _SEQUENCES or not {*map(type, value)} <= _STR:
            return None
        if cleaned is None:
            cleaned = dict(attributes)
        cleaned[key] = _shared(tuple(value))  # the SDK's copy: a tuple of the same strings
    return attributes if cleaned is None else cleaned


def _store(span: Any, attributes: Mapping[str, Any]) -> bool:
    """Store ``attributes`` on an SDK span as its ``set_attributes`` would; False (nothing
    stored) when that is not certain."""
    found = as_stored(attributes)
    if found is None:
        return False
    attributes = found
    try:
        with span._lock:
            if span._end_time is not None:
                return False  # set_attributes warns, and stores nothing
            bounded = span._attributes
            if (
                type(bounded) is not _Bounded
                or bounded._immutable
                or bounded.max_value_len is not None
                or (
                    bounded.maxlen is not None
                    and len(bounded._dict) + len(attributes) > bounded.maxlen
                )
            ):
                return False
            with bounded._lock:
                stored = bounded._dict
                for key, value in attributes.items():
                    if key in stored:  # as _setitem_locked: a key set again moves last
                        del stored[key]
                    stored[key] = value
    except AttributeError:  # pragma: no cover - another SDK layout
        return False
    return True


_logger = logging.getLogger("opentelemetry.sdk.trace")


class _Ended(tuple):  # type: ignore[type-arg]
    """No events, or no links, of a span about to end: what the SDK's ended span reads
    (a sequence, no ``dropped`` count) without an empty list of its own per span."""

    __slots__ = ()
    adding: ClassVar[str]
    attribute: ClassVar[str]

    def append(self, item: object) -> None:
        # Another thread adding to the span between the swap and ``end`` (the SDK's
        # ``_add_event`` / ``_add_link``, under the span's lock, the span still open):
        # the span gets a list of its own again and keeps the add, as if it had come just
        # before the end. Never a warning here: it would run the application's log
        # handlers under the span's lock, the span still recording (one that copies the
        # record onto the span would wait for that lock for ever).
        span = sys._getframe(1).f_locals.get("self")
        if type(span) is _SdkSpan and getattr(span, self.attribute, None) is self:
            fresh: Any = span._new_events() if self is _NO_EVENTS else span._new_links(())  # type: ignore[no-untyped-call]
            setattr(span, self.attribute, fresh)
            fresh.append(item)
            return
        _logger.warning("Tried calling %s on an ended span.", self.adding)


class _NoEvents(_Ended):
    __slots__ = ()
    adding = "_add_event"
    attribute = "_events"


class _NoLinks(_Ended):
    __slots__ = ()
    adding = "_add_link"
    attribute = "_links"


_NO_EVENTS: Final = _NoEvents()
_NO_LINKS: Final = _NoLinks()


def _lists() -> bool:
    """Whether the installed SDK's ended span reads the shared empty lists as no events
    and no links (as it reads its own empty ones); when not, spans end with their lists."""
    if _BoundedList is None:  # pragma: no cover - no SDK
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import ReadableSpan

        probe = ReadableSpan(
            "probe", resource=Resource.get_empty(), events=_NO_EVENTS, links=_NO_LINKS
        )
        return (
            probe.events == ()
            and probe.links == ()
            and probe.dropped_events == 0
            and probe.dropped_links == 0
        )
    except Exception:  # pragma: no cover - another SDK layout
        return False


_LISTS: Final = _lists()


def _empty(found: object) -> bool:
    return type(found) is _BoundedList and not found._dq and not found.dropped  # type: ignore[attr-defined]


def end_span(span: Span, end_time: int | None = None) -> None:
    """``span.end(end_time)``; an SDK span with no events and no links first drops its
    two empty lists (each a list, a deque and a lock, all counted by the garbage
    collector), so the span that waits in a batch processor's queue holds 6 collected
    objects fewer: fewer young collections at a high rate of sampled runs. An event or
    link another thread adds between the swap and the end is kept, as before the end
    (see :class:`_Ended`)."""
    if type(span) is _SdkSpan and _LISTS:
        try:
            with span._lock:
                if span._end_time is None and _empty(span._events) and _empty(span._links):
                    span._events = _NO_EVENTS
                    span._links = _NO_LINKS
        except AttributeError:  # pragma: no cover - another SDK layout
            pass
    span.end(end_time)


class _Untouchable:
    """A span no ``on_start`` may look at: any attribute read is noted."""

    touched = False

    def __getattribute__(self, name: str) -> Any:
        type(self).touched = True
        raise AttributeError(name)


def _blind_processors(kinds: tuple[Any, ...] | None = None) -> frozenset[type]:
    """Those of ``kinds`` (by default the SDK's batch and simple span processors) whose
    ``on_start`` does nothing: found by calling it with a processor and a span it must not
    touch."""
    if kinds is None:
        if _Processors is None:  # pragma: no cover - no SDK
            return frozenset()
        kinds = (BatchSpanProcessor, SimpleSpanProcessor)
    blind: set[type] = set()
    for kind in kinds:
        _Untouchable.touched = False
        probe = _Untouchable()
        try:
            kind.on_start(probe, probe)
        except Exception:  # noqa: S112 - it touched something: not blind
            continue
        if not _Untouchable.touched:
            blind.add(kind)
    return frozenset(blind)


_BLIND_PROCESSORS: Final[frozenset[Any]] = _blind_processors()
_STARTS: Final = {kind: kind.on_start for kind in _BLIND_PROCESSORS}
"""Their ``on_start`` as probed: one replaced since (on the class, or on a processor)
may look at the span."""
_START_SPAN: Final = None if _SdkTracer is None else _SdkTracer.start_span
_MULTI_ON_START: Final = None if _Processors is None else _Processors.on_start


def _unpatched(found: Any, name: str, original: Any) -> bool:
    """Whether ``found``'s method ``name`` is ``original``: not replaced on its class, nor
    on the object itself."""
    return getattr(type(found), name, None) is original and name not in getattr(
        found, "__dict__", {name: None}
    )


def same_methods(checks: tuple[tuple[Any, str, Any], ...]) -> bool:
    """:func:`_unpatched` of each ``(object, name, original)`` (objects with a
    ``__dict__``), without its defaults: checked at every span's start and end, where
    ``_unpatched``'s cost about 10k instructions a call (for three light spans, 60k of
    a traced request's 950k)."""
    try:
        for found, name, original in checks:
            if getattr(type(found), name) is not original or name in found.__dict__:
                return False
    except AttributeError:  # deleted: not the method as imported
        return False
    return True


_NEVER: Final = object()
"""No method is this: a check of an object that was not the SDK's always fails."""


def start_checks(
    tracer: Any, processor: Any, processors: tuple[Any, ...], sampler: Any
) -> tuple[tuple[Any, str, Any], ...]:
    """What :func:`same_methods` checks before a quiet start by ``tracer`` (which
    :func:`quiet_start` accepted) under its span ``processor`` and its ``processors`` and
    ``sampler`` (as found with them): that everything the SDK calls at a span's start and
    that sees its attributes is still the SDK's, replaced on neither the object nor its
    class since (an instrumentation may wrap them at any time): the tracer's
    ``start_span``, the span processor's and the processors' ``on_start`` and the
    samplers' ``should_sample``. One found other than :func:`quiet_start` accepted
    (another thread changed it meanwhile) never passes."""
    return (
        (tracer, "start_span", _START_SPAN),
        (processor, "on_start", _MULTI_ON_START),
        *((p, "on_start", _STARTS.get(type(p), _NEVER)) for p in processors),
        *((s, "should_sample", _SHOULD.get(type(s), _NEVER)) for s in samplers(sampler)),
    )


def id_checks(ids: Any) -> tuple[tuple[Any, str, Any], ...]:
    """What :func:`same_methods` checks, with :func:`start_checks`, before a light span
    (which draws its ids as the SDK's id generator ``ids`` does, without it): that its
    draws are still the SDK's. (A quiet start's ids are the SDK's own draws.)"""
    inner = ids.inner if type(ids) is PresetIds else ids
    return (
        (inner, "generate_span_id", _IDS[1] if _IDS is not None else _NEVER),
        (inner, "generate_trace_id", _IDS[2] if _IDS is not None else _NEVER),
    )


def quiet_start(tracer: Any) -> bool:
    """Whether nothing sees a span's attributes when ``tracer`` starts it: an SDK tracer
    whose span processors are all the SDK's batch or simple ones (their ``on_start`` does
    nothing; anything else may read the span) and whose sampler is one of the SDK's own
    (which decide without the attributes, and hand them on as given: see
    :func:`._sdk_own.blind_to_attributes`), its ids the SDK's own random ones, no span
    self-metrics (recorded to the application's meter provider) and the API's default
    runtime context (the start runs under the processors' lock, where no code of the
    application's may run: one that added a processor there would never return). Then a
    span can start with none and get them through :func:`set_attributes`: for the values
    cascade sets, one store instead of the SDK's check of each value (about 40k
    instructions for a call span's nine)."""
    if _Processors is None or type(tracer) is not _SdkTracer:
        return False
    try:
        processor = tracer.span_processor
        return (
            _unpatched(tracer, "start_span", _START_SPAN)
            and sdk_ids(tracer.id_generator)
            and no_self_metrics(tracer)
            and default_context()
            and type(processor) is _Processors
            and _unpatched(processor, "on_start", _MULTI_ON_START)
            and all(
                _unpatched(p, "on_start", _STARTS.get(type(p), _Untouchable))
                for p in processor._span_processors
            )
            and blind_to_attributes(tracer.sampler)
        )
    except AttributeError:  # pragma: no cover - another SDK layout
        return False
