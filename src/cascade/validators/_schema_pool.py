"""The JSON Schema worker processes (:mod:`._schema_worker`): a small pool, fair and killable.

They check answers against schemas, and find the JSON of big answers for ``confidence`` and
``self_consistency`` (``json:FIELD``): parsing is C code that holds the GIL, here it does
not hold the engine's.

A check runs in a worker process for at most its ``time_limit_s``: the worker stops itself
at the limit (a timer signal), and one that does not answer a moment later (deep in C code,
a catastrophic ``pattern``) is killed and replaced, so a hostile answer holds a worker no
longer than its own limit.

Waiting for a free worker does not count against ``time_limit_s`` (the limit bounds the
work, not the queue; a fresh worker's start-up does not count either). Checks wait in turn,
first come first served, for up to :data:`WAIT_FACTOR` x their limit, and leave the queue
when their run is cancelled; so a legitimate answer next to a flood of hostile ones waits
for them to be stopped at their limits instead of failing "waiting for a worker". The pool
has one worker per core (at least 2, at most 8), at a lower priority than the engine.

Workers die with the engine: each asks the kernel for SIGKILL when the thread that started
it ends (``PR_SET_PDEATHSIG``, Linux), and all are started from one long-lived thread.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Final

import msgspec

from ._offload import Overrun, in_thread

__all__ = ["WAIT_FACTOR", "json_field", "schema_check"]

WAIT_FACTOR: Final = 10
"""A check waits for a free worker up to this many times its ``time_limit_s``."""

_WORKER = Path(__file__).with_name("_schema_worker.py")
_SIZE: Final = max(2, min(8, os.cpu_count() or 1))
_json_encode = msgspec.json.Encoder().encode  # this part runs on the loop: fast
_POLL_S: Final = 0.05  # how soon an abandoned job notices
_GRACE_S: Final = 0.1  # past the limit, for the worker to stop itself before it is killed
_START_S: Final = 30.0  # a fresh worker's imports, on a busy machine


async def schema_check(schema_text: str, text: str, *, limit_s: float) -> dict[str, Any]:
    """The worker process's verdict on the JSON in answer ``text`` under the schema (its
    JSON text): ``{"valid": True}``, ``{"valid": False, "where": ..., "message": ...}`` or
    ``{"no_json": reason}``. Raises :class:`Overrun` past ``limit_s`` (the check is
    stopped) or after waiting :data:`WAIT_FACTOR` x ``limit_s`` for a worker, ValueError
    when the worker could not run the job."""
    job = _Job({"schema": schema_text, "text": text}, limit_s, "JSON Schema validation")
    return await _submit(job)


async def json_field(
    text: str, path: list[str], *, lists: bool, what: str, limit_s: float
) -> dict[str, Any]:
    """The value at ``path`` (keys; list indexes too with ``lists``) of the JSON in a big
    answer, found by a worker process (parsing a hostile 8 MiB answer holds the GIL for a
    third of a second a scan: not in the engine's process). ``{"value": <a JSON scalar>}``,
    ``{"text": str(<an object or array>)}``, ``{"missing": True}`` or ``{"no_json":
    reason}``. Raises like :func:`schema_check`."""
    job = _Job({"find": text, "path": path, "lists": lists}, limit_s, what)
    return await _submit(job)


async def _submit(job: _Job) -> dict[str, Any]:
    try:
        return await in_thread(_POOL.run, job)
    finally:
        job.abandoned = True  # a cancelled caller: the thread stops the work at its next poll


def _encode(job: dict[str, Any]) -> bytes:
    """The job as one line of JSON but its closing brace (``limit_s`` goes last)."""
    try:
        encoded = _json_encode(job)
    except UnicodeEncodeError:  # a lone surrogate: the json module escapes it (\\ud800)
        encoded = json.dumps(job).encode()
    return encoded[:-1]


class _Job:
    __slots__ = ("abandoned", "deadline", "limit_s", "payload", "what")

    def __init__(self, job: dict[str, Any], limit_s: float, what: str) -> None:
        self.payload = _encode(job)
        self.limit_s = limit_s
        self.what = what
        self.deadline = time.monotonic() + WAIT_FACTOR * limit_s  # the wait, at first
        self.abandoned = False

    def left(self) -> float:
        return self.deadline - time.monotonic()


class _Worker:
    __slots__ = ("proc", "ready")

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.ready = False  # it writes one line once it has imported what it needs


class _Pool:
    """Up to ``size`` worker processes, started when first needed; a killed one is replaced
    by a fresh one for the next job. Thread-safe, and tied to no event loop."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._busy = 0
        self._waiting: collections.deque[_Job] = collections.deque()
        self._turn = threading.Condition()
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def __repr__(self) -> str:
        return (
            f"<schema workers size={self._size} busy={self._busy} "
            f"idle={len(self._idle)} waiting={len(self._waiting)}>"
        )

    def run(self, job: _Job) -> dict[str, Any]:
        if not self._acquire(job):
            raise Overrun(f"{job.what} (waiting for a worker)", limit_s=job.limit_s)
        try:
            worker = self._take()
            try:
                reply = self._ask(worker, job)
            except BaseException as exc:
                _kill(worker)
                self._give_back(_spawn())  # warm for the next job
                if isinstance(exc, OSError):  # a worker that died under us (a broken pipe)
                    raise ValueError(f"the schema worker failed: {exc}") from None
                raise
            self._give_back(worker)
        finally:
            self._release()
        if "error" in reply:
            raise ValueError(f"the schema worker could not read the answer: {reply['error']}")
        if reply.get("overrun"):
            raise Overrun(job.what, limit_s=job.limit_s)
        return reply

    def _acquire(self, job: _Job) -> bool:
        """Wait in turn for a free worker: False when the job's wait is over (or its
        caller left) first."""
        with self._turn:
            self._waiting.append(job)
            try:
                while not (self._waiting[0] is job and self._busy < self._size):
                    left = job.left()
                    if job.abandoned or left <= 0:
                        return False
                    self._turn.wait(min(left, _POLL_S))
                self._busy += 1
                return True
            finally:
                self._waiting.remove(job)
                self._turn.notify_all()

    def _release(self) -> None:
        with self._turn:
            self._busy -= 1
            self._turn.notify_all()

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.proc.poll() is None:
                    return worker
                _kill(worker)  # it died idle (killed from outside): reap it, close its pipes
        return _spawn()

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._idle.append(worker)

    def _ask(self, worker: _Worker, job: _Job) -> dict[str, Any]:
        stdin, stdout = worker.proc.stdin, worker.proc.stdout
        assert stdin is not None
        assert stdout is not None
        if not worker.ready:  # its start-up is not the job's time
            _await_line(stdout, job, time.monotonic() + _START_S, "starting")
            worker.ready = True
        job.deadline = time.monotonic() + job.limit_s  # the work's own time starts now
        stdin.write(job.payload + b',"limit_s":%.3f}\n' % job.limit_s)
        stdin.flush()
        # the worker stops itself at the limit (and answers so); one that cannot (deep in C
        # code) is killed a little later
        line = _await_line(stdout, job, job.deadline + _GRACE_S, job.what)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        """Let idle workers exit (they do at the end of their input); kill the slow ones."""
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            proc = worker.proc
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
                proc.wait(timeout=1.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if proc.poll() is None:
                _kill(worker)
            elif proc.stdout is not None:
                proc.stdout.close()


def _await_line(stdout: Any, job: _Job, until: float, what: str) -> bytes:
    """The worker's next line; Overrun at ``until`` or when the job is abandoned."""
    while True:
        left = until - time.monotonic()
        if job.abandoned or left <= 0:
            raise Overrun(what, limit_s=job.limit_s)
        ready, _, _ = select.select([stdout], [], [], min(left, _POLL_S))
        if ready:
            break
    line: bytes = stdout.readline()
    if not line:
        raise ValueError("the schema worker exited")
    return line


def _kill(worker: _Worker) -> None:
    proc = worker.proc
    proc.kill()
    proc.wait()  # SIGKILL: gone at once; reaped here, in the pool's thread
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            stream.close()


# PR_SET_PDEATHSIG fires when the *thread* that started a worker ends (not the process):
# every worker is started from this one thread, which lives as long as the engine does
_SPAWNS: queue.SimpleQueue[Future[subprocess.Popen[bytes]]] = queue.SimpleQueue()
_SPAWNER: threading.Thread | None = None
_SPAWNER_LOCK = threading.Lock()


def _spawn() -> _Worker:
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None:
            _SPAWNER = threading.Thread(target=_spawner, name="cascade-schema-spawner", daemon=True)
            _SPAWNER.start()
    future: Future[subprocess.Popen[bytes]] = Future()
    _SPAWNS.put(future)
    return _Worker(future.result())


def _spawner() -> None:
    while True:
        future = _SPAWNS.get()
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own script, run by our own interpreter
                [sys.executable, "-I", str(_WORKER), str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        except BaseException as exc:
            future.set_exception(exc)
        else:
            future.set_result(proc)


_POOL = _Pool(_SIZE)


@atexit.register
def _close() -> None:
    _POOL.close()


def _forked() -> None:
    """A forked child has none of its parent's threads, and its workers are not its own."""
    global _SPAWNS, _SPAWNER, _SPAWNER_LOCK, _POOL
    _SPAWNS, _SPAWNER, _SPAWNER_LOCK = queue.SimpleQueue(), None, threading.Lock()
    _POOL = _Pool(_SIZE)


os.register_at_fork(after_in_child=_forked)
