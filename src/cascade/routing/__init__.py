"""Pre-routing: decide, before any model answers, where a request starts and stops.

A router is a small async callable returning a small value: ``route(RouteRequest) ->
RouteDecision``. Name one in config (``[router]`` with ``kind = "rules"`` and the kind's
parameters) or pass it to ``Cascade(..., router=...)``; register your own with
``@cascade.router("kind")`` or the ``cascade.routers`` entry-point group.
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
    "router",
]
