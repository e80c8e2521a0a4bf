"""The ``classifier`` router's plan table (policy ``table``): training texts clustered many
times, each cluster's figures per range of tiers averaged per request (a bagged table,
file version 2), the cost weight chosen by cross-validation under a budget; saved, loaded
with its shapes checked, routing through the engine over real loopback HTTP; and a
version-1 file with a single table still loads and routes."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import numpy as np
import pytest

from cascade import Cascade, ConfigError
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._ensemble import MAX_SEED, EnsembleTable, plan_outcomes
from cascade.routing._labels import Labelled
from cascade.routing._modelfile import (
    ClusterPlan,
    TableEnsemble,
    TableMember,
    encode_file,
    load_classifier,
)
from cascade.routing._textmodel import Head, TextModel
from cascade.routing._train import all_plans, fit_classifier
from cascade.testing import FakeOpenAIServer

from .helpers import provider, tier
from .test_routing_learned import TIERS, build, family, label, request, sports, training

pytest.importorskip("sklearn")

pytestmark = pytest.mark.anyio


def fitted(tmp_path: Path, name: str = "table.json", **options: object) -> Path:
    path = tmp_path / name
    path.write_bytes(encode_file(fit_classifier(training(), TIERS, table=True, **options)))  # type: ignore[arg-type]
    return path


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Within 52% of the large tier's cost: the whole cascade for every text (53%) is not,
    the large tier for family questions and the small one for sports (52%) is."""
    return fitted(tmp_path_factory.mktemp("table"), budget_share=0.52)


def version_1_file(tmp_path: Path) -> Path:
    """A version-1 file as ``train-router --table`` wrote it before bagged tables: the
    classifier's heads, then a head of two centroids (a family text's vector and a sports
    text's) and their clusters' ranges."""
    plain = fit_classifier(training(), TIERS, fit_weight=False)
    model = TextModel(plain.features, plain.heads)

    def dense(text: str) -> list[float]:
        row = [0.0] * len(plain.features.vocabulary)
        for i, v in zip(*model.vector(text), strict=True):
            row[int(i)] = float(v)
        return row

    head = Head(classes=["0", "1"], coef=[dense(family(0)), dense(sports(0))], intercept=[0, 0])
    clusters = [
        ClusterPlan(start=2, stop=2, right=1.0, cost=0.03, records=60),
        ClusterPlan(start=1, stop=2, right=1.0, cost=0.001, records=60),
    ]
    old = msgspec.structs.replace(plain, heads=[*plain.heads, head], clusters=clusters)
    path = tmp_path / "version1.json"
    path.write_bytes(encode_file(old))
    return path


async def test_each_text_gets_the_range_its_neighbours_did_best_in(table_file: Path) -> None:
    router = ClassifierRouter(model=table_file, policy="table")
    assert router.file.version == 2
    assert router.file.ensemble is not None
    info = router.file.trained_on["cost_weight_fit"]["table"]
    assert info["members"] == len(router.file.ensemble.members) == 30
    assert info["cv_accuracy"] == 1.0  # every held-out fold routed right
    fam = await router.route(request(family(1000)))
    assert (fam.start_tier, fam.max_tier) == (2, 2), fam.reason
    spo = await router.route(request(sports(1000)))
    # the small tier; escalating costs nothing more on these records (the small tier
    # accepts), and the clusters' figures are shrunk toward the whole set's, where the
    # small tier alone is right half the time: the range that may escalate wins
    assert (spo.start_tier, spo.max_tier) == (1, 2), spo.reason
    assert fam.reason.startswith("bagged table: tiers 2-2")
    assert len(fam.reason) <= 200
    assert fam.score == 1.0
    assert fam.router == "classifier"
    # the same file still serves the other policies
    both = await ClassifierRouter(model=table_file).route(request(family(1000)))
    assert both.start_tier == 2


def test_the_budget_binds(tmp_path: Path) -> None:
    """Family questions need the large tier (30 times the small one's cost); half the
    records are family questions, so sending them there costs about half the large tier
    alone: within a budget of 60%, not of 30%, where only some family questions (those
    whose neighbourhoods are surest) can go there and sports questions stay small."""
    loose = ClassifierRouter(model=fitted(tmp_path, "a.json", budget_share=0.6), policy="table")
    tight = ClassifierRouter(model=fitted(tmp_path, "b.json", budget_share=0.3), policy="table")
    for router, share in ((loose, 0.6), (tight, 0.3)):
        info = router.file.trained_on["cost_weight_fit"]["table"]
        assert info["budget_share"] == share
        assert info["reference_tier"] == 2
        assert info["train_cost_share"] <= share
        assert info["cv_cost_share"] <= share
    assert loose.file.trained_on["cost_weight_fit"]["table"]["train_accuracy"] == 1.0
    assert 0.5 <= tight.file.trained_on["cost_weight_fit"]["table"]["train_accuracy"] < 1.0
    texts = [sports(i) for i in range(200, 210)]
    assert {tight.from_ensemble(tight.ensemble, t).start_tier for t in texts} == {1}  # type: ignore[arg-type]
    assert loose.file.ensemble is not None
    assert loose.file.ensemble.cost_weight < tight.file.ensemble.cost_weight  # type: ignore[union-attr]


