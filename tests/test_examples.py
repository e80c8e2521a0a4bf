"""The examples run as shipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"


def test_quickstart_runs() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "answer: {'total': 12.5} from tier 2 (medium-b)" in proc.stdout
    assert "rejected" in proc.stdout and "HTTP 503" in proc.stdout


def test_tracing_example_shows_the_escalation_in_one_trace() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "tracing.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["event"] for r in records] == [
        "request received",
        "cascade.route",
        "request answered",
    ]
    route = records[1]
    assert route["tier_path"] == ["small", "large"] and route["task_id"] == "receipt-1"
    assert route["escalations"][0].startswith("small: rejected (json_schema:")
    # The application's events and cascade's record sit in one trace, the one printed.
    (trace_line,) = [line for line in proc.stdout.splitlines() if line.startswith("trace ")]
    assert {r["trace_id"] for r in records} == {trace_line.split()[1]}
    assert route["span_id"] != records[0]["span_id"]  # the run's own span, under the app's
    tree = [line.split(" [")[0] for line in proc.stdout.split(trace_line)[1].splitlines()[1:]]
    names = [t for t in tree if not t.lstrip().startswith("*")]
    assert names == [
        "POST /receipts",
        "  cascade.run",
        "    cascade.tier small",
        "      chat small",
        "    cascade.tier large",
        "      chat large",
    ]
    assert "* cascade.escalation:" in proc.stdout and "cascade.validated=False" in proc.stdout
