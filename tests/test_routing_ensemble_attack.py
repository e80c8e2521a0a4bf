"""Hostile version-2 router files and hostile texts against the bagged plan table: a file
that declares a table gigabytes large, numbers that overflow the decision, fields of the
other version; a decision over thousands of known terms. Each is a ConfigError naming the
file at load, or a decision with bounded memory and off the event loop."""

from __future__ import annotations

import copy
import json
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cascade import ConfigError
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._ensemble import EnsembleTable
from cascade.routing._modelfile import MAX_TABLE_CELLS, encode_file, load_classifier
from cascade.routing._train import fit_classifier

from .test_routing_learned import TIERS, family, request, training

pytest.importorskip("sklearn")

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def table_json() -> dict[str, Any]:
    fitted = fit_classifier(training(), TIERS, table=True, budget_share=0.52, fit_weight=False)
    data: dict[str, Any] = json.loads(encode_file(fitted))
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(data))
    return path


def wide(base: dict[str, Any], vocab: int, members: int, clusters: int) -> dict[str, Any]:
    """``base`` with a ``vocab``-term vocabulary, constant heads, and ``members`` tables of
    ``clusters`` clusters, each centroid one term (a small file)."""
    data = copy.deepcopy(base)
    data["features"]["vocabulary"] = [f"w:t{i}" for i in range(vocab)]
    data["features"]["idf"] = [1.0] * vocab
    n = len(data["tiers"])
    data["heads"] = [{"classes": ["accepted_right"], "coef": [], "intercept": []}] * n + [
        {"classes": ["right"], "coef": [], "intercept": []}
    ] * len(data["plans"])
    r = len(data["ensemble"]["ranges"])
    data["ensemble"]["members"] = [
        {
            "terms": [[(m * clusters + c) % vocab] for c in range(clusters)],
            "values": [[1.0]] * clusters,
            "right": [[0.5] * r] * clusters,
            "cost": [[0.01] * r] * clusters,
            "records": [1] * clusters,
        }
        for m in range(members)
    ]
    return data


def test_a_table_declaring_gigabytes_of_centroids_is_refused(
    tmp_path: Path, table_json: dict[str, Any]
) -> None:
    """A 4 MB file: a 200,000-term vocabulary and 64 x 64 clusters would be a dense
    200,000 x 4,096 matrix (6.5 GB) at load."""
    path = write(tmp_path, wide(table_json, 200_000, 64, 64))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as got:
            ClassifierRouter(model=path, policy="table")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in got.value.message
    assert got.value.path == "model"
    assert "centroid values" in got.value.message
    assert peak < 1 << 30


def test_the_largest_table_allowed_loads(tmp_path: Path, table_json: dict[str, Any]) -> None:
    members, clusters = 16, 16
    vocab = MAX_TABLE_CELLS // (members * clusters)
    router = ClassifierRouter(
        model=write(tmp_path, wide(table_json, vocab, members, clusters)), policy="table"
    )
    assert router.ensemble is not None


@pytest.mark.parametrize("ref", [5e-324, 1e-300, 1e-13])
async def test_a_reference_cost_too_small_to_divide_by_is_refused(
    tmp_path: Path, table_json: dict[str, Any], ref: float
) -> None:
    """cost_weight / reference_cost overflows to inf, and inf x a zero cost is NaN: every
    range's score NaN, and the decision raised ValueError (a failed route) on every run."""
    data = copy.deepcopy(table_json)
    data["ensemble"].update(reference_cost=ref, cost_weight=1e6)
    for m in data["ensemble"]["members"]:
        m["cost"] = [[0.0] * len(row) for row in m["cost"]]
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match="reference_cost") as got:
        load_classifier(path, at="model")
    assert str(path) in got.value.message


@pytest.mark.parametrize(
    "values",
    [[1e308, 1e308], [-0.5, 0.5], [0.9, 0.9]],
    ids=["overflowing", "negative", "longer-than-unit"],
)
def test_centroids_that_are_not_unit_vectors_are_refused(
    tmp_path: Path, table_json: dict[str, Any], values: list[float]
) -> None:
    """Values of 1e308 overflowed the nearest-cluster scores to inf (a RuntimeWarning, an
    error where warnings are errors); a centroid is a unit vector of non-negative TF-IDF
    weights."""
    data = copy.deepcopy(table_json)
    data["ensemble"]["members"][0]["terms"][0] = [0, 1]
    data["ensemble"]["members"][0]["values"][0] = values
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as got:
        load_classifier(path, at="model")
    assert str(path) in got.value.message


