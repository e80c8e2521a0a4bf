"""Instructions per request of ``overhead.py --tracing``'s clients, counted by valgrind's
callgrind: the deterministic figure behind issue #15's targets, where wall-clock ratios
move with the machine's load.

    python benchmarks/trace_instructions.py [--requests N] [--warmup W] [--validate] [NAME ...]

NAMEs: ``uninstrumented``, ``no_sdk``, ``dropped`` (the SDK with ``ALWAYS_OFF``: every run
dropped), ``sdk_batch`` (every trace), ``sdk_floor`` (three bare SDK spans),
``sdk_batch_10pct`` and ``sdk_floor_10pct``; by default no_sdk, dropped, sdk_batch,
sdk_floor and sdk_batch_10pct. Each client runs in its own process under valgrind, against
one fake server in a child process, at concurrency 64: ``--warmup`` calls, then
``--requests`` calls with instrumentation switched on (``callgrind_control -i``, so the
batch processor's export thread counts too) and ``random`` seeded, so two checkouts sample
the same runs at 10%. With both ``dropped`` and ``sdk_batch``, a 10% client's figure is
also given rescaled to exactly 10% of runs sampled (it counts the runs it exported).
``--validate``: every client's first tier checks its answers with ``json_schema`` (each
call span then carries a verdict event), as most cascades do.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from _fleet import Client, fake_openai_server
from overhead import cascade_client, tracing_factory

NAMES = (
    "uninstrumented",
    "no_sdk",
    "dropped",
    "sdk_batch",
    "sdk_floor",
    "sdk_batch_10pct",
    "sdk_floor_10pct",
)
DEFAULT = ("no_sdk", "dropped", "sdk_batch", "sdk_floor", "sdk_batch_10pct")
CONCURRENCY = 64
SEED = 20261202
SINK = "http://127.0.0.1:9"  # never reached: only the OTLP client would send there


async def burst(call: Callable[[], Awaitable[object]], n: int) -> None:
    """``n`` calls, ``CONCURRENCY`` at a time."""
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            await call()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def factory(name: str, *, validate: bool) -> Any:
    if name != "dropped":
        return tracing_factory(name, SINK, validate=validate)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    @asynccontextmanager
    async def dropped(url: str) -> Any:
        provider = TracerProvider(sampler=ALWAYS_OFF)
        async with cascade_client(validate=validate, tracer_provider=provider)(url) as client:
            yield client
        provider.shutdown()

    return dropped


def count_exported_runs() -> list[int]:
    """Count the run spans every batch processor exports from now on (when switched on)."""
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    seen = [0, 0]  # runs exported, counting on
    init = BatchSpanProcessor.__init__

    def counting_init(self: Any, exporter: Any, *args: Any, **kwargs: Any) -> None:
        export = exporter.export

        def counted(spans: Sequence[Any]) -> Any:
            if seen[1]:
                seen[0] += sum(s.name in ("cascade.run", "run") for s in spans)
            return export(spans)

        exporter.export = counted
        init(self, exporter, *args, **kwargs)

    BatchSpanProcessor.__init__ = counting_init  # type: ignore[method-assign]
    return seen


def control(*args: str) -> None:
    cmd = ["callgrind_control", *args, str(os.getpid())]
    subprocess.run(cmd, check=True, capture_output=True)


async def inside(name: str, url: str, *, requests: int, warmup: int, validate: bool) -> None:
    """Under valgrind: one client's warm-up, then its measured burst."""
    exported = count_exported_runs()
    async with factory(name, validate=validate)(url) as client:
        client: Client
        await burst(client.call, warmup)
        await client.settle()
        gc.collect()
        young = [0]

        def collections(phase: str, info: dict[str, int]) -> None:
            if phase == "start" and info["generation"] == 0:
                young[0] += 1

        gc.callbacks.append(collections)
        random.seed(SEED)
        exported[1] = 1
        control("-i", "on")
        await burst(client.call, requests)
        await client.settle()
        control("-i", "off")
        exported[1] = 0
        gc.callbacks.remove(collections)
    print(f"sampled {exported[0]} young {young[0]}")


def run_one(name: str, url: str, args: argparse.Namespace) -> tuple[float, int, int]:
    """(instructions per request, runs sampled, young collections) of one client."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--inside",
            name,
            "--url",
            url,
            "--requests",
            str(args.requests),
            "--warmup",
            str(args.warmup),
            *(["--validate"] if args.validate else []),
        ]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        total = 0
        for dump in Path(folder).glob("callgrind.out*"):
            # "totals:" is the dump's count ("summary:" is 0 with instrumentation off
            # at the start)
            total += sum(map(int, re.findall(r"^totals: (\d+)", dump.read_text(), re.M)))
    figures = re.search(r"sampled (\d+) young (\d+)", done.stdout)
    if figures is None or not total:
        raise SystemExit(f"{name}: no figures from callgrind ({done.stderr[-500:]!r})")
    return total / args.requests, int(figures.group(1)), int(figures.group(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(NAMES)}")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--validate", action="store_true", help="json_schema on tier 1")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        asyncio.run(
            inside(
                args.inside,
                args.url,
                requests=args.requests,
                warmup=args.warmup,
                validate=args.validate,
            )
        )
        return
    names = args.names or list(DEFAULT)
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        parser.error(f"unknown client {unknown[0]!r} (choose from {', '.join(NAMES)})")
    found: dict[str, tuple[float, int, int]] = {}
    with fake_openai_server('{"answer": 42}') as url:
        for name in names:
            found[name] = run_one(name, url, args)
            ir, sampled, young = found[name]
            print(
                f"{name:<16}{ir / 1000:>10.1f}k instructions / request"
                f"   runs sampled {sampled}   young collections per 1000 "
                f"{young * 1000 / args.requests:.1f}",
                flush=True,
            )
    base = found.get("no_sdk")
    if base is not None:
        for name, (ir, _, _) in found.items():
            print(f"{name:<16}{ir / base[0]:>10.3f}x no_sdk")
    if "sdk_batch" in found and "sdk_floor" in found:
        above = found["sdk_batch"][0] - found["sdk_floor"][0]
        print(f"every trace above the floor: {above / 1000:.1f}k instructions / request")
    if base is not None and "sdk_batch" in found and "dropped" in found:
        for name in ("sdk_batch_10pct",):
            if name in found:
                ir, sampled, _ = found[name]
                share = sampled / args.requests
                rescaled = ir - (share - 0.1) * (found["sdk_batch"][0] - found["dropped"][0])
                print(
                    f"{name} rescaled to 10% ({sampled} of {args.requests} sampled): "
                    f"{rescaled / 1000:.1f}k, {rescaled / base[0]:.3f}x no_sdk "
                    "(0.85x throughput needs about 1.176x)"
                )


if __name__ == "__main__":
    main()
