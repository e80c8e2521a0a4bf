"""The kind -> factory registry behind ``@cascade.router`` and the ``[router]`` config table.

A config names a router by ``kind`` and gives the kind's parameters beside it::

    [router]
    kind = "rules"
    default = { start_tier = 1 }
    rules = [{ keywords = ["prove", "derive"], start_tier = 3 }]

Kinds come from ``@cascade.router("kind")`` (the built-ins register this way) and from the
``cascade.routers`` entry-point group of installed distributions.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import threading
import types
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .._errors import ConfigError
from .._factories import check_params_fit, check_plugin_instance
from ._decision import Router

__all__ = [
    "ENTRY_POINT_GROUP",
    "RouterFactory",
    "build_router",
    "register_router_kind",
    "registered_routers",
    "resolve_router_paths",
    "router",
]

ENTRY_POINT_GROUP = "cascade.routers"

RouterFactory = Callable[..., Router]
"""Called with the ``[router]`` table's parameters (all but ``kind``) as keyword
arguments; returns a Router."""

F = TypeVar("F", bound=RouterFactory)

_REGISTRY: dict[str, RouterFactory] = {}
_PATHS: dict[str, tuple[str, ...]] = {}
_lock = threading.RLock()
_loaded_entry_points: dict[tuple[str, str], dict[str, RouterFactory]] = {}


def register_router_kind(
    kind: str, factory: RouterFactory, *, replace: bool = False, paths: Sequence[str] = ()
) -> None:
    """Register ``factory`` under ``kind`` (what ``@cascade.router(kind)`` does); ``paths``
    names the parameters that are file paths (dotted for a key of a table parameter,
    ``"embedder.path"``), which a config file's relative values resolve against its
    folder."""
    if not kind or not isinstance(kind, str):
        raise ValueError("a router kind needs a non-empty name")
    if isinstance(paths, str | bytes):  # "model" would be five one-letter names
        raise ValueError(f"paths: expected a sequence of parameter names, got {paths!r}")
    names = tuple(paths)
    if not all(isinstance(p, str) and p for p in names):
        raise ValueError(f"paths: expected non-empty parameter names, got {names!r}")
    if kind in _REGISTRY and _REGISTRY[kind] is not factory and not replace:
        raise ValueError(
            f"router kind {kind!r} is already registered; pass replace=True to override it"
        )
    _REGISTRY[kind] = factory
    _PATHS[kind] = names


def router(kind: str, *, replace: bool = False, paths: Sequence[str] = ()) -> Callable[[F], F]:
    """Register a router factory (a class or a function) under ``kind``.

    The factory receives the ``[router]`` table's parameters (every key but ``kind``) as
    keyword arguments; an exception raised there becomes a ConfigError at ``router`` (or
    at the ConfigError's own path below it), so a bad parameter fails when the cascade is
    built, not mid-request. ``paths`` names the parameters that are file paths: in a
    config file, a relative one is relative to the file's folder.

    >>> @router("always_two")  # doctest: +SKIP
    ... class AlwaysTwo:
    ...     def __init__(self) -> None:
    ...         self.name = "always_two"
    ...     async def route(self, request):
    ...         return RouteDecision(start_tier=2, router=self.name)
    """
    if not kind or not isinstance(kind, str):
        raise ValueError("a router kind needs a non-empty name")

    def register(factory: F) -> F:
        register_router_kind(kind, factory, replace=replace, paths=paths)
        return factory

    return register


def registered_routers() -> tuple[str, ...]:
    """Kinds usable in config, sorted."""
    _ensure_builtins()
    return tuple(sorted(_REGISTRY))


def build_router(config_table: Mapping[str, Any], *, path: str = "router") -> Router:
    """Instantiate the router a ``[router]`` table names; ConfigError (at ``path``) if it
    can't: an unknown kind, an unknown or missing parameter (named at its own path), or a
    factory that refuses its parameters or returns something that is not a Router."""
    if not isinstance(config_table, Mapping):
        raise ConfigError(
            f"expected a table with a `kind`, got {type(config_table).__name__}", path=path
        )
    kind = config_table.get("kind")
    _ensure_builtins()
    if isinstance(kind, str) and kind not in _REGISTRY:
        load_entry_point_routers()
    if not isinstance(kind, str) or kind not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ConfigError(
            f"unknown router kind {kind!r} (registered: {known})", path=f"{path}.kind"
        )
    factory = _REGISTRY[kind]
    params = {k: v for k, v in config_table.items() if k != "kind"}
    _check_parameters(kind, factory, params, path)
    try:
        instance = factory(**params)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=_join(path, exc.path)) from None
    except Exception as exc:  # a plug-in's factory may raise anything: it is a config error
        told = isinstance(exc, TypeError | ValueError)
        detail = str(exc) if told else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"router {kind!r}: {detail}"[:500], path=path) from None
    _check_router(kind, instance, path)
    return instance


MAX_NESTING = 32
"""The deepest router tables may nest (``first_of`` within ``first_of``) for their paths
to be resolved."""


def resolve_router_paths(
    config_table: Mapping[str, Any], base_dir: str | os.PathLike[str]
) -> Mapping[str, Any]:
    """``config_table`` with the relative file paths its kind declares (``paths=`` of
    ``@router``) made relative to ``base_dir`` (the config file's folder) instead of the
    working directory, in the router tables it nests (``first_of``'s ``routers``) too.
    Anything that is not a router table, or not a string where a path is declared, is
    returned as it is, for the factory to judge; tables nested more than ``MAX_NESTING``
    deep are a ConfigError at ``router``."""
    return _resolve(config_table, base_dir, 0)


def _resolve(
    config_table: Mapping[str, Any], base_dir: str | os.PathLike[str], depth: int
) -> Mapping[str, Any]:
    if depth > MAX_NESTING:
        raise ConfigError(f"router tables nested more than {MAX_NESTING} deep", path="router")
    kind = config_table.get("kind")
    _ensure_builtins()
    if isinstance(kind, str) and kind not in _REGISTRY:
        load_entry_point_routers()
    if not isinstance(kind, str) or kind not in _REGISTRY:
        return config_table
    out = {key: _nested(value, base_dir, depth + 1) for key, value in config_table.items()}
    for dotted in _PATHS.get(kind, ()):
        *parents, leaf = dotted.split(".")
        holder: Any = out
        for name in parents:
            inner = holder.get(name) if isinstance(holder, dict) else None
            if not isinstance(inner, Mapping):
                holder = None
                break
            holder[name] = holder = dict(inner)
        value = holder.get(leaf) if isinstance(holder, dict) else None
        if isinstance(value, str) and value and not Path(value).is_absolute():
            holder[leaf] = str(Path(base_dir) / value)
    return out


def _nested(value: Any, base_dir: str | os.PathLike[str], depth: int) -> Any:
    """A list of router tables (composition) with each resolved; anything else as is."""
    if isinstance(value, list):
        return [_resolve(v, base_dir, depth) if isinstance(v, Mapping) else v for v in value]
    return value


def _join(path: str, inner: str) -> str:
    if not inner:
        return path
    return f"{path}{inner}" if inner.startswith("[") else f"{path}.{inner}"


def _check_parameters(
    kind: str, factory: RouterFactory, params: Mapping[str, Any], path: str
) -> None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # no signature to read: calling it will tell
        return
    check_params_fit("router", kind, signature.parameters.values(), params, path)


def _check_router(kind: str, instance: object, path: str) -> None:
    check_plugin_instance(
        "router",
        kind,
        instance,
        path,
        protocol=Router,
        method="route",
        call="route(request)",
        expected="async def route(self, request) -> RouteDecision",
    )


def load_entry_point_routers() -> list[str]:
    """Load every entry point of the ``cascade.routers`` group; return the kinds they
    provide. An entry point names a module (its ``@cascade.router`` decorators register)
    or a factory (registered under the entry point's name unless it registered itself);
    one that fails to load raises ConfigError at ``entry_points.<name>``."""
    kinds: list[str] = []
    with _lock:
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            key = (ep.name, ep.value)
            if key not in _loaded_entry_points:
                _loaded_entry_points[key] = _load_entry_point(ep)
            for kind, factory in _loaded_entry_points[key].items():
                _REGISTRY.setdefault(kind, factory)
                if kind not in kinds:
                    kinds.append(kind)
    return kinds


def _load_entry_point(ep: importlib.metadata.EntryPoint) -> dict[str, RouterFactory]:
    before = set(_REGISTRY)
    try:
        obj = ep.load()
        if isinstance(obj, types.ModuleType):
            module = obj.__name__
            kinds = [k for k, f in _REGISTRY.items() if getattr(f, "__module__", "") == module]
        elif callable(obj):
            kinds = [k for k, f in _REGISTRY.items() if f is obj]
            if not kinds:
                register_router_kind(ep.name, obj)
                kinds = [ep.name]
        else:
            raise TypeError(f"{type(obj).__name__} is neither a module nor a router factory")
    except Exception as exc:
        for kind in set(_REGISTRY) - before:
            del _REGISTRY[kind]
        raise ConfigError(
            f"cannot load router entry point {ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}",
            path=f"entry_points.{ep.name}",
        ) from exc
    return {k: _REGISTRY[k] for k in kinds}


def _ensure_builtins() -> None:
    """The built-in kinds register on import of their modules (late: they import this)."""
    from . import _builtins  # noqa: F401
