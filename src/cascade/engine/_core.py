"""The engine: policy over providers, as a stream of events. Tiers in order, failover
within a tier, validators, escalation, budget and deadline.

:meth:`Engine.execute` runs one request and tells its :class:`~._stream.Sink` everything
that happens (:mod:`._events`), ending with :class:`~._events.Finished` or
:class:`~._events.Failed`. ``Cascade.run`` and ``Cascade.stream`` are both this one path:
``run`` hands it a sink that keeps nothing and returns the last event's result. What a
tier or a run comes to without an accepted answer is :mod:`._outcomes`'s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextvars import Token
from time import perf_counter

import msgspec

from .._calls import ProviderCalls
from .._clock import timeout_after
from .._config import Config
from .._errors import (
    RunError,
)
from .._hedge import race
from .._judge import chosen
from .._records import RunState, best_attempt, failed_record
from .._telemetry import Telemetry
from .._telemetry._context import detach
from .._telemetry._spans import NOOP_RUN
from .._tier import Tier
from .._timeouts import ClockLane, TimeoutLane, expiring
from .._types import Attempt, Message, RequestOptions, Result
from ..providers import Provider
from ..resilience.limiter import LimiterTimeout
from ..resilience.quality import QUALITY_OPEN, QualityBreaker
from ..routing import Router
from ._events import Delta, Escalated, EscalationReason, Failed, Finished, TierStarted
from ._outcomes import deadline_exceeded, exhausted, over_budget, quality_skip, tier_outcome
from ._repair import rejected_draft, repair_messages
from ._route import ask_router
from ._stream import NO_SINK, Sink

__all__ = ["Engine", "Plan", "tier_outcome"]

PIECE_CHARS = 4096
"""An accepted answer goes to a buffered stream in pieces of at most this many characters."""

_MAX_LANES = 16
"""Run deadline lengths with a lane each (a route's cap, a few per-call values); a run
whose length finds none gets ``asyncio.timeout``'s timer of its own."""


class Plan(msgspec.Struct, frozen=True, gc=False):
    """One request, checked: what the engine runs. (A Struct: built in C, once per run.)"""

    msgs: tuple[Message, ...]
    opts: RequestOptions
    tiers: Sequence[Tier]
    budget: float | None
    deadline: float | None
    router: Router | None = None
    """Asked before the first tier (None: no router, or the call chose its tiers)."""


class RunCancelled(Exception):
    """Why a call under way when the caller left was cut off (its attempt's
    ``error_type``); never raised."""


class Engine:
    """Runs requests through a Cascade's tiers (built and opened by the Cascade)."""

    __slots__ = ("_lanes", "calls", "config", "router_timeout_s", "telemetry")

    def __init__(
        self,
        config: Config,
        calls: ProviderCalls,
        telemetry: Telemetry,
        *,
        router_timeout_s: float | None = None,
    ) -> None:
        self.config = config
        self.calls = calls
        self.telemetry = telemetry
        self.router_timeout_s = (
            config.router_timeout_s if router_timeout_s is None else router_timeout_s
        )
        self._lanes: dict[float, TimeoutLane] = {}  # run deadlines, by length

    async def execute(self, plan: Plan, sink: Sink) -> Finished | Failed:
        """Run ``plan``, emitting its events to ``sink``; the last one is also returned.

        A cancelled run (the caller left) records the calls under way as ``cancelled``
        attempts, costed, before the cancellation goes on up."""
        deadline = plan.deadline
        at = None if deadline is None else self.calls.clock.monotonic() + deadline
        if sink is NO_SINK:
            run = RunState(perf_counter(), at)
        else:
            run = RunState(perf_counter(), at, sink, sink.mode == "speculative", sink.hears_all)
            sink.attach(run.attempts)
        trace = self.telemetry.begin(
            run.attempts, plan.opts, max_cost_usd=plan.budget, deadline_s=deadline
        )
        try:
            if trace is NOOP_RUN:  # nothing is traced or measured: no span to end
                return await self._finish(run, plan)
            if type(trace) is Token:
                # A run the sampler dropped, with nothing else to record: its span is
                # current while the run lasts (what runs under it inherits the decision).
                try:
                    return await self._finish(run, plan)
                finally:
                    detach(trace)
            # The run's span (a child of the caller's), ended with its routing record:
            # the trace sees the Finished event, or the error as the run leaves it.
            with trace:
                run.listen(trace)
                return await self._finish(run, plan)
        except RunError as exc:
            # Built and returned without a local: the error's traceback holds this frame,
            # and a local holding the error would make a cycle of them (with the sink and
            # everything the caller's answer holds) for the garbage collector to find.
            # Nor may the frames hold the sink (here, and through the run in the frames
            # below): a stream whose reader left early keeps the Failed event unread.
            run.sink = NO_SINK
            try:
                return _failed(sink, exc)
            finally:
                del sink

    async def _finish(self, run: RunState, plan: Plan) -> Finished:
        """The run's tiers, to its Finished event (told to its listeners)."""
        try:
            # No deadline (the common case): one frame less on every resumption.
            within = self._tiers if plan.deadline is None else self._within
            end = Finished(result=await within(run, plan))
        except asyncio.CancelledError:
            exc = RunCancelled("cancelled: the caller stopped the run")
            run.cut_off(plan.msgs, exc, "cancelled")
            raise
        finally:
            # The provider error's traceback holds the frames (and so this run) it left:
            # kept here, it made a cycle of them for the garbage collector to find.
            run.last_error = None
        run.emit(end)
        sink = run.sink
        if sink is not NO_SINK:
            # A reader takes the result before the run's span and routing record are
            # written (a gateway sends its response first).
            await sink.taken(end)
        return end

    async def _within(self, run: RunState, plan: Plan) -> Result:
        """The tiers, within the run's deadline."""
        deadline = plan.deadline
        if deadline is None:
            return await self._tiers(run, plan)
        lane = self._lane(deadline)
        if lane is not None:
            # The deadline's lane: one loop timer for every run of this length (see
            # _timeouts.py), asyncio.timeout's behaviour exactly.
            at = lane.enter()
            try:
                result = await self._tiers(run, plan)
            except BaseException as exc:
                fired = expiring(at)
                try:
                    lane.exit(at, exc)  # TimeoutError (from exc) once the deadline passed
                except TimeoutError:
                    pass
                else:
                    if not (fired and isinstance(exc, TimeoutError)):
                        raise  # not our deadline: a bug in a provider or validator
                result = deadline_exceeded(run, deadline, plan.msgs, self.config)
            else:
                lane.exit(at, None)
                return result
        else:
            timeout = timeout_after(self.calls.timers, deadline)
            try:
                async with timeout:
                    return await self._tiers(run, plan)
            except TimeoutError:
                if not timeout.expired():
                    raise  # not our deadline: a bug in a provider or validator
                result = deadline_exceeded(run, deadline, plan.msgs, self.config)
        if run.sink.mode is not None:
            await _release_fallback(run)  # the deadline's fallback answer, read at its pace
        return result

    async def _tiers(self, run: RunState, plan: Plan) -> Result:
        attempts = run.attempts
        # No local holds the sink: a failed run's error holds this frame (its traceback),
        # and a stream whose reader left early holds the error (unread): a cycle.
        traced = run.trace is not NOOP_RUN  # else every span of the run is a no-op
        # a tier left unaccepted: it, why, the detail, where its attempts start
        left: tuple[Tier, EscalationReason, str, int] | None = None
        tiers: Sequence[Tier] = plan.tiers
        if plan.router is not None:
            tiers = await ask_router(
                plan.router,
                run=run,
                calls=self.calls,
                tiers=tiers,
                msgs=plan.msgs,
                opts=plan.opts,
                budget=plan.budget,
                timeout_s=self.router_timeout_s,
                estimate_output_tokens=self.config.estimate_output_tokens,
            )
        for tier in tiers:
            msgs = plan.msgs
            if left is not None:
                repair = False
                if tier.repair and left[1] == "rejected":
                    draft = rejected_draft(attempts, left[3])
                    if draft is not None:
                        msgs = repair_messages(msgs, draft)
                        repair = True
                if run.listening or traced:
                    escalated = Escalated(
                        from_tier=left[0].index,
                        from_tier_name=left[0].name,
                        to_tier=tier.index,
                        to_tier_name=tier.name,
                        reason=left[1],
                        detail=left[2],
                        repair=repair,
                    )
                    run.emit(escalated)
            if run.listening:  # the sink's alone: a trace starts its tier span itself
                run.sink.emit(TierStarted(tier=tier.index, tier_name=tier.name))
            first = len(attempts)
            # The tier's span; its outcome, and the escalation, come from its attempts.
            if traced:
                run.tier_trace = run.trace.tier(tier)
            try:
                if tier.quality is None:
                    attempt = await self._tier(run, tier, plan, msgs)
                else:
                    attempt = await self._judged(run, tier, plan, msgs, tier.quality)
            finally:
                if traced:
                    run.tier_trace.end(tier_outcome(attempts, first)[0])
            if attempt is not None and attempt.outcome == "accepted":
                result = run.result(attempt, validated=True)
                if run.sink.mode is not None:
                    await _release(run, attempt)
                return result
            outcome, detail = tier_outcome(attempts, first)
            if attempt is None and outcome != "skipped" and self.config.on_outage == "error":
                break  # every provider failed: an outage, which must not escalate the bill
            # rejected by a validator, or every provider failed: escalate to the next tier
            left = None
            if outcome != "none" and outcome != "accepted":
                reason: EscalationReason = "failed"
                if outcome == "skipped":
                    skipped_by = attempts[-1].error_type
                    reason = "quality_open" if skipped_by == QUALITY_OPEN else "over_budget"
                elif outcome == "rejected":
                    reason = "rejected"
                left = (tier, reason, detail, first)
        result = exhausted(run, self.config)
        if run.sink.mode is not None:
            await _release_fallback(run)
        return result

    async def _judged(
        self,
        run: RunState,
        tier: Tier,
        plan: Plan,
        msgs: tuple[Message, ...],
        quality: QualityBreaker,
    ) -> Attempt | None:
        """:meth:`_tier` under the tier's quality breaker: skipped while it is open, and
        the validators' verdict on the tier's answer (only that) reported to it."""
        admission = quality.admit()
        if admission is None:
            run.tier_trace.quality_skipped(quality.state, quality.retry_in_s())
            run.record(quality_skip(tier, quality))
            return None
        probe = admission == "probe"
        passed: bool | None = None
        try:
            attempt = await self._tier(run, tier, plan, msgs)
            if attempt is not None and attempt.error_type is None:
                passed = attempt.outcome == "accepted"  # accepted or rejected: a verdict
        finally:
            # Recorded here, inside the tier's span, where the transition's event goes.
            if passed is None:
                quality.release(probe=probe)
            else:
                quality.record(passed, probe=probe)
        return attempt

    async def _tier(
        self, run: RunState, tier: Tier, plan: Plan, msgs: tuple[Message, ...]
    ) -> Attempt | None:
        """The tier's answer (accepted or rejected), or None when every provider failed
        or the tier was skipped as over budget. ``msgs``: the plan's, or a repair's."""
        opts, calls = plan.opts, self.calls
        limiters = calls.limiters
        if plan.budget is not None:
            skip = over_budget(tier, msgs, opts, plan.budget - run.spent, self.config)
            if skip is not None:
                run.record(skip)
                return None
        attempt = None
        busy: list[Provider] = []  # no headroom in their rate limits right now
        tried: set[str] = set()  # taken as hedges
        for provider in tier.providers:
            if provider.name in tried:
                continue
            # No rate limit (the common case): no lease, and no coroutine to ask for none.
            lease = None
            if provider.name in limiters:
                lease = await calls.reserve(provider, msgs, opts)
            if lease is False:
                busy.append(provider)  # a sibling with headroom goes first
                run.tier_trace.limiter_busy(provider.name)
                continue
            if tier.hedge is None:
                attempt = await calls.attempt(run, tier, provider, msgs, opts, lease)
            else:
                tried.add(provider.name)
                attempt = await race(calls, run, tier, provider, lease, msgs, opts, tried)
            if attempt is not None:
                return attempt
        if tried:
            busy = [p for p in busy if p.name not in tried]
        if busy:
            # Every provider with headroom failed or none had any: wait, in fair order and
            # never past the deadline, for the first busy one.
            provider = busy[0]
            t0 = perf_counter()
            try:
                waited = await calls.acquire(provider, msgs, opts, deadline=run.deadline_at)
            except LimiterTimeout as exc:
                run.tier_trace.limiter_wait(provider.name, perf_counter() - t0, acquired=False)
                run.last_error = exc
                run.record(failed_record(tier, provider, t0, exc))
            else:
                run.tier_trace.limiter_wait(provider.name, perf_counter() - t0, acquired=True)
                attempt = await calls.attempt(run, tier, provider, msgs, opts, waited)
        return attempt

    def _lane(self, length: float) -> TimeoutLane | ClockLane | None:
        """The lane of run deadlines of ``length`` (None: too many lengths already; the
        run gets a timer of its own). On a clock that runs timers (``FakeClock``), a
        timer on it."""
        timers = self.calls.timers
        if timers is not None:
            return ClockLane(timers, length)
        lane = self._lanes.get(length)
        if lane is None and len(self._lanes) < _MAX_LANES:
            lane = self._lanes[length] = TimeoutLane(length)
        return lane

    def close(self) -> None:
        """The Cascade is closing: the deadlines' timers go with the runs under way."""
        for lane in self._lanes.values():
            lane.close()


def _failed(sink: Sink, error: RunError) -> Failed:
    end = Failed(error=error)
    sink.emit(end)
    return end


async def _release_fallback(run: RunState) -> None:
    """``on_exhausted = "best"``: the run returns a rejected answer (``validated`` False);
    its text goes to the reader too, so that the deltas always spell ``Finished``'s text."""
    best = best_attempt(run.attempts)
    if best is not None and best.completion is not None:
        await _release(run, best)


async def _release(run: RunState, attempt: Attempt) -> None:
    """Send the accepted answer's text to the sink, unless its deltas already showed it
    (speculative mode, the text the validators accepted)."""
    assert attempt.completion is not None
    completion = chosen(attempt.verdicts, attempt.completion)
    if run.shown:
        if completion is attempt.completion:
            return
        run.retract(attempt, "the validators chose another answer")
    text = completion.text
    offer = run.sink.offer
    tier, provider = attempt.tier, attempt.provider
    for i in range(0, len(text), PIECE_CHARS):
        wait = offer(Delta(text=text[i : i + PIECE_CHARS], tier=tier, provider=provider))
        if wait is not None:
            await wait
