"""Cascade routing: from per-tier outcome probabilities to a start and a stop tier.

A learned router predicts, for each tier alone, the chance of each outcome
(:data:`~cascade.routing._textmodel.OUTCOMES`: its validators accept or reject, its answer
is right or wrong). For every range ``start..stop`` the cascade could run, that gives the
expected cost (a tier is paid for when every tier before it in the range rejected) and the
chance the returned answer is right (the first accepted answer, or when all reject, the
best rejected one). The router starts where the expected cost per right answer is lowest
(or, with a ``cost_weight``, where accuracy minus weighted cost is highest); validators
still escalate inside the range.

Tiers are treated as independent given the text: an approximation (a question hard for
one model tends to be hard for the next), which ``cascade train-router`` measures rather
than assumes, by reporting the real engine's figures on held-out records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, cast

from ._decision import RouteDecision

__all__ = [
    "Outcomes",
    "Plan",
    "Policy",
    "aligned",
    "choose",
    "decide",
    "outcomes",
    "pass_chance",
    "plans",
]

Policy = Literal["cascade", "single", "cheapest", "table"]
"""``cascade``: a range of tiers, validators escalate inside it; ``single``: one tier, no
escalation (routing alone); ``cheapest``: the first tier likely right, up to the last;
``table``: the range a plan table gives the request's cluster (the router decides that
itself, :mod:`~cascade.routing._ensemble`; :func:`decide` treats it as ``cascade``)."""


class Plan(NamedTuple):
    """A range of tiers (0-based, inclusive) and what running it is expected to give."""

    start: int
    stop: int
    right: float
    cost: float


def pass_chance(probs: Mapping[str, float]) -> float:
    """The chance a tier's answer is right (accepted or not)."""
    return probs.get("accepted_right", 0.0) + probs.get("rejected_right", 0.0)


def plans(
    probs: Sequence[Mapping[str, float]],
    costs: Sequence[float],
    right: Mapping[tuple[int, int], float] | None = None,
    cost: Mapping[tuple[int, int], float] | None = None,
) -> list[Plan]:
    """Every range of tiers with its expected chance of a right answer and its expected
    cost. ``right`` (0-based ranges) overrides the chance of a right answer where a model
    predicts it for the range as a whole, which avoids assuming the tiers independent;
    ``cost`` likewise overrides the expected cost."""
    n = len(probs)
    return [Plan(*r) for r in _ranges(outcomes(probs), costs, aligned(right, n), cost)]


def aligned(right: Mapping[tuple[int, int], float] | None, n: int) -> list[float | None] | None:
    """``right`` per range of ``n`` tiers in the order of :func:`plans` (by start, then
    stop; None where it has none)."""
    if not right:
        return None
    return [right.get((start, stop)) for start in range(n) for stop in range(start, n)]


Outcomes = Sequence[tuple[float, float, float]]
"""Per tier, the chances of ``accepted_right``, ``accepted_wrong`` and ``rejected_right``
(0.0 for an outcome a model does not predict)."""


def outcomes(probs: Sequence[Mapping[str, float]]) -> list[tuple[float, float, float]]:
    """``probs`` as :data:`Outcomes`."""
    return [
        (p.get("accepted_right", 0.0), p.get("accepted_wrong", 0.0), p.get("rejected_right", 0.0))
        for p in probs
    ]


