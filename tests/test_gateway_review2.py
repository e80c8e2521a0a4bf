"""A second review's attacks on the hostile-client fixes and the budget's reservation ids:
each test is an attack that should fail to hurt the gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# -- a schema's pattern, met by the build's probes -------------------------------------


def test_a_schema_pattern_is_not_run_by_the_probes_that_build_it() -> None:
    """The probes that look for references fanning out checked ``""`` against the
    schema's ``pattern`` with Python's ``re``, which holds the GIL: a 100-byte pattern
    exponential on the empty string (``(|)(|)...(?=a)``) froze the whole gateway (its
    event loop included, though the build runs on a thread) for minutes, from one
    request. Run in a child (a GIL held for hours cannot be interrupted in-process)."""
    code = textwrap.dedent(
        """
        from cascade.validators import JsonSchemaValidator
        pattern = "(|)" * 60 + "(?=a)"  # 2 ** 60 steps on "" in re
        schema = {"$defs": {"p": {"type": "string", "pattern": pattern}}, "$ref": "#/$defs/p"}
        v = JsonSchemaValidator(schema=schema)
        print("built")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail("building the schema's validator ran the pattern for over 30 s")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "built"
