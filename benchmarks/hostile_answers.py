"""Loop lag and healthy-run latency while other runs receive hostile answers.

    python benchmarks/hostile_answers.py [--runs N] [--rounds R] [--size CHARS] [--json]
                                         [--family NAME ...]

A fake OpenAI-compatible server runs in a child process, scripted per model: ``healthy``
answers ``{"answer": 42}`` after 20 ms, each ``hostile-*`` model answers one adversarial
text (the families that froze the loop before: blanks after "confidence", a run of
digits, blanks after a fence, newlines after "answer:", ``uniqueItems`` over 5,000
objects, an exponential user regex), and ``big`` (tier 2 of the hostile runs) a healthy
answer.

Two phases on one asyncio loop, each with a ticker task that sleeps 1 ms and records how
late it wakes (the loop lag):

- quiet: ``N`` healthy runs (10 workers, each running its share in turn), alone;
- hostile: the same healthy runs next to ``N`` hostile runs (20 workers, the families in
  turn), each of which must be rejected at tier 1 and escalate.

Each of ``R`` rounds (default 3) runs both phases; the ratio is the median of the rounds'
(a p99 of 100 runs is one or two runs: a single round is noisy on a shared machine).
Target (PASS/MISS, exit status 1 on a miss): the healthy runs' p99 latency in the hostile
phase within 2x the quiet phase's, measured in the same process, and every hostile run
escalated. The process refuses any non-loopback connection. ~30-60 s on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from time import perf_counter
from typing import Any

from _fleet import install_loopback_guard, listening_child

import cascade
from cascade.testing import FakeOpenAIServer, Reply

HEALTHY = '{"answer": 42}'
SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "number"}}}
HEALTHY_WORKERS = 10
HOSTILE_WORKERS = 20
TICK_S = 0.001
TARGET_P99_RATIO = 2.0
TIME_LIMIT_S = 1.0  # each validator's time_limit_s
PHASE_LIMIT_S = 120.0


ONLY: list[str] = []  # --family: run these families only


def families(size: int) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Each hostile family: its answer text and the tier-1 validators it meets."""
    every = _families(size)
    return {name: every[name] for name in ONLY} if ONLY else every


def _families(size: int) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    schema = {"name": "json_schema", "schema": SCHEMA, "time_limit_s": TIME_LIMIT_S}
    confidence = {"name": "confidence", "min": 0.8, "source": "text", "time_limit_s": TIME_LIMIT_S}
    vote = {"name": "self_consistency", "samples": 1, "time_limit_s": TIME_LIMIT_S}
    unique = {"type": "array", "uniqueItems": True}
    return {
        "confidence-blanks": ("confidence" + " " * size + "x", [confidence]),
        "digits": ("1" * size, [confidence]),
        "fence-blanks": ("```" + " " * size + "x", [schema]),
        "answer-newlines": ("answer:" + "\n" * size, [vote]),
        "unique-items": (
            json.dumps([{"a": i % 7, "b": [i]} for i in range(5000)]),
            [{**schema, "schema": unique}],
        ),
        "user-regex": ("a" * 60, [{**vote, "extractor": "regex:(a|a)+b"}]),
    }


# -- the server, in its own process ------------------------------------------------------------


async def _serve(size: int) -> None:
    server = FakeOpenAIServer(record=False)
    server.script("healthy", Reply(text=HEALTHY, latency_s=0.02))
    server.script("big", Reply(text=HEALTHY, latency_s=0.02))
    for name, (text, _) in families(size).items():
        server.script(f"hostile-{name}", text)
    async with server:
        print(f"listening on {server.url}", flush=True)
        await asyncio.Event().wait()


@contextmanager
def scripted_server(size: int) -> Iterator[str]:
    """This script in ``--serve`` mode in a child process; yields its ``/v1`` URL."""
    cmd = [sys.executable, __file__, "--serve", "--size", str(size)]
    with listening_child(cmd, "fake server", start_timeout_s=30.0) as url:
        yield url


# -- the phases --------------------------------------------------------------------------------


def _provider(url: str, model: str) -> dict[str, Any]:
    return {"name": model, "kind": "openai", "base_url": url, "model": model, "timeout_s": 30}


def _tier(name: str, provider: dict[str, Any], validators: list[Any]) -> dict[str, Any]:
    return {"name": name, "providers": [provider], "validators": validators}


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[98]


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t0 = perf_counter()
        await asyncio.sleep(TICK_S)
        lags.append(perf_counter() - t0 - TICK_S)


