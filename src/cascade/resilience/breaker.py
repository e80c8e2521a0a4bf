"""A per-provider circuit breaker for asyncio, on pybreaker's state machine.

pybreaker's own async support is Tornado-only, and its ``call`` wraps the guarded function
in a thread lock. Here pybreaker keeps the states (``CircuitClosedState``, ...), the
counters (``CircuitMemoryStorage``) and the transitions (``open``, ``half_open``,
``close``), while :class:`AsyncBreaker` decides when to take them from async code:

- ``admit()`` is synchronous and does not await, so under any concurrency on one event
  loop exactly one caller becomes the half-open probe; every other caller gets
  :class:`CircuitOpen` at once (the engine fails over, it never queues behind a probe).
- The reset timeout is measured on an injectable :class:`~cascade._clock.Clock`, not on
  pybreaker's wall-clock ``datetime``, so tests move OPEN to HALF_OPEN by advancing a
  :class:`~cascade._clock.FakeClock`.
- With ``shared=`` (a :class:`~cascade.resilience.shared.SharedState`) outcomes are also
  reported to Redis in the background, and a breaker opened or closed by another replica
  is opened or closed here (:meth:`AsyncBreaker.force_open`, :meth:`AsyncBreaker.force_close`).
  The half-open probe is then one across replicas: :meth:`AsyncBreaker.acquire` takes the
  shared probe lease first (``admit()`` alone refuses and takes it in the background).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Literal, Protocol

import msgspec
import pybreaker
import structlog

from .._clock import Clock, SystemClock
from .._errors import (
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
)

if TYPE_CHECKING:
    from .shared import SharedBreaker, SharedState

__all__ = [
    "AsyncBreaker",
    "BreakerListener",
    "BreakerState",
    "CircuitOpen",
    "Permit",
    "counts_as_failure",
]

log = structlog.get_logger("cascade")

BreakerState = Literal["closed", "open", "half_open"]

_STATES: dict[str, BreakerState] = {
    pybreaker.STATE_CLOSED: "closed",
    pybreaker.STATE_OPEN: "open",
    pybreaker.STATE_HALF_OPEN: "half_open",
}


class CircuitOpen(ProviderError):
    """The provider's breaker is open (or its one half-open probe is out): not called.

    ``retry_in_s`` is how long until the breaker lets a probe through (0 when a probe is
    already under way).
    """

    def __init__(self, *, provider: str, model: str = "", retry_in_s: float) -> None:
        self.retry_in_s = retry_in_s
        message = f"circuit open, next probe in {retry_in_s:.3g}s"
        super().__init__(message, provider=provider, model=model)
        if not model:
            self.args = (f"{provider}: {message}",)


class BreakerListener(Protocol):
    """Called on every state change of a breaker: its name, the old and the new state.

    A listener that raises is logged and otherwise ignored: it must not break a call.
    """

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None: ...


def counts_as_failure(exc: BaseException, *, count_rate_limits: bool = False) -> bool:
    """Whether ``exc`` says the provider is unhealthy (and so counts towards opening).

    Connection errors, timeouts, 5xx statuses and malformed bodies count. A 429/529
    (:class:`~cascade.RateLimited`) counts only with ``count_rate_limits``: the provider is
    up, and its Retry-After is the retry layer's business. Other 4xx are the request's
    fault, and anything else (cancellation, validator rejections, bugs) is not the
    provider's.
    """
    if isinstance(exc, RateLimited):
        return count_rate_limits
    if isinstance(exc, ProviderStatusError):
        return exc.status >= 500
    return isinstance(exc, ProviderConnectionError | ProviderTimeout | MalformedResponse)


class _ClockStorage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage, stamping ``opened_at`` on our clock as well."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self.opened_mono: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        return self._opened_at

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        # pybreaker's open() stamps wall time; the reset window runs on the clock instead.
        self._opened_at = value
        self.opened_mono = self._clock.monotonic()


class _Relay(pybreaker.CircuitBreakerListener):
    """Forwards pybreaker's state changes to our listeners, with our state names."""

    def __init__(self, name: str, listeners: Sequence[BreakerListener]) -> None:
        self._name = name
        self._listeners = tuple(listeners)
        self.transitions = 0

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self.transitions += 1
        if old_state is None:
            return
        old, new = _STATES[old_state.name], _STATES[new_state.name]
        for listener in self._listeners:
            try:
                listener(self._name, old, new)
            except Exception:
                log.exception("breaker listener failed", breaker=self._name, old=old, new=new)


