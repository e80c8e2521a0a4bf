"""Validation work that could hold the event loop runs elsewhere, under a time limit.

Built-in parsing is linear, and runs on the loop for an answer up to :data:`BIG_TEXT`; a
bigger one is parsed in a worker thread (:func:`off_loop`), where the scans of the
``regex`` engine let go of the GIL. Two kinds of work are not bounded by the answer's
length, and an answer is hostile input:

- a user's regular expression (``regex:(\\d+)+x`` is exponential): it runs with the
  third-party ``regex`` engine in a worker thread, which releases the GIL while it matches
  (``concurrent=True``) and gives up at the time limit (``timeout=``); at most half the
  cores match at once, at a lower priority (:func:`off_loop`);
- JSON Schema validation of a large answer (``uniqueItems`` compares every pair of items)
  or under a schema with ``pattern`` (a schema's regular expression meets the answer's
  strings): it runs in a worker process (:mod:`._schema_worker`, at a lower priority), one
  job at a time; the worker stops a job at its limit itself (a timer signal), and one that
  does not answer soon after is killed and started again for the next job.

Work that overruns raises :class:`Overrun`; a validator turns it into a rejection. The
limit is wall-clock time (``time.monotonic``) from the moment the validator asks, waiting
for a free worker included, so a flood of hostile answers is rejected at the limit rather
than queued behind each other.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import math
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final, TypeVar

import anyio.to_thread
import msgspec

from .._errors import ConfigError

__all__ = [
    "BIG_TEXT",
    "DEFAULT_TIME_LIMIT_S",
    "Overrun",
    "check_time_limit",
    "in_thread",
    "off_loop",
    "schema_check",
]

T = TypeVar("T")

DEFAULT_TIME_LIMIT_S: Final = 2.0
"""The default ``time_limit_s`` of the validators that offload work."""
BIG_TEXT: Final = 64 * 1024
"""Answers longer than this are parsed off the loop (:func:`off_loop`)."""

_WORKER = Path(__file__).with_name("_schema_worker.py")
_json_encode = msgspec.json.Encoder().encode  # this part runs on the loop: fast
_WORKERS: Final = max(1, min(2, os.cpu_count() or 1))


class Overrun(Exception):
    """Validation work did not finish within its time limit (and was stopped)."""

    def __init__(self, what: str, *, limit_s: float) -> None:
        super().__init__(f"{what} overran its time limit of {limit_s:g}s (time_limit_s)")
        self.limit_s = limit_s


def check_time_limit(value: object) -> float:
    """``value`` as a time limit in seconds; ConfigError at ``time_limit_s`` unless it is a
    finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"expected a number of seconds, got {value!r}", path="time_limit_s")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"expected a finite number > 0, got {value!r}", path="time_limit_s")
    return float(value)


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a worker thread, for blocking waits (not CPU work: see
    :func:`off_loop`). A cancelled caller leaves it to finish by itself."""
    return await anyio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


async def off_loop(fn: Callable[..., T], *args: Any, what: str, limit_s: float) -> T:
    """``fn(*args)``, CPU work (parsing a big answer, a user's pattern), on one of a few
    low-priority threads (half the cores: a flood of hostile answers leaves a core to the
    event loop). Overrun when it is not done within ``limit_s``, waiting for a thread
    included; work still waiting when its caller leaves is dropped."""
    deadline = time.monotonic() + limit_s

    def work() -> T:
        if time.monotonic() > deadline:
            raise Overrun(f"{what} (waiting for a free thread)", limit_s=limit_s)
        result = fn(*args)
        if time.monotonic() > deadline:
            raise Overrun(what, limit_s=limit_s)
        return result

    return await asyncio.get_running_loop().run_in_executor(_cpu_threads(), work)


def _cpu_threads() -> ThreadPoolExecutor:
    global _CPU_THREADS
    with _CPU_LOCK:
        if _CPU_THREADS is None:
            _CPU_THREADS = ThreadPoolExecutor(
                max(1, (os.cpu_count() or 1) // 2),
                thread_name_prefix="cascade-validation",
                initializer=_lower_priority,
            )
        return _CPU_THREADS


def _lower_priority() -> None:
    """This thread only, where the OS can tell threads apart (Linux: a thread is a task)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # not permitted: the same priority, then
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)


_CPU_THREADS: ThreadPoolExecutor | None = None
_CPU_LOCK = threading.Lock()


