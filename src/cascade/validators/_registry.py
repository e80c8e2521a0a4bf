"""The Validator protocol and the name -> factory registry behind ``@cascade.validator``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

import msgspec

from .._errors import ConfigError
from .._factories import NAMED, check_params_fit, check_plugin_instance
from .._types import Completion, Message, RequestOptions, Verdict

__all__ = [
    "ValidationContext",
    "Validator",
    "ValidatorFactory",
    "build_validator",
    "registered_validators",
    "validator",
]


class ValidationContext(msgspec.Struct, frozen=True, kw_only=True):
    """What a validator may know besides the answer: the request and where it ran.

    ``sample(count)`` draws ``count`` more answers from the provider that gave this one
    (each under the tier's next prompt variant, each costed into the run); it is None when
    no provider is at hand (a validator called outside a run).
    """

    messages: tuple[Message, ...]
    options: RequestOptions
    tier: int
    tier_name: str
    sample: Callable[[int], Awaitable[list[Completion]]] | None = None
    weights: tuple[float, ...] = ()
    """Vote weight of each sample (the tier's variant weights, in turn); empty: all 1."""


@runtime_checkable
class Validator(Protocol):
    """Checks one completion and returns a :class:`~cascade.Verdict`.

    ``validate`` must not raise for a bad answer: a bad answer is a failed verdict with a
    reason. It is called concurrently for different requests, so keep it free of
    per-request state.
    """

    name: str

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict: ...


ValidatorFactory = Callable[..., Validator]
"""Called with the config entry's parameters as keyword arguments; returns a Validator."""

F = TypeVar("F", bound=ValidatorFactory)

_REGISTRY: dict[str, ValidatorFactory] = {}


def validator(name: str, *, replace: bool = False) -> Callable[[F], F]:
    """Register a validator factory (a class or a function) under ``name``.

    The factory receives the config entry's parameters (every key but ``name``) as keyword
    arguments; an exception raised there (``ValueError``, ``TypeError``, any other) becomes
    a ConfigError naming the entry, so a bad parameter fails when the cascade is built, not
    mid-request.
    """
    if not name or not isinstance(name, str):
        raise ValueError("a validator needs a non-empty name")

    def register(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not factory and not replace:
            raise ValueError(
                f"validator {name!r} is already registered; pass replace=True to override it"
            )
        _REGISTRY[name] = factory
        return factory

    return register


def registered_validators() -> tuple[str, ...]:
    """Names usable in config, sorted."""
    return tuple(sorted(_REGISTRY))


def build_validator(spec: Mapping[str, Any], *, path: str) -> Validator:
    """Instantiate the validator a config entry names; ConfigError (at ``path``) if it can't.

    Checked here, not at the first request: the entry's parameters against the factory's
    signature (an unknown one is named by its path, with the parameters there are), and the
    validator it returns (a ``name``, and ``async def validate(completion, context)``).
    """
    name = spec.get("name")
    if isinstance(name, str) and name not in _REGISTRY:
        from ._plugins import load_entry_point_validators  # late: _plugins imports this module

        load_entry_point_validators()
    if not isinstance(name, str) or name not in _REGISTRY:
        known = ", ".join(registered_validators()) or "none"
        raise ConfigError(f"unknown validator {name!r} (registered: {known})", path=f"{path}.name")
    factory = _REGISTRY[name]
    params = {k: v for k, v in spec.items() if k != "name"}
    _check_parameters(name, factory, params, path)
    try:
        instance = factory(**params)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=f"{path}.{exc.path}" if exc.path else path) from None
    except Exception as exc:  # a plugin's factory may raise anything: it is a config error
        told = isinstance(exc, TypeError | ValueError)  # the documented ways to refuse
        detail = str(exc) if told else f"{type(exc).__name__}: {exc}"
        raise ConfigError(f"validator {name!r}: {detail}"[:500], path=path) from None
    _check_validator(name, instance, path)
    return instance


_EXPECTED = (
    "@cascade.validator registers a factory: a class (or a function) called with the "
    "entry's parameters as keyword arguments, returning an object with a `name` and "
    "`async def validate(self, completion, context) -> Verdict`"
)


def _check_parameters(
    name: str, factory: ValidatorFactory, params: Mapping[str, Any], path: str
) -> None:
    """The entry's parameters fit the factory's signature (when it has one to read)."""
    if inspect.iscoroutinefunction(factory):
        raise ConfigError(
            f"validator {name!r} is registered as an async function "
            f"({getattr(factory, '__qualname__', factory)!s}): {_EXPECTED}",
            path=path,
        )
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin or an odd callable: calling it will tell
        return
    parameters = signature.parameters.values()
    named = [p for p in parameters if p.kind in NAMED]
    if not inspect.isclass(factory) and [p.name for p in named[:2]] == ["completion", "context"]:
        raise ConfigError(
            f"validator {name!r} is registered as a function taking (completion, context), "
            f"a validate function rather than a factory: {_EXPECTED}",
            path=path,
        )
    check_params_fit("validator", name, parameters, params, path, reserved="name")


def _check_validator(name: str, instance: object, path: str) -> None:
    """What the factory returned is a validator the engine can await."""
    validate = check_plugin_instance(
        "validator",
        name,
        instance,
        path,
        protocol=Validator,
        method="validate",
        call="validate(completion, context)",
        expected="async def validate(self, completion, context) -> Verdict",
        name_note=" (it names the validator in verdicts)",
    )
    try:
        inspect.signature(validate).bind(None, None)
    except TypeError:
        raise ConfigError(
            f"validator {name!r}: {type(instance).__name__}.validate cannot be called with "
            "(completion, context); expected `async def validate(self, completion, context) "
            "-> Verdict`",
            path=path,
        ) from None
    except ValueError:  # no signature to read: calling it will tell
        pass
