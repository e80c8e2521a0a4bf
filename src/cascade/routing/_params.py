"""Checking a router's parameters: the ``[router]`` table's keys, converted into a frozen
Struct; a bad value is a ConfigError at its path below the table (``rules[2].pattern``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec
import structlog

from .._config import _config_error
from .._errors import ConfigError

__all__ = ["convert", "tier_range", "warn_failed"]

S = TypeVar("S", bound=msgspec.Struct)

log = structlog.get_logger("cascade")


def convert(params: Mapping[str, Any], type_: type[S]) -> S:
    """``params`` as a ``type_``; ConfigError at the bad field's path."""
    try:
        return msgspec.convert(dict(params), type=type_)
    except msgspec.ValidationError as exc:
        raise _config_error(exc) from None


def tier_range(start: int | None, stop: int | None, *, path: str) -> None:
    """A start tier no higher than a max tier (both 1-based, where given)."""
    if start is not None and stop is not None and start > stop:
        raise ConfigError(f"start_tier {start} is above max_tier {stop}", path=f"{path}start_tier")


def warn_failed(router: str, what: str) -> None:
    """A router failed (the run goes on without it): through structlog when the
    application configured it (like the routing record), else the standard library's
    ``cascade`` logger."""
    if structlog.is_configured():
        log.warning("cascade.router_failed", router=router, error=what[:500])
    else:
        logging.getLogger("cascade").warning("router %r %s", router, what[:500])
