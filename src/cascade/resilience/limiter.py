"""A capacity-aware rate limiter for one provider: requests, tokens and concurrency.

Each budget is a token bucket refilling continuously at its per-minute rate, holding at most
``burst_s`` seconds' worth (a full minute by default, as providers' own buckets do):

- :meth:`RateLimiter.try_acquire` never waits: it reserves one request, the caller's token
  estimate and a concurrency slot, or returns ``None`` so the engine can try a sibling.
- :meth:`RateLimiter.acquire` queues in FIFO order. The head of the queue sleeps on the
  :class:`~cascade._clock.Clock` for exactly as long as the buckets say (no polling), and
  a caller whose turn would come after its ``deadline`` gets :class:`LimiterTimeout` at once.
- :meth:`RateLimiter.observe` lowers the buckets to what the provider reports as remaining
  (OpenAI ``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``) and, on a 429, blocks
  the limiter for the ``retry-after`` the provider asked for. No server-supplied wait
  counts for more than ``max_wait_s`` (300 s by default), and absolute reset times are
  measured from the response's ``Date`` only when it is within a day of ``wall()``.

A request larger than a whole bucket is let through once that bucket is full, and one
reservation never charges more than the whole bucket (with ``burst_s = 0``, than
``max_wait_s`` of refill): an estimate is the caller's word (a client's ``max_tokens`` of a
billion), and must not put the provider in debt for days. Usage reported beyond a lease's
estimate is charged too, but never leaves more than ``min(burst_s, max_wait_s)`` seconds of
refill owed: a server reporting a billion tokens blocks the provider for that long.

With ``shared=`` (a :class:`~cascade.resilience.shared.SharedState`) the requests and
tokens budgets are also kept in Redis for every process: :meth:`RateLimiter.reserve` and
:meth:`RateLimiter.acquire` need headroom in both (local first), a settled lease refunds or
charges the shared budget too, and a 429's ``retry-after`` blocks every replica.
:meth:`RateLimiter.try_acquire` (synchronous), the concurrency limit and the levels learned
from headers stay local. While Redis is down the local budgets alone apply.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING

import msgspec

from .._clock import Clock, SystemClock
from .._errors import ProviderError
from .._headers import MAX_WAIT_S
from ._buckets import Bucket, debt_span_s, eta, learn_from_headers

if TYPE_CHECKING:
    from .shared import SharedLimit, SharedState

__all__ = ["Headroom", "Lease", "LimiterTimeout", "RateLimiter"]


class LimiterTimeout(ProviderError):
    """The limiter could not admit a call before its deadline.

    ``retry_in_s`` is how long until the call's turn would come, as far as the buckets tell
    (0 when the wait is for a concurrency slot, which no clock can predict).
    """

    def __init__(self, *, provider: str, model: str = "", retry_in_s: float) -> None:
        self.retry_in_s = retry_in_s
        message = f"rate limited locally, headroom in {retry_in_s:.3g}s"
        super().__init__(message, provider=provider, model=model)
        if not model:
            self.args = (f"{provider}: {message}",)


class Headroom(msgspec.Struct, frozen=True, kw_only=True):
    """What a limiter would admit now; ``None`` for a budget that is not limited."""

    requests: float | None
    tokens: float | None
    slots: int | None
    blocked_until: float | None


class _Waiter:
    __slots__ = ("tokens", "wake")

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.wake: asyncio.Future[None] | None = None


class RateLimiter:
    """Requests-per-minute, tokens-per-minute and concurrency budgets for one provider.

    >>> limiter = RateLimiter("openai", requests_per_minute=500, tokens_per_minute=90_000)
    >>> lease = limiter.try_acquire(tokens=1_200)  # None: try a sibling provider
    >>> async def call():  # doctest: +SKIP
    ...     with await limiter.acquire(tokens=1_200, deadline=clock.monotonic() + 5) as lease:
    ...         response = await provider_call()
    ...         limiter.observe(response.headers, status=response.status)
    ...         lease.release(used_tokens=response.usage.total_tokens)
    """

    __slots__ = (
        "_blocked_until",
        "_clock",
        "_debt_span_s",
        "_in_use",
        "_max_charge",
        "_requests",
        "_shared",
        "_shared_until",
        "_tokens",
        "_waiters",
        "_wall",
        "max_concurrency",
        "max_wait_s",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_concurrency: int | None = None,
        burst_s: float = 60.0,
        max_wait_s: float = MAX_WAIT_S,
        clock: Clock | None = None,
        shared: SharedState | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        for label, rate in (
            ("requests_per_minute", requests_per_minute),
            ("tokens_per_minute", tokens_per_minute),
        ):
            if rate is not None and not (rate > 0 and math.isfinite(rate)):
                raise ValueError(f"{label} must be a positive number")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if not (burst_s >= 0 and math.isfinite(burst_s)):
            raise ValueError("burst_s must be >= 0")
        if not (max_wait_s > 0 and math.isfinite(max_wait_s)):
            raise ValueError("max_wait_s must be a positive number")
        self.name = name
        self.max_concurrency = max_concurrency
        self.max_wait_s = max_wait_s
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._wall = wall  # the wall clock a response's Date is checked against
        self._debt_span_s = debt_span_s(burst_s, max_wait_s)
        now = self._clock.monotonic()
        self._requests = (
            None if requests_per_minute is None else Bucket(requests_per_minute, burst_s, now)
        )
        self._tokens = (
            None if tokens_per_minute is None else Bucket(tokens_per_minute, burst_s, now)
        )
        self._max_charge = math.inf
        """The most tokens one reservation charges: the whole bucket, or (no burst) the
        refill the limiter may leave owed."""
        if self._tokens is not None:
            bucket = self._tokens
            self._max_charge = max(bucket.capacity, bucket.rate * self._debt_span_s, 1.0)
        self._in_use = 0
        self._blocked_until = -math.inf
        self._waiters: deque[_Waiter] = deque()
        self._shared: SharedLimit | None = None
        self._shared_until = -math.inf  # the shared budget said: no headroom before then
        if shared is not None:
            self._shared = shared.limit_link(
                name,
                requests_per_minute=requests_per_minute,
                tokens_per_minute=tokens_per_minute,
                burst_s=burst_s,
                max_wait_s=max_wait_s,
            )

    # -- admission -------------------------------------------------------------------------

    def try_acquire(self, *, tokens: int) -> Lease | None:
        """A lease if every budget has headroom now (and nobody is queued), else ``None``.

        ``tokens`` is the caller's estimate (input estimate + ``max_tokens``), charged up to
        a whole bucket. Refusing reserves nothing.
        """
        tokens = self._charge(tokens)
        if self._waiters or not self._ready(tokens):
            return None
        return self._grant(tokens)

    async def reserve(self, *, tokens: int) -> Lease | None:
        """:meth:`try_acquire` for callers on the event loop: never waits for headroom.

        With shared state (Redis) this also reserves from the shared budget, waiting at
        most the state's ``timeout_s`` for Redis; in memory it is ``try_acquire``.
        """
        if self._shared is None:
            return self.try_acquire(tokens=tokens)
        tokens = self._charge(tokens)
        if self._waiters or not self._ready(tokens):
            return None
        return await self._take(tokens)

    async def acquire(self, *, tokens: int, deadline: float | None) -> Lease:
        """Wait in FIFO order for headroom and return a lease.

        ``deadline`` is an absolute time on the limiter's clock. If the buckets say this
        caller's turn comes after it, :class:`LimiterTimeout` is raised at once; a wait for
        a concurrency slot ends with :class:`LimiterTimeout` at the deadline. With shared
        state the order is fair within this process; across processes, whoever asks first
        after the shared budget refills goes first.
        """
        tokens = self._charge(tokens)
        if not self._waiters and self._ready(tokens):
            lease = await self._take(tokens)
            if lease is not None:
                return lease
        now = self._clock.monotonic()
        eta = self._eta([*(w.tokens for w in self._waiters), tokens], now)
        if deadline is not None and eta > deadline:
            raise LimiterTimeout(provider=self.name, retry_in_s=eta - now)
        waiter = _Waiter(tokens)
        self._waiters.append(waiter)
        try:
            while True:
                now = self._clock.monotonic()
                sleep_s: float | None = None
                if self._waiters[0] is waiter:
                    if self._ready(tokens):
                        lease = await self._take(tokens)
                        if lease is not None:
                            return lease
                        continue  # the shared budget has none yet: _shared_until says when
                    wait = self._eta([tokens], now) - now
                    if deadline is not None and now + wait > deadline:
                        raise LimiterTimeout(provider=self.name, retry_in_s=wait)
                    if wait > 0:
                        sleep_s = wait
                    # wait == 0: only a slot is missing; a release wakes us
                if deadline is not None:
                    if now >= deadline:
                        raise LimiterTimeout(provider=self.name, retry_in_s=0.0)
                    sleep_s = deadline - now if sleep_s is None else min(sleep_s, deadline - now)
                await self._park(waiter, sleep_s)
        finally:
            was_head = bool(self._waiters) and self._waiters[0] is waiter
            self._waiters.remove(waiter)
            if was_head:
                self._wake_head()

    async def _park(self, waiter: _Waiter, sleep_s: float | None) -> None:
        """Until woken (a release, a new head) or until ``sleep_s`` passes on the clock."""
        wake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiter.wake = wake
        if sleep_s is None:
            try:
                await wake
            finally:
                waiter.wake = None
            return
        # The sleep is timed from now, not from when its task first runs: a clock that
        # moved in between (a busy loop, a FakeClock advanced by hand) would push the
        # wake-up back by that much.
        sleeper = asyncio.ensure_future(
            _sleep_until(self._clock, self._clock.monotonic() + sleep_s)
        )
        try:
            await asyncio.wait((wake, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.wake = None
            sleeper.cancel()

    def _wake_head(self) -> None:
        if self._waiters:
            wake = self._waiters[0].wake
            if wake is not None and not wake.done():
                wake.set_result(None)

    def _charge(self, tokens: int) -> int:
        """What a reservation of ``tokens`` charges: never more than a whole bucket."""
        if tokens <= self._max_charge:
            return max(tokens, 0)
        return int(self._max_charge)

    def _ready(self, tokens: int) -> bool:
        now = self._clock.monotonic()
        if now < self._blocked_until or now < self._shared_until:
            return False
        if self.max_concurrency is not None and self._in_use >= self.max_concurrency:
            return False
        return all(
            bucket is None or bucket.wait(cost, now) == 0.0
            for bucket, cost in ((self._requests, 1), (self._tokens, tokens))
        )

    def _eta(self, queue: list[int], now: float) -> float:
        """When the last of ``queue`` would be admitted, by the buckets and the block alone."""
        start = max(now, self._blocked_until, self._shared_until)
        return eta(self._requests, self._tokens, queue, start)

    def _grant(self, tokens: int) -> Lease:
        if self._requests is not None:
            self._requests.level -= 1
        if self._tokens is not None:
            self._tokens.level -= tokens
        self._in_use += 1
        return Lease(self, tokens)

    async def _take(self, tokens: int) -> Lease | None:
        """Grant locally, then from the shared budget (if any); undo the local grant and
        return ``None`` when the shared budget has no headroom."""
        lease = self._grant(tokens)
        if self._shared is None:
            return lease
        try:
            wait = await self._shared.take(tokens)
        except BaseException:
            self._ungrant(lease)
            raise
        if wait is None:  # Redis is down: the local budgets alone apply
            return lease
        if wait > 0:
            self._ungrant(lease)
            # A record another replica (or an older version) wrote may say anything.
            wait = min(wait, self.max_wait_s)
            self._shared_until = max(self._shared_until, self._clock.monotonic() + wait)
            return None
        lease._shared = True
        return lease

    def _ungrant(self, lease: Lease) -> None:
        lease._released = True
        self._in_use -= 1
        now = self._clock.monotonic()
        for bucket, amount in ((self._requests, 1), (self._tokens, lease.tokens)):
            if bucket is not None:
                bucket.sync(now)
                bucket.level = min(bucket.capacity, bucket.level + amount)
        self._wake_head()

    def _release(self, reserved: int, used: int | None, *, shared: bool = False) -> None:
        self._in_use -= 1
        if used is not None and self._tokens is not None and used != reserved:
            bucket, now = self._tokens, self._clock.monotonic()
            if used < reserved:  # a refund never fills the bucket past its capacity
                bucket.sync(now)
                bucket.level = min(bucket.capacity, bucket.level + reserved - used)
            else:
                # The usage is the server's word: whatever it says, the debt it runs
                # blocks the bucket for max_wait_s at most (the shared script does the same).
                bucket.overcharge(used - reserved, now, self._debt_span_s)
            if shared and self._shared is not None:
                self._shared.adjust(tokens=used - reserved)
        self._wake_head()

    # -- learning from the provider --------------------------------------------------------

    def observe(self, headers: Mapping[str, str], *, status: int | None = None) -> None:
        """Learn from a response's rate-limit headers; unparseable values are ignored.

        Remaining counts lower the local buckets (never raise them); a reset time makes the
        bucket full at that time. With ``status=429``, ``retry-after-ms`` / ``retry-after``
        blocks the limiter until then. No reset or block is further than ``max_wait_s``.
        """
        try:
            h = {str(k).lower(): v for k, v in headers.items() if isinstance(v, str)}
        except Exception:
            return
        now = self._clock.monotonic()
        delay = learn_from_headers(
            h,
            status=status,
            now=now,
            requests=self._requests,
            tokens=self._tokens,
            max_wait_s=self.max_wait_s,
            wall=self._wall(),
        )
        if delay is not None and delay > 0:
            self._blocked_until = max(self._blocked_until, now + delay)
            if self._shared is not None:
                self._shared.block(delay)
        # A head that sleeps recomputes its wait when woken: never too early to be granted.
        self._wake_head()

    # -- inspection ------------------------------------------------------------------------

    def wait_s(self, *, tokens: int) -> float:
        """Seconds until a request of ``tokens`` would fit the requests and tokens budgets
        (and any block, this process's or the shared budget's last answer), ``0.0`` if it
        fits now. Queued waiters and concurrency slots are not counted."""
        now = self._clock.monotonic()
        return max(0.0, self._eta([self._charge(tokens)], now) - now)

    @property
    def headroom(self) -> Headroom:
        """What is available now (levels in requests and tokens; ``None`` if unlimited)."""
        now = self._clock.monotonic()
        levels: list[float | None] = []
        for bucket in (self._requests, self._tokens):
            if bucket is None:
                levels.append(None)
            else:
                bucket.sync(now)
                levels.append(max(0.0, bucket.level))
        return Headroom(
            requests=levels[0],
            tokens=levels[1],
            slots=None if self.max_concurrency is None else self.max_concurrency - self._in_use,
            blocked_until=self._blocked_until if self._blocked_until > now else None,
        )

    @property
    def waiters(self) -> int:
        """How many ``acquire`` calls are queued."""
        return len(self._waiters)

    def __repr__(self) -> str:
        room = self.headroom
        parts = [f"<RateLimiter {self.name!r}"]
        if self._requests is not None and room.requests is not None:
            parts.append(f"requests={room.requests:.4g}/{self._requests.capacity:.4g}")
        if self._tokens is not None and room.tokens is not None:
            parts.append(f"tokens={room.tokens:.6g}/{self._tokens.capacity:.6g}")
        if self.max_concurrency is not None:
            parts.append(f"slots={room.slots}/{self.max_concurrency}")
        if room.blocked_until is not None:
            parts.append(f"blocked_for={room.blocked_until - self._clock.monotonic():.3g}s")
        parts.append(f"waiters={len(self._waiters)}")
        if self._shared is not None:
            parts.append(f"shared={'up' if self._shared.available else 'down'}")
        return " ".join(parts) + ">"


class Lease:
    """One admitted call's reservation: a concurrency slot and a token estimate.

    ``release(used_tokens=...)`` frees the slot and settles the estimate against the real
    usage (refunding the rest, or charging the excess); without ``used_tokens`` the
    estimate stands. Later releases are ignored. As a context manager it releases on exit.
    """

    __slots__ = ("_limiter", "_released", "_shared", "tokens")

    def __init__(self, limiter: RateLimiter, tokens: int) -> None:
        self._limiter = limiter
        self._released = False
        self._shared = False  # charged to a shared budget too: settle it there as well
        self.tokens = tokens

    @property
    def released(self) -> bool:
        return self._released

    def release(self, *, used_tokens: int | None = None) -> None:
        if not self._released:
            self._released = True
            self._limiter._release(self.tokens, used_tokens, shared=self._shared)

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = " released" if self._released else ""
        return f"<Lease {self.tokens} tokens on {self._limiter.name!r}{state}>"


async def _sleep_until(clock: Clock, when: float) -> None:
    """Sleep on ``clock`` until ``when`` (at least one checkpoint, as ``sleep(0)`` is)."""
    await clock.sleep(max(0.0, when - clock.monotonic()))