class AsyncBreaker:
    """A circuit breaker guarding one provider.

    CLOSED counts consecutive failures (see :func:`counts_as_failure`) and opens at
    ``fail_max``. OPEN refuses every call with :class:`CircuitOpen` for
    ``reset_timeout_s``, then HALF_OPEN admits exactly one probe: its success closes the
    breaker, its failure opens it again for a new window.

    >>> breaker = AsyncBreaker("openai", fail_max=3)
    >>> async def call():  # doctest: +SKIP
    ...     async with breaker.admit():  # raises CircuitOpen: fail over
    ...         return await provider_call()
    """

    __slots__ = (
        "_cb",
        "_clock",
        "_probe_out",
        "_relay",
        "_retired",
        "_shared",
        "_storage",
        "count_rate_limits",
        "name",
    )

    def __init__(
        self,
        name: str,
        *,
        fail_max: int = 5,
        reset_timeout_s: float = 30.0,
        count_rate_limits: bool = False,
        clock: Clock | None = None,
        listeners: Sequence[BreakerListener] = (),
        shared: SharedState | None = None,
    ) -> None:
        if fail_max < 1:
            raise ValueError("fail_max must be at least 1")
        if not reset_timeout_s >= 0:
            raise ValueError("reset_timeout_s must be >= 0")
        self.name = name
        self.count_rate_limits = count_rate_limits
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._storage = _ClockStorage(self._clock)
        self._relay = _Relay(name, listeners)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout_s,
            state_storage=self._storage,
            listeners=[self._relay],
            name=name,
        )
        self._probe_out = False
        self._retired = False
        self._shared: SharedBreaker | None = None if shared is None else shared.breaker_link(self)

    @property
    def state(self) -> BreakerState:
        """The state as last changed; an expired OPEN turns HALF_OPEN on the next ``admit``."""
        return _STATES[self._cb.current_state]

    @property
    def fail_counter(self) -> int:
        """Consecutive counted failures since the breaker last closed or saw a success."""
        return self._cb.fail_counter

    @property
    def fail_max(self) -> int:
        return self._cb.fail_max

    @property
    def reset_timeout_s(self) -> float:
        return float(self._cb.reset_timeout)

    def retry_in_s(self) -> float:
        """Seconds until an OPEN breaker lets a probe through (0 unless OPEN)."""
        if self.state != "open" or self._storage.opened_mono is None:
            return 0.0
        left = self._storage.opened_mono + self._cb.reset_timeout - self._clock.monotonic()
        return max(0.0, left)

    def admit(self) -> Permit:
        """Permission for one call, or :class:`CircuitOpen` at once.

        Synchronous on purpose: with no await between the check and the grant, concurrent
        callers on one loop cannot both become the half-open probe. With shared state, a
        probe also needs this process to hold the shared probe lease: without it the call
        is refused (``retry_in_s`` 0, or how long another process holds it) and the lease
        is asked for in the background; :meth:`acquire` waits for that answer instead.
        """
        if self._storage.state == pybreaker.STATE_CLOSED:  # the common case, read directly
            return Permit(self, self._relay.transitions, False)
        state = self.state
        if state == "open":
            wait = self.retry_in_s()
            if wait > 0:
                raise CircuitOpen(provider=self.name, retry_in_s=wait)
        if self._probe_out:
            raise CircuitOpen(provider=self.name, retry_in_s=0.0)
        if self._shared is not None:
            refused = self._shared.probe_refused()
            if refused is not None:
                raise CircuitOpen(provider=self.name, retry_in_s=refused)
        if state == "open":
            self._cb.half_open()
        self._probe_out = True
        return Permit(self, self._relay.transitions, True)

    @property
    def shared(self) -> bool:
        """Its state is shared through Redis: take permits with :meth:`acquire`; a local
        breaker's :meth:`admit` is the same without the coroutine."""
        return self._shared is not None

    async def acquire(self) -> Permit:
        """:meth:`admit`, but when a half-open probe is due and the breaker is shared, first
        ask Redis for the probe lease (within the shared state's ``timeout_s``): exactly
        one process across replicas probes, the others get :class:`CircuitOpen`."""
        link = self._shared
        if link is not None and not self._probe_out and self._probe_due() and link.wants_lease():
            await link.take_lease()
        return self.admit()

    def _probe_due(self) -> bool:
        state = self.state
        return state == "half_open" or (state == "open" and self.retry_in_s() <= 0)

    # Called by Permit. A permit granted before a transition is stale: its outcome says
    # nothing about the state the breaker has since moved to, so it is ignored.

    def retire(self) -> None:
        """Its Cascade is closing: the calls still in flight fail because their connections
        close, not because the provider failed, so from now on no failure is counted (and
        none is published to the other replicas)."""
        self._retired = True

    def _record(self, permit: Permit, *, failed: bool) -> None:
        if failed and self._retired:
            self._release(permit)
            return
        stale = permit.generation != self._relay.transitions
        if permit.probe:
            self._probe_out = False
            if self._shared is not None:
                # A published outcome deletes the lease with the transition; a stale one
                # is not published, so the lease is given back.
                self._shared.end_probe(drop=stale)
        if stale:
            return
        storage = self._storage
        if failed:
            storage.increment_counter()
            if permit.probe or storage.counter >= self._cb.fail_max:
                self._cb.open()
        else:
            if storage.counter:
                storage.reset_counter()
            if permit.probe:
                self._cb.close()
        if self._shared is not None:
            self._shared.outcome(failed=failed, probe=permit.probe, opened=self.state == "open")

    def force_open(self, retry_in_s: float) -> None:
        """Open now and let a probe through after ``retry_in_s`` (instead of
        ``reset_timeout_s``): another replica saw the outage. Listeners see the
        transition; calls admitted before it no longer count."""
        if self.state != "open":
            self._cb.open()
        wait = max(0.0, retry_in_s)
        self._storage.opened_mono = self._clock.monotonic() + wait - self._cb.reset_timeout

    def force_close(self) -> None:
        """Close now: another replica's probe succeeded."""
        if self.state != "closed":
            self._cb.close()

    def _release(self, permit: Permit) -> None:
        if permit.probe:
            self._probe_out = False
            if self._shared is not None:
                self._shared.end_probe(drop=True)

    def __repr__(self) -> str:
        state = self.state
        text = f"<AsyncBreaker {self.name!r} {state} failures={self.fail_counter}/{self.fail_max}"
        if state == "open":
            text += f" half_open_in={self.retry_in_s():.3g}s"
        elif state == "half_open":
            text += f" probe={'out' if self._probe_out else 'free'}"
        return text + ">"


