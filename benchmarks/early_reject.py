"""What early rejection on the stream saves: tokens, cost and latency.

    python benchmarks/early_reject.py [--requests N] [--json]

A fake OpenAI-compatible server (in this process, on loopback) streams tier 1's answers at
a steady pace: half of them start with prose although JSON was asked for (the other half
are valid JSON), each ~300 tokens long. Tier 2 answers JSON at once. The same tasks run
twice through the real engine: tier 1's `json_schema` validator with `early_reject = false`
(the answer is read to the end, then rejected) and `= true` (rejected at the first chunk
that cannot start JSON, and the upstream request is cancelled). Output tokens for an
answer cut short are estimated from the characters received (4 per token), which is what a
provider bills for a cancelled stream at most.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from typing import Any

import cascade
from cascade.testing import FakeOpenAIServer, FakeRequest, Reply

CHUNK_CHARS = 8  # ~2 tokens a chunk
CHUNK_DELAY_S = 0.004  # ~500 tokens/s, a fast model's streaming rate
PROSE = "Let me work through this step by step before giving the JSON you asked for. " * 16
JSON_ANSWER = json.dumps({"answer": 42, "explanation": "x" * 1150})
SCHEMA = {"type": "object", "required": ["answer"]}


def fleet(server: FakeOpenAIServer, seed: int) -> None:
    def small(request: FakeRequest) -> Reply:
        task = int(str(request.messages[-1]["content"]).split("#")[-1])
        prose = random.Random(seed * 100_003 + task).random() < 0.5
        text = PROSE if prose else JSON_ANSWER
        return Reply(text=text, chunk_chars=CHUNK_CHARS, chunk_delay_s=CHUNK_DELAY_S,
                     output_tokens=len(text) // 4)  # fmt: skip

    server.respond("small", small)
    server.script("large", Reply(text='{"answer": 42}', latency_s=0.02))


def config(url: str, *, early: bool) -> dict[str, Any]:
    validator = {"name": "json_schema", "schema": SCHEMA, "early_reject": early}
    return {
        "tiers": [
            {"name": "small", "validators": [validator], "providers": [
                {"name": "small-a", "kind": "openai", "base_url": url, "model": "small",
                 "stream": True, "input_cost_per_mtok": 0.5, "output_cost_per_mtok": 1.5}]},
            {"name": "large", "validators": [{"name": "json_schema", "schema": SCHEMA}],
             "providers": [
                {"name": "large-a", "kind": "openai", "base_url": url, "model": "large",
                 "input_cost_per_mtok": 30, "output_cost_per_mtok": 60}]},
        ]
    }  # fmt: skip


async def measure(url: str, *, early: bool, requests: int, concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    tier1_out = tier1_cost = total_cost = 0.0
    rejected = 0
    limit = asyncio.Semaphore(concurrency)
    async with cascade.Cascade.from_dict(config(url, early=early)) as engine:

        async def one(i: int) -> None:
            nonlocal tier1_out, tier1_cost, total_cost, rejected
            async with limit:
                t0 = time.perf_counter()
                result = await engine.run(
                    messages=[{"role": "user", "content": f"Answer as JSON. Task #{i}"}],
                    deadline_s=30,
                )
                latencies.append(time.perf_counter() - t0)
            first = result.attempts[0]
            tier1_out += first.output_tokens
            tier1_cost += first.cost_usd
            total_cost += result.cost_usd
            rejected += first.outcome == "rejected"

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(requests))), timeout=120)
        wall = time.perf_counter() - started
    ordered = sorted(latencies)
    return {
        "early_reject": early,
        "requests": requests,
        "tier1_rejected": rejected,
        "tier1_output_tokens": int(tier1_out),
        "tier1_cost_usd": tier1_cost,
        "total_cost_usd": total_cost,
        "latency_p50_ms": statistics.median(latencies) * 1000,
        "latency_p95_ms": ordered[int(0.95 * (len(latencies) - 1))] * 1000,
        "wall_s": wall,
    }


async def main_async(requests: int, concurrency: int, seed: int) -> dict[str, Any]:
    async with FakeOpenAIServer(record=False) as server:
        fleet(server, seed)
        off = await measure(server.url, early=False, requests=requests, concurrency=concurrency)
        on = await measure(server.url, early=True, requests=requests, concurrency=concurrency)
    return {
        "off": off,
        "on": on,
        "tier1_tokens_saved": 1 - on["tier1_output_tokens"] / off["tier1_output_tokens"],
        "latency_p50_saved_ms": off["latency_p50_ms"] - on["latency_p50_ms"],
        "latency_p95_saved_ms": off["latency_p95_ms"] - on["latency_p95_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = asyncio.run(main_async(args.requests, args.concurrency, args.seed))
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{args.requests} requests, concurrency {args.concurrency}, half of tier 1 starts "
          f"with prose; {CHUNK_CHARS} chars every {CHUNK_DELAY_S * 1000:.0f} ms")  # fmt: skip
    print(f"{'early_reject':<14}{'rejected':>9}{'t1 out tok':>12}{'t1 $':>10}{'total $':>10}"
          f"{'p50 ms':>9}{'p95 ms':>9}")  # fmt: skip
    for key in ("off", "on"):
        r = report[key]
        print(f"{key:<14}{r['tier1_rejected']:>9}{r['tier1_output_tokens']:>12}"
              f"{r['tier1_cost_usd']:>10.5f}{r['total_cost_usd']:>10.4f}"
              f"{r['latency_p50_ms']:>9.0f}{r['latency_p95_ms']:>9.0f}")  # fmt: skip
    print(f"tier-1 output tokens saved: {report['tier1_tokens_saved']:.1%}; "
          f"p50 latency saved: {report['latency_p50_saved_ms']:.0f} ms, "
          f"p95: {report['latency_p95_saved_ms']:.0f} ms")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
