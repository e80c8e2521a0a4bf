"""The examples run as shipped."""

from __future__ import annotations

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
