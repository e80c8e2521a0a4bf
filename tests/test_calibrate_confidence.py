"""``cascade calibrate --confidence``: a value qualifies only when a lower confidence bound
on its accuracy reaches the target; checked on synthetic records whose accuracies are
known, and the bound itself against exact values."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from cascade._bounds import binomial_sf, lower_bound
from cascade._calibrate import SweepRow, accuracy_bounds, choose
from cascade._cli import main

from .helpers import replay_eval_config

SWEEP = "tiers.small.validators.self_consistency.min_agreement"


def test_bound_is_exact_where_it_has_a_closed_form() -> None:
    # all n right: the bound solves p^n = 1 - C
    assert lower_bound(10, 10, 0.95) == pytest.approx(0.05 ** (1 / 10), abs=1e-9)
    assert lower_bound(100, 100, 0.99) == pytest.approx(0.01 ** (1 / 100), abs=1e-9)
    # one right of n: 1 - (1 - p)^n = 1 - C
    assert lower_bound(1, 10, 0.9) == pytest.approx(1 - 0.9 ** (1 / 10), abs=1e-9)
    assert lower_bound(0, 10, 0.9) == 0.0
    # below the point estimate, and tighter with more trials
    assert lower_bound(75, 100, 0.95) < 0.75
    assert lower_bound(75, 100, 0.95) < lower_bound(750, 1000, 0.95) < 0.75


def test_binomial_tail_sums_to_one() -> None:
    n, p = 50, 0.3
    pmf = [binomial_sf(k, n, p) - binomial_sf(k + 1, n, p) for k in range(n + 1)]
    assert math.fsum(pmf) == pytest.approx(1.0)
    assert binomial_sf(0, n, p) == 1.0 and binomial_sf(n + 1, n, p) == 0.0


def test_bound_covers_the_true_rate_as_often_as_promised() -> None:
    """Over many draws of 40 trials at p = 0.7, the 90% bound is above p at most ~10% of
    the time (Clopper-Pearson is conservative)."""
    import random

    rng = random.Random(1)
    misses = sum(
        lower_bound(sum(rng.random() < 0.7 for _ in range(40)), 40, 0.9) > 0.7 for _ in range(2000)
    )
    assert misses / 2000 <= 0.1


def row(value: Any, accuracy: float, cost: float) -> SweepRow:
    return SweepRow(
        value=value,
        accuracy=accuracy,
        exact_accuracy=accuracy,
        cost_usd=cost,
        cost_share=0.0,
        escalation_rate={},
        answered_by={},
        unvalidated=0,
        errors=0,
    )


def test_choose_with_bounds_takes_the_cheapest_whose_bound_reaches() -> None:
    rows = [row("a", 0.80, 1.0), row("b", 0.95, 2.0)]
    assert choose(rows, target_accuracy=0.75) == 0  # the point estimates
    bounds = accuracy_bounds(rows, 200, 0.95)
    assert bounds[0] < 0.75 < bounds[1]
    assert choose(rows, target_accuracy=0.75, bounds=bounds) == 1
    assert choose(rows, target_accuracy=0.97, bounds=bounds) is None


def test_bonferroni_widens_with_more_values() -> None:
    one = accuracy_bounds([row("a", 0.8, 1.0)], 200, 0.95)[0]
    five = accuracy_bounds([row(i, 0.8, 1.0) for i in range(5)], 200, 0.95)[0]
    assert five < one < 0.8


def records() -> list[dict[str, Any]]:
    """200 records: small's variant A is right on 160; of the 40 it gets wrong, variant B
    agrees with it on 10 (accepted wrong at min_agreement 1) and differs on 30 (escalated
    to big, which is right). So min_agreement 0.5 (A alone decides) scores 160/200 = 0.80,
    and 1.0 scores 190/200 = 0.95 at a higher cost."""
    out = []
    for i in range(200):
        right = str(i)
        a = right if i < 160 else f"w{i}"
        b = a if i < 170 else f"v{i}"
        out.append(
            {
                "id": f"r{i}",
                "question": f"Question {i}?",
                "expected": right,
                "question_tokens": 10,
                "responses": {
                    "small": [
                        {"variant": "A", "text": a, "answer": a, "output_tokens": 5},
                        {"variant": "B", "text": b, "answer": b, "output_tokens": 5},
                    ],
                    "big": [{"variant": "X", "text": right, "answer": right, "output_tokens": 5}],
                },
            }
        )
    return out


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in records()))
    config = tmp_path / "c.toml"
    config.write_text(replay_eval_config("d.jsonl"))
    return str(config), str(dataset)


def calibrate(files: tuple[str, str], *extra: str) -> list[str]:
    config, dataset = files
    return ["calibrate", "--config", config, "--dataset", dataset, "--param", SWEEP,
            "--values", "0.5,1.0", *extra]  # fmt: skip


def test_confidence_picks_the_value_whose_bound_reaches_the_target(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # without --confidence the cheaper value (0.80 measured) meets 0.75
    assert main([*calibrate(files, "--target-accuracy", "0.75"), "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert (plain["value"], plain["accuracy"]) == (0.5, 0.8)
    # with 95% confidence 160/200 is not enough (its bound is about 0.73): 1.0 is picked
    assert main([*calibrate(files, "--target-accuracy", "0.75", "--confidence", "0.95"),
                 "--json"]) == 0  # fmt: skip
    sure = json.loads(capsys.readouterr().out)
    assert (sure["value"], sure["accuracy"]) == (1.0, 0.95)
    assert sure["lower_bounds"][0] < 0.75 <= sure["lower_bounds"][1] < 0.95
    assert sure["lower_bounds"][1] == pytest.approx(lower_bound(190, 200, 0.975))
    # as text: the bounds and the guarantee are printed
    assert main(calibrate(files, "--target-accuracy", "0.75", "--confidence", "0.95")) == 0
    out = capsys.readouterr().out
    assert "with probability 0.95" in out and "min_agreement = 1.0" in out


def test_confidence_says_when_no_value_qualifies(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # 0.95 measured, but its 99% bound is below 0.93
    assert main(calibrate(files, "--target-accuracy", "0.93", "--confidence", "0.99")) == 1
    err = capsys.readouterr().err
    assert "no value of min_agreement gives accuracy >= 93.0% with probability 0.99" in err


@pytest.mark.parametrize(
    "extra",
    [
        ["--budget-usd", "1", "--confidence", "0.9"],  # a bound on accuracy: needs a target
        ["--target-accuracy", "0.5", "--confidence", "1"],
        ["--target-accuracy", "0.5", "--confidence", "0"],
    ],
)
def test_bad_confidence_exits_2(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    assert main(calibrate(files, *extra)) == 2
    assert "--confidence" in capsys.readouterr().err
