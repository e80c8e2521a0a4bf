"""``cascade eval`` / ``calibrate`` and ``cascade train-router``: the commands over a
recorded dataset (their arguments are built in :mod:`cascade._cli`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import msgspec

from ._config import in_file, load_config
from ._errors import InputError

__all__ = ["eval_command", "train_router_command"]


def eval_command(args: argparse.Namespace) -> int:
    from ._calibrate import (
        Param,
        check_plot_available,
        format_sweep,
        parse_param,
        parse_values,
        plot_frontier,
        report_calibration,
        run_report,
    )
    from ._eval import format_summary, load_records

    scoring = _scoring(args)
    param: Param | None = None
    values: list[Any] = []
    if args.command == "calibrate":
        param, values = parse_param(args.param), parse_values(args.values)
        if args.target_accuracy is not None and not 0 <= args.target_accuracy <= 1:
            raise InputError("expected 0 <= accuracy <= 1", path="--target-accuracy")
        if args.budget_usd is not None and not args.budget_usd >= 0:
            raise InputError("expected a cost >= 0", path="--budget-usd")
        if args.confidence is not None:
            if args.target_accuracy is None:
                raise InputError("--confidence goes with --target-accuracy", path="--confidence")
            if not 0 < args.confidence < 1:
                raise InputError("expected 0 < confidence < 1", path="--confidence")
    elif args.sweep:
        name, sep, text = args.sweep.partition("=")
        if not sep:
            raise InputError("expected NAME=V1,V2,...", path="--sweep")
        param, values = parse_param(name.strip()), parse_values(text)
    if args.command == "eval" and args.plot:
        check_plot_available()
    with in_file(args.config):
        config = load_config(args.config)
        if param is not None:
            param.locate(config)  # a bad name fails before anything runs
    records = load_records(args.dataset, limit=args.limit, split=args.split)
    with in_file(args.config):  # the cascade is built (and rebuilt per swept value) here
        report = run_report(
            config,
            records,
            scoring=scoring,
            param=param,
            values=values,
            concurrency=args.concurrency,
            progress=sys.stderr,
            as_written=args.command == "eval",
            base_dir=Path(args.config).parent,
        )
    if args.command == "eval":
        if args.plot:
            plot_frontier(report, args.plot)
        if args.json:
            sys.stdout.write(msgspec.json.encode(report).decode() + "\n")
        else:
            print(format_summary(report))
            if report.sweep is not None:
                print("\n" + format_sweep(args.sweep.partition("=")[0], report.sweep))
        return 0

    assert param is not None
    return report_calibration(
        report,
        config,
        param,
        target_accuracy=args.target_accuracy,
        budget_usd=args.budget_usd,
        confidence=args.confidence,
        source=args.config,
        as_json=args.json,
    )


def _scoring(args: argparse.Namespace) -> Any:
    from ._eval import Scoring
    from .validators._extract import get_extractor

    if args.concurrency < 1 or (args.limit is not None and args.limit < 1):
        raise InputError("--concurrency and --limit must be >= 1")
    try:
        extract = get_extractor(args.extractor)
    except ValueError as exc:
        raise InputError(str(exc), path="--extractor") from None
    return Scoring(extract=extract, answer_type=args.answer_type, date_order=args.date_order)


def train_router_command(args: argparse.Namespace) -> int:
    from .routing._ensemble import MAX_SEED
    from .routing._train_cmd import train_router

    scoring = _scoring(args)
    grams = None
    if args.char_ngrams:
        lo, sep, hi = args.char_ngrams.partition(",")
        if not (sep and lo.strip().isdigit() and hi.strip().isdigit()) or not (
            1 <= int(lo) <= int(hi) <= 8
        ):
            raise InputError("expected LO,HI with 1 <= LO <= HI <= 8", path="--char-ngrams")
        grams = (int(lo), int(hi))
    if args.cost_weight is not None and not 0 <= args.cost_weight <= 1e6:
        raise InputError("expected a number >= 0", path="--cost-weight")
    if args.budget_share is not None and not 0 < args.budget_share <= 1e6:
        raise InputError("expected a number > 0", path="--budget-share")
    if not 0 <= args.seed <= MAX_SEED:
        raise InputError(f"expected 0 to {MAX_SEED}", path="--seed")
    if (args.budget_share is not None or args.budget_tier is not None) and not args.table:
        raise InputError("--budget-share and --budget-tier need --table", path="--table")
    with in_file(args.config):
        config = load_config(args.config)
        return train_router(
            config,
            kind=args.kind,
            out=args.out,
            scoring=scoring,
            dataset=args.dataset,
            split=args.split,
            test_split=args.test_split,
            records=args.records,
            outcome_field=args.outcome_field,
            text_field=args.text_field,
            char_ngrams=grams,
            cost_weight=args.cost_weight,
            table=args.table,
            budget_share=args.budget_share,
            budget_tier=args.budget_tier,
            seed=args.seed,
            base_dir=Path(args.config).parent,
            concurrency=args.concurrency,
            limit=args.limit,
            as_json=args.json,
        )
