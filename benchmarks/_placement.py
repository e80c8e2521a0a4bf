"""Where a latency benchmark's processes run: all on one CPU, or where the scheduler puts
them; and a probe of what a wake-up across CPUs costs on this machine.

On the 2-vCPU KVM guests these benchmarks run on, a process woken on the other vCPU waits
for the hypervisor to run that vCPU again: :func:`wakeup_probe` measures a loopback round
trip between two processes, with a pause between calls as at concurrency 1 through a
proxy, at 25-55 us on one CPU and 0.1-1.3 ms across two (most when the other vCPU
idles). A proxy adds two such wake-ups to every call, so unpinned, a do-nothing aiohttp
proxy's added latency moves between 0.5 and 1.3 ms with the host's load. With every
process on one CPU, a call's latency is the CPU time on its path and no hypervisor
wake-up; what a proxy does after its answer runs once the client has its answer, and
:func:`let_others_run` lets it run, untimed, before the next call.

Linux only (``os.sched_setaffinity``); elsewhere :func:`one_cpu` returns ``None`` and
nothing is pinned.
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["family", "let_others_run", "one_cpu", "placed", "wakeup_probe"]

_ECHO = """
import os, socket, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
s = socket.create_server(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
c, _ = s.accept()
c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while data := c.recv(64):
    c.sendall(data)
"""


def one_cpu() -> int | None:
    """The CPU the latency phases run on (the lowest this process may use), or ``None``
    when there is nothing to choose (one CPU, or no ``sched_setaffinity``)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = os.sched_getaffinity(0)
    return min(cpus) if len(cpus) > 1 else None


def let_others_run() -> None:
    """Give the CPU to whatever else is runnable (``os.sched_yield``) before a timed call:
    on one CPU, what a proxy does after its answer (logs, spans, bookkeeping) would run
    inside the next call's time, and so be charged to the next target in turn."""
    if hasattr(os, "sched_yield"):
        os.sched_yield()


def family(pid: int) -> list[int]:
    """``pid`` and every process descended from it, by ``/proc``'s parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # ended while listed
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _set_affinity(cpus: set[int]) -> None:
    """Every thread of this process and of its descendants onto ``cpus`` (threads started
    later inherit it from the thread that starts them)."""
    for pid in family(os.getpid()):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            with contextlib.suppress(OSError):  # a thread that has just ended
                os.sched_setaffinity(int(tid), cpus)


@contextmanager
def placed(cpu: int | None) -> Iterator[None]:
    """This process and all its children on ``cpu`` inside the block (nothing moved when
    ``cpu`` is None); back on every CPU they had after it."""
    if cpu is None:
        yield
        return
    every = os.sched_getaffinity(0)
    _set_affinity({cpu})
    try:
        yield
    finally:
        _set_affinity(every)


def wakeup_probe(*, calls: int = 400, pause_s: float = 0.0005) -> dict[str, float] | None:
    """p50 microseconds of a 1-byte loopback round trip between this process and an echo
    child, ``pause_s`` idle between calls: both on one CPU (``same_cpu_us``), then on two
    (``across_cpus_us``). ``None`` with fewer than two CPUs."""
    cpu = one_cpu()
    if cpu is None:
        return None
    other = min(os.sched_getaffinity(0) - {cpu})
    out: dict[str, float] = {}
    every = os.sched_getaffinity(0)
    try:
        for label, theirs in (("same_cpu_us", cpu), ("across_cpus_us", other)):
            os.sched_setaffinity(0, {cpu})
            with subprocess.Popen(
                [sys.executable, "-c", _ECHO, str(theirs)], stdout=subprocess.PIPE, text=True
            ) as child:
                assert child.stdout is not None
                port = int(child.stdout.readline())
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    took = []
                    for _ in range(calls):
                        time.sleep(pause_s)
                        t0 = time.perf_counter()
                        s.sendall(b"x")
                        if not s.recv(64):
                            raise RuntimeError("the echo child closed")
                        took.append(time.perf_counter() - t0)
                child.wait(5)
            out[label] = round(statistics.median(took) * 1e6, 1)
    finally:
        os.sched_setaffinity(0, every)
    return out
