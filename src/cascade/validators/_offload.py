"""Validation work that could hold the event loop runs elsewhere, under a time limit.

Built-in parsing is linear, and runs on the loop for an answer up to :data:`BIG_TEXT`; a
bigger one's text is scanned in a worker thread (:func:`off_loop`), where the scans of the
``regex`` engine let go of the GIL, and its JSON is found by a worker process (JSON
decoders hold the GIL: :mod:`._schema_pool`). Two kinds of work are not bounded by the
answer's length, and an answer is hostile input:

- a user's regular expression (``regex:(\\d+)+x`` is exponential): it runs with the
  third-party ``regex`` engine in a worker thread, which releases the GIL while it matches
  (``concurrent=True``) and gives up at the time limit (``timeout=``); the threads (one per
  core, at least 2) run at a lower priority than the loop (:func:`off_loop`);
- JSON Schema validation of a large answer (``uniqueItems`` compares every pair of items),
  under a schema with ``pattern`` (a schema's regular expression meets the answer's
  strings) or with ``$ref`` (a recursive schema can be exponential in the answer's
  nesting): it runs in a killable worker process (:mod:`._schema_pool`).

Work that overruns raises :class:`Overrun`; a validator turns it into a rejection. In a
thread, the limit is wall-clock time (``time.monotonic``) from the moment the validator asks,
waiting for a free thread included: the caller gets its answer at the limit, and the thread
finishes the (bounded: parsing reads an answer at most a few times) work by itself. The
threads are daemons: a run cancelled mid-parse never holds up the interpreter's exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Final, TypeVar

import anyio.to_thread

from .._clock import timeout_after
from .._errors import ConfigError

__all__ = [
    "BIG_TEXT",
    "DEFAULT_TIME_LIMIT_S",
    "MAX_TIME_LIMIT_S",
    "Overrun",
    "check_time_limit",
    "in_thread",
    "off_loop",
]

T = TypeVar("T")

DEFAULT_TIME_LIMIT_S: Final = 2.0
"""The default ``time_limit_s`` of the validators that offload work."""
BIG_TEXT: Final = 16 * 1024
"""Answers longer than this are parsed off the loop (:func:`off_loop`). Up to it, parsing
holds the loop ~5 ms at worst (16 KiB of digits under ``confidence``'s text patterns)."""

MAX_TIME_LIMIT_S: Final = 3600.0
"""The largest ``time_limit_s`` (an hour: longer is a mistake, and overflows timers)."""
_THREADS: Final = max(2, min(8, os.cpu_count() or 1))
_GRACE_S: Final = 0.1


class Overrun(Exception):
    """Validation work did not finish within its time limit (and was stopped)."""

    def __init__(self, what: str, *, limit_s: float) -> None:
        super().__init__(f"{what} overran its time limit of {limit_s:g}s (time_limit_s)")
        self.limit_s = limit_s


def check_time_limit(value: object) -> float:
    """``value`` as a time limit in seconds; ConfigError at ``time_limit_s`` unless it is a
    number > 0 and at most :data:`MAX_TIME_LIMIT_S`."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected a number of seconds, got {value!r}", path="time_limit_s")
    if not (math.isfinite(value) and 0 < value <= MAX_TIME_LIMIT_S):
        raise ConfigError(
            f"expected a number > 0 and <= {MAX_TIME_LIMIT_S:g}, got {value!r}",
            path="time_limit_s",
        )
    return float(value)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread, for blocking waits (not CPU work: see
    :func:`off_loop`). A cancelled caller leaves it to finish by itself."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


async def off_loop(fn: Callable[..., T], *args: Any, what: str, limit_s: float) -> T:
    """``fn(*args)``, CPU work (parsing a big answer, a user's pattern), on one of a few
    low-priority daemon threads (one per core, at least 2). Overrun when it is not done
    within ``limit_s``, waiting for a thread included: the caller returns then, and work
    not started by then (or whose caller left) is dropped."""
    loop = asyncio.get_running_loop()
    job = _ThreadJob(fn, args, loop, deadline=time.monotonic() + limit_s)
    _threads().put(job)
    try:
        # a little past the limit: work that keeps its own (a regex's timeout) says so first
        async with timeout_after(None, limit_s + _GRACE_S) as scope:
            result: T = await job.future
            return result
    except TimeoutError:
        if not scope.expired():
            raise
        where = "" if job.started else " (waiting for a free thread)"
        raise Overrun(f"{what}{where}", limit_s=limit_s) from None
    finally:
        job.abandoned = True


class _ThreadJob:
    __slots__ = ("abandoned", "args", "deadline", "fn", "future", "loop", "started")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        loop: asyncio.AbstractEventLoop,
        *,
        deadline: float,
    ) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()
        self.deadline = deadline
        self.abandoned = False
        self.started = False

    def run(self) -> None:
        if self.abandoned or time.monotonic() > self.deadline:
            return  # its caller has given up on it already
        self.started = True
        try:
            result = self.fn(*self.args)
        except BaseException as exc:
            self._settle(self.future.set_exception, exc)
        else:
            self._settle(self.future.set_result, result)

    def _settle(self, how: Callable[[Any], None], value: Any) -> None:
        def settle() -> None:
            if not self.future.done():
                how(value)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(settle)


def _threads() -> queue.SimpleQueue[_ThreadJob]:
    global _STARTED
    with _CPU_LOCK:
        if not _STARTED:
            for n in range(_THREADS):
                threading.Thread(target=_serve, name=f"cascade-validation-{n}", daemon=True).start()
            _STARTED = True
    return _JOBS


def _serve() -> None:
    _lower_priority()
    while True:
        _JOBS.get().run()


def _lower_priority() -> None:
    """This thread only, where the OS can tell threads apart (Linux: a thread is a task)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # not permitted: the same priority, then
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


_JOBS: queue.SimpleQueue[_ThreadJob] = queue.SimpleQueue()
_STARTED = False
_CPU_LOCK = threading.Lock()


def _forked() -> None:
    """A forked child has none of its parent's threads: it starts its own when needed."""
    global _JOBS, _STARTED, _CPU_LOCK
    _JOBS, _STARTED, _CPU_LOCK = queue.SimpleQueue(), False, threading.Lock()


os.register_at_fork(after_in_child=_forked)
