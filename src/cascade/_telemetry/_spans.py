"""Spans of a run: ``cascade.run`` > ``cascade.tier {name}`` > ``chat {model}``.

The engine holds one :class:`Telemetry` per Cascade and asks it for a :class:`RunTrace` per
run, a :class:`TierTrace` per tier tried and an :class:`AttemptTrace` per provider call
(each retry try, each extra sample). Metrics are recorded from the same objects.

Cost when nothing is configured: the run span comes from the global API's proxy tracer, a
non-recording span; every child span, attribute dict and event is then skipped, and the
metric instruments are the API's proxies, which drop each value after one check.
``CASCADE_TELEMETRY=off`` replaces the whole thing with shared no-op objects.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextvars import Token
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from . import _semconv as sc
from ._attempts import (
    MAX_TEXT,
    NOOP_ATTEMPT,
    AttemptTrace,
    ProviderInfo,
    ProviderLike,
    TierLike,
    error_type,
    start_attempt,
)
from ._logs import route_record
from ._metrics import Instruments, instruments_for

try:  # where the metrics API keeps the global provider (see Telemetry.run)
    from opentelemetry.metrics import _internal as _metrics_api
except ImportError:  # pragma: no cover - another API layout: always measure
    _metrics_api = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from .._types import Attempt, Message, RequestOptions, Result

__all__ = [
    "NOOP_ATTEMPT",
    "NOOP_RUN",
    "NOOP_TIER",
    "AttemptTrace",
    "RunTrace",
    "Telemetry",
    "TierTrace",
]

_OFF = frozenset({"off", "0", "false", "no", "none"})
_ON = frozenset({"1", "true", "yes", "on", "span_only", "span_and_event"})


class Telemetry:
    """A Cascade's tracer, instruments and options.

    ``tracer_provider`` / ``meter_provider`` default to the global API's (so an application
    that configures the SDK after building the Cascade is still traced). ``capture_content``
    puts prompts and answers on the attempt spans (``gen_ai.input.messages`` /
    ``gen_ai.output.messages``); None reads
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``. ``CASCADE_TELEMETRY=off`` in
    ``environ`` turns every span, metric and routing record off.
    """

    __slots__ = (
        "__weakref__",
        "_breakers",
        "_meter_via_global",
        "_providers",
        "_via_global",
        "capture_content",
        "enabled",
        "instruments",
        "tracer",
    )

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        capture_content: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        from .. import __version__

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
        self._providers: dict[str, ProviderInfo] = {}
        self._breakers: Callable[[], Mapping[str, Any]] = dict

    def __repr__(self) -> str:
        state = "on" if self.enabled else "off"
        content = ", content captured" if self.capture_content else ""
        return f"<Telemetry {state}{content}>"

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

    def provider_info(self, tier: TierLike, provider: ProviderLike) -> ProviderInfo:
        info = self._providers.get(provider.name)
        if info is None:
            info = self._providers[provider.name] = ProviderInfo(tier, provider)
        return info

    def run(
        self,
        attempts: list[Attempt],
        options: RequestOptions,
        *,
        max_cost_usd: float | None = None,
        deadline_s: float | None = None,
    ) -> RunTrace:
        """Start the ``cascade.run`` span (a child of the caller's current span)."""
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
        idle = (
            self._meter_via_global
            and getattr(_metrics_api, "_METER_PROVIDER", self) is None
            and not structlog.is_configured()
        )
        if not (self._via_global and getattr(trace, "_TRACER_PROVIDER", self) is None):
            span = self.tracer.start_span(sc.SPAN_RUN)  # INTERNAL
            if idle and not span.is_recording():
                token = otel_context.attach(trace.set_span_in_context(span))
                return RunTrace(None, None, token, [], None)
        elif idle:
            return NOOP_RUN
        if span is not None and span.is_recording():
            attrs: dict[str, Any] = {}
            if max_cost_usd is not None:
                attrs[sc.CASCADE_MAX_COST_USD] = max_cost_usd
            if deadline_s is not None:
                attrs[sc.CASCADE_DEADLINE_S] = deadline_s
            if options.metadata:
                for key, value in options.metadata.items():
                    attrs[sc.CASCADE_METADATA_PREFIX + key] = value
            if attrs:
                span.set_attributes(attrs)
            token = otel_context.attach(trace.set_span_in_context(span))
        elif span is not None:  # not sampled: current, as above, and metrics only
            token = otel_context.attach(trace.set_span_in_context(span))
            span = None
        return RunTrace(self, span, token, attempts, options)


class RunTrace:
    """One run's span; as a context manager it ends the span and writes the routing
    record (with the error when the run raised)."""

    __slots__ = (
        "_escalations",
        "_pending",
        "_result",
        "_t0",
        "_tel",
        "_token",
        "attempts",
        "options",
        "span",
    )

    def __init__(
        self,
        tel: Telemetry | None,
        span: Span | None,
        token: Token[Context] | None,
        attempts: list[Attempt],
        options: RequestOptions | None,
    ) -> None:
        self._tel = tel
        self.span = span
        self._token = token
        self.attempts = attempts
        self.options = options
        self._t0 = perf_counter()
        self._pending: tuple[str, str, str] | None = None  # tier left, why, detail
        self._escalations: list[str] = []
        self._result: Result | None = None

    def __enter__(self) -> RunTrace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(exc)

    def tier(self, tier: TierLike) -> TierTrace:
        """Start a tier's span; the previous tier, if it ended unaccepted, escalated here."""
        tel = self._tel
        if tel is None:
            return NOOP_TIER
        pending = self._pending
        if pending is not None:
            self._pending = None
            name, reason, detail = pending
            self._escalations.append(f"{name}: {reason}" + (f" ({detail})" if detail else ""))
            assert tel.instruments is not None
            tel.instruments.escalations.add(
                1, {sc.CASCADE_TIER_NAME: name, sc.CASCADE_ESCALATION_REASON: reason}
            )
            if self.span is not None:
                self.span.add_event(
                    sc.EVENT_ESCALATION,
                    {
                        sc.CASCADE_ESCALATION_FROM: name,
                        sc.CASCADE_ESCALATION_TO: tier.name,
                        sc.CASCADE_ESCALATION_REASON: reason,
                        sc.CASCADE_ESCALATION_DETAIL: detail,
                    },
                )
        if self.span is None:
            return TierTrace(self, tier, None, None)
        span = tel.tracer.start_span(
            f"{sc.SPAN_TIER} {tier.name}",
            kind=SpanKind.INTERNAL,
            attributes={sc.CASCADE_TIER_NAME: tier.name, sc.CASCADE_TIER_INDEX: tier.index},
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        return TierTrace(self, tier, span, token)

    def done(self, result: Result) -> None:
        """The run returns ``result`` (the context manager's exit writes it out)."""
        self._result = result

    def finish(self, exc: BaseException | None = None) -> None:
        tel = self._tel
        if tel is None:
            self._detach()  # a run the sampler dropped, with nothing else to record
            return
        self._tel = None  # once
        result = self._result
        span = self.span
        if span is None:
            self._detach()
        else:
            if result is not None:
                span.set_attributes(
                    {
                        # Kept few: each attribute costs the SDK a few microseconds, and
                        # the answering call's span has the provider, model and usage.
                        sc.CASCADE_OUTCOME: "accepted" if result.validated else "best",
                        sc.CASCADE_TIER_NAME: result.tier_name,
                        sc.CASCADE_TIER_INDEX: result.tier,
                        sc.CASCADE_COST_USD: result.cost_usd,
                        sc.GEN_AI_USAGE_INPUT_TOKENS: result.usage.input_tokens,
                        sc.GEN_AI_USAGE_OUTPUT_TOKENS: result.usage.output_tokens,
                        sc.CASCADE_ESCALATIONS: result.escalations,
                        sc.CASCADE_TIER_PATH: _tier_path(result.attempts),
                    }
                )
            elif exc is not None:
                attempts = getattr(exc, "attempts", None) or self.attempts
                span.set_attributes(
                    {
                        sc.CASCADE_OUTCOME: "error",
                        sc.ERROR_TYPE: error_type(exc),
                        sc.CASCADE_ATTEMPTS: len(attempts),
                        sc.CASCADE_COST_USD: sum(a.cost_usd for a in attempts),
                        sc.CASCADE_TIER_PATH: _tier_path(attempts),
                    }
                )
                span.set_status(Status(StatusCode.ERROR, str(exc)[:MAX_TEXT]))
            self._detach()
            span.end()
        if not structlog.is_configured():
            return  # unconfigured structlog prints to stdout: see _logs.py
        try:
            route_record(
                result,
                exc,
                self.attempts,
                options=self.options,
                escalations=self._escalations,
                latency_s=perf_counter() - self._t0,
                span=span,
            )
        except Exception:  # a broken logging set-up must not fail a run that answered
            _record_failed()

    def _detach(self) -> None:
        if self._token is not None:
            otel_context.detach(self._token)
            self._token = None


_RECORD_FAILED: list[bool] = []


def _record_failed() -> None:
    """Say once per process, through the standard library, that a record was lost."""
    if not _RECORD_FAILED:
        _RECORD_FAILED.append(True)
        logging.getLogger("cascade").warning(
            "the routing record could not be written (structlog raised); runs go on without "
            "it, and this is said once",
            exc_info=True,
        )


def _tier_path(attempts: Sequence[Attempt]) -> list[str]:
    path: list[str] = []
    for a in attempts:
        if not path or path[-1] != a.tier_name:
            path.append(a.tier_name)
    return path


class TierTrace:
    """One tier's span. Its outcome is read off the attempts the tier added to the run."""

    __slots__ = ("_first", "_run", "_token", "span", "tier")

    def __init__(
        self,
        run: RunTrace | None,
        tier: TierLike | None,
        span: Span | None,
        token: Token[Context] | None,
    ):
        self._run = run
        self.tier = tier
        self.span = span
        self._token = token
        self._first = len(run.attempts) if run is not None else 0

    def __enter__(self) -> TierTrace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end()

    def attempt(
        self,
        provider: ProviderLike,
        messages: Sequence[Message],
        options: RequestOptions,
        *,
        retry: int = 0,
        hedge: bool = False,
    ) -> AttemptTrace:
        """Start a ``chat {model}`` span for one call: try ``retry`` of this provider, a
        hedge of another call if ``hedge``."""
        run = self._run
        if run is None or run._tel is None:
            return NOOP_ATTEMPT
        tel = run._tel
        info = tel._providers.get(provider.name)
        if info is None:
            assert self.tier is not None
            info = tel.provider_info(self.tier, provider)
        if self.span is None:  # the run is not traced: metrics only
            return AttemptTrace(tel, info, None, None)
        number = len(run.attempts) + 1
        return start_attempt(
            tel, info, messages, options, self.span, number, retry, None, hedge=hedge
        )

    def retry(self, provider: str, exc: BaseException, wait_s: float, *, retry: int) -> None:
        """Try number ``retry`` of ``provider`` failed and is retried after ``wait_s``."""
        if self.span is not None:
            self.span.add_event(
                sc.EVENT_RETRY,
                {
                    sc.CASCADE_PROVIDER: provider,
                    sc.CASCADE_RETRY_COUNT: retry,
                    sc.CASCADE_RETRY_WAIT_S: wait_s,
                    sc.ERROR_TYPE: error_type(exc),
                },
            )

    def limiter_busy(self, provider: str) -> None:
        """``provider`` had no rate-limit headroom and was passed over for now."""
        if self.span is not None:
            self.span.add_event(sc.EVENT_LIMITER_BUSY, {sc.CASCADE_PROVIDER: provider})

    def limiter_wait(self, provider: str, wait_s: float, *, acquired: bool) -> None:
        """A wait for ``provider``'s rate-limit headroom ended (acquired, or timed out)."""
        run = self._run
        if run is None or run._tel is None:
            return
        outcome = "acquired" if acquired else "timeout"
        assert run._tel.instruments is not None
        run._tel.instruments.limiter_wait.record(
            wait_s, {sc.CASCADE_PROVIDER: provider, sc.CASCADE_LIMITER_OUTCOME: outcome}
        )
        if self.span is not None:
            self.span.add_event(
                sc.EVENT_LIMITER_WAIT,
                {
                    sc.CASCADE_PROVIDER: provider,
                    sc.CASCADE_LIMITER_WAIT_S: wait_s,
                    sc.CASCADE_LIMITER_OUTCOME: outcome,
                },
            )

    def hedge(self, provider: str, delay_s: float) -> None:
        """A hedged request to ``provider`` started ``delay_s`` after the first one."""
        if self.span is not None:
            self.span.add_event(
                sc.EVENT_HEDGE, {sc.CASCADE_PROVIDER: provider, sc.CASCADE_HEDGE_DELAY_S: delay_s}
            )

    def end(self) -> None:
        run = self._run
        if run is None:
            return
        self._run = None  # once
        outcome, detail = _tier_outcome(run.attempts, self._first)
        tier = self.tier
        assert tier is not None
        if outcome != "accepted" and outcome != "none":
            reason = "over_budget" if outcome == "skipped" else outcome
            run._pending = (tier.name, reason, detail)
        span = self.span
        if span is not None:
            span.set_attribute(sc.CASCADE_TIER_OUTCOME, outcome)
            if self._token is not None:
                otel_context.detach(self._token)
                self._token = None
            span.end()


def _tier_outcome(attempts: list[Attempt], first: int) -> tuple[str, str]:
    """The tier's outcome (accepted, rejected, skipped, failed, none) and why."""
    if len(attempts) > first and attempts[-1].outcome == "accepted":
        return "accepted", ""  # the common case, without a copy of the list
    found = "none"
    detail = ""
    for a in attempts[first:]:
        if a.outcome == "cancelled":
            continue  # a hedge that lost: not why the tier escalated
        if a.outcome == "accepted":
            return "accepted", ""
        if a.outcome == "rejected":
            if found != "rejected":
                found = "rejected"
                failing = [v for v in a.verdicts if not v.passed]
                detail = "; ".join(f"{v.validator}: {v.reason}" for v in failing)
        elif found in ("none", "failed", "skipped"):
            found = a.outcome
            detail = a.error or a.error_type or ""
    return found, detail[:MAX_TEXT]


NOOP_RUN = RunTrace(None, None, None, [], None)
NOOP_TIER = TierTrace(None, None, None, None)
