"""Fit the GPT-3.5 vote of ``vote_then_gpt4.toml`` on mixed-replay's ``train`` split.

Replays, offline and in a few seconds, what the engine would do for each candidate: the
GPT-3.5 formats in a given order, ``samples`` of them with early stopping (the engine's own
``next_batch``), accepted when ``min_agreement`` of them agree under ``answer_type =
"auto"``; else GPT-4 ``standard``, unless it states no final answer (then the vote's
plurality). Candidates: every ordered choice of 2 to 5 of the five formats and every
agreement level. Prints the most accurate ones costing at most ``--budget`` of always-GPT-4
``standard`` on ``train``. Only ``train`` is read: report ``test`` figures with ``cascade
eval --split test`` on the chosen config, never from this script.

    python examples/mixed/fit.py --dataset ../shared/data/mixed-replay/mixed_replay.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

from cascade import answer_type
from cascade.validators.consistency import next_batch, votes_needed

FORMATS = ("COT", "LtM", "NL+SL", "noNL", "standard")
PRICES = {"gpt-3.5-turbo": (0.5, 1.5), "gpt-4": (30.0, 60.0)}  # $ per million, in / out
OVERHEAD = 500  # prompt tokens a call for the few-shot examples, as in the configs
AUTO = answer_type("auto")


def cost(record: dict[str, Any], model: str, response: dict[str, Any]) -> float:
    price_in, price_out = PRICES[model]
    prompt = record["question_tokens"] + OVERHEAD
    return (prompt * price_in + response["output_tokens"] * price_out) / 1e6


def vote(
    record: dict[str, Any], formats: Sequence[str], samples: int, agreement: float
) -> tuple[str | None, bool, float]:
    """(answer, accepted, cost) of the GPT-3.5 tier, as the engine draws it."""
    answers = {r["variant"]: r for r in record["responses"]["gpt-3.5-turbo"]}
    needed = votes_needed(samples, agreement)
    tally: Counter[Hashable] = Counter()
    drawn: list[tuple[Hashable | None, str | None]] = []
    spent = 0.0
    batch = 1
    while batch:
        for _ in range(batch):
            response = answers.get(formats[len(drawn) % len(formats)])
            answer = None if response is None else response.get("answer")
            if response is not None:
                spent += cost(record, "gpt-3.5-turbo", response)
            key = AUTO.key(None if answer is None else str(answer))
            drawn.append((key, answer))
            if key is not None:
                tally[key] += 1
        batch = next_batch(max(tally.values(), default=0), len(drawn), samples, needed)
    top = max(tally.values(), default=0)
    first = next((answer for key, answer in drawn if key is not None and tally[key] == top), None)
    return first, top >= needed, spent


def evaluate(
    records: Sequence[dict[str, Any]], formats: Sequence[str], samples: int, agreement: float
) -> tuple[float, float]:
    right, spent = 0, 0.0
    for record in records:
        answer, accepted, paid = vote(record, formats, samples, agreement)
        spent += paid
        if not accepted:
            big = next(r for r in record["responses"]["gpt-4"] if r["variant"] == "standard")
            spent += cost(record, "gpt-4", big)
            if big.get("answer") is not None:
                answer = big["answer"]
        right += answer is not None and AUTO.same(str(answer), str(record["expected"]))
    return right / len(records), spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--budget", type=float, default=0.45, help="share of always-GPT-4")
    parser.add_argument("--top", type=int, default=10)
    args = parser.parse_args()
    with gzip.open(args.dataset, "rt") as f:
        records = [r for r in map(json.loads, f) if r["split"] == "train"]
    baseline = sum(
        cost(r, "gpt-4", next(x for x in r["responses"]["gpt-4"] if x["variant"] == "standard"))
        for r in records
    )
    rows = []
    for k in range(2, len(FORMATS) + 1):
        for formats in itertools.permutations(FORMATS, k):
            for agreement in sorted({votes_needed(k, a) / k for a in (0.5, 0.6, 0.75, 1.0)}):
                accuracy, spent = evaluate(records, formats, k, agreement)
                if spent <= args.budget * baseline:
                    rows.append((accuracy, spent / baseline, formats, agreement))
    rows.sort(key=lambda row: (-row[0], row[1]))
    print(f"train: {len(records)} records; always-GPT-4 standard ${baseline:.2f}")
    for accuracy, share, formats, agreement in rows[: args.top]:
        print(f"{accuracy:.4f}  {share:6.1%}  {', '.join(formats)}  min_agreement={agreement:g}")


if __name__ == "__main__":
    main()
