"""``cascade demo``: a seeded, simulated three-tier fleet on loopback, run through the real
engine, compared with always calling the top tier.

The simulation (ours, seeded): receipts with 2-5 priced items; the model must answer with
the items and the total as JSON. Tier 1 is cheap and fast but often malformed or wrong;
tier 2 is better; tier 3 is slow, expensive and right. Two validators decide: the built-in
``json_schema`` and ``receipt_total`` below, a user-style validator registered through the
public ``@cascade.validator`` path that checks the total is the sum of the items. Some wrong
answers are consistent (a misread price summed correctly): no validator can catch those,
which is why accuracy is measured against the ground truth, not assumed.
"""

from __future__ import annotations

import random
import re
import sys
import time
import zlib
from collections.abc import Callable
from typing import Any, TextIO

import anyio
import msgspec

from ._engine import Cascade
from ._errors import RunError
from ._progress import Progress
from ._types import Completion, Result, Verdict
from .testing import FakeAnthropicServer, FakeOpenAIServer, FakeRequest, Reply
from .validators import ValidationContext, extract_json, validator

__all__ = ["DemoSummary", "run_demo"]

_ITEMS = (
    "coffee", "bagel", "juice", "muffin", "salad", "soup", "tea", "cookie", "wrap", "water",
    "pasta", "croissant", "yogurt", "sandwich", "smoothie", "donut",
)  # fmt: skip
_RECEIPT = re.compile(r"Receipt #(\d+): (.+)$", re.M)
_ITEM = re.compile(r"([a-z]+) (\d+\.\d\d)")

RECEIPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["items", "total"],
    "properties": {
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "price"],
                "properties": {"name": {"type": "string"}, "price": {"type": "number"}},
            },
        },
        "total": {"type": "number"},
    },
}


@validator("receipt_total")
class ReceiptTotal:
    """Rejects a receipt whose total is not the sum of its item prices."""

    def __init__(self, *, tolerance: float = 0.005) -> None:
        self.name = "receipt_total"
        self.tolerance = tolerance

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        try:
            data = extract_json(completion.text)
            total = float(data["total"])
            items = sum(float(i["price"]) for i in data["items"])
        except (ValueError, KeyError, TypeError):
            return Verdict(validator=self.name, passed=False, score=0.0, reason="no receipt")
        if abs(total - items) <= self.tolerance:
            return Verdict(validator=self.name, passed=True)
        return Verdict(
            validator=self.name,
            passed=False,
            score=0.0,
            reason=f"total {total:.2f} is not the sum of the items {items:.2f}",
        )


class Task(msgspec.Struct, frozen=True):
    id: int
    items: tuple[tuple[str, int], ...]  # name, price in cents

    @property
    def total_cents(self) -> int:
        return sum(p for _, p in self.items)

    def prompt(self) -> str:
        lines = "; ".join(f"{n} {p / 100:.2f}" for n, p in self.items)
        return (
            "Extract the line items and the total from this receipt. Reply with JSON only: "
            '{"items": [{"name": string, "price": number}], "total": number}.\n'
            f"Receipt #{self.id}: {lines}"
        )


def make_tasks(n: int, seed: int) -> list[Task]:
    rng = random.Random(seed)
    return [
        Task(
            id=i,
            items=tuple(
                (rng.choice(_ITEMS), rng.randint(50, 1500)) for _ in range(rng.randint(2, 5))
            ),
        )
        for i in range(n)
    ]


class _Model(msgspec.Struct, frozen=True):
    """How one simulated model behaves: shares of each failure mode, and its speed."""

    malformed: float
    arithmetic: float  # total wrong: the receipt_total validator catches it
    misread: float  # one price misread, total consistent: nothing catches it
    latency_s: float
    fail_5xx: float = 0.0


FLEET: dict[str, _Model] = {
    "small": _Model(malformed=0.10, arithmetic=0.20, misread=0.04, latency_s=0.004,
                    fail_5xx=0.06),
    "medium": _Model(malformed=0.03, arithmetic=0.07, misread=0.015, latency_s=0.015),
    "large": _Model(malformed=0.0, arithmetic=0.0, misread=0.0, latency_s=0.045),
}  # fmt: skip


