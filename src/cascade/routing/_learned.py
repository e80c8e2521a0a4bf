"""Registers the learned routers, ``classifier`` and ``semantic``, without importing
numpy: their modules load when a config names them (the ``router`` extra brings numpy and
scikit-learn; ``semantic``'s local embedder needs the ``embeddings`` extra)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from .._errors import ConfigError
from ._decision import Router
from ._registry import router

__all__ = ["classifier", "semantic"]


def _missing(kind: str, exc: ImportError) -> ConfigError:
    return ConfigError(
        f"router {kind!r} needs numpy ({exc.name} is missing): "
        "pip install 'cascade-engine[router]'",
        path="kind",
    )


@router("classifier", paths=("model",))
def classifier(
    *,
    model: str | os.PathLike[str],
    policy: str = "cascade",
    cost_weight: float | None = None,
    min_pass: float = 0.5,
    name: str = "classifier",
) -> Router:
    """A TF-IDF + logistic-regression router read from ``model`` (``cascade train-router``)."""
    try:
        from ._classifier import ClassifierRouter
    except ImportError as exc:
        raise _missing("classifier", exc) from None
    return ClassifierRouter(
        model=model,
        policy=policy,  # type: ignore[arg-type]  # checked by the router
        cost_weight=cost_weight,
        min_pass=min_pass,
        name=name,
    )


@router("semantic", paths=("model", "embedder.path"))
def semantic(
    *,
    embedder: Mapping[str, Any],
    model: str | os.PathLike[str] | None = None,
    routes: Sequence[Mapping[str, Any]] | None = None,
    policy: str = "cascade",
    cost_weight: float | None = None,
    threshold: float = 0.0,
    cache_size: int = 4096,
    name: str = "semantic",
) -> Router:
    """Nearest examples by embedding: k-NN over a trained file's labelled examples
    (``model``), or the nearest centroid of a few example texts per route (``routes``)."""
    try:
        from ._semantic import SemanticRouter
    except ImportError as exc:
        raise _missing("semantic", exc) from None
    return SemanticRouter(
        embedder=embedder,
        model=model,
        routes=routes,
        policy=policy,  # type: ignore[arg-type]  # checked by the router
        cost_weight=cost_weight,
        threshold=threshold,
        cache_size=cache_size,
        name=name,
    )
