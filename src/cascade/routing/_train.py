"""Fitting the learned routers (``cascade train-router``), with scikit-learn (the
``router`` extra).

``fit_classifier`` learns TF-IDF features and one logistic-regression head per tier (the
chance of each outcome of that tier alone); ``fit_semantic`` keeps a bounded, per-outcome
stratified sample of the labelled texts for k-NN. Both measure each tier's mean cost and,
when asked, fit the policy's ``cost_weight`` on the training records alone (out-of-fold
predictions, the cascade simulated from the labels): the weight whose routing is the most
accurate at no more than the cascade's own cost.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from .._errors import InputError
from ._ensemble import (
    ENSEMBLE_COUNTS,
    MAX_SEED,
    PER_COUNT,
    fit_ensemble,
    plan_outcomes,
    within_file_size,
)
from ._labels import Labelled
from ._modelfile import (
    MAX_EXAMPLE_CHARS,
    MAX_TABLE_CELLS,
    ClassifierFile,
    Example,
    SemanticFile,
    TableEnsemble,
    TierLabel,
)
from ._policy import decide
from ._textmodel import OUTCOMES, Features, Head, TextModel, analyze, too_many_weights

__all__ = [
    "COST_WEIGHTS",
    "fit_classifier",
    "fit_semantic",
    "mean_costs",
    "simulate",
]

COST_WEIGHTS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0)
"""The cost weights ``fit_cost_weight`` tries (accuracy points given for one top-tier
call's cost)."""


def _sklearn() -> Any:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise InputError(
            "training a router needs scikit-learn: pip install 'cascade-engine[router]'",
            path="--kind",
        ) from None
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    return TfidfVectorizer, LogisticRegression


@contextmanager
def _one_thread() -> Iterator[None]:
    """Every BLAS and OpenMP pool of the process at one thread: k-means and the logistic
    regressions sum in an order that depends on the thread count, so that the same seed
    gave another file on a machine with other cores (in the last bits of the numbers).
    On sparse data of this size threads gain little (on 2 loaded cores, one was 3x
    faster)."""
    _sklearn()
    import sklearn.cluster  # noqa: F401  (loaded first: only loaded pools are limited)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def mean_costs(labelled: Sequence[Labelled], n: int) -> list[float]:
    """Each tier's mean cost alone; all zeros when any tier's cost is unknown (the router
    then uses the engine's per-request estimates)."""
    costs: list[float] = []
    for j in range(n):
        known = [x.tiers[j].cost_usd for x in labelled if x.tiers[j] is not None]  # type: ignore[union-attr]
        if not known or not any(known):
            return [0.0] * n
        costs.append(math.fsum(known) / len(known))
    return costs


def simulate(labels: Sequence[TierLabel | None], start: int, stop: int) -> tuple[bool, float]:
    """(right, cost) of running tiers ``start..stop`` (0-based) as the engine does, from
    what each tier did alone: the first accepted answer, else the rejected answer with the
    highest score (the later tier on a tie)."""
    cost = 0.0
    best: TierLabel | None = None
    for j in range(start, stop + 1):
        label = labels[j]
        if label is None:
            continue
        cost += label.cost_usd
        if label.outcome.startswith("accepted"):
            return label.outcome == "accepted_right", cost
        if best is None or label.score >= best.score:
            best = label
    return best is not None and best.outcome == "rejected_right", cost


def _head(x: Any, y: Sequence[str], order: Sequence[str], c: float, logistic: Any) -> Head:
    classes = sorted(set(y), key=list(order).index)
    if len(classes) < 2:
        return Head(classes=classes or [order[-1]], coef=[], intercept=[])
    model = logistic(C=c, max_iter=2000)
    model.fit(x, y)
    return Head(
        classes=[str(k) for k in model.classes_],
        coef=[[float(v) for v in row] for row in model.coef_],
        intercept=[float(v) for v in model.intercept_],
    )


def all_plans(n: int) -> list[tuple[int, int]]:
    """Every range of ``n`` tiers, 0-based and inclusive."""
    return [(s, m) for s in range(n) for m in range(s, n)]


def _fit_heads(
    rows: Sequence[Labelled], x: Any, n: int, c: float, logistic: Any
) -> tuple[list[Head], list[tuple[int, int]]]:
    """A head per tier (its outcome alone), then, when every tier's label is known, one per
    range of tiers (whether the cascade over it answers right, simulated from the labels)."""
    heads: list[Head] = []
    for j in range(n):
        keep = [i for i, r in enumerate(rows) if r.tiers[j] is not None]
        y = [rows[i].tiers[j].outcome for i in keep]  # type: ignore[union-attr]
        heads.append(_head(x[keep], y, OUTCOMES, c, logistic))
    if any(t is None for r in rows for t in r.tiers):
        return heads, []  # production records: a range's result is not known
    ranges = all_plans(n)
    for start, stop in ranges:
        y = ["right" if simulate(r.tiers, start, stop)[0] else "wrong" for r in rows]
        heads.append(_head(x, y, ("right", "wrong"), c, logistic))
    return heads, ranges


class _Fitted:
    """A fitted model with its plan heads split off: ``predict(text)`` -> (tier outcome
    probabilities, P(right) per range)."""

    def __init__(
        self, model: TextModel, n: int, ranges: Sequence[tuple[int, int]], x: Any = None
    ) -> None:
        self.model, self.n, self.ranges, self.x = model, n, list(ranges), x

    def predict(self, text: str) -> tuple[list[dict[str, float]], dict[tuple[int, int], float]]:
        out = self.model.predict(text)
        right = {r: p.get("right", 0.0) for r, p in zip(self.ranges, out[self.n :], strict=True)}
        return out[: self.n], right


def _fit_model(
    rows: Sequence[Labelled],
    n: int,
    *,
    char_ngrams: tuple[int, int] | None,
    max_features: int,
    c: float,
) -> _Fitted:
    vectorizer_type, logistic = _sklearn()
    shape = Features(word_ngrams=(1, 2), char_ngrams=char_ngrams)
    vectorizer = vectorizer_type(
        analyzer=partial(analyze, features=shape),
        max_features=max_features,
        min_df=2 if len(rows) >= 50 else 1,
        sublinear_tf=True,
    )
    try:
        x = vectorizer.fit_transform([r.text for r in rows])
    except ValueError:  # scikit-learn's "empty vocabulary"
        raise InputError(
            "no words in the training texts (a word: two letters or digits at least)",
            path="--dataset",
        ) from None
    vocab = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
    features = Features(
        word_ngrams=shape.word_ngrams,
        char_ngrams=char_ngrams,
        max_chars=shape.max_chars,
        vocabulary=list(vocab),
        idf=[float(v) for v in vectorizer.idf_],
    )
    heads, ranges = _fit_heads(rows, x, n, c, logistic)
    return _Fitted(TextModel(features, heads), n, ranges, x)


Prediction = tuple[list[dict[str, float]], dict[tuple[int, int], float]]


def _out_of_fold(
    rows: Sequence[Labelled],
    predictor: Callable[[Sequence[Labelled]], Callable[[str], Prediction]],
    *,
    folds: int = 5,
    seed: int = 0,
) -> list[Prediction]:
    """Each row's prediction by a model fitted without its fold."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    out: list[Prediction] = [([], {}) for _ in rows]
    for f in range(folds):
        held = set(order[f::folds])
        predict = predictor([r for i, r in enumerate(rows) if i not in held])
        for i in held:
            out[i] = predict(rows[i].text)
    return out


def fit_cost_weight(
    rows: Sequence[Labelled], predictions: Sequence[Prediction], costs: Sequence[float]
) -> tuple[float | None, dict[str, Any]]:
    """The cost weight whose routing (simulated) is the most accurate on ``rows`` at no
    more than the whole cascade's cost; None (cost per right answer) when none is."""
    n = len(costs)
    base_right = base_cost = 0.0
    for r in rows:
        ok, cost = simulate(r.tiers, 0, n - 1)
        base_right += ok
        base_cost += cost
    best: tuple[float, float, float] | None = None  # (accuracy, -cost, weight)
    tried: dict[str, Any] = {}
    for w in COST_WEIGHTS:
        right = spent = 0.0
        for r, (p, plan_right) in zip(rows, predictions, strict=True):
            d = decide(p, costs, cost_weight=w, right=plan_right, router="fit")
            ok, cost = simulate(r.tiers, (d.start_tier or 1) - 1, (d.max_tier or n) - 1)
            right += ok
            spent += cost
        tried[f"{w:g}"] = {
            "accuracy": right / len(rows),
            "cost_share": spent / max(base_cost, 1e-12),
        }
        if spent <= base_cost + 1e-12 and (best is None or (right, -spent) > best[:2]):
            best = (right, -spent, w)
    info = {"cascade_accuracy": base_right / len(rows), "tried": tried}
    return (None if best is None else best[2]), info


def _check(rows: Sequence[Labelled], n: int) -> None:
    if len(rows) < 10:
        raise InputError(f"{len(rows)} labelled records: too few to train on (10 at least)")
    if any(len(r.tiers) != n for r in rows):
        raise InputError("a labelled record has the wrong number of tiers")


def fit_classifier(
    rows: Sequence[Labelled],
    tiers: Sequence[str],
    *,
    char_ngrams: tuple[int, int] | None = None,
    max_features: int = 20_000,
    c: float = 4.0,
    fit_weight: bool = True,
    table: bool = False,
    budget_share: float | None = None,
    budget_tier: int | None = None,
    seed: int = 0,
    trained_on: Mapping[str, Any] | None = None,
) -> ClassifierFile:
    """A classifier router file fitted on ``rows``; with ``table``, also a bagged plan
    table (policy ``table``, :mod:`~cascade.routing._ensemble`, file version 2) whose cost
    weight is chosen by cross-validation within ``budget_share`` of tier ``budget_tier``
    (0-based; default the dearest) alone, or without a share within the whole cascade's
    cost. ``seed`` seeds its k-means and folds (the same seed, the same file)."""
    n = len(tiers)
    _check(rows, n)
    if budget_share is not None and not 0 < budget_share <= 1e6:  # NaN included
        raise InputError(f"expected a number > 0, got {budget_share!r}", path="--budget-share")
    if not 0 <= seed <= MAX_SEED:
        raise InputError(f"expected 0 to {MAX_SEED}, got {seed!r}", path="--seed")
    if budget_tier is not None and not 0 <= budget_tier < n:
        raise InputError(f"no tier {budget_tier} among {n}", path="--budget-tier")
    costs = mean_costs(rows, n)
    fit = partial(_fit_model, n=n, char_ngrams=char_ngrams, max_features=max_features, c=c)
    weight: float | None = None
    info: dict[str, Any] = {}
    ensemble: TableEnsemble | None = None
    with _one_thread():
        fitted = fit(rows)
        over = too_many_weights(len(fitted.model.features.vocabulary), fitted.model.heads)
        if over:  # a file the loader would refuse (fewer tiers or features)
            raise InputError(f"the router would be too large to load: {over}", path="--out")
        if fit_weight:
            oof = _out_of_fold(rows, lambda part: fit(part).predict)
            weight, info = fit_cost_weight(rows, oof, costs)
        if table:
            ensemble, info["table"] = _fit_table(
                fitted, rows, costs, budget_share, budget_tier, seed
            )
    file = ClassifierFile(
        version=1 if ensemble is None else 2,
        tiers=list(tiers),
        costs=costs,
        cost_weight=weight,
        features=fitted.model.features,
        heads=list(fitted.model.heads),
        plans=[(s + 1, m + 1) for s, m in fitted.ranges],
        ensemble=ensemble,
        trained_on={**(trained_on or {}), "records": len(rows), "cost_weight_fit": info},
    )
    return within_file_size(file)


def _fit_table(
    fitted: _Fitted,
    rows: Sequence[Labelled],
    costs: Sequence[float],
    budget_share: float | None,
    budget_tier: int | None,
    seed: int,
) -> tuple[TableEnsemble, dict[str, Any]]:
    """The bagged plan table and its cross-validated and training figures (cost shares of
    the reference tier)."""
    if not fitted.ranges:
        raise InputError(
            "a plan table needs every tier's label on every record (a replay dataset, not "
            "production routing records)",
            path="--table",
        )
    n, width = fitted.n, len(fitted.model.features.vocabulary)
    if width * sum(ENSEMBLE_COUNTS) * PER_COUNT > MAX_TABLE_CELLS:  # a file it could not load
        raise InputError(
            f"a plan table over {width} terms is too large to load: at most "
            f"{MAX_TABLE_CELLS // (sum(ENSEMBLE_COUNTS) * PER_COUNT)} (max_features)",
            path="--table",
        )
    ref_tier = budget_tier if budget_tier is not None else max(range(n), key=costs.__getitem__)
    right, cost = plan_outcomes(rows, fitted.ranges)
    ref = max(costs[ref_tier], 1e-12)
    if budget_share is not None:
        cap = budget_share * ref
    else:  # the whole cascade's own mean cost
        cap = float(cost[:, fitted.ranges.index((0, n - 1))].mean())
    found, info = fit_ensemble(fitted.x, right, cost, fitted.ranges, cap=cap, ref=ref, seed=seed)
    info.update(
        reference_tier=ref_tier + 1, budget_share=budget_share, seed=seed, centroid_floor=0.0
    )
    return found, info


def fit_semantic(
    rows: Sequence[Labelled],
    tiers: Sequence[str],
    *,
    max_examples: int = 1000,
    k: int = 16,
    seed: int = 0,
    trained_on: Mapping[str, Any] | None = None,
) -> SemanticFile:
    """A semantic router file: a random sample of up to ``max_examples`` labelled texts
    (random, so that k-NN's outcome shares estimate the tiers' chances)."""
    n = len(tiers)
    _check(rows, n)
    picked = list(rows)
    random.Random(seed).shuffle(picked)
    picked = picked[:max_examples]
    examples = [
        Example(
            text=r.text[:MAX_EXAMPLE_CHARS],
            tiers=list(r.tiers),
        )
        for r in picked
    ]
    return SemanticFile(
        tiers=list(tiers),
        costs=mean_costs(rows, n),
        k=k,
        examples=examples,
        trained_on={**(trained_on or {}), "records": len(rows)},
    )
