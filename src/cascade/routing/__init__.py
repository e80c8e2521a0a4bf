"""Pre-routing: decide, before any model answers, where a request starts and stops.

A router is a small async callable returning a small value: ``route(RouteRequest) ->
RouteDecision``. Name one in config (``[router]`` with ``kind = "rules"`` and the kind's
parameters) or pass it to ``Cascade(..., router=...)``; register your own with
``@cascade.router("kind")`` or the ``cascade.routers`` entry-point group.
"""

from __future__ import annotations

from ._decision import RouteDecision, Router, RouteRequest, TierInfo
from ._registry import (
    ENTRY_POINT_GROUP,
    RouterFactory,
    build_router,
    load_entry_point_routers,
    register_router_kind,
    registered_routers,
    router,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "RouteDecision",
    "RouteRequest",
    "Router",
    "RouterFactory",
    "TierInfo",
    "build_router",
    "load_entry_point_routers",
    "register_router_kind",
    "registered_routers",
    "router",
]
