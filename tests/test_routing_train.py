"""``cascade train-router``: labels per tier from the real engine over a replay dataset
whose outcomes are known, fitting, the held-out report, and training from production
routing records with a user-supplied outcome."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cascade._cli import main
from cascade._config import load_config
from cascade._scoring import Scoring, load_records
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._labels import label_records, label_routing_records
from cascade.routing._modelfile import load_semantic
from cascade.routing._train import simulate
from cascade.validators._extract import get_extractor

from .helpers import replay_eval_config

pytest.importorskip("sklearn")

NAMES = ["Anna", "Tom", "Rosa", "Ivan", "Mei", "Omar", "Lena", "Kofi"]


def record(i: int) -> dict[str, Any]:
    """Even i: a family question the small model gets wrong (both its variants agree, so
    its validator accepts) and the big one right. Odd i: a sports question both get right.
    Every fifth record is in the test split."""
    kin = i % 2 == 0
    expected = f"a{i}"
    small = f"w{i}" if kin else expected
    question = (
        f"{NAMES[i % 8]} is the daughter of {NAMES[(i + 3) % 8]}'s uncle. How are they related? {i}"
        if kin
        else f"Is this sentence plausible? The striker scored in match {i}."
    )
    return {
        "id": f"r{i}",
        "split": "test" if i % 5 == 4 else "train",
        "question": question,
        "expected": expected,
        "question_tokens": 10,
        "responses": {
            "small": [
                {"variant": "A", "text": small, "answer": small, "output_tokens": 5},
                {"variant": "B", "text": small, "answer": small, "output_tokens": 5},
            ],
            "big": [{"variant": "X", "text": expected, "answer": expected, "output_tokens": 5}],
        },
    }


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps(record(i)) + "\n" for i in range(120)))
    config = tmp_path / "c.toml"
    config.write_text(replay_eval_config("d.jsonl"))
    return str(config), str(dataset)


def test_labels_are_what_each_tier_alone_does(files: tuple[str, str]) -> None:
    config, dataset = files
    records = load_records(dataset, split="train")
    labels = label_records(
        load_config(config),
        records,
        scoring=Scoring(extract=get_extractor("auto")),
        base_dir=Path(config).parent,
        concurrency=4,
    )
    for r, lab in zip(records, labels, strict=True):
        kin = "daughter" in r.question
        small, big = lab.tiers
        assert small is not None and big is not None
        assert small.outcome == ("accepted_wrong" if kin else "accepted_right")
        assert big.outcome == "accepted_right"
        assert small.cost_usd == pytest.approx(2 * (110 * 1.0 + 5 * 2.0) / 1e6)  # two calls
        assert big.cost_usd == pytest.approx((110 * 10.0 + 5 * 40.0) / 1e6)
        # the cascade alone accepts the small tier's answer
        assert simulate(lab.tiers, 0, 1) == (not kin, small.cost_usd)


def train(files: tuple[str, str], tmp_path: Path, *extra: str) -> list[str]:
    config, dataset = files
    return ["train-router", "--config", config, "--dataset", dataset, "--split", "train",
            "--out", str(tmp_path / "router.json"), *extra]  # fmt: skip


def test_train_router_reports_held_out_figures(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main([*train(files, tmp_path, "--test-split", "test", "--cost-weight", "0.1"), "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    rows = {r["policy"]: r for r in out["rows"]}
    assert out["split"] == "test" and len(rows) == 5
    assert rows["cascade only (all tiers)"]["accuracy"] == 0.5  # small accepts wrong kinship
    assert rows["tier 2 big alone"]["accuracy"] == 1.0
    both = rows["router + cascade"]
    assert both["accuracy"] == 1.0  # kinship starts at big
    assert both["cost_usd"] < rows["tier 2 big alone"]["cost_usd"]  # sports stays small
    assert rows["router only (one tier, no escalation)"]["accuracy"] == 1.0
    router = ClassifierRouter(model=tmp_path / "router.json")
    assert router.file.tiers == ["small", "big"] and router.cost_weight == 0.1
    assert router.file.trained_on["split"] == "train"
    # as text
    assert main(train(files, tmp_path, "--test-split", "test")) == 0
    text = capsys.readouterr().out
    assert "router + cascade" in text and "held out: split 'test', 24 records" in text


def test_train_a_semantic_file(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(train(files, tmp_path, "--kind", "semantic")) == 0
    got = load_semantic(tmp_path / "router.json", at="model")
    assert len(got.examples) == 96 and got.tiers == ["small", "big"]


def test_train_a_plan_table(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = ("--table", "--budget-share", "0.9", "--budget-tier", "big", "--test-split", "test")
    assert main([*train(files, tmp_path, *extra), "--json"]) == 0
    captured = capsys.readouterr()
    rows = {r["policy"]: r for r in json.loads(captured.out)["rows"]}
    table = rows["router + cascade (bagged plan table)"]
    assert table["accuracy"] == 1.0  # kinship at big, sports at small
    assert table["cost_usd"] < rows["tier 2 big alone"]["cost_usd"] * 0.9
    assert "bagged plan table: 30 tables" in captured.err
    assert "5-fold CV" in captured.err
    router = ClassifierRouter(model=tmp_path / "router.json", policy="table")
    info = router.file.trained_on["cost_weight_fit"]["table"]
    assert info["budget_share"] == 0.9 and info["reference_tier"] == 2
    assert router.file.ensemble is not None
    assert len(router.file.ensemble.members) == info["members"] == 30


def routing_records(path: Path) -> Path:
    lines = []
    for i in range(40):
        kin = i % 2 == 0
        path_ = ["small", "big"] if i % 4 == 0 else ["small"]
        lines.append(
            {
                "event": "cascade.route",
                "outcome": "accepted",
                "tier_path": path_,
                "tier_name": path_[-1],
                "validated": True,
                "cost_usd": 0.01,
                "metadata": {
                    "prompt": ("How is Anna related to Tom? " if kin else "Sports? ") + str(i)
                },
                "ok": not kin or len(path_) == 2,
            }
        )
    lines.append({"event": "something else"})
    lines.append({"event": "cascade.route", "outcome": "error", "tier_path": ["small"],
                  "prompt": "x", "ok": False})  # fmt: skip
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_labels_from_production_routing_records(tmp_path: Path) -> None:
    labels = label_routing_records(
        routing_records(tmp_path / "r.jsonl"), ["small", "big"], outcome_field="ok"
    )
    assert len(labels) == 40  # the other event and the error are skipped
    first = labels[0]  # kinship, escalated: small rejected, big accepted and right
    assert [t.outcome if t else None for t in first.tiers] == ["rejected_wrong", "accepted_right"]
    second = labels[2]  # kinship answered by small alone: accepted but wrong
    assert [t.outcome if t else None for t in second.tiers] == ["accepted_wrong", None]


def test_train_router_from_production_records(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, _ = files
    records = routing_records(tmp_path / "r.jsonl")
    argv = ["train-router", "--config", config, "--records", str(records),
            "--outcome-field", "ok", "--out", str(tmp_path / "prod.json")]  # fmt: skip
    assert main(argv) == 0
    router = ClassifierRouter(model=tmp_path / "prod.json")
    assert router.file.plans == []  # unreached tiers are unknown: no per-range heads
    assert router.file.costs == [0.0, 0.0]  # per-tier costs unknown: the engine's estimates


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        (["--records", "/nonexistent.jsonl", "--outcome-field", "ok"], "--records"),
        (["--records", "RECORDS"], "--outcome-field"),
        (["--char-ngrams", "5,3"], "--char-ngrams"),
        (["--cost-weight", "-1"], "--cost-weight"),
        (["--budget-share", "0.5"], "--table"),
        (["--table", "--budget-share", "0"], "--budget-share"),
        (["--table", "--budget-share", "0.5", "--budget-tier", "nope"], "--budget-tier"),
        (["--table", "--records", "RECORDS", "--outcome-field", "ok"], "--table"),
    ],
)
def test_bad_arguments_exit_2(
    files: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    where: str,
) -> None:
    extra = [str(routing_records(tmp_path / "r.jsonl")) if e == "RECORDS" else e for e in extra]
    assert main(train(files, tmp_path, *extra)) == 2
    assert where in capsys.readouterr().err
