"""What a run records: an attempt per provider call (or skipped tier), and the result.

Pure functions of what the engine observed; the engine (``_engine.py``) decides when
each is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Literal

import msgspec

from ._attempt import InFlight
from ._errors import ProviderError, ProviderStatusError
from ._judge import chosen
from ._telemetry import NOOP_RUN, NOOP_TIER, RunTrace, TierTrace
from ._tier import Tier
from ._types import (
    Attempt,
    Completion,
    Message,
    Result,
    Usage,
    Verdict,
    estimate_prompt_tokens,
    estimate_text_tokens,
)
from .engine._events import AttemptFinished, Delta, Event, Retracted
from .engine._stream import NO_SINK, Sink
from .providers import Provider
from .routing import RouteDecision

__all__ = [
    "RunState",
    "attempt_record",
    "best_attempt",
    "failed_record",
    "quota_used",
    "result_of",
    "unanswered_tokens",
]


def attempt_record(
    flight: InFlight, completion: Completion, verdicts: tuple[Verdict, ...], passed: bool
) -> Attempt:
    samples = tuple(flight.samples)
    in_tokens, out_tokens = completion.input_tokens, completion.output_tokens
    for sample in samples:
        in_tokens += sample.input_tokens
        out_tokens += sample.output_tokens
    return Attempt(
        tier=flight.tier.index,
        tier_name=flight.tier.name,
        provider=flight.provider.name,
        model=flight.provider.model,
        outcome="accepted" if passed else "rejected",
        verdicts=verdicts,
        cost_usd=flight.cost,
        input_tokens=in_tokens,
        output_tokens=out_tokens,
        latency_s=perf_counter() - flight.t0,
        ttft_s=completion.ttft_s,
        completion=completion,
        samples=samples,
        hedge=flight.hedge,
    )


def failed_record(
    tier: Tier,
    provider: Provider,
    t0: float,
    exc: Exception,
    *,
    in_tokens: int = 0,
    out_tokens: int = 0,
    cost: float = 0.0,
    outcome: Literal["failed", "cancelled"] = "failed",
    hedge: bool = False,
) -> Attempt:
    return Attempt(
        tier=tier.index,
        tier_name=tier.name,
        provider=provider.name,
        model=provider.model,
        outcome=outcome,
        error_type=type(exc).__name__,
        error=str(exc),
        status=exc.status if isinstance(exc, ProviderStatusError) else None,
        latency_s=perf_counter() - t0,
        cost_usd=cost,
        input_tokens=in_tokens,
        output_tokens=out_tokens,
        hedge=hedge,
    )


def best_attempt(attempts: list[Attempt]) -> Attempt | None:
    """The rejected attempt to fall back on: highest validator score, then highest tier."""
    found: Attempt | None = None
    for a in attempts:
        if a.completion is None or a.completion.finish_reason == "rejected_early":
            continue  # nothing, or a fragment cut off by an early rejection
        if not a.tier:
            continue  # the router's own call (tier 0): a rating, not an answer
        if found is None or (a.score, a.tier) >= (found.score, found.tier):
            found = a
    return found


def result_of(
    attempts: list[Attempt],
    attempt: Attempt,
    *,
    spent: float,
    t0: float,
    validated: bool,
    route: RouteDecision | None = None,
) -> Result:
    """The Result returning ``attempt``'s answer; cost and usage cover every attempt."""
    assert attempt.completion is not None
    completion = chosen(attempt.verdicts, attempt.completion)
    if len(attempts) == 1:
        usage = Usage(input_tokens=attempt.input_tokens, output_tokens=attempt.output_tokens)
    else:
        usage = Usage(
            input_tokens=sum(a.input_tokens for a in attempts),
            output_tokens=sum(a.output_tokens for a in attempts),
        )
    parsed = None
    for verdict in attempt.verdicts:
        if verdict.passed and verdict.parsed is not None:
            parsed = verdict.parsed
            break
    return Result(
        text=completion.text,
        parsed=parsed,
        tier=attempt.tier,
        tier_name=attempt.tier_name,
        provider=attempt.provider,
        model=attempt.model,
        cost_usd=spent,
        usage=usage,
        latency_s=perf_counter() - t0,
        attempts=tuple(attempts),
        validated=validated,
        finish_reason=completion.finish_reason,
        variant=completion.variant,
        answer=completion.answer,
        refusal=completion.refusal,
        route=route,
    )


