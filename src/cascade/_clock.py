"""Time as cascade sees it: a ``Clock`` the engine reads, sleeps and times out on.

Breakers, retries, limiters, the run's deadline, the calls' timeouts and the hedge delay
never call ``time``, ``asyncio.sleep`` or ``asyncio.timeout`` directly; they take a clock,
so tests drive time by hand with :class:`FakeClock` and never wait for real. A clock that
can also run callbacks (:class:`SupportsTimers`, as :class:`FakeClock` does) drives the
timeouts too; any other clock's timeouts run on the event loop's clock.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import time
from collections.abc import Callable
from types import TracebackType
from typing import Protocol, runtime_checkable

__all__ = [
    "Clock",
    "ClockTimeout",
    "FakeClock",
    "SupportsTimers",
    "SystemClock",
    "timeout_after",
    "timeout_at",
    "timers_of",
]

_IDLE_TURNS = 8  # loop turns an autojump waits first: work queued now runs before the jump


class Clock(Protocol):
    """A monotonic clock and a way to wait on it.

    ``monotonic()`` returns seconds from an arbitrary origin and never goes backwards;
    ``sleep(seconds)`` suspends the calling task until the clock reaches ``now + seconds``.
    """

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class Cancellable(Protocol):
    def cancel(self) -> None: ...


@runtime_checkable
class SupportsTimers(Clock, Protocol):
    """A clock that also runs ``callback`` when it reaches ``when`` (on its own timeline):
    the engine's timeouts and hedge delays then run on it too."""

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable: ...


class SystemClock:
    """The real clock: ``time.monotonic`` (the clock asyncio's loop uses) and ``asyncio.sleep``."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "<SystemClock>"


class FakeClock:
    """A clock that only moves when told to, for tests.

    ``sleep`` suspends until :meth:`advance` moves the clock to (or past) the sleeper's
    deadline; sleepers wake in deadline order. Nothing sleeps for real.

    >>> clock = FakeClock()
    >>> clock.advance(30.0)
    >>> clock.monotonic()
    30.0

    With ``autojump=True`` a ``sleep`` moves the clock to its own deadline at once (waking
    whoever else is due): convenient for code that sleeps in sequence, such as retries.
    A timer (:meth:`call_at`: the engine's timeouts, the hedge delay) is jumped to once
    the program has gone quiet: when nothing has touched the clock (no sleep, timer or
    advance) for ``autojump_threshold`` seconds of real time, after a few turns of the
    event loop, the clock moves to the earliest pending timer (trio's autojump, with an
    idle test that needs no private loop state). So a silent provider times out at once on
    the fake timeline, but real I/O that takes longer than the threshold to answer can be
    overtaken by a timer: keep the threshold above what the test's servers take.
    """

    __slots__ = ("_autojump", "_jumper", "_now", "_seq", "_sleepers", "_threshold", "_touched")

    def __init__(
        self, start: float = 0.0, *, autojump: bool = False, autojump_threshold: float = 0.2
    ) -> None:
        if autojump_threshold < 0:
            raise ValueError("autojump_threshold cannot be negative")
        self._now = start
        self._autojump = autojump
        self._threshold = autojump_threshold
        self._seq = itertools.count()  # breaks ties between equal deadlines: FIFO
        self._sleepers: list[tuple[float, int, asyncio.Future[None] | _Timer]] = []
        self._touched = 0  # bumped by every sleep, timer and advance: the idle test
        self._jumper: asyncio.Task[None] | None = None

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # a checkpoint, as asyncio.sleep(0) is
            return
        self._touched += 1
        deadline = self._now + seconds
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), future))
        if self._autojump:
            self.advance(deadline - self._now)
        await future

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` and wake every sleeper now due."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go backwards")
        self._touched += 1
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if isinstance(waiter, _Timer):
                waiter.fire()
            elif not waiter.done():  # a cancelled sleeper is simply dropped
                waiter.set_result(None)

    def call_at(self, when: float, callback: Callable[[], None]) -> Cancellable:
        """Run ``callback`` when :meth:`advance` reaches ``when`` (at once if it has)."""
        self._touched += 1
        timer = _Timer(callback)
        if when <= self._now:
            timer.fire()
        else:
            heapq.heappush(self._sleepers, (when, next(self._seq), timer))
            if self._autojump and (self._jumper is None or self._jumper.done()):
                self._jumper = asyncio.get_running_loop().create_task(self._jump())
        return timer

    def _next(self) -> float | None:
        """The earliest pending deadline (dropping cancelled ones), None if none."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def _jump(self) -> None:
        """With autojump: while timers are pending, move to the earliest once idle."""
        while self._next() is not None:
            seen = self._touched
            for _ in range(_IDLE_TURNS):
                await asyncio.sleep(0)
            await asyncio.sleep(self._threshold)  # real time: I/O in flight may still answer
            when = self._next()
            if self._touched == seen and when is not None:
                self.advance(max(0.0, when - self._now))

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock (and timeouts waiting on it)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:g} sleepers={self.sleepers}>"


