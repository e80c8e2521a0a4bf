"""A second review's attacks on the hostile-client fixes and the budget's reservation ids:
each test is an attack that should fail to hurt the gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cascade import ConfigError
from cascade.validators import JsonSchemaValidator

ROOT = Path(__file__).resolve().parents[1]
PROBES: list[Any] = [None, True, 0, "", [], {}]


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


def wide(n: int) -> dict[str, Any]:
    """Definitions ``30 x 30`` references deep over one that lists ``n`` empty subschemas:
    each of the probes' keyword checks is cheap to count, the last one is ``n`` checks."""
    return {
        "$defs": {
            "leaf": {"allOf": [{}] * n},
            "mid": {"allOf": [{"$ref": "#/$defs/leaf"}] * 30},
        },
        "allOf": [{"$ref": "#/$defs/mid"}] * 30,
    }


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(wide(1000), id="allOf-of-empty"),
        pytest.param(
            {**wide(1), "$defs": {**wide(1)["$defs"], "leaf": {"enum": [[0]] * 3000 + PROBES}}},
            id="long-enum",
        ),
    ],
)
def test_a_schema_whose_probes_pay_for_long_lists_is_refused_when_built(
    schema: dict[str, Any],
) -> None:
    """The probes counted keyword checks, whatever each one costs: a check over a list
    (``allOf`` of a thousand ``{}``, an ``enum`` of thousands of values) is that many
    checks. A 9 KB schema so held a validation thread ~95 s (one of two on two cores: the
    gateway's other schemas then wait into 503, its big answers into overrun), while
    counting under the 20,000 steps the probes may take."""
    with pytest.raises(ConfigError, match="fan out"):
        JsonSchemaValidator(schema=schema)
