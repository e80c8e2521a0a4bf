"""The examples run as shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def run_example(name: str) -> str:
    """Run ``examples/{name}`` as a user does (no OTEL_* variables); its standard output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart_runs() -> None:
    out = run_example("quickstart.py")
    assert "answer: {'total': 12.5} from tier 2 (medium-b)" in out
    assert "rejected" in out and "HTTP 503" in out


def test_tracing_example_shows_the_escalation_in_one_trace() -> None:
    out = run_example("tracing.py")
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["event"] for r in records] == [
        "request received",
        "cascade.route",
        "request answered",
    ]
    route = records[1]
    assert route["tier_path"] == ["small", "large"] and route["task_id"] == "receipt-1"
    assert route["escalations"][0].startswith("small: rejected (json_schema:")
    # The application's events and cascade's record sit in one trace, the one printed.
    (trace_line,) = [line for line in out.splitlines() if line.startswith("trace ")]
    assert {r["trace_id"] for r in records} == {trace_line.split()[1]}
    assert route["span_id"] != records[0]["span_id"]  # the run's own span, under the app's
    tree = [line.split(" [")[0] for line in out.split(trace_line)[1].splitlines()[1:]]
    names = [t for t in tree if not t.lstrip().startswith("*")]
    assert names == [
        "POST /receipts",
        "  cascade.run",
        "    cascade.tier small",
        "      chat small",
        "    cascade.tier large",
        "      chat large",
    ]
    assert "* cascade.escalation:" in out and "cascade.validated=False" in out
