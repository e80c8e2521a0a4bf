"""What drawing samples of one prompt with ``n`` saves: the same votes, prompts billed once.

    python benchmarks/n_batching.py [--dataset PATH] [--config PATH] [--json]

Runs a self-consistency config over the recorded GSM8K answers twice through the real
engine (replay providers, no network): with ``batch_samples`` on (the default: a
validator's further samples of one prompt variant go in one request with ``n``, billed as
an OpenAI-compatible API bills ``n``: the prompt once, the output per answer) and off (one
request per sample). The answers served are the same either way, so accuracy and the tier
that answers must not change; only the prompt tokens billed do.

Targets (exit 1 when missed): identical accuracy and answering tiers, and batching costs
less than one request per sample.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import msgspec

from cascade import Config, load_config
from cascade._eval import Scoring, evaluate, load_records
from cascade.validators._extract import get_extractor

ROOT = Path(__file__).parents[1]
DATASET = ROOT.parent / "shared" / "data" / "gsm8k-replay" / "gsm8k_replay.jsonl.gz"
CONFIG = ROOT / "examples" / "gsm8k" / "same_prompt_vote.toml"


def unbatched(config: Config) -> Config:
    tiers = [
        msgspec.structs.replace(
            t, providers=[msgspec.structs.replace(p, batch_samples=False) for p in t.providers]
        )
        for t in config.tiers
    ]
    return msgspec.structs.replace(config, tiers=tiers)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default=str(DATASET))
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--answer-type", default="number")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    config = load_config(args.config)
    records = load_records(args.dataset)
    scoring = Scoring(extract=get_extractor("auto"), answer_type=args.answer_type)
    on, off = evaluate(
        [("n", config), ("one-by-one", unbatched(config))],
        records,
        scoring=scoring,
        base_dir=Path(args.config).parent,
    )
    saved = off.cost_usd - on.cost_usd
    figures = {
        "config": args.config,
        "requests": on.requests,
        "accuracy": on.accuracy,
        "accuracy_one_by_one": off.accuracy,
        "cost_usd_n": on.cost_usd,
        "cost_usd_one_by_one": off.cost_usd,
        "saved_usd": saved,
        "cost_ratio": on.cost_usd / off.cost_usd,
        "share_of_top_tier_n": on.cost_share,
        "share_of_top_tier_one_by_one": off.cost_share,
        "calls_per_request": on.calls_per_request,
    }
    checks = {
        "same accuracy": on.accuracy == off.accuracy,
        "same answering tiers": on.answered_by == off.answered_by,
        "n costs less": on.cost_usd < off.cost_usd,
    }
    if args.json:
        print(json.dumps({**figures, "checks": checks}))
    else:
        print(f"{on.requests} requests, {args.config}")
        print(f"accuracy           {on.accuracy:.2%} (one by one: {off.accuracy:.2%})")
        print(f"cost with n        ${on.cost_usd:.4f}  ({on.cost_share:.1%} of always-top-tier)")
        print(f"cost one by one    ${off.cost_usd:.4f}  ({off.cost_share:.1%} of always-top-tier)")
        print(f"saved              ${saved:.4f}  (ratio {on.cost_usd / off.cost_usd:.3f}x)")
        for name, ok in checks.items():
            print(f"{'PASS' if ok else 'FAIL'}  {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
