"""``benchmarks/_routing_rows.py``: the texts each decision p50 of ``routing_compare.py`` is
timed on are a fair sample of the ``test`` split, which is ordered by task (its first
1,000 texts are two of its four tasks)."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def rows() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_routing_rows", BENCHMARKS / "_routing_rows.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_timed_texts_are_spread_over_a_split_ordered_by_task(rows: ModuleType) -> None:
    sizes = {"aqua": 199, "strategyqa": 1859, "clutrr": 816, "sports": 777}  # test's order
    split = [(task, i) for task, n in sizes.items() for i in range(n)]
    got = rows.spread(split, 1000)
    assert len(set(got)) == 1000
    counts = Counter(task for task, _ in got)
    for task, n in sizes.items():
        assert abs(counts[task] - 1000 * n / len(split)) <= 1, task
    assert rows.spread(split[:10], 1000) == split[:10]
