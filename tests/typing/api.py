"""Typed usage of the public API, checked by mypy (not run by pytest)."""

from __future__ import annotations

import cascade
from cascade import Cascade, Completion, RequestOptions, Result, ValidationContext, Verdict


@cascade.validator("typing_example")
class Short:
    def __init__(self, *, max_chars: int) -> None:
        self.name = "short"
        self.max_chars = max_chars

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        return Verdict(validator=self.name, passed=len(completion.text) <= self.max_chars)


async def use() -> None:
    async with Cascade.from_config("cascade.toml") as c:
        result: Result = await c.run(
            messages=[{"role": "user", "content": "hi"}],
            options=RequestOptions(max_tokens=10, temperature=0.0),
            start_tier=1,
            max_tier="large",
            max_cost_usd=0.01,
            deadline_s=5.0,
        )
    text: str = result.text
    cost: float = result.cost_usd
    outcomes: list[cascade.Outcome] = [a.outcome for a in result.attempts]
    try:
        await c.run(messages=[cascade.Message(role="user", content="x")])
    except cascade.RunError as exc:
        attempts: tuple[cascade.Attempt, ...] = exc.attempts
        del attempts
    del text, cost, outcomes
