"""Time as cascade sees it: a ``Clock`` the resilience parts read and sleep on.

Breakers, retries and limiters never call ``time`` or ``asyncio.sleep`` directly; they take a
clock, so tests drive time by hand with :class:`FakeClock` and never sleep for real.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """A monotonic clock and a way to wait on it.

    ``monotonic()`` returns seconds from an arbitrary origin and never goes backwards;
    ``sleep(seconds)`` suspends the calling task until the clock reaches ``now + seconds``.
    """

    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


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
    """

    __slots__ = ("_autojump", "_now", "_seq", "_sleepers")

    def __init__(self, start: float = 0.0, *, autojump: bool = False) -> None:
        self._now = start
        self._autojump = autojump
        self._seq = itertools.count()  # breaks ties between equal deadlines: FIFO
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []

    def monotonic(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)  # a checkpoint, as asyncio.sleep(0) is
            return
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
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():  # a cancelled sleeper is simply dropped
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many tasks are sleeping on this clock."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now:g} sleepers={self.sleepers}>"
