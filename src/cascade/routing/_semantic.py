"""``semantic``: routing by embedding similarity.

Two forms::

    [router]                      # k-NN over the labelled examples of a trained file
    kind = "semantic"
    model = "semantic.json"       # cascade train-router --kind semantic
    embedder = { kind = "openai", base_url = "http://localhost:8000/v1", model = "e5" }

    [router]                      # the nearest centroid of a few example texts per route
    kind = "semantic"
    embedder = { kind = "model2vec", path = "models/potion-base-8M" }
    threshold = 0.3               # below this similarity: no opinion
    routes = [
      { start_tier = 2, examples = ["How is Anna related to Tom?", "..."] },
      { max_tier = 1, examples = ["Is this sentence plausible? ..."] },
    ]

With a file, the ``k`` nearest examples give each tier's outcome shares and each range of
tiers' share of right answers and mean cost (the cascade over the range simulated from the
examples' labels), and the range is chosen as the classifier chooses it. The examples
are embedded on first use and kept; request texts are cached (``cache_size``). When the
embedder fails the router has no opinion and says why (the run starts at the cascade's
first tier).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import anyio
import msgspec
import numpy as np
from msgspec import Meta

from .._errors import ConfigError
from ._classifier import check_policy, mismatch, prompt_text, tier_costs
from ._decision import RouteDecision, RouteRequest
from ._embed import EmbedError, build_embedder
from ._modelfile import SemanticFile, load_semantic
from ._params import convert
from ._policy import Policy, decide
from ._textmodel import OUTCOMES
from ._train import all_plans, simulate

__all__ = ["SemanticRouter"]

Tier = Annotated[int, Meta(ge=1, le=1000)]


class Route(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    examples: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=4000)]],
        Meta(min_length=1, max_length=1000),
    ]
    start_tier: Tier | None = None
    max_tier: Tier | None = None
    name: Annotated[str, Meta(max_length=100)] = ""


class _Routes(msgspec.Struct, frozen=True, kw_only=True):
    routes: Annotated[list[Route], Meta(min_length=1, max_length=100)]


class SemanticRouter:
    """Routes by the nearest labelled examples (``model``) or route centroids (``routes``)."""

    def __init__(
        self,
        *,
        embedder: Mapping[str, Any],
        model: str | os.PathLike[str] | None = None,
        routes: Sequence[Mapping[str, Any]] | None = None,
        policy: Policy = "cascade",
        cost_weight: float | None = None,
        threshold: float = 0.0,
        cache_size: int = 4096,
        name: str = "semantic",
    ) -> None:
        check_policy(policy, cost_weight, 0.5)
        if (model is None) == (routes is None):
            raise ConfigError("give either `model` (a trained file) or `routes`", path="model")
        if not (isinstance(threshold, int | float) and -1 <= threshold <= 1):
            raise ConfigError(f"expected a number in [-1, 1], got {threshold!r}", path="threshold")
        if not (isinstance(cache_size, int) and 0 <= cache_size <= 1_000_000):
            raise ConfigError(f"expected 0 to 1000000, got {cache_size!r}", path="cache_size")
        self.name = name
        self.policy: Policy = policy
        self.threshold = float(threshold)
        self.file: SemanticFile | None = None
        self.routes: list[Route] = []
        if model is not None:
            self.file = load_semantic(model, at="model")
            self.cost_weight = cost_weight if cost_weight is not None else self.file.cost_weight
            self._texts = [e.text for e in self.file.examples]
        else:
            self.routes = convert({"routes": list(routes or ())}, _Routes).routes
            self.cost_weight = cost_weight
            self._texts = [t for r in self.routes for t in r.examples]
        self.embedder = build_embedder(dict(embedder), cache_size=cache_size)
        self._index: np.ndarray | None = None  # examples' vectors, or route centroids
        self._lock = anyio.Lock()
        n = len(self.file.tiers) if self.file is not None else 0
        self._plans = all_plans(n)

    def __repr__(self) -> str:
        what = f"{len(self._texts)} examples" if self.file else f"{len(self.routes)} routes"
        return f"<SemanticRouter {what}, {self.embedder!r}>"

    async def aclose(self) -> None:
        await self.embedder.aclose()

    async def warm(self) -> None:
        """Embed the examples now rather than on the first request."""
        await self._ensure_index()

    async def _ensure_index(self) -> np.ndarray:
        async with self._lock:
            if self._index is None:
                # shielded: a request that times out while the examples are embedded must
                # not throw the work away (every later request would start it again)
                with anyio.CancelScope(shield=True):
                    rows = await self.embedder.inner.embed(self._texts)
                if self.file is None:
                    at, centroids = 0, []
                    for route in self.routes:
                        part = rows[at : at + len(route.examples)]
                        at += len(route.examples)
                        c = part.mean(axis=0)
                        norm = float(np.linalg.norm(c))
                        centroids.append(c / norm if norm > 0 else c)
                    rows = np.stack(centroids)
                self._index = rows
            return self._index

    async def route(self, request: RouteRequest) -> RouteDecision:
        if self.file is not None:
            off = mismatch(self.file.tiers, request, self.name)
            if off is not None:
                return off
        text = prompt_text(request, self.embedder.max_chars)
        try:
            index = await self._ensure_index()
            vector = (await self.embedder.embed([text]))[0]
        except EmbedError as exc:
            return RouteDecision(reason=f"no opinion: {exc}"[:200], router=self.name)
        if index.shape[1] != vector.shape[0]:
            return RouteDecision(
                reason=f"no opinion: {vector.shape[0]}-d query, {index.shape[1]}-d examples",
                router=self.name,
            )
        sims = index @ vector
        if self.file is None:
            return self._nearest_route(sims)
        return self._knn(sims, request)

    def _nearest_route(self, sims: np.ndarray) -> RouteDecision:
        best = int(np.argmax(sims))
        sim = float(sims[best])
        route = self.routes[best]
        label = route.name or f"route {best + 1}"
        if sim < self.threshold:
            return RouteDecision(
                reason=f"nearest is {label} at {sim:.2f}, under {self.threshold:g}",
                score=round(sim, 4),
                router=self.name,
            )
        return RouteDecision(
            start_tier=route.start_tier,
            max_tier=route.max_tier,
            reason=f"nearest {label} (similarity {sim:.2f})",
            score=round(sim, 4),
            router=self.name,
        )

    def _knn(self, sims: np.ndarray, request: RouteRequest) -> RouteDecision:
        assert self.file is not None
        k = min(self.file.k, sims.shape[0])
        near = np.argpartition(-sims, k - 1)[:k]
        examples = [self.file.examples[int(i)] for i in near]
        n = len(self.file.tiers)
        probs: list[dict[str, float]] = []
        for j in range(n):
            seen = [e.tiers[j].outcome for e in examples if e.tiers[j] is not None]  # type: ignore[union-attr]
            total = len(seen) + 0.5 * len(OUTCOMES)  # a half count each: no certainty from few
            probs.append({o: (seen.count(o) + 0.5) / total for o in OUTCOMES})
        right: dict[tuple[int, int], float] = {}
        cost: dict[tuple[int, int], float] = {}
        if all(t is not None for e in examples for t in e.tiers):
            for plan in self._plans:
                runs = [simulate(e.tiers, *plan) for e in examples]
                right[plan] = (sum(ok for ok, _ in runs) + 0.5) / (len(runs) + 1.0)
                cost[plan] = sum(c for _, c in runs) / len(runs)
        return decide(
            probs,
            tier_costs(self.file.costs, request),
            policy=self.policy,
            cost_weight=self.cost_weight,
            right=right,
            cost=cost,
            router=self.name,
        )
