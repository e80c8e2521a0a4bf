"""What one request costs ``cascade serve`` at concurrency 1: figures that do not move with
the machine's load, where the wall clock does (a 2-core VM shared with other work).

    python benchmarks/gateway_cost.py [--loop auto|asyncio|uvloop] [--requests N]
                                      [--callgrind [--keep DIR]] [--strace] [--bare]

The fake fleet and ``cascade serve`` in front of it (as ``gateway.py`` starts them: one tier,
one provider, the access log to a file), this process the client: N JSON calls then N SSE
calls, one at a time, after a warm-up. Per request, for the gateway process:

- CPU time (user and system, from /proc: load inflates it, a comparison needs the same
  minutes);
- with ``--callgrind``: instructions executed in user space, counted by valgrind's
  callgrind from the first measured request to the last (the gateway runs under valgrind,
  its start takes a minute or two; instructions are the same whatever the load); with
  ``--keep DIR`` the dumps stay in DIR, for ``callgrind_annotate``;
- with ``--bare``: the same for ``_bare_proxy.py`` (aiohttp's server and client and
  nothing else) instead of the gateway, for scale;
- with ``--strace``: system calls by name (``strace -c``; each ``getpid`` is an asyncio
  ``get_running_loop()`` on Python 3.11, each ``epoll_wait`` a turn of the event loop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
from _fleet import install_loopback_guard
from overhead import PROMPT
from streaming import server_process

from gateway import BENCH_KEY, START_TIMEOUT_S, gateway_config

WARM_UP = 50
REQUESTS = 2000  # 200 with --callgrind (each takes ~20x as long under valgrind)
VALGRIND_START_S = 600.0


@contextmanager
def served(
    config: Path, loop: str, *, callgrind: Path | None, bare: str | None = None
) -> Iterator[tuple[str, int]]:
    """``cascade serve`` (under callgrind, instrumentation off until asked): its URL, pid.
    With ``bare`` (the fleet's URL), the bare aiohttp proxy in front of it instead."""
    code = "from cascade._cli import main; raise SystemExit(main())"
    cmd = [sys.executable, "-c", code, "serve", "--config", str(config), "--port", "0"]
    if bare is not None:
        cmd = [sys.executable, str(Path(__file__).with_name("_bare_proxy.py")), bare]
        loop = "uvloop" if loop == "auto" else loop
    cmd += ["--loop", loop]
    if callgrind is not None:
        out = f"--callgrind-out-file={callgrind}.%p"
        cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", out, *cmd]
    log_path = config.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    try:
        deadline = time.monotonic() + (START_TIMEOUT_S if callgrind is None else VALGRIND_START_S)
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            for line in log_path.read_text().splitlines():
                if '"gateway.listening"' in line:
                    record = json.loads(line)
                    yield f"http://127.0.0.1:{record['port']}/v1", proc.pid
                    return
                if line.startswith("listening on "):  # the bare proxy
                    yield line.removeprefix("listening on "), proc.pid
                    return
        raise RuntimeError(f"cascade serve did not start: {log_path.read_text()[-2000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cpu_s(pid: int) -> tuple[float, float]:
    """The process's user and system CPU seconds so far (every thread)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


async def callgrind_control(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed")


def instructions(pattern: Path, pid: int) -> int:
    """The ``Ir`` total of the newest callgrind dump of ``pid``."""
    dumps = sorted(pattern.parent.glob(f"{pattern.name}.{pid}*"), key=lambda p: p.stat().st_mtime)
    for line in dumps[-1].read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dumps[-1]}")


def syscalls(path: Path) -> dict[str, int]:
    """``strace -c``'s table: calls per system call."""
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3])
    return counts


async def measure(
    base: str, pid: int, args: argparse.Namespace, folder: Path, callgrind: Path | None
) -> dict[str, dict[str, Any]]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
    out: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:
        for fmt in ("json", "sse"):
            model = "bulk" if args.bare else fmt  # through the gateway, the model is the route
            body: dict[str, Any] = {
                "model": model,
                "messages": [{"role": "user", "content": PROMPT}],
            }
            if fmt == "sse":
                body["stream"] = True
            data = json.dumps(body).encode()

            async def call(data: bytes = data, fmt: str = fmt) -> None:
                endpoint = base + "/chat/completions"
                async with session.post(endpoint, data=data, headers=headers) as r:
                    payload = await r.read()
                    if r.status != 200 or (fmt == "sse" and b"data: [DONE]" not in payload):
                        raise RuntimeError(f"{fmt}: {r.status} {payload[:200]!r}")

            for _ in range(WARM_UP):
                await call()
            tracer = None
            if args.strace:
                table = folder / f"strace.{fmt}"
                tracer = await asyncio.create_subprocess_exec(
                    *("strace", "-f", "-c", "-p", str(pid), "-o", str(table)),
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1.0)  # attached
            if callgrind is not None:
                await callgrind_control("--instr=on", str(pid))
                await callgrind_control("--zero", str(pid))
            user0, sys0 = cpu_s(pid)
            for _ in range(args.requests):
                await call()
            user1, sys1 = cpu_s(pid)
            row: dict[str, Any] = {
                "cpu_user_us": round((user1 - user0) / args.requests * 1e6, 1),
                "cpu_sys_us": round((sys1 - sys0) / args.requests * 1e6, 1),
            }
            if callgrind is not None:
                await callgrind_control("--dump", str(pid))
                await callgrind_control("--instr=off", str(pid))
                row["instructions"] = instructions(callgrind, pid) // args.requests
            if tracer is not None:
                tracer.send_signal(2)
                await tracer.wait()
                counts = syscalls(folder / f"strace.{fmt}")
                row["syscalls"] = {
                    name: round(n / args.requests, 2)
                    for name, n in sorted(counts.items(), key=lambda kv: -kv[1])
                }
            out[fmt] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    parser.add_argument("--requests", type=int, help=f"per format (default {REQUESTS})")
    parser.add_argument("--callgrind", action="store_true", help="instructions per request")
    parser.add_argument("--keep", type=Path, help="with --callgrind: keep the dumps in this folder")
    parser.add_argument("--strace", action="store_true", help="system calls per request")
    parser.add_argument(
        "--bare", action="store_true", help="measure _bare_proxy.py instead, for scale"
    )
    args = parser.parse_args(argv)
    for tool, wanted in (("valgrind", args.callgrind), ("strace", args.strace)):
        if wanted and shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")
    if args.keep is not None and not args.callgrind:
        parser.error("--keep: with --callgrind only")
    if args.callgrind and args.strace:
        parser.error("--callgrind and --strace: one at a time (each slows the other's figure)")
    args.requests = args.requests or (REQUESTS // 10 if args.callgrind else REQUESTS)
    install_loopback_guard()
    with tempfile.TemporaryDirectory() as tmp, server_process() as fleet:
        folder = Path(tmp)
        callgrind = None
        if args.callgrind:
            if args.keep is not None:
                args.keep.mkdir(parents=True, exist_ok=True)
            callgrind = (args.keep or folder).resolve() / "callgrind"
        bare = fleet if args.bare else None
        config = gateway_config(folder, fleet)
        with served(config, args.loop, callgrind=callgrind, bare=bare) as (url, pid):
            report = asyncio.run(measure(url, pid, args, folder, callgrind))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    what = "bare aiohttp proxy" if args.bare else "cascade serve"
    print(f"{what} --loop {args.loop}, {args.requests} requests per format, load {load}")
    for fmt, row in report.items():
        print(f"{fmt}: " + json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
