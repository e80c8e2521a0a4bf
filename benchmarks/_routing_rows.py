"""The rows of ``routing_compare.py`` for the routers that learn nothing from a file:
``rules`` (``examples/mixed/rules.toml``), ``cost`` (its budget chosen on ``train``),
``first_of`` (those rules, then a learned router) and ``llm`` (what can be measured of
it offline). Each decision p50 is measured here, in the same run, on the same texts, with
the tier estimates the engine gives a router."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import anyio
import msgspec

from cascade import Cascade, Message, RequestOptions, load_config
from cascade._build import build_tiers
from cascade._config import Config
from cascade._eval import _accuracy, _cost, run_all
from cascade._progress import Progress
from cascade._scoring import Record, Scoring
from cascade._types import estimate_prompt_tokens
from cascade.routing import FirstOf, Router, RouteRequest, TierInfo, build_router
from cascade.routing.llm import DEFAULT_PROMPT
from cascade.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "examples" / "mixed" / "rules.toml"

T = TypeVar("T")

GPT35_PRICES = (0.50, 1.50)  # $ per million tokens, in / out: the llm router's rater


def run_config(
    config: Config, base_dir: Path, records: Sequence[Record], scoring: Scoring, router: Any = None
) -> dict[str, Any]:
    """``records`` through the engine with ``config`` (and ``router``, else the config's)."""
    cascade = Cascade(config, base_dir=base_dir, router=router)
    outcomes = anyio.run(
        lambda: run_all(
            cascade,
            [r.question for r in records],
            concurrency=16,
            progress=Progress(len(records), "", None),
        )
    )
    accuracy, exact = _accuracy(records, outcomes, scoring)
    return {"accuracy": accuracy, "exact": exact, "cost_usd": sum(_cost(o) for o in outcomes)}


def spread(items: Sequence[T], n: int) -> list[T]:
    """``n`` of ``items`` evenly spaced over them (all when fewer): mixed-replay's ``test``
    is ordered by task, so that its first 1,000 texts are AQuA and StrategyQA alone."""
    if len(items) <= n:
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def requests(config: Config, texts: Sequence[str], budget: float | None) -> list[RouteRequest]:
    """A RouteRequest per text, its tiers' estimates as the engine makes them
    (``engine/_route.py``: the prompt's estimated tokens and the output estimate at each
    tier's first provider's prices, times the calls one of its answers pays for)."""
    calls = [t.calls for t in build_tiers(config)]
    out = []
    for text in texts:
        messages = (Message(role="user", content=text),)
        in_tokens = estimate_prompt_tokens(messages)
        infos = []
        for i, tier in enumerate(config.tiers):
            p = tier.providers[0]
            out_tokens = p.max_tokens or config.estimate_output_tokens
            infos.append(
                TierInfo(
                    index=i + 1,
                    name=tier.name,
                    est_cost_usd=p.cost_usd(in_tokens, out_tokens) * calls[i],
                )
            )
        out.append(
            RouteRequest(
                messages=messages,
                options=RequestOptions(),
                tiers=tuple(infos),
                max_cost_usd=budget,
            )
        )
    return out


def decision_p50_us(router: Router, batch: Sequence[RouteRequest]) -> float:
    """The median of single ``await router.route(request)`` calls over ``batch`` (after
    one warm-up pass)."""

    async def go() -> float:
        for request in batch:
            await router.route(request)
        times = []
        for request in batch:
            t0 = time.perf_counter_ns()
            await router.route(request)
            times.append(time.perf_counter_ns() - t0)
        return statistics.median(times) / 1000

    return anyio.run(go)


def rules_row(
    test: Sequence[Record], scoring: Scoring, batch: Sequence[RouteRequest]
) -> dict[str, Any]:
    """``rules.toml`` (its own ``[router]``) over ``test``."""
    config = load_config(RULES)
    row = run_config(config, RULES.parent, test, scoring)
    row["p50_us"] = decision_p50_us(build_router(config.router or {}), batch)
    return row


def rules_without_default() -> Router:
    """``rules.toml``'s rules with no default: no opinion where no rule matches."""
    table = dict(load_config(RULES).router or {})
    table.pop("default", None)
    return build_router(table)


def first_of_row(
    routed: Path,
    test: Sequence[Record],
    scoring: Scoring,
    then: Router,
    batch: Sequence[RouteRequest],
) -> dict[str, Any]:
    """``first_of(rules.toml's rules, then)`` over ``routed``'s tiers."""
    router = FirstOf(routers=[rules_without_default(), then], name="first_of")
    row = run_config(load_config(routed), routed.parent, test, scoring, router)
    row["p50_us"] = decision_p50_us(router, batch)
    return row


def cost_budgets(config: Config, texts: Sequence[str]) -> list[float]:
    """The per-request budgets tried: each decile of the train questions' estimated cost
    at the dearest tier, and one below them all (no GPT-4 tier ever fits)."""
    estimates = sorted(max(t.est_cost_usd for t in r.tiers) for r in requests(config, texts, None))
    deciles = [estimates[len(estimates) * q // 10] for q in range(10)] + [estimates[-1]]
    return [round(estimates[0] * 0.5, 6), *sorted({round(q, 6) for q in deciles})]


COST_SHARES = (1.0, 0.5, 0.25)
"""The ``cost`` router's ``share`` values tried: below 1 it starts lower than the budget
allows, and the engine's budget check still lets the run escalate within the budget."""


def cost_row(
    routed: Path,
    train: Sequence[Record],
    test: Sequence[Record],
    scoring: Scoring,
    *,
    gpt4_train_cost: float,
    budget_share: float,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``cost`` router (``share`` in ``COST_SHARES``) with ``max_cost_usd`` = the
    budget whose routing of ``train`` is the most accurate at no more than
    ``budget_share`` of GPT-4's cost there (the cheapest when none is): each share with
    the budgets that put its start threshold (budget x share) at the deciles of
    ``cost_budgets``. Its ``test`` row and every candidate's ``train`` figures."""
    base = load_config(routed)
    thresholds = cost_budgets(base, [r.question for r in train])
    tried = []
    for share in COST_SHARES:
        for threshold in thresholds:
            budget = round(threshold / share, 6)
            config = cost_config(base, budget, share)
            got = run_config(config, routed.parent, train, scoring)
            share_of = got["cost_usd"] / gpt4_train_cost
            tried.append({"budget_usd": budget, "share": share, **got, "of_gpt4": share_of})
    within = [t for t in tried if t["of_gpt4"] <= budget_share]
    chosen = (
        max(within, key=lambda t: (t["exact"], -t["cost_usd"]))
        if within
        else min(tried, key=lambda t: t["cost_usd"])
    )
    config = cost_config(base, chosen["budget_usd"], chosen["share"])
    row = run_config(config, routed.parent, test, scoring)
    batch = requests(config, [r.question for r in spread(test, 1000)], chosen["budget_usd"])
    row["p50_us"] = decision_p50_us(build_router(config.router or {}), batch)
    row["budget_usd"], row["cost_share_param"] = chosen["budget_usd"], chosen["share"]
    row["train"] = chosen
    return row, tried


def cost_config(base: Config, budget: float, share: float) -> Config:
    return msgspec.structs.replace(
        base, max_cost_usd=budget, router={"kind": "cost", "share": share}
    )


async def llm_overhead(texts: Sequence[str]) -> dict[str, Any]:
    """What the ``llm`` router costs per decision through the engine, against the fake
    OpenAI server over loopback: run latency with the router less without it (p50, one
    request at a time; first with every rating asked, then all cached), and the rater's
    tokens as the server counts them (~4 characters a token) at GPT-3.5's prices. Beside
    it, the same with a router that decides in a few microseconds without a call
    (``cost`` with no budget: no opinion): the engine's own routing step."""

    def cfg(url: str, router: dict[str, Any] | None) -> Config:
        prices = {"input_cost_per_mtok": GPT35_PRICES[0], "output_cost_per_mtok": GPT35_PRICES[1]}
        providers = [
            {"name": name, "kind": "openai", "base_url": url, "model": name, **prices}
            for name in ("rater", "big")
        ]
        tiers = [{"name": p["name"], "providers": [p]} for p in providers]
        table: dict[str, Any] = {"tiers": tiers, "router": router, "router_timeout_s": 5.0}
        return Config.from_dict(table)

    async def timed(cascade: Cascade, text: str) -> tuple[int, Any]:
        t0 = time.perf_counter_ns()
        result = await cascade.run(messages=[{"role": "user", "content": text}])
        return time.perf_counter_ns() - t0, result

    async with FakeOpenAIServer() as server:
        server.respond("rater", lambda request: "3")
        server.respond("big", lambda request: "an answer")
        llm = {"kind": "llm", "provider": "rater", "thresholds": [3]}
        # the three in turn on each text, so that load drifting over the run is shared
        times: dict[str, list[int]] = {k: [] for k in ("bare", "step", "asked", "cached")}
        results = []
        async with (
            Cascade(cfg(server.url, None)) as plain,
            Cascade(cfg(server.url, {"kind": "cost"})) as trivial,
            Cascade(cfg(server.url, llm)) as routed,
        ):
            for text in texts[:20]:  # warm: connections, first-call costs
                await timed(plain, text)
                await timed(trivial, text)
            for pass_ in ("asked", "cached"):
                for text in texts:
                    times["bare"].append((await timed(plain, text))[0])
                    times["step"].append((await timed(trivial, text))[0])
                    took, result = await timed(routed, text)
                    times[pass_].append(took)
                    if pass_ == "asked":
                        results.append(result)
    rated = [a for r in results for a in r.attempts if a.tier == 0]
    tokens_in = statistics.fmean(a.input_tokens for a in rated)
    tokens_out = statistics.fmean(a.output_tokens for a in rated)
    p50 = {k: statistics.median(v) / 1000 for k, v in times.items()}
    return {
        "decisions": len(rated),
        "p50_run_us_without": p50["bare"],
        "p50_overhead_us": p50["asked"] - p50["bare"],
        "p50_overhead_cached_us": p50["cached"] - p50["bare"],
        "p50_overhead_step_us": p50["step"] - p50["bare"],
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "cost_usd_per_decision": math.fsum(a.cost_usd for a in rated) / len(rated),
        "prompt_chars": len(DEFAULT_PROMPT),
    }


def print_llm(llm: dict[str, Any], gpt4_per_request: float) -> None:
    """The llm row: what can be measured offline, and why its accuracy cannot."""
    print(
        "llm (a cheap model rates difficulty 1-5): accuracy and cost share not measurable "
        "offline: the replay records no difficulty ratings, so which tier it would pick "
        "is unknown. Measured through the engine against the fake OpenAI server "
        f"({llm['decisions']} requests, one at a time): decision overhead p50 "
        f"{llm['p50_overhead_us']:.0f} us asked, {llm['p50_overhead_cached_us']:.0f} us "
        f"cached (a run without a router: {llm['p50_run_us_without']:.0f} us; the engine's "
        f"routing step alone, with a router deciding in ~2 us: "
        f"{llm['p50_overhead_step_us']:.0f} us); per decision "
        f"{llm['input_tokens']:.0f} input + {llm['output_tokens']:.0f} output tokens "
        f"(~4 characters a token), ${llm['cost_usd_per_decision']:.7f} at GPT-3.5's "
        f"prices = {llm['cost_usd_per_decision'] / gpt4_per_request:.2%} of an "
        "always-gpt-4 request, paid on top of the tiers it routes to"
    )
