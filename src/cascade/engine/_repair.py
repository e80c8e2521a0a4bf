"""Repair on escalation: the next tier fixes the rejected draft instead of starting over.

A tier with ``repair = true`` that the run reaches because the tier before it rejected
an answer receives the request's messages followed by two more:

1. ``{"role": "assistant", "content": <draft>}``: the rejected answer's text, its first
   :data:`MAX_DRAFT_CHARS` characters (a longer one ends in :data:`CUT_MARK`);
2. ``{"role": "user", "content": "Your previous answer was rejected: <reasons>. Fix it."}``:
   ``<reasons>`` are the failing validators' ``"<validator>: <reason>"`` joined by
   ``"; "`` (all verdicts when a ``scored`` tier rejected on its threshold), at most
   :data:`MAX_REASONS_CHARS` characters (likewise cut).

Only after a rejection with an answer to show: a tier left because its providers failed,
or skipped (over budget, quality breaker open), gives the next tier nothing to repair and
it starts over. The draft is always the tier just left's, never a chain of earlier ones,
so the prompt grows by at most a few KiB whatever the number of tiers. The repaired
request goes through the tier like any (its variants, validators, budget check, costs);
its validators see the repaired messages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .._types import Attempt, Message

__all__ = ["CUT_MARK", "MAX_DRAFT_CHARS", "MAX_REASONS_CHARS", "rejected_draft", "repair_messages"]

MAX_DRAFT_CHARS: Final = 4096
"""The most characters of the rejected draft sent to the repairing tier."""
MAX_REASONS_CHARS: Final = 1000
"""The most characters of the validators' reasons sent to the repairing tier."""
CUT_MARK: Final = " [...]"
"""Ends a draft or reasons cut to their bound (within the bound)."""

PROMPT: Final = "Your previous answer was rejected: {reasons}. Fix it."


def rejected_draft(attempts: Sequence[Attempt], first: int) -> Attempt | None:
    """The last rejected attempt with an answer among ``attempts[first:]`` (a tier's)."""
    for a in reversed(attempts[first:]):
        if a.outcome == "rejected" and a.completion is not None and a.error_type is None:
            return a
    return None


def repair_messages(msgs: tuple[Message, ...], rejected: Attempt) -> tuple[Message, ...]:
    """``msgs`` followed by the rejected draft and the request to fix it (module doc)."""
    assert rejected.completion is not None
    draft = _bounded(rejected.completion.text, MAX_DRAFT_CHARS)
    # Rejected by a score below the tier's threshold, every verdict may have passed.
    failing = [v for v in rejected.verdicts if not v.passed] or list(rejected.verdicts)
    reasons = "; ".join(f"{v.validator}: {v.reason}" if v.reason else v.validator for v in failing)
    reasons = _bounded(reasons or "no reason given", MAX_REASONS_CHARS)
    return (
        *msgs,
        Message(role="assistant", content=draft),
        Message(role="user", content=PROMPT.format(reasons=reasons)),
    )


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(CUT_MARK)] + CUT_MARK
