"""Resilience around provider calls: circuit breakers and retries.

A breaker (one per provider) decides whether a provider is called at all; retries decide
whether a failed call is tried again before the engine fails over to the next provider.
A quality breaker (one per tier, :mod:`.quality`) skips a tier whose answers keep failing
validation.
"""

from __future__ import annotations

from ._policy import Action, classify
from .breaker import (
    AsyncBreaker,
    BreakerListener,
    BreakerState,
    CircuitOpen,
    Permit,
    counts_as_failure,
)
from .quality import QualityBreaker, QualityListener, QualityState
from .retry import OnError, OnRetry, RetryPolicy, backoff_s, call_with_retries, retryable

__all__ = [
    "Action",
    "AsyncBreaker",
    "BreakerListener",
    "BreakerState",
    "CircuitOpen",
    "OnError",
    "OnRetry",
    "Permit",
    "QualityBreaker",
    "QualityListener",
    "QualityState",
    "RetryPolicy",
    "backoff_s",
    "call_with_retries",
    "classify",
    "counts_as_failure",
    "retryable",
]
