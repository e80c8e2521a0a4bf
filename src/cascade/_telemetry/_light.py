"""A sampled span that cascade starts and ends itself, exactly as the SDK would have, when
nothing but the span processors' ``on_end`` ever sees the SDK's span object.

The SDK's span costs far more than what it exports: a start through the tracer (the
current span, the sampler, ids, the span context, a ``_Span`` with four locks, an
attribute store, two event and link lists) and, at the end, a readable copy of it. Of a
sampled run's cost at concurrency 64 (three spans), that is most: about 120k instructions
a span against 30k for building the readable span the processors get.

For the tracers :func:`._attributes.quiet_start` accepts (the SDK's tracer, samplers, ids,
batch and simple span processors, none of their methods replaced), whose decision for
the span is known without asking the sampler (a run head sampling sampled, or a span
whose sampler leaf for its parent samples everything, as ``ParentBased`` does for a
sampled parent by default), whose span limits cannot change what cascade stores, and whose
installed SDK builds the same readable span this way (:func:`._light_check.probe`), a span
starts as a :class:`LightSpan` (what is checked once a tracer, and what at a span's start:
:mod:`._light_plan`): its span context (the same draws of the same random ids, flags and
trace state the SDK would give it), its name, kind, parent, start time, attributes and
status. At its end it hands the processors the ``ReadableSpan`` the SDK's span would have
made.

Anything else done to it (an event, a link, a renamed span, an exception recorded, a
status given otherwise, attributes the SDK would check or limit, an attribute read by
the application, an end after a processor was added) first makes it the SDK's own span,
with what it holds so far (:meth:`LightSpan.sdk_span`), which then does that, as it would
have done from the start. The live span is the current span of the run's context, so an
application that looks at it gets the API's ``Span`` (not an instance of the SDK's
classes) whose every method and attribute behaves as the SDK span's.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Mapping
from time import time_ns
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.trace import Span, SpanContext, SpanKind, Status, StatusCode

from ._attributes import _NO_EVENTS, _NO_LINKS, as_stored, same_methods

if TYPE_CHECKING:
    from ._light_plan import LightPlan

__all__ = ["LightSpan"]

try:
    from opentelemetry.attributes import BoundedAttributes as _Bounded
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.trace import _Span as _SdkSpan
except ImportError:  # pragma: no cover - no SDK
    _SdkSpan = None  # type: ignore[assignment,misc]

_NO_ATTRIBUTES: Final[Mapping[str, Any]] = {}  # never changed
_LOCK: Final = threading.Lock()
"""Guards a light span's change into the SDK's (another thread may touch the span, as the
current span of a context it was handed) against its own fast paths."""


_DEFAULT_STATUS: Any = None
_SDK_KWARGS: tuple[str, ...] = ()
if _SdkSpan is not None:
    try:  # what ReadableSpan's status is unless given; _Span's newer keyword
        _DEFAULT_STATUS = inspect.signature(ReadableSpan).parameters["status"].default
        if "record_end_metrics" in inspect.signature(_SdkSpan).parameters:
            _SDK_KWARGS = ("record_end_metrics",)
    except (TypeError, ValueError, KeyError):  # pragma: no cover - another SDK layout
        _SdkSpan = None  # type: ignore[assignment,misc]


class LightSpan(Span):
    """A sampled span that becomes a ``ReadableSpan`` for the span processors at its end
    without the SDK's span object (see the module doc); anything else done to it first
    makes it that object (:meth:`sdk_span`)."""

    __slots__ = (
        "_attrs",
        "_context",
        "_end_time",
        "_events",
        "_kind",
        "_name",
        "_parent",
        "_plan",
        "_real",
        "_resource",
        "_start_time",
        "_status",
    )

    def __init__(
        self,
        plan: LightPlan,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, Any],
    ) -> None:
        self._plan = plan
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attrs = attributes
        self._resource = plan.tracer.resource  # the SDK's span keeps the one of its start
        self._status = _DEFAULT_STATUS
        self._real: Any = None
        self._end_time: int | None = None
        self._events: list[Any] | None = None
        self._start_time = time_ns()

    # What cascade does to its spans, without the SDK's span object.

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        real = self._real
        return self._end_time is None if real is None else bool(real.is_recording())

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        stored = as_stored(attributes)
        if stored is not None:
            with _LOCK:
                mine = self._attrs
                maxlen = self._plan.maxlen
                if (
                    self._real is None
                    and self._end_time is None
                    and (maxlen is None or len(mine) + len(stored) <= maxlen)
                ):
                    for key, value in stored.items():
                        if key in mine:  # as the SDK's store: a key set again moves last
                            del mine[key]
                        mine[key] = value
                    return
        self.sdk_span().set_attributes(attributes)

    def set_attribute(self, key: str, value: Any) -> None:
        self.sdk_span().set_attribute(key, value)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if type(status) is Status and description is None:
            with _LOCK:
                if self._real is None and self._end_time is None:
                    # The SDK's rule: an OK status is final; UNSET changes nothing.
                    if (
                        self._status.status_code is not StatusCode.OK
                        and status.status_code is not StatusCode.UNSET
                    ):
                        self._status = status
                    return
        self.sdk_span().set_status(status, description)

    def end(self, end_time: int | None = None) -> None:
        plan = self._plan
        with _LOCK:
            fast = (
                self._real is None
                and self._end_time is None
                and plan.processor._span_processors is plan.processors
                and same_methods(plan.endings)
            )
            if fast:
                self._end_time = end_time if end_time is not None else time_ns()
        if not fast:  # the SDK ends it, or says it had ended
            self.sdk_span().end(end_time)
            return
        attributes = _Bounded(plan.maxlen, None, immutable=True, max_value_len=None)
        attributes._dict = self._attrs
        tracer = plan.tracer
        plan.processor.on_end(
            ReadableSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                resource=self._resource,
                attributes=attributes,
                events=_NO_EVENTS if self._events is None else tuple(self._events),
                links=_NO_LINKS,
                kind=self._kind,
                status=self._status,
                start_time=self._start_time,
                end_time=self._end_time,
                instrumentation_info=tracer.instrumentation_info,
                instrumentation_scope=tracer._instrumentation_scope,
            )
        )

    # Everything else: the SDK's span does it.

    def sdk_span(self) -> Any:
        """The SDK's span this one stands for, made now (once) with what it holds: what
        ``start_span`` would have started, its attributes and status as set, ended if it
        has ended (without ``on_end``: the processors had the span)."""
        with _LOCK:
            found = self._real
            if found is not None:
                return found
            plan = self._plan
            tracer = plan.tracer
            real: Any = _SdkSpan(
                name=self._name,
                context=self._context,
                parent=self._parent,
                sampler=tracer.sampler,
                resource=self._resource,
                span_processor=plan.processor,
                kind=self._kind,
                instrumentation_info=tracer.instrumentation_info,
                limits=tracer._span_limits,
                instrumentation_scope=tracer._instrumentation_scope,
                **dict.fromkeys(_SDK_KWARGS),  # type: ignore[arg-type]
            )
            real._start_time = self._start_time  # started: on_start, blind, saw nothing
            real._attributes._dict.update(self._attrs)
            for event in self._events or ():  # fewer than its limit: none dropped
                real._events.append(event)
            real._status = self._status
            if self._end_time is not None:
                real._end_time = self._end_time
                real._attributes._immutable = True
            self._real = real
            return real

    def add_event(
        self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None
    ) -> None:
        """As the SDK span's (an escalation, a verdict): the event it would store, kept
        until the end while the limits drop nothing."""
        stored = as_stored(attributes) if attributes else _NO_ATTRIBUTES
        plan = self._plan
        limit = plan.event_attributes
        length = plan.event_length
        if (
            stored is not None
            and (limit is None or len(stored) <= limit)
            and (length is None or _uncut(stored, length))
        ):
            bounded = _Bounded(limit, None, immutable=True, max_value_len=length)
            bounded._dict = dict(stored)
            event = Event(name, bounded, timestamp)
            with _LOCK:
                if self._real is None and self._end_time is None:
                    events = self._events
                    if events is None:
                        events = self._events = []
                    if plan.max_events is None or len(events) < plan.max_events:
                        events.append(event)
                        return
        self.sdk_span().add_event(name, attributes, timestamp)

    def add_link(self, context: SpanContext, attributes: Mapping[str, Any] | None = None) -> None:
        self.sdk_span().add_link(context, attributes)

    def update_name(self, name: str) -> None:
        self.sdk_span().update_name(name)

    def record_exception(
        self,
        exception: BaseException,
        attributes: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        self.sdk_span().record_exception(exception, attributes, timestamp, escaped)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        """As the SDK span's: an exception leaving ``with span:`` is recorded on it (by
        the SDK's span this one then becomes), and the span ends."""
        if exc_val is None:
            self.end()
            return
        self.sdk_span().__exit__(exc_type, exc_val, exc_tb)

    def __getattr__(self, name: str) -> Any:
        # A read the API's Span has no name for (``attributes``, ``name``, ``parent``...):
        # the SDK span's. Never for this class's own slots, set in __init__.
        if name.startswith("__") or name in LightSpan.__slots__:
            raise AttributeError(name)
        return getattr(self.sdk_span(), name)

    def __repr__(self) -> str:
        return repr(self.sdk_span())


def _uncut(stored: Mapping[str, Any], length: int) -> bool:
    """Whether no string in ``stored`` (as :func:`as_stored` gives them: strings, or
    tuples of strings) is longer than ``length`` (the SDK would cut it, and warn)."""
    for value in stored.values():
        if type(value) is str:
            if len(value) > length:
                return False
        elif type(value) is tuple and any(len(item) > length for item in value):
            return False
    return True
