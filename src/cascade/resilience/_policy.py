"""What a failed provider call leads to: retry the same provider, fail over to the next one,
or surface the error to the caller.

One small pure function, :func:`classify`, decides, from the error's type and the
provider's ``retry.on_error`` table (:class:`OnError`). The defaults:

=====================  ========================================================  =========
kind (``on_error``)    errors                                                    default
=====================  ========================================================  =========
``timeout``            ProviderTimeout: no connection, no first token, a stall   failover
``rate_limited``       RateLimited: 429, Anthropic's 529 (Retry-After honoured)  retry
``status_5xx``         ProviderStatusError 5xx, an error event in a 200 stream   retry
``connection``         ProviderConnectionError: refused, reset, stream cut       retry
``malformed``          MalformedResponse: not the wire format, wrong type        failover
``context_length``     ContextLengthExceeded (400)                               failover
``content_filter``     ContentFiltered (400)                                     surface
``status_4xx``         any other ProviderStatusError (400, 401, 404, ...)        failover
=====================  ========================================================  =========

A timed-out provider is failed over at once: a silent provider would make every retry
wait as long again. ``retry`` means "while ``retry.attempts`` lasts, then fail over".
A breaker's ``CircuitOpen`` and a limiter's ``LimiterTimeout`` always fail over;
anything that is not a provider error (a bug) is surfaced as is.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import msgspec

from .._errors import (
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
)

__all__ = ["Action", "OnError", "classify", "error_kind"]

Action: TypeAlias = Literal["retry", "failover", "surface"]
"""``retry``: the same provider again (within ``retry.attempts``, then fail over);
``failover``: the next provider, or tier; ``surface``: stop the run and raise
:class:`~cascade.RequestRejected` carrying the error."""

ErrorKind: TypeAlias = Literal[
    "timeout",
    "rate_limited",
    "status_5xx",
    "connection",
    "malformed",
    "context_length",
    "content_filter",
    "status_4xx",
]


class OnError(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a provider's failed call leads to, per kind of error (``retry.on_error``).

    Each field is ``"retry"``, ``"failover"`` or ``"surface"``. Example (TOML)::

        retry = { attempts = 3, on_error = { timeout = "retry", status_4xx = "surface" } }
    """

    timeout: Action = "failover"
    """:class:`~cascade.ProviderTimeout` (connect, first token, idle, total)."""
    rate_limited: Action = "retry"
    """:class:`~cascade.RateLimited` (429, 529); a Retry-After longer than ``retry.max_s``
    fails over instead."""
    status_5xx: Action = "retry"
    """A 5xx status, or an error event inside a 200 stream that means one."""
    connection: Action = "retry"
    """:class:`~cascade.ProviderConnectionError`: refused, reset, a stream cut short."""
    malformed: Action = "failover"
    """:class:`~cascade.MalformedResponse`: a body or stream that is not the wire format."""
    context_length: Action = "failover"
    """:class:`~cascade.ContextLengthExceeded`: the prompt does not fit this model."""
    content_filter: Action = "surface"
    """:class:`~cascade.ContentFiltered`: the provider's content policy refused."""
    status_4xx: Action = "failover"
    """Any other error status (400, 401, 403, 404, 413, ...)."""


DEFAULT = OnError()


def error_kind(exc: BaseException) -> ErrorKind | None:
    """The ``on_error`` field that decides ``exc``; None when no field does."""
    # Subclasses first: ContentFiltered and ContextLengthExceeded are 400 status errors.
    if isinstance(exc, ContentFiltered):
        return "content_filter"
    if isinstance(exc, ContextLengthExceeded):
        return "context_length"
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, ProviderStatusError):
        return "status_5xx" if exc.status >= 500 else "status_4xx"
    if isinstance(exc, ProviderTimeout):
        return "timeout"
    if isinstance(exc, ProviderConnectionError):
        return "connection"
    if isinstance(exc, MalformedResponse):
        return "malformed"
    return None


def classify(exc: BaseException, on_error: OnError = DEFAULT) -> Action:
    """``retry``, ``failover`` or ``surface`` for one failed call.

    >>> from cascade import ProviderTimeout
    >>> classify(ProviderTimeout("no first token", provider="a", model="m"))
    'failover'
    """
    kind = error_kind(exc)
    if kind is not None:
        action: Action = getattr(on_error, kind)
        return action
    return "failover" if isinstance(exc, ProviderError) else "surface"
