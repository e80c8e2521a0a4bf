"""Labelled examples for the learned routers: what each tier alone does with a request.

From a replay dataset (``label_records``): every record runs through the real engine once
per tier, with ``start_tier = max_tier = that tier``, and is scored as ``cascade eval``
scores it; a tier's label is whether its validators accepted and whether the answer was
right, with what it cost and the score of the answer it returned. From production
routing records (``label_routing_records``, the JSON lines ``cascade.route`` logs, joined
with the prompt and a user-supplied outcome): the tiers the run went through before its
last were rejected; the last one is labelled by ``validated`` and the outcome; tiers
never reached are unknown.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import anyio
import msgspec

from .._config import Config
from .._engine import Cascade
from .._errors import InputError, RunError
from .._scoring import Record, Scoring
from ..providers.replay import read_lines
from ._modelfile import Outcome, TierLabel

__all__ = ["Labelled", "TierLabel", "label_records", "label_routing_records", "outcome_of"]


class Labelled(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    tiers: tuple[TierLabel | None, ...]
    """Per tier, what it did alone (None: unknown)."""


def outcome_of(accepted: bool, right: bool) -> Outcome:
    if accepted:
        return "accepted_right" if right else "accepted_wrong"
    return "rejected_right" if right else "rejected_wrong"


def label_records(
    config: Config,
    records: Sequence[Record],
    *,
    scoring: Scoring,
    concurrency: int = 32,
    base_dir: str | os.PathLike[str] | None = None,
) -> list[Labelled]:
    """Each record's label per tier, from the real engine over the config's (replay)
    providers. Blocking: runs its own event loop."""
    cascade = Cascade(config, base_dir=base_dir)
    n = len(config.tiers)
    labels: list[list[TierLabel | None]] = [[None] * n for _ in records]

    async def one(i: int, tier: int) -> TierLabel:
        messages = [{"role": "user", "content": records[i].question}]
        try:
            result = await cascade.run(messages=messages, start_tier=tier, max_tier=tier)
        except RunError as exc:
            cost = math.fsum(a.cost_usd for a in exc.attempts)
            return TierLabel(outcome="rejected_wrong", cost_usd=cost)
        right, _ = scoring.judge(records[i], result)
        score = max((a.score for a in result.attempts if a.tier == result.tier), default=0.0)
        score = min(1.0, max(0.0, score))
        return TierLabel(
            outcome=outcome_of(result.validated, right), cost_usd=result.cost_usd, score=score
        )

    async def go() -> None:
        jobs = iter([(i, t) for t in range(1, n + 1) for i in range(len(records))])

        async def worker() -> None:
            for i, t in jobs:  # the workers share one iterator: each job is taken once
                labels[i][t - 1] = await one(i, t)

        async with cascade, anyio.create_task_group() as tg:
            for _ in range(max(1, min(concurrency, len(records)))):
                tg.start_soon(worker)

    anyio.run(go)
    return [
        Labelled(text=r.question, tiers=tuple(ls)) for r, ls in zip(records, labels, strict=True)
    ]


def _field(line: dict[str, Any], name: str) -> Any:
    if name in line:
        return line[name]
    metadata = line.get("metadata")
    return metadata.get(name) if isinstance(metadata, dict) else None


def label_routing_records(
    path: str | os.PathLike[str],
    tiers: Sequence[str],
    *,
    outcome_field: str,
    text_field: str = "prompt",
) -> list[Labelled]:
    """Labels from production routing records (``cascade.route`` JSON lines) with the
    prompt under ``text_field`` and the outcome (true: the answer was right) under
    ``outcome_field``, each at the top level or in ``metadata``. Lines of other events are
    skipped; a routing record without the prompt or the outcome, or naming a tier the
    config does not have, is an InputError naming its line."""
    out: list[Labelled] = []
    index = {name: i for i, name in enumerate(tiers)}
    try:
        for lineno, raw in read_lines(path):
            try:
                line = msgspec.json.decode(raw)
            except msgspec.DecodeError as exc:
                raise InputError(f"{path}:{lineno}: not JSON: {exc}", path="--records") from None
            if not isinstance(line, dict) or line.get("event", "cascade.route") != "cascade.route":
                continue
            text, ok = _field(line, text_field), _field(line, outcome_field)
            if not isinstance(text, str) or not isinstance(ok, bool):
                raise InputError(
                    f"{path}:{lineno}: expected a string {text_field!r} and a true/false "
                    f"{outcome_field!r}",
                    path="--records",
                )
            got: list[TierLabel | None] = [None] * len(tiers)
            route = line.get("tier_path")
            if line.get("outcome") == "error" or not isinstance(route, list) or not route:
                continue  # no answer: nothing to learn about a tier's answer
            for k, name in enumerate(route):
                if name not in index:
                    raise InputError(
                        f"{path}:{lineno}: tier {name!r} is not in the config", path="--records"
                    )
                last = k == len(route) - 1
                accepted = bool(line.get("validated")) if last else False
                right = ok if last else False  # a rejected draft's correctness is unknown
                got[index[name]] = TierLabel(outcome=outcome_of(accepted, right))
            out.append(Labelled(text=text, tiers=tuple(got)))
    except OSError as exc:
        raise InputError(
            f"cannot read {str(path)!r}: {exc.strerror or exc}", path="--records"
        ) from None
    if not out:
        raise InputError(f"{str(path)!r} holds no routing records", path="--records")
    return out
