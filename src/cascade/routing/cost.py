"""``cost``: start at the highest tier this request can afford.

::

    max_cost_usd = 0.01

    [router]
    kind = "cost"

Each tier's cost for the request is estimated as the budget check estimates it (the
prompt's estimated tokens plus the output estimate, at the tier's first provider's prices:
:attr:`TierInfo.est_cost_usd`). The router starts the run at the highest tier whose
estimate fits what is left of the run's ``max_cost_usd`` (times ``share``); when none
fits, at the cheapest tier (the budget check then decides whether even that one runs).
With no budget it has no opinion.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from ._decision import RouteDecision, RouteRequest
from ._params import convert
from ._registry import router

__all__ = ["CostRouter"]


class CostParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    share: Annotated[float, Meta(gt=0, le=1)] = 1.0
    name: Annotated[str, Meta(min_length=1, max_length=1000)] = "cost"


@router("cost")
class CostRouter:
    """The highest tier whose estimated cost fits ``share`` of the budget left; none:
    the cheapest. No budget: no opinion."""

    def __init__(self, *, share: float = 1.0, name: str = "cost") -> None:
        params = convert({"share": share, "name": name}, CostParams)
        self.name = params.name
        self.share = params.share

    def __repr__(self) -> str:
        return f"<CostRouter {self.name!r} share={self.share:g}>"

    async def route(self, request: RouteRequest) -> RouteDecision:
        budget = request.max_cost_usd
        if budget is None or not request.tiers:
            return RouteDecision(reason="no budget: no opinion", router=self.name)
        left = budget * self.share
        fits = [t for t in request.tiers if t.est_cost_usd <= left]
        if fits:
            best = max(fits, key=lambda t: t.index)
            why = f"tier {best.name!r} (est ${best.est_cost_usd:.6f}) fits ${left:.6f}"
        else:
            best = min(request.tiers, key=lambda t: (t.est_cost_usd, t.index))
            why = f"no tier fits ${left:.6f}: the cheapest, {best.name!r}"
        return RouteDecision(
            start_tier=best.index, reason=why, score=best.est_cost_usd, router=self.name
        )
