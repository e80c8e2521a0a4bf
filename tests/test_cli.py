"""The `cascade` command: demo (small N), check, run: as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cascade._cli import main
from cascade.testing import FakeOpenAIServer, Reply

EXAMPLE = Path(__file__).parent.parent / "examples" / "cascade.toml"


def test_demo_json_small(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--requests", "40", "--concurrency", "8", "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    for key in ("requests", "accuracy", "cost_usd", "baseline_cost_usd", "escalation_rate"):
        assert key in summary
    assert summary["requests"] == 40
    assert summary["errors"] == 0
    assert 0.5 <= summary["accuracy"] <= 1.0
    assert summary["baseline_accuracy"] == 1.0  # the simulated top tier is always right
    assert 0 < summary["cost_usd"] < summary["baseline_cost_usd"]
    assert set(summary["escalation_rate"]) == {"small", "medium", "large"}
    assert summary["escalation_rate"]["small"] > 0  # the cheap tier is wrong often enough
    assert sum(summary["answered_by"].values()) == 40
    assert "40/40" in err  # the progress bar ran to the end


def test_demo_is_seeded(capsys: pytest.CaptureFixture[str]) -> None:
    figures = []
    for _ in range(2):
        main(["demo", "--requests", "30", "--json", "--seed", "3"])
        s = json.loads(capsys.readouterr().out)
        figures.append((s["accuracy"], round(s["cost_usd"], 12), s["answered_by"]))
    assert figures[0] == figures[1]


def test_demo_text_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--requests", "20"]) == 0
    out = capsys.readouterr().out
    for word in ("accuracy", "cost", "escalation rate", "p50", "p95"):
        assert word in out


def test_check_prints_tiers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "3 tiers" in out and "tier 2 'medium'" in out and "anthropic" in out


def test_check_reports_the_bad_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("timeout_s = 30", 'timeout_s = "slow"'))
    assert main(["check", str(bad)]) == 2
    assert "tiers[0].providers[0].timeout_s" in capsys.readouterr().err


@pytest.mark.anyio
async def test_run_one_shot(tmp_path: Path) -> None:
    async with FakeOpenAIServer() as server:
        server.script("cheap", "not json")
        server.script("big", Reply(text='{"answer": 42}'))
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"""
[[tiers]]
name = "cheap"
validators = [{{ name = "json_schema", schema = {{ type = "object", required = ["answer"] }} }}]
[[tiers.providers]]
name = "cheap-a"
kind = "openai"
base_url = "{server.url}"
model = "cheap"
[[tiers]]
name = "big"
[[tiers.providers]]
name = "big-a"
kind = "openai"
base_url = "{server.url}"
model = "big"
output_cost_per_mtok = 10
""")
        # a subprocess, as a user runs it; the fake server answers from this test's loop
        proc = await _run([sys.executable, "-m", "cascade._cli", "run", "--config", str(cfg),
                           "--json", "What is 6*7?"])  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["tier"] == 2 and result["text"] == '{"answer": 42}'
        assert [a["outcome"] for a in result["attempts"]] == ["rejected", "accepted"]
        proc = await _run([sys.executable, "-m", "cascade._cli", "run", "--config", str(cfg),
                           "--max-tier", "1", "hi"])  # fmt: skip
        assert proc.returncode == 0 and proc.stdout.strip() == "not json"
        assert "validated=False" in proc.stderr
        server.reset()
        server.script("cheap", Reply(status=500))
        server.script("big", Reply(status=500))
        proc = await _run([sys.executable, "-m", "cascade._cli", "run", "--config", str(cfg), "hi"])
        assert proc.returncode == 1
        assert "AllProvidersFailed" in proc.stderr and "cheap-a" in proc.stderr
        # Nothing on stdout; the command's own report of the failure on stderr, and no
        # routing record (the command configures structlog: warnings only, to stderr).
        assert proc.stdout == "" and "cascade.route" not in proc.stderr


async def _run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    import anyio

    result = await anyio.run_process(argv, check=False)
    return subprocess.CompletedProcess(
        argv, result.returncode, result.stdout.decode(), result.stderr.decode()
    )


def test_the_command_sends_warnings_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    import structlog

    from cascade._cli import _warnings_to_stderr

    _warnings_to_stderr()  # what main() does when logs are not exported
    log = structlog.get_logger("cascade")
    log.warning("shared state unavailable", redis="redis://127.0.0.1:6390/0")
    log.info("shared state available again")
    log.warning("cascade.route", outcome="error")
    out, err = capsys.readouterr()
    assert out == ""
    assert "shared state unavailable" in err and "[warning" in err
    assert "available again" not in err and "cascade.route" not in err


def test_hash_key_reads_the_key_from_stdin() -> None:
    import hashlib

    key = "sk-gw-cli-0123456789"
    code = "from cascade._cli import main; raise SystemExit(main())"
    done = subprocess.run(
        [sys.executable, "-c", code, "hash-key"],
        input=f"{key}\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert done.stdout.strip() == hashlib.sha256(key.encode()).hexdigest()
    assert key not in done.stdout + done.stderr
    for bad in ("", "two words\n", "k" * 600 + "\n", "sk-\u00e9\n"):
        refused = subprocess.run(
            [sys.executable, "-c", code, "hash-key"],
            input=bad,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 2
        assert refused.stdout == ""
