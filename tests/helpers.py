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
