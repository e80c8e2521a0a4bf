"""Chaos: random faults on a share of calls; every request ends in time, typed, and nothing
leaks.

    python benchmarks/chaos.py [--requests 5000] [--concurrency 200] [--deadline-s 2]
                               [--margin-s 0.5] [--seed 1] [--fault-rate 0.3] [--json]

Seven providers in three tiers, each provider its own fake server (OpenAI-compatible or
Anthropic; in this process, on loopback), streaming and not, some with retries, one with a
rate limit, all with breakers. Chaotic providers get `cascade.testing.Chaos` on
``--fault-rate`` of their calls: 5xx, 429 with a Retry-After of 0-0.2 s, connections reset
mid-body, malformed bodies, hangs (cut by the provider's ``timeout_s``). Two scenarios run
one after the other:

- ``healthy``: every tier keeps one provider that never fails, after its chaotic ones: every
  request must end with a validated answer;
- ``no-healthy``: the same fleet with every provider chaotic: typed errors are expected.

Both must end every request within its deadline plus ``--margin-s`` with a Result or a
typed CascadeError, leave no task and no connection behind (client pool, servers, sockets),
keep the rate-limited provider under its quota as its server counts requests, and send a
half-open provider a second probe only after the first was abandoned. Exit status 1 on any
FAIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from _fleet import install_loopback_guard

import cascade
from cascade.testing import (
    Chaos,
    FakeAnthropicServer,
    FakeOpenAIServer,
    FakeRequest,
    Reply,
)

ANSWER = '{"answer": 42}'
PROSE = "The answer is forty-two, I believe."  # valid wire format, rejected by json_schema
SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "number"}}}
CHAOS_TIMEOUT_S = 0.2  # cuts a hang; the whole call, connect to last byte
RETRY = {"attempts": 2, "base_s": 0.02, "max_s": 0.1}  # honours Retry-After up to 0.1 s
BREAKER = {"fail_max": 3, "reset_timeout_s": 0.5}
LIMITED = "s-claude"
LIMITS = {"requests_per_minute": 300, "burst_s": 2.0}  # 5 req/s, 10 in the bucket
# Grant-to-arrival slack allowed at the server (1 request at 5 req/s): the servers share the
# loop with 200 runs, so a request granted at t may be read a loop stall later.
JITTER_S = 0.2
SETTLE_S = 5.0  # bound on waiting for connections and tasks to go after the run
HUNG_AFTER_S = 10.0  # a run still going this long past its deadline counts as hung


def task_of(request: FakeRequest) -> int:
    return int(str(request.messages[-1]["content"]).rsplit("#", 1)[-1])


# Which answers a tier's models give (every provider of a tier alike): tier 1 rejects a
# fifth of the tasks, tier 2 a twenty-fifth, so every tier is reached.
def small(request: FakeRequest) -> Reply:
    return Reply(text=PROSE if task_of(request) % 5 == 0 else ANSWER, chunk_chars=5)


def medium(request: FakeRequest) -> Reply:
    return Reply(text=PROSE if task_of(request) % 25 == 0 else ANSWER, chunk_chars=5)


def large(request: FakeRequest) -> Reply:
    return Reply(text=ANSWER, chunk_chars=5)


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    tier: str
    stream: bool
    healthy: bool  # in the ``healthy`` scenario; every provider is chaotic in ``no-healthy``
    extra: dict[str, Any] = field(default_factory=dict)


FLEET = [
    Spec("s-openai", "openai", "small", True, False, {"retry": RETRY}),
    Spec("s-claude", "anthropic", "small", False, False, {"limits": LIMITS}),
    Spec("s-ok", "openai", "small", False, True),
    Spec("m-claude", "anthropic", "medium", True, False, {"retry": RETRY}),
    Spec("m-ok", "anthropic", "medium", True, True),
    Spec("l-openai", "openai", "large", False, False),
    Spec("l-ok", "openai", "large", True, True),
]
ANSWERS: dict[str, Callable[[FakeRequest], Reply]] = {
    "small": small,
    "medium": medium,
    "large": large,
}


def worst_case_s() -> float:
    """The longest a request can spend on chaotic providers before a healthy one answers:
    every try hangs until its timeout, every retry waits its longest backoff."""
    total = 0.0
    for spec in FLEET:
        if spec.healthy:
            continue
        tries = spec.extra.get("retry", {}).get("attempts", 1)
        total += tries * CHAOS_TIMEOUT_S + (tries - 1) * RETRY["max_s"]
    return total


def config(urls: dict[str, str], *, deadline_s: float) -> dict[str, Any]:
    tiers: dict[str, dict[str, Any]] = {}
    for spec in FLEET:
        tier = tiers.setdefault(
            spec.tier,
            {"name": spec.tier, "providers": [],
             "validators": [{"name": "json_schema", "schema": SCHEMA}]},
        )  # fmt: skip
        tier["providers"].append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "base_url": urls[spec.name],
                "model": spec.name,
                "stream": spec.stream,
                "input_cost_per_mtok": 1.0,
                "output_cost_per_mtok": 2.0,
                # A healthy provider may be slow under load, never dead: only the run's
                # deadline bounds it.
                "timeout_s": deadline_s if spec.healthy else CHAOS_TIMEOUT_S,
                "breaker": BREAKER,
                **spec.extra,
            }
        )
    return {"tiers": list(tiers.values())}


class Fleet:
    """One fake server per provider (as each deployment is its own endpoint), the chaos, and
    when each server received each request."""

    def __init__(self, *, seed: int, rate: float, healthy: bool) -> None:
        self.chaos = Chaos(self._answer, rate=rate, seed=seed)
        self.by_name: dict[str, FakeOpenAIServer | FakeAnthropicServer] = {}
        self.arrivals: dict[str, list[float]] = {spec.name: [] for spec in FLEET}
        for spec in FLEET:
            server = (FakeOpenAIServer if spec.kind == "openai" else FakeAnthropicServer)(
                record=False
            )
            self.by_name[spec.name] = server
            server.respond(spec.name, self._healthy if healthy and spec.healthy else self._chaotic)

    def _answer(self, request: FakeRequest) -> Reply:
        spec = next(s for s in FLEET if s.name == request.model)
        return ANSWERS[spec.tier](request)

    def _arrive(self, request: FakeRequest) -> None:
        self.arrivals[request.model].append(asyncio.get_running_loop().time())

    def _healthy(self, request: FakeRequest) -> Reply:
        self._arrive(request)
        return self._answer(request)

    async def _chaotic(self, request: FakeRequest) -> Reply:
        self._arrive(request)
        return await self.chaos(request)

    async def __aenter__(self) -> Fleet:
        for server in self.by_name.values():
            await server.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for server in self.by_name.values():
            await server.aclose()

    @property
    def servers(self) -> list[FakeOpenAIServer | FakeAnthropicServer]:
        return list(self.by_name.values())

    @property
    def urls(self) -> dict[str, str]:
        return {name: server.url for name, server in self.by_name.items()}


class LoopLag:
    """How late the event loop wakes a 10 ms sleeper: the loop's own stalls, under load."""

    def __init__(self) -> None:
        self.max_s = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(0.01)
            self.max_s = max(self.max_s, loop.time() - t0 - 0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def open_sockets() -> int | None:
    """Sockets this process has open (Linux /proc), listening ones included."""
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return None
    count = 0
    for fd in fds:
        with contextlib.suppress(OSError):  # closed since listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def settle(check: Callable[[], bool]) -> None:
    """Poll ``check`` for up to SETTLE_S: cleanup on the far side of a socket takes a few
    loop turns. Whatever still fails afterwards is reported, not waited for."""
    loop = asyncio.get_running_loop()
    stop = loop.time() + SETTLE_S
    while True:
        if check() or loop.time() > stop:
            return
        await asyncio.sleep(0.01)


def max_excess(times: list[float], *, rate_per_s: float, burst: float) -> float:
    """Largest ``count - (burst + rate * (span + JITTER_S))`` over every window of arrivals:
    above 0, the server saw more requests in some window than the limit allows."""
    times = sorted(times)
    worst = -burst
    for i in range(len(times)):
        for j in range(i, len(times)):
            span = times[j] - times[i]
            allowed = burst + rate_per_s * (span + JITTER_S)
            if j - i + 1 - allowed > worst:
                worst = j - i + 1 - allowed
            if span > 60:
                break
    return worst


def half_open_probes(
    windows: list[tuple[float, float]], arrivals: list[float], abandoned: list[float]
) -> list[tuple[int, bool]]:
    """Per half-open window (OPEN->HALF_OPEN until it closes or reopens): how many requests
    the provider's server got in it, and whether each one after the first came after one
    more attempt on that provider was abandoned by its run's deadline (an abandoned probe
    frees the slot; a probe still running never does). ``abandoned``: when runs ended that
    recorded an attempt on the provider cut by the deadline."""
    out = []
    for start, end in windows:
        seen = [t for t in arrivals if start <= t <= end]
        ok = all(sum(start <= a <= t for a in abandoned) >= k for k, t in enumerate(seen) if k)
        out.append((len(seen), ok))
    return out


async def scenario(
    name: str, *, requests: int, concurrency: int, deadline_s: float, seed: int, rate: float,
    margin_s: float, time_limit_s: float,
) -> dict[str, Any]:  # fmt: skip
    loop = asyncio.get_running_loop()
    healthy = name == "healthy"
    transitions: Counter[tuple[str, str]] = Counter()
    half_open_at: dict[str, float] = {}
    windows: dict[str, list[tuple[float, float]]] = {spec.name: [] for spec in FLEET}
    abandoned: dict[str, list[float]] = {spec.name: [] for spec in FLEET}

    def on_change(provider: str, old: str, new: str) -> None:
        transitions[(old, new)] += 1
        now = loop.time()
        if new == "half_open":
            half_open_at[provider] = now
        elif old == "half_open":
            windows[provider].append((half_open_at.pop(provider), now))

    async with Fleet(seed=seed, rate=rate, healthy=healthy) as fleet:
        baseline_tasks = asyncio.all_tasks()
        sockets_before = open_sockets()
        cfg = config(fleet.urls, deadline_s=deadline_s)
        outcomes: Counter[str] = Counter()
        untyped: list[str] = []
        latencies: list[float] = []
        overshoots: list[float] = []
        hung = 0
        validated = 0
        slowest: tuple[float, str, list[str]] = (-1.0, "", [])
        left = requests
        engine = cascade.Cascade.from_dict(cfg, breaker_listeners=[on_change])
        await engine.open()

        async def one(i: int) -> None:
            nonlocal hung, validated, slowest
            attempts: tuple[cascade.Attempt, ...] = ()
            messages = [{"role": "user", "content": f"What is 6 * 7? As JSON. Task #{i}"}]
            t0 = loop.time()
            watchdog = asyncio.timeout(deadline_s + HUNG_AFTER_S)
            try:
                async with watchdog:
                    result = await engine.run(messages=messages, deadline_s=deadline_s)
            except cascade.CascadeError as exc:
                outcome = type(exc).__name__
                attempts = exc.attempts if isinstance(exc, cascade.RunError) else ()
            except TimeoutError as exc:
                outcome = "hung" if watchdog.expired() else "untyped"
                if outcome == "untyped":
                    untyped.append("".join(traceback.format_exception(exc)))
            except Exception as exc:
                outcome = "untyped"
                untyped.append("".join(traceback.format_exception(exc)))
            else:
                outcome = "Result"
                validated += result.validated
                attempts = result.attempts
            t1 = loop.time()
            for attempt in attempts:
                if attempt.error_type == "DeadlineExceeded":  # in flight when time ran out
                    abandoned[attempt.provider].append(t1)
            if outcome == "hung":
                hung += 1
            else:
                outcomes[outcome] += 1
            if t1 - t0 > slowest[0]:
                path = [f"{a.provider} {a.error_type or a.outcome} {a.latency_s:.3f}s"
                        for a in attempts]  # fmt: skip
                slowest = (t1 - t0, outcome, path)
            latencies.append(t1 - t0)
            overshoots.append(t1 - t0 - deadline_s)

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await one(requests - left)
                # A run refused by open breakers never suspends: without this, one worker
                # would run through the queue and starve the servers and every other run.
                await asyncio.sleep(0)

        lag = LoopLag()
        lag.start()
        t_start = loop.time()
        capped = False
        try:
            async with asyncio.timeout(time_limit_s), asyncio.TaskGroup() as tg:
                for _ in range(concurrency):
                    tg.create_task(worker())
        except TimeoutError:
            capped = True  # the wall-clock cap cancelled what was left
        elapsed = loop.time() - t_start
        await lag.stop()

        # the engine's own pools, one per provider (read only, to count their conns)
        pools = [s.connector for s in engine._pools.values()]
        assert pools
        assert all(isinstance(p, aiohttp.TCPConnector) for p in pools)
        in_use_after = sum(len(p._acquired) for p in pools if p is not None)
        idle_after = sum(len(c) for p in pools if p is not None for c in p._conns.values())
        await engine.aclose()
        # The server sees the client's sockets close a moment later.
        await settle(lambda: not any(s.active_connections for s in fleet.servers))
        server_conns_after = sum(s.active_connections for s in fleet.servers)

        def leftover() -> set[asyncio.Task[Any]]:
            return asyncio.all_tasks() - baseline_tasks - {asyncio.current_task()}

        await settle(lambda: not leftover())
        leaked = leftover()
        sockets_after = open_sockets()
        server_requests = {s.name: len(fleet.arrivals[s.name]) for s in FLEET}
        limited = fleet.arrivals[LIMITED]
        rate_per_s = LIMITS["requests_per_minute"] / 60
        excess = max_excess(limited, rate_per_s=rate_per_s, burst=rate_per_s * LIMITS["burst_s"])
        in_windows = [
            window
            for spec in FLEET
            for window in half_open_probes(
                windows[spec.name], fleet.arrivals[spec.name], abandoned[spec.name]
            )
        ]
        probes = [n for n, _ in in_windows]
        probes_sequential = all(ok for _, ok in in_windows)
        disconnects = sum(s.disconnects for s in fleet.servers)

    done = sum(outcomes.values()) + hung
    quantiles = statistics.quantiles(latencies, n=100, method="inclusive")
    report: dict[str, Any] = {
        "scenario": name,
        "requests": requests,
        "completed": done,
        "elapsed_s": round(elapsed, 2),
        "wall_clock_capped": capped,
        "results": outcomes["Result"],
        "validated": validated,
        "typed_errors": {
            k: v for k, v in sorted(outcomes.items()) if k not in ("Result", "untyped")
        },
        "untyped_errors": outcomes["untyped"],
        "untyped_examples": untyped[:3],
        "hung": hung,
        "latency_p50_ms": round(statistics.median(latencies) * 1e3, 1),
        "latency_p99_ms": round(quantiles[98] * 1e3, 1),
        "latency_max_ms": round(max(latencies) * 1e3, 1),
        "max_overshoot_ms": round(max(overshoots) * 1e3, 1),
        "max_loop_lag_ms": round(lag.max_s * 1e3, 1),
        "late_runs": sum(o > margin_s for o in overshoots),
        "slowest_run": {"ms": round(slowest[0] * 1e3, 1), "outcome": slowest[1],
                        "attempts": slowest[2]},
        "tasks_leaked": len(leaked),
        "leaked_tasks": [repr(t)[:200] for t in list(leaked)[:3]],
        "client_conns_in_use_after_run": in_use_after,
        "client_conns_idle_after_run": idle_after,
        "server_conns_after_aclose": server_conns_after,
        "sockets_leaked": (
            None if sockets_before is None or sockets_after is None
            else sockets_after - sockets_before
        ),
        "server_disconnects": disconnects,
        "chaotic_calls": {k: v for k, v in fleet.chaos.counts.items() if v},
        "fault_share": round(fleet.chaos.faults_injected / max(1, fleet.chaos.calls), 3),
        "server_requests": server_requests,
        "breaker_transitions": {f"{a}->{b}": n for (a, b), n in sorted(transitions.items())},
        "half_open_windows": len(probes),
        "max_requests_per_half_open_window": max(probes, default=0),
        "half_open_windows_with_a_second_probe": sum(n > 1 for n in probes),
        "second_probes_only_after_an_abandoned_one": probes_sequential,
        "limited_provider": LIMITED,
        "limited_requests": len(limited),
        "limit_excess": round(excess, 2),
    }  # fmt: skip
    checks = [
        ("every request ended (no hung run)", hung == 0 and done == requests and not capped),
        ("no untyped exception", outcomes["untyped"] == 0),
        (f"ended within deadline + {margin_s * 1e3:.0f} ms", max(overshoots) <= margin_s),
        ("no task left behind", not leaked),
        ("no client connection in use after the run", in_use_after == 0),
        ("no server connection after aclose", server_conns_after == 0),
        ("no socket left open", report["sockets_leaked"] in (0, None)),
        (f"{LIMITED} under its quota at the server", excess <= 0),
        ("half-open: a new probe only after the last was abandoned", probes_sequential),
    ]
    if healthy:
        checks.append(("100% validated answers", validated == requests))
    report["checks"] = [{"name": n, "pass": bool(ok)} for n, ok in checks]
    return report


def print_report(report: dict[str, Any]) -> None:
    r = report
    print(f"\n== {r['scenario']}: {r['completed']}/{r['requests']} requests in {r['elapsed_s']} s")
    print(
        f"  results {r['results']} (validated {r['validated']}), typed errors "
        f"{r['typed_errors'] or 0}, untyped {r['untyped_errors']}, hung {r['hung']}"
    )
    print(
        f"  latency p50 {r['latency_p50_ms']} ms, p99 {r['latency_p99_ms']} ms, max "
        f"{r['latency_max_ms']} ms; max overshoot past the deadline {r['max_overshoot_ms']} ms"
        f" (event loop lag up to {r['max_loop_lag_ms']} ms); {r['late_runs']} runs past the margin"
    )
    print(f"  chaotic calls ({r['fault_share']:.1%} faulted): {r['chaotic_calls']}")
    slow = r["slowest_run"]
    print(f"  slowest run: {slow['ms']} ms, {slow['outcome']}: {', '.join(slow['attempts'])}")
    print(f"  server requests: {r['server_requests']}")
    print(
        f"  breaker transitions: {r['breaker_transitions']}; half-open windows "
        f"{r['half_open_windows']}, max requests in one {r['max_requests_per_half_open_window']}"
        f" ({r['half_open_windows_with_a_second_probe']} windows had a second probe, each "
        f"after an abandoned one: {r['second_probes_only_after_an_abandoned_one']})"
    )
    print(
        f"  {r['limited_provider']}: {r['limited_requests']} requests, worst window "
        f"{r['limit_excess']:+} over its limit"
    )
    print(
        f"  after: tasks leaked {r['tasks_leaked']}, client conns in use "
        f"{r['client_conns_in_use_after_run']} (idle {r['client_conns_idle_after_run']}), "
        f"server conns after aclose {r['server_conns_after_aclose']}, sockets leaked "
        f"{r['sockets_leaked']}, server-side disconnects {r['server_disconnects']}"
    )
    for example in r["untyped_examples"]:
        print(example)
    for t in r["leaked_tasks"]:
        print(f"  leaked: {t}")
    for check in r["checks"]:
        print(f"  {'PASS' if check['pass'] else 'FAIL'}  {check['name']}")  # fmt: skip


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    reports = []
    for name in ("healthy", "no-healthy"):
        reports.append(
            await scenario(
                name, requests=args.requests, concurrency=args.concurrency,
                deadline_s=args.deadline_s, seed=args.seed, rate=args.fault_rate,
                margin_s=args.margin_s, time_limit_s=args.time_limit_s,
            )
        )  # fmt: skip
        if not args.json:
            print_report(reports[-1])
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000, help="requests per scenario")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--deadline-s", type=float, default=2.0, help="each run's deadline")
    parser.add_argument("--margin-s", type=float, default=0.5, help="allowed past deadline")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--time-limit-s", type=float, default=300.0, help="per scenario")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.requests < 2 or args.concurrency < 1:
        parser.error("--requests must be at least 2 and --concurrency at least 1")
    if worst_case_s() >= args.deadline_s:
        parser.error(f"--deadline-s must exceed {worst_case_s():.2f} s, the longest a request "
                     "can spend on chaotic providers")  # fmt: skip
    refused = install_loopback_guard()
    reports = asyncio.run(run_all(args))
    ok = all(c["pass"] for r in reports for c in r["checks"]) and not refused
    summary = {
        "versions": {
            "cascade-engine": cascade.__version__,
            "aiohttp": aiohttp.__version__,
            "Python": platform.python_version(),
        },
        "args": vars(args),
        "worst_case_chaos_s": round(worst_case_s(), 3),
        "scenarios": reports,
        "refused_network": refused,
        "pass": ok,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"\nworst case on chaotic providers per request: {worst_case_s():.2f} s "
              f"(deadline {args.deadline_s} s)")  # fmt: skip
        print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
