"""``Cascade.stream()`` and ``run()`` against raw aiohttp, on one fake SSE server.

    python benchmarks/streaming.py [--quick] [--json] [--streams N]

One fake OpenAI-compatible server runs in a child process (``--serve``: the library's
``FakeOpenAIServer``, with paced and unpaced SSE answers per model). In this process, on
one asyncio loop, the clients take turns, as in overhead.py:

1. time to first token at concurrency 1: raw aiohttp (POST, read SSE lines until the
   first ``data:`` event with text) against ``stream(mode="speculative")`` (and
   ``"buffered"``, for reference) up to the first ``Delta``; both then read to the end;
2. throughput at concurrency 64 of whole streams (32 deltas each): raw aiohttp reading the
   SSE stream to ``[DONE]`` against ``stream()`` in both modes read to ``Finished``;
3. ``run()`` at concurrency 64 (with and without a ``json_schema`` validator) against raw
   aiohttp (a JSON POST), with overhead.py's clients, in the same turns as 2;
4. memory per open stream: in a fresh child process each (``--probe``), N slow streams
   (a delta every 5 s) are opened in waves and held open; the client's RSS (``VmRSS``)
   while all are open, less its RSS before, divided by N, for raw aiohttp and ``stream()``.

Figures against raw aiohttp are medians of per-turn differences (or ratios). Every load is
bounded in count and time, loopback only. Exit status 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import platform
import resource
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    asynccontextmanager,
    contextmanager,
)
from dataclasses import dataclass
from time import perf_counter
from typing import Any

import aiohttp
from _fleet import (
    Client,
    Throughput,
    install_loopback_guard,
    listening_child,
    print_targets,
    throughput,
)
from overhead import ANSWER, PROMPT, cascade_client, raw_aiohttp

import cascade
from cascade.testing import FakeOpenAIServer, Reply

CONCURRENCY = 64
ROUNDS = 5  # 3 with --quick
BLOCK = 50  # c=1 streams per client per turn
BURST = 500  # c=64 calls per client per turn
PHASE_LIMIT_S = 20.0  # each phase of a round stops here, whatever its count
STREAMS = 10_000  # memory probe (2,000 with --quick)
WAVE = 1000  # memory probe: streams opened at once
PROBE_LIMIT_S = 150.0  # memory probe: the whole child, ramp included
SETTLE_S = 2.5  # memory probe: RSS sampled over this long once all are open
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0

TARGET_TTFT_ADDED_MS = 0.2
TARGET_STREAM_VS_RAW = 0.8
TARGET_RUN_VS_RAW = 0.8
TARGET_RUN_SCHEMA_VS_RAW = 0.7
TARGET_MEMORY_VS_RAW = 3.0  # not set by the issue: our own bound

#: model -> what the server streams for it; any other model gets ``ANSWER`` (overhead.py's)
REPLIES = {
    # 4 deltas 1 ms apart: the first token comes well before the end
    "ttft": Reply(text="The answer is 42, as asked. Yes.", chunk_chars=8, chunk_delay_s=0.001),
    # 32 deltas in one write: a whole answer, as fast as the client reads it
    "bulk": Reply(text="".join(f"token{i:02d} " for i in range(32))[:256], chunk_chars=8),
    # 60 deltas 5 s apart: streams that stay open (the probe leaves them early)
    "slow": Reply(text="x" * 480, chunk_chars=8, chunk_delay_s=5.0),
}
LABELS = {
    "aiohttp_sse": "raw aiohttp, SSE",
    "speculative": 'stream(mode="speculative")',
    "buffered": 'stream(mode="buffered")',
    "aiohttp": "raw aiohttp, JSON",
    "cascade": "run()",
    "cascade_json_schema": "run() + json_schema",
}
BASELINE = {
    "speculative": "aiohttp_sse",
    "buffered": "aiohttp_sse",
    "cascade": "aiohttp",
    "cascade_json_schema": "aiohttp",
}
MESSAGES = [{"role": "user", "content": PROMPT}]


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit; return it."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


# -- the server (child process) ----------------------------------------------------------


async def serve() -> None:
    """``--serve``: the fake server with the REPLIES, until stdin closes."""
    raise_fd_limit()
    server = FakeOpenAIServer(default=Reply(text=ANSWER), record=False)
    for model, reply in REPLIES.items():
        server.script(model, reply)  # a script's last reply repeats
    async with server:
        print(f"listening on {server.url}", flush=True)
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, sys.stdin.read)  # EOF: the parent is done


@contextmanager
def server_process() -> Iterator[str]:
    with listening_child(
        [sys.executable, __file__, "--serve"],
        "fake server",
        start_timeout_s=START_TIMEOUT_S,
        stop_timeout_s=STOP_TIMEOUT_S,
        stop_on_stdin_eof=True,
    ) as url:
        yield url


# -- the clients -------------------------------------------------------------------------

#: one streamed call; ``on_text`` is called once, at its first text; returns the whole text
StreamCall = Callable[[str, Callable[[], None]], Awaitable[str]]
StreamFactory = Callable[[str, int], AbstractAsyncContextManager[StreamCall]]


def _nothing() -> None:
    pass


@asynccontextmanager
async def raw_sse(url: str, pool: int) -> AsyncIterator[StreamCall]:
    """The baseline: POST a pre-encoded body, read the SSE lines, ``json.loads`` each event,
    join the content deltas until ``data: [DONE]``."""
    endpoint = url + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    bodies: dict[str, bytes] = {}
    timeout = aiohttp.ClientTimeout(total=None)
    connector = aiohttp.TCPConnector(limit=pool)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call(model: str, on_text: Callable[[], None]) -> str:
            if (body := bodies.get(model)) is None:
                request = {
                    "model": model,
                    "messages": MESSAGES,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                }
                body = bodies[model] = json.dumps(request).encode()
            parts: list[str] = []
            async with session.post(endpoint, data=body, headers=headers) as resp:
                async for line in resp.content:
                    if not line.startswith(b"data: "):
                        continue
                    data = line[6:].strip()
                    if data == b"[DONE]":
                        break
                    choices = json.loads(data)["choices"]
                    if choices and (text := choices[0]["delta"].get("content")):
                        if not parts:
                            on_text()
                        parts.append(text)
            return "".join(parts)

        yield call


def stream_client(mode: cascade.StreamMode) -> StreamFactory:
    @asynccontextmanager
    async def factory(url: str, pool: int) -> AsyncIterator[StreamCall]:
        engines: dict[str, cascade.Cascade] = {}
        async with AsyncExitStack() as stack:

            async def engine_for(model: str) -> cascade.Cascade:
                if (engine := engines.get(model)) is None:
                    provider = {
                        "name": model,
                        "kind": "openai",
                        "base_url": url,
                        "model": model,
                        "stream": True,
                        "timeout_s": PROBE_LIMIT_S * 2,
                    }
                    config = {
                        "tiers": [{"name": "t1", "providers": [provider], "validators": []}],
                        "max_connections": pool,
                    }
                    cm = cascade.Cascade.from_dict(config)
                    engine = engines[model] = await stack.enter_async_context(cm)
                return engine

            async def call(model: str, on_text: Callable[[], None]) -> str:
                engine = engines.get(model) or await engine_for(model)
                parts: list[str] = []
                async with engine.stream(messages=MESSAGES, mode=mode) as events:
                    async for event in events:
                        if isinstance(event, cascade.Delta):
                            if not parts:
                                on_text()
                            parts.append(event.text)
                return "".join(parts)

            yield call

    return factory


STREAM_CLIENTS: dict[str, StreamFactory] = {
    "aiohttp_sse": raw_sse,
    "speculative": stream_client("speculative"),
    "buffered": stream_client("buffered"),
}


def whole(call: StreamCall, model: str) -> Client:
    """A client for the throughput phase: one call reads a whole stream and checks it."""
    expected = REPLIES[model].text

    async def one() -> str:
        text = await call(model, _nothing)
        if text != expected:
            raise RuntimeError(f"unexpected stream text {text[:40]!r}")
        return text

    return Client(one)


async def ttft(call: StreamCall) -> float:
    """Seconds to the first text of a ``ttft`` stream, which is then read to its end."""
    first: list[float] = []
    t0 = perf_counter()
    text = await call("ttft", lambda: first.append(perf_counter()))
    if text != REPLIES["ttft"].text or not first:
        raise RuntimeError(f"unexpected stream text {text!r}")
    return first[0] - t0


# -- phases 1-3: latency and throughput, clients taking turns ------------------------------


@dataclass
class Samples:
    ttft_blocks: list[float]  # per turn: median ms
    ttft: list[float]  # every sample, ms
    bursts: list[Throughput]


async def measure(url: str, *, requests: int, rounds: int) -> dict[str, Samples]:
    samples: dict[str, Samples] = {}
    burst = functools.partial(throughput, concurrency=CONCURRENCY, time_limit_s=PHASE_LIMIT_S)
    t_start = perf_counter()
    async with AsyncExitStack() as stack:
        calls = {
            n: await stack.enter_async_context(f(url, 4 * CONCURRENCY))
            for n, f in STREAM_CLIENTS.items()
        }
        clients = {n: whole(c, "bulk") for n, c in calls.items()}
        clients["aiohttp"] = await stack.enter_async_context(raw_aiohttp(url))
        for name in ("cascade", "cascade_json_schema"):
            factory = cascade_client(validate=name == "cascade_json_schema")
            clients[name] = await stack.enter_async_context(factory(url))
        for name, client in clients.items():  # warm up: connections open, answers checked
            answers = await asyncio.gather(*(client.call() for _ in range(2 * CONCURRENCY)))
            if name in ("aiohttp", "cascade", "cascade_json_schema") and any(
                a != ANSWER for a in answers
            ):
                raise RuntimeError(f"{LABELS[name]}: unexpected answers")
        for call in calls.values():
            for _ in range(5):
                await ttft(call)
        samples = {n: Samples([], [], []) for n in clients}
        blocks = max(1, requests // BLOCK)
        bursts = max(1, requests // BURST)
        for r in range(rounds):
            order = list(calls)[r % len(calls) :] + list(calls)[: r % len(calls)]
            gc.collect()
            stop = perf_counter() + PHASE_LIMIT_S
            for _ in range(blocks):
                for name in order:
                    block = [await ttft(calls[name]) * 1e3 for _ in range(BLOCK)]
                    samples[name].ttft += block
                    samples[name].ttft_blocks.append(statistics.median(block))
                if perf_counter() > stop:
                    break
            names = list(clients)
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:  # reopen the connections idle ones lost
                await burst(clients[name], count=CONCURRENCY)
            gc.collect()
            stop = perf_counter() + PHASE_LIMIT_S
            for _ in range(bursts):
                for name in order:
                    samples[name].bursts.append(await burst(clients[name], count=BURST))
                if perf_counter() > stop:
                    break
            print(
                f"round {r + 1}/{rounds} done at {perf_counter() - t_start:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    return samples


def summarize(samples: dict[str, Samples]) -> dict[str, dict[str, float]]:
    med = statistics.median
    out: dict[str, dict[str, float]] = {}
    for name, s in samples.items():
        total = functools.reduce(Throughput.__add__, s.bursts)
        row = {"rps_c64": total.rps, "cpu_us_c64": total.cpu_us, "c64_requests": total.count}
        if s.ttft:
            row["ttft_p50_ms"] = med(s.ttft)
            row["ttft_p99_ms"] = statistics.quantiles(s.ttft, n=100, method="inclusive")[98]
        if (base := BASELINE.get(name)) is not None:
            raw = samples[base]
            pairs = zip(s.bursts, raw.bursts, strict=True)
            row["vs_raw"] = med(x.rps / b.rps for x, b in pairs)
            if s.ttft:
                blocks = zip(s.ttft_blocks, raw.ttft_blocks, strict=True)
                row["ttft_added_p50_ms"] = med(x - b for x, b in blocks)
        out[name] = row
    return out


# -- phase 4: memory per open stream (a child process per client) --------------------------


async def probe(kind: str, url: str, count: int) -> dict[str, Any]:
    """``--probe``: open ``count`` slow streams in waves, sample RSS while all are open."""
    limit = raise_fd_limit()
    install_loopback_guard()
    deadline = perf_counter() + PROBE_LIMIT_S
    errors: Counter[str] = Counter()
    opened = 0
    wave_open = asyncio.Event()
    target = 0

    def on_text() -> None:
        nonlocal opened
        opened += 1
        if opened >= target:
            wave_open.set()

    async with STREAM_CLIENTS[kind](url, count + CONCURRENCY) as call:

        async def one() -> None:
            try:
                await call("slow", on_text)
            except Exception as exc:  # counted and reported: a failed stream is not open
                errors[type(exc).__name__] += 1

        await ttft(call)  # the pool, the engine, the code paths: all warm before "before"
        gc.collect()
        await asyncio.sleep(0.5)
        before = rss_bytes()
        t0 = perf_counter()
        tasks: list[asyncio.Task[None]] = []
        while len(tasks) < count and perf_counter() < deadline:
            target = min(count, len(tasks) + WAVE)
            wave_open.clear()
            tasks += [asyncio.create_task(one()) for _ in range(target - len(tasks))]
            try:
                async with asyncio.timeout(max(0.0, deadline - perf_counter())):
                    await wave_open.wait()
            except TimeoutError:
                break
            if errors:
                break
        ramp_s = perf_counter() - t0
        samples = []
        for _ in range(5):
            await asyncio.sleep(SETTLE_S / 5)
            samples.append(rss_bytes())
        held = opened
        for task in tasks:  # leave every stream early
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    during = statistics.median(samples)
    return {
        "client": kind,
        "asked": count,
        "open": held,
        "errors": dict(errors),
        "fd_limit": limit,
        "ramp_s": round(ramp_s, 2),
        "rss_before": before,
        "rss_during": during,
        "bytes_per_stream": (during - before) / held if held else None,
    }


def run_probe(kind: str, url: str, count: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--probe", kind, "--url", url, "--streams", str(count)]
    out = subprocess.run(
        cmd, capture_output=True, text=True, timeout=PROBE_LIMIT_S + 60, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {kind} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# -- report ------------------------------------------------------------------------------


def targets(summary: dict[str, dict[str, float]], memory: dict[str, Any]) -> list[Any]:
    def row(name: str, target: str, value: float | None, ok: bool | None) -> dict[str, Any]:
        return {"name": name, "target": target, "value": value, "pass": ok}

    spec, buf = summary["speculative"], summary["buffered"]
    run, schema = summary["cascade"], summary["cascade_json_schema"]
    ratio = memory.get("ratio")
    return [
        row('TTFT added p50, stream(speculative) vs raw SSE, c=1', f"<= {TARGET_TTFT_ADDED_MS} ms",
            round(spec["ttft_added_p50_ms"], 3),
            spec["ttft_added_p50_ms"] <= TARGET_TTFT_ADDED_MS),
        row('streamed throughput, stream(speculative) vs raw SSE, c=64',
            f">= {TARGET_STREAM_VS_RAW}x", round(spec["vs_raw"], 3),
            spec["vs_raw"] >= TARGET_STREAM_VS_RAW),
        row('streamed throughput, stream(buffered) vs raw SSE, c=64',
            f">= {TARGET_STREAM_VS_RAW}x", round(buf["vs_raw"], 3),
            buf["vs_raw"] >= TARGET_STREAM_VS_RAW),
        row("run() vs raw aiohttp, c=64", f">= {TARGET_RUN_VS_RAW}x",
            round(run["vs_raw"], 3), run["vs_raw"] >= TARGET_RUN_VS_RAW),
        row("run() + json_schema vs raw aiohttp, c=64", f">= {TARGET_RUN_SCHEMA_VS_RAW}x",
            round(schema["vs_raw"], 3), schema["vs_raw"] >= TARGET_RUN_SCHEMA_VS_RAW),
        row(f"memory per open stream, stream() vs raw SSE, {memory['open']} streams",
            f"<= {TARGET_MEMORY_VS_RAW}x (ours)", None if ratio is None else round(ratio, 2),
            None if ratio is None else ratio <= TARGET_MEMORY_VS_RAW),
    ]  # fmt: skip


def print_report(report: dict[str, Any]) -> None:
    print(", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    print(
        f"{report['rounds']} rounds x {report['requests']} calls per client per phase; "
        f"TTFT in turns of {BLOCK}, c=64 in turns of {BURST}\n"
    )
    print(
        f"{'client':<28} {'TTFT p50':>9} {'p99':>7} {'+p50 ms':>8} "
        f"{'calls/s c=64':>13} {'x raw':>6} {'CPU us/call':>12}"
    )
    for name, s in report["clients"].items():
        p50 = f"{s['ttft_p50_ms']:.3f}" if "ttft_p50_ms" in s else "-"
        p99 = f"{s['ttft_p99_ms']:.3f}" if "ttft_p99_ms" in s else "-"
        added = f"{s['ttft_added_p50_ms']:+.3f}" if "ttft_added_p50_ms" in s else "-"
        ratio = f"{s['vs_raw']:.2f}" if "vs_raw" in s else "-"
        print(
            f"{LABELS[name]:<28} {p50:>9} {p99:>7} {added:>8} "
            f"{s['rps_c64']:>13.0f} {ratio:>6} {s['cpu_us_c64']:>12.0f}"
        )
    print("(TTFT in ms; streams: 32 deltas each at c=64; run(): one JSON answer)")
    mem = report["memory"]
    print(f"\nmemory, {mem['open']} slow streams open at once (asked {mem['asked']}):")
    for p in mem["probes"]:
        per = p["bytes_per_stream"]
        print(
            f"  {LABELS[p['client']]:<28} {p['open']:>6} open, RSS {p['rss_before'] / 2**20:.0f}"
            f" -> {p['rss_during'] / 2**20:.0f} MiB, "
            f"{'-' if per is None else f'{per / 1024:.1f} KiB'} per stream "
            f"(ramp {p['ramp_s']} s{', errors ' + str(p['errors']) if p['errors'] else ''})"
        )
    print("\ntargets:")
    print_targets(report["targets"])
    if report["refused_network"]:
        print(f"\nloopback guard refused: {', '.join(report['refused_network'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, help="calls per client per phase per round")
    parser.add_argument("--streams", type=int, help=f"memory probe streams (default {STREAMS})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--probe", choices=list(STREAM_CLIENTS), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    streams = args.streams or (2000 if args.quick else STREAMS)
    if args.serve:
        asyncio.run(serve())
        return 0
    if args.probe:
        print(json.dumps(asyncio.run(probe(args.probe, args.url, streams))))
        return 0
    requests = args.requests or (500 if args.quick else 2000)
    rounds = 3 if args.quick else ROUNDS
    if requests < BURST:
        parser.error(f"--requests must be at least {BURST}")
    fd_limit = raise_fd_limit()
    refused = install_loopback_guard()
    with server_process() as url:
        samples = asyncio.run(measure(url, requests=requests, rounds=rounds))
        print(f"memory probes: {streams} streams each", file=sys.stderr, flush=True)
        probes = [run_probe(kind, url, streams) for kind in ("aiohttp_sse", "speculative")]
    raw, spec = (p["bytes_per_stream"] for p in probes)
    memory: dict[str, Any] = {
        "asked": streams,
        "open": min(p["open"] for p in probes),
        "probes": probes,
        "ratio": spec / raw if raw and spec is not None else None,
    }
    summary = summarize(samples)
    report: dict[str, Any] = {
        "versions": {
            "cascade-engine": cascade.__version__,
            "aiohttp": aiohttp.__version__,
            "Python": platform.python_version(),
        },
        "concurrency": CONCURRENCY,
        "rounds": rounds,
        "requests": requests,
        "fd_limit": fd_limit,
        "clients": summary,
        "memory": memory,
        "targets": targets(summary, memory),
        "refused_network": refused,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if any(t["pass"] is False for t in report["targets"]) else 0


if __name__ == "__main__":
    sys.exit(main())
