"""Config: the documented shape loads; every error names the path of the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest

import cascade
from cascade import Cascade, Config, ConfigError, load_config

EXAMPLE = Path(__file__).parent.parent / "examples" / "cascade.toml"

ISSUE_SHAPE = """
on_exhausted = "best"
[[tiers]]
name = "small"
validators = [{ name = "json_schema", schema = { type = "object", required = ["answer"] } }]
[[tiers.providers]]
name = "small-a"
kind = "openai"                 # or "anthropic"
base_url = "http://127.0.0.1:18080/v1"
model = "tier1"
api_key_env = "SMALL_API_KEY"   # optional
input_cost_per_mtok = 0.15
output_cost_per_mtok = 0.60
timeout_s = 30
"""


def test_issue_shape_loads() -> None:
    config = Config.from_toml(ISSUE_SHAPE)
    (tier,) = config.tiers
    (prov,) = tier.providers
    assert (tier.name, prov.kind, prov.model, prov.timeout_s) == ("small", "openai", "tier1", 30)
    assert prov.cost_usd(1_000_000, 1_000_000) == pytest.approx(0.75)
    c = Cascade(config, environ={"SMALL_API_KEY": "sk-x"})
    assert c.tiers == ("small",)


def test_example_file_loads() -> None:
    config = load_config(EXAMPLE)
    assert [t.name for t in config.tiers] == ["small", "medium", "large"]
    Cascade(config)


def test_missing_api_key_env_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        Cascade(Config.from_toml(ISSUE_SHAPE), environ={})
    assert info.value.path == "tiers[0].providers[0].api_key_env"
    assert "SMALL_API_KEY" in str(info.value)


@pytest.mark.parametrize(
    ("old", "new", "path", "words"),
    [
        ("timeout_s = 30", "timeout_s = -1", "tiers[0].providers[0].timeout_s", "> 0"),
        ('model = "tier1"', "model = 3", "tiers[0].providers[0].model", "Expected `str`"),
        ('model = "tier1"', 'model = "tier1"\ncolour = "red"', "tiers[0].providers[0].colour",
         "unknown field"),
        ('on_exhausted = "best"', 'on_exhausted = "worst"', "on_exhausted", "Invalid enum"),
        ('base_url = "http://127.0.0.1:18080/v1"', 'base_url = "ftp://x"',
         "tiers[0].providers[0].base_url", "match"),
        ("input_cost_per_mtok = 0.15", "input_cost_per_mtok = -0.15",
         "tiers[0].providers[0].input_cost_per_mtok", ">= 0"),
        ('name = "small-a"\n', "", "tiers[0].providers[0]", "missing required field `name`"),
    ],
)  # fmt: skip
def test_field_errors_name_the_path(old: str, new: str, path: str, words: str) -> None:
    assert old in ISSUE_SHAPE
    with pytest.raises(ConfigError) as info:
        Config.from_toml(ISSUE_SHAPE.replace(old, new, 1))
    assert info.value.path == path
    assert words in str(info.value)


def test_no_tiers_and_no_providers() -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_toml("tiers = []")
    assert info.value.path == "tiers"
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"tiers": [{"name": "a", "providers": []}]})
    assert info.value.path == "tiers[0].providers"


def test_duplicate_names() -> None:
    p = {"kind": "openai", "base_url": "http://127.0.0.1:1/v1", "model": "m"}
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"tiers": [{"name": "a", "providers": [{"name": "x", **p}]},
                                    {"name": "b", "providers": [{"name": "x", **p}]}]})  # fmt: skip
    assert info.value.path == "tiers[1].providers[0].name"


def test_not_toml() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.from_toml("tiers = [")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def _with_validator(spec: str) -> Config:
    return Config.from_toml(
        ISSUE_SHAPE.replace(
            'validators = [{ name = "json_schema", schema = { type = "object", required = ["answer"] } }]',
            f"validators = [{spec}]",
        ).replace('api_key_env = "SMALL_API_KEY"   # optional\n', "")
    )


@pytest.mark.parametrize(
    ("spec", "path", "words"),
    [
        ('{ name = "nope" }', "tiers[0].validators[0].name", "unknown validator 'nope'"),
        ('{ schema = {} }', "tiers[0].validators[0].name", "validator name"),
        ('{ name = "json_schema" }', "tiers[0].validators[0].schema", "needs 'schema'"),
        ('{ name = "json_schema", schema = { type = "objectx" } }',
         "tiers[0].validators[0].schema", "invalid JSON Schema"),
        ('{ name = "json_schema", schema = { type = "object" }, strict = true }',
         "tiers[0].validators[0].strict", "no parameter 'strict' (its parameters: schema,"),
    ],
)  # fmt: skip
def test_validator_errors_fail_at_build(spec: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Cascade(_with_validator(spec))
    assert info.value.path == path
    assert words in str(info.value)


def test_unknown_provider_kind() -> None:
    with pytest.raises(ConfigError) as info:
        Cascade(Config.from_toml(ISSUE_SHAPE.replace('kind = "openai"', 'kind = "grpc"')),
                environ={"SMALL_API_KEY": "k"})  # fmt: skip
    assert info.value.path == "tiers[0].providers[0].kind"
    assert "anthropic" in str(info.value) and "openai" in str(info.value)


def test_config_error_is_a_cascade_error() -> None:
    assert issubclass(ConfigError, cascade.CascadeError)
