"""``classifier``: a router trained on labelled examples (``cascade train-router``).

::

    [router]
    kind = "classifier"
    model = "router.json"        # written by `cascade train-router`
    # policy = "cascade"         # or "cheapest": the first tier likely right, no stop tier;
    #                            # or "table": the range the file's plan table gives the
    #                            # request's cluster (`cascade train-router --table`:
    #                            # a bagged table in a version-2 file, one table in a
    #                            # version-1 file)
    # cost_weight = 0.2          # overrides the file's (None: lowest cost per right answer)

It reads the text of the request's last user message (its first characters only, as the
file says), predicts for each tier the chance of each outcome, and picks the range of tiers
as :func:`~cascade.routing._policy.decide` does. Prediction runs on the event loop for a
short prompt and in a worker thread for a long one, short by the work its n-grams take
(:func:`inline_chars`: 2,000 characters of word unigrams and bigrams, under 100 with
character n-grams 2..5); for a bagged table, also for a short prompt whose known terms x
the table's clusters exceed ``INLINE_CELLS``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import anyio.to_thread
import numpy as np

from .._errors import ConfigError
from ._decision import RouteDecision, RouteRequest
from ._ensemble import EnsembleTable
from ._modelfile import load_classifier
from ._policy import Outcomes, Policy, choose
from ._textmodel import OUTCOMES, Features

__all__ = ["ClassifierRouter", "inline_chars", "prompt_text"]

INLINE_CHARS = 2000
"""Texts longer than this are featurised in a worker thread, for a model of word unigrams
and bigrams (:func:`inline_chars`: fewer for a model that looks up more n-grams)."""
CHAR_GRAM_WORK = 10
"""A character n-gram size's lookups per character, in word n-gram sizes' (a string per
character against one per word of ~5 characters; measured ~10x per size)."""


def inline_chars(features: Features) -> int:
    """The longest text featurised on the event loop: as much work as ``INLINE_CHARS``
    characters of word unigrams and bigrams, each word n-gram size counting 1 and each
    character n-gram size ``CHAR_GRAM_WORK`` (``char_ngrams`` 2..5: 95 characters)."""
    lo, hi = features.word_ngrams
    work = hi - lo + 1
    if features.char_ngrams is not None:
        clo, chi = features.char_ngrams
        work += CHAR_GRAM_WORK * (chi - clo + 1)
    return INLINE_CHARS * 2 // work


def prompt_text(request: RouteRequest, limit: int) -> str:
    """The text a learned router reads: the last user message, its first ``limit``
    characters."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content[:limit]
    return ""


def check_policy(
    policy: object, cost_weight: object, min_pass: object, *, table: bool = False
) -> None:
    """ConfigError at the bad parameter; ``table``: the router file has a plan table."""
    if policy not in ("cascade", "single", "cheapest", "table"):
        raise ConfigError(
            f"expected 'cascade', 'single', 'cheapest' or 'table', got {policy!r}", path="policy"
        )
    if policy == "table" and not table:
        raise ConfigError(
            "policy 'table' needs a router file with a plan table (cascade train-router --table)",
            path="policy",
        )
    if cost_weight is not None and not (
        isinstance(cost_weight, int | float) and 0 <= cost_weight <= 1e6
    ):
        raise ConfigError(f"expected a number >= 0, got {cost_weight!r}", path="cost_weight")
    if not (isinstance(min_pass, int | float) and 0 <= min_pass <= 1):
        raise ConfigError(f"expected a number in [0, 1], got {min_pass!r}", path="min_pass")


def tier_costs(file_costs: Sequence[float], request: RouteRequest) -> Sequence[float]:
    """Each tier's cost as the training measured it (votes and samples included); the
    request's own estimates when the file has none."""
    if any(file_costs):
        return file_costs
    return [t.est_cost_usd for t in request.tiers]


def mismatch(tiers: Sequence[str], request: RouteRequest, name: str) -> RouteDecision | None:
    """No opinion, with the reason, when the cascade's tiers are not the ones trained for."""
    names = [t.name for t in request.tiers]
    if names != list(tiers):
        return RouteDecision(
            reason=f"trained for tiers {list(tiers)}, the cascade has {names}"[:200],
            router=name,
        )
    return None


def aligned_heads(
    heads: Mapping[tuple[int, int], tuple[int, int]], n: int
) -> list[tuple[int, int] | None]:
    """Per range of ``n`` tiers in the order of :func:`~cascade.routing._policy.plans`,
    its (head, class) in ``heads`` or None."""
    return [heads.get((start, stop)) for start in range(n) for stop in range(start, n)]


