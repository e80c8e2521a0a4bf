"""Cascade routing on mixed-replay: the cascade alone, a router alone, and both.

    python benchmarks/routing_compare.py \\
        --dataset ../shared/data/mixed-replay/mixed_replay.jsonl.gz [--json]

Fits a ``classifier`` router on the ``train`` split only (``cascade train-router``'s code:
every train record run through the real engine once per tier of
``examples/mixed/routed.toml``, TF-IDF + logistic regression per tier and per range of
tiers, the cost weight chosen on train by out-of-fold predictions), then runs the ``test``
split through the real engine over replayed answers, three ways with the same four tiers:

- cascade only: no router, every request from tier 1, validators escalate;
- router only: the router picks one tier per request and nothing escalates
  (``policy = "single"``; the tier's own vote still decides its answer);
- router + cascade: the router picks a range of tiers, validators escalate inside it.

References beside them: ``vote_then_gpt4.toml`` (the best cascade without routing) and
always-GPT-4 ``standard``. Prices as in the dataset README (gpt-3.5-turbo $0.50/$1.50,
gpt-4 $30/$60 per million tokens, 500 prompt-overhead tokens a call). Accuracy is
``cascade eval``'s (``answer_type = auto``; exact match is the same on this data). A
semantic row (k-NN, k = 16, over 1,000 train examples, with the cost weight fitted on
train for the classifier) uses the fake OpenAI server's hashed bag-of-words embeddings over
loopback: it shows the path works, not what a real embedding model would reach.

Exits 1 when "router + cascade" is less accurate than the cascade alone or costs more.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from cascade import Cascade, Message, load_config
from cascade._eval import _accuracy, _cost, run_all
from cascade._progress import Progress
from cascade._scoring import Scoring, load_records
from cascade.routing import RouteRequest, TierInfo
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._labels import label_records
from cascade.routing._modelfile import encode_file, load_classifier
from cascade.routing._semantic import SemanticRouter
from cascade.routing._train import fit_classifier, fit_semantic
from cascade.testing import FakeOpenAIServer
from cascade.validators._extract import get_extractor

ROOT = Path(__file__).resolve().parent.parent
ROUTED = ROOT / "examples" / "mixed" / "routed.toml"
VOTE = ROOT / "examples" / "mixed" / "vote_then_gpt4.toml"
GPT4 = ROOT / "examples" / "mixed" / "gpt4_standard.toml"


def run(
    config_path: Path, records: list[Any], scoring: Scoring, router: Any = None
) -> dict[str, Any]:
    config = load_config(config_path)
    cascade = Cascade(config, base_dir=config_path.parent, router=router)
    outcomes = anyio.run(
        lambda: run_all(
            cascade,
            [r.question for r in records],
            concurrency=16,
            progress=Progress(len(records), "", None),
        )
    )
    accuracy, exact = _accuracy(records, outcomes, scoring)
    return {
        "accuracy": accuracy,
        "exact": exact,
        "cost_usd": sum(_cost(o) for o in outcomes),
    }


def decision_p50_us(router: Any, texts: list[str], tiers: list[TierInfo]) -> float:
    async def go() -> float:
        times = []
        for text in texts:
            request = RouteRequest(
                messages=(Message(role="user", content=text),),
                options=cascade_options(),
                tiers=tuple(tiers),
                max_cost_usd=None,
            )
            t0 = time.perf_counter()
            await router.route(request)
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e6

    return anyio.run(go)


def cascade_options() -> Any:
    from cascade import RequestOptions

    return RequestOptions()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default="/tmp/cascade-routing-classifier.json")
    parser.add_argument("--no-semantic", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="load the classifier from --out if it exists"
    )
    args = parser.parse_args()

    scoring = Scoring(extract=get_extractor("auto"))
    config = load_config(ROUTED)
    tiers = [t.name for t in config.tiers]
    train = load_records(args.dataset, split="train")
    test = load_records(args.dataset, split="test")
    t0 = time.perf_counter()
    labelled = label_records(config, train, scoring=scoring, base_dir=ROUTED.parent)
    if args.reuse and Path(args.out).exists():
        fitted = load_classifier(args.out, at="--out")[0]
    else:
        fitted = fit_classifier(labelled, tiers, trained_on={"split": "train"})
        Path(args.out).write_bytes(encode_file(fitted))
    print(
        f"fitted on {len(train)} train records in {time.perf_counter() - t0:.0f} s; "
        f"cost_weight {fitted.cost_weight}",
        file=sys.stderr,
    )

    rows: dict[str, dict[str, Any]] = {}
    rows["always gpt-4 standard"] = run(GPT4, test, scoring)
    rows["vote_then_gpt4.toml (no router)"] = run(VOTE, test, scoring)
    rows["cascade only (routed.toml, no router)"] = run(ROUTED, test, scoring)
    single = ClassifierRouter(model=args.out, policy="single")
    both = ClassifierRouter(model=args.out, policy="cascade")
    rows["router only (classifier, one tier)"] = run(ROUTED, test, scoring, single)
    rows["router + cascade (classifier)"] = run(ROUTED, test, scoring, both)
    infos = [TierInfo(index=i + 1, name=n, est_cost_usd=0.0) for i, n in enumerate(tiers)]
    texts = [r.question for r in test[:1000]]
    rows["router + cascade (classifier)"]["p50_us"] = decision_p50_us(both, texts, infos)
    rows["router only (classifier, one tier)"]["p50_us"] = decision_p50_us(single, texts, infos)

    if not args.no_semantic:
        sem_file = Path(args.out).with_suffix(".semantic.json")
        sem_file.write_bytes(encode_file(fit_semantic(labelled, tiers, k=16)))

        async def with_server() -> tuple[dict[str, Any], float]:
            async with FakeOpenAIServer() as server:
                server.embedding_dim = 256
                router = SemanticRouter(
                    embedder={"kind": "openai", "base_url": server.url, "model": "hashed"},
                    model=str(sem_file),
                    cost_weight=fitted.cost_weight,  # the classifier's, fitted on train
                    cache_size=8192,
                )
                await router.warm()
                row = await anyio.to_thread.run_sync(lambda: run(ROUTED, test, scoring, router))
                p50 = await anyio.to_thread.run_sync(lambda: decision_p50_us(router, texts, infos))
                return row, p50

        row, p50 = anyio.run(with_server)
        row["p50_us"] = p50
        rows["router + cascade (semantic, hashed bag-of-words)"] = row

    reference = rows["always gpt-4 standard"]["cost_usd"]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        width = max(map(len, rows))
        print(f"test split, {len(test)} questions; router fitted on {len(train)} train questions")
        print(f"{'policy':<{width}}  accuracy  cost_usd  share of always-gpt-4  decision p50")
        for name, r in rows.items():
            p50 = f"{r['p50_us']:.0f} us" if "p50_us" in r else ""
            print(
                f"{name:<{width}}  {r['accuracy']:>8.1%}  ${r['cost_usd']:>7.2f}  "
                f"{r['cost_usd'] / reference:>20.1%}  {p50:>12}"
            )
    base = rows["cascade only (routed.toml, no router)"]
    got = rows["router + cascade (classifier)"]
    ok = got["accuracy"] >= base["accuracy"] and got["cost_usd"] <= base["cost_usd"]
    if not ok:
        print(
            "router + cascade is not at least as accurate as the cascade alone at no more cost",
            file=sys.stderr,
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
