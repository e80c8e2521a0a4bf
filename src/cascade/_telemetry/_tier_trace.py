"""A tier's span, ``cascade.tier {name}``: the calls it makes (each a ``chat {model}``
span), its retries, waits, hedges and skips as events, and its outcome as its status."""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import Token
from typing import TYPE_CHECKING

from opentelemetry.context import Context
from opentelemetry.trace import Span, Status, StatusCode

from . import _semconv as sc
from ._attempts import (
    NOOP_ATTEMPT,
    AttemptTrace,
    error_type,
    start_attempt,
)
from ._attributes import end_span, set_attributes
from ._context import detach, use_span
from ._provider_info import ProviderLike, TierLike

if TYPE_CHECKING:
    from .._types import Message, RequestOptions
    from ._spans import RunTrace

__all__ = ["NOOP_TIER", "TierTrace"]

_OK = Status(StatusCode.OK)
_FAILED_TIER = {"failed": "every provider failed", "none": "no call ended"}
"""Tier outcomes whose span ends in ERROR (no call ended: the run was cut off), with the
status message. A rejected answer is the tier doing its work, not an error: the run
escalates (the span is OK under OpenInference's conventions, else its status is unset)."""


class TierTrace:
    """One tier's span, ended with the tier's outcome (decided by the engine)."""

    __slots__ = ("_run", "_token", "span", "tier")

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
        tier = self.tier
        assert tier is not None
        key = (tier.index, provider.name)
        info = tel._providers.get(key)
        if info is None:
            info = tel.provider_info(tier, provider)
        if self.span is None:  # the run is not traced: metrics only
            call = AttemptTrace(tel, info, None, None)
        else:
            number = len(run.attempts) + 1
            call = start_attempt(
                tel, info, messages, options, self.span, number, retry, None, hedge=hedge
            )
        pending = run._calls.get(key)
        if pending is None:
            run._calls[key] = call
        else:  # another call of this provider is under way (a router's, at once)
            run._calls[key] = [*pending, call] if isinstance(pending, list) else [pending, call]
        return call

    def made_current(self) -> Token[Context] | None:
        """Make this tier's span current in the calling task (a router's call, which may
        run in a task of the router's own); :meth:`detach` the token in the same task."""
        return None if self.span is None else use_span(self.span)

    @staticmethod
    def detach(token: Token[Context] | None) -> None:
        if token is not None:
            detach(token)

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

    def quality_skipped(self, state: str, retry_in_s: float) -> None:
        """The tier is skipped: its quality breaker is ``state`` (open, or half-open with
        its probe out), a probe allowed in ``retry_in_s``."""
        if self.span is not None:
            self.span.add_event(
                sc.EVENT_QUALITY_SKIP,
                {sc.CASCADE_QUALITY_STATE: state, sc.CASCADE_QUALITY_RETRY_IN_S: retry_in_s},
            )

    def hedge(self, provider: str, delay_s: float) -> None:
        """A hedged request to ``provider`` started ``delay_s`` after the first one."""
        if self.span is not None:
            self.span.add_event(
                sc.EVENT_HEDGE, {sc.CASCADE_PROVIDER: provider, sc.CASCADE_HEDGE_DELAY_S: delay_s}
            )

    def end(self, outcome: str) -> None:
        """The tier ended: ``outcome`` is accepted, rejected, skipped, failed or none.
        Its span's status is ERROR for the last two; otherwise OK under OpenInference's
        conventions (as its instrumentations set it), else left unset, as OpenTelemetry
        asks of instrumentation (the run span alone reports OK there)."""
        run = self._run
        if run is None:
            return
        self._run = None  # once
        span = self.span
        if span is not None:
            set_attributes(span, {sc.CASCADE_TIER_OUTCOME: outcome})
            failed = _FAILED_TIER.get(outcome)
            if failed is not None:
                span.set_status(Status(StatusCode.ERROR, failed))
            elif run._tel is not None and run._tel.openinference:
                span.set_status(_OK)
            if self._token is not None:
                detach(self._token)
                self._token = None
            end_span(span)


NOOP_TIER = TierTrace(None, None, None, None)