def _responder(model: str, spec: _Model, seed: int) -> Callable[[FakeRequest], Reply]:
    def respond(request: FakeRequest) -> Reply:
        content = str(request.messages[-1].get("content", ""))
        m = _RECEIPT.search(content)
        if m is None:
            return Reply(text="I can only read receipts.", latency_s=spec.latency_s)
        task_id = int(m.group(1))
        items = [(name, round(float(p) * 100)) for name, p in _ITEM.findall(m.group(2))]
        # Seeded per (model, task, attempt): the same run gives the same answers whatever
        # order concurrency serves them in.
        rng = random.Random(zlib.crc32(f"{seed}:{model}:{task_id}".encode()))
        if rng.random() < spec.fail_5xx:
            return Reply(status=503, error_message="overloaded", latency_s=spec.latency_s)
        roll = rng.random()
        total = sum(p for _, p in items)
        if roll < spec.malformed:
            text = rng.choice(
                (
                    f"The total comes to {total / 100:.2f}.",
                    '{"items": [{"name": "' + items[0][0] + '", "price": ',
                    '{"receipt": "parsed", "sum": "' + f"{total / 100:.2f}" + '"}',
                )
            )
            return Reply(text=text, latency_s=spec.latency_s)
        roll -= spec.malformed
        if roll < spec.arithmetic:
            total += rng.choice((-100, -10, 10, 90, 100, 1000))
        elif roll - spec.arithmetic < spec.misread:
            name, price = items[0]
            items[0] = (name, price + rng.choice((-10, 10, 100)))
            total = sum(p for _, p in items)
        body = {"items": [{"name": n, "price": p / 100} for n, p in items], "total": total / 100}
        return Reply(text=msgspec.json.encode(body).decode(), latency_s=spec.latency_s)

    return respond


class DemoSummary(msgspec.Struct, frozen=True, kw_only=True):
    requests: int
    accuracy: float
    cost_usd: float
    baseline_cost_usd: float
    baseline_accuracy: float
    cost_share: float
    escalation_rate: dict[str, float]
    answered_by: dict[str, int]
    failovers: int
    errors: int
    latency_p50_ms: float
    latency_p95_ms: float
    baseline_latency_p50_ms: float
    wall_s: float


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _correct(task: Task, result: Result | None) -> bool:
    if result is None or not isinstance(result.parsed, dict):
        return False
    try:
        items = [(str(i["name"]), round(float(i["price"]) * 100)) for i in result.parsed["items"]]
        total = round(float(result.parsed["total"]) * 100)
    except (KeyError, TypeError, ValueError):
        return False
    return items == list(task.items) and total == task.total_cents


def demo_config(
    small_url: str, small_b_url: str, medium_url: str, large_url: str
) -> dict[str, Any]:
    """The demo's three tiers over its loopback servers. Its providers send no API key
    (``api_key_env = ""``): a key in the caller's environment never goes to the demo."""
    config = _demo_tiers(small_url, small_b_url, medium_url, large_url)
    for tier in config["tiers"]:
        for provider in tier["providers"]:
            provider["api_key_env"] = ""
    return config


