"""Pre-routing: decide, before any model answers, where a request starts and stops.

A router is a small async callable returning a small value: ``route(RouteRequest) ->
RouteDecision``. Name one in config or pass it to ``Cascade(..., router=...)`` (the
argument wins); register your own with ``@cascade.router("kind")`` or the
``cascade.routers`` entry-point group::

    router_timeout_s = 1.0            # top level: the longest a decision may take

    [router]
    kind = "first_of"                 # rules first; the difficulty rating otherwise
    routers = [
      { kind = "rules", rules = [{ metadata = { task = "sql" }, start_tier = 2 }] },
      { kind = "llm", provider = "small-a", thresholds = [3, 5] },
    ]

Built in: ``rules`` (:mod:`.rules`), ``cost`` (:mod:`.cost`), ``llm`` (:mod:`.llm`),
``first_of`` (:mod:`.compose`).

The engine asks the router once per run, before the first tier, unless the call sets
``start_tier`` or ``max_tier`` itself (the call wins; the router is not asked and
``Result.route`` is None). The decision narrows the cascade's range; validators still
escalate inside it. It is on ``Result.route``, in the :class:`~cascade.Routed` event, on
the run span (``cascade.route.*``) and in the ``cascade.route`` record. A router that
raises, overruns ``router_timeout_s`` (on the cascade's clock) or names a tier or variant
the cascade does not have never fails the run: the run goes on over the whole range, with
the failure in ``Result.route.reason`` and a warning logged (``cascade.router_failed``).
A router's own provider calls (``RouteRequest.complete``) are attempts of tier 0, named
``router``, in ``Result.attempts``, costed into ``Result.cost_usd`` and the budget.
"""

from __future__ import annotations

from ._decision import (
    CompleteFn,
    RouteDecision,
    Router,
    RouteRequest,
    TierInfo,
    UsesProviders,
    is_no_opinion,
)
from ._registry import (
    ENTRY_POINT_GROUP,
    RouterFactory,
    build_router,
    load_entry_point_routers,
    register_router_kind,
    registered_routers,
    resolve_router_paths,
    router,
)
from .compose import FirstOf
from .cost import CostRouter
from .llm import LLMRouter, parse_rating
from .rules import RulesRouter

__all__ = [
    "ENTRY_POINT_GROUP",
    "CompleteFn",
    "CostRouter",
    "FirstOf",
    "LLMRouter",
    "RouteDecision",
    "RouteRequest",
    "Router",
    "RouterFactory",
    "RulesRouter",
    "TierInfo",
    "UsesProviders",
    "build_router",
    "is_no_opinion",
    "load_entry_point_routers",
    "parse_rating",
    "register_router_kind",
    "registered_routers",
    "resolve_router_paths",
    "router",
]
