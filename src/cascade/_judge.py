"""A tier's judgement of one answer: its validators' verdicts, composed by the tier's
``mode`` (every one must pass, or a weighted score over its ``threshold``), then the
request's own validators; and the answer the verdicts stand behind."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ._types import Completion, Verdict
from .validators import ValidationContext, Validator

if TYPE_CHECKING:
    from ._tier import Tier

__all__ = ["chosen", "judge", "refused"]


def refused(completion: Completion) -> Verdict:
    """The verdict on a refusal in a tier that does not accept refusals."""
    why = completion.refusal or ""
    return Verdict(validator="refusal", passed=False, score=0.0, reason=f"refused: {why}"[:500])


async def judge(
    tier: Tier, completion: Completion, ctx: ValidationContext
) -> tuple[tuple[Verdict, ...], bool]:
    """Every validator's verdict on ``completion``, and whether the tier accepts it: its
    own validators' judgement, then each of the request's (``required``) must pass."""
    verdicts, passed = await _judge_own(tier, completion, ctx) if tier.validators else ((), True)
    if not passed or not tier.required:
        return verdicts, passed
    for v in tier.required:
        verdict = await _verdict(v, completion, ctx)
        verdicts = (*verdicts, verdict)
        if not verdict.passed:
            return verdicts, False
    return verdicts, True


async def _judge_own(
    tier: Tier, completion: Completion, ctx: ValidationContext
) -> tuple[tuple[Verdict, ...], bool]:
    validators = tier.validators
    if len(validators) == 1:
        verdicts: tuple[Verdict, ...] = (await _verdict(validators[0], completion, ctx),)
        if tier.mode == "all":
            return verdicts, verdicts[0].passed
    elif tier.mode == "all":
        # The first failure settles it: later validators (paid sampling included) don't run.
        found: list[Verdict] = []
        for v in validators:
            found.append(await _verdict(v, completion, ctx))
            if not found[-1].passed:
                return tuple(found), False
        return tuple(found), True
    else:
        verdicts = tuple([await _verdict(v, completion, ctx) for v in validators])
    total = sum(tier.weights)
    score = sum(w * v.score for w, v in zip(tier.weights, verdicts, strict=True)) / total
    return verdicts, score >= tier.threshold


async def _verdict(validator: Validator, completion: Completion, ctx: ValidationContext) -> Verdict:
    try:
        return await validator.validate(completion, ctx)
    except Exception as exc:
        # A validator that crashes has not approved the answer: reject (and escalate)
        # with the crash as the reason rather than lose the request.
        return Verdict(
            validator=getattr(validator, "name", type(validator).__name__),
            passed=False,
            score=0.0,
            reason=f"validator raised {type(exc).__name__}: {exc}"[:500],
        )


def chosen(verdicts: Sequence[Verdict], completion: Completion) -> Completion:
    """The answer the verdicts stand behind (a validator's pick, else the first answer)."""
    for verdict in verdicts:
        if verdict.completion is not None:
            return verdict.completion
    return completion