def test_the_same_seed_gives_the_same_file(tmp_path: Path) -> None:
    a = fitted(tmp_path, "a.json", budget_share=0.52, seed=3).read_bytes()
    b = fitted(tmp_path, "b.json", budget_share=0.52, seed=3).read_bytes()
    assert a == b
    got = load_classifier(tmp_path / "a.json", at="model")[0]
    assert got.trained_on["cost_weight_fit"]["table"]["seed"] == 3
    # the largest seed allowed: every k-means seed derived from it is a valid one
    top = load_classifier(fitted(tmp_path, "c.json", seed=MAX_SEED), at="model")[0]
    assert top.ensemble is not None


def member(
    centroids: list[list[float]], right: list[list[float]], cost: list[list[float]]
) -> TableMember:
    terms = [[i for i, v in enumerate(c) if v] for c in centroids]
    return TableMember(
        terms=terms,
        values=[[v for v in c if v] for c in centroids],
        right=right,
        cost=cost,
        records=[10] * len(centroids),
    )


def test_a_decision_averages_the_members_nearest_clusters() -> None:
    """Two members over a two-term vocabulary and two ranges: for the first term, the first
    member's nearest cluster says (0.6, 0.9), the second's (0.8, 0.9); the mean (0.7, 0.9)
    against costs (1, 3). At weight 0.05 the dearer range scores higher (0.75 against
    0.65), at 0.15 the cheaper (0.55 against 0.45); at 0.1 they tie and the cheaper wins."""
    a = member([[1.0, 0.0], [0.0, 1.0]], [[0.6, 0.9], [0.0, 0.0]], [[1.0, 3.0], [1.0, 3.0]])
    b = member([[0.6, 0.8]], [[0.8, 0.9]], [[1.0, 3.0]])
    ensemble = TableEnsemble(
        ranges=[(1, 1), (1, 2)], cost_weight=0.05, reference_cost=1.0, members=[a, b]
    )

    def at(weight: float) -> EnsembleTable:
        return EnsembleTable(msgspec.structs.replace(ensemble, cost_weight=weight), 2)

    first = (np.array([0]), np.array([1.0]))
    assert at(0.05).decide(*first) == (1, pytest.approx(0.9), 3.0)
    assert at(0.15).decide(*first) == (0, pytest.approx(0.7), 1.0)
    assert at(0.1).decide(*first)[0] == 0
    # the first member's second cluster for the second term: (0.4, 0.45) on average
    assert at(0.05).decide(np.array([1]), np.array([1.0])) == (0, pytest.approx(0.4), 1.0)
    # no known term: each member's first (largest) cluster
    assert at(0.05).decide(np.zeros(0, np.intp), np.zeros(0))[0] == 1


async def test_a_version_1_file_still_loads_and_routes(tmp_path: Path) -> None:
    router = ClassifierRouter(model=version_1_file(tmp_path), policy="table")
    assert router.file.version == 1
    assert router.ensemble is None
    fam = await router.route(request(family(1000)))
    spo = await router.route(request(sports(1000)))
    assert (fam.start_tier, fam.max_tier) == (2, 2)
    assert (spo.start_tier, spo.max_tier) == (1, 2)
    assert fam.reason.startswith("cluster 0")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d.update(version=3), "a version 3 classifier router file; this"),
        (lambda d: d.update(version=1), "needs version 2"),
        (lambda d: d["ensemble"]["ranges"].append([2, 1]), "not ranges of 2 tiers"),
        (lambda d: d["ensemble"]["members"][0]["terms"][0].__setitem__(0, 10**7), "beyond the"),
        (lambda d: d["ensemble"]["members"][0]["values"][0].append(0.5), "do not pair up"),
        (lambda d: d["ensemble"]["members"][0]["right"][0].append(0.5), "other than 3 ranges"),
        (lambda d: d["ensemble"]["members"][0]["right"][0].__setitem__(0, 2.0), "corrupt"),
        (lambda d: d["ensemble"]["members"][0]["records"].pop(), "differ in length"),
        (lambda d: d["ensemble"].update(members=[]), "0 members"),
        (lambda d: d["ensemble"]["members"][0]["values"][0].__setitem__(0, 1e999), "out of range"),
    ],
)
def test_a_corrupt_bagged_table_is_a_config_error_naming_the_file(
    table_file: Path, tmp_path: Path, change: object, words: str
) -> None:
    data = json.loads(table_file.read_bytes())
    change(data)  # type: ignore[operator]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data).replace("Infinity", "1e999"))
    with pytest.raises(ConfigError, match=words) as info:
        build(path, policy="table")
    assert info.value.path == "router.model"
    assert str(path) in info.value.message


