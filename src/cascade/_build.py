"""Turning a Config into what the engine runs, checking everything that can be checked
before the first request: provider kinds and their own settings, API key variables,
validator names, parameters and weights."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ._attempt import Tier
from ._config import Config
from ._errors import ConfigError
from .providers import check_provider_config, provider_kinds
from .validators import build_validator

__all__ = ["build_tiers", "provider_keys"]


def provider_keys(config: Config, env: Mapping[str, str]) -> dict[str, str | None]:
    """Each provider's API key from the environment (None where it names no variable)."""
    kinds = provider_kinds()
    keys: dict[str, str | None] = {}
    for t, tier in enumerate(config.tiers):
        for p, prov in enumerate(tier.providers):
            where = f"tiers[{t}].providers[{p}]"
            if prov.kind not in kinds:
                raise ConfigError(
                    f"unknown provider kind {prov.kind!r} (known: {', '.join(kinds)})",
                    path=f"{where}.kind",
                )
            try:
                check_provider_config(prov)
            except ConfigError as exc:
                raise ConfigError(exc.message, path=f"{where}.{exc.path}") from None
            key = None
            if prov.api_key_env:
                key = env.get(prov.api_key_env)
                if not key:
                    raise ConfigError(
                        f"environment variable {prov.api_key_env!r} is not set",
                        path=f"{where}.api_key_env",
                    )
                if key != key.strip() or any(ord(c) < 32 or ord(c) == 127 for c in key):
                    # a key read from a CRLF .env file: aiohttp would refuse the header
                    raise ConfigError(
                        f"environment variable {prov.api_key_env!r} holds whitespace or "
                        "control characters around or inside the key",
                        path=f"{where}.api_key_env",
                    )
            keys[prov.name] = key
    return keys


def build_tiers(config: Config) -> list[Tier]:
    """The tiers with their validators built (providers come when the session opens)."""
    tiers = []
    for t, tier_cfg in enumerate(config.tiers):
        validators = tuple(
            build_validator(_without_weight(spec), path=f"tiers[{t}].validators[{v}]")
            for v, spec in enumerate(tier_cfg.validators)
        )
        weights = tuple(
            _weight(spec, path=f"tiers[{t}].validators[{v}].weight")
            for v, spec in enumerate(tier_cfg.validators)
        )
        if tier_cfg.mode == "scored" and not sum(weights) > 0:
            raise ConfigError(
                "scored mode needs validators with a positive total weight",
                path=f"tiers[{t}].validators",
            )
        tiers.append(Tier(t + 1, tier_cfg, validators, weights))
    return tiers


def _without_weight(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    return {k: v for k, v in spec.items() if k != "weight"} if "weight" in spec else spec


def _weight(spec: Mapping[str, Any], *, path: str) -> float:
    weight = spec.get("weight", 1.0)
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not 0 <= weight <= sys.float_info.max  # NaN and inf too
    ):
        raise ConfigError(f"expected a finite number >= 0, got {weight!r}", path=path)
    return float(weight)
