"""``cascade eval`` with answers that are not numbers: typed and exact accuracy side by side,
``--answer-type`` / a record's ``answer_type``, ``--split``, datasets without token counts,
and the errors bad input gets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cascade._cli import main

from .helpers import replay_eval_config

CONFIG = replay_eval_config("dataset.jsonl")


def rec(
    n: int, split: str, expected: str, a: str, b: str, big: str, **extra: Any
) -> dict[str, Any]:
    return {
        "id": f"r{n}",
        "split": split,
        "question": f"Question {n}?",
        "expected": expected,
        "question_tokens": 20,
        "responses": {
            "small": [
                {"variant": "A", "text": f"So {a}", "answer": a, "output_tokens": 10},
                {"variant": "B", "text": f"So {b}", "answer": b, "output_tokens": 10},
            ],
            "big": [{"variant": "X", "text": f"So {big}", "answer": big, "output_tokens": 10}],
        },
        **extra,
    }


RECORDS = [
    # two different dates: they used to "agree" on 2021 and stop at small
    rec(1, "train", "05/01/2021", "05/02/2021", "05/01/2021", "2021-05-01"),
    # (B) and B agree; the answer returned is written "(B)": right by type, not as written
    rec(2, "train", "B", "(B)", "B", "C"),
    rec(3, "test", "yes", "yes", "yes", "no"),
    # 3:30 and 2:30 are different times: escalates, big is right as written
    rec(4, "test", "3:30", "2:30", "3:30", "3:30"),
]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "cascade.toml").write_text(CONFIG)
    write(tmp_path / "dataset.jsonl", RECORDS)
    return tmp_path


def write(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def eval_json(folder: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    code = main(["eval", "--config", str(folder / "cascade.toml"),
                 "--dataset", str(folder / "dataset.jsonl"), "--json", *extra])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    out: dict[str, Any] = json.loads(captured.out)
    return out


def test_typed_and_exact_accuracy_side_by_side(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = eval_json(folder, capsys)
    assert s["answer_type"] == "auto"
    # r1: escalated (the dates differ), big's 2021-05-01 is the same date; r2 (B); r3; r4
    assert s["answered_by"] == {"small": 2, "big": 2}
    assert s["accuracy"] == 1.0
    assert s["exact_accuracy"] == 0.5  # r1 written 2021-05-01, r2 written (B)
    # always-big: r1 same date, r2 "C" wrong, r3 "no" wrong, r4 right
    assert s["baseline_accuracy"] == 0.5 and s["baseline_exact_accuracy"] == 0.25
    assert s["estimated_calls"] == 0


def test_the_table_says_when_typed_and_exact_differ(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", "--config", str(folder / "cascade.toml"), "--dataset",
            str(folder / "dataset.jsonl")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "accuracy            100.0%" in out and "answer type: auto" in out
    assert "exact match         50.0%" in out
    assert "NOTE: typed and exact accuracy differ by 50.0 points" in out
    assert main([*args, "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "exact match         100.0%" in out and "NOTE" not in out


def test_split_filters_records(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    s = eval_json(folder, capsys, "--split", "test")
    assert s["requests"] == 2 and s["accuracy"] == 1.0 and s["exact_accuracy"] == 1.0
    s = eval_json(folder, capsys, "--split", "train")
    assert s["requests"] == 2 and s["exact_accuracy"] == 0.0
    assert main(["eval", "--config", str(folder / "cascade.toml"), "--dataset",
                 str(folder / "dataset.jsonl"), "--split", "dev"]) == 2  # fmt: skip
    assert "holds no records with split 'dev'" in capsys.readouterr().err


def test_answer_type_from_the_command_or_the_record(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # text: "(B)" is not "B", and "2021-05-01" is not "05/01/2021"
    s = eval_json(folder, capsys, "--answer-type", "text")
    assert s["answer_type"] == "text" and s["accuracy"] == 0.5
    records = [dict(r, answer_type="text") if r["id"] == "r2" else r for r in RECORDS]
    write(folder / "dataset.jsonl", records)
    s = eval_json(folder, capsys)
    assert s["answer_type"] == "auto 3, text 1" and s["accuracy"] == 0.75
    s = eval_json(folder, capsys, "--answer-type", "choice")  # the command wins
    assert s["answer_type"] == "choice"


def test_date_order_applies_to_scoring(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # read day first, 05/01/2021 is January 5th: big's 2021-05-01 is then another day
    s = eval_json(folder, capsys, "--date-order", "dmy", "--split", "train")
    assert s["accuracy"] == 0.5


def test_a_dataset_without_token_counts_is_priced_on_estimates(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = []
    for r in RECORDS:
        r = {k: v for k, v in r.items() if k != "question_tokens"}
        r["responses"] = {
            m: [{k: v for k, v in x.items() if k != "output_tokens"} for x in xs]
            for m, xs in r["responses"].items()
        }
        records.append(r)
    write(folder / "dataset.jsonl", records)
    s = eval_json(folder, capsys)
    assert s["accuracy"] == 1.0 and s["cost_usd"] > 0
    # 4 first answers + 4 samples at small + 2 at big, and 4 baseline calls
    assert s["estimated_calls"] == 14
    assert main(["eval", "--config", str(folder / "cascade.toml"), "--dataset",
                 str(folder / "dataset.jsonl")]) == 0  # fmt: skip
    assert "priced on estimated tokens" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            '{"question": "q", "answer_type": "dates"}',
            ":2: answer_type: unknown answer type 'dates'",
        ),
        ("[1, 2]", ":2: not a dataset record"),
        ("{oops", ":2: not a dataset record"),
        ('{"question": 3}', ":2: not a dataset record"),
    ],
)
def test_bad_dataset_lines_name_the_line(
    folder: Path, capsys: pytest.CaptureFixture[str], line: str, message: str
) -> None:
    path = folder / "dataset.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + line + "\n")
    assert main(["eval", "--config", str(folder / "cascade.toml"), "--dataset", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_answer_type_options_on_the_command(
    folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["eval", "--config", str(folder / "cascade.toml"), "--dataset",
            str(folder / "dataset.jsonl")]  # fmt: skip
    assert main([*base, "--date-order", "ymd"]) == 2
    assert "--date-order" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:  # argparse: not one of the choices
        main([*base, "--answer-type", "dates"])
    assert info.value.code == 2
    assert "invalid choice: 'dates'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "path"),
    [
        ('answer_type = "dates"', "tiers[0].validators[0].answer_type"),
        ('answer_type = "date", date_order = "ymd"', "tiers[0].validators[0].date_order"),
        (
            'answer_type = "date", date_formats = ["%H:%M"]',
            "tiers[0].validators[0].date_formats[0]",
        ),
        ('answer_type = "date", single_number = true', "tiers[0].validators[0].single_number"),
        ('answer_type = "text", normalize = false', "tiers[0].validators[0].normalize"),
    ],
)
def test_bad_answer_type_in_config_names_the_field(
    folder: Path, capsys: pytest.CaptureFixture[str], option: str, path: str
) -> None:
    config = folder / "cascade.toml"
    config.write_text(
        CONFIG.replace('extractor = "recorded" }', f'extractor = "recorded", {option} }}')
    )
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert path in err and "Traceback" not in err
