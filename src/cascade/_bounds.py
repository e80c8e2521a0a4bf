"""A one-sided lower confidence bound on a success rate (``cascade calibrate
--confidence``): exact (Clopper-Pearson), from the binomial distribution itself, with the
standard library alone.
"""

from __future__ import annotations

import math

__all__ = ["binomial_sf", "lower_bound"]


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (n up to millions)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    lg_n = math.lgamma(n + 1)
    terms = [
        lg_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def lower_bound(successes: int, trials: int, confidence: float) -> float:
    """The Clopper-Pearson lower bound: the smallest rate p for which seeing ``successes``
    or more of ``trials`` has probability at least ``1 - confidence``. The true rate is
    at least this with probability ``confidence`` (over the draw of the trials)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    if trials <= 0 or successes <= 0:
        return 0.0
    if successes > trials:
        raise ValueError("more successes than trials")
    alpha = 1.0 - confidence
    lo, hi = 0.0, successes / trials
    for _ in range(60):  # bisection: P(X >= k | p) grows with p
        mid = (lo + hi) / 2
        if binomial_sf(successes, trials, mid) < alpha:
            lo = mid
        else:
            hi = mid
    return lo