def unanswered_tokens(
    flight: InFlight, msgs: tuple[Message, ...], received_chars: int, *, cut_off: bool
) -> tuple[int, int]:
    """(input, output) tokens a call sent without an answer is billed, as far as we can
    tell: the prompt's estimate, and the text that arrived (about 4 characters a token).
    A call we cut off (a deadline, a caller that left, a hedge that lost) is billed at
    least ``flight.cut_off_tokens`` of output: the expected answer of a provider that
    does not stream, which generates it whether or not anyone reads it. A streamed call
    stops being generated when its connection closes: the text that arrived is it. Its
    rate-limit lease and its cost are settled with the same figures."""
    out_tokens = estimate_text_tokens(received_chars)
    if cut_off:
        out_tokens = max(out_tokens, flight.cut_off_tokens)
    return estimate_prompt_tokens(msgs), out_tokens


def quota_used(flight: InFlight, msgs: tuple[Message, ...], exc: ProviderError | None) -> int:
    """What a call that ended without reported usage used of its provider's token quota
    (its rate-limit lease), costed as :func:`unanswered_tokens` costs it: nothing if its
    request was not sent, else the prompt's estimate and the text that arrived; a call
    cancelled (``exc`` None) also its expected answer if it does not stream."""
    if flight.phase != "sent":
        return 0
    received = flight.received if exc is None else exc.received_chars
    return sum(unanswered_tokens(flight, msgs, received, cut_off=exc is None))