class _Timer:
    __slots__ = ("_callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self._callback = None

    def done(self) -> bool:
        return self._callback is None

    def fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class ClockTimeout:
    """``asyncio.timeout_at`` on a :class:`SupportsTimers` clock: when the clock reaches
    ``when`` the block is cancelled and raises ``TimeoutError`` (an ``asyncio.Timeout``
    underneath, fired through the clock). See :func:`timeout_at`."""

    __slots__ = ("_clock", "_inner", "_timer", "_when")

    def __init__(self, clock: SupportsTimers, when: float | None) -> None:
        self._clock = clock
        self._when = when
        self._inner = asyncio.timeout(None)
        self._timer: Cancellable | None = None

    def when(self) -> float | None:
        return self._when

    def reschedule(self, when: float | None) -> None:
        """Move the deadline to ``when`` on the clock (None: never)."""
        self._when = when
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            self._timer = self._clock.call_at(when, self._fire)

    def expired(self) -> bool:
        return self._inner.expired()

    def _fire(self) -> None:
        self._timer = None
        self._inner.reschedule(asyncio.get_running_loop().time())  # on the next loop turn

    async def __aenter__(self) -> ClockTimeout:
        await self._inner.__aenter__()
        self.reschedule(self._when)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self._inner.__aexit__(exc_type, exc, tb)  # raises TimeoutError if it fired
        return None


class _LoopTimeout(asyncio.Timeout):  # type: ignore[misc]  # final for type checkers only
    """``asyncio.Timeout`` with its timer run in an empty context (see :func:`timeout_at`)."""

    def reschedule(self, when: float | None) -> None:
        contextvars.Context().run(super().reschedule, when)


def timeout_at(clock: SupportsTimers | None, when: float | None) -> asyncio.Timeout | ClockTimeout:
    """``asyncio.timeout_at(when)`` on ``clock``, or on the event loop's clock if None.

    On the loop's clock the timer runs in an empty context, not in a copy of the caller's
    as ``asyncio.timeout``'s does. A timer cancelled early, as most are, stays queued in
    the loop, with its context, until the loop sweeps out cancelled timers (when they are
    half of those queued): a copy would keep what the caller's context holds (a traced
    call's OpenTelemetry span and its context) alive that long, to be freed in bulk. Young
    garbage collections are counted in allocations less deallocations, never below zero,
    so each such bulk free leaves its objects' allocations counted: runs the sampler drops,
    with their span current, were collected ten times as often as runs without one.
    """
    return _LoopTimeout(when) if clock is None else ClockTimeout(clock, when)


def timeout_after(clock: SupportsTimers | None, seconds: float) -> asyncio.Timeout | ClockTimeout:
    """:func:`timeout_at` ``seconds`` from now on ``clock`` (None: the loop's clock)."""
    now = asyncio.get_running_loop().time() if clock is None else clock.monotonic()
    return timeout_at(clock, now + seconds)


def timers_of(clock: Clock) -> SupportsTimers | None:
    """``clock`` if the engine's timeouts should run on it, else None (the loop's clock)."""
    return clock if isinstance(clock, SupportsTimers) else None
