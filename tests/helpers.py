"""Builders shared by the tests."""

from __future__ import annotations

from typing import Any


def provider(
    name: str, url: str, model: str, *, kind: str = "openai", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "base_url": url,
        "model": model,
        "input_cost_per_mtok": 1.0,
        "output_cost_per_mtok": 2.0,
        "timeout_s": 5,
        **extra,
    }


def tier(
    name: str, *providers: dict[str, Any], validators: list[Any] | None = None
) -> dict[str, Any]:
    return {"name": name, "providers": list(providers), "validators": validators or []}


SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "number"}}}
JSON_SCHEMA = {"name": "json_schema", "schema": SCHEMA}
USER = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]


_REPLAY_EVAL_CONFIG = """
on_exhausted = "best"

[[tiers]]
name = "small"
variants = [{ name = "A" }, { name = "B" }]
validators = [{ name = "self_consistency", samples = 2, min_agreement = 1.0, extractor = "recorded" }]

[[tiers.providers]]
name = "small"
kind = "replay"
model = "small"
dataset = "DATASET"
prompt_overhead_tokens = 100
input_cost_per_mtok = 1.0
output_cost_per_mtok = 2.0

[[tiers]]
name = "big"

[[tiers.providers]]
name = "big"
kind = "replay"
model = "big"
variant = "X"
dataset = "DATASET"
prompt_overhead_tokens = 100
input_cost_per_mtok = 10.0
output_cost_per_mtok = 40.0
"""


def replay_eval_config(dataset: str) -> str:
    """A two-tier replay config (models ``small`` under variants A and B, both must agree;
    then ``big`` under X) reading ``dataset``, relative to the config file."""
    return _REPLAY_EVAL_CONFIG.replace("DATASET", dataset)
