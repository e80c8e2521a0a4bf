"""Cascade routing on mixed-replay: the cascade alone, a router alone, and both.

    python benchmarks/routing_compare.py \\
        --dataset ../shared/data/mixed-replay/mixed_replay.jsonl.gz [--json]
    python benchmarks/routing_compare.py \\
        --gsm8k ../shared/data/gsm8k-replay/gsm8k_replay.jsonl.gz [--json]

Fits a ``classifier`` router on the ``train`` split only (``cascade train-router``'s code:
every train record run through the real engine once per tier of
``examples/mixed/routed.toml``, TF-IDF + logistic regression per tier and per range of
tiers, the cost weight chosen on train by out-of-fold predictions), then runs the ``test``
split through the real engine over replayed answers, three ways with the same four tiers:

- cascade only: no router, every request from tier 1, validators escalate;
- router only: the router picks one tier per request and nothing escalates
  (``policy = "single"``; the tier's own vote still decides its answer);
- router + cascade: the router picks a range of tiers, validators escalate inside it;
- router + cascade (bagged plan table): the same file's plan table (``cascade train-router
  --table``): the train texts clustered 30 times (k-means, 2 to 16 clusters, 5 seeds
  each), a request's accuracy and cost per range of tiers averaged over its nearest
  clusters, the cost weight chosen by 5-fold cross-validation on train so that the
  routing costs at most ``--budget-share`` (0.5) of tier ``gpt-4`` (GPT-4 ``standard``)
  alone. Its train cross-validated figures are printed beside its test row; the table is
  refitted with seeds 0 to ``--seeds`` - 1 (k-means and folds) and every seed's test
  figures printed, with their mean, minimum and maximum.

The routers that learn nothing from a router file, on the same tiers and texts
(``_routing_rows.py``): ``rules`` (``examples/mixed/rules.toml``, a decision list that
``examples/mixed/derive_rules.py`` derived from ``train``); ``cost`` (``max_cost_usd`` the
budget whose routing of ``train`` is the most accurate within ``--budget-share`` of
always-GPT-4 there, each budget tried printed); ``first_of`` (``rules.toml``'s rules
without their default, then the bagged plan table, or the classifier); and ``llm``, whose
accuracy cannot be judged offline (the replay records no difficulty ratings): its
decision overhead through the engine against the fake OpenAI server and its tokens and
cost per decision are printed instead. Every row's decision p50 is measured in the same
run over 1,000 test texts spread evenly over the split (one ``await router.route(request)``
each, the tier estimates as the engine makes them; the split is ordered by task, so that
its first 1,000 would be two of its four tasks).

References beside them: ``vote_then_gpt4.toml`` (the best cascade without routing) and
always-GPT-4 ``standard``. Prices as in the dataset README (gpt-3.5-turbo $0.50/$1.50,
gpt-4 $30/$60 per million tokens, 500 prompt-overhead tokens a call). Accuracy is
``cascade eval``'s (``answer_type = auto``; exact match is the same on this data). A
semantic row (k-NN, k = 16, over 1,000 train examples, with the cost weight fitted on
train for the classifier) uses the fake OpenAI server's hashed bag-of-words embeddings over
loopback: it shows the path works, not what a real embedding model would reach.

Targets (issue #14), printed with their verdicts: the best routed configuration at least
0.75 accurate at no more than 50% of always-GPT-4 ``standard``'s cost (for the bagged
table: its mean accuracy over the seeds, and every seed within 50%); "router + cascade"
(classifier) at least as accurate as the cascade alone at no more cost. Exits 1 when one
is missed.

``--gsm8k``: routing must not make GSM8K's best configuration
(``examples/gsm8k/mixture_single_number.toml``) worse. The dataset has no split, so the
even-numbered records (0, 2, ...; the half that configuration's weights were chosen on,
BENCHMARKS.md) train the router and the odd-numbered ones are held out. The held-out
records run through the engine with the configuration alone, with its plan-table router
and with its classifier router (policy ``cascade``). Exits 1 when the plan-table router
is more than ``--tolerance`` (0.2 points) less accurate than the configuration alone, or
costs more.
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
from _fleet import print_targets
from _routing_rows import (
    cost_row,
    decision_p50_us,
    first_of_row,
    llm_overhead,
    print_llm,
    requests,
    rules_row,
    run_config,
    spread,
)

from cascade import load_config
from cascade._scoring import Scoring, load_records
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._labels import label_records
from cascade.routing._modelfile import encode_file, load_classifier
from cascade.routing._semantic import SemanticRouter
from cascade.routing._train import fit_classifier, fit_semantic
from cascade.testing import FakeOpenAIServer
from cascade.validators._extract import get_extractor

ROOT = Path(__file__).resolve().parent.parent
ROUTED = ROOT / "examples" / "mixed" / "routed.toml"
GSM8K_BEST = ROOT / "examples" / "gsm8k" / "mixture_single_number.toml"
VOTE = ROOT / "examples" / "mixed" / "vote_then_gpt4.toml"
GPT4 = ROOT / "examples" / "mixed" / "gpt4_standard.toml"


def run(
    config_path: Path, records: list[Any], scoring: Scoring, router: Any = None
) -> dict[str, Any]:
    return run_config(load_config(config_path), config_path.parent, records, scoring, router)


def table_info(fitted: Any) -> dict[str, Any]:
    info: dict[str, Any] = fitted.trained_on["cost_weight_fit"]["table"]
    return info


def print_rows(rows: dict[str, dict[str, Any]], reference: float, title: str) -> None:
    width = max(map(len, rows))
    print(title)
    print(f"{'policy':<{width}}  accuracy  cost_usd  share of the reference  decision p50")
    for name, r in rows.items():
        p50 = f"{r['p50_us']:.0f} us" if "p50_us" in r else ""
        print(
            f"{name:<{width}}  {r['accuracy']:>8.1%}  ${r['cost_usd']:>7.2f}  "
            f"{r['cost_usd'] / reference:>22.1%}  {p50:>12}"
        )


def gsm8k(args: argparse.Namespace) -> int:
    """Routing on GSM8K's best configuration: train on the even records, hold out the odd."""
    scoring = Scoring(extract=get_extractor("auto"), answer_type="number")
    config = load_config(GSM8K_BEST)
    tiers = [t.name for t in config.tiers]
    records = load_records(args.gsm8k)
    train, held = records[0::2], records[1::2]
    labelled = label_records(config, train, scoring=scoring, base_dir=GSM8K_BEST.parent)
    fitted = fit_classifier(labelled, tiers, table=True, trained_on={"split": "even records"})
    out = Path(args.out).with_suffix(".gsm8k.json")
    out.write_bytes(encode_file(fitted))
    info = table_info(fitted)
    cascade_cv = fitted.trained_on["cost_weight_fit"]["cascade_accuracy"]
    rows: dict[str, dict[str, Any]] = {}
    rows["mixture_single_number.toml (no router)"] = run(GSM8K_BEST, held, scoring)
    table = ClassifierRouter(model=out, policy="table")
    rows["+ plan-table router"] = run(GSM8K_BEST, held, scoring, table)
    both = ClassifierRouter(model=out, policy="cascade")
    rows["+ classifier router (policy cascade)"] = run(GSM8K_BEST, held, scoring, both)
    base, got = rows["mixture_single_number.toml (no router)"], rows["+ plan-table router"]
    drop = base["accuracy"] - got["accuracy"]
    targets = [
        {
            "name": "GSM8K: the plan-table router does not make the best configuration worse",
            "value": f"{got['accuracy']:.2%} at ${got['cost_usd']:.2f} against "
            f"{base['accuracy']:.2%} at ${base['cost_usd']:.2f}",
            "target": f"accuracy at most {args.tolerance:.1%} lower, cost no higher",
            "pass": drop <= args.tolerance + 1e-12 and got["cost_usd"] <= base["cost_usd"] + 1e-9,
        }
    ]
    if args.json:
        print(json.dumps({"rows": rows, "table": info, "targets": targets}, indent=1))
    else:
        print_rows(
            rows,
            base["cost_usd"],
            f"GSM8K odd records ({len(held)}, held out); routers fitted on the "
            f"{len(train)} even records; shares of the configuration alone",
        )
        print(
            f"bagged plan table: {info['members']} tables; 5-fold CV on the even records "
            f"{info['cv_accuracy']:.1%} at {info['cv_cost_share']:.1%} of GPT-4 alone "
            f"(the cascade alone there: {cascade_cv:.1%})"
        )
        print_targets(targets)
    return 0 if all(t["pass"] for t in targets) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", help="mixed-replay")
    parser.add_argument("--gsm8k", help="gsm8k-replay: the no-worse check instead")
    parser.add_argument(
        "--budget-share",
        type=float,
        default=0.5,
        help="the plan table's budget, a share of tier gpt-4 alone (default 0.5)",
    )
    parser.add_argument(
        "--tolerance", type=float, default=0.002, help="--gsm8k: accuracy lost allowed (0.002)"
    )
    parser.add_argument(
        "--seeds", type=int, default=10, help="fit the plan table with seeds 0..N-1 (10)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default="/tmp/cascade-routing-classifier.json")
    parser.add_argument("--no-semantic", action="store_true")
    parser.add_argument(
        "--llm-requests", type=int, default=300, help="requests timed for the llm row (300)"
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="load the classifier from --out (and each seed's table beside it) if it exists",
    )
    args = parser.parse_args()
    if args.gsm8k:
        return gsm8k(args)
    if not args.dataset:
        parser.error("give --dataset (mixed-replay) or --gsm8k")

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
        fitted = fit_classifier(
            labelled,
            tiers,
            table=True,
            budget_share=args.budget_share,
            budget_tier=tiers.index("gpt-4"),
            trained_on={"split": "train"},
        )
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
    table = ClassifierRouter(model=args.out, policy="table")
    info = table_info(fitted)
    table_row = f"router + cascade (bagged plan table, {info['members']} tables, seed 0)"
    rows[table_row] = run(ROUTED, test, scoring, table)
    seeds = [{"seed": 0, **info, **rows[table_row]}]
    for seed in range(1, args.seeds):
        path = Path(args.out).with_suffix(f".seed{seed}.json")
        if args.reuse and path.exists():
            again = load_classifier(path, at="--out")[0]
        else:
            again = fit_classifier(
                labelled,
                tiers,
                fit_weight=False,
                table=True,
                budget_share=args.budget_share,
                budget_tier=tiers.index("gpt-4"),
                seed=seed,
            )
            path.write_bytes(encode_file(again))
        got = run(ROUTED, test, scoring, ClassifierRouter(model=path, policy="table"))
        seeds.append({"seed": seed, **table_info(again), **got})
        print(f"seed {seed}: test {got['exact']:.4f}", file=sys.stderr)
    texts = [r.question for r in spread(test, 1000)]
    batch = requests(config, texts, None)
    rows["router + cascade (classifier)"]["p50_us"] = decision_p50_us(both, batch)
    rows["router only (classifier, one tier)"]["p50_us"] = decision_p50_us(single, batch)
    rows[table_row]["p50_us"] = decision_p50_us(table, batch)
    rows["rules (rules.toml, derived from train)"] = rules_row(test, scoring, batch)
    gpt4_train = run(GPT4, train, scoring)["cost_usd"]
    cost, budgets = cost_row(
        ROUTED, train, test, scoring, gpt4_train_cost=gpt4_train, budget_share=args.budget_share
    )
    name = f"cost (share {cost['cost_share_param']:g}, max_cost_usd ${cost['budget_usd']:g})"
    rows[name] = cost
    rows["first_of(rules.toml's rules, bagged plan table)"] = first_of_row(
        ROUTED, test, scoring, table, batch
    )
    rows["first_of(rules.toml's rules, classifier)"] = first_of_row(
        ROUTED, test, scoring, both, batch
    )
    llm = anyio.run(llm_overhead, spread(texts, args.llm_requests))

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
                p50 = await anyio.to_thread.run_sync(lambda: decision_p50_us(router, batch))
                return row, p50

        row, p50 = anyio.run(with_server)
        row["p50_us"] = p50
        rows["router + cascade (semantic, hashed bag-of-words)"] = row

    reference = rows["always gpt-4 standard"]["cost_usd"]
    for r in rows.values():
        r["share"] = r["cost_usd"] / reference
    base = rows["cascade only (routed.toml, no router)"]
    got = rows["router + cascade (classifier)"]
    for r in seeds:
        r["share"] = r["cost_usd"] / reference
    over_seeds = {
        "accuracy": statistics.fmean(r["exact"] for r in seeds),
        "min": min(r["exact"] for r in seeds),
        "max": max(r["exact"] for r in seeds),
        "share_max": max(r["share"] for r in seeds),
    }
    within = [
        (k, r)
        for k, r in rows.items()
        # the plan table's rows are of seed 0 alone: it is judged over its seeds below
        if k != "always gpt-4 standard" and "plan table" not in k and r["share"] <= 0.5
    ]
    if over_seeds["share_max"] <= 0.5:
        name = f"bagged plan table, mean of {len(seeds)} seeds"
        within.append((name, {**over_seeds, "exact": over_seeds["accuracy"], "cost_usd": 0.0}))
    # none within 50%: the target is missed (a verdict, not a traceback)
    best_name, best = max(
        within,
        key=lambda kv: (kv[1]["exact"], -kv[1]["cost_usd"]),
        default=("none within 50%", {"exact": 0.0, "share": 0.0}),
    )
    share = best["share_max"] if "share_max" in best else best["share"]
    note = " (the most any seed spent)" if "share_max" in best else ""
    targets = [
        {
            "name": "mixed-replay test: best configuration >= 0.75 exact at <= 50% of always-GPT-4",
            "value": f"{best_name}: {best['exact']:.4f} at {share:.1%}{note}",
            "target": ">= 0.750 at <= 50.0%",
            "pass": bool(within) and best["exact"] >= 0.75,
        },
        {
            "name": "router + cascade (classifier) at least as accurate as the cascade, no dearer",
            "value": f"{got['accuracy']:.3f} at ${got['cost_usd']:.2f} against "
            f"{base['accuracy']:.3f} at ${base['cost_usd']:.2f}",
            "target": "accuracy >=, cost <=",
            "pass": got["accuracy"] >= base["accuracy"] and got["cost_usd"] <= base["cost_usd"],
        },
    ]
    if args.json:
        out = {"rows": rows, "plan_table_seeds": seeds, "over_seeds": over_seeds}
        out |= {"cost_budgets_on_train": budgets, "llm": llm}
        print(json.dumps({**out, "targets": targets}, indent=1))
    else:
        print_rows(
            rows,
            reference,
            f"test split, {len(test)} questions; routers fitted on {len(train)} train "
            "questions; shares of always-gpt-4 standard",
        )
        print(
            f"plan table on train ({len(train)}): 5-fold CV {info['cv_accuracy']:.1%} at "
            f"{info['cv_cost_share']:.1%} of gpt-4 alone; the fitted table on train "
            f"{info['train_accuracy']:.1%} at {info['train_cost_share']:.1%}; test "
            f"{rows[table_row]['exact']:.1%} at {rows[table_row]['share']:.1%}"
        )
        print("bagged plan table by seed (train 5-fold CV; test, shares of always-gpt-4):")
        for r in seeds:
            print(
                f"  seed {r['seed']}: CV {r['cv_accuracy']:.2%} at {r['cv_cost_share']:.1%}, "
                f"cost weight {r['cost_weight']:.4f}; test {r['exact']:.2%} at {r['share']:.1%}"
            )
        print(
            f"  mean {over_seeds['accuracy']:.2%}, min {over_seeds['min']:.2%}, max "
            f"{over_seeds['max']:.2%}; the most any seed spent {over_seeds['share_max']:.1%}"
        )
        print("cost router on train (share: budget accuracy, share of always-gpt-4 there):")
        for share in sorted({b["share"] for b in budgets}, reverse=True):
            tried = [b for b in budgets if b["share"] == share]
            figures = (f"${b['budget_usd']:g} {b['exact']:.1%} {b['of_gpt4']:.1%}" for b in tried)
            print(f"  share {share:g}: " + ", ".join(figures))
        print_llm(llm, reference / len(test))
        print_targets(targets)
    return 0 if all(t["pass"] for t in targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())