async def phase(
    url: str, runs: int, size: int, *, hostile: bool
) -> tuple[list[float], list[float], list[cascade.Result]]:
    """Healthy latencies (s), loop lags (s) and the hostile runs' results."""
    check = [{"name": "json_schema", "schema": SCHEMA}]
    healthy_cfg = {"tiers": [_tier("t1", _provider(url, "healthy"), check)]}
    hostile_cascades = []
    for name, (_, validators) in families(size).items():
        first = _tier("t1", _provider(url, f"hostile-{name}"), validators)
        cfg = {"tiers": [first, _tier("t2", _provider(url, "big"), [])]}
        hostile_cascades.append(cascade.Cascade.from_dict(cfg))
    messages = [{"role": "user", "content": "What is six times seven? Answer as JSON."}]
    latencies: list[float] = []
    lags: list[float] = []
    results: list[cascade.Result] = []
    stop = asyncio.Event()
    async with cascade.Cascade.from_dict(healthy_cfg) as healthy_cc:
        for cc in hostile_cascades:
            await cc.__aenter__()
        try:
            # warm up: connections, and the schema worker process started once
            await healthy_cc.run(messages=messages)
            for cc in hostile_cascades:
                await cc.run(messages=messages)

            async def healthy_worker(count: int) -> None:
                for _ in range(count):
                    t0 = perf_counter()
                    result = await healthy_cc.run(messages=messages)
                    latencies.append(perf_counter() - t0)
                    if not (result.validated and result.tier == 1):
                        raise RuntimeError(f"a healthy run failed: {result.attempts}")

            async def hostile_worker(first: int, count: int) -> None:
                for k in range(first, first + count):
                    cc = hostile_cascades[k % len(hostile_cascades)]
                    results.append(await cc.run(messages=messages))

            async with asyncio.timeout(PHASE_LIMIT_S), asyncio.TaskGroup() as tg:
                ticker = tg.create_task(_ticker(lags, stop))
                jobs = [tg.create_task(healthy_worker(n)) for n in _shares(runs, HEALTHY_WORKERS)]
                if hostile:
                    start = 0
                    for n in _shares(runs, HOSTILE_WORKERS):
                        jobs.append(tg.create_task(hostile_worker(start, n)))
                        start += n
                await asyncio.gather(*jobs)
                stop.set()
                await ticker
        finally:
            for cc in hostile_cascades:
                await cc.__aexit__(None, None, None)
    return latencies, lags, results


def _shares(total: int, workers: int) -> list[int]:
    return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]


async def bench(url: str, runs: int, size: int, rounds: int) -> dict[str, Any]:
    """``rounds`` x (quiet phase, hostile phase); the ratio is the median of the rounds'."""
    per_round = []
    quiet_lat: list[float] = []
    quiet_lag: list[float] = []
    busy_lat: list[float] = []
    busy_lag: list[float] = []
    results: list[cascade.Result] = []
    for _ in range(rounds):
        q_lat, q_lag, _ = await phase(url, runs, size, hostile=False)
        b_lat, b_lag, b_results = await phase(url, runs, size, hostile=True)
        per_round.append(_p99(b_lat) / _p99(q_lat))
        quiet_lat += q_lat
        quiet_lag += q_lag
        busy_lat += b_lat
        busy_lag += b_lag
        results += b_results
    escalated = sum(1 for r in results if r.tier == 2 and not r.attempts[0].verdicts[0].passed)
    reasons = sorted({r.attempts[0].verdicts[0].reason[:70] for r in results})
    ratio = statistics.median(per_round)
    return {
        "runs": runs,
        "rounds": rounds,
        "size_chars": size,
        "quiet": {"p50_ms": statistics.median(quiet_lat) * 1e3, "p99_ms": _p99(quiet_lat) * 1e3,
                  "lag_p99_ms": _p99(quiet_lag) * 1e3, "lag_max_ms": max(quiet_lag) * 1e3},
        "hostile": {"p50_ms": statistics.median(busy_lat) * 1e3, "p99_ms": _p99(busy_lat) * 1e3,
                    "lag_p99_ms": _p99(busy_lag) * 1e3, "lag_max_ms": max(busy_lag) * 1e3},
        "p99_ratio": ratio,
        "p99_ratio_per_round": per_round,
        "hostile_runs": len(results),
        "escalated": escalated,
        "reasons": reasons,
        "pass": ratio <= TARGET_P99_RATIO and escalated == len(results) == runs * rounds,
    }  # fmt: skip


def report(figures: dict[str, Any], refused: list[str]) -> None:
    q, h = figures["quiet"], figures["hostile"]
    print(f"{figures['runs']} healthy runs, {figures['runs']} hostile runs "
          f"({figures['size_chars']:,}-char families), time_limit_s = {TIME_LIMIT_S:g}, "
          f"{figures['rounds']} rounds (latency and lag over all rounds)")  # fmt: skip
    print(f"{'':24}{'p50 ms':>10}{'p99 ms':>10}{'lag p99 ms':>12}{'lag max ms':>12}")
    for label, f in (("healthy, quiet", q), ("healthy, next to hostile", h)):
        print(f"{label:24}{f['p50_ms']:>10.1f}{f['p99_ms']:>10.1f}"
              f"{f['lag_p99_ms']:>12.1f}{f['lag_max_ms']:>12.1f}")  # fmt: skip
    verdict = "PASS" if figures["pass"] else "MISS"
    rounds = ", ".join(f"{r:.2f}x" for r in figures["p99_ratio_per_round"])
    print(f"healthy p99 ratio (hostile / quiet), median of rounds ({rounds}): "
          f"{figures['p99_ratio']:.2f}x (target <= {TARGET_P99_RATIO:g}x) {verdict}")  # fmt: skip
    print(f"hostile runs rejected at tier 1 and escalated: {figures['escalated']}/"
          f"{figures['hostile_runs']}")  # fmt: skip
    for reason in figures["reasons"]:
        print(f"  reason: {reason}")
    print(f"non-loopback attempts refused: {len(refused)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=100, help="healthy and hostile runs each")
    parser.add_argument("--size", type=int, default=200_000, help="hostile text length")
    parser.add_argument("--rounds", type=int, default=3, help="quiet + hostile phase pairs")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument(
        "--family", action="append", default=[], choices=sorted(_families(1)),
        help="run only this hostile family (repeatable)",
    )  # fmt: skip
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    ONLY.extend(args.family)
    if args.serve:
        asyncio.run(_serve(args.size))
        return 0
    if args.runs < HOSTILE_WORKERS or args.rounds < 1:
        parser.error(f"--runs must be >= {HOSTILE_WORKERS}, --rounds >= 1")
    refused = install_loopback_guard()
    with scripted_server(args.size) as url:
        figures = asyncio.run(bench(url, args.runs, args.size, args.rounds))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        report(figures, refused)
    return 0 if figures["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