def test_a_version_2_file_with_a_single_table_is_refused(
    tmp_path: Path, table_json: dict[str, Any]
) -> None:
    """Version 2 holds a bagged table; a single table (``clusters`` and its head) is a
    version-1 field, and was routed as one when the file had no ``ensemble``."""
    data = copy.deepcopy(table_json)
    data.update(
        ensemble=None,
        clusters=[{"start": 1, "stop": 2, "right": 1.0, "cost": 0.1, "records": 3}],
    )
    data["heads"].append({"classes": ["0"], "coef": [], "intercept": []})
    path = write(tmp_path, data)
    with pytest.raises(ConfigError, match="version 2") as got:
        load_classifier(path, at="model")
    assert str(path) in got.value.message


def test_a_decision_over_thousands_of_terms_has_bounded_memory(
    table_json: dict[str, Any],
) -> None:
    """4,096 known terms x 1,024 clusters: gathering every term's row at once was a
    32 MB temporary per decision (per concurrent request)."""
    from cascade.routing._modelfile import TableEnsemble, TableMember

    vocab, members, clusters = 4096, 64, 16
    data = wide(table_json, vocab, members, clusters)["ensemble"]
    ensemble = TableEnsemble(
        ranges=[tuple(r) for r in data["ranges"]],
        cost_weight=data["cost_weight"],
        reference_cost=data["reference_cost"],
        members=[TableMember(**m) for m in data["members"]],
    )
    table = EnsembleTable(ensemble, vocab)
    idx = np.arange(vocab)
    w = np.full(vocab, 1 / 64)
    tracemalloc.start()
    try:
        table.decide(idx, w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


async def test_a_decision_reading_many_centroid_values_runs_off_the_event_loop(
    tmp_path: Path, table_json: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A short text (under the inline length) whose terms are all known, against a table
    of 64 x 64 clusters: 300 terms x 4,096 columns is milliseconds of numpy, which must
    not run on the event loop; a text of a few known terms still decides inline."""
    router = ClassifierRouter(model=write(tmp_path, wide(table_json, 300, 64, 64)), policy="table")
    threads: list[int] = []
    decide = EnsembleTable.decide

    def spy(self: EnsembleTable, idx: np.ndarray, w: np.ndarray) -> tuple[int, float, float]:
        threads.append(threading.get_ident())
        return decide(self, idx, w)

    monkeypatch.setattr(EnsembleTable, "decide", spy)
    many = " ".join(f"t{i}" for i in range(300))
    assert len(many) < 2000
    got = await router.route(request(many))
    assert got.reason.startswith("bagged table: ")
    await router.route(request("t1 t2"))
    assert threads[0] != threading.get_ident()
    assert threads[1] == threading.get_ident()


@pytest.mark.parametrize(
    "text",
    ["\x00" * 1000, "\u200b\u200b\u200b", "\x1b[31m red \x1b[0m", "zzqq " * 400],
    ids=["nuls", "zero-width", "ansi", "no-known-term"],
)
async def test_a_text_without_a_known_term_goes_to_each_members_largest_cluster(
    tmp_path: Path, table_json: dict[str, Any], text: str
) -> None:
    router = ClassifierRouter(model=write(tmp_path, table_json), policy="table")
    assert router.ensemble is not None
    got = await router.route(request(text))
    empty = router.ensemble.decide(np.zeros(0, np.intp), np.zeros(0))[0]
    start, stop = router.ensemble.ranges[empty]
    assert (got.start_tier, got.max_tier) == (start + 1, stop + 1)
    assert (await router.route(request(family(3)))).start_tier == 2


def test_training_refuses_a_table_too_large_to_load() -> None:
    """40,000 terms kept (max_features; 40 texts of 570 distinct words in their first
    4,000 characters, and their pairs): a table of up to 240 clusters over them is more
    centroid values than a file may hold; refused before any k-means, not written."""
    from cascade import InputError
    from cascade.routing._labels import Labelled

    from .test_routing_learned import label

    ok = (label("accepted_right", 0.001), label("accepted_right", 0.03))
    rows = [Labelled(text=" ".join(f"w{i}x{j}" for j in range(600)), tiers=ok) for i in range(40)]
    with pytest.raises(InputError, match="too large to load") as got:
        fit_classifier(rows, TIERS, table=True, fit_weight=False, max_features=40_000)
    assert got.value.path == "--table"


def test_a_table_too_large_for_a_router_file_is_thinned_until_it_fits(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """On ~10,000 records or more, 240 centroids each over most of a 20,000-term
    vocabulary encode to more than the 64 MiB a router file may be (20,000 synthetic
    records: 74.6 MiB; thinned at 0.0008: 53.6 MiB, the same range for all 3,000 checked): ``train-router`` wrote a file every run then refused. Here the
    limit is lowered to just under what the test data's file takes: the smallest values of
    the centroids are dropped until the file fits, and it routes as before."""
    import cascade.routing._ensemble as ensemble_module

    full = encode_file(fit_classifier(training(), TIERS, table=True, fit_weight=False))
    monkeypatch.setattr(ensemble_module, "MAX_FILE_BYTES", len(full) - 2000)
    thin = fit_classifier(training(), TIERS, table=True, fit_weight=False)
    data = encode_file(thin)
    assert len(data) <= len(full) - 2000
    floor = thin.trained_on["cost_weight_fit"]["table"]["centroid_floor"]
    assert floor > 0
    assert thin.ensemble is not None
    for m in thin.ensemble.members:
        for values in m.values:
            assert all(v >= floor for v in values)
    path = tmp_path / "thin.json"
    path.write_bytes(data)
    router = ClassifierRouter(model=path, policy="table")
    assert router.ensemble is not None
    assert router.from_ensemble(router.ensemble, family(500)).start_tier == 2


def test_a_router_file_that_cannot_fit_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import cascade.routing._ensemble as ensemble_module
    from cascade import InputError

    monkeypatch.setattr(ensemble_module, "MAX_FILE_BYTES", 5000)
    with pytest.raises(InputError, match="MiB") as got:
        fit_classifier(training(), TIERS, table=True, fit_weight=False)
    assert got.value.path == "--out"


def test_a_budget_nothing_fits_is_said_so() -> None:
    """Within a millionth of the large tier's cost no range fits (the small tier alone
    costs a thirtieth): the table takes the largest cost weight tried, and the summary
    says the budget was missed rather than printing the figures as if it were met."""
    from cascade.routing._train_cmd import _table_summary

    tight = fit_classifier(training(), TIERS, table=True, budget_share=1e-6, fit_weight=False)
    info = tight.trained_on["cost_weight_fit"]["table"]
    assert info["within_budget"] is False
    assert "over the budget" in _table_summary(tight)
    loose = fit_classifier(training(), TIERS, table=True, budget_share=0.52, fit_weight=False)
    assert loose.trained_on["cost_weight_fit"]["table"]["within_budget"] is True
    assert "over the budget" not in _table_summary(loose)


def test_fitting_runs_single_threaded_so_the_file_does_not_depend_on_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """k-means (OpenMP) and the logistic regressions (BLAS) sum in a thread-count-dependent
    order: 3,000 synthetic records gave files differing in the last bits of every centroid
    between OMP_NUM_THREADS=1 and 2 (the same seed, not the same file on another machine).
    Every fit runs with one thread."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info

    seen: list[int] = []
    for cls in (KMeans, LogisticRegression):
        fit = cls.fit

        def spy(self: Any, *args: Any, _fit: Any = fit, **kwargs: Any) -> Any:
            seen.append(max(p["num_threads"] for p in threadpool_info()))
            return _fit(self, *args, **kwargs)

        monkeypatch.setattr(cls, "fit", spy)
    fit_classifier(training(), TIERS, table=True, fit_weight=False)
    assert seen
    assert set(seen) == {1}


def test_another_process_with_other_hash_seeds_and_threads_writes_the_same_bytes() -> None:
    import os
    import subprocess
    import sys

    here = encode_file(fit_classifier(training(), TIERS, table=True, seed=5, fit_weight=False))
    script = (
        "import sys\n"
        "from tests.test_routing_learned import TIERS, training\n"
        "from cascade.routing._modelfile import encode_file\n"
        "from cascade.routing._train import fit_classifier\n"
        "f = fit_classifier(training(), TIERS, table=True, seed=5, fit_weight=False)\n"
        "sys.stdout.buffer.write(encode_file(f))\n"
    )
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONHASHSEED": "12345",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)]),
    }
    there = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=root,
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    assert there == here
