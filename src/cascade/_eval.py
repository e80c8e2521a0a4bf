"""``cascade eval``: a dataset of questions through the real engine, scored against gold
answers and compared with always calling the top tier.

The engine sees only each record's ``question`` (as the one user message); ``expected`` is
read by :func:`score` alone, after the runs. Sweeps of a validator parameter (the
cost-accuracy frontier) and ``cascade calibrate`` build on :func:`evaluate`, in
``_calibrate.py``.
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
from ._errors import ConfigError, InputError, RunError
from ._progress import Progress
from ._types import Attempt, Completion, Result
from .providers.replay import read_lines
from .validators._extract import Extractor, normalize

__all__ = [
    "EvalSummary",
    "Record",
    "baseline_config",
    "evaluate",
    "format_summary",
    "load_records",
    "score",
]


class _Recorded(msgspec.Struct):
    variant: str = ""
    text: str = ""
    answer: str | int | float | None = None
    judged_correct: bool | None = None


class Record(msgspec.Struct):
    """One dataset line as eval reads it (other fields are ignored)."""

    question: str
    id: str | None = None
    expected: str | int | float | None = None
    responses: dict[str, list[_Recorded]] = {}


_decode_record = msgspec.json.Decoder(Record).decode


class EvalSummary(msgspec.Struct, kw_only=True):
    """Figures of one configuration over the dataset (the baseline's alongside)."""

    requests: int
    accuracy: float
    cost_usd: float
    baseline_cost_usd: float
    baseline_accuracy: float
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


# -- dataset -----------------------------------------------------------------------------


def load_records(path: str | os.PathLike[str], *, limit: int | None = None) -> list[Record]:
    """The first ``limit`` records of a JSONL (or .jsonl.gz) dataset."""
    records: list[Record] = []
    try:
        for lineno, line in read_lines(path):
            if limit is not None and len(records) >= limit:
                break
            try:
                records.append(_decode_record(line))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise InputError(
                    f"{path}:{lineno}: not a dataset record: {exc}", path="--dataset"
                ) from None
    except (OSError, EOFError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise InputError(f"cannot read {str(path)!r}: {why}", path="--dataset") from None
    if not records:
        raise InputError(f"{str(path)!r} holds no records", path="--dataset")
    return records


# -- scoring -----------------------------------------------------------------------------


def score(record: Record, result: Result | None, extract: Extractor) -> bool:
    """Whether ``result`` answers ``record`` correctly: the only reader of ``expected``.

    The final answer is the one the provider recorded (``Result.answer``), else what
    ``extract`` finds in the text. Answers and ``expected`` are compared after
    :func:`normalize` (numbers: ``"$1,000.00"`` equals ``1000``), else as exact strings.
    A chosen response recorded with a ``judged_correct`` label and no answer (GSM8K's
    ``plain`` variants) is scored by that label. A record without ``expected`` scores
    only such labels.
    """
    if result is None:
        return False
    if result.answer is None:
        for recorded in record.responses.get(result.model, ()):
            if recorded.text == result.text and result.variant in (None, recorded.variant):
                if recorded.answer is None and recorded.judged_correct is not None:
                    return recorded.judged_correct
                break
    answer = result.answer
    if answer is None:
        answer = extract(
            Completion(text=result.text, provider=result.provider, model=result.model, answer=None)
        )
    if answer is None or record.expected is None:
        return False
    want = str(record.expected)
    got, norm_want = normalize(answer), normalize(want)
    if got is not None and norm_want is not None:
        return got == norm_want
    return answer.strip() == want.strip()


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


def _accuracy(records: Sequence[Record], outcomes: Sequence[_Outcome], extract: Extractor) -> float:
    right = sum(score(rec, res, extract) for rec, (res, _) in zip(records, outcomes, strict=True))
    return right / len(records)


def summarise(
    records: Sequence[Record],
    outcomes: Sequence[_Outcome],
    tiers: Sequence[str],
    extract: Extractor,
    baseline: Sequence[_Outcome],
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
    return EvalSummary(
        requests=len(records),
        accuracy=_accuracy(records, outcomes, extract),
        cost_usd=cost,
        baseline_cost_usd=baseline_cost,
        baseline_accuracy=_accuracy(records, baseline, extract),
        cost_share=cost / baseline_cost if baseline_cost else 0.0,
        escalation_rate={k: escalated[k] / reached[k] if reached[k] else 0.0 for k in tiers},
        answered_by=answered,
        calls_per_request={k: calls[k] / reached[k] if reached[k] else 0.0 for k in tiers},
        unvalidated=unvalidated,
        errors=errors,
    )


def evaluate(
    configs: Sequence[tuple[str, Config]],
    records: Sequence[Record],
    *,
    extract: Extractor,
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
        summarise(records, run, cascade.tiers, extract, top)
        for (_, cascade), run in zip(labelled, runs, strict=False)
    ]


def format_summary(s: EvalSummary) -> str:
    top = list(s.answered_by)[-1]
    return "\n".join(
        [
            f"requests            {s.requests}",
            f"accuracy            {s.accuracy:.1%}   (always-{top}: {s.baseline_accuracy:.1%})",
            f"cost                ${s.cost_usd:.4f}   (always-{top}: "
            f"${s.baseline_cost_usd:.4f}, {s.cost_share:.1%} of it)",
            "answered by tier    "
            + ", ".join(f"{k} {v} ({v / s.requests:.0%})" for k, v in s.answered_by.items()),
            "escalation rate     "
            + ", ".join(f"{k} {v:.1%}" for k, v in s.escalation_rate.items()),
            "calls per request   "
            + ", ".join(f"{k} {v:.2f}" for k, v in s.calls_per_request.items()),
            f"unvalidated         {s.unvalidated} (best rejected answer returned)",
            f"errors              {s.errors} (no answer; their attempts' cost counts)",
        ]
    )
