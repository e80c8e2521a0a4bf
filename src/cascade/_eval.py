"""``cascade eval``: a dataset of questions through the real engine, scored against gold
answers and compared with always calling the top tier.

The engine sees only each record's ``question`` (as the one user message); ``expected`` is
read by :class:`Scoring` alone (``_scoring.py``), after the runs. Every figure is given
twice, typed and exact, so a type that is too lenient for the task shows as a gap. Sweeps
of a validator parameter (the cost-accuracy frontier) and ``cascade calibrate`` build on
:func:`evaluate`, in ``_calibrate.py``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TextIO

import anyio
import msgspec

from ._config import Config
from ._engine import Cascade
from ._errors import ConfigError, RunError
from ._progress import Progress
from ._scoring import Record, Scoring, load_records
from ._types import Attempt, Result
from .providers.replay import ReplayProvider

__all__ = [
    "EvalSummary",
    "Record",
    "Scoring",
    "baseline_config",
    "evaluate",
    "format_summary",
    "load_records",
]


class EvalSummary(msgspec.Struct, kw_only=True):
    """Figures of one configuration over the dataset (the baseline's alongside)."""

    requests: int
    accuracy: float
    """Right under the answer type (``answer_type``)."""
    exact_accuracy: float
    """Right as written: the answer, stripped, equals ``expected``, stripped."""
    answer_type: str
    """The answer type scored with: one name, or per record (``"boolean 2636, text 816"``)."""
    cost_usd: float
    baseline_cost_usd: float
    baseline_accuracy: float
    baseline_exact_accuracy: float
    cost_share: float
    """``cost_usd / baseline_cost_usd``."""
    escalation_rate: dict[str, float]
    """Per tier: the share of the requests that reached it which went on to a later tier."""
    answered_by: dict[str, int]
    calls_per_request: dict[str, float] = {}
    """Per tier: provider calls (first answers and validation samples) per request reaching it."""
    unvalidated: int
    """Answers no validator accepted (``on_exhausted = "best"`` fallbacks)."""
    errors: int
    """Runs that returned no answer at all (their attempts' cost still counts)."""
    estimated_calls: int
    """Replayed calls priced on estimated tokens (the dataset recorded no token counts)."""


# -- configs -----------------------------------------------------------------------------


def baseline_config(config: Config) -> Config:
    """The always-top-tier reference: the last tier alone, without validators, one call
    per request under its first variant."""
    top = config.tiers[-1]
    top = msgspec.structs.replace(top, validators=[], mode="all", variants=top.variants[:1])
    return msgspec.structs.replace(config, tiers=[top], max_cost_usd=None)


# -- running -----------------------------------------------------------------------------


_Outcome = tuple[Result | None, tuple[Attempt, ...]]


async def run_all(
    cascade: Cascade, questions: Sequence[str], *, concurrency: int, progress: Progress
) -> list[_Outcome]:
    """Each question through ``cascade``, ``concurrency`` at a time: the result (None when
    the run failed) and the attempts, of each."""
    out: list[_Outcome] = [(None, ())] * len(questions)
    pending = iter(range(len(questions)))

    async def worker() -> None:
        for i in pending:  # the workers share one iterator: each index is taken once
            try:
                result = await cascade.run(messages=[{"role": "user", "content": questions[i]}])
            except RunError as exc:
                out[i] = (None, exc.attempts)
            else:
                out[i] = (result, result.attempts)
            progress.step()

    async with cascade, anyio.create_task_group() as tg:
        for _ in range(min(concurrency, len(questions))):
            tg.start_soon(worker)
    return out


def _cost(outcome: _Outcome) -> float:
    result, attempts = outcome
    return result.cost_usd if result is not None else math.fsum(a.cost_usd for a in attempts)


def _accuracy(
    records: Sequence[Record], outcomes: Sequence[_Outcome], scoring: Scoring
) -> tuple[float, float]:
    """(typed, exact) accuracy."""
    typed = exact = 0
    for record, (result, _) in zip(records, outcomes, strict=True):
        t, e = scoring.judge(record, result)
        typed += t
        exact += e
    return typed / len(records), exact / len(records)


def summarise(
    records: Sequence[Record],
    outcomes: Sequence[_Outcome],
    tiers: Sequence[str],
    scoring: Scoring,
    baseline: Sequence[_Outcome],
    *,
    estimated_calls: int,
) -> EvalSummary:
    """The figures of one run over ``records`` against the baseline's run."""
    reached = dict.fromkeys(tiers, 0)
    escalated = dict.fromkeys(tiers, 0)
    answered = dict.fromkeys(tiers, 0)
    calls = dict.fromkeys(tiers, 0)
    unvalidated = errors = 0
    for result, attempts in outcomes:
        for a in attempts:
            if a.outcome != "skipped":
                calls[a.tier_name] += 1 + len(a.samples)
        for tier, name in {(a.tier, a.tier_name) for a in attempts if a.outcome != "skipped"}:
            reached[name] += 1
            escalated[name] += any(a.tier > tier for a in attempts)
        if result is None:
            errors += 1
        else:
            answered[result.tier_name] += 1
            unvalidated += not result.validated
    cost = math.fsum(_cost(o) for o in outcomes)
    baseline_cost = math.fsum(_cost(o) for o in baseline)
    typed, exact = _accuracy(records, outcomes, scoring)
    baseline_typed, baseline_exact = _accuracy(records, baseline, scoring)
    return EvalSummary(
        requests=len(records),
        accuracy=typed,
        exact_accuracy=exact,
        answer_type=scoring.describe(records),
        cost_usd=cost,
        baseline_cost_usd=baseline_cost,
        baseline_accuracy=baseline_typed,
        baseline_exact_accuracy=baseline_exact,
        cost_share=cost / baseline_cost if baseline_cost else 0.0,
        escalation_rate={k: escalated[k] / reached[k] if reached[k] else 0.0 for k in tiers},
        answered_by=answered,
        calls_per_request={k: calls[k] / reached[k] if reached[k] else 0.0 for k in tiers},
        unvalidated=unvalidated,
        errors=errors,
        estimated_calls=estimated_calls,
    )


def evaluate(
    configs: Sequence[tuple[str, Config]],
    records: Sequence[Record],
    *,
    scoring: Scoring,
    concurrency: int = 32,
    progress: TextIO | None = None,
    base_dir: str | os.PathLike[str] | None = None,
) -> list[EvalSummary]:
    """Run each labelled config, and the first one's baseline, over ``records``.

    ``base_dir`` (the config file's folder) is passed to each Cascade.

    Every Cascade is built before anything runs, so a bad config fails at once
    (ConfigError naming the field, and the label of the config when there are several).
    Blocking: runs its own event loop.
    """
    labelled: list[tuple[str, Cascade]] = []
    for label, config in configs:
        try:
            labelled.append((label, Cascade(config, base_dir=base_dir)))
        except ConfigError as exc:
            if len(configs) == 1:
                raise
            raise ConfigError(f"{exc.message} (with {label})", path=exc.path) from None
    labelled.append(("baseline", Cascade(baseline_config(configs[0][1]), base_dir=base_dir)))
    width = max(len(label) for label, _ in labelled)
    questions = [r.question for r in records]

    async def go() -> list[list[_Outcome]]:
        return [
            await run_all(
                cascade,
                questions,
                concurrency=concurrency,
                progress=Progress(len(questions), label.ljust(width), progress),
            )
            for label, cascade in labelled
        ]

    *runs, top = anyio.run(go)
    return [
        summarise(
            records,
            run,
            cascade.tiers,
            scoring,
            top,
            estimated_calls=estimated_calls(cascade) + estimated_calls(labelled[-1][1]),
        )
        for (_, cascade), run in zip(labelled, runs, strict=False)
    ]


def estimated_calls(cascade: Cascade) -> int:
    """Calls of ``cascade``'s replay providers priced on estimated token counts."""
    return sum(
        p.estimated
        for tier in cascade._tiers  # the package's own engine: no public need for this
        for p in tier.providers
        if isinstance(p, ReplayProvider)
    )


GAP_POINTS = 1.0
"""Typed and exact accuracy further apart than this many points are pointed out."""


def format_summary(s: EvalSummary) -> str:
    top = list(s.answered_by)[-1]
    lines = [
        f"requests            {s.requests}",
        f"accuracy            {s.accuracy:.1%}   (always-{top}: {s.baseline_accuracy:.1%})"
        f"   answer type: {s.answer_type}",
        f"exact match         {s.exact_accuracy:.1%}   (always-{top}: "
        f"{s.baseline_exact_accuracy:.1%})",
    ]
    gap = round((s.accuracy - s.exact_accuracy) * 100, 9)  # 52 vs 51 of 100 is 1 point
    if abs(gap) > GAP_POINTS:
        lines.append(
            f"  NOTE: typed and exact accuracy differ by {gap:.1f} points: that share "
            'of the answers is right only under the answer type ("$18" = "18", "(B)" = "B"); '
            "check that it fits the task (--answer-type)"
        )
    lines += [
        f"cost                ${s.cost_usd:.4f}   (always-{top}: "
        f"${s.baseline_cost_usd:.4f}, {s.cost_share:.1%} of it)",
        "answered by tier    "
        + ", ".join(f"{k} {v} ({v / s.requests:.0%})" for k, v in s.answered_by.items()),
        "escalation rate     " + ", ".join(f"{k} {v:.1%}" for k, v in s.escalation_rate.items()),
        "calls per request   " + ", ".join(f"{k} {v:.2f}" for k, v in s.calls_per_request.items()),
        f"unvalidated         {s.unvalidated} (best rejected answer returned)",
        f"errors              {s.errors} (no answer; their attempts' cost counts)",
    ]
    if s.estimated_calls:
        lines.append(
            f"estimated tokens    {s.estimated_calls} replayed calls priced on estimated "
            "tokens (the dataset records no question_tokens / output_tokens): costs are "
            "approximate"
        )
    return "\n".join(lines)
