"""Bagged plan tables: route by what the training records of similar texts did, under a
budget, with many clusterings' figures averaged per request.

A per-request classifier has to guess, from a text alone, whether each tier will be right;
on most data it cannot tell one question of a kind from the next. A plan table decides
per group instead: the training texts are clustered (k-means over the classifier's TF-IDF
vectors, cosine), and every range of tiers is run over each cluster's records (simulated
from their labels, as the engine runs them). One such table (file version 1, still
loaded and routed by :class:`~cascade.routing._classifier.ClassifierRouter`) depends on
its k-means seed and on the folds that chose its number of clusters: on mixed-replay,
seeds 0-5 of that procedure scattered over 1.8 accuracy points on held-out records. A
bagged table removes most of that variance. It fits ``per_count`` k-means clusterings
(different seeds) for each number of clusters in ``counts``; every cluster keeps, for
every range of tiers, the accuracy of its training records (shrunk toward the whole set's
by ``shrink`` pseudo-records) and their mean cost. A request's figures per range are the
means over the members of its nearest cluster's (cosine to the unit centroid), and it runs
the range whose accuracy minus ``cost_weight`` x cost (a share of the reference tier's mean cost) is
highest, the cheaper on a tie. Averaging over clusterings of several sizes gives each
request a neighbourhood of its own rather than one cluster's border.

``cost_weight`` is chosen by ``folds``-fold cross-validation on the training records: the
smallest weight whose out-of-fold routing costs at most the cap per record. Routing the
training records with figures that include their own outcomes underestimates what the
table spends on new ones (on mixed-replay it went over a 50% budget on held-out folds).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

import msgspec
import numpy as np

from .._errors import InputError
from ._labels import Labelled
from ._modelfile import ClassifierFile, TableEnsemble, TableMember, encode_file
from ._textmodel import MAX_FILE_BYTES

__all__ = [
    "ENSEMBLE_COUNTS",
    "LAMBDAS",
    "MAX_SEED",
    "PER_COUNT",
    "EnsembleTable",
    "fit_ensemble",
    "plan_outcomes",
    "thin",
    "within_file_size",
]

ENSEMBLE_COUNTS = (2, 4, 6, 8, 12, 16)
"""The numbers of clusters of the members (each ``PER_COUNT`` times)."""
PER_COUNT = 5
"""Members per number of clusters, each clustered with its own seed."""
SHRINK = 5.0
"""Pseudo-records of the whole training set's accuracy added to each cluster's, per range."""
FOLDS = 5
MAX_SEED = 100_000
"""Seeds are 0 to this (k-means seeds derived from them stay below 2**32)."""


INLINE_CELLS = 1 << 17
"""A decision that reads more centroid values than this (a text's known terms x the
members' clusters, ~0.1 ms) is made in a worker thread."""
CHUNK_CELLS = 1 << 20
"""Centroid values gathered at once per decision (8 MiB), however many terms a text has."""

LAMBDAS = (0.0, *(round(0.001 * 1.06**i, 7) for i in range(160)))
"""The cost weights tried: accuracy points given up for one reference-tier call's cost."""


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
    """(unit centroids, each row's cluster), clusters with records only, largest first (an
    empty text, equally near all, goes to the largest)."""
    n = x.shape[0]
    if k <= 1 or n <= k:
        centroid = np.asarray(x.mean(axis=0)).reshape(1, -1)
        return _unit(centroid), np.zeros(n, dtype=np.intp)
    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # fewer distinct texts than clusters: the extra clusters are empty and dropped
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(x)
    labels = np.asarray(model.labels_, dtype=np.intp)
    sizes = np.bincount(labels, minlength=k)
    order = np.argsort(-sizes, kind="stable")
    order = order[sizes[order] > 0]
    rank = np.full(k, -1, dtype=np.intp)
    rank[order] = np.arange(len(order))
    return _unit(np.asarray(model.cluster_centers_)[order]), rank[labels]


def _unit(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.where(norms > 0, m / np.maximum(norms, 1e-12), m)


class _Member:
    """One fitted table: unit centroids (dense), figures per cluster and range."""

    def __init__(
        self, centroids: np.ndarray, right: np.ndarray, cost: np.ndarray, records: np.ndarray
    ) -> None:
        self.centroids, self.right, self.cost, self.records = centroids, right, cost, records

    def assign(self, x: Any) -> np.ndarray:
        if self.centroids.shape[0] == 1:
            return np.zeros(x.shape[0], dtype=np.intp)
        return np.asarray(np.argmax(x @ self.centroids.T, axis=1)).ravel()


def _members(
    x: Any,
    right: np.ndarray,
    cost: np.ndarray,
    *,
    counts: Sequence[int],
    per_count: int,
    shrink: float,
    seed: int,
) -> list[_Member]:
    prior_right, prior_cost = right.mean(axis=0), cost.mean(axis=0)
    out = []
    for i, k in enumerate(counts):
        for j in range(per_count):
            centroids, labels = _kmeans(x, k, seed * 1000 + i * 50 + j)
            kk = centroids.shape[0]
            m = np.bincount(labels, minlength=kk).astype(np.float64)[:, None]
            hits = np.zeros((kk, right.shape[1]))
            spent = np.zeros((kk, right.shape[1]))
            np.add.at(hits, labels, right)
            np.add.at(spent, labels, cost)
            acc = (hits + shrink * prior_right) / (m + shrink)
            mean_cost = np.where(m > 0, spent / np.maximum(m, 1.0), prior_cost)
            out.append(_Member(centroids, acc, mean_cost, m[:, 0].astype(np.intp)))
    return out


def _estimate(members: Sequence[_Member], x: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean (accuracy, cost) per range over the members' nearest clusters."""
    acc = np.zeros((x.shape[0], members[0].right.shape[1]))
    spent = np.zeros_like(acc)
    for member in members:
        a = member.assign(x)
        acc += member.right[a]
        spent += member.cost[a]
    return acc / len(members), spent / len(members)


def _choose(acc: np.ndarray, spent: np.ndarray, lam: float, ref: float) -> np.ndarray:
    """Each row's range: the highest accuracy minus weighted cost, the cheaper on a tie."""
    score = acc - lam * spent / ref
    near = score >= score.max(axis=1, keepdims=True) - 1e-9
    picked: np.ndarray = np.argmin(np.where(near, spent, np.inf), axis=1)
    return picked


def fit_ensemble(
    x: Any,
    right: np.ndarray,
    cost: np.ndarray,
    ranges: Sequence[tuple[int, int]],
    *,
    cap: float,
    ref: float,
    counts: Sequence[int] = ENSEMBLE_COUNTS,
    per_count: int = PER_COUNT,
    shrink: float = SHRINK,
    folds: int = FOLDS,
    seed: int = 0,
) -> tuple[TableEnsemble, dict[str, Any]]:
    """The bagged table over ``x``'s rows (unit TF-IDF rows; ``right`` and ``cost`` are
    records x ``ranges``, 0-based), its cost weight the smallest whose out-of-fold routing
    costs at most ``cap`` a record (the largest tried when none does); with its
    cross-validated and training figures (cost shares of ``ref``)."""
    members_of = partial(_members, counts=counts, per_count=per_count, shrink=shrink)
    n = x.shape[0]
    oof_acc, oof_cost = np.zeros(right.shape), np.zeros(right.shape)
    order = np.random.default_rng(seed).permutation(n)
    for f in range(folds):
        held = np.zeros(n, dtype=bool)
        held[order[f::folds]] = True
        part = members_of(x[~held], right[~held], cost[~held], seed=seed * 7 + f + 1)
        oof_acc[held], oof_cost[held] = _estimate(part, x[held])
    rows = np.arange(n)
    lams = LAMBDAS
    li, within = len(lams) - 1, False
    for i, lam in enumerate(lams):
        if cost[rows, _choose(oof_acc, oof_cost, lam, ref)].mean() <= cap * (1 + 1e-9):
            li, within = i, True
            break
    lam = lams[li]
    cv = _choose(oof_acc, oof_cost, lam, ref)
    members = members_of(x, right, cost, seed=seed)
    fit = _choose(*_estimate(members, x), lam, ref)
    info = {
        "members": len(members),
        "cost_weight": lam,
        "within_budget": within,
        "cv_accuracy": float(right[rows, cv].mean()),
        "cv_cost_share": float(cost[rows, cv].mean() / ref),
        "train_accuracy": float(right[rows, fit].mean()),
        "train_cost_share": float(cost[rows, fit].mean() / ref),
    }
    table = TableEnsemble(
        ranges=[(s + 1, m + 1) for s, m in ranges],
        cost_weight=lam,
        reference_cost=ref,
        members=[_to_file(m) for m in members],
    )
    return table, info


def thin(table: TableEnsemble, floor: float) -> TableEnsemble:
    """``table`` without its centroids' values below ``floor`` (the others unchanged, each
    centroid a little shorter than a unit vector): a smaller file, nearly the same
    decisions (a dropped value moves a text's similarity to that cluster by less than
    ``floor``)."""
    members = []
    for m in table.members:
        terms, values = [], []
        for ts, vs in zip(m.terms, m.values, strict=True):
            kept = [i for i, v in enumerate(vs) if v >= floor]
            terms.append([ts[i] for i in kept])
            values.append([vs[i] for i in kept])
        members.append(msgspec.structs.replace(m, terms=terms, values=values))
    return msgspec.structs.replace(table, members=members)


MAX_FLOOR = 0.0128
"""The largest centroid value ``within_file_size`` drops."""


def within_file_size(file: ClassifierFile) -> ClassifierFile:
    """``file``, its bagged table thinned (centroid values below a floor dropped, the floor
    doubling from 1e-4 to ``MAX_FLOOR``) until it encodes within ``MAX_FILE_BYTES``, the
    floor recorded in ``trained_on``; InputError when it cannot (a file the loader would
    refuse is never written). A table over many records (~10,000) needs it: 240
    centroids, each over most of the vocabulary."""
    size = len(encode_file(file))
    floor, full = 0.0, file.ensemble
    while size > MAX_FILE_BYTES and full is not None and floor < MAX_FLOOR:
        floor = floor * 2 or 1e-4
        fit = dict(file.trained_on["cost_weight_fit"])
        fit["table"] = {**fit["table"], "centroid_floor": floor}
        file = msgspec.structs.replace(
            file,
            ensemble=thin(full, floor),
            trained_on={**file.trained_on, "cost_weight_fit": fit},
        )
        size = len(encode_file(file))
    if size > MAX_FILE_BYTES:
        raise InputError(
            f"the router file would be {size / (1 << 20):.1f} MiB, more than the "
            f"{MAX_FILE_BYTES >> 20} MiB a router file may be (fewer tiers, character "
            "n-grams or features)",
            path="--out",
        )
    return file


def _to_file(member: _Member) -> TableMember:
    terms, values = [], []
    for row in member.centroids:
        nz = np.flatnonzero(row)
        terms.append([int(t) for t in nz])
        values.append([float(v) for v in row[nz]])
    return TableMember(
        terms=terms,
        values=values,
        right=[[float(v) for v in r] for r in member.right],
        cost=[[float(v) for v in r] for r in member.cost],
        records=[int(v) for v in member.records],
    )


class EnsembleTable:
    """A loaded bagged table: ``decide(idx, w)`` for a sparse unit vector of the
    features -> (range index, accuracy, cost). The members' centroids are one dense matrix
    (vocabulary x rows, so that a text's terms are contiguous rows), and their clusters
    sit in a grid padded to the widest member, so that a decision is a few numpy calls."""

    __slots__ = ("_at", "_cols", "_empty", "_figures", "_rank", "cost_weight", "ranges", "ref")

    def __init__(self, table: TableEnsemble, width: int) -> None:
        self.ranges = [(s - 1, m - 1) for s, m in table.ranges]
        self.cost_weight, self.ref = table.cost_weight, table.reference_cost
        members = table.members
        widest = max(len(m.records) for m in members)
        total = sum(len(m.records) for m in members)
        self._cols = np.zeros((width, total))
        self._at = np.zeros(total, dtype=np.intp)  # each row's slot in the padded grid
        r = len(self.ranges)
        # per slot: accuracy per range, then cost per range, each divided by the members
        self._figures = np.zeros((len(members) * widest, 2 * r))
        row = 0
        for i, m in enumerate(members):
            for c in range(len(m.records)):
                self._cols[m.terms[c], row] = m.values[c]
                self._at[row] = slot = i * widest + c
                self._figures[slot] = [*m.right[c], *m.cost[c]]
                row += 1
        self._figures /= len(members)
        self._empty = np.full((len(members), widest), -math.inf)
        self._rank = np.arange(len(members)) * widest

    def __repr__(self) -> str:
        return f"<EnsembleTable {len(self._rank)} members, {len(self.ranges)} ranges>"

    def inline(self, terms: int) -> bool:
        """Whether a decision for a text of ``terms`` known terms is cheap enough for the
        event loop."""
        return terms * self._cols.shape[1] <= INLINE_CELLS

    def decide(self, idx: np.ndarray, w: np.ndarray) -> tuple[int, float, float]:
        grid = self._empty.copy()
        cols = self._cols
        step = max(1, CHUNK_CELLS // cols.shape[1])
        if len(idx) <= step:
            grid.flat[self._at] = w @ cols[idx]
        else:  # thousands of known terms: a bounded gather at a time
            near = np.zeros(cols.shape[1])
            for lo in range(0, len(idx), step):
                near += w[lo : lo + step] @ cols[idx[lo : lo + step]]
            grid.flat[self._at] = near
        # the first cluster on a tie: a text with no known term goes to each largest
        nearest = self._rank + np.argmax(grid, axis=1)
        figures: list[float] = self._figures[nearest].sum(axis=0).tolist()
        r = len(self.ranges)
        acc, spent = figures[:r], figures[r:]
        weight = self.cost_weight / self.ref
        scores = [a - weight * c for a, c in zip(acc, spent, strict=True)]
        top = max(scores)
        j = min((c, k) for k, c in enumerate(spent) if scores[k] >= top - 1e-9)[1]
        return j, acc[j], spent[j]
