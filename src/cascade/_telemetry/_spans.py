"""Spans of a run: ``cascade.run`` > ``cascade.tier {name}`` > ``chat {model}``.

The engine holds one :class:`~._core.Telemetry` per Cascade and asks it for a
:class:`RunTrace` per run; the run gives a :class:`TierTrace` per tier tried, and the tier
an :class:`~._attempts.AttemptTrace` per provider call (each retry try, each extra sample).
Metrics are recorded from the same objects. A run that is not traced (no SDK, or dropped
by the sampler) has no span: its tiers and calls record metrics only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import Token
from time import perf_counter, time_ns
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..engine._events import AttemptFinished, Escalated, Event, Finished, Routed
from . import _conventions as conventions
from . import _semconv as sc
from ._attempts import (
    MAX_TEXT,
    NOOP_ATTEMPT,
    AttemptTrace,
    error_type,
)
from ._attributes import end_span, set_attributes
from ._content import escalation_detail
from ._context import detach, use_span
from ._logs import route_record
from ._provider_info import TierLike
from ._tier_trace import NOOP_TIER, TierTrace

if TYPE_CHECKING:
    from .._types import Attempt, RequestOptions, Result
    from ._core import Telemetry

_OK = Status(StatusCode.OK)

__all__ = [
    "NOOP_ATTEMPT",
    "NOOP_RUN",
    "NOOP_TIER",
    "AttemptTrace",
    "DroppedRun",
    "RunTrace",
    "TierTrace",
]


class RunTrace:
    """One run's span; as a context manager it ends the span and writes the routing
    record (with the error when the run raised). The span's status is OK when the run
    answered (accepted, or the best answer), ERROR when it raised (cancelled included)."""

    __slots__ = (
        "_calls",
        "_ended_ns",
        "_escalations",
        "_result",
        "_route",
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
        self._escalations: list[str] = []
        self._result: Result | None = None
        self._ended_ns: int | None = None
        """When the Finished event came: the run's span ends then, though the reader
        of a stream takes the result before the span is ended."""
        self._route: Routed | None = None
        self._calls: dict[tuple[int, str], AttemptTrace | list[AttemptTrace]] = {}
        """The spans of the calls under way, by (tier, provider): each is ended by its
        call's AttemptFinished event, from the attempt record. Several calls of one
        provider at once (a router's, in tasks of its own) are a list (see _pending)."""

    @property
    def records(self) -> bool:
        """Whether the run's events are recorded (spans, metrics, the routing record):
        False for a run the sampler dropped with nothing else to record."""
        return self._tel is not None

    def __enter__(self) -> RunTrace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tel is not None:
            self.finish(exc)
        elif self._token is not None:  # a run the sampler dropped: its span made current
            self._detach()

    def observe(self, event: Event) -> None:
        """A listener of the run's events: each call's span and metrics are ended from
        its AttemptFinished record (outcome, verdicts, tokens, cost, error), and the
        escalations and the result are read off theirs; so none can disagree with the
        Result. (A call's span is started with the call, where it must be current.)"""
        if self._tel is None:
            return
        kind = type(event)
        if kind is AttemptFinished:
            attempt = event.attempt  # type: ignore[union-attr]
            call = self._calls.pop((attempt.tier, attempt.provider), None)
            if type(call) is list:
                call = self._pending((attempt.tier, attempt.provider), call)
            if call is not None:
                call.finished(attempt)  # type: ignore[union-attr]
        elif kind is Escalated:
            self.escalated(event)  # type: ignore[arg-type]
        elif kind is Finished:
            self._result = event.result  # type: ignore[union-attr]
            self._ended_ns = time_ns()
        elif kind is Routed:
            self.routed(event)  # type: ignore[arg-type]

    def _pending(self, key: tuple[int, str], calls: list[AttemptTrace]) -> AttemptTrace:
        """Which of several calls of one provider under way an attempt record is: the one
        whose span is current (a call records its attempt in its own task, under its own
        span), else the first; the others stay pending."""
        current = trace.get_current_span()
        call = next((c for c in calls if c.span is current), calls[0])
        rest = [c for c in calls if c is not call]
        if rest:
            self._calls[key] = rest if len(rest) > 1 else rest[0]
        return call

    def routed(self, event: Routed) -> None:
        """The router decided: ``cascade.route.*`` on the run's span, and the decision
        kept for the routing record."""
        self._route = event
        if self.span is not None:
            self.span.set_attributes(route_attributes(event))

    def escalated(self, event: Escalated) -> None:
        """The engine left a tier unaccepted for the next (an escalation event)."""
        tel = self._tel
        if tel is None:
            return
        name, reason = event.from_tier_name, event.reason
        detail = escalation_detail(
            reason, event.detail, self.attempts, event.from_tier, capture=tel.capture_content
        )
        self._escalations.append(f"{name}: {reason}" + (f" ({detail})" if detail else ""))
        assert tel.instruments is not None
        tel.instruments.escalations.add(
            1, {sc.CASCADE_TIER_NAME: name, sc.CASCADE_ESCALATION_REASON: reason}
        )
        if self.span is not None:
            attrs: dict[str, str | bool] = {
                sc.CASCADE_ESCALATION_FROM: name,
                sc.CASCADE_ESCALATION_TO: event.to_tier_name,
                sc.CASCADE_ESCALATION_REASON: reason,
                sc.CASCADE_ESCALATION_DETAIL: detail,
            }
            if event.repair:  # only then: a plain escalation's event is as it was
                attrs[sc.CASCADE_ESCALATION_REPAIR] = True
            self.span.add_event(sc.EVENT_ESCALATION, attrs)

    def tier(self, tier: TierLike, *, current: bool = True) -> TierTrace:
        """Start a tier's span, current in this task unless ``current`` is False (a
        router's tier, whose calls may run in tasks of their own: each makes the span
        current there, :meth:`TierTrace.made_current`)."""
        tel = self._tel
        if tel is None:
            return NOOP_TIER
        if self.span is None:
            return TierTrace(self, tier, None, None)
        attrs: dict[str, str | int] = {
            sc.CASCADE_TIER_NAME: tier.name,
            sc.CASCADE_TIER_INDEX: tier.index,
        }
        if tel.openinference:
            attrs.update(conventions.CHAIN)
        span = tel.start_span(f"{sc.SPAN_TIER} {tier.name}", SpanKind.INTERNAL, attrs)
        return TierTrace(self, tier, span, use_span(span) if current else None)

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
                attrs: dict[str, Any] = {
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
                set_attributes(span, attrs if tel.gen_ai else conventions.without_gen_ai(attrs))
                span.set_status(_OK)  # an answer, accepted or the best one
            elif exc is not None:
                attempts = getattr(exc, "attempts", None) or self.attempts
                set_attributes(
                    span,
                    {
                        sc.CASCADE_OUTCOME: "error",
                        sc.ERROR_TYPE: error_type(exc),
                        sc.CASCADE_ATTEMPTS: len(attempts),
                        sc.CASCADE_COST_USD: sum(a.cost_usd for a in attempts),
                        sc.CASCADE_TIER_PATH: _tier_path(attempts),
                    },
                )
                # A cancellation's message is often empty: the status says it was one.
                message = str(exc)[:MAX_TEXT] or error_type(exc)
                span.set_status(Status(StatusCode.ERROR, message))
            self._detach()
            end_span(span, self._ended_ns)
        if not structlog.is_configured():
            return  # unconfigured structlog prints to stdout: see _logs.py
        try:
            route_record(
                result,
                exc,
                self.attempts,
                options=self.options,
                escalations=self._escalations,
                # the result's own: the reader may have taken it before this record
                latency_s=perf_counter() - self._t0 if result is None else result.latency_s,
                route=self._route,
                span=span,
            )
        except Exception:  # a broken logging set-up must not fail a run that answered
            _record_failed()

    def _detach(self) -> None:
        if self._token is not None:
            detach(self._token)
            self._token = None


class DroppedRun(RunTrace):
    """A run the sampler dropped, with nothing else to record: its non-recording span is
    current while the run lasts (``token`` detaches it), so that whatever is traced under
    the run inherits the decision."""

    __slots__ = ()

    def __init__(self, token: Token[Context]) -> None:  # the rest is never read
        self._tel = None
        self.span = None
        self._token = token

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        detach(self._token)  # type: ignore[arg-type]


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


def route_attributes(event: Routed) -> dict[str, str | int | float]:
    """The run span's ``cascade.route.*`` attributes."""
    route = event.route
    attrs: dict[str, str | int | float] = {
        sc.CASCADE_ROUTE_ROUTER: route.router,
        sc.CASCADE_ROUTE_START_TIER: event.start_tier,
        sc.CASCADE_ROUTE_MAX_TIER: event.max_tier,
        sc.CASCADE_ROUTE_REASON: route.reason[:MAX_TEXT],
    }
    if route.score is not None:
        attrs[sc.CASCADE_ROUTE_SCORE] = route.score
    if route.variant is not None:
        attrs[sc.CASCADE_ROUTE_VARIANT] = route.variant
    return attrs


def _tier_path(attempts: Sequence[Attempt]) -> list[str]:
    path: list[str] = []
    for a in attempts:
        if not a.tier:
            continue  # the router's own calls: on cascade.route.*, not a tier tried
        if not path or path[-1] != a.tier_name:
            path.append(a.tier_name)
    return path


NOOP_RUN = RunTrace(None, None, None, [], None)
