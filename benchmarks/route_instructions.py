"""Instructions per decision of a ``classifier`` router file, counted by valgrind's
callgrind: a deterministic figure where wall-clock p50s move with the machine's load.

    python benchmarks/route_instructions.py --classifier ROUTER_FILE [--rounds N]
        [--dataset REPLAY --every K] [--calls]

The texts are ``route_decision.py``'s mix (7 prompts, the same seed, asked with the
file's tier names) or, with ``--dataset``, every ``K``-th question of a replay dataset.
Each policy the file supports decides every text ``--rounds`` times, awaited as the engine
awaits it (one ``await router.route(request)``; a long text goes to a worker thread, whose
instructions count too). The script runs itself under ``valgrind --tool=callgrind``,
collecting only inside ``operator.call`` (which wraps each policy's batch and nothing
else) and dumping after each batch, so that loading the file, warming up and valgrind's
own start count for nothing. ``--calls`` counts Python calls per decision with cProfile
instead (no valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import operator
import pstats
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from route_decision import prompts

from cascade import Message, RequestOptions
from cascade._scoring import load_records
from cascade.routing import RouteRequest, TierInfo
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._modelfile import load_classifier


def requests(args: argparse.Namespace) -> tuple[list[str], list[RouteRequest]]:
    """The file's policies and the requests each decides."""
    file = load_classifier(args.classifier, at="--classifier")[0]
    tiers = tuple(
        TierInfo(index=i + 1, name=n, est_cost_usd=0.0004 * 10**i) for i, n in enumerate(file.tiers)
    )
    policies = ["cascade", "single", "cheapest"]
    if file.ensemble is not None or file.clusters:
        policies.append("table")
    if args.dataset is None:
        return policies, prompts(random.Random(14), tiers)
    texts = [r.question for r in load_records(args.dataset)][:: args.every]
    return policies, [
        RouteRequest(
            messages=(Message(role="user", content=text),),
            options=RequestOptions(),
            tiers=tiers,
            max_cost_usd=None,
        )
        for text in texts
    ]


async def batch(router: ClassifierRouter, asked: list[RouteRequest], rounds: int) -> None:
    for _ in range(rounds):
        for request in asked:
            await router.route(request)


def inside(args: argparse.Namespace) -> None:
    """Under valgrind: one ``operator.call`` (collected, then dumped) per policy."""
    policies, asked = requests(args)
    loop = asyncio.new_event_loop()
    for policy in policies:
        router = ClassifierRouter(model=args.classifier, policy=policy)  # type: ignore[arg-type]
        loop.run_until_complete(batch(router, asked, 1))  # warm up
        operator.call(loop.run_until_complete, batch(router, asked, args.rounds))
    loop.close()


def calls(args: argparse.Namespace) -> None:
    policies, asked = requests(args)
    loop = asyncio.new_event_loop()
    print(f"{len(asked)} texts x {args.rounds} rounds per policy")
    for policy in policies:
        router = ClassifierRouter(model=args.classifier, policy=policy)  # type: ignore[arg-type]
        loop.run_until_complete(batch(router, asked, 1))
        profile = cProfile.Profile()
        profile.enable()
        loop.run_until_complete(batch(router, asked, args.rounds))
        profile.disable()
        total = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
        print(f"{policy:<10}{total / (args.rounds * len(asked)):>10.1f} Python calls / decision")
    loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classifier", required=True, help="a cascade train-router file")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--dataset", help="a replay dataset: its questions instead of the mix")
    parser.add_argument("--every", type=int, default=10, help="with --dataset: every K-th")
    parser.add_argument("--calls", action="store_true", help="Python calls (cProfile) instead")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    if args.calls:
        calls(args)
        return
    policies, asked = requests(args)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=_operator_call",
            "--dump-after=_operator_call",
            f"--callgrind-out-file={out}",
            sys.executable,
            *sys.argv,
            "--inside",
        ]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dumps = sorted(Path(folder).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        totals = []
        for dump in dumps:
            found = re.search(r"^totals: (\d+)", dump.read_text(), re.MULTILINE)
            if found and int(found.group(1)):
                totals.append(int(found.group(1)))
    if len(totals) != len(policies):
        raise SystemExit(f"expected {len(policies)} callgrind dumps with totals, got {totals}")
    n = args.rounds * len(asked)
    print(f"{len(asked)} texts x {args.rounds} rounds per policy (callgrind)")
    for policy, total in zip(policies, totals, strict=True):
        print(f"{policy:<10}{total / n / 1000:>10.1f}k instructions / decision")


if __name__ == "__main__":
    main()