class Permit(msgspec.Struct, eq=False):
    """One admitted call. Report its outcome once: ``success()``, ``failure()`` or
    ``release()`` (neither: e.g. cancelled); later reports are ignored.

    As an async context manager it reports by itself: an exception that
    :func:`counts_as_failure` is a failure; any other ``Exception`` means the provider
    answered, a success; cancellation (a ``BaseException``) only releases the permit.
    (A Struct: built in C, once per call.)
    """

    _breaker: AsyncBreaker
    generation: int
    probe: bool
    _done: bool = False

    def success(self) -> None:
        if not self._done:
            self._done = True
            self._breaker._record(self, failed=False)

    def failure(self) -> None:
        if not self._done:
            self._done = True
            self._breaker._record(self, failed=True)

    def release(self) -> None:
        if not self._done:
            self._done = True
            self._breaker._release(self)

    async def __aenter__(self) -> Permit:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __enter__(self) -> Permit:
        # Usable as a plain ``with`` around an ``await``: reporting needs no await.
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.success()
        else:
            self.settle(exc)

    def settle(self, exc: BaseException) -> None:
        """Report the call that raised ``exc`` as leaving the context manager with it does."""
        if counts_as_failure(exc, count_rate_limits=self._breaker.count_rate_limits):
            self.failure()
        elif isinstance(exc, Exception):
            self.success()
        else:
            self.release()

    def __repr__(self) -> str:
        kind = "probe" if self.probe else "call"
        return f"<Permit {kind} for {self._breaker.name!r}{' done' if self._done else ''}>"
