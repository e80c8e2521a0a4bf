"""Derive ``rules.toml``'s ``rules`` router from mixed-replay's ``train`` split.

    python examples/mixed/derive_rules.py \\
        --dataset ../shared/data/mixed-replay/mixed_replay.jsonl.gz [--write]

A decision list learned greedily, the way a person would write one from a table of what
each tier does: every ``train`` question runs through the real engine once per tier of
``routed.toml`` (``cascade train-router``'s labels), which gives, for every range of tiers
a rule could name, whether the cascade over that range answers it right and at what cost
(simulated from the labels, as the engine runs a range). Conditions a rule may test:

- a keyword (a whole word of at least two letters or digits, case-insensitive) that the
  rules router finds, by its own search, in at least ``--min-support`` train questions;
- the prompt's estimated tokens at most, or at least, a decile of the train questions'.

Each question's value under a range is ``right - weight x cost / GPT-4's``. Starting from
one range for every question, the condition whose covered questions gain the most by a
range of their own (the rest keeping the best range for the rest) becomes the next rule,
its questions are set aside, and so on, up to ``--max-rules`` rules while a rule gains at
least a least gain of right answers; what is left gets the default range. The cost weight
is the smallest whose 5-fold cross-validated routing on ``train`` costs at most
``--budget-share`` of GPT-4 ``standard`` alone (as the bagged plan table's; the largest
tried when none does); the least gain, among ``GAINS``, the one whose list is the most
accurate in that cross-validation among those within the budget (the larger on a tie:
fewer rules). No task labels are read, and nothing of ``test``: report its figures with
``routing_compare.py`` (which runs ``rules.toml``'s router through the engine), never
from this script.

Without ``--write`` it prints the router table; with it, it writes ``rules.toml``:
``routed.toml``'s tiers and the ``[router]`` table.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cascade import Message, load_config
from cascade._scoring import Scoring, load_records
from cascade._types import estimate_prompt_tokens
from cascade.routing._ensemble import LAMBDAS, plan_outcomes
from cascade.routing._labels import label_records
from cascade.routing._train import all_plans
from cascade.validators._extract import get_extractor

HERE = Path(__file__).resolve().parent
ROUTED = HERE / "routed.toml"
OUT = HERE / "rules.toml"
FOLDS = 5
GAINS = (1.0, 2.0, 5.0, 10.0)
"""The least gains tried (right answers' worth, on train, a rule must add)."""
_WORD = re.compile(r"\w\w+")  # the candidate keywords: whole words of two characters
RULES_MAX_CHARS = 32_768
"""The characters of a text the rules router searches (its default ``max_chars``)."""

Condition = tuple[str, Any]  # ("keyword", word) | ("max_tokens", n) | ("min_tokens", n)


def conditions(texts: Sequence[str], min_support: int) -> tuple[list[Condition], np.ndarray]:
    """The candidate conditions and which texts each holds for (conditions x texts)."""
    words = [set(_WORD.findall(t.lower())) for t in texts]
    tokens = np.array([estimate_prompt_tokens([Message(role="user", content=t)]) for t in texts])
    support: dict[str, int] = {}
    for ws in words:
        for w in ws:
            support[w] = support.get(w, 0) + 1
    # where the rules router finds each keyword: its own search (rules.py), not the words
    # of the lower-cased text ("\u0130stanbul" lower-cases to a word "stanbul" the router
    # does not find there; the router finds "stop" in "\u017ftop")
    seen = [t[:RULES_MAX_CHARS] for t in texts]
    found: list[Condition] = []
    rows: list[list[bool]] = []
    for w in sorted(support):
        if support[w] < min_support:
            continue
        search = re.compile(rf"(?<!\w)(?:{re.escape(w)})(?!\w)", re.IGNORECASE).search
        row = [search(t) is not None for t in seen]
        if sum(row) >= min_support:
            found.append(("keyword", w))
            rows.append(row)
    for q in sorted({int(v) for v in np.quantile(tokens, np.linspace(0.1, 0.9, 9))}):
        found += [("max_tokens", q), ("min_tokens", q)]
        rows += [list(tokens <= q), list(tokens >= q)]
    return found, np.array(rows, dtype=bool).reshape(len(found), len(texts))


def decision_list(
    match: np.ndarray, value: np.ndarray, *, max_rules: int, min_support: int, min_gain: float
) -> tuple[list[tuple[int, int]], int]:
    """([(condition, range)], default range) over the records whose ``value`` (records x
    ranges) is given, greedily."""
    left = np.ones(value.shape[0], dtype=bool)
    rules: list[tuple[int, int]] = []
    for _ in range(max_rules):
        rest_total = value[left].sum(axis=0)
        base = rest_total.max()
        covered = (match & left).astype(np.float64) @ value  # conditions x ranges
        counts = (match & left).sum(axis=1)
        gain = covered.max(axis=1) + (rest_total - covered).max(axis=1) - base
        gain[counts < min_support] = -np.inf
        best = int(np.argmax(gain))
        if gain[best] < min_gain:
            break
        rules.append((best, int(np.argmax(covered[best]))))
        left &= ~match[best]
    return rules, int(np.argmax(value[left].sum(axis=0)))


def route(match: np.ndarray, rules: Sequence[tuple[int, int]], default: int) -> np.ndarray:
    """Each record's range under the list (the first matching rule, else the default)."""
    picked = np.full(match.shape[1], -1)
    for c, r in rules:
        picked[(picked < 0) & match[c]] = r
    picked[picked < 0] = default
    return picked


def fit(
    match: np.ndarray,
    right: np.ndarray,
    cost: np.ndarray,
    *,
    ref: float,
    budget_share: float,
    max_rules: int,
    min_support: int,
    min_gain: float,
) -> tuple[list[tuple[int, int]], int, dict[str, float]]:
    """The list at the smallest cost weight whose out-of-fold routing costs at most
    ``budget_share`` x ``ref`` a record (the largest weight when none does); with that
    weight's cross-validated and training figures."""
    n = right.shape[0]
    folds = np.arange(n) % FOLDS
    np.random.default_rng(0).shuffle(folds)
    rows = np.arange(n)
    kw = {"max_rules": max_rules, "min_support": min_support * (FOLDS - 1) // FOLDS}
    # none within the budget: the largest weight, its figures those of its own routing
    chosen, cv = LAMBDAS[-1], np.zeros(n, dtype=np.intp)
    for lam in LAMBDAS:
        value = right - lam * cost / ref
        oof = np.zeros(n, dtype=np.intp)
        for f in range(FOLDS):
            part = folds != f
            rules, default = decision_list(match[:, part], value[part], min_gain=min_gain, **kw)
            oof[~part] = route(match[:, ~part], rules, default)
        chosen, cv = lam, oof
        if cost[rows, oof].mean() <= budget_share * ref:
            break
    value = right - chosen * cost / ref
    rules, default = decision_list(
        match, value, max_rules=max_rules, min_support=min_support, min_gain=min_gain
    )
    picked = route(match, rules, default)
    figures = {
        "cost_weight": chosen,
        "cv_accuracy": float(right[rows, cv].mean()),
        "cv_cost_share": float(cost[rows, cv].mean() / ref),
        "train_accuracy": float(right[rows, picked].mean()),
        "train_cost_share": float(cost[rows, picked].mean() / ref),
    }
    return rules, default, figures


def toml_rule(cond: Condition, start: int, stop: int, reason: str) -> str:
    kind, arg = cond
    test = f'keywords = ["{arg}"]' if kind == "keyword" else f"{kind} = {arg}"
    return f'  {{ {test}, start_tier = {start}, max_tier = {stop}, reason = "{reason}" }},'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="mixed-replay (its train split only)")
    parser.add_argument("--budget-share", type=float, default=0.5)
    parser.add_argument("--max-rules", type=int, default=8)
    parser.add_argument("--min-support", type=int, default=20)
    parser.add_argument("--write", action="store_true", help=f"write {OUT.name}")
    args = parser.parse_args()

    config = load_config(ROUTED)
    tiers = [t.name for t in config.tiers]
    train = load_records(args.dataset, split="train")
    scoring = Scoring(extract=get_extractor("auto"))
    labelled = label_records(config, train, scoring=scoring, base_dir=ROUTED.parent)
    ranges = all_plans(len(tiers))
    right, cost = plan_outcomes(labelled, ranges)
    ref = float(cost[:, ranges.index((1, 1))].mean())  # tier gpt-4 (standard) alone
    found, match = conditions([r.question for r in train], args.min_support)
    fits = []
    for gain in GAINS:
        rules, default, figures = fit(
            match,
            right,
            cost,
            ref=ref,
            budget_share=args.budget_share,
            max_rules=args.max_rules,
            min_support=args.min_support,
            min_gain=gain,
        )
        print(
            f"least gain {gain:g}: {len(rules)} rules; 5-fold CV {figures['cv_accuracy']:.1%} "
            f"at {figures['cv_cost_share']:.1%}",
            file=sys.stderr,
        )
        fits.append((figures["cv_accuracy"], gain, rules, default, figures))
    # a list within the budget first (when no weight met it, the cross-validated cost says so)
    _, gain, rules, default, figures = max(
        fits, key=lambda f: (f[4]["cv_cost_share"] <= args.budget_share, *f[:2])
    )
    lines = ["[router]", 'kind = "rules"', "rules = ["]
    left = np.ones(len(train), dtype=bool)
    for c, r in rules:
        got = left & match[c]
        left &= ~match[c]
        start, stop = ranges[r]
        why = (
            f"train: {got.sum()} questions, {right[got, r].mean():.0%} right at "
            f"{cost[got, r].mean() / ref:.0%} of GPT-4"
        )
        lines.append(toml_rule(found[c], start + 1, stop + 1, why))
    start, stop = ranges[default]
    lines.append("]")
    why = (
        f"no rule matched (train: {left.sum()} questions, {right[left, default].mean():.0%} "
        f"right at {cost[left, default].mean() / ref:.0%} of GPT-4)"
    )
    lines.append(
        f'default = {{ start_tier = {start + 1}, max_tier = {stop + 1}, reason = "{why}" }}'
    )
    summary = (
        f"# least gain {gain:g}, cost weight {figures['cost_weight']:g}; train 5-fold CV "
        f"{figures['cv_accuracy']:.1%} at {figures['cv_cost_share']:.1%} of GPT-4 "
        f"`standard`;\n# the list on train {figures['train_accuracy']:.1%} at "
        f"{figures['train_cost_share']:.1%} ({len(train)} questions)"
    )
    table = "\n".join(lines) + "\n"
    print(summary, file=sys.stderr)
    if not args.write:
        print(table)
        return 0
    routed = ROUTED.read_text()
    body = routed[routed.index("on_exhausted") :]
    head = (
        "# mixed-replay through routed.toml's four tiers, routed by rules written from `train`\n"
        "# alone by derive_rules.py (a greedy decision list over keywords and prompt length,\n"
        "# its cost weight and least gain chosen by 5-fold CV on train, to spend at most\n"
        "# half of GPT-4 `standard` alone); no task labels at run time. Regenerate with\n"
        "#   python examples/mixed/derive_rules.py --dataset $M --write\n"
        f"{summary}\n\n"
    )
    OUT.write_text(head + body.rstrip("\n") + "\n\n" + table)
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
