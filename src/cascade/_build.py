"""Turning a Config into what the engine runs, checking everything that can be checked
before the first request: provider kinds and their own settings, API key variables,
validator names, parameters and weights, the router and the providers it names; and each
provider's share of the connections."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from ._config import Config
from ._errors import ConfigError
from ._tier import Tier
from .providers import check_provider_config, provider_kinds
from .routing import Router, UsesProviders, build_router
from .validators import build_validator

__all__ = ["DEFAULT_KEY_ENV", "build_tiers", "connection_shares", "provider_keys", "the_router"]

DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
"""The variable a provider of these kinds reads its key from when it names none."""


def provider_keys(config: Config, env: Mapping[str, str]) -> dict[str, str | None]:
    """Each provider's API key from the environment (None where there is none)."""
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
            keys[prov.name] = _key(prov.kind, prov.api_key_env, env, where)
    return keys


def _key(kind: str, named: str | None, env: Mapping[str, str], where: str) -> str | None:
    """The key in the variable ``api_key_env`` names (it must be set), else in the kind's
    usual variable (if set: a local server needs no key); ``api_key_env = ""``: none."""
    variable = DEFAULT_KEY_ENV.get(kind) if named is None else named
    if not variable:
        return None
    key = env.get(variable)
    if not key:
        if named is None:
            return None
        raise ConfigError(
            f"environment variable {variable!r} is not set", path=f"{where}.api_key_env"
        )
    if key != key.strip() or any(ord(c) < 32 or ord(c) == 127 for c in key):
        # a key read from a CRLF .env file: aiohttp would refuse the header
        how = "" if named is not None else f" (read by default for kind {kind!r})"
        raise ConfigError(
            f"environment variable {variable!r}{how} holds whitespace or "
            "control characters around or inside the key",
            path=f"{where}.api_key_env",
        )
    return key


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


def the_router(config: Config, given: Router | None) -> Router | None:
    """The router passed in (which wins over config's ``[router]``), else the one the
    config's table names, built and checked now; the providers it calls must exist."""
    if given is not None:
        if not isinstance(given, Router):
            raise ConfigError(
                f"expected a Router (a `name` and async `route(request)`), got "
                f"{type(given).__name__}",
                path="router",
            )
        found, path = given, "router"
    elif config.router is not None:
        found, path = build_router(config.router, path="router"), "router"
    else:
        return None
    if isinstance(found, UsesProviders):
        names = {p.name for t in config.tiers for p in t.providers}
        for where, name in found.providers_used().items():
            if name not in names:
                known = ", ".join(sorted(names))
                raise ConfigError(
                    f"no provider named {name!r} in the cascade (its providers: {known})",
                    path=f"{path}.{where}" if where else path,
                )
    return found


def connection_shares(config: Config) -> dict[str, int]:
    """Each provider's connection pool size: its ``max_connections``, else an equal share
    of what the cascade's ``max_connections`` leaves after the providers that set theirs
    (at least 1)."""
    providers = [p for t in config.tiers for p in t.providers]
    fixed = sum(p.max_connections for p in providers if p.max_connections is not None)
    rest = sum(1 for p in providers if p.max_connections is None)
    share = max(1, (config.max_connections - fixed) // rest) if rest else 1
    return {
        p.name: p.max_connections if p.max_connections is not None else share for p in providers
    }
