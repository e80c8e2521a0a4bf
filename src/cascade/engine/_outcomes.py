"""How a tier or a run ends without an accepted answer: a tier's outcome (and why) from
the attempts it added, the records of a tier skipped (over budget, its quality breaker
open), and what a run exhausted or out of time returns or raises.

The engine's tier loop (:mod:`._core`) asks these when a tier did not accept; the
tracing of a tier (its span's outcome) and a router's calls (:mod:`._route`) read
:func:`tier_outcome` too.
"""

from __future__ import annotations

from typing import Literal

from .._config import Config
from .._errors import AllProvidersFailed, BudgetExceeded, CascadeExhausted, DeadlineExceeded
from .._records import RunState, best_attempt
from .._tier import Tier
from .._types import Attempt, Message, RequestOptions, Result, estimate_prompt_tokens
from ..resilience.quality import QUALITY_OPEN, QualityBreaker

__all__ = ["deadline_exceeded", "exhausted", "over_budget", "quality_skip", "tier_outcome"]

_MAX_DETAIL = 500  # as reasons on spans


def over_budget(
    tier: Tier, msgs: tuple[Message, ...], opts: RequestOptions, left: float, config: Config
) -> Attempt | None:
    """The record of a tier skipped because its estimated cost passes the ``left`` of
    the run's budget; None when it fits."""
    provider = tier.providers[0]
    in_tokens = estimate_prompt_tokens(msgs)
    out_tokens = opts.max_tokens or provider.config.max_tokens or config.estimate_output_tokens
    estimate = provider.config.cost_usd(in_tokens, out_tokens) * tier.calls
    if estimate <= left:
        return None
    return _skipped(
        tier, "BudgetExceeded", f"estimated ${estimate:.6f} exceeds the ${max(left, 0.0):.6f} left"
    )


def _skipped(tier: Tier, error_type: str, error: str) -> Attempt:
    """The record of ``tier`` skipped (at its first provider), and why."""
    provider = tier.providers[0]
    return Attempt(
        tier=tier.index,
        tier_name=tier.name,
        provider=provider.name,
        model=provider.model,
        outcome="skipped",
        error_type=error_type,
        error=error,
    )


def exhausted(run: RunState, config: Config) -> Result:
    """No tier accepted an answer: the best rejected one (``on_exhausted = "best"``),
    else the error that says why."""
    best = best_attempt(run.attempts)
    if best is not None and config.on_exhausted == "best":
        return run.result(best, validated=False)
    # (no best but a rejection: only early-rejected fragments, nothing to fall back on)
    if best is not None or any(a.outcome == "rejected" for a in run.attempts):
        raise CascadeExhausted(
            f"no answer passed validation in {len(run.attempts)} attempts",
            attempts=run.attempts,
        )
    if any(a.outcome == "skipped" and a.error_type != QUALITY_OPEN for a in run.attempts):
        raise BudgetExceeded(
            "no affordable tier produced an answer within max_cost_usd", attempts=run.attempts
        )
    tried = [a for a in run.attempts if a.tier]  # not the router's own calls
    if tried and all(a.error_type == QUALITY_OPEN for a in tried):
        raise AllProvidersFailed(
            f"every tier was skipped: its quality breaker is open ({len(tried)} tiers)",
            attempts=run.attempts,
        )
    raise AllProvidersFailed(
        f"every provider failed ({len(run.attempts)} attempts); last: {run.last_error}",
        attempts=run.attempts,
    ) from run.last_error


def deadline_exceeded(
    run: RunState, deadline: float, msgs: tuple[Message, ...], config: Config
) -> Result:
    """The run's deadline passed: the calls under way recorded as failed, then the best
    rejected answer (``on_exhausted = "best"``), else ``DeadlineExceeded``."""
    exc = DeadlineExceeded(f"deadline of {deadline}s reached", attempts=())
    run.cut_off(msgs, exc, "failed")
    best = best_attempt(run.attempts)
    if best is not None and config.on_exhausted == "best":
        return run.result(best, validated=False)
    raise DeadlineExceeded(
        f"deadline of {deadline}s reached after {len(run.attempts)} attempts",
        attempts=run.attempts,
    )


def quality_skip(tier: Tier, quality: QualityBreaker) -> Attempt:
    """The record of a tier skipped because its quality breaker is open."""
    rate = quality.pass_rate
    seen = "" if rate is None else f": {rate:.0%} of its last {quality.samples} answers passed"
    if quality.state == "open":
        when = f"next probe in {quality.retry_in_s():.3g}s"
    else:
        when = "a probe is under way"
    return _skipped(tier, QUALITY_OPEN, f"quality breaker {quality.state}{seen}; {when}")


def tier_outcome(
    attempts: list[Attempt], first: int
) -> tuple[Literal["accepted", "rejected", "skipped", "failed", "none"], str]:
    """A tier's outcome from the attempts it added (from ``first`` on), and why: the
    failing validators' reasons, or the last error."""
    if len(attempts) > first and attempts[-1].outcome == "accepted":
        return "accepted", ""  # the common case, without a copy of the list
    found: Literal["accepted", "rejected", "skipped", "failed", "none"] = "none"
    detail = ""
    for a in attempts[first:]:
        outcome = a.outcome
        if outcome == "cancelled":
            continue  # a hedge that lost: not why the tier escalated
        if outcome == "accepted":
            return "accepted", ""
        if outcome == "rejected":
            if found != "rejected":
                found = "rejected"
                failing = [v for v in a.verdicts if not v.passed]
                detail = "; ".join(f"{v.validator}: {v.reason}" for v in failing)
        elif found in ("none", "failed", "skipped"):
            found = outcome
            detail = a.error or a.error_type or ""
    return found, detail[:_MAX_DETAIL]
