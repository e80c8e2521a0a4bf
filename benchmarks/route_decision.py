"""What a router's decision costs, per request, called as the engine calls it (one
``await router.route(request)`` with the request's TierInfo already built).

    python benchmarks/route_decision.py [--requests N] [--json] [--router TABLE.json]
        [--classifier ROUTER_FILE]

Prompts are drawn from a fixed mix (short questions, a few hundred words, an SQL query,
2 KiB of text) with seeded randomness; each router decides every prompt of the mix in
turn, and the p50 / p99 of single decisions (``time.perf_counter_ns``) are reported in
microseconds. ``--router`` adds a router of your own from a JSON ``[router]`` table
(``{"kind": "...", ...}``); ``examples/mixed/rules.toml``'s router (derived from
mixed-replay's ``train``) is always measured. ``--classifier`` adds a ``cascade
train-router`` file's ``classifier`` router under each policy it supports, asked with the
file's own tier names (a cascade of other tiers gets no opinion, in a few microseconds).
Targets: ``rules`` and the classifier at most 100 us p50 (issue #14).

The ``llm`` router is not here: its decision is a provider call (the engine's), measured
by the run's own spans and, through the engine against the fake OpenAI server, by
``routing_compare.py`` (its ``llm`` line); its cached path is a dict lookup after hashing
the prompt.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cascade import Message, RequestOptions, load_config
from cascade.routing import Router, RouteRequest, TierInfo, build_router
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._modelfile import load_classifier

TIERS = (
    TierInfo(index=1, name="small", est_cost_usd=0.0004),
    TierInfo(index=2, name="medium", est_cost_usd=0.004),
    TierInfo(index=3, name="large", est_cost_usd=0.04),
)

RULES: dict[str, Any] = {
    "kind": "rules",
    "default": {"start_tier": 1},
    "rules": [
        {"metadata": {"task": ["clutrr", "logic"]}, "start_tier": 3},
        {"keywords": ["prove", "derive", "theorem", "lemma", "integral"], "start_tier": 2},
        {"pattern": r"\bSELECT\b.+\bFROM\b", "start_tier": 2, "max_tier": 2},
        {"min_tokens": 400, "start_tier": 2},
        {"max_tokens": 30, "max_tier": 1},
    ],
}
MIXED_RULES = Path(__file__).resolve().parent.parent / "examples" / "mixed" / "rules.toml"
ROUTERS: dict[str, dict[str, Any]] = {
    "rules (5 rules)": RULES,
    "rules (mixed/rules.toml)": load_config(MIXED_RULES).router or {},
    "cost": {"kind": "cost"},
    "first_of(rules, cost)": {"kind": "first_of", "routers": [RULES, {"kind": "cost"}]},
}

WORDS = [
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "it",
    "that",
    "for",
    "on",
    "with",
    "as",
    "was",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "which",
    "team",
    "player",
    "game",
    "scored",
    "season",
    "relation",
    "mother",
    "brother",
    "question",
    "answer",
    "number",
    "proof",
    "sum",
    "value",
    "total",
    "people",
    "year",
    "city",
    "river",
]


def prompts(rng: random.Random, tiers: tuple[TierInfo, ...] = TIERS) -> list[RouteRequest]:
    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    shapes: list[tuple[str, dict[str, str] | None]] = [
        ("What is the capital of France?", None),
        (text(60) + "?", {"task": "sports"}),
        (text(300), None),
        ("SELECT name, total FROM orders WHERE total > 10 -- explain this query", None),
        (text(40) + " Prove that the sum is even.", None),
        (text(120), {"task": "clutrr"}),
        ("x" * 2048, None),
    ]
    return [
        RouteRequest(
            messages=(Message(role="user", content=body),),
            options=RequestOptions(metadata=metadata),
            tiers=tiers,
            max_cost_usd=0.01,
        )
        for body, metadata in shapes
    ]


async def measure(router: Router, requests: list[RouteRequest], n: int) -> dict[str, float]:
    for request in requests:  # warm up (compiled patterns, caches)
        await router.route(request)
    times: list[int] = []
    clock = time.perf_counter_ns
    for i in range(n):
        request = requests[i % len(requests)]
        t0 = clock()
        await router.route(request)
        times.append(clock() - t0)
    times.sort()
    return {
        "p50_us": statistics.median(times) / 1000,
        "p99_us": times[int(len(times) * 0.99)] / 1000,
    }


def synthetic_model2vec(folder: str, *, words: int = 30_000, dims: int = 256) -> None:
    """A static model in model2vec's format of a published one's shape (potion-base-8M:
    about 30k tokens of 256 dimensions), random vectors, a word-level tokenizer: what a
    decision costs does not depend on what the vectors mean."""
    import numpy as np
    from model2vec import StaticModel
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    vocab = ["[UNK]", "[PAD]", *dict.fromkeys(WORDS)]
    vocab += [f"w{i}" for i in range(words - len(vocab))]
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    vectors = np.random.default_rng(14).standard_normal((len(vocab), dims)).astype(np.float32)
    StaticModel(vectors=vectors, tokenizer=tokenizer, normalize=True).save_pretrained(folder)


def semantic_table(folder: str, cache_size: int) -> dict[str, Any]:
    """Four routes of five example texts each, on the model in ``folder``; ``cache_size``
    texts' embeddings kept (0: every decision embeds its text)."""
    rng = random.Random(7)
    routes = [
        {
            "name": name,
            "start_tier": start,
            "examples": [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(5)],
        }
        for name, start in (("a", 1), ("b", 2), ("c", 3), ("d", 1))
    ]
    embedder = {"kind": "model2vec", "path": folder}
    return {"kind": "semantic", "embedder": embedder, "routes": routes, "cache_size": cache_size}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--router", help="a JSON [router] table to measure too")
    parser.add_argument("--classifier", help="a cascade train-router file to measure too")
    parser.add_argument(
        "--model2vec",
        nargs="?",
        const="synthetic",
        help="the semantic router on a local model2vec model too: a folder, or (no value) a "
        "synthetic model of a real one's shape (30,000 words, 256 dimensions)",
    )
    args = parser.parse_args()
    routers = dict(ROUTERS)
    if args.router:
        table = json.loads(args.router)
        routers[str(table.get("kind"))] = table
    requests = prompts(random.Random(14))
    figures = {
        name: await measure(build_router(table), requests, args.requests)
        for name, table in routers.items()
    }
    if args.classifier:
        file = load_classifier(args.classifier, at="--classifier")[0]
        named = tuple(
            TierInfo(index=i + 1, name=n, est_cost_usd=0.0004 * 10**i)
            for i, n in enumerate(file.tiers)
        )
        own = prompts(random.Random(14), named)
        policies = ["cascade", "single", "cheapest"]
        if file.ensemble is not None or file.clusters:
            policies.append("table")
        for policy in policies:
            router = ClassifierRouter(model=args.classifier, policy=policy)  # type: ignore[arg-type]
            figures[f"classifier ({policy})"] = await measure(router, own, args.requests)
    if args.model2vec:
        with tempfile.TemporaryDirectory() as tmp:
            folder = args.model2vec
            if folder == "synthetic":
                folder = str(Path(tmp) / "m2v")
                synthetic_model2vec(folder)
            for label, cache_size in (("uncached", 0), ("cached", 4096)):
                router = build_router(semantic_table(folder, cache_size))
                figures[f"semantic (model2vec, {label})"] = await measure(
                    router, requests, args.requests
                )
    if args.json:
        json.dump(figures, sys.stdout, indent=2)
        print()
        return
    print(f"{args.requests} decisions per router over a mix of {len(requests)} prompts")
    print(f"{'router':<28}{'p50 us':>10}{'p99 us':>10}")
    for name, f in figures.items():
        print(f"{name:<28}{f['p50_us']:>10.1f}{f['p99_us']:>10.1f}")
    print()
    for name, f in figures.items():
        if name.startswith(("rules", "classifier")):
            verdict = "PASS" if f["p50_us"] <= 100 else "MISS"
            print(f"target: {verdict}  {name} p50 {f['p50_us']:.1f} us (target <= 100 us)")


if __name__ == "__main__":
    asyncio.run(main())
