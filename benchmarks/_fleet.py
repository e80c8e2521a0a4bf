"""Benchmark plumbing: the fake server in its own process, a loopback-only network guard,
and the two load phases (sequential latency, concurrent throughput)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import select
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from time import perf_counter, process_time
from typing import Any

from _placement import let_others_run

Call = Callable[[], Awaitable[object]]


async def _nothing() -> None:
    pass


@dataclass(frozen=True)
class Client:
    """One client under test: ``call`` makes one request and returns the answer text;
    ``settle`` waits for work the client deferred (LiteLLM's logging queue), so that work
    is charged to its own turn and not to the next client's."""

    call: Call
    settle: Callable[[], Awaitable[None]] = _nothing


_START_TIMEOUT_S = 20.0
_STOP_TIMEOUT_S = 5.0


@contextmanager
def listening_child(
    cmd: list[str],
    what: str,
    *,
    start_timeout_s: float = _START_TIMEOUT_S,
    stop_timeout_s: float = _STOP_TIMEOUT_S,
    stop_on_stdin_eof: bool = False,
) -> Iterator[str]:
    """Run ``cmd``, a child that prints ``listening on URL`` once it serves; yield the URL.

    On exit (error or interrupt included) the child is stopped: first by closing its stdin
    when ``stop_on_stdin_eof`` (it exits at EOF), then terminated, then killed, each
    step given ``stop_timeout_s``.
    """
    stdin = subprocess.PIPE if stop_on_stdin_eof else None
    proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], start_timeout_s)
        line = proc.stdout.readline().strip() if ready else ""
        prefix = "listening on "
        if not line.startswith(prefix):
            raise RuntimeError(f"{what} did not start (exit {proc.poll()}): {line!r}")
        yield line.removeprefix(prefix)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(stop_timeout_s)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(stop_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def fake_openai_server(text: str, *, latency_s: float = 0.0) -> Iterator[str]:
    """Run ``python -m cascade.testing openai`` in a child process; yield its ``/v1`` URL.

    ``latency_s`` delays every response. The child is terminated on exit, error or
    interrupt included.
    """
    cmd = [sys.executable, "-m", "cascade.testing", "openai", "--port", "0", "--text", text]
    if latency_s:
        cmd += ["--latency-s", str(latency_s)]
    with listening_child(cmd, "fake server") as url:
        yield url


def _is_loopback(host: Any) -> bool:
    if host in (None, "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def install_loopback_guard() -> list[str]:
    """Refuse every non-loopback connect, sendto and DNS lookup in this process.

    Returns the (live) list of refused attempts, so a report can show them. Audit hooks
    cannot be removed: call this only from a benchmark's ``main``.
    """
    refused: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "socket.getaddrinfo":
            host = args[0]
        elif event in ("socket.connect", "socket.sendto"):
            address = args[1]
            if not isinstance(address, tuple):  # AF_UNIX path
                return
            host = address[0]
        else:
            return
        if not _is_loopback(host):
            refused.append(f"{event} {host}")
            raise PermissionError(f"benchmark is loopback-only: {event} to {host!r} refused")

    sys.addaudithook(hook)
    return refused


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    count: int

    @classmethod
    def of(cls, samples: list[float]) -> Latency:
        if len(samples) < 2:
            raise RuntimeError("too few latency samples: raise the time limit")
        p99 = statistics.quantiles(samples, n=100, method="inclusive")[98]
        return cls(statistics.median(samples) * 1e3, p99 * 1e3, len(samples))


async def sequential(
    client: Client, *, count: int, into: list[float], yield_first: bool = False
) -> None:
    """Time ``count`` calls one after the other (concurrency 1), appending seconds to ``into``;
    then settle, untimed. ``yield_first``: before each call, the CPU to whatever else is
    runnable (``_placement.let_others_run``): what the last call left to do is not timed."""
    call = client.call
    for _ in range(count):
        if yield_first:
            let_others_run()
        t0 = perf_counter()
        await call()
        into.append(perf_counter() - t0)
    await client.settle()


@dataclass(frozen=True)
class Throughput:
    count: int
    elapsed_s: float
    cpu_s: float  # this process's CPU time: the client's own cost

    @property
    def rps(self) -> float:
        return self.count / self.elapsed_s

    @property
    def cpu_us(self) -> float:
        """Client CPU per request, microseconds."""
        return self.cpu_s / self.count * 1e6

    def __add__(self, other: Throughput) -> Throughput:
        return Throughput(
            self.count + other.count, self.elapsed_s + other.elapsed_s, self.cpu_s + other.cpu_s
        )


async def throughput(
    client: Client, *, count: int, concurrency: int, time_limit_s: float
) -> Throughput:
    """``concurrency`` workers share ``count`` calls, stopping early at the time limit.

    The window runs from the first start to the last completion and the client settled,
    ramp-up and drain included: give each worker several calls so those edges stay a small
    share of it.
    """
    call = client.call
    left = count
    done = 0
    cpu0 = process_time()
    t0 = perf_counter()
    stop = t0 + time_limit_s

    async def worker() -> None:
        nonlocal left, done
        while left > 0 and perf_counter() < stop:
            left -= 1
            await call()
            done += 1

    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    await client.settle()
    return Throughput(done, perf_counter() - t0, process_time() - cpu0)


def print_targets(targets: list[dict[str, Any]]) -> None:
    """Each target's verdict (PASS, MISS, or n/a when it could not be measured)."""
    for t in targets:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[t["pass"]]
        print(f"  {verdict}  {t['name']}: {t['value']} (target {t['target']})")
