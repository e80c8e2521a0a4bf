"""Hostile input for the plan table and router file paths: corrupt or hostile router files,
deep nesting, bad training data and arguments, hostile prompts at decision time. Each is a
ConfigError / InputError naming what is wrong, or a recorded fallback; never a crash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import cascade
from cascade import Cascade, ConfigError, InputError
from cascade._cli import main
from cascade.routing import RouteDecision, RouteRequest, _registry
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._labels import Labelled
from cascade.routing._modelfile import encode_file, load_classifier
from cascade.routing._train import fit_classifier

from .test_routing_learned import TIERS, label, request, training
from .test_routing_registry import clean_registry, config  # noqa: F401
from .test_routing_table import version_1_file
from .test_routing_train import files, train  # noqa: F401

pytest.importorskip("sklearn")

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def table_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    fitted = fit_classifier(training(), TIERS, table=True, budget_share=0.52)
    data: dict[str, Any] = json.loads(encode_file(fitted))
    return data


def write(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "hostile.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# -- the router file -----------------------------------------------------------------------


def test_a_deeply_nested_file_is_a_config_error_naming_it(
    tmp_path: Path, table_json: dict[str, Any]
) -> None:
    text = json.dumps(table_json)
    depth = 100_000
    bomb = text[:-1] + ', "trained_on": {"x": ' + "[" * depth + "]" * depth + "}}"
    path = write(tmp_path, bomb)
    with pytest.raises(ConfigError) as got:
        load_classifier(path, at="model")
    assert str(path) in str(got.value)
    assert got.value.path == "model"
    with pytest.raises(ConfigError) as built:
        ClassifierRouter(model=path, policy="table")
    assert str(path) in str(built.value)


def test_a_path_with_a_nul_byte_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as got:
        ClassifierRouter(model="router\x00.json")
    assert got.value.path == "model"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: d["clusters"][0].update(start=3, stop=3), "not a range of tiers"),
        (lambda d: d["clusters"][0].update(start=2, stop=1), "not a range of tiers"),
        (lambda d: d["clusters"][0].update(records=-1), "corrupt"),
        (lambda d: d["clusters"].append(d["clusters"][0]), "classes are not 0 to"),
        (lambda d: d["heads"].pop(), "heads for"),
        (lambda d: d["heads"][-1]["coef"][0].append(0.5), "values for"),
        (lambda d: d["heads"][-1]["coef"][0].__setitem__(0, 1e999), "out of range"),
    ],
)
def test_a_corrupt_version_1_plan_table_is_refused_at_load(
    tmp_path: Path, change: Any, words: str
) -> None:
    data = json.loads(version_1_file(tmp_path).read_bytes())
    change(data)
    text = json.dumps(data).replace("Infinity", "1e999")  # parsed as inf
    with pytest.raises(ConfigError, match=words):
        load_classifier(write(tmp_path, text), at="model")


def test_a_file_train_router_writes_for_five_tiers_loads(tmp_path: Path) -> None:
    """Five tiers: 5 tier heads, 15 range heads and a bagged table over the 15 ranges."""
    names = [f"t{j}" for j in range(5)]
    rows = [
        Labelled(
            text=f"question {i} about {'cats' if i % 2 else 'dogs'}",
            tiers=tuple(
                label("accepted_right" if j >= i % 5 else "rejected_wrong", 0.001 * (j + 1))
                for j in range(5)
            ),
        )
        for i in range(30)
    ]
    path = tmp_path / "five.json"
    path.write_bytes(encode_file(fit_classifier(rows, names, table=True, fit_weight=False)))
    router = ClassifierRouter(model=path, policy="table")
    assert len(router.file.heads) == 20
    assert router.ensemble is not None
    assert len(router.ensemble.ranges) == 15


# -- decision time -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t  ",
        "\ud800 lone \udfff surrogates",
        "\u4e2d\u6587 \u00e9t\u00e9",
        "x" * 10_000_000,
    ],
    ids=["empty", "whitespace", "lone-surrogates", "non-ascii", "10MB"],
)
async def test_the_table_decides_on_any_prompt(
    table_json: dict[str, Any], tmp_path: Path, text: str
) -> None:
    router = ClassifierRouter(model=write(tmp_path, table_json), policy="table")
    got = await router.route(request(text))
    assert got.start_tier is not None
    assert got.reason.startswith("bagged table: ")


async def test_a_table_for_other_tiers_has_no_opinion(
    table_json: dict[str, Any], tmp_path: Path
) -> None:
    router = ClassifierRouter(model=write(tmp_path, table_json), policy="table")
    got = await router.route(request("Is this plausible?", ["small"]))
    assert (got.start_tier, got.max_tier) == (None, None)
    assert "trained for tiers" in got.reason


# -- training ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "a b c"])
def test_training_texts_without_a_word_are_an_input_error(text: str) -> None:
    ok = (label("accepted_right", 0.001), label("accepted_right", 0.03))
    with pytest.raises(InputError, match="no words"):
        fit_classifier([Labelled(text=text, tiers=ok) for _ in range(12)], TIERS, table=True)


@pytest.mark.parametrize(
    ("options", "where"),
    [
        ({"budget_share": float("nan")}, "--budget-share"),
        ({"budget_share": -1.0}, "--budget-share"),
        ({"budget_share": 0.5, "budget_tier": 5}, "--budget-tier"),
        ({"seed": -1}, "--seed"),
        ({"seed": 10**12}, "--seed"),
    ],
)
def test_bad_budgets_in_python_are_input_errors(options: dict[str, Any], where: str) -> None:
    with pytest.raises(InputError) as got:
        fit_classifier(training()[:12], TIERS, table=True, fit_weight=False, **options)
    assert got.value.path == where


def test_an_unknown_budget_tier_fails_before_labelling(
    files: tuple[str, str],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = train(files, tmp_path, "--table", "--budget-share", "0.5", "--budget-tier", "nope")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--budget-tier" in err
    assert "labelling" not in err  # refused before any record is run


@pytest.mark.parametrize("seed", ["-1", "200000"])
def test_a_bad_seed_fails_before_labelling(
    files: tuple[str, str],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    seed: str,
) -> None:
    assert main(train(files, tmp_path, "--table", "--seed", seed)) == 2
    err = capsys.readouterr().err
    assert "--seed" in err
    assert "labelling" not in err


def test_table_with_a_semantic_router_is_refused(
    files: tuple[str, str],  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(train(files, tmp_path, "--kind", "semantic", "--table")) == 2
    err = capsys.readouterr().err
    assert "--table" in err
    assert not (tmp_path / "router.json").exists()


# -- router file paths ---------------------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    table: dict[str, Any] = {"kind": "classifier", "model": "r.json"}
    for _ in range(depth):
        table = {"kind": "first_of", "routers": [table]}
    return table


def test_a_nesting_bomb_is_a_config_error_with_a_base_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as got:
        Cascade.from_dict(config(router=nested(2000)), base_dir=tmp_path)
    assert got.value.path.startswith("router")


def test_a_path_parameter_declared_as_a_string_is_refused(
    clean_registry: None,  # noqa: F811
) -> None:
    class Reads:
        name = "reads"

        def __init__(self, *, model: str) -> None:
            self.model = model

        async def route(self, request: RouteRequest) -> RouteDecision:
            return RouteDecision()

    with pytest.raises(ValueError, match="paths"):
        cascade.router("reads_one", paths="model")(Reads)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="paths"):
        _registry.register_router_kind("reads_two", Reads, paths=("model", ""))
