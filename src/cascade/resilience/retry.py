"""Retrying one provider call: which errors, how long to wait, and never past the deadline.

Backoff is exponential with full jitter (AWS architecture blog, "Exponential Backoff And
Jitter"; stamina does the same): the wait before retry ``k`` (0-based) is drawn uniformly
from ``[0, min(max_s, base_s * 2**k)]``, so clients that failed together do not retry
together.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import msgspec
from msgspec import Meta

from .._clock import Clock
from .._errors import NestedConfigError, RateLimited
from .._headers import MAX_WAIT_S
from ._policy import OnError, classify

__all__ = ["OnError", "OnRetry", "RetryPolicy", "backoff_s", "call_with_retries", "retryable"]

T = TypeVar("T")

OnRetry = Callable[[int, Exception, float], None]
"""``on_retry(attempt_no, exc, wait_s)``: try ``attempt_no`` (1-based) failed with ``exc``
and is retried after ``wait_s`` seconds."""

_MAX_EXPONENT = 64  # 2**64 * any sane base_s is far beyond max_s; avoids float overflow
_FLOAT_MAX = sys.float_info.max  # a finite bound: inf (and NaN) fail it


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How to retry one provider before failing over to the next.

    ``attempts`` counts every try, the first included (1 = never retry). ``base_s`` and
    ``max_s`` bound the full-jitter backoff. With ``honour_retry_after``, a 429's
    Retry-After is waited out when it fits within ``max_s``; a longer one is not retried at
    all (another provider is a better bet than a refusal we already know of).
    ``on_error`` says which errors are retried, failed over or surfaced (see
    :class:`OnError` for the table and its defaults).
    """

    attempts: Annotated[int, Meta(ge=1)] = 2
    base_s: Annotated[float, Meta(ge=0, le=_FLOAT_MAX)] = 0.1
    max_s: Annotated[float, Meta(ge=0, le=_FLOAT_MAX)] = 5.0
    honour_retry_after: bool = True
    on_error: OnError = OnError()
    """Per kind of error: ``retry`` (while ``attempts`` lasts), ``failover`` or
    ``surface``. Default: timeouts and malformed bodies fail over at once, 429/5xx and
    dropped connections are retried, a context-length 400 fails over, a content-policy
    400 is surfaced (:class:`~cascade.RequestRejected`)."""

    def __post_init__(self) -> None:
        # Meta bounds are checked when decoding; these also guard direct construction.
        # NestedConfigError: a ConfigError that the config's loader prefixes with where
        # this policy sits (tiers[0].providers[0].retry.max_s).
        if self.attempts < 1:
            raise NestedConfigError("expected at least 1 attempt", path="attempts")
        if not _FLOAT_MAX >= self.base_s >= 0:
            raise NestedConfigError("expected finite seconds >= 0", path="base_s")
        if not _FLOAT_MAX >= self.max_s >= self.base_s:
            raise NestedConfigError("expected finite max_s >= base_s", path="max_s")


def retryable(exc: BaseException, on_error: OnError | None = None) -> bool:
    """Whether to try the same provider again (``classify(exc) == "retry"``).

    By default connection errors, 5xx and :class:`~cascade.RateLimited` (429/529) are
    transient. A timeout is not retried: a silent provider would make every retry wait as
    long again, so it fails over at once. Other 4xx will fail the same way again.
    :class:`~cascade.MalformedResponse` is not retried either: a body that breaks the wire
    format is usually the model or the endpoint, not luck, and a stream cut mid-body is a
    ``ProviderConnectionError``. Errors that are not provider errors, and a breaker's
    ``CircuitOpen``, are never retried.
    """
    if on_error is None:
        return classify(exc) == "retry"
    return classify(exc, on_error) == "retry"


def backoff_s(
    policy: RetryPolicy, attempt: int, *, rng: random.Random, retry_after: float | None
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    Full jitter: uniform in ``[0, min(max_s, base_s * 2**attempt)]``. With
    ``policy.honour_retry_after`` and a ``retry_after`` hint, the wait is at least the
    hint, capped at ``max_s`` (so the result never exceeds ``max_s``).
    """
    cap = min(policy.max_s, policy.base_s * 2.0 ** min(max(attempt, 0), _MAX_EXPONENT))
    wait = rng.uniform(0.0, cap)
    if policy.honour_retry_after and retry_after is not None and retry_after > 0:
        wait = max(wait, min(retry_after, policy.max_s))
    return wait


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    clock: Clock,
    deadline: float | None,
    rng: random.Random,
    on_retry: OnRetry | None = None,
    max_wait_s: float = MAX_WAIT_S,
) -> T:
    """Await ``fn()`` up to ``policy.attempts`` times while its errors are :func:`retryable`
    under ``policy.on_error``.

    ``deadline`` is an absolute time on ``clock`` (``clock.monotonic() + seconds_left``):
    a retry whose wait would end past it is not made, and the last error is raised at once.
    ``on_retry(attempt_no, exc, wait_s)`` is called for every failed try that will be
    retried, before the wait; the final failure is raised, not reported. A server's
    Retry-After counts as at most ``max_wait_s`` (``LimitsConfig.max_wait_s``).
    """
    attempt_no = 1
    while True:
        try:
            return await fn()
        except Exception as exc:
            if attempt_no >= policy.attempts or not retryable(exc, policy.on_error):
                raise
            hint = exc.retry_after if isinstance(exc, RateLimited) else None
            if hint is not None:
                hint = min(hint, max_wait_s) if hint >= 0 else None  # NaN: no hint
            if policy.honour_retry_after and hint is not None and hint > policy.max_s:
                raise
            wait = backoff_s(policy, attempt_no - 1, rng=rng, retry_after=hint)
            if deadline is not None and clock.monotonic() + wait > deadline:
                raise
            if on_retry is not None:
                on_retry(attempt_no, exc, wait)
        await clock.sleep(wait)
        attempt_no += 1