def _ranges(
    tiers: Outcomes,
    costs: Sequence[float],
    right: Sequence[float | None] | None,
    cost: Mapping[tuple[int, int], float] | None,
) -> list[tuple[int, int, float, float]]:
    """:func:`plans` as plain tuples, ``right`` :func:`aligned` (a decision is on the event
    loop: every operation counts)."""
    out: list[tuple[int, int, float, float]] = []
    n = len(tiers)
    cost = cost or None
    # the chance of a right answer of the tiers alone, only where a model gives none for
    # the range (a classifier has a head per range: then only the cost is summed)
    every = right is not None and None not in right
    # each tier's figures once (a decision asks for every range: 10 for 4 tiers)
    hit: list[float] = []  # accepted and right
    passes: list[float] = []  # the chance the range goes on past the tier
    fallbacks: list[float] = []  # the chance a rejected answer is right (0: never rejected)
    for good, bad, late in tiers:
        accepted = good + bad
        rejected = 1.0 - accepted
        passes.append(max(0.0, rejected))
        if not every:
            hit.append(good)
            # the best rejected answer: the likeliest right one
            fallbacks.append(late / rejected if rejected > 1e-9 else 0.0)
    fixed = cast("Sequence[float]", right) if every else ()
    k = 0
    for start in range(n):
        # start..stop is start..stop-1 run one tier further: extend it, in the same order
        reach, p_right, spent, fallback = 1.0, 0.0, 0.0, 0.0
        for stop in range(start, n):
            spent += reach * costs[stop]
            if every:
                reach *= passes[stop]
                chance = fixed[k]
            else:
                p_right += reach * hit[stop]
                reach *= passes[stop]
                if fallbacks[stop] > fallback:
                    fallback = fallbacks[stop]
                chance = p_right + reach * fallback
                if not chance < 1.0:  # as min(1.0, chance): NaN too gives 1.0
                    chance = 1.0
                given = None if right is None else right[k]
                if given is not None:
                    chance = given
            k += 1
            expected = spent  # not spent itself: the next range extends this one
            if cost is not None and (start, stop) in cost:
                expected = cost[start, stop]
            out.append((start, stop, chance, expected))
    return out


def decide(
    probs: Sequence[Mapping[str, float]],
    costs: Sequence[float],
    *,
    policy: Policy = "cascade",
    cost_weight: float | None = None,
    min_pass: float = 0.5,
    right: Mapping[tuple[int, int], float] | None = None,
    cost: Mapping[tuple[int, int], float] | None = None,
    router: str,
) -> RouteDecision:
    """The decision for one request (tiers 1-based in the decision)."""
    return choose(
        outcomes(probs),
        costs,
        policy=policy,
        cost_weight=cost_weight,
        min_pass=min_pass,
        right=aligned(right, len(probs)),
        cost=cost,
        router=router,
    )


def choose(
    tiers: Outcomes,
    costs: Sequence[float],
    *,
    policy: Policy = "cascade",
    cost_weight: float | None = None,
    min_pass: float = 0.5,
    right: Sequence[float | None] | None = None,
    cost: Mapping[tuple[int, int], float] | None = None,
    router: str,
) -> RouteDecision:
    """:func:`decide` from each tier's :data:`Outcomes` and ``right`` :func:`aligned` (a
    learned router computes both without a dictionary)."""
    # pass_chance of each tier
    scores = tuple([round(good + late, 4) for good, _, late in tiers])
    if policy == "cheapest":
        for j, score in enumerate(scores):
            if score >= min_pass:
                return RouteDecision(
                    start_tier=j + 1,
                    reason=f"tier {j + 1} is the cheapest likely right (P={score:.2f})",
                    score=score,
                    router=router,
                    tier_scores=scores,
                )
        best = max(range(len(scores)), key=lambda j: (scores[j], -j))
        return RouteDecision(
            start_tier=best + 1,
            reason=f"no tier likely right; tier {best + 1} the likeliest (P={scores[best]:.2f})",
            score=scores[best],
            router=router,
            tier_scores=scores,
        )
    options = _ranges(tiers, costs, right, cost)
    if policy == "single":
        options = [p for p in options if p[0] == p[1]]
    top = max(costs[-1], 1e-12)
    # as min() / max() with a key of two figures: the first best plan. A key is compared
    # as a tuple is: the second figure only where the first ones are equal (NaN: never).
    pick = options[0]
    if cost_weight is None:
        best_a, best_b = pick[3] / max(pick[2], 1e-6), -pick[2]
        for p in options:
            a = p[3] / max(p[2], 1e-6)
            if a < best_a or (a == best_a and -p[2] < best_b):
                pick, best_a, best_b = p, a, -p[2]
        why = "cost per right answer"
    else:
        best_a, best_b = pick[2] - cost_weight * pick[3] / top, -pick[3]
        for p in options:
            a = p[2] - cost_weight * p[3] / top
            if a > best_a or (a == best_a and -p[3] > best_b):
                pick, best_a, best_b = p, a, -p[3]
        why = f"accuracy - {cost_weight:g} x cost share"
    start, stop, chance, expected = pick
    return RouteDecision(
        start_tier=start + 1,
        max_tier=stop + 1,
        reason=(
            f"tiers {start + 1}-{stop + 1}: P(right)={chance:.2f}, "
            f"cost {expected / top:.0%} of the top tier ({why})"
        ),
        score=round(chance, 4),
        router=router,
        tier_scores=scores,
    )
