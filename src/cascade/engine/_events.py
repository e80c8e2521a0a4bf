"""What a run emits, in order: the engine's events.

A run is a stream of these. :meth:`Cascade.stream <cascade.Cascade.stream>` hands them to
the caller; :meth:`Cascade.run <cascade.Cascade.run>` reads the same stream to its end and
returns the :class:`Finished` event's result (or raises the :class:`Failed` event's error).

    Routed               the router's decision and the tier range it gives (with a router:
                         after the router's own calls, if any; before the first tier)
    TierStarted          a tier is tried (after any Escalated from the tier before it)
      AttemptStarted     a provider call (each retry try, each hedge) starts
      Delta*             answer text: accepted text ("buffered"), or as it arrives
      AttemptFinished    the call's Attempt record: outcome, verdicts, tokens, cost
      Retracted          the text this call's Deltas showed is withdrawn ("speculative")
    Escalated            the tier ended unaccepted and the next tier is tried, and why
    Finished | Failed    the last event: the Result, or the RunError
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from .._errors import RunError
from .._types import Attempt, Result
from ..routing import RouteDecision

__all__ = [
    "AttemptFinished",
    "AttemptStarted",
    "Delta",
    "Escalated",
    "EscalationReason",
    "Event",
    "Failed",
    "Finished",
    "Retracted",
    "Routed",
    "StreamMode",
    "TierStarted",
]

StreamMode = Literal["buffered", "speculative"]
EscalationReason = Literal["rejected", "failed", "over_budget", "quality_open"]


class Routed(msgspec.Struct, frozen=True, kw_only=True):
    """The cascade's router decided, before the first tier: the run tries tiers
    ``start_tier`` to ``max_tier`` (1-based, the range the decision gives within the
    cascade's). A router that failed (raised, timed out, answered out of range) has a
    ``route`` naming the failure in its ``reason`` and the cascade's whole range."""

    route: RouteDecision
    start_tier: int
    start_tier_name: str
    max_tier: int
    max_tier_name: str


class TierStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The run tries a tier (``tier`` is 1-based, as :class:`~cascade.Attempt` counts)."""

    tier: int
    tier_name: str


class AttemptStarted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A call to ``provider`` starts: try ``retry`` (0 the first), a hedge if ``hedge``."""

    tier: int
    tier_name: str
    provider: str
    model: str
    retry: int = 0
    hedge: bool = False


class Delta(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A piece of answer text from ``provider``. With ``mode="buffered"`` only text of the
    answer the run returns, once its tier accepted it; with ``mode="speculative"`` text as
    it arrives, which a later :class:`Retracted` may withdraw."""

    text: str
    tier: int
    provider: str


class AttemptFinished(msgspec.Struct, frozen=True, kw_only=True):
    """A call ended (accepted, rejected, failed, cancelled) or a tier was skipped
    (``skipped``): its :class:`~cascade.Attempt`, costed."""

    attempt: Attempt


class Retracted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The ``chars`` characters of text this call's deltas showed are withdrawn: the answer
    was rejected, its stream failed, or the validators chose another sample. Only with
    ``mode="speculative"``; the next deltas start a new answer."""

    tier: int
    provider: str
    chars: int
    reason: str


class Escalated(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The run leaves ``from_tier`` for ``to_tier``: its answers were ``rejected``, every
    provider ``failed``, or it was skipped as ``over_budget`` or because its quality
    breaker is open (``quality_open``); ``detail`` says more (the failing validators'
    reasons, the last error). ``repair``: ``to_tier`` is sent the rejected answer and the
    reasons to fix (its ``repair`` option)."""

    from_tier: int
    from_tier_name: str
    to_tier: int
    to_tier_name: str
    reason: EscalationReason
    detail: str = ""
    repair: bool = False


class Finished(msgspec.Struct, frozen=True, kw_only=True):
    """The last event of a run that returns an answer."""

    result: Result


class Failed(msgspec.Struct, frozen=True, kw_only=True):
    """The last event of a run that returns no answer: the error ``run()`` raises."""

    error: RunError


Event: TypeAlias = (
    Routed
    | TierStarted
    | AttemptStarted
    | Delta
    | AttemptFinished
    | Retracted
    | Escalated
    | Finished
    | Failed
)
"""Any event of a run."""
