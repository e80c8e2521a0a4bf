"""A Cascade's telemetry: its tracer, instruments and options, and where each run's trace
starts (:meth:`Telemetry.run`). The spans themselves are in :mod:`._spans` (run and tier)
and :mod:`._attempts` (provider calls).

Cost when nothing is configured: with no tracer or meter provider set in the global API
(the variables its own proxies check) and structlog unconfigured, a run takes the shared
no-op objects, as with ``CASCADE_TELEMETRY=off``; a run the sampler drops with nothing
else to record costs one non-recording span, kept current (made by cascade itself, without
``start_span``, for the SDK's own samplers: :mod:`._sampling`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from contextvars import Token
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import ProxyTracer, Span, SpanKind, TracerProvider

from . import _conventions as conventions
from . import _semconv as sc
from ._attributes import id_checks, quiet_start, same_methods, set_attributes, start_checks
from ._context import use_span
from ._light import _NO_ATTRIBUTES
from ._light_plan import LightPlan, light_plan
from ._metrics import Instruments, instruments_for
from ._provider_info import ProviderInfo, ProviderLike, TierLike
from ._sampling import DROP, SAMPLE, SLOW, HeadSampler, head_sampler
from ._spans import NOOP_RUN, DroppedRun, RunTrace

try:  # where the metrics API keeps the global provider (see Telemetry.run)
    from opentelemetry.metrics import _internal as _metrics_api
except ImportError:  # pragma: no cover - another API layout: always measure
    _metrics_api = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .._types import Attempt, RequestOptions

__all__ = ["Telemetry"]

_OFF = frozenset({"off", "0", "false", "no", "none"})
_ON = frozenset({"1", "true", "yes", "on", "span_only", "span_and_event"})
_UNDECIDED: tuple[int, Any] = (SLOW, None)


class Telemetry:
    """A Cascade's tracer, instruments and options.

    ``tracer_provider`` / ``meter_provider`` default to the global API's (so an application
    that configures the SDK after building the Cascade is still traced). ``capture_content``
    puts prompts and answers on the attempt spans (``gen_ai.input.messages`` /
    ``gen_ai.output.messages``); None reads
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``. ``semconv`` names the span
    conventions (``gen_ai``, ``openinference``: see :mod:`._conventions`).
    ``CASCADE_TELEMETRY=off`` in ``environ`` turns every span, metric and routing record
    off.
    """

    __slots__ = (
        "__weakref__",
        "_breakers",
        "_head",
        "_head_known",
        "_meter_via_global",
        "_providers",
        "_quiet",
        "_via_global",
        "capture_content",
        "enabled",
        "gen_ai",
        "instruments",
        "openinference",
        "semconv",
        "tracer",
    )

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        capture_content: bool | None = None,
        environ: Mapping[str, str] | None = None,
        semconv: Sequence[str] = conventions.DEFAULT,
    ) -> None:
        from .. import __version__

        self.semconv = conventions.parse(semconv, path="semconv")
        self.gen_ai = conventions.GEN_AI in self.semconv
        self.openinference = conventions.OPENINFERENCE in self.semconv

        env = os.environ if environ is None else environ
        self.enabled = env.get(sc.ENV_TELEMETRY, "").strip().lower() not in _OFF
        if capture_content is None:
            capture_content = env.get(sc.ENV_CAPTURE_CONTENT, "").strip().lower() in _ON
        self.capture_content = capture_content
        self.tracer = trace.get_tracer("cascade", __version__, tracer_provider)
        self._via_global = tracer_provider is None
        self._meter_via_global = meter_provider is None
        self.instruments: Instruments | None = None
        if self.enabled:
            self.instruments = instruments_for(meter_provider, __version__)
            self.instruments.watch(self)
        self._providers: dict[tuple[int, str], ProviderInfo] = {}
        """By (tier index, provider name): the router's calls (tier 0) go to a provider of
        a tier, and carry the router's tier, not that one."""
        self._breakers: Callable[[], Mapping[str, Any]] = dict
        self._head: HeadSampler | None = None
        self._head_known = False
        """Head sampling cascade decides itself (see :mod:`._sampling`): looked up at the
        first traced run (through the global API, the SDK may be set up after this)."""
        self._quiet: tuple[Any, Any, Any, Any] = (None, None, None, None)
        """:meth:`quiet_start` of the tracer, for its span processors (the provider's
        tuple of them, replaced when one is added), sampler and id generator."""

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        content = ", content captured" if self.capture_content else ""
        semconv = "" if self.semconv == conventions.DEFAULT else f", {'+'.join(self.semconv)}"
        return f"<Telemetry {state}{content}{semconv}>"

    def watch_breakers(self, breakers: Mapping[str, Any]) -> None:
        """Report these breakers' states on the ``cascade.breaker.state`` gauge."""
        self._breakers = lambda: breakers

    def breakers(self) -> Mapping[str, Any]:
        return self._breakers()

    def on_breaker_change(self, name: str, old: str, new: str) -> None:
        """A breaker listener: the transition as an event on the span under way."""
        if not self.enabled:
            return
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                sc.EVENT_BREAKER,
                {
                    sc.CASCADE_PROVIDER: name,
                    sc.CASCADE_BREAKER_FROM: old,
                    sc.CASCADE_BREAKER_TO: new,
                },
            )

    def on_quality_change(self, tier: str, old: str, new: str) -> None:
        """A quality breaker listener: the ``cascade.quality_breaker.transitions``
        counter, and the transition as an event on the span under way (the tier's)."""
        if not self.enabled:
            return
        assert self.instruments is not None
        attrs = {
            sc.CASCADE_TIER_NAME: tier,
            sc.CASCADE_QUALITY_FROM: old,
            sc.CASCADE_QUALITY_TO: new,
        }
        self.instruments.quality_transitions.add(1, attrs)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(sc.EVENT_QUALITY_CHANGE, attrs)

    def provider_info(self, tier: TierLike, provider: ProviderLike) -> ProviderInfo:
        key = (tier.index, provider.name)
        info = self._providers.get(key)
        if info is None:
            info = self._providers[key] = ProviderInfo(
                tier, provider, gen_ai=self.gen_ai, openinference=self.openinference
            )
        return info

    def _idle(self) -> bool:
        """No meter provider to record to and structlog unconfigured (see :meth:`run`)."""
        return (
            self._meter_via_global
            and getattr(_metrics_api, "_METER_PROVIDER", self) is None
            and not structlog.is_configured()
        )

    def run(
        self,
        attempts: list[Attempt],
        options: RequestOptions,
        *,
        max_cost_usd: float | None = None,
        deadline_s: float | None = None,
    ) -> RunTrace:
        """Start the ``cascade.run`` span (a child of the caller's current span)."""
        found = self.begin(attempts, options, max_cost_usd=max_cost_usd, deadline_s=deadline_s)
        if type(found) is Token:
            return DroppedRun(found)
        return found

    def begin(
        self,
        attempts: list[Attempt],
        options: RequestOptions,
        *,
        max_cost_usd: float | None = None,
        deadline_s: float | None = None,
    ) -> RunTrace | Token[Context]:
        """:meth:`run` as the engine takes it: a run the sampler dropped, with nothing
        else to record, is only the token of its span made current (detach it, with
        :func:`._context.detach`, when the run ends), with no object around it: the
        common case under head sampling."""
        if not self.enabled:
            return NOOP_RUN
        span: Span | None = None
        token = None
        # Through the global API with no provider set yet, the proxy tracer would hand out
        # a non-recording span and the proxy instruments would drop every value: with
        # neither set (the variables the proxies themselves check; an API without them
        # counts as set) and structlog unconfigured, there is nothing to do for this run.
        # The same holds for a run the sampler drops, but its span stays current, so that
        # whatever is traced under the run (an instrumented HTTP client) inherits the
        # decision instead of starting traces of its own.
        if not (self._via_global and getattr(trace, "_TRACER_PROVIDER", self) is None):
            head = self._head
            if head is None and not self._head_known:
                head = self._head = head_sampler(_real_tracer(self.tracer))
                self._head_known = True
            verdict, value = _UNDECIDED if head is None else head.decide()
            if verdict == DROP:  # the SDK's non-recording span, made current by cascade
                if (  # self._idle(), inlined: once a run, for most runs
                    self._meter_via_global
                    and getattr(_metrics_api, "_METER_PROVIDER", self) is None
                    and not structlog.is_configured()
                ):
                    return value  # type: ignore[no-any-return]
                return RunTrace(self, None, value, attempts, options)  # metrics only
            attrs = self._run_attributes(options, max_cost_usd, deadline_s)
            sampled = head if verdict == SAMPLE else None
            span = self.start_span(sc.SPAN_RUN, SpanKind.INTERNAL, attrs, sampled, value)
            if not span.is_recording() and self._idle():
                token = use_span(span)
                # The engine knows a dropped run by its contextvars Token; another runtime
                # context's token (OTEL_PYTHON_CONTEXT) comes in the object that detaches it.
                return token if type(token) is Token else DroppedRun(token)
        elif self._idle():
            return NOOP_RUN
        if span is not None:
            # Current while the run lasts; a span the sampler dropped too (see above), but
            # then the run records metrics only.
            token = use_span(span)
            if not span.is_recording():
                span = None
        return RunTrace(self, span, token, attempts, options)

    def start_span(
        self,
        name: str,
        kind: SpanKind,
        attributes: dict[str, Any] | None,
        head: HeadSampler | None = None,
        trace_id: int = 0,
    ) -> Span:
        """``self.tracer.start_span(name, kind=kind, attributes=attributes)`` (with ``head``:
        ``head.start(name, trace_id, attributes)``, a run it sampled). When nothing sees
        the span but the processors' ``on_end`` (:meth:`quiet_start`), a light span
        (:mod:`._light`) where its sampling decision is known here; else the SDK's, its
        attributes stored after the start when nothing sees them at it.

        Such a span starts under the lock of the tracer's span processors, which adding
        one takes, their tuple checked again under it: a processor another thread adds
        meanwhile comes after the start (as it may with ``start_span``), instead of seeing
        the span start bare. The attributes are stored outside the lock: a warning's
        handler is the application's. (A light span calls no processor at its start.)"""
        quiet = self.quiet_start()
        if quiet is not None:
            processor, processors, lock, light, starts = quiet
            if light is not None:
                found = light.start(
                    name, kind, attributes or _NO_ATTRIBUTES, sampled=head is not None,
                    trace_id=trace_id,
                )  # fmt: skip
                if found is not None:
                    return found
            with lock:  # an on_start replaced since the check would see a bare span
                if processor._span_processors is not processors or not same_methods(starts):
                    span = None
                elif head is None:
                    span = self.tracer.start_span(name, kind=kind)
                else:
                    span = head.start(name, trace_id, None)
            if span is not None:
                if attributes:
                    set_attributes(span, attributes)
                return span
        if head is None:
            return self.tracer.start_span(name, kind=kind, attributes=attributes)
        return head.start(name, trace_id, attributes)  # type: ignore[no-any-return]

    def quiet_start(
        self,
    ) -> tuple[Any, tuple[Any, ...], Any, LightPlan | None, tuple[Any, ...]] | None:
        """When nothing sees a span's attributes at its start (see :func:`quiet_start` in
        :mod:`._attributes`): the tracer's span processor, its tuple of processors as
        found, its lock (see :meth:`start_span`) and the plan of its light spans (None
        when they cannot be: see :func:`._light_plan.light_plan`) and what is checked before
        each span (:func:`._attributes.start_checks`); else None. Looked up again when
        the processors, the sampler or the id generator change."""
        tracer = _real_tracer(self.tracer)
        try:
            processor = tracer.span_processor
            processors, sampler = processor._span_processors, tracer.sampler
            ids = tracer.id_generator
        except AttributeError:  # not the SDK's
            return None
        known = self._quiet
        if known[0] is processors and known[1] is sampler and known[2] is ids:
            return known[3]  # type: ignore[no-any-return]
        lock = getattr(processor, "_lock", None) if quiet_start(tracer) else None
        quiet = None
        if lock is not None:
            starts = start_checks(tracer, processor, processors, sampler)
            light = light_plan(tracer, processor, processors, (*starts, *id_checks(ids)))
            quiet = (processor, processors, lock, light, starts)
        self._quiet = (processors, sampler, ids, quiet)
        return quiet

    def _run_attributes(
        self, options: RequestOptions, max_cost_usd: float | None, deadline_s: float | None
    ) -> dict[str, Any] | None:
        """The run span's attributes known at its start (also seen by the sampler)."""
        attrs: dict[str, Any] = {}
        if max_cost_usd is not None:
            attrs[sc.CASCADE_MAX_COST_USD] = max_cost_usd
        if deadline_s is not None:
            attrs[sc.CASCADE_DEADLINE_S] = deadline_s
        if options.metadata:
            for key, value in options.metadata.items():
                attrs[sc.CASCADE_METADATA_PREFIX + key] = value
        if self.openinference:
            attrs.update(conventions.CHAIN)
        return attrs or None


def _real_tracer(tracer: Any) -> Any:
    """The tracer behind the global API's proxy (once a provider is set), else ``tracer``."""
    if type(tracer) is ProxyTracer:
        return tracer._tracer
    return tracer
