"""``cascade train-router``: label, fit, save, and report held-out figures.

::

    cascade train-router --config examples/mixed/routed.toml \\
        --dataset ../shared/data/mixed-replay/mixed_replay.jsonl.gz \\
        --split train --test-split test --out router.json

Labels every ``--split`` record per tier through the real engine over the config's
(replay) providers, fits the router, writes it (JSON), and, with ``--test-split``, labels
those records too and prints accuracy and cost of: the cascade alone, each tier alone,
the router alone (one tier, no escalation) and the router with the cascade (a range of
tiers, validators escalating inside it), computed from the held-out labels as the engine
would run them. ``--records F --outcome-field ok`` trains on production routing records
instead (the JSON lines ``cascade.route`` logs, joined with the prompt and an outcome).
Prices are the config's providers' prices.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from .._config import Config
from .._errors import InputError
from .._scoring import Scoring, load_records
from ._ensemble import EnsembleTable
from ._labels import Labelled, label_records, label_routing_records
from ._modelfile import ClassifierFile, SemanticFile, encode_file
from ._policy import Policy, decide
from ._textmodel import TextModel
from ._train import fit_classifier, fit_semantic, simulate

__all__ = ["Row", "evaluate_router", "format_rows", "train_router"]


class Row(msgspec.Struct, kw_only=True):
    policy: str
    accuracy: float
    cost_usd: float


def _row(label: str, labelled: Sequence[Labelled], ranges: Sequence[tuple[int, int]]) -> Row:
    right = spent = 0.0
    for r, (start, stop) in zip(labelled, ranges, strict=True):
        ok, cost = simulate(r.tiers, start, stop)
        right += ok
        spent += cost
    return Row(policy=label, accuracy=right / len(labelled), cost_usd=spent)


def evaluate_router(
    file: ClassifierFile, labelled: Sequence[Labelled], tiers: Sequence[str]
) -> list[Row]:
    """Held-out figures of a classifier file beside the cascade and each tier alone."""
    n = len(tiers)
    rows = [_row("cascade only (all tiers)", labelled, [(0, n - 1)] * len(labelled))]
    rows += [
        _row(f"tier {j + 1} {tiers[j]} alone", labelled, [(j, j)] * len(labelled)) for j in range(n)
    ]
    model = TextModel(file.features, file.heads)
    plans = [(s - 1, m - 1) for s, m in file.plans]
    predictions = []
    for r in labelled:
        out = model.predict(r.text)
        heads = out[n : n + len(plans)]
        right = {p: h.get("right", 0.0) for p, h in zip(plans, heads, strict=True)}
        predictions.append((out[:n], right))
    policies: list[tuple[str, Policy]] = [
        ("router only (one tier, no escalation)", "single"),
        ("router + cascade", "cascade"),
    ]
    for label, policy in policies:
        ranges = []
        for probs, right in predictions:
            d = decide(
                probs,
                file.costs,
                policy=policy,
                cost_weight=file.cost_weight,
                right=right,
                router="eval",
            )
            ranges.append(((d.start_tier or 1) - 1, (d.max_tier or n) - 1))
        rows.append(_row(label, labelled, ranges))
    if file.ensemble is not None:
        bagged = EnsembleTable(file.ensemble, len(file.features.vocabulary))
        picks = [bagged.ranges[bagged.decide(*model.vector(r.text))[0]] for r in labelled]
        rows.append(_row("router + cascade (bagged plan table)", labelled, picks))
    elif file.clusters:
        last = len(file.heads) - 1
        chosen = [file.clusters[model.likeliest(r.text, last)] for r in labelled]
        table = [(c.start - 1, c.stop - 1) for c in chosen]
        rows.append(_row("router + cascade (plan table)", labelled, table))
    return rows


def _table_summary(file: ClassifierFile) -> str:
    """The bagged plan table's cross-validated and training figures."""
    info = file.trained_on["cost_weight_fit"]["table"]
    floor = info.get("centroid_floor", 0.0)
    notes = (
        f"; centroid values below {floor:g} dropped so that the file fits its size limit"
        if floor
        else ""
    )
    if not info.get("within_budget", True):
        notes += (
            "; over the budget: no cost weight tried kept the held-out folds within it, "
            "the largest was taken"
        )
    return (
        f"bagged plan table: {info['members']} tables, cost weight {info['cost_weight']:g} "
        f"(seed {info['seed']}); 5-fold CV on the training records: accuracy "
        f"{info['cv_accuracy']:.1%} at {info['cv_cost_share']:.1%} of tier "
        f"{info['reference_tier']} alone; the final table on them: "
        f"{info['train_accuracy']:.1%} at {info['train_cost_share']:.1%}{notes}"
    )


