"""The budgets behind a :class:`~cascade.resilience.limiter.RateLimiter`: token buckets.

A :class:`Bucket` refills continuously at its per-minute rate up to its capacity, and may
run into debt after an oversized request. This module holds everything that moves a
bucket's level and nothing about who is admitted: the refill arithmetic, when a queue of
requests would be served (:func:`eta`), and the levels a provider's rate-limit headers
report (:func:`learn_from_headers`). The limiter owns the queue, the concurrency slots,
the leases and the shared budget.
"""

from __future__ import annotations

from collections.abc import Mapping

from .._headers import MAX_WAIT_S, duration_s, number, retry_after_s, server_wall, until_s

__all__ = ["Bucket", "debt_span_s", "eta", "learn_from_headers"]

_EPS = 1e-9  # float slack, so a sleeper woken at its exact refill time is granted


def debt_span_s(burst_s: float, max_wait_s: float) -> float:
    """The most refill time (seconds) one charge after the fact may leave owed: the
    limiter's ``max_wait_s``, and no more than a whole bucket (``burst_s``) when the
    bucket holds any. The shared budget (Redis) uses the same span."""
    return min(burst_s, max_wait_s) if burst_s > 0 else max_wait_s


class Bucket:
    """A continuously refilling bucket. ``level`` may go negative (debt) after an overage.

    After a provider reports a reset time, the bucket refills at ``boost_rate`` so that it
    is full exactly then, and at ``rate`` afterwards.
    """

    __slots__ = ("boost_rate", "boost_until", "capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: float, burst_s: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = per_minute * burst_s / 60.0  # exact for the default full minute
        self.level = self.capacity
        self.stamp = now
        self.boost_rate = 0.0
        self.boost_until = now

    def copy(self) -> Bucket:
        other = Bucket.__new__(Bucket)
        for name in Bucket.__slots__:
            setattr(other, name, getattr(self, name))
        return other

    def sync(self, now: float) -> None:
        if now <= self.stamp:
            return
        gain = 0.0
        boosted = min(now, self.boost_until) - self.stamp
        if boosted > 0:
            gain += boosted * self.boost_rate
        gain += (now - self.stamp - max(boosted, 0.0)) * self.rate
        self.level = min(self.capacity, self.level + gain)
        self.stamp = now

    def need(self, cost: float) -> float:
        # An oversized request waits for a full bucket, then runs it into debt.
        return min(cost, self.capacity)

    def wait(self, cost: float, now: float) -> float:
        """Seconds from ``now`` until ``cost`` fits (the bucket is synced to ``now``)."""
        self.sync(now)
        need = self.need(cost)
        deficit = need - self.level
        if deficit <= _EPS * max(1.0, need):  # slack of the size at stake, not of ``cost``
            return 0.0
        waited = 0.0
        if self.boost_until > now and self.boost_rate > 0:
            span = self.boost_until - now
            if deficit <= span * self.boost_rate:
                return deficit / self.boost_rate
            deficit -= span * self.boost_rate
            waited = span
        return waited + deficit / self.rate

    def overcharge(self, extra: float, now: float, span_s: float) -> None:
        """Charge ``extra`` units used beyond a grant's estimate, leaving at most
        ``span_s`` seconds of refill owed (or the debt there was, if larger): usage a
        server reports, however large, blocks the bucket no longer than that."""
        self.sync(now)
        floor = min(self.level, -self.rate * span_s)
        self.level = max(self.level - extra, floor)

    def cap(self, remaining: float, now: float, reset_at: float | None) -> None:
        self.sync(now)
        self.level = min(self.level, remaining)
        if reset_at is not None and reset_at > now and self.level < self.capacity:
            self.boost_until = reset_at
            self.boost_rate = max(0.0, self.capacity - self.level) / (reset_at - now)


def eta(requests: Bucket | None, tokens: Bucket | None, queue: list[int], t: float) -> float:
    """When the last of ``queue`` (token costs, one request each) would be granted, by the
    buckets alone, counting from ``t``. The buckets themselves are left untouched."""
    requests = None if requests is None else requests.copy()
    tokens = None if tokens is None else tokens.copy()
    for cost in queue:
        waits = [0.0]
        if requests is not None:
            waits.append(requests.wait(1, t))
        if tokens is not None:
            waits.append(tokens.wait(cost, t))
        t += max(waits)
        for bucket, amount in ((requests, 1), (tokens, cost)):
            if bucket is not None:
                bucket.sync(t)
                bucket.level -= amount
    return t


# -- header parsing: never raises, ``None`` for anything unusable -------------------------


def learn_from_headers(
    h: Mapping[str, str],
    *,
    status: int | None,
    now: float,
    requests: Bucket | None,
    tokens: Bucket | None,
    max_wait_s: float = MAX_WAIT_S,
    wall: float | None = None,
) -> float | None:
    """Lower the buckets to what a response's rate-limit headers report remaining.

    ``h`` has lower-case names. A reset time makes the bucket full at that time. Returns
    the delay a 429 asked for (``retry-after-ms`` / ``retry-after``), else ``None``.
    Every reset and delay is at most ``max_wait_s`` away. ``wall`` is our wall-clock
    time (``time.time()`` if not given): absolute times are measured from the response's
    ``Date`` when it is close enough to it, else from it.
    """
    # Reset times are the server's: measure them from its Date header when it sent a
    # believable one.
    wall = server_wall(h, local=wall)
    m = max_wait_s
    if requests is not None:
        _learn(
            requests,
            now,
            [
                (
                    h.get("x-ratelimit-remaining-requests"),
                    duration_s(h.get("x-ratelimit-reset-requests"), max_s=m),
                ),
                (
                    h.get("anthropic-ratelimit-requests-remaining"),
                    until_s(h.get("anthropic-ratelimit-requests-reset"), wall, max_s=m),
                ),
            ],
        )
    if tokens is not None:
        families = ["tokens", "input-tokens", "output-tokens"]
        _learn(
            tokens,
            now,
            [
                (
                    h.get("x-ratelimit-remaining-tokens"),
                    duration_s(h.get("x-ratelimit-reset-tokens"), max_s=m),
                ),
                *(
                    (
                        h.get(f"anthropic-ratelimit-{f}-remaining"),
                        until_s(h.get(f"anthropic-ratelimit-{f}-reset"), wall, max_s=m),
                    )
                    for f in families
                ),
            ],
        )
    if status == 429:
        return retry_after_s(h, wall=wall, max_s=m)
    return None


def _learn(bucket: Bucket, now: float, reports: list[tuple[str | None, float | None]]) -> None:
    # Several families (Anthropic's input/output tokens) fold into one bucket: the
    # scarcest one binds.
    best: tuple[float, float | None] | None = None
    for raw, reset_in in reports:
        remaining = number(raw)
        if remaining is not None and (best is None or remaining < best[0]):
            best = (remaining, reset_in)
    if best is not None:
        remaining, reset_in = best
        bucket.cap(remaining, now, None if reset_in is None else now + reset_in)
