"""What a router is given and what it returns: the shared vocabulary of pre-routing.

A router looks at a request before any model answers and says where the cascade should
start and stop; the engine then runs the tiers in that range, and validators still
escalate inside it::

    class ShortFirst:
        name = "short_first"

        async def route(self, request: RouteRequest) -> RouteDecision:
            text = request.messages[-1].content
            if len(text) < 200:
                return RouteDecision(max_tier=2, reason="short prompt", router=self.name)
            return RouteDecision()  # no opinion: the cascade's own range
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol, TypeAlias, runtime_checkable

import msgspec

from .._types import Completion, Message, RequestOptions

__all__ = [
    "CompleteFn",
    "RouteDecision",
    "RouteRequest",
    "Router",
    "TierInfo",
    "UsesProviders",
    "is_no_opinion",
]

CompleteFn: TypeAlias = Callable[
    [str, Sequence[Message], RequestOptions | None], Awaitable[Completion | None]
]
"""``complete(provider_name, messages, options)``: see :attr:`RouteRequest.complete`."""


class RouteDecision(msgspec.Struct, frozen=True, kw_only=True):
    """Where a request starts and stops, decided before any model answers.

    A decision with neither ``start_tier`` nor ``max_tier`` is "no opinion": the run keeps
    the cascade's (or the call's) own range, and a composition (``first_of``) asks the
    next router.
    """

    start_tier: int | None = None
    """1-based; None: the cascade's first tier (or the call's ``start_tier``)."""
    max_tier: int | None = None
    """1-based; None: the last tier."""
    variant: str | None = None
    """A prompt variant of the start tier to use (None: the tier's own choice)."""
    reason: str = ""
    """Short, for humans (at most 200 characters are kept in records and spans)."""
    score: float | None = None
    """The router's own confidence or difficulty rating, if it has one."""
    router: str = ""
    """The router that decided (in a composition: the inner one that did)."""
    tier_scores: tuple[float, ...] = ()
    """Optional per-tier chance that the tier's answer passes (cascade routing)."""


class TierInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One tier of the cascade, as a router sees it."""

    index: int
    """1-based."""
    name: str
    est_cost_usd: float
    """This request at the tier's first provider's prices (prompt estimate plus the
    estimated output tokens), times the calls one answer of the tier pays for
    (every ``self_consistency`` validator's samples, twice when the tier may hedge): what
    ``max_cost_usd`` checks."""


class RouteRequest(msgspec.Struct, frozen=True, kw_only=True):
    """What a router may look at: the request, the tiers and the budget."""

    messages: tuple[Message, ...]
    options: RequestOptions
    """``options.metadata`` carries the caller's tags (a task type...)."""
    tiers: tuple[TierInfo, ...]
    max_cost_usd: float | None
    """The run's budget, if any."""
    complete: CompleteFn | None = None
    """Within a run: calls a provider of the cascade, by name, through the engine's own
    path (its circuit breaker, rate limit and retries) and returns its answer, or None
    when the call failed, its breaker is open or it has no rate-limit headroom now. Each
    call is an attempt of the run (tier 0, named ``router``), costed into the run's cost
    and budget. None outside a run (a router called directly, a benchmark)."""


def is_no_opinion(decision: RouteDecision) -> bool:
    """The decision leaves the range as it is (neither a start nor a max tier)."""
    return decision.start_tier is None and decision.max_tier is None


@runtime_checkable
class Router(Protocol):
    """Decides, before the first tier, where a request starts and stops.

    ``route`` should not raise for an odd request: an unsure router returns
    ``RouteDecision()`` (no opinion). If it raises or overruns the cascade's
    ``router_timeout_s`` anyway, the run goes on from the cascade's own first tier and the
    failure is recorded in the decision's reason. It is called concurrently for different
    requests, so keep per-request state out of it.
    """

    name: str

    async def route(self, request: RouteRequest) -> RouteDecision: ...


@runtime_checkable
class UsesProviders(Protocol):
    """A router that calls providers of the cascade (through
    :attr:`RouteRequest.complete`) names them, so that the Cascade checks when it is built
    that each exists (a ConfigError at ``router.<path>`` otherwise)."""

    def providers_used(self) -> Mapping[str, str]:
        """``{config path relative to the router's table: provider name}``, e.g.
        ``{"provider": "small-a"}``."""
        ...
