"""A check the plug-in registries share (validators, routers): a config entry's parameters
against its factory's signature, each mismatch a ConfigError at the parameter's path."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping
from typing import Any

from ._errors import ConfigError

__all__ = ["NAMED", "check_params_fit"]

NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
"""Parameters a config entry can set by name."""


def check_params_fit(
    what: str,
    kind: str,
    parameters: Collection[inspect.Parameter],
    params: Mapping[str, Any],
    path: str,
    *,
    reserved: str | None = None,
) -> None:
    """Every key of ``params`` is a parameter of the factory (unless it takes
    ``**kwargs``), and every parameter without a default is given; ``reserved`` is one the
    registry passes itself (not listed as settable)."""
    named = [p for p in parameters if p.kind in NAMED]
    accepted = [p.name for p in named if p.name != reserved]
    shown = ", ".join(accepted) or "none"
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        for key in params:
            if key not in accepted:
                raise ConfigError(
                    f"{what} {kind!r} has no parameter {key!r} (its parameters: {shown})",
                    path=f"{path}.{key}",
                )
    for p in named:
        if p.default is inspect.Parameter.empty and p.name not in params:
            raise ConfigError(
                f"{what} {kind!r} needs {p.name!r} (its parameters: {shown})",
                path=f"{path}.{p.name}",
            )


def check_plugin_instance(
    what: str,
    kind: str,
    instance: object,
    path: str,
    *,
    protocol: type,
    method: str,
    call: str,
    expected: str,
    name_note: str = "",
) -> Any:
    """What a plug-in factory returned has the ``protocol``'s shape: a non-empty string
    ``name`` and an async ``method`` (``call`` and ``expected`` show its signature in
    messages). Returns the bound method."""
    try:
        ok = isinstance(instance, protocol)
        name = getattr(instance, "name", None)
    except Exception as exc:  # a `name` property that raises
        raise ConfigError(
            f"{what} {kind!r}: reading its `name` raised {type(exc).__name__}: {exc}"[:500],
            path=path,
        ) from None
    shown = type(instance).__name__
    if not ok:
        raise ConfigError(
            f"{what} {kind!r} factory returned {shown}, which has no `name` and async `{call}`",
            path=path,
        )
    if not isinstance(name, str) or not name:
        raise ConfigError(
            f"{what} {kind!r}: {shown}.name is {name!r}; expected a non-empty string{name_note}",
            path=path,
        )
    bound = getattr(instance, method)
    if not (
        inspect.iscoroutinefunction(bound)
        or inspect.iscoroutinefunction(getattr(bound, "__call__", None))  # noqa: B004
    ):
        raise ConfigError(
            f"{what} {kind!r}: {shown}.{method} is not a coroutine function; expected `{expected}`",
            path=path,
        )
    return bound
