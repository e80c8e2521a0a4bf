"""Many calls' timeouts of one length on one timer.

``asyncio.timeout`` gives every call a timer of its own in the event loop's heap, and each
push and pop there compares timer handles in Python (``TimerHandle.__lt__``): at 64 calls
in flight that was about 35,000 instructions a call, 8% of the whole call (aiohttp's work
included). A provider's whole-body calls all have the same ``timeout_s``, so their
deadlines come in the order the calls start. :class:`TimeoutLane` keeps them in that order
in a queue, with one loop timer for the earliest: entering and leaving are a queue append
and a flag, and the timer fires about once per ``timeout_s``.

What a call sees is ``asyncio.timeout``'s behaviour exactly: when its deadline passes, its
task is cancelled, and leaving with that cancellation raises ``TimeoutError`` (from the
``CancelledError``) unless someone else also cancelled the task meanwhile.

:class:`ClockLane` has the same interface on a clock that runs timers (``FakeClock``):
each call gets a timer on that clock, as :class:`~cascade._clock.ClockTimeout` does.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from typing import Final

import msgspec

from ._clock import Cancellable, SupportsTimers

__all__ = ["ClockLane", "Deadline", "TimeoutLane", "expiring"]

_ACTIVE: Final = 0
_EXPIRING: Final = 1  # its task was cancelled by the timer: leaving raises TimeoutError
_DONE: Final = 2

_RESOLUTION = time.get_clock_info("monotonic").resolution  # as the loop's timers use it
_SLACK = 64  # done deadlines a queue may hold behind a slow one before it is compacted


class Deadline(msgspec.Struct, eq=False):
    """One call's deadline (a Struct: built in C, no ``__init__`` frame)."""

    when: float
    task: asyncio.Task[object] | None
    cancelling: int  # the task's cancel requests when the call started
    state: int = _ACTIVE
    timer: Cancellable | None = None  # its own timer (ClockLane only)


def expiring(deadline: Deadline) -> bool:
    """Whether ``deadline``'s time came and its task was cancelled for it (before
    ``exit``: what ``asyncio.Timeout.expired()`` says)."""
    return deadline.state == _EXPIRING


def _leave(deadline: Deadline, exc: BaseException | None) -> bool:
    """Mark ``deadline`` done; True if it was active (not yet expired). Raises
    ``TimeoutError`` from ``exc`` when its timer cancelled the task and nothing else did,
    as ``asyncio.Timeout.__aexit__`` does."""
    task = deadline.task
    deadline.task = None
    state = deadline.state
    deadline.state = _DONE
    if state == _EXPIRING:
        assert task is not None
        if task.uncancel() <= deadline.cancelling and type(exc) is asyncio.CancelledError:
            raise TimeoutError from exc
        return False
    return state == _ACTIVE


def _start(loop: asyncio.AbstractEventLoop, when: float) -> Deadline:
    task = asyncio.current_task(loop)
    if task is None:
        raise RuntimeError("Timeout should be used inside a task")
    return Deadline(when, task, task.cancelling())


class TimeoutLane:
    """``asyncio.timeout(length)`` for any number of calls, on one loop timer.

    >>> lane = TimeoutLane(30.0)
    >>> async def call():  # doctest: +SKIP
    ...     deadline = lane.enter()
    ...     try:
    ...         answer = await provider_call()
    ...     except BaseException as exc:
    ...         lane.exit(deadline, exc)  # TimeoutError (from exc) if the 30 s ran out
    ...         raise
    ...     lane.exit(deadline, None)
    """

    __slots__ = ("_context", "_length", "_live", "_loop", "_queue", "_timer")

    def __init__(self, length: float) -> None:
        self._length = length
        self._loop: asyncio.AbstractEventLoop | None = None
        # The timer runs in no caller's context (so it holds none), and in one of the
        # lane's own: Context.run refuses a context that another thread has entered, so a
        # context shared by every lane would, when two threads' lanes fired at once, fail
        # one of them and leave that lane without a timer for good.
        self._context = contextvars.Context()
        self._queue: deque[Deadline] = deque()  # by `when`: the order calls entered
        self._live = 0  # deadlines in the queue not yet done
        self._timer: asyncio.TimerHandle | None = None

    def enter(self) -> Deadline:
        """Start the current task's call: cancelled ``length`` seconds from now."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first use, or a new loop: the old one's calls are gone
            self._loop, self._queue, self._live, self._timer = loop, deque(), 0, None
        deadline = _start(loop, loop.time() + self._length)
        queue = self._queue
        queue.append(deadline)
        self._live += 1
        if self._timer is None:
            self._timer = loop.call_at(deadline.when, self._fire, context=self._context)
        elif len(queue) > 2 * self._live + _SLACK:
            # Calls behind a slow one finished first: drop them (the timer stays, set for
            # a deadline no later than any left).
            self._queue = deque(d for d in queue if d.state != _DONE)
        return deadline

    def exit(self, deadline: Deadline, exc: BaseException | None) -> None:
        """End the call (``exc``: what it raised, if anything)."""
        if _leave(deadline, exc):
            self._live -= 1
            queue = self._queue
            while queue and queue[0].state == _DONE:
                queue.popleft()

    def _fire(self) -> None:
        """Cancel every call whose deadline has come (as the loop would run their timers,
        in deadline order); then wait for the earliest left."""
        self._timer = None
        loop, queue = self._loop, self._queue
        assert loop is not None
        due = loop.time() + _RESOLUTION
        while queue:
            head = queue[0]
            if head.state == _ACTIVE:
                if head.when >= due:
                    self._timer = loop.call_at(head.when, self._fire, context=self._context)
                    return
                head.state = _EXPIRING
                self._live -= 1
                assert head.task is not None
                head.task.cancel()
            queue.popleft()

    def close(self) -> None:
        """Its provider is closing: with no call under way, the timer goes now (else the
        loop would hold it, and the lane, until the last deadline's time); calls still
        under way keep their deadlines."""
        if self._live == 0:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._queue.clear()

    def __repr__(self) -> str:
        return f"<TimeoutLane {self._length:g}s live={self._live}>"


class ClockLane:
    """:class:`TimeoutLane`'s interface on a clock that runs timers (``FakeClock``): a
    timer on the clock per call; when it fires, the task is cancelled on the next loop
    turn, as :class:`~cascade._clock.ClockTimeout` does."""

    __slots__ = ("_clock", "_length")

    def __init__(self, clock: SupportsTimers, length: float) -> None:
        self._clock = clock
        self._length = length

    def enter(self) -> Deadline:
        deadline = _start(asyncio.get_running_loop(), self._clock.monotonic() + self._length)
        deadline.timer = self._clock.call_at(deadline.when, lambda: _soon(deadline))
        return deadline

    def exit(self, deadline: Deadline, exc: BaseException | None) -> None:
        if deadline.timer is not None:
            deadline.timer.cancel()
            deadline.timer = None
        _leave(deadline, exc)


def _soon(deadline: Deadline) -> None:
    deadline.timer = None
    asyncio.get_running_loop().call_soon(_expire, deadline)


def _expire(deadline: Deadline) -> None:
    if deadline.state == _ACTIVE:
        deadline.state = _EXPIRING
        assert deadline.task is not None
        deadline.task.cancel()
