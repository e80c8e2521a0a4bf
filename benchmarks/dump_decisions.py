"""Every decision of a ``classifier`` router file on every text of a dataset, as JSON: to
check that a change to the featuriser or the policy leaves decisions as they were.

    python benchmarks/dump_decisions.py --model router.json \\
        --dataset ../shared/data/mixed-replay/mixed_replay.jsonl.gz > new.json
    # the same from a checkout of the commit before (git worktree add /tmp/old <commit>):
    (cd /tmp/old && PYTHONPATH=src python benchmarks/dump_decisions.py ...) > old.json
    cmp old.json new.json

Each policy the file supports (``cascade``, ``single``, ``cheapest``, and ``table`` when
it has a plan table) decides each record's question, asked with the file's own tier
names; the whole decision is kept (tiers, score, tier scores and the reason, whose
figures are printed to two places), so ``cmp`` compares them all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import msgspec

from cascade import Message, RequestOptions
from cascade._scoring import load_records
from cascade.routing import RouteRequest, TierInfo
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._modelfile import load_classifier


async def decisions(path: str, questions: list[str]) -> dict[str, list[object]]:
    file = load_classifier(path, at="--model")[0]
    tiers = tuple(TierInfo(index=i + 1, name=n, est_cost_usd=0.0) for i, n in enumerate(file.tiers))
    policies = ["cascade", "single", "cheapest"]
    if file.ensemble is not None or file.clusters:
        policies.append("table")
    out: dict[str, list[object]] = {}
    for policy in policies:
        router = ClassifierRouter(model=path, policy=policy)  # type: ignore[arg-type]
        got = []
        for question in questions:
            request = RouteRequest(
                messages=(Message(role="user", content=question),),
                options=RequestOptions(),
                tiers=tiers,
                max_cost_usd=None,
            )
            got.append(msgspec.to_builtins(await router.route(request)))
        out[policy] = got
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a cascade train-router file")
    parser.add_argument("--dataset", required=True, help="a replay dataset (every record)")
    args = parser.parse_args()
    questions = [r.question for r in load_records(args.dataset)]
    json.dump(asyncio.run(decisions(args.model, questions)), sys.stdout)
    print()


if __name__ == "__main__":
    main()
