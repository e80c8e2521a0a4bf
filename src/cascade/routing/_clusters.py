"""Plan tables: route by what the training records of similar texts did, under a budget.

A per-request classifier has to guess, from a text alone, whether each tier will be right;
on most data it cannot tell one question of a kind from the next, and its guesses scatter
the decisions. A plan table decides per group instead: the training texts are clustered
(k-means over the classifier's TF-IDF vectors, cosine), every range of tiers is run over
each cluster's records (simulated from their labels, as the engine runs them), and each
cluster gets the range whose accuracy minus ``lam`` x cost (a share of the reference
tier's mean cost) is highest. Small clusters borrow strength from the whole training set
(``shrink`` pseudo-records of its accuracy per range), so a handful of records never sets
a plan alone; costs are the cluster's own (a range's cost varies little within a cluster,
and pulling it toward the whole set's would favour escalating ranges that are cheap there
only because other clusters stop early).

The number of clusters is chosen by cross-validation on the training records only
(5-fold, repeated 3 times with different shuffles): the fewest clusters whose most
accurate routing within the budget (a share of the reference tier alone, or by default the
whole cascade's own cost) is within ``K_TOLERANCE`` of the best, since more clusters fit
the training records' noise as well as their structure. ``lam`` is then set on the final
table (:func:`fit_table`). At run
time a request goes to its nearest centroid (the router file's last head) and takes that
cluster's range; validators still escalate inside it.
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np

from ._labels import Labelled
from ._modelfile import ClusterPlan
from ._textmodel import Head

__all__ = [
    "CLUSTER_COUNTS",
    "K_TOLERANCE",
    "LAMBDAS",
    "ClusterPlan",
    "Table",
    "cross_validate",
    "fit_table",
    "plan_outcomes",
]

CLUSTER_COUNTS = (1, 2, 4, 6, 8, 12, 16)
"""The numbers of clusters cross-validation tries (16 at most: a head's class limit)."""
LAMBDAS = (0.0, *(round(0.001 * 1.06**i, 7) for i in range(160)))
"""The cost weights tried: accuracy points given up for one reference-tier call's cost."""
K_TOLERANCE = 0.003
"""More clusters are chosen only when their cross-validated accuracy is higher by more than
this (0.3 points)."""
SHRINK = 5.0
"""Pseudo-records of the whole training set's accuracy added to each cluster's, per range."""


class Table(msgspec.Struct, frozen=True, kw_only=True):
    """A fitted table: the centroids (rows of unit length) and each cluster's plan."""

    centroids: list[list[float]]
    plans: list[ClusterPlan]

    def head(self) -> Head:
        """The centroids as a head whose likeliest class is the nearest centroid."""
        k = len(self.plans)
        return Head(
            classes=[str(c) for c in range(k)],
            coef=self.centroids if k > 1 else [],
            intercept=[0.0] * k if k > 1 else [],
        )


def plan_outcomes(
    rows: Sequence[Labelled], ranges: Sequence[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """(right, cost), each records x ranges: each range run over each record (simulated
    from its labels)."""
    from ._train import simulate  # late: _train imports this module

    right = np.zeros((len(rows), len(ranges)))
    cost = np.zeros((len(rows), len(ranges)))
    for i, r in enumerate(rows):
        for j, (start, stop) in enumerate(ranges):
            ok, spent = simulate(r.tiers, start, stop)
            right[i, j], cost[i, j] = ok, spent
    return right, cost


def _kmeans(x: Any, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(unit centroids, each row's cluster) for the unit rows of ``x``; clusters ordered
    largest first (an empty text, equally far from all, goes to the largest)."""
    n = x.shape[0]
    if k <= 1 or n <= k:
        centroid = np.asarray(x.mean(axis=0)).reshape(1, -1)
        return _unit(centroid), np.zeros(n, dtype=np.intp)
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # fewer distinct texts than clusters: the extra clusters stay empty (their plan is
        # the whole set's, and no text is nearer to them than to a twin with records)
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
    labels = np.asarray(model.labels_, dtype=np.intp)
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty(k, dtype=np.intp)
    rank[order] = np.arange(k)
    return _unit(np.asarray(model.cluster_centers_)[order]), rank[labels]


def _unit(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(norms > 0, m / np.maximum(norms, 1e-12), m)


def _assign(x: Any, centroids: np.ndarray) -> np.ndarray:
    return np.asarray(np.argmax(x @ centroids.T, axis=1)).ravel()


def _choose(
    right: np.ndarray,
    cost: np.ndarray,
    members: np.ndarray,
    k: int,
    lams: Sequence[float],
    ref: float,
    shrink: float,
) -> np.ndarray:
    """Each cluster's range per cost weight: lams x k indexes into the ranges."""
    prior_right, prior_cost = right.mean(axis=0), cost.mean(axis=0)
    out = np.zeros((len(lams), k), dtype=np.intp)
    for c in range(k):
        mine = members == c
        m = int(mine.sum())
        acc = (right[mine].sum(axis=0) + shrink * prior_right) / (m + shrink)
        spent = cost[mine].mean(axis=0) if m else prior_cost
        for li, lam in enumerate(lams):
            score = acc - lam * spent / ref
            # the cheapest of the ranges within a hair of the best
            best = score.max()
            near = np.flatnonzero(score >= best - 1e-9)
            out[li, c] = near[np.argmin(spent[near])]
    return out


def cross_validate(
    x: Any,
    right: np.ndarray,
    cost: np.ndarray,
    *,
    ref: float,
    counts: Sequence[int] = CLUSTER_COUNTS,
    lams: Sequence[float] = LAMBDAS,
    folds: int = 5,
    repeats: int = 3,
    shrink: float = SHRINK,
    seed: int = 0,
) -> dict[tuple[int, float], tuple[float, float]]:
    """Out-of-fold (accuracy, mean cost per record) of every (clusters, cost weight),
    averaged over ``repeats`` shuffles of the folds."""
    n = x.shape[0]
    got: dict[tuple[int, float], list[float]] = {}
    for r in range(repeats):
        _folds(x, right, cost, got, ref, counts, lams, folds, shrink, seed * 1000 + r)
    total = n * repeats
    return {key: (r / total, c / total) for key, (r, c) in got.items()}


def _folds(
    x: Any,
    right: np.ndarray,
    cost: np.ndarray,
    got: dict[tuple[int, float], list[float]],
    ref: float,
    counts: Sequence[int],
    lams: Sequence[float],
    folds: int,
    shrink: float,
    seed: int,
) -> None:
    """Adds one k-fold pass's right answers and costs to ``got``."""
    n = x.shape[0]
    order = list(range(n))
    random.Random(seed).shuffle(order)
    for f in range(folds):
        held = np.zeros(n, dtype=bool)
        held[order[f::folds]] = True
        fit = ~held
        for k in counts:
            centroids, members = _kmeans(x[fit], k, seed)
            table = _choose(right[fit], cost[fit], members, len(centroids), lams, ref, shrink)
            assigned = _assign(x[held], centroids)
            rows = np.flatnonzero(held)
            for li, lam in enumerate(lams):
                picks = table[li, assigned]
                acc = got.setdefault((k, lam), [0.0, 0.0])
                acc[0] += float(right[rows, picks].sum())
                acc[1] += float(cost[rows, picks].sum())


def pick(
    scores: dict[tuple[int, float], tuple[float, float]], cap: float, *, tolerance: float = 0.0
) -> tuple[int, float] | None:
    """The (clusters, cost weight) to use: per number of clusters, its most accurate cost
    weight whose mean cost is at most ``cap`` (on a tie the cheaper); then the fewest
    clusters whose accuracy is within ``tolerance`` of the best. None when nothing is
    within the cap."""
    best: dict[int, tuple[tuple[int, float], float]] = {}
    for key, (acc, spent) in scores.items():
        if spent > cap * (1 + 1e-9):
            continue
        held = best.get(key[0])
        if held is None or (-round(acc, 9), spent) < (-round(held[1], 9), scores[held[0]][1]):
            best[key[0]] = (key, acc)
    if not best:
        return None
    top = max(acc for _, acc in best.values())
    return best[min(k for k, (_, acc) in best.items() if acc >= top - tolerance - 1e-12)][0]


def fit_table(
    x: Any,
    right: np.ndarray,
    cost: np.ndarray,
    ranges: Sequence[tuple[int, int]],
    *,
    k: int,
    cap: float,
    ref: float,
    lams: Sequence[float] = LAMBDAS,
    shrink: float = SHRINK,
    seed: int = 0,
) -> tuple[Table, float, tuple[float, float]]:
    """The table over all of ``x``'s rows with ``k`` clusters, under the smallest cost
    weight whose table costs at most ``cap`` a record over these rows (the largest weight
    when none does); with that weight and the table's (accuracy, mean cost) over the rows.

    The weight is set on the final table rather than taken from cross-validation: which
    clusters flip to a dearer range at a given weight differs from fold to fold, while a
    fixed table's mean cost over the training rows predicts its cost on new records of
    the same kind closely (its accuracy there does not, and is not used)."""
    centroids, members = _kmeans(x, k, seed)
    k = len(centroids)
    tables = _choose(right, cost, members, k, lams, ref, shrink)
    rows = np.arange(len(members))
    spent = [float(cost[rows, t[members]].mean()) for t in tables]
    within = [i for i, c in enumerate(spent) if c <= cap * (1 + 1e-9)]
    li = within[0] if within else len(lams) - 1
    table = tables[li]
    prior_right, prior_cost = right.mean(axis=0), cost.mean(axis=0)
    plans = []
    for c in range(k):
        mine = members == c
        m, j = int(mine.sum()), int(table[c])
        start, stop = ranges[j]
        plans.append(
            ClusterPlan(
                start=start + 1,
                stop=stop + 1,
                right=float((right[mine, j].sum() + shrink * prior_right[j]) / (m + shrink)),
                cost=float(cost[mine, j].mean() if m else prior_cost[j]),
                records=m,
            )
        )
    unit = [[float(v) if math.isfinite(v) else 0.0 for v in row] for row in centroids]
    figures = (float(right[rows, table[members]].mean()), spent[li])
    return Table(centroids=unit, plans=plans), lams[li], figures