class ClassifierRouter:
    """Routes by a TF-IDF + logistic-regression model read from ``model`` (JSON)."""

    def __init__(
        self,
        *,
        model: str | os.PathLike[str],
        policy: Policy = "cascade",
        cost_weight: float | None = None,
        min_pass: float = 0.5,
        name: str = "classifier",
    ) -> None:
        self.file, self.model = load_classifier(model, at="model")
        table = bool(self.file.clusters) or self.file.ensemble is not None
        check_policy(policy, cost_weight, min_pass, table=table)
        self.ensemble = (
            None
            if self.file.ensemble is None or policy != "table"
            else EnsembleTable(self.file.ensemble, len(self.file.features.vocabulary))
        )
        self.name = name
        self.path = str(model)
        self.policy: Policy = policy
        self.cost_weight = cost_weight if cost_weight is not None else self.file.cost_weight
        self.min_pass = float(min_pass)
        self.inline_chars = inline_chars(self.file.features)
        # where each figure a decision needs sits in TextModel.class_probabilities' lists
        # (-1: the head has no such class, its chance 0.0): per tier its head's accepted
        # and right, accepted and wrong, rejected and right; per plan its head's right
        n = len(self.file.tiers)
        self._at = [
            tuple(h.classes.index(c) if c in h.classes else -1 for c in OUTCOMES[:3])
            for h in self.file.heads[:n]
        ]
        # and per range of tiers, in the order of _policy.plans, its head's right (None:
        # the range has no head of its own)
        heads = {
            (start - 1, stop - 1): (n + i, h.classes.index("right") if "right" in h.classes else -1)
            for i, ((start, stop), h) in enumerate(
                zip(self.file.plans, self.file.heads[n:], strict=False)
            )
        }
        self._right_at = aligned_heads(heads, n)

    def __repr__(self) -> str:
        return f"<ClassifierRouter {self.path!r} {self.policy} tiers={self.file.tiers}>"

    def predict(self, text: str) -> tuple[list[dict[str, float]], dict[tuple[int, int], float]]:
        """Per tier, the chance of each outcome; per range of tiers (0-based), the chance of
        a right answer where the file has a head for it."""
        out = self.model.predict(text)
        n, plans = len(self.file.tiers), self.file.plans
        right = {
            (start - 1, stop - 1): p.get("right", 0.0)
            for (start, stop), p in zip(plans, out[n : n + len(plans)], strict=True)
        }
        return out[:n], right

    def figures(self, text: str) -> tuple[Outcomes, list[float | None]]:
        """:meth:`predict` as :func:`~cascade.routing._policy.choose` takes it: per tier
        its outcomes' chances; per range of tiers (aligned) the chance of a right answer
        its head gives, None where it has no head."""
        ps = self.model.class_probabilities(self.model.logits(text))
        tiers = [(p[a], p[b], p[c]) for p, (a, b, c) in zip(ps, self._at, strict=False)]
        return tiers, [None if at is None else ps[at[0]][at[1]] for at in self._right_at]

    def cluster(self, text: str) -> int:
        """The plan table's cluster of ``text``: its nearest centroid."""
        return self.model.likeliest(text, len(self.model.heads) - 1)

    async def route(self, request: RouteRequest) -> RouteDecision:
        off = mismatch(self.file.tiers, request, self.name)
        if off is not None:
            return off
        text = prompt_text(request, self.model.features.max_chars)
        table = self.ensemble
        if table is not None:
            if len(text) > self.inline_chars:
                return await anyio.to_thread.run_sync(self.from_ensemble, table, text)
            idx, w = self.model.vector(text)
            if not table.inline(len(idx)):  # many known terms x many clusters
                return await anyio.to_thread.run_sync(self.from_vector, table, idx, w)
            return self.from_vector(table, idx, w)
        if self.policy == "table":
            if len(text) > self.inline_chars:
                c = await anyio.to_thread.run_sync(self.cluster, text)
            else:
                c = self.cluster(text)
            return self.from_table(c)
        if len(text) > self.inline_chars:
            tiers, right = await anyio.to_thread.run_sync(self.figures, text)
        else:
            tiers, right = self.figures(text)
        return self.choose(tiers, right, request)

    def from_ensemble(self, table: EnsembleTable, text: str) -> RouteDecision:
        """The bagged table's range for ``text``."""
        return self.from_vector(table, *self.model.vector(text))

    def from_vector(self, table: EnsembleTable, idx: np.ndarray, w: np.ndarray) -> RouteDecision:
        """The bagged table's range for a text's sparse vector."""
        j, right, cost = table.decide(idx, w)
        start, stop = table.ranges[j]
        return RouteDecision(
            start_tier=start + 1,
            max_tier=stop + 1,
            reason=(
                f"bagged table: tiers {start + 1}-{stop + 1}, right {right:.2f} and cost "
                f"{cost / table.ref:.0%} of the reference tier over the nearest "
                "clusters' training records"
            ),
            score=round(right, 4),
            router=self.name,
        )

    def from_table(self, c: int) -> RouteDecision:
        plan = self.file.clusters[c]
        top = max(self.file.costs[-1], 1e-12)
        return RouteDecision(
            start_tier=plan.start,
            max_tier=plan.stop,
            reason=(
                f"cluster {c}: tiers {plan.start}-{plan.stop}, right {plan.right:.2f} and "
                f"cost {plan.cost / top:.0%} of the top tier on its {plan.records} training "
                "records"
            ),
            score=round(plan.right, 4),
            router=self.name,
        )

    def choose(
        self, tiers: Outcomes, right: Sequence[float | None], request: RouteRequest
    ) -> RouteDecision:
        return choose(
            tiers,
            tier_costs(self.file.costs, request),
            policy=self.policy,
            cost_weight=self.cost_weight,
            min_pass=self.min_pass,
            right=right,
            router=self.name,
        )
