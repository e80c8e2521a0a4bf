"""``cascade serve`` against calling the fake fleet directly, and against the LiteLLM proxy.

    python benchmarks/gateway.py [--quick] [--json] [--streams N] [--litellm PATH]
                                 [--loop auto|asyncio|uvloop]

Processes, all on this machine and on loopback: the fake OpenAI-compatible fleet
(streaming.py's ``--serve``: a JSON answer, and an SSE answer of 32 deltas for the model
``bulk``); ``cascade serve`` in front of it (one tier, one provider: the gateway's own
cost, no validators); the LiteLLM proxy (``litellm --config``, when installed: give its
executable with ``--litellm`` or put ``litellm`` on PATH) in front of the same fleet. This
process is the client: raw aiohttp, one POST ``/v1/chat/completions`` per call, the JSON
body read and decoded, or the SSE stream read to its end (``data: [DONE]`` required).

Concurrency 1, with every process (this client, the fleet, the proxies) on one CPU, then
again where the scheduler puts them (reported, not judged): on a 2-vCPU VM a process woken
on the other vCPU waits for the hypervisor, 0.1-1.3 ms here (most when that vCPU idles)
against 0.04 ms on one CPU (the run prints its own probe of this, see ``_placement.py``),
and any proxy adds two such wake-ups per call, so unpinned figures measure the host's load
more than the proxy. On one CPU a call's latency is the CPU time on its path; the client
yields the CPU before each timed call, so that what a proxy does after its answer runs
untimed between calls, not inside the next target's call (it is a cost in throughput,
which the c=64 phases measure). The c=64 phases use every CPU.

Concurrency 1, interleaved: call by call, the fleet direct, a bare aiohttp proxy
(``_bare_proxy.py``: one more loopback hop through aiohttp's server and client, nothing
else, for scale) and the gateway take turns (the order rotated each time), so a change in
the machine's speed (a 2-core VM shares its cores) hits all three alike. Per format: each
one's p50 and p99 over every call; "added p50" is the gateway's p50 less the direct p50
of the same calls, "paired" the median of the per-turn differences (gateway call less the
direct call made next to it), and "by round" the added p50 of each round alone (its
spread says how far one run can be trusted). LiteLLM's c=1 calls come in a block per
round (a tenth as many: it is that much slower), against that round's direct p50.

Concurrency 64: throughput of each client in turn, the order rotated per round; "x
LiteLLM" the median of per-round ratios. Then memory per open client stream: N slow
streams (a delta every 5 s) held open through the gateway, its RSS while they are open
less its RSS before, over N.

Exit status 1 when a target is missed: the gateway's added p50 at c=1 on one CPU (JSON and
SSE), both as the difference of p50s and as the paired median, at most 1 ms; gateway throughput at
c=64 at least 10x LiteLLM's (when LiteLLM is there).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from time import perf_counter
from typing import Any

import aiohttp
from _fleet import (
    Client,
    Latency,
    install_loopback_guard,
    listening_child,
    print_targets,
    sequential,
    throughput,
)
from _placement import let_others_run, one_cpu, placed, wakeup_probe
from overhead import PROMPT
from streaming import raise_fd_limit, server_process

import cascade

CONCURRENCY = 64
ROUNDS = 5  # 3 with --quick
TURNS = 300  # c=1: turns of direct, bare proxy and gateway per format per round (150 quick)
BLOCK = 100  # c=1: LiteLLM's calls per round are a tenth of this
BURST = 1000  # c=64 calls per client per turn (LiteLLM: a tenth)
PHASE_LIMIT_S = 30.0  # each turn stops here, whatever its count
STREAMS = 2000  # memory probe (500 with --quick)
WAVE = 250  # memory probe: streams opened at once
PROBE_LIMIT_S = 120.0
START_TIMEOUT_S = 60.0  # the LiteLLM proxy takes a while to import
LITELLM_KEEPALIVE_S = 2.0
"""How long the client keeps an idle connection to the LiteLLM proxy: less than its 5 s."""
STOP_TIMEOUT_S = 10.0

BENCH_KEY = "sk-" + secrets.token_hex(16)  # every client sends it; only LiteLLM checks it
TARGET_ADDED_P50_MS = 1.0
TARGET_VS_LITELLM = 10.0

TARGETS = ("direct", "proxy", "gateway", "litellm")
LABELS = {
    "direct": "fleet, direct",
    "proxy": "bare aiohttp proxy",
    "gateway": "cascade serve",
    "litellm": "LiteLLM proxy",
}
INTERLEAVED = ("direct", "proxy", "gateway")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the gateway and the LiteLLM proxy (child processes) ----------------------------------


def gateway_config(folder: Path, fleet: str) -> Path:
    """Two routes on the one fleet: ``json`` (a provider that does not stream) and ``sse``
    (one that streams), so each client's call is passed through as it came."""
    provider = (
        '[[tiers]]\nname = "only"\n[[tiers.providers]]\nname = "fleet"\nkind = "openai"\n'
        f'base_url = "{fleet}"\nmodel = "bulk"\napi_key_env = ""\n'
    )
    (folder / "sse.toml").write_text(provider + "stream = true\n")
    path = folder / "gateway.toml"
    path.write_text(
        provider + '\n[[gateway.routes]]\nname = "json"\ndefault = true\n'
        '\n[[gateway.routes]]\nname = "sse"\nconfig = "sse.toml"\n'
    )
    return path


