"""The engine's overhead against raw aiohttp and LiteLLM's Router, on one fake server.

    python benchmarks/overhead.py [--requests N] [--json] [--quick]

The fake OpenAI-compatible server runs in its own process; every client runs in this one,
on the same (default asyncio) event loop. Each round measures every client at concurrency
1 (sequential: p50, p99) and at concurrency 64 (throughput), in an order rotated per round;
the report takes medians over rounds. Added latency and throughput ratios are paired: the
median of the per-round differences (or ratios) against raw aiohttp in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import statistics
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
from _fleet import Call, fake_openai_server, install_loopback_guard, latency, throughput

import cascade

ANSWER = '{"answer": 42}'
PROMPT = "What is six times seven? Answer as JSON."
CONCURRENCY = 64
ROUNDS = 3
PHASE_LIMIT_S = 20.0  # every phase stops here, whatever its count
LITELLM_SHARE = 10  # LiteLLM is ~15-30x slower: give it 1/10 of the requests
TARGET_ADDED_P50_MS = 0.15
TARGET_VS_RAW = 0.7
TARGET_VS_LITELLM = 15.0
PRICES = {"tier1": (0.15, 0.60), "tier2": (2.50, 10.0), "tier3": (15.0, 75.0)}
LABELS = {
    "aiohttp": "raw aiohttp",
    "cascade": "cascade.run",
    "cascade_json_schema": "cascade.run + json_schema",
    "litellm": "LiteLLM Router",
}

Factory = Callable[[str], AbstractAsyncContextManager[Call]]


@asynccontextmanager
async def raw_aiohttp(url: str) -> AsyncIterator[Call]:
    """The baseline: one POST with a pre-encoded body, read and JSON-decoded."""
    endpoint = url + "/chat/completions"
    body = json.dumps(
        {"model": "tier1", "messages": [{"role": "user", "content": PROMPT}]}
    ).encode()
    headers = {"Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> str:
            async with session.post(endpoint, data=body, headers=headers) as resp:
                payload = json.loads(await resp.read())
            return payload["choices"][0]["message"]["content"]  # type: ignore[no-any-return]

        yield call


def cascade_config(url: str, *, validate: bool) -> dict[str, Any]:
    tiers = []
    for name, (cost_in, cost_out) in PRICES.items():
        provider = {
            "name": name,
            "kind": "openai",
            "base_url": url,
            "model": name,
            "input_cost_per_mtok": cost_in,
            "output_cost_per_mtok": cost_out,
        }
        tiers.append({"name": name, "providers": [provider], "validators": []})
    if validate:
        schema = {"type": "object", "required": ["answer"]}
        tiers[0]["validators"] = [{"name": "json_schema", "schema": schema}]
    return {"tiers": tiers}


def cascade_client(*, validate: bool) -> Factory:
    @asynccontextmanager
    async def factory(url: str) -> AsyncIterator[Call]:
        async with cascade.Cascade.from_dict(cascade_config(url, validate=validate)) as engine:
            messages = [{"role": "user", "content": PROMPT}]

            async def call() -> str:
                result = await engine.run(messages=messages)
                return result.text if result.tier == 1 else f"<tier {result.tier}>"

            yield call

    return factory


def litellm_version() -> str | None:
    if importlib.util.find_spec("litellm") is None:
        return None
    return importlib.metadata.version("litellm")


@asynccontextmanager
async def litellm_router(url: str) -> AsyncIterator[Call]:
    """LiteLLM's Router with the same three tiers as fallbacks; no telemetry, no cost map
    fetch (the loopback guard would refuse it anyway)."""
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    litellm.disable_hf_tokenizer_download = True
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "httpx"):
        logging.getLogger(name).setLevel(logging.ERROR)
    model_list = [
        {
            "model_name": name,
            "litellm_params": {"model": f"openai/{name}", "api_base": url, "api_key": "sk-fake"},
        }
        for name in PRICES
    ]
    router = litellm.Router(
        model_list=model_list, fallbacks=[{"tier1": ["tier2"]}, {"tier2": ["tier3"]}]
    )
    messages = [{"role": "user", "content": PROMPT}]

    async def call() -> str:
        response = await router.acompletion(model="tier1", messages=messages)
        return response.choices[0].message.content  # type: ignore[no-any-return]

    try:
        yield call
    finally:
        await litellm.close_litellm_async_clients()


async def warm_up(name: str, call: Call, *, count: int) -> None:
    """Open the connections and check every answer (outside any timed section)."""
    for _ in range(3):
        if (text := await call()) != ANSWER:
            raise RuntimeError(f"{LABELS[name]}: unexpected answer {text!r}")
    answers = await asyncio.gather(*(call() for _ in range(count)))
    if wrong := [a for a in answers if a != ANSWER]:
        raise RuntimeError(f"{LABELS[name]}: {len(wrong)} unexpected answers, e.g. {wrong[0]!r}")


async def measure(url: str, *, requests: int, rounds: int) -> dict[str, dict[str, list[Any]]]:
    clients: dict[str, Factory] = {
        "aiohttp": raw_aiohttp,
        "cascade": cascade_client(validate=False),
        "cascade_json_schema": cascade_client(validate=True),
    }
    if litellm_version() is not None:
        clients["litellm"] = litellm_router
    counts = {n: requests // LITELLM_SHARE if n == "litellm" else requests for n in clients}
    samples: dict[str, dict[str, list[Any]]] = {n: {"c1": [], "c64": []} for n in clients}
    async with AsyncExitStack() as stack:
        calls = {n: await stack.enter_async_context(f(url)) for n, f in clients.items()}
        for name, call in calls.items():
            await warm_up(name, call, count=2 * CONCURRENCY)
        names = list(calls)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                for _ in range(20):
                    await calls[name]()
                gc.collect()
                samples[name]["c1"].append(
                    await latency(calls[name], count=counts[name], time_limit_s=PHASE_LIMIT_S)
                )
            for name in order:
                await throughput(calls[name], count=CONCURRENCY, concurrency=CONCURRENCY,
                                 time_limit_s=PHASE_LIMIT_S)
                gc.collect()
                samples[name]["c64"].append(
                    await throughput(calls[name], count=counts[name], concurrency=CONCURRENCY,
                                     time_limit_s=PHASE_LIMIT_S)
                )
            print(f"round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    return samples


def summarize(samples: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, float]]:
    med = statistics.median
    raw = samples["aiohttp"]
    out: dict[str, dict[str, float]] = {}
    for name, s in samples.items():
        out[name] = {
            "p50_ms": med(x.p50_ms for x in s["c1"]),
            "p99_ms": med(x.p99_ms for x in s["c1"]),
            "added_p50_ms": med(x.p50_ms - b.p50_ms for x, b in zip(s["c1"], raw["c1"])),
            "rps_c64": med(s["c64"]),
            "vs_raw": med(x / b for x, b in zip(s["c64"], raw["c64"])),
            "c1_requests": sum(x.count for x in s["c1"]),
        }
    return out


def targets(summary: dict[str, dict[str, float]], cascade_vs_litellm: float | None) -> list[Any]:
    c = summary["cascade"]
    rows: list[Any] = [
        ("added p50 over raw aiohttp at c=1", f"<= {TARGET_ADDED_P50_MS} ms",
         round(c["added_p50_ms"], 3), c["added_p50_ms"] <= TARGET_ADDED_P50_MS),
        ("throughput vs raw aiohttp at c=64", f">= {TARGET_VS_RAW}x",
         round(c["vs_raw"], 3), c["vs_raw"] >= TARGET_VS_RAW),
    ]
    if cascade_vs_litellm is None:
        rows.append(("throughput vs LiteLLM Router", f">= {TARGET_VS_LITELLM}x", None, None))
    else:
        rows.append(("throughput vs LiteLLM Router", f">= {TARGET_VS_LITELLM}x",
                     round(cascade_vs_litellm, 2), cascade_vs_litellm >= TARGET_VS_LITELLM))
    return [dict(zip(("name", "target", "value", "pass"), row, strict=True)) for row in rows]


def print_table(report: dict[str, Any]) -> None:
    print(f"cascade-engine {report['versions']['cascade']}, aiohttp "
          f"{report['versions']['aiohttp']}, LiteLLM {report['versions']['litellm']}, "
          f"Python {report['versions']['python']}")
    print(f"{report['rounds']} rounds x {report['requests']} requests per phase "
          f"(LiteLLM: {report['requests'] // LITELLM_SHARE}); medians over rounds\n")
    print(f"{'client':<27} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} "
          f"{'req/s c=64':>11} {'x raw':>6}")
    for name, s in report["clients"].items():
        added = "-" if name == "aiohttp" else f"{s['added_p50_ms']:+.3f}"
        print(f"{LABELS[name]:<27} {s['p50_ms']:>8.3f} {s['p99_ms']:>8.3f} {added:>8} "
              f"{s['rps_c64']:>11.0f} {s['vs_raw']:>6.2f}")
    if "litellm" not in report["clients"]:
        print(f"{LABELS['litellm']:<27} not installed (pip install litellm)")
    x = report["cascade_vs_litellm"]
    print(f"\ncascade.run throughput = {'n/a' if x is None else f'{x:.1f}x'} LiteLLM Router's")
    print("\ntargets (cascade.run, no validators):")
    for t in report["targets"]:
        verdict = {True: "PASS", False: "MISS", None: "n/a "}[t["pass"]]
        print(f"  {verdict}  {t['name']}: {t['value']} (target {t['target']})")
    if report["refused_network"]:
        print(f"\nloopback guard refused: {', '.join(report['refused_network'])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=None,
                        help="requests per phase per client (LiteLLM gets a tenth)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    requests = args.requests or (600 if args.quick else 4000)
    if requests < 10 * LITELLM_SHARE:
        parser.error(f"--requests must be at least {10 * LITELLM_SHARE}")
    refused = install_loopback_guard()
    with fake_openai_server(ANSWER) as url:
        samples = asyncio.run(measure(url, requests=requests, rounds=ROUNDS))
    summary = summarize(samples)
    vs_litellm = None
    if "litellm" in samples:
        pairs = zip(samples["cascade"]["c64"], samples["litellm"]["c64"])
        vs_litellm = statistics.median(c / lite for c, lite in pairs)
    report = {
        "versions": {
            "cascade": cascade.__version__,
            "aiohttp": aiohttp.__version__,
            "litellm": litellm_version() or "not installed",
            "python": platform.python_version(),
        },
        "concurrency": CONCURRENCY,
        "rounds": ROUNDS,
        "requests": requests,
        "clients": summary,
        "cascade_vs_litellm": vs_litellm,
        "targets": targets(summary, vs_litellm),
        "refused_network": refused,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