def _demo_tiers(
    small_url: str, small_b_url: str, medium_url: str, large_url: str
) -> dict[str, Any]:
    validators: list[dict[str, Any]] = [
        {"name": "json_schema", "schema": RECEIPT_SCHEMA},
        {"name": "receipt_total"},
    ]
    return {
        "on_exhausted": "best",
        "tiers": [
            {
                "name": "small",
                "validators": validators,
                "providers": [
                    {"name": "small-a", "kind": "openai", "base_url": small_url, "model": "small",
                     "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.60},
                    {"name": "small-b", "kind": "openai", "base_url": small_b_url,
                     "model": "small", "input_cost_per_mtok": 0.15, "output_cost_per_mtok": 0.60},
                ],
            },
            {
                "name": "medium",
                "validators": validators,
                "providers": [
                    {"name": "medium-a", "kind": "anthropic", "base_url": medium_url,
                     "model": "medium", "stream": True, "input_cost_per_mtok": 3.0,
                     "output_cost_per_mtok": 15.0},
                ],
            },
            {
                "name": "large",
                "validators": [{"name": "json_schema", "schema": RECEIPT_SCHEMA}],
                "providers": [
                    {"name": "large-a", "kind": "openai", "base_url": large_url, "model": "large",
                     "stream": True, "input_cost_per_mtok": 10.0, "output_cost_per_mtok": 30.0},
                ],
            },
        ],
    }  # fmt: skip


async def run_demo(
    *, requests: int = 300, concurrency: int = 32, seed: int = 7, progress: TextIO | None = None
) -> DemoSummary:
    """Start the fleet, run ``requests`` tasks through the cascade and through the top tier
    alone, and compare."""
    tasks = make_tasks(requests, seed)
    started = time.perf_counter()
    async with (
        FakeOpenAIServer(record=False) as small,
        FakeOpenAIServer(record=False) as small_b,
        FakeAnthropicServer(record=False) as medium,
        FakeOpenAIServer(record=False) as large,
    ):
        small.respond("small", _responder("small", FLEET["small"], seed))
        # The sibling deployment of the small model: same model, no outages.
        small_b.respond(
            "small",
            _responder("small", msgspec.structs.replace(FLEET["small"], fail_5xx=0.0), seed),
        )
        medium.respond("medium", _responder("medium", FLEET["medium"], seed))
        large.respond("large", _responder("large", FLEET["large"], seed))
        config = demo_config(small.url, small_b.url, medium.url, large.url)
        async with Cascade.from_dict(config) as cascade:
            cascaded = await _run_all(
                cascade, tasks, concurrency, None, Progress(requests, "cascade  ", progress)
            )
            baseline = await _run_all(
                cascade, tasks, concurrency, "large", Progress(requests, "baseline ", progress)
            )
    return _summarise(tasks, cascaded, baseline, cascade.tiers, time.perf_counter() - started)


_Outcome = tuple[Result | None, float]


async def _run_all(
    cascade: Cascade,
    tasks: list[Task],
    concurrency: int,
    only_tier: str | None,
    progress: Progress,
) -> list[_Outcome]:
    out: list[_Outcome] = [(None, 0.0)] * len(tasks)
    limit = anyio.Semaphore(concurrency)

    async def one(i: int, task: Task) -> None:
        async with limit:
            t0 = time.perf_counter()
            result: Result | None
            try:
                result = await cascade.run(
                    messages=[{"role": "user", "content": task.prompt()}],
                    start_tier=only_tier,
                    deadline_s=30.0,
                )
            except RunError:
                result = None
            out[i] = (result, time.perf_counter() - t0)
            progress.step()

    async with anyio.create_task_group() as tg:
        for i, task in enumerate(tasks):
            tg.start_soon(one, i, task)
    return out


def _summarise(
    tasks: list[Task],
    cascaded: list[_Outcome],
    baseline: list[_Outcome],
    tiers: tuple[str, ...],
    wall_s: float,
) -> DemoSummary:
    n = len(tasks)
    reached = dict.fromkeys(tiers, 0)
    escalated = dict.fromkeys(tiers, 0)
    answered = dict.fromkeys(tiers, 0)
    failovers = errors = 0
    for result, _ in cascaded:
        if result is None:
            errors += 1
            continue
        answered[result.tier_name] += 1
        seen = {a.tier_name for a in result.attempts if a.outcome != "skipped"}
        failovers += sum(1 for a in result.attempts if a.outcome == "failed")
        for name in seen:
            reached[name] += 1
            if name != result.tier_name:
                escalated[name] += 1
    cost = sum(r.cost_usd for r, _ in cascaded if r is not None)
    baseline_cost = sum(r.cost_usd for r, _ in baseline if r is not None)
    return DemoSummary(
        requests=n,
        accuracy=sum(_correct(t, r) for t, (r, _) in zip(tasks, cascaded, strict=True)) / n,
        cost_usd=cost,
        baseline_cost_usd=baseline_cost,
        baseline_accuracy=sum(_correct(t, r) for t, (r, _) in zip(tasks, baseline, strict=True))
        / n,
        cost_share=cost / baseline_cost if baseline_cost else 0.0,
        escalation_rate={k: (escalated[k] / reached[k] if reached[k] else 0.0) for k in tiers},
        answered_by=answered,
        failovers=failovers,
        errors=errors,
        latency_p50_ms=_percentile([s for _, s in cascaded], 0.50) * 1000,
        latency_p95_ms=_percentile([s for _, s in cascaded], 0.95) * 1000,
        baseline_latency_p50_ms=_percentile([s for _, s in baseline], 0.50) * 1000,
        wall_s=wall_s,
    )


def format_summary(s: DemoSummary) -> str:
    lines = [
        f"requests            {s.requests}",
        f"accuracy            {s.accuracy:.1%}   (always-{list(s.answered_by)[-1]}: "
        f"{s.baseline_accuracy:.1%})",
        f"cost                ${s.cost_usd:.4f}   (always-{list(s.answered_by)[-1]}: "
        f"${s.baseline_cost_usd:.4f}, {s.cost_share:.1%} of it)",
        "answered by tier    "
        + ", ".join(f"{k} {v} ({v / s.requests:.0%})" for k, v in s.answered_by.items()),
        "escalation rate     " + ", ".join(f"{k} {v:.1%}" for k, v in s.escalation_rate.items()),
        f"failovers           {s.failovers} (provider errors absorbed within a tier)",
        f"errors              {s.errors}",
        f"latency             p50 {s.latency_p50_ms:.1f} ms, p95 {s.latency_p95_ms:.1f} ms"
        f"   (always-{list(s.answered_by)[-1]} p50 {s.baseline_latency_p50_ms:.1f} ms)",
    ]
    return "\n".join(lines)


def main_demo(*, requests: int, concurrency: int, seed: int, as_json: bool) -> int:
    summary = anyio.run(
        lambda: run_demo(requests=requests, concurrency=concurrency, seed=seed, progress=sys.stderr)
    )
    if as_json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
    else:
        sys.stdout.write(format_summary(summary) + "\n")
    return 0
