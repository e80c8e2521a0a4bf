"""Hedged requests: when a tier's provider is slow to its first token, race a sibling.

The engine (``_engine.py``) calls :func:`race` instead of a plain attempt in a tier with a
``hedge`` table. The first call starts at once; if it has produced no text after the
hedge delay, the tier's next provider with headroom starts on the same request. The first
of the two to produce text is kept (its validation runs as usual); the other is cancelled,
which closes its connection, and is recorded as a ``cancelled`` attempt costed for its
prompt and whatever text it had sent.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from time import perf_counter
from typing import Any

from ._attempt import InFlight
from ._calls import ProviderCalls
from ._clock import SupportsTimers, timeout_after
from ._config import HedgeConfig
from ._records import RunState, failed_record
from ._tier import Tier
from ._types import Attempt, Message, RequestOptions
from .providers import Provider
from .resilience.limiter import Lease

__all__ = ["hedge_delay", "race"]


def hedge_delay(policy: HedgeConfig, recent_ttfts: Sequence[float] | None) -> float:
    """Seconds to wait for a first token before hedging: the configured percentile of
    recent times to first token once there are enough of them, else ``after_s``."""
    if policy.percentile is None or recent_ttfts is None or len(recent_ttfts) < policy.min_samples:
        return policy.after_s
    ordered = sorted(recent_ttfts)
    rank = math.ceil(policy.percentile / 100 * len(ordered)) - 1  # nearest-rank percentile
    return ordered[max(rank, 0)]


async def race(
    calls: ProviderCalls,
    run: RunState,
    tier: Tier,
    provider: Provider,
    lease: Lease | None,
    msgs: tuple[Message, ...],
    opts: RequestOptions,
    tried: set[str],
) -> Attempt | None:
    """``provider``'s attempt, hedged with a sibling if it is slow to its first token.

    A sibling taken as the hedge is added to ``tried`` (the tier does not call it again).
    Returns the kept call's Attempt, or None when every call it started failed.
    """
    policy = tier.hedge
    assert policy is not None
    first: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    flights: list[InFlight] = []
    tasks: list[asyncio.Task[Attempt | None]] = []

    def start(p: Provider, p_lease: Lease | None, *, hedge: bool) -> None:
        flight = InFlight(tier, p, perf_counter(), hedge=hedge)
        index = len(flights)

        def seen(chars: int) -> None:
            flight.received += chars
            if not first.done():
                first.set_result(index)

        flights.append(flight)
        tasks.append(
            asyncio.create_task(
                calls.attempt(run, tier, p, msgs, opts, p_lease, flight=flight, on_text=seen)
            )
        )

    start(provider, lease, hedge=False)
    try:
        delay = hedge_delay(policy, calls.ttft_windows.get(provider.name))
        done = await _wait(calls.timers, (tasks[0], first), delay)
        if not done:
            sibling = await _sibling(calls, tier, msgs, opts, tried)
            if sibling is not None and (first.done() or tasks[0].done()):
                if sibling[1] is not None:  # the first call answered meanwhile: unsent
                    sibling[1].release(used_tokens=0)
            elif sibling is not None:
                tried.add(sibling[0].name)
                run.tier_trace.hedge(sibling[0].name, delay)
                start(*sibling, hedge=True)
        winner = await _winner(tasks, first)
        losers: list[Provider] = []
        for task, flight in zip(tasks, flights, strict=True):
            if task is not winner and not task.done():
                name = winner_of(flights, tasks, winner)
                flight.trace.lost(name)  # its span ends, cancelled, in its own task
                task.cancel()
                await asyncio.wait((task,))
                if task.cancelled():
                    _record_loser(run, flight, msgs, name)
                    losers.append(flight.provider)
        result = None if winner is None else await winner
        for loser in losers:
            if result is not None:
                break
            # The kept call failed after its first token: the call given up for it is
            # the tier's best chance left, so it gets a turn of its own.
            again = await calls.reserve(loser, msgs, opts)
            if again is False:
                continue
            result = await calls.attempt(run, tier, loser, msgs, opts, again)
        return result
    finally:
        # Cancelled from outside (the run's deadline, the caller) or done: no call may
        # outlive the race. A cancelled call's flight stays in run.flights for the
        # deadline to record.
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


async def _wait(
    clock: SupportsTimers | None, aws: tuple[asyncio.Future[Any], ...], delay: float
) -> set[asyncio.Future[Any]]:
    """``asyncio.wait(aws, timeout=delay)``'s done set, the delay on ``clock`` if given
    (its timer holding no copy of the run's context: see ``_clock.timeout_at``)."""
    try:
        async with timeout_after(clock, delay):
            await asyncio.wait(aws)
    except TimeoutError:
        pass
    return {a for a in aws if a.done()}


async def _winner(
    tasks: list[asyncio.Task[Attempt | None]], first: asyncio.Future[int]
) -> asyncio.Task[Attempt | None] | None:
    """The call to keep: the first to produce text or to finish with an answer; a call
    that fails leaves the race to the other."""
    live = list(tasks)
    while len(live) > 1:
        waiting: list[asyncio.Future[Any]] = [*live, first]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if first.done():
            return tasks[first.result()]
        for task in [t for t in live if t.done()]:
            live.remove(task)
            if task.result() is not None:
                return task  # an answer without text
    return live[0] if live else None


def winner_of(
    flights: list[InFlight],
    tasks: list[asyncio.Task[Attempt | None]],
    winner: asyncio.Task[Attempt | None] | None,
) -> str:
    for flight, task in zip(flights, tasks, strict=True):
        if task is winner:
            return flight.provider.name
    return "another call"


async def _sibling(
    calls: ProviderCalls,
    tier: Tier,
    msgs: tuple[Message, ...],
    opts: RequestOptions,
    tried: set[str],
) -> tuple[Provider, Lease | None] | None:
    """The tier's next provider with a closed breaker and rate-limit headroom, leased."""
    for p in tier.providers:
        if p.name in tried or calls.breakers[p.name].state == "open":
            continue
        lease = await calls.reserve(p, msgs, opts)
        if lease is not False:
            return p, lease
    return None


def _record_loser(
    run: RunState,
    flight: InFlight,
    msgs: tuple[Message, ...],
    winner: str,
) -> None:
    """The cancelled call, costed for its prompt (if its request was sent, it is billed)
    and the text it sent (or the expected answer of a provider that does not stream); a
    call that had not sent one (waiting for its rate limit, or between two tries, its
    failed try recorded already) costs nothing more."""
    run.flights.remove(flight)
    if flight.completion is not None:  # its answer had come (and was costed): validating
        in_tokens = flight.completion.input_tokens
        out_tokens = flight.completion.output_tokens
        cost = flight.cost
    elif flight.phase == "sent":
        in_tokens, out_tokens, cost = run.charge_unanswered(
            flight, msgs, flight.received, cut_off=True
        )
    else:
        in_tokens = out_tokens = 0
        cost = 0.0
    lost = HedgeLost(f"cancelled: {winner} produced the first token (hedged request)")
    run.record(
        failed_record(
            flight.tier,
            flight.provider,
            flight.t0,
            lost,
            in_tokens=in_tokens,
            out_tokens=out_tokens,
            cost=cost,
            outcome="cancelled",
            hedge=flight.hedge,
        )
    )


class HedgeLost(Exception):
    """Why a hedged call was cancelled (its attempt's ``error_type``); never raised."""
