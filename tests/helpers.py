"""Builders shared by the tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cascade import Cascade, Result
    from cascade._timeouts import ClockLane, TimeoutLane

VIAS = ["run", "buffered", "speculative"]
"""The three ways to read a run: ``run()``, and ``stream()`` in each mode."""


def provider(
    name: str, url: str, model: str, *, kind: str = "openai", **extra: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "kind": kind,
        "base_url": url,
        "model": model,
        "input_cost_per_mtok": 1.0,
        "output_cost_per_mtok": 2.0,
        "timeout_s": 5,
        **extra,
    }


def tier(
    name: str, *providers: dict[str, Any], validators: list[Any] | None = None
) -> dict[str, Any]:
    return {"name": name, "providers": list(providers), "validators": validators or []}


SCHEMA = {"type": "object", "required": ["answer"], "properties": {"answer": {"type": "number"}}}
JSON_SCHEMA = {"name": "json_schema", "schema": SCHEMA}
USER = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]


_REPLAY_EVAL_CONFIG = """
on_exhausted = "best"

[[tiers]]
name = "small"
variants = [{ name = "A" }, { name = "B" }]
validators = [{ name = "self_consistency", samples = 2, min_agreement = 1.0, extractor = "recorded" }]

[[tiers.providers]]
name = "small"
kind = "replay"
model = "small"
dataset = "DATASET"
prompt_overhead_tokens = 100
input_cost_per_mtok = 1.0
output_cost_per_mtok = 2.0

[[tiers]]
name = "big"

[[tiers.providers]]
name = "big"
kind = "replay"
model = "big"
variant = "X"
dataset = "DATASET"
prompt_overhead_tokens = 100
input_cost_per_mtok = 10.0
output_cost_per_mtok = 40.0
"""


def replay_eval_config(dataset: str) -> str:
    """A two-tier replay config (models ``small`` under variants A and B, both must agree;
    then ``big`` under X) reading ``dataset``, relative to the config file."""
    return _REPLAY_EVAL_CONFIG.replace("DATASET", dataset)


_LEFT: dict[int, tuple[Any, Any, str, str]] = {}  # run (kept alive: ids stay unique), ...


@contextmanager
def in_tier(run: Any, tier: Any) -> Iterator[Any]:
    """A tier's span as the engine drives it (for tests of the telemetry alone): an
    ``Escalated`` from the tier left unaccepted before it, the outcome at the end."""
    from cascade import Escalated
    from cascade.engine._core import tier_outcome

    left = _LEFT.pop(id(run), None)
    if left is not None and left[0] is run:
        _, was, reason, detail = left
        run.escalated(
            Escalated(
                from_tier=was.index,
                from_tier_name=was.name,
                to_tier=tier.index,
                to_tier_name=tier.name,
                reason=reason,
                detail=detail,
            )
        )
    first = len(run.attempts)
    tt = run.tier(tier)
    try:
        yield tt
    finally:
        outcome, detail = tier_outcome(run.attempts, first)
        tt.end(outcome)
        if outcome not in ("accepted", "none"):
            reason = "over_budget" if outcome == "skipped" else outcome
            _LEFT[id(run)] = (run, tier, reason, detail)


async def answer(c: Cascade, via: str, messages: list[dict[str, Any]] | None = None) -> Result:
    """The run's result, by ``run()`` or by reading ``stream()`` in mode ``via``; read as a
    stream, what the deltas show once retractions are applied is the result's text: no
    piece of a broken or rejected answer is left shown, and a failed run shows nothing."""
    from cascade import Delta, Failed, Finished, Retracted

    msgs = USER if messages is None else messages
    if via == "run":
        return await c.run(messages=msgs)
    shown = ""
    async with c.stream(messages=msgs, mode=via) as events:  # type: ignore[arg-type]
        async for event in events:
            if isinstance(event, Delta):
                shown += event.text
            elif isinstance(event, Retracted):
                assert via == "speculative"  # buffered mode never shows what it withdraws
                assert event.chars <= len(shown)
                shown = shown[: len(shown) - event.chars]
            elif isinstance(event, Finished):
                assert shown == event.result.text
                return event.result
            elif isinstance(event, Failed):
                assert shown == ""
                raise event.error
    raise AssertionError("the stream ended without Finished or Failed")


Guard = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


def lane_guard(lane: TimeoutLane | ClockLane) -> Guard:
    """``body()`` run under one of ``lane``'s deadlines, as ``post_whole`` runs a call."""

    async def guarded(body: Callable[[], Awaitable[Any]]) -> Any:
        deadline = lane.enter()
        try:
            result = await body()
        except BaseException as exc:
            lane.exit(deadline, exc)
            raise
        lane.exit(deadline, None)
        return result

    return guarded
