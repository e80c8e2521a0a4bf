"""``cascade eval`` and ``cascade calibrate`` over a small replay dataset whose figures are
known exactly, and a smoke run on the real GSM8K replay file when it is present."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cascade import Config, Result, Usage
from cascade._cli import main
from cascade._eval import Record, Scoring, baseline_config
from cascade.validators._extract import get_extractor

from .helpers import replay_eval_config

EXAMPLES = Path(__file__).parents[1] / "examples" / "gsm8k"
GSM8K = Path(__file__).parents[2] / "shared" / "data" / "gsm8k-replay" / "gsm8k_replay.jsonl.gz"
OVERHEAD = 100
SWEEP = "tiers.small.validators.self_consistency.min_agreement"


def small(q: int, out: int) -> float:  # $1 / $2 per million tokens in / out
    return ((q + OVERHEAD) * 1.0 + out * 2.0) / 1e6


def big(q: int, out: int) -> float:  # $10 / $40
    return ((q + OVERHEAD) * 10.0 + out * 40.0) / 1e6


def rec(
    n: int, q: int, expected: str, a: tuple[Any, int], b: tuple[Any, int], x: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": f"r{n}",
        "question": f"Question {n}: how many?",
        "expected": expected,
        "question_tokens": q,
        "responses": {
            "small": [
                {"variant": "A", "text": f"A says {a[0]}", "answer": a[0], "output_tokens": a[1]},
                {"variant": "B", "text": f"B says {b[0]}", "answer": b[0], "output_tokens": b[1]},
            ],
            "big": [{"variant": "X", "output_tokens": 100, **x}],
        },
    }


# Small answers twice (variants A, B); the tier accepts when both agree (min_agreement 1).
RECORDS = [
    rec(1, 20, "10", ("10", 50), ("10", 60), {"text": "10", "answer": "10"}),  # agree, right
    rec(2, 30, "20", ("$20", 40), ("20.0", 45), {"text": "so #### 20"}),  # agree; big: text only
    rec(3, 40, "30", ("31", 50), ("31", 50), {"text": "30", "answer": "30"}),  # agree, wrong
    rec(4, 20, "40", ("40", 50), ("41", 50), {"text": "40", "answer": "40"}),  # -> big, right
    rec(5, 20, "50", ("5", 30), ("50", 30), {"text": "50", "answer": "50"}),  # -> big, right
    rec(6, 20, "60", ("60", 40), ("61", 40), {"text": "59", "answer": "59"}),  # -> big, wrong
    rec(7, 20, "70", ("71", 40), ("70", 40), {"text": "seventy", "judged_correct": True}),
]
TWO_SAMPLES = math.fsum(
    small(r["question_tokens"], s["output_tokens"])
    for r in RECORDS
    for s in r["responses"]["small"]
)
ESCALATED = [4, 5, 6, 7]
COST_AT_1 = TWO_SAMPLES + math.fsum(big(20, 100) for _ in ESCALATED)  # r4..r7 ask big too
COST_AT_HALF = math.fsum(  # one sample each, all accepted
    small(r["question_tokens"], r["responses"]["small"][0]["output_tokens"]) for r in RECORDS
)
BASELINE = math.fsum(big(r["question_tokens"], 100) for r in RECORDS)

CONFIG = replay_eval_config("../data/dataset.jsonl")


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    """(config, dataset): the config names the dataset relative to its own folder."""
    (tmp_path / "data").mkdir()
    (tmp_path / "conf").mkdir()
    dataset = write_jsonl(tmp_path / "data" / "dataset.jsonl", RECORDS)
    config = tmp_path / "conf" / "cascade.toml"
    config.write_text(CONFIG)
    return str(config), str(dataset)


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(list(argv)) == 0
    out: dict[str, Any] = json.loads(capsys.readouterr().out)
    return out


def test_eval_json_figures_are_exact(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, dataset = files
    s = run_json(capsys, "eval", "--config", config, "--dataset", dataset, "--json")
    assert s["requests"] == 7
    assert s["accuracy"] == 5 / 7  # r3 agreed on a wrong answer; big got r6 wrong
    assert s["baseline_accuracy"] == 6 / 7  # big alone: only r6 wrong (r2 by extractor)
    assert s["cost_usd"] == pytest.approx(COST_AT_1, rel=1e-12)
    assert s["baseline_cost_usd"] == pytest.approx(BASELINE, rel=1e-12)
    assert s["cost_share"] == pytest.approx(COST_AT_1 / BASELINE, rel=1e-12)
    assert s["escalation_rate"] == {"small": 4 / 7, "big": 0.0}
    assert s["answered_by"] == {"small": 3, "big": 4}
    assert s["calls_per_request"] == {"small": 2.0, "big": 1.0}  # 2-of-2: both samples drawn
    assert (s["unvalidated"], s["errors"]) == (0, 0)
    assert "sweep" not in s


def test_eval_text_summary_and_progress(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, dataset = files
    assert main(["eval", "--config", config, "--dataset", dataset, "--concurrency", "2"]) == 0
    out, err = capsys.readouterr()
    assert "accuracy            71.4%   (always-big: 85.7%)" in out
    assert "answered by tier    small 3 (43%), big 4 (57%)" in out
    assert "escalation rate     small 57.1%, big 0.0%" in out
    assert "7/7" in err and "baseline" in err


def test_limit_takes_the_first_records(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, dataset = files
    s = run_json(capsys, "eval", "--config", config, "--dataset", dataset, "--json", "--limit", "3")
    assert (s["requests"], s["accuracy"], s["answered_by"]) == (3, 2 / 3, {"small": 3, "big": 0})


def test_sweep_rows_are_the_frontier(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, dataset = files
    s = run_json(
        capsys, "eval", "--config", config, "--dataset", dataset, "--json",
        "--sweep", f"{SWEEP}=0.5,1.0",
    )  # fmt: skip
    assert s["param"] == SWEEP
    assert s["accuracy"] == 5 / 7  # the config as written (min_agreement = 1.0)
    half, one = s["sweep"]
    assert (half["value"], one["value"]) == (0.5, 1.0)
    # 0.5 of 2 samples: one vote suffices, the first answer is always accepted
    assert half["accuracy"] == 4 / 7  # r3, r5 and r7 wrong
    assert half["cost_usd"] == pytest.approx(COST_AT_HALF, rel=1e-12)
    assert half["answered_by"] == {"small": 7, "big": 0}
    assert half["escalation_rate"] == {"small": 0.0, "big": 0.0}
    assert one["accuracy"] == 5 / 7
    assert one["cost_usd"] == pytest.approx(COST_AT_1, rel=1e-12)
    assert one["cost_share"] == pytest.approx(COST_AT_1 / BASELINE, rel=1e-12)
    # the same parameter by indexes, and its table
    assert main(["eval", "--config", config, "--dataset", dataset,
                 "--sweep", "tiers.1.validators.1.min_agreement=0.5,1.0"]) == 0  # fmt: skip
    table = capsys.readouterr().out.split("min_agreement")[-1]
    assert "57.1%" in table and "71.4%" in table


def test_plot_writes_a_png(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    config, dataset = files
    out = tmp_path / "frontier.png"
    argv = ["eval", "--config", config, "--dataset", dataset, "--plot", str(out)]
    assert main([*argv, "--sweep", f"{SWEEP}=0.5,1.0"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out.unlink()
    assert main(argv) == 0  # no sweep: the config's point and the baseline
    assert out.stat().st_size > 0


def test_plot_without_matplotlib_fails_before_running(
    files: tuple[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    config, dataset = files
    assert main(["eval", "--config", config, "--dataset", dataset, "--plot", "x.png"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'cascade-engine[plot]'" in err and "baseline" not in err


@pytest.mark.parametrize(
    ("goal", "value", "accuracy"),
    [
        (["--target-accuracy", "0.7"], 1.0, 5 / 7),  # only 1.0 reaches 70%
        (["--target-accuracy", "0.5"], 0.5, 4 / 7),  # both do: the cheaper
        (["--budget-usd", f"{(COST_AT_HALF + COST_AT_1) / 2}"], 0.5, 4 / 7),  # 1.0 too dear
        (["--budget-usd", "1"], 1.0, 5 / 7),  # both affordable: the more accurate
    ],
)
def test_calibrate_picks_a_value(
    files: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    goal: list[str],
    value: float,
    accuracy: float,
) -> None:
    config, dataset = files
    argv = ["calibrate", "--config", config, "--dataset", dataset, "--param", SWEEP,
            "--values", "0.5,1.0", *goal]  # fmt: skip
    s = run_json(capsys, *argv, "--json")
    assert s["found"] and (s["value"], s["accuracy"]) == (value, accuracy)
    assert s["previous"] == 1.0 and len(s["sweep"]) == 2
    change = tomllib.loads(s["toml"])
    assert change["tiers"][0]["name"] == "small"
    assert change["tiers"][0]["validators"] == [
        {"name": "self_consistency", "samples": 2, "min_agreement": value,
         "extractor": "recorded"}
    ]  # fmt: skip
    # as text: the table with the pick starred, the figures, then the TOML
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"* {value}" in out and "[[tiers]]" in out
    assert tomllib.loads(out[out.index("# ") :]) == change


def test_calibrate_fails_when_no_value_qualifies(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    config, dataset = files
    assert main(["calibrate", "--config", config, "--dataset", dataset, "--param", SWEEP,
                 "--values", "0.5,1.0", "--target-accuracy", "0.9", "--json"]) == 1  # fmt: skip
    out, err = capsys.readouterr()
    s = json.loads(out)
    assert not s["found"] and s["toml"] is None
    assert "no value of min_agreement gives accuracy >= 90.0%" in err


def test_scorer_alone_reads_expected(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, dataset = files
    with_gold = run_json(capsys, "eval", "--config", config, "--dataset", dataset, "--json")
    bare = [{k: v for k, v in r.items() if k != "expected"} for r in RECORDS]
    write_jsonl(Path(dataset), bare)  # the replay provider reads this same file
    without = run_json(capsys, "eval", "--config", config, "--dataset", dataset, "--json")
    for key in ("cost_usd", "baseline_cost_usd", "answered_by", "escalation_rate", "errors"):
        assert without[key] == with_gold[key]
    # only the judged response (r7's big answer) can still be scored
    assert (without["accuracy"], without["baseline_accuracy"]) == (1 / 7, 1 / 7)


def test_a_question_nothing_answers_is_an_error_whose_cost_counts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    unanswered = rec(8, 20, "80", ("80", 10), ("81", 10), {"text": "80", "answer": "80"})
    unanswered["responses"].pop("big")  # small disagrees, big recorded nothing
    (tmp_path / "data").mkdir()
    (tmp_path / "conf").mkdir()
    write_jsonl(tmp_path / "data" / "dataset.jsonl", [RECORDS[0], unanswered])
    (tmp_path / "conf" / "c.toml").write_text(CONFIG.replace('"best"', '"error"'))
    s = run_json(
        capsys, "eval", "--config", str(tmp_path / "conf" / "c.toml"),
        "--dataset", str(tmp_path / "data" / "dataset.jsonl"), "--json",
    )  # fmt: skip
    assert (s["errors"], s["accuracy"], s["answered_by"]) == (1, 0.5, {"small": 1, "big": 0})
    assert s["escalation_rate"] == {"small": 0.5, "big": 0.0}  # r8 failed at big: no later tier
    paid = small(20, 50) + small(20, 60) + small(20, 10) + small(20, 10)
    assert s["cost_usd"] == pytest.approx(paid, rel=1e-12)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sweep", "tiers.small.min_agreement=1"], "expected tiers.<tier>.validators"),
        (["--sweep", "tiers.9.validators.1.min_agreement=1"], "no tier 9"),
        (["--sweep", "tiers.small.validators.json_schema.x=1"], "no validator in tier 'small'"),
        (["--sweep", f"{SWEEP}=0.5,2"], "got 2 (with min_agreement=2)"),
        (["--extractor", "telepathy"], "unknown extractor"),
        (["--limit", "0"], "must be >= 1"),
    ],
)
def test_bad_arguments_exit_2_before_running(
    files: tuple[str, str], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    config, dataset = files
    assert main(["eval", "--config", config, "--dataset", dataset, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "baseline" not in err


def test_bad_dataset_exits_2(files: tuple[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    config, dataset = files
    Path(dataset).with_name("broken.jsonl").write_text('{"question": "q"}\n[1, 2]\n')
    assert main(["eval", "--config", config, "--dataset", dataset + ".missing"]) == 2
    assert "cannot read" in capsys.readouterr().err
    broken = str(Path(dataset).with_name("broken.jsonl"))
    assert main(["eval", "--config", config, "--dataset", broken]) == 2
    assert "broken.jsonl:2: not a dataset record" in capsys.readouterr().err


def test_eval_as_a_subprocess(files: tuple[str, str]) -> None:
    config, dataset = files
    proc = subprocess.run(
        [sys.executable, "-m", "cascade._cli", "eval", "--config", config,
         "--dataset", dataset, "--json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert (s["accuracy"], s["answered_by"]) == (5 / 7, {"small": 3, "big": 4})
    assert s["cost_usd"] == pytest.approx(COST_AT_1, rel=1e-12)
    assert "[##############################] 7/7" in proc.stderr


def result(
    text: str, answer: str | None = None, model: str = "m", variant: str | None = None
) -> Result:
    return Result(
        text=text, parsed=None, tier=1, tier_name="t", provider="p", model=model, cost_usd=0.0,
        usage=Usage(), latency_s=0.0, attempts=(), validated=True, variant=variant, answer=answer,
    )  # fmt: skip


def score(record: Record, res: Result | None, extract: Any, answer_type: str | None = None) -> bool:
    return Scoring(extract=extract, answer_type=answer_type).judge(record, res)[0]


def exact(record: Record, res: Result | None, answer_type: str | None = None) -> bool:
    return Scoring(extract=get_extractor("auto"), answer_type=answer_type).judge(record, res)[1]


def test_score_normalises_numbers_and_falls_back_to_exact_text() -> None:
    auto = get_extractor("auto")
    gold = Record(question="q", expected="1000")
    assert score(gold, result("x", answer="$1,000.00"), auto)
    assert score(gold, result("The answer is 1000."), auto)  # extracted from the text
    assert not score(gold, result("The answer is 999."), auto)
    assert not score(gold, None, auto)
    assert score(Record(question="q", expected=18), result("x", answer="18.0"), auto)
    assert score(Record(question="q", expected="Paris"), result("x", answer=" paris"), auto)
    assert score(Record(question="q", expected="N/A"), result("x", answer="N/A"), auto)
    assert not score(Record(question="q"), result("x", answer="18"), auto)  # no gold answer


def test_score_uses_the_judged_label_of_the_chosen_response() -> None:
    auto = get_extractor("auto")
    record = msgspec_record(
        {"question": "q", "expected": "5", "responses": {"m": [
            {"variant": "plain", "text": "#### 4", "judged_correct": True},
            {"variant": "COT", "text": "#### 4", "answer": "4"},
        ]}}
    )  # fmt: skip
    assert score(record, result("#### 4"), auto)  # the judged label wins over the text
    assert not score(record, result("#### 4", answer="4", variant="COT"), auto)
    assert not score(record, result("#### 4", model="other"), auto)  # not that response


def msgspec_record(data: dict[str, Any]) -> Record:
    return msgspec.convert(data, type=Record)


def test_baseline_is_the_last_tier_alone_without_validators() -> None:
    config = Config.from_dict(
        {
            "max_cost_usd": 0.01,
            "tiers": [
                {"name": "a", "providers": [{"name": "a", "kind": "openai", "model": "a"}]},
                {
                    "name": "b",
                    "mode": "scored",
                    "variants": [{"name": "v1"}, {"name": "v2"}],
                    "validators": [{"name": "json_schema", "schema": {}}],
                    "providers": [{"name": "b", "kind": "openai", "model": "b"}],
                },
            ],
        }
    )
    base = baseline_config(config)
    assert [t.name for t in base.tiers] == ["b"]
    (top,) = base.tiers
    assert (top.validators, top.mode, [v.name for v in top.variants]) == ([], "all", ["v1"])
    assert base.max_cost_usd is None


def test_gsm8k_examples_check(capsys: pytest.CaptureFixture[str]) -> None:
    if not GSM8K.exists():
        pytest.skip("the shared GSM8K replay dataset is not here")
    for example in sorted(EXAMPLES.glob("*.toml")):
        assert main(["check", str(example)]) == 0, example
    assert "3 tiers" in capsys.readouterr().out


def test_gsm8k_smoke_first_50(capsys: pytest.CaptureFixture[str]) -> None:
    if not GSM8K.exists():
        pytest.skip("the shared GSM8K replay dataset is not here")
    s = run_json(
        capsys, "eval", "--config", str(EXAMPLES / "two_tier.toml"), "--dataset", str(GSM8K),
        "--limit", "50", "--json",
    )  # fmt: skip
    assert s["requests"] == 50 and s["errors"] == 0
    assert sum(s["answered_by"].values()) == 50
    assert 0.85 <= s["accuracy"] <= 1.0 and 0.85 <= s["baseline_accuracy"] <= 1.0
    assert 0 < s["cost_share"] < 0.8  # most questions stay with GPT-3.5
