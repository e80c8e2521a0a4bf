"""The ``classifier`` router's plan table (policy ``table``): training texts clustered, a
range of tiers per cluster under a budget, the clusters and cost weight chosen by
cross-validation; saved, loaded with its shapes checked, and routing through the engine
over real loopback HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cascade import Cascade, ConfigError
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._clusters import fit_table, pick, plan_outcomes
from cascade.routing._labels import Labelled
from cascade.routing._modelfile import encode_file
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


async def test_each_cluster_gets_the_range_its_training_records_do_best_in(
    table_file: Path,
) -> None:
    router = ClassifierRouter(model=table_file, policy="table")
    info = router.file.trained_on["cost_weight_fit"]["table"]
    assert info["clusters"] == 2  # one cluster cannot tell the kinds apart; two can
    assert info["cv_accuracy"] == 1.0  # every held-out fold routed right
    fam = await router.route(request(family(1000)))
    assert (fam.start_tier, fam.max_tier) == (2, 2), fam.reason
    spo = await router.route(request(sports(1000)))
    # the small tier; escalating costs nothing more on these records (the small tier
    # accepts), and the cluster's figures are shrunk toward the whole set's, where the
    # small tier alone is right half the time: the range that may escalate wins
    assert (spo.start_tier, spo.max_tier) == (1, 2), spo.reason
    assert fam.reason.startswith("cluster ") and len(fam.reason) <= 200
    assert fam.score == 1.0 and fam.router == "classifier"
    # the same file still serves the other policies
    both = await ClassifierRouter(model=table_file).route(request(family(1000)))
    assert both.start_tier == 2


def test_the_budget_binds(tmp_path: Path) -> None:
    """Family questions need the large tier (30 times the small one's cost); half the
    records are family questions, so sending them there costs about half the large tier
    alone: within a budget of 60%, not of 30%. Within 60%, the whole cascade for every
    text (53%) is as accurate as two clusters, and one cluster is preferred."""
    loose = ClassifierRouter(model=fitted(tmp_path, "a.json", budget_share=0.6), policy="table")
    tight = ClassifierRouter(model=fitted(tmp_path, "b.json", budget_share=0.3), policy="table")
    assert [(c.start, c.stop) for c in loose.file.clusters] == [(1, 2)]
    assert {c.start for c in tight.file.clusters} == {1}
    assert tight.file.trained_on["cost_weight_fit"]["table"]["train_cost_share"] < 0.05
    for router, share in ((loose, 0.6), (tight, 0.3)):
        info = router.file.trained_on["cost_weight_fit"]["table"]
        assert info["budget_share"] == share and info["reference_tier"] == 2
        assert info["train_cost_share"] <= share
        assert info["cv_cost_share"] <= share
    assert loose.file.trained_on["cost_weight_fit"]["table"]["train_accuracy"] == 1.0
    assert tight.file.trained_on["cost_weight_fit"]["table"]["train_accuracy"] == 0.5


def test_pick_is_the_most_accurate_within_the_cap() -> None:
    scores = {
        (1, 0.0): (0.9, 5.0),
        (2, 0.1): (0.8, 2.0),
        (4, 0.1): (0.8, 1.0),
        (8, 1.0): (0.5, 0.5),
    }
    assert pick(scores, 5.0) == (1, 0.0)
    assert pick(scores, 4.0) == (2, 0.1)  # equally accurate: the fewer clusters
    assert pick(scores, 0.5) == (8, 1.0)
    assert pick(scores, 0.1) is None
    # the fewest clusters within the tolerance of the best
    close = {(1, 0.0): (0.7, 1.0), (4, 0.0): (0.78, 1.0), (8, 0.0): (0.8, 1.0)}
    assert pick(close, 1.0, tolerance=0.003) == (8, 0.0)
    assert pick(close, 1.0, tolerance=0.05) == (4, 0.0)
    assert pick(close, 1.0, tolerance=0.2) == (1, 0.0)


def test_one_cluster_when_the_texts_are_all_of_one_kind() -> None:
    rows = [
        Labelled(text=family(i), tiers=(label("rejected_wrong", 0.001), label("accepted_right", 1)))
        for i in range(30)
    ]
    ranges = all_plans(2)
    right, cost = plan_outcomes(rows, ranges)
    assert right.shape == (30, 3)
    assert list(right[0]) == [0.0, 1.0, 1.0]  # (1,1) wrong, (1,2) escalates, (2,2) right
    assert list(cost[0]) == [0.001, 1.001, 1.0]
    x = np.ones((30, 4)) / 2.0  # unit rows, all equal
    table, lam, (acc, spent) = fit_table(x, right, cost, ranges, k=1, cap=1.0, ref=1.0)
    assert [(p.start, p.stop, p.records) for p in table.plans] == [(2, 2, 30)]
    assert (acc, spent) == (1.0, 1.0) and lam == 0.0
    assert table.head().classes == ["0"]
    # nothing within the cap: the cheapest table the weights reach
    table, _, (acc, spent) = fit_table(x, right, cost, ranges, k=1, cap=0.01, ref=1.0)
    assert [(p.start, p.stop) for p in table.plans] == [(1, 1)]
    assert acc == 0.0
    assert spent == pytest.approx(0.001)


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
        assert odd.route is not None and odd.route.reason.startswith("cluster ")
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
def test_a_corrupt_table_is_a_config_error_naming_the_file(
    table_file: Path, tmp_path: Path, case: str
) -> None:
    data = json.loads(table_file.read_bytes())
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