@contextmanager
def gateway_process(config: Path, loop: str = "auto") -> Iterator[tuple[str, int, str]]:
    """``cascade serve --loop loop`` on a free port: (its /v1 URL, its pid, the event loop
    it runs on). Its log (a JSON line per request) goes to a file beside the config, as a
    deployment's would go to a file or a journal: a pipe this process drained would make
    the gateway wait on this client."""
    code = "from cascade._cli import main; raise SystemExit(main())"
    cmd = [sys.executable, "-c", code, "serve", "--config", str(config), "--port", "0"]
    cmd += ["--loop", loop]
    log_path = config.with_suffix(".log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        running = "?"
        deadline = time.monotonic() + START_TIMEOUT_S
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            with open(log_path) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if record.get("event") == "gateway.listening":
                        port = int(record["port"])
                        running = str(record.get("loop", "?"))
        if port is None:
            tail = log_path.read_text()[-2000:]
            raise RuntimeError(f"cascade serve did not start (exit {proc.poll()}): {tail}")
        yield f"http://127.0.0.1:{port}/v1", proc.pid, running
    finally:
        _stop(proc)


@contextmanager
def bare_proxy_process(fleet: str, loop: str) -> Iterator[str]:
    """``_bare_proxy.py`` in front of the fleet, on the gateway's event loop: its /v1 URL."""
    here = Path(__file__).with_name("_bare_proxy.py")
    cmd = [sys.executable, str(here), fleet, "--loop", loop]
    with listening_child(
        cmd,
        "the bare proxy",
        start_timeout_s=START_TIMEOUT_S,
        stop_timeout_s=STOP_TIMEOUT_S,
        stop_on_stdin_eof=True,
    ) as url:
        yield url


def litellm_executable(given: str | None) -> str | None:
    if given:
        return given
    return shutil.which("litellm")


@contextmanager
def litellm_process(exe: str, folder: Path, fleet: str) -> Iterator[str]:
    """The LiteLLM proxy (one worker) on a free port in front of the fleet: its /v1 URL.
    Told to use its bundled cost map and send no telemetry: it stays on loopback."""
    config = folder / "litellm.yaml"
    # a model name per client format, as the gateway's routes (the client asks for SSE)
    models = [
        f"  - model_name: {name}\n    litellm_params:\n      model: openai/bulk\n"
        f'      api_base: "{fleet}"\n      api_key: "none"\n'
        for name in ("json", "sse")
    ]
    config.write_text("model_list:\n" + "".join(models) + "litellm_settings:\n  telemetry: false\n")
    port = free_port()
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": BENCH_KEY,  # it refuses to start without one
        "NO_PROXY": "*",
    }
    cmd = [exe, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--num_workers", "1"]
    with open(folder / "litellm.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the LiteLLM proxy exited ({proc.returncode})")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("the LiteLLM proxy did not start in time")
        yield url + "/v1"
    finally:
        _stop(proc)


# -- the client ---------------------------------------------------------------------------


@asynccontextmanager
async def openai_client(
    session: aiohttp.ClientSession, base: str, model: str, *, stream: bool
) -> AsyncIterator[Client]:
    """One POST per call to ``base``/chat/completions: the JSON answer's text, or the SSE
    stream read to its end, past ``data: [DONE]``. Any other outcome raises: a benchmark of
    errors is not a benchmark."""
    endpoint = base + "/chat/completions"
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    if stream:
        body["stream"] = True
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}

    async def call_json() -> str:
        async with session.post(endpoint, data=data, headers=headers) as resp:
            payload = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{endpoint}: {resp.status} {payload[:200]!r}")
        return json.loads(payload)["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

    async def call_sse() -> str:
        done = False
        async with session.post(endpoint, data=data, headers=headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{endpoint}: {resp.status} {(await resp.read())[:200]!r}")
            # read to the body's end, not only to [DONE]: a response left unread closes
            # its connection, and the next call would pay for a new one
            async for line in resp.content:
                done = done or line.startswith(b"data: [DONE]")
        if not done:
            raise RuntimeError(f"{endpoint}: the stream ended without [DONE]")
        return "done"

    yield Client(call_sse if stream else call_json)


async def measure(
    urls: dict[str, str], *, rounds: int, turns: int, burst: int, cpu: int | None
) -> dict[str, dict[str, Any]]:
    """Per (target, format): c=1 latencies per round (the interleaved targets' lists
    aligned turn by turn), every process on ``cpu`` (``c1``) and where the scheduler puts
    them (``c1_free``, when there is a ``cpu``), and c=64 throughputs per round."""
    samples: dict[str, dict[str, Any]] = {}
    connector = aiohttp.TCPConnector(limit=0)
    # The LiteLLM proxy's server (uvicorn) closes a connection idle for 5 s; a client that
    # keeps one 15 s (aiohttp's default) can send on one the server has just closed, and
    # get ServerDisconnected (seen once, in a c=64 burst after the other targets' phases).
    lite_connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=LITELLM_KEEPALIVE_S)
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
        aiohttp.ClientSession(connector=lite_connector, timeout=timeout) as lite_session,
        AsyncExitStack() as stack,
    ):
        clients: dict[str, Client] = {}
        for target, base in urls.items():
            for fmt in ("json", "sse"):
                # the fleet answers any model; through a gateway the model names the route
                model = fmt if target in ("gateway", "litellm") else "bulk"
                client = await stack.enter_async_context(
                    openai_client(
                        lite_session if target == "litellm" else session,
                        base,
                        model,
                        stream=fmt == "sse",
                    )
                )
                clients[f"{target}/{fmt}"] = client
                samples[f"{target}/{fmt}"] = {"c1": [], "c1_free": [], "c64": []}
                for _ in range(20):  # warm up: connections, caches, the proxy's first call
                    await client.call()
        names = list(clients)
        # Every round's c=1 phases before any c=64 burst: a proxy still working off a burst
        # (the LiteLLM proxy's logging and bookkeeping went on after its bursts, and later
        # rounds' c=1 figures of every target doubled in runs with it) would take the CPU
        # from the targets timed at c=1.
        # Judged: every process on one CPU (see _placement.py: across this VM's two vCPUs
        # each wake-up waits on the hypervisor, and a proxy adds two per call). Reported:
        # the same calls wherever the scheduler puts them.
        placements = [("c1", cpu)] + ([("c1_free", None)] if cpu is not None else [])
        for _ in range(rounds):
            for key, where in placements:
                with placed(where):
                    for fmt in ("json", "sse"):
                        group = [f"{t}/{fmt}" for t in INTERLEAVED if f"{t}/{fmt}" in clients]
                        await interleaved(clients, group, turns=turns, samples=samples, key=key)
                        if key == "c1" and f"litellm/{fmt}" in clients:
                            latencies: list[float] = []
                            lite = clients[f"litellm/{fmt}"]
                            await sequential(
                                lite,
                                count=max(10, BLOCK // 10),
                                into=latencies,
                                yield_first=True,  # as interleaved() does
                            )
                            samples[f"litellm/{fmt}"]["c1"].append(latencies)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                scale = 10 if name.startswith("litellm") else 1
                result = await throughput(
                    clients[name],
                    count=max(CONCURRENCY * 2, burst // scale),
                    concurrency=CONCURRENCY,
                    time_limit_s=PHASE_LIMIT_S,
                )
                samples[name]["c64"].append(result)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return samples


async def interleaved(
    clients: dict[str, Client],
    group: list[str],
    *,
    turns: int,
    samples: dict[str, Any],
    key: str = "c1",
) -> None:
    """``turns`` turns of one call to each client of ``group``, at concurrency 1, the
    order rotated each turn (each client goes first as often as the others); a round's
    latencies of each, aligned turn by turn, go to ``samples`` under ``key``. Stops early
    (whole turns) after ``PHASE_LIMIT_S``."""
    got: dict[str, list[float]] = {name: [] for name in group}
    limit = perf_counter() + PHASE_LIMIT_S
    for turn in range(turns):
        k = turn % len(group)
        for name in group[k:] + group[:k]:
            # The CPU first to whatever the last call left runnable (a proxy's work after
            # its answer: logs, spans), untimed: on one CPU it would run inside the next
            # call's time, another target's (the fleet direct after the gateway came back
            # 0.09 ms slower at JSON, 0.15 ms at SSE, than after the bare proxy).
            let_others_run()
            t0 = perf_counter()
            await clients[name].call()
            got[name].append(perf_counter() - t0)
        if perf_counter() > limit:
            break
    for name in group:
        await clients[name].settle()
        samples[name][key].append(got[name])


def added_over(mine: dict[str, Any], direct: dict[str, Any], key: str) -> dict[str, Any]:
    """A proxy's c=1 calls under ``key`` against the direct calls beside them: its p50 less
    theirs, the median per-turn difference, and the first figure round by round (ms)."""
    rounds = list(zip(mine[key], direct[key], strict=True))
    pairs = [t - d for a, b in rounds for t, d in zip(a, b, strict=True)]
    every = [x for turn in mine[key] for x in turn]
    theirs = [x for turn in direct[key] for x in turn]
    return {
        "added_p50_ms": round(Latency.of(every).p50_ms - Latency.of(theirs).p50_ms, 3),
        "paired_p50_ms": round(statistics.median(pairs) * 1e3, 3),
        "added_by_round_ms": [
            round((statistics.median(a) - statistics.median(b)) * 1e3, 3) for a, b in rounds
        ],
    }


def summarize(samples: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, s in samples.items():
        every = [x for turn in s["c1"] for x in turn]
        lat = Latency.of(every)
        rps = [t.rps for t in s["c64"]]
        out[name] = {
            "p50_ms": round(lat.p50_ms, 3),
            "p99_ms": round(lat.p99_ms, 3),
            "c1_calls": lat.count,
            "rps_c64": round(statistics.median(rps), 1),
        }
    for fmt in ("json", "sse"):
        direct = samples.get(f"direct/{fmt}")
        if direct is None:
            continue
        for target in ("proxy", "gateway"):
            name = f"{target}/{fmt}"
            if name not in samples:
                continue
            out[name].update(added_over(samples[name], direct, "c1"))
            if samples[name]["c1_free"]:
                free = added_over(samples[name], direct, "c1_free")
                out[name].update({f"free_{k}": v for k, v in free.items()})
        if f"litellm/{fmt}" in samples:
            # its c=1 block beside that round's interleaved direct calls
            added = [
                statistics.median(a) - statistics.median(b)
                for a, b in zip(samples[f"litellm/{fmt}"]["c1"], direct["c1"], strict=True)
            ]
            out[f"litellm/{fmt}"]["added_p50_ms"] = round(statistics.median(added) * 1e3, 3)
            ratios = [
                g.rps / lt.rps
                for g, lt in zip(
                    samples[f"gateway/{fmt}"]["c64"], samples[f"litellm/{fmt}"]["c64"], strict=True
                )
            ]
            out[f"gateway/{fmt}"]["x_litellm_c64"] = round(statistics.median(ratios), 1)
    return out


# -- memory per open client stream ---------------------------------------------------------


async def memory_probe(base: str, pid: int, *, count: int) -> dict[str, Any]:
    """Open ``count`` slow SSE streams through the gateway (the fleet sends a delta every
    5 s), in waves; the gateway's RSS while all are open, less before, per stream."""
    connector = aiohttp.TCPConnector(limit=0)
    body = json.dumps(
        {"model": "sse", "stream": True, "messages": [{"role": "user", "content": "slow"}]}
    ).encode()
    opened = 0
    target = 0
    wave_open = asyncio.Event()
    release = asyncio.Event()
    headers = {"Content-Type": "application/json"}
    endpoint = base + "/chat/completions"
    async with aiohttp.ClientSession(connector=connector) as session:
        before = rss_of(pid)

        async def one() -> None:
            nonlocal opened
            try:
                async with session.post(endpoint, data=body, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"slow stream: {resp.status}")
                    await resp.content.readline()  # the first bytes: the stream is open
                    opened += 1
                    if opened >= target:
                        wave_open.set()
                    await release.wait()
            finally:
                wave_open.set()  # a failed stream wakes the ramp, which then raises

        t0 = time.monotonic()
        tasks: list[asyncio.Task[None]] = []
        async with asyncio.timeout(PROBE_LIMIT_S):
            while len(tasks) < count:
                target = min(count, len(tasks) + WAVE)
                wave_open.clear()
                tasks += [asyncio.create_task(one()) for _ in range(target - len(tasks))]
                while opened < target:
                    await wave_open.wait()
                    wave_open.clear()
                    failed = [t for t in tasks if t.done()]
                    if failed:
                        await failed[0]  # raises its error
                        raise RuntimeError("a slow stream ended early")
            ramp = time.monotonic() - t0
            during = 0
            for _ in range(10):  # the highest of 2 s of samples, all streams open
                await asyncio.sleep(0.2)
                during = max(during, rss_of(pid))
            release.set()
            await asyncio.gather(*tasks)
    return {
        "streams": count,
        "opened": opened,
        "rss_before_mib": round(before / 2**20, 1),
        "rss_open_mib": round(during / 2**20, 1),
        "kib_per_stream": round((during - before) / count / 1024, 1),
        "ramp_s": round(ramp, 2),
    }


# -- report --------------------------------------------------------------------------------


def targets(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for fmt in ("json", "sse"):
        row = summary[f"gateway/{fmt}"]
        added, paired = row["added_p50_ms"], row["paired_p50_ms"]
        rows.append(
            {
                "name": f"added p50 at c=1 over the fleet direct, {fmt.upper()}, one CPU "
                "(p50s / paired)",
                "target": f"<= {TARGET_ADDED_P50_MS} ms",
                "value": f"{added:+.3f} / {paired:+.3f} ms",
                "pass": max(added, paired) <= TARGET_ADDED_P50_MS,
            }
        )
        ratio = summary[f"gateway/{fmt}"].get("x_litellm_c64")
        rows.append(
            {
                "name": f"throughput at c=64 against the LiteLLM proxy, {fmt.upper()}",
                "target": f">= {TARGET_VS_LITELLM}x",
                "value": ratio,
                "pass": None if ratio is None else ratio >= TARGET_VS_LITELLM,
            }
        )
    return rows


def print_report(report: dict[str, Any]) -> None:
    print(report["versions"])
    print(
        f"{report['rounds']} rounds; c=1: {report['turns']} interleaved turns per format per "
        f"round; c=64 bursts of {report['burst']} per client per round; load "
        f"{report['load_before']} before, {report['load_after']} after"
    )
    print()
    header = f"{'target':22s} {'fmt':5s} {'p50 ms':>8s} {'p99 ms':>8s} {'+p50 ms':>8s}"
    print(header + f" {'paired':>8s} {'req/s c=64':>11s} {'x LiteLLM':>10s}  +p50 by round")
    for name, row in report["summary"].items():
        target, fmt = name.split("/")
        added, paired = row.get("added_p50_ms"), row.get("paired_p50_ms")
        x = row.get("x_litellm_c64")
        rounds = " ".join(f"{v:+.3f}" for v in row.get("added_by_round_ms", []))
        print(
            f"{LABELS[target]:22s} {fmt:5s} {row['p50_ms']:8.3f} {row['p99_ms']:8.3f} "
            f"{'-' if added is None else f'{added:+.3f}':>8s} "
            f"{'-' if paired is None else f'{paired:+.3f}':>8s} {row['rps_c64']:11.1f} "
            f"{'-' if x is None else x:>10}  {rounds}"
        )
    if report["litellm"] is None:
        print("LiteLLM proxy: not installed (pip install 'litellm[proxy]', or --litellm PATH)")
    free = [(n, r) for n, r in report["summary"].items() if "free_added_p50_ms" in r]
    if free:
        print(
            f"\nc=1 with every process where the scheduler puts it (not judged; above: all on "
            f"CPU {report['cpu']}):"
        )
        for name, row in free:
            target, fmt = name.split("/")
            rounds = " ".join(f"{v:+.3f}" for v in row["free_added_by_round_ms"])
            print(
                f"{LABELS[target]:22s} {fmt:5s} +p50 {row['free_added_p50_ms']:+.3f}  paired "
                f"{row['free_paired_p50_ms']:+.3f}  by round {rounds}"
            )
    probe = report.get("wakeup_probe")
    if probe:
        print(
            f"wake-up probe (a loopback round trip between two processes, 0.5 ms idle between "
            f"calls, p50): {probe['same_cpu_us']} us on one CPU, {probe['across_cpus_us']} us "
            "across two"
        )
    mem = report.get("memory")
    if mem:
        print(
            f"\nmemory: {mem['opened']} slow client streams open through cascade serve: "
            f"RSS {mem['rss_before_mib']} -> {mem['rss_open_mib']} MiB, "
            f"{mem['kib_per_stream']} KiB per stream (ramp {mem['ramp_s']} s)"
        )
    print("\ntargets:")
    print_targets(report["targets"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--streams", type=int, help="slow streams of the memory probe")
    parser.add_argument("--litellm", help="the litellm executable (default: on PATH)")
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="cascade serve's event loop (default auto: uvloop when installed)",
    )
    args = parser.parse_args(argv)
    install_loopback_guard()
    raise_fd_limit()
    rounds = 3 if args.quick else ROUNDS
    turns, burst = (TURNS // 2, BURST // 2) if args.quick else (TURNS, BURST)
    streams = args.streams or (500 if args.quick else STREAMS)
    exe = litellm_executable(args.litellm)
    cpu = one_cpu()
    probe = wakeup_probe()
    with tempfile.TemporaryDirectory() as tmp, server_process() as fleet:
        folder = Path(tmp)
        with gateway_process(gateway_config(folder, fleet), args.loop) as (gateway, pid, loop):
            litellm_ctx = litellm_process(exe, folder, fleet) if exe else None
            load_before = _load()
            with (
                bare_proxy_process(fleet, loop) as proxy,
                litellm_ctx or _nothing() as litellm_url,
            ):
                urls = {"direct": fleet, "proxy": proxy, "gateway": gateway}
                if litellm_url:
                    urls["litellm"] = litellm_url
                samples = asyncio.run(
                    measure(urls, rounds=rounds, turns=turns, burst=burst, cpu=cpu)
                )
            load_after = _load()
            summary = summarize(samples)
        slow = folder / "slow.toml"
        # one upstream connection per open stream: past the cascade's default pool (512),
        # streams would wait for a connection, not stay open
        slow.write_text(
            'max_connections = 10000\n[[tiers]]\nname = "only"\n'
            '[[tiers.providers]]\nname = "fleet"\nkind = "openai"\n'
            f'base_url = "{fleet}"\nmodel = "slow"\napi_key_env = ""\nstream = true\n'
            "timeout_s = 600\nmax_connections = 10000\n"
            '\n[[gateway.routes]]\nname = "sse"\ndefault = true\nmode = "speculative"\n'
        )
        with gateway_process(slow, args.loop) as (gateway, pid, _):
            memory = asyncio.run(memory_probe(gateway, pid, count=streams))
    report = {
        "versions": (
            f"cascade-engine {cascade.__version__}, aiohttp {aiohttp.__version__}, "
            f"Python {platform.python_version()}, cascade serve on {loop}, "
            f"LiteLLM proxy: {exe or 'not installed'}"
        ),
        "loop": loop,
        "cpu": cpu,
        "wakeup_probe": probe,
        "rounds": rounds,
        "turns": turns,
        "burst": burst,
        "load_before": load_before,
        "load_after": load_after,
        "litellm": exe,
        "summary": summary,
        "memory": memory,
        "targets": targets(summary),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 1 if any(t["pass"] is False for t in report["targets"]) else 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


def _load() -> str:
    """The 1-minute load average (a wall-clock figure is read against it)."""
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


if __name__ == "__main__":
    sys.exit(main())