def format_rows(rows: Sequence[Row], reference: float) -> str:
    """A table; cost shares of ``reference`` (the dearest tier alone)."""
    width = max(len(r.policy) for r in rows)
    lines = [f"  {'policy':<{width}}  accuracy  cost_usd    share of the dearest tier alone"]
    for r in rows:
        share = r.cost_usd / reference if reference else 0.0
        lines.append(
            f"  {r.policy:<{width}}  {r.accuracy:>8.1%}  ${r.cost_usd:<10.4f}  {share:>6.1%}"
        )
    return "\n".join(lines)


def train_router(
    config: Config,
    *,
    kind: str,
    out: str | os.PathLike[str],
    scoring: Scoring,
    dataset: str | None = None,
    split: str | None = None,
    test_split: str | None = None,
    records: str | None = None,
    outcome_field: str | None = None,
    text_field: str = "prompt",
    char_ngrams: tuple[int, int] | None = None,
    cost_weight: float | None = None,
    table: bool = False,
    budget_share: float | None = None,
    budget_tier: str | None = None,
    seed: int = 0,
    base_dir: str | os.PathLike[str] | None = None,
    concurrency: int = 32,
    limit: int | None = None,
    as_json: bool = False,
) -> int:
    tiers = [t.name for t in config.tiers]
    # checked before any record is labelled (labelling runs every record through the engine)
    if table and kind != "classifier":
        raise InputError("a plan table is fitted for a classifier router only", path="--table")
    if budget_tier is not None and budget_tier not in tiers:
        raise InputError(f"no tier named {budget_tier!r} in the config", path="--budget-tier")
    trained_on: dict[str, Any]
    if records is not None:
        if outcome_field is None:
            raise InputError("--records needs --outcome-field", path="--outcome-field")
        labelled = label_routing_records(
            records, tiers, outcome_field=outcome_field, text_field=text_field
        )
        trained_on = {"records": str(records)}
    else:
        if dataset is None:
            raise InputError("give --dataset (or --records)", path="--dataset")
        train = load_records(dataset, split=split, limit=limit)
        print(f"labelling {len(train)} records x {len(tiers)} tiers", file=sys.stderr)
        labelled = label_records(
            config, train, scoring=scoring, concurrency=concurrency, base_dir=base_dir
        )
        trained_on = {"dataset": Path(dataset).name, "split": split}
    file: ClassifierFile | SemanticFile
    if kind == "classifier":
        file = fit_classifier(
            labelled,
            tiers,
            char_ngrams=char_ngrams,
            table=table,
            budget_share=budget_share,
            budget_tier=None if budget_tier is None else tiers.index(budget_tier),
            seed=seed,
            trained_on=trained_on,
        )
        if table:
            print(_table_summary(file), file=sys.stderr)
    else:
        file = fit_semantic(labelled, tiers, trained_on=trained_on)
    if cost_weight is not None:
        file = msgspec.structs.replace(file, cost_weight=cost_weight)
    data = encode_file(file)
    try:
        Path(out).write_bytes(data)
    except OSError as exc:
        raise InputError(f"cannot write {str(out)!r}: {exc.strerror}", path="--out") from None
    print(
        f"wrote {out}: {kind}, {len(labelled)} records, {len(data)} bytes, "
        f"cost_weight {file.cost_weight}",
        file=sys.stderr,
    )
    if test_split is None or dataset is None or not isinstance(file, ClassifierFile):
        if test_split is not None and isinstance(file, SemanticFile):
            print(
                "held-out figures of a semantic router need its embedder: run "
                "benchmarks/routing_compare.py",
                file=sys.stderr,
            )
        return 0
    test = load_records(dataset, split=test_split, limit=limit)
    held = label_records(config, test, scoring=scoring, concurrency=concurrency, base_dir=base_dir)
    rows = evaluate_router(file, held, tiers)
    top = max(r.cost_usd for r in rows[1 : len(tiers) + 1])  # the dearest tier alone
    if as_json:
        sys.stdout.write(msgspec.json.encode({"split": test_split, "rows": rows}).decode() + "\n")
    else:
        print(f"held out: split {test_split!r}, {len(held)} records")
        print(format_rows(rows, top))
    return 0