class RunState(msgspec.Struct, eq=False):
    """Mutable state of one run; lives only for the duration of the run. (A Struct: built
    in C, once per run; a run with a sink says so: ``speculative`` from its mode, and
    ``listening``.)

    Its events go to its trace and its ``sink`` (:meth:`emit`); :meth:`record` is where
    every attempt is recorded, :meth:`charge` and :meth:`charge_unanswered` where every
    cost is added."""

    t0: float
    deadline_at: float | None  # on the Cascade's clock, for retry backoff
    sink: Sink = NO_SINK
    speculative: bool = False
    """Text goes to the sink as it arrives (else only the accepted answer's)."""
    listening: bool = False
    """Whether the sink hears every event (a :class:`~cascade.engine.Stream`). A trace
    (see :meth:`listen`) hears only those it records: each attempt's, an escalation, the
    router's decision and the last. When neither does, the engine builds none but the
    last."""
    shown: int = 0
    """Characters of text sent as deltas and not retracted (speculative mode)."""
    attempts: list[Attempt] = []
    spent: float = 0.0
    last_error: ProviderError | None = None
    flights: list[InFlight] = []
    """Attempts under way (two while a hedge races); a deadline records them."""
    trace: RunTrace = NOOP_RUN
    tier_trace: TierTrace = NOOP_TIER
    """The run's span and the span of the tier under way (``_telemetry``)."""
    route: RouteDecision | None = None
    """The router's decision, once asked (``engine/_route.py``)."""

    def charge(self, flight: InFlight, completion: Completion) -> float:
        """Charge an answer ``flight``'s provider sent (the attempt's, or a sample's): its
        cost goes on the run and on the attempt. Returns it."""
        cost = flight.provider.config.cost_usd(
            completion.input_tokens,
            completion.output_tokens,
            cache_read_tokens=completion.cache_read_tokens,
            cache_write_tokens=completion.cache_write_tokens,
        )
        self.spent += cost
        flight.cost += cost
        return cost

    def listen(self, trace: RunTrace) -> None:
        """The run's trace, started: it hears the events it records from now on (see
        :attr:`listening`), unless it has nothing to record (a run the sampler dropped,
        with no metrics or routing record to write: its span is only kept current, by
        the ``with`` around the run)."""
        if not trace.records:
            return
        self.trace = trace

    def emit(self, event: Event) -> None:
        """Tell the run's listeners: its trace (spans, metrics, routing record), then the
        sink."""
        trace = self.trace
        if trace is not NOOP_RUN:
            trace.observe(event)
        sink = self.sink
        if sink is not NO_SINK:
            sink.emit(event)

    def record(self, attempt: Attempt) -> None:
        """Record a finished attempt: the one place an attempt is added to the run. Text
        the call showed (speculative mode) is retracted unless it was accepted."""
        self.attempts.append(attempt)
        if self.listening or self.trace is not NOOP_RUN:
            self.emit(AttemptFinished(attempt=attempt))
        if self.shown and attempt.outcome != "accepted":
            self.retract(attempt, attempt.error or attempt.outcome)

    def retract(self, attempt: Attempt, reason: str) -> None:
        """Withdraw the text the deltas of ``attempt``'s call showed."""
        self.emit(
            Retracted(
                tier=attempt.tier, provider=attempt.provider, chars=self.shown, reason=reason[:200]
            )
        )
        self.shown = 0

    def delta_sender(self, flight: InFlight) -> Callable[[str], Awaitable[None] | None]:
        """What ``complete`` calls with each piece of ``flight``'s text, speculatively: None
        when the reader has room, else what to await until it has caught up."""
        offer = self.sink.offer
        tier, provider = flight.tier.index, flight.provider.name

        def on_delta(text: str) -> Awaitable[None] | None:
            self.shown += len(text)
            return offer(Delta(text=text, tier=tier, provider=provider))

        return on_delta

    def charge_unanswered(
        self,
        flight: InFlight,
        msgs: tuple[Message, ...],
        received_chars: int,
        *,
        cut_off: bool = False,
    ) -> tuple[int, int, float]:
        """Charge a call that ended without an answer after its prompt was sent (a stream
        that broke, a call cut off by the deadline or the caller, a hedge that lost): the
        prompt's estimate and about 4 characters a token of the text that arrived, on the
        run (the failed attempt's record carries it, not the flight: a retry's answer is
        another attempt). A call ``cut_off`` by us is billed at least
        ``flight.cut_off_tokens`` of output: a provider that does not stream answers in
        full (see :func:`unanswered_tokens`). Returns (input, output, cost)."""
        in_tokens, out_tokens = unanswered_tokens(flight, msgs, received_chars, cut_off=cut_off)
        cost = flight.provider.config.cost_usd(in_tokens, out_tokens)
        self.spent += cost
        flight.trace.charged(cost)
        return in_tokens, out_tokens, cost

    def failure(
        self, flight: InFlight, t0: float, exc: ProviderError, msgs: tuple[Message, ...]
    ) -> Attempt:
        """The record of ``flight``'s failed try (started at ``t0``); a stream that broke
        after text arrived is charged for it."""
        tier, provider = flight.tier, flight.provider
        if not exc.received_chars:
            return failed_record(tier, provider, t0, exc, hedge=flight.hedge)
        in_tokens, out_tokens, cost = self.charge_unanswered(flight, msgs, exc.received_chars)
        return failed_record(
            tier,
            provider,
            t0,
            exc,
            in_tokens=in_tokens,
            out_tokens=out_tokens,
            cost=cost,
            hedge=flight.hedge,
        )

    def cut_off(
        self,
        msgs: tuple[Message, ...],
        exc: Exception,
        outcome: Literal["failed", "cancelled"],
    ) -> None:
        """Record the calls under way when the run was cut off (its deadline, or the
        caller leaving), each costed for what it was sent and had received: a request
        sent is billed its prompt, text or not, and (from a provider that does not stream)
        its expected answer, generated whether or not we wait for it. A call between two
        tries (its failed try recorded, waiting out its backoff) has nothing under way and
        leaves no record."""
        for flight in self.flights:
            completion = flight.completion
            if completion is None:
                if flight.phase == "backoff":
                    continue
                in_tokens = out_tokens = 0
                cost = 0.0
                if flight.phase == "sent":
                    in_tokens, out_tokens, cost = self.charge_unanswered(
                        flight, msgs, flight.received, cut_off=True
                    )
                attempt = failed_record(
                    flight.tier,
                    flight.provider,
                    flight.t0,
                    exc,
                    in_tokens=in_tokens,
                    out_tokens=out_tokens,
                    cost=cost,
                    outcome=outcome,
                    hedge=flight.hedge,
                )
            else:
                # The answer arrived (and was paid for); validation had not finished.
                attempt = msgspec.structs.replace(
                    attempt_record(flight, completion, (), passed=False),
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
                if outcome == "cancelled":
                    attempt = msgspec.structs.replace(attempt, outcome=outcome)
            self.record(attempt)
        self.flights.clear()

    def result(self, attempt: Attempt, *, validated: bool) -> Result:
        return result_of(
            self.attempts,
            attempt,
            spent=self.spent,
            t0=self.t0,
            validated=validated,
            route=self.route,
        )