async def schema_check(schema_text: str, text: str, *, limit_s: float) -> dict[str, Any]:
    """The worker process's verdict on the JSON in answer ``text`` under the schema (its
    JSON text): ``{"valid": True}``, ``{"valid": False, "where": ..., "message": ...}`` or
    ``{"no_json": reason}``. Raises :class:`Overrun` past ``limit_s`` (the check is
    stopped), ValueError when the worker could not run the job."""
    job = _Job(_encode({"schema": schema_text, "text": text}), limit_s)
    try:
        return await in_thread(_POOL.run, job)
    finally:
        job.abandoned = True  # a cancelled caller: the thread stops the work at its next poll


def _encode(job: dict[str, Any]) -> bytes:
    """The job as one line of JSON but its closing brace (``limit_s`` goes last, when the
    time it has left is known)."""
    return _json_encode(job)[:-1]


class _Job:
    __slots__ = ("abandoned", "deadline", "limit_s", "payload")

    def __init__(self, payload: bytes, limit_s: float) -> None:
        self.payload = payload
        self.limit_s = limit_s
        self.deadline = time.monotonic() + limit_s
        self.abandoned = False

    def left(self) -> float:
        return self.deadline - time.monotonic()


_POLL_S: Final = 0.05  # how soon an abandoned job notices
_GRACE_S: Final = 0.25  # past the limit, for the worker to stop itself before it is killed


class _Pool:
    """Up to ``size`` worker processes, started when first needed; a killed one is replaced
    by a fresh one for the next job. Thread-safe, and tied to no event loop."""

    def __init__(self, size: int) -> None:
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[subprocess.Popen[bytes]] = []

    def __repr__(self) -> str:
        return f"<schema workers idle={len(self._idle)}>"

    def run(self, job: _Job) -> dict[str, Any]:
        # a waiting job sleeps until a worker is free or its time is up, whichever is first
        if not self._slots.acquire(timeout=max(job.left(), 0.0)):
            raise Overrun("JSON Schema validation (waiting for a worker)", limit_s=job.limit_s)
        try:
            worker = self._take()
            try:
                reply = self._ask(worker, job)
            except BaseException as exc:
                _kill(worker)
                self._give_back(self._spawn())  # warm for the next job
                if isinstance(exc, OSError):  # a worker that died under us (a broken pipe)
                    raise ValueError(f"the schema worker failed: {exc}") from None
                raise
            self._give_back(worker)
        finally:
            self._slots.release()
        if "error" in reply:
            raise ValueError(f"the schema worker could not check the answer: {reply['error']}")
        if reply.get("overrun"):
            raise Overrun("JSON Schema validation", limit_s=job.limit_s)
        return reply

    def _take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.poll() is None:
                    return worker
                _kill(worker)  # it died idle (killed from outside): reap it, close its pipes
        return self._spawn()

    @staticmethod
    def _spawn() -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603 - our own script, run by our own interpreter
            [sys.executable, "-I", str(_WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def _give_back(self, worker: subprocess.Popen[bytes]) -> None:
        with self._lock:
            self._idle.append(worker)

    def _ask(self, worker: subprocess.Popen[bytes], job: _Job) -> dict[str, Any]:
        assert worker.stdin is not None
        assert worker.stdout is not None
        worker.stdin.write(job.payload + b',"limit_s":%.3f}\n' % max(job.left(), 0.001))
        worker.stdin.flush()
        while True:
            # the worker stops itself at the limit (and answers so); one that cannot (deep
            # in C code) is killed a little later
            left = job.left() + _GRACE_S
            if job.abandoned or left <= 0:
                raise Overrun("JSON Schema validation", limit_s=job.limit_s)
            ready, _, _ = select.select([worker.stdout], [], [], min(left, _POLL_S))
            if ready:
                break
        line = worker.stdout.readline()
        if not line:
            raise ValueError("the schema worker exited")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        """Let idle workers exit (they do at the end of their input); kill the slow ones."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            try:
                if worker.stdin is not None:
                    worker.stdin.close()
                worker.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if worker.poll() is None:
                _kill(worker)
            elif worker.stdout is not None:
                worker.stdout.close()


def _kill(worker: subprocess.Popen[bytes]) -> None:
    worker.kill()
    worker.wait()  # SIGKILL: gone at once; reaped here, in the pool's thread
    for stream in (worker.stdin, worker.stdout):
        if stream is not None:
            stream.close()


_POOL = _Pool(_WORKERS)
atexit.register(_POOL.close)
