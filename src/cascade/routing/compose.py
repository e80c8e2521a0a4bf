"""``first_of``: routers asked in turn; the first with an opinion decides.

::

    [router]
    kind = "first_of"
    routers = [
      { kind = "rules", rules = [{ metadata = { task = "sql" }, start_tier = 2 }] },
      { kind = "llm", provider = "small-a", thresholds = [3, 5] },
    ]

A decision with neither ``start_tier`` nor ``max_tier`` is "no opinion": the next router
is asked. A router that raises is passed over the same way (its failure is named in the
final reason when no router decides, and logged). The decision keeps the name of the
router that made it. Every router shares the one ``router_timeout_s``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import ConfigError
from ._decision import RouteDecision, Router, RouteRequest, UsesProviders, is_no_opinion
from ._params import warn_failed
from ._registry import build_router, router

__all__ = ["FirstOf"]

_MAX_REASON = 200


@router("first_of")
class FirstOf:
    """The first decision with an opinion among ``routers`` (tables, or Router objects
    from Python)."""

    def __init__(self, *, routers: Sequence[Mapping[str, Any] | Router], name: str = "first_of"):
        if isinstance(routers, str | bytes | Mapping) or not isinstance(routers, Sequence):
            raise ConfigError("expected a list of router tables", path="routers")
        if not routers:
            raise ConfigError("expected at least one router", path="routers")
        if not isinstance(name, str) or not name:
            raise ConfigError("expected a non-empty string", path="name")
        built: list[Router] = []
        for i, spec in enumerate(routers):
            if isinstance(spec, Mapping):
                built.append(build_router(spec, path=f"routers[{i}]"))
            elif isinstance(spec, Router):
                built.append(spec)
            else:
                raise ConfigError(
                    f"expected a router table, got {type(spec).__name__}", path=f"routers[{i}]"
                )
        self.name = name
        self.routers: tuple[Router, ...] = tuple(built)

    def __repr__(self) -> str:
        inner = ", ".join(r.name for r in self.routers)
        return f"<FirstOf {self.name!r} [{inner}]>"

    def providers_used(self) -> Mapping[str, str]:
        used: dict[str, str] = {}
        for i, inner in enumerate(self.routers):
            if isinstance(inner, UsesProviders):
                for where, provider in inner.providers_used().items():
                    used[f"routers[{i}].{where}" if where else f"routers[{i}]"] = provider
        return used

    async def route(self, request: RouteRequest) -> RouteDecision:
        passed: list[str] = []
        for inner in self.routers:
            try:
                decision = await inner.route(request)
                if not isinstance(decision, RouteDecision):
                    raise TypeError(f"route() returned {type(decision).__name__}")
            except Exception as exc:  # one router's failure: ask the next
                what = f"failed: {type(exc).__name__}: {exc}"
                warn_failed(inner.name, what)
                passed.append(f"{inner.name} {what}")
                continue
            if not is_no_opinion(decision):
                if not decision.router:
                    decision = RouteDecision(
                        start_tier=decision.start_tier,
                        max_tier=decision.max_tier,
                        variant=decision.variant,
                        reason=decision.reason,
                        score=decision.score,
                        router=inner.name,
                        tier_scores=decision.tier_scores,
                    )
                return decision
            passed.append(f"{inner.name}: {decision.reason or 'no opinion'}")
        reason = "no router decided (" + "; ".join(passed) + ")"
        return RouteDecision(reason=reason[:_MAX_REASON], router=self.name)