def test_plan_outcomes_run_each_range_over_each_record() -> None:
    rows = [
        Labelled(text=family(i), tiers=(label("rejected_wrong", 0.001), label("accepted_right", 1)))
        for i in range(30)
    ]
    right, cost = plan_outcomes(rows, all_plans(2))
    assert right.shape == (30, 3)
    assert list(right[0]) == [0.0, 1.0, 1.0]  # (1,1) wrong, (1,2) escalates, (2,2) right
    assert list(cost[0]) == [0.001, 1.001, 1.0]


async def test_the_engine_runs_the_range_the_table_gives(table_file: Path) -> None:
    async with FakeOpenAIServer() as server:
        server.respond("m-small", lambda r: "small says")
        server.respond("m-large", lambda r: "large says")
        config = {
            "tiers": [
                tier("small", provider("small", server.url, "m-small")),
                tier("large", provider("large", server.url, "m-large")),
            ],
            "router": {"kind": "classifier", "model": str(table_file), "policy": "table"},
        }
        async with Cascade.from_dict(config) as cascade:
            fam = await cascade.run(messages=[{"role": "user", "content": family(77)}])
            spo = await cascade.run(messages=[{"role": "user", "content": sports(77)}])
            odd = await cascade.run(messages=[{"role": "user", "content": "x" * 100_000}])
        assert (fam.tier_name, fam.text) == ("large", "large says")
        assert (spo.tier_name, spo.text) == ("small", "small says")
        assert odd.route is not None
        assert odd.route.reason.startswith("bagged table: ")
        assert fam.route is not None and fam.route.max_tier == 2


def test_policy_table_needs_a_file_with_a_table(tmp_path: Path) -> None:
    plain = tmp_path / "plain.json"
    plain.write_bytes(encode_file(fit_classifier(training(), TIERS, fit_weight=False)))
    with pytest.raises(ConfigError) as info:
        build(plain, policy="table")
    assert info.value.path == "router.policy" and "--table" in info.value.message


def test_the_model_file_is_found_beside_the_config_file(
    table_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "router.json").write_bytes(table_file.read_bytes())
    tiers = "".join(
        f'[[tiers]]\nname = "{name}"\n[[tiers.providers]]\nname = "{name}"\n'
        f'kind = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
        for name in TIERS
    )
    (folder / "c.toml").write_text(
        tiers + '[router]\nkind = "classifier"\nmodel = "router.json"\npolicy = "table"\n'
    )
    (folder / "nested.toml").write_text(
        tiers + '[router]\nkind = "first_of"\n'
        'routers = [{ kind = "classifier", model = "router.json", policy = "table" }]\n'
    )
    monkeypatch.chdir(tmp_path)  # not the config's folder
    built = Cascade.from_config(folder / "c.toml")
    assert isinstance(built.router, ClassifierRouter)
    assert built.router.path == str(folder / "router.json")
    nested = Cascade.from_config(folder / "nested.toml")
    assert nested.router is not None and nested.router.name == "first_of"
    # the same table without the file's folder: the working directory's, where it is not
    with pytest.raises(ConfigError) as info:
        build("router.json", policy="table")
    assert info.value.path == "router.model" and "cannot read" in info.value.message


@pytest.mark.parametrize("case", ["classes", "range", "missing head", "extra plan"])
def test_a_corrupt_version_1_table_is_a_config_error_naming_the_file(
    tmp_path: Path, case: str
) -> None:
    data = json.loads(version_1_file(tmp_path).read_bytes())
    if case == "classes":
        data["heads"][-1]["classes"].reverse()
    elif case == "range":
        data["clusters"][0]["stop"] = 7
    elif case == "missing head":
        data["heads"].pop()
    else:
        data["clusters"].append(data["clusters"][0])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as info:
        build(path, policy="table")
    assert info.value.path == "router.model" and str(path) in info.value.message
