"""``self_consistency``: draw several answers and accept the value most of them agree on.

With tier ``variants`` the samples are drawn under different prompt representations
(chain of thought, program of thought, ...): the mixture-of-thought idea, where agreement
across representations is stronger evidence than agreement within one.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from typing import Any

from .._answers import AnswerKey, AnswerType, AnswerTypeError, answer_type
from .._errors import ConfigError, ProviderError
from .._types import Completion, Verdict
from ._extract import Extractor, JsonFieldExtractor, RegexExtractor, get_extractor
from ._offload import (
    BIG_TEXT,
    DEFAULT_TIME_LIMIT_S,
    Overrun,
    check_time_limit,
    off_loop,
)
from ._registry import ValidationContext, validator
from ._schema_pool import json_field

__all__ = ["SelfConsistencyValidator", "next_batch", "votes_needed"]


def votes_needed(samples: int, min_agreement: float) -> int:
    """Votes the majority value needs out of ``samples`` to reach ``min_agreement``."""
    return max(1, math.ceil(min_agreement * samples - 1e-9))


def next_batch(top: int, drawn: int, samples: int, needed: int) -> int:
    """How many samples to draw next; 0 once the outcome is decided.

    Decided: the leading value has ``needed`` votes (agreement), or it could not get them
    even if every remaining sample agreed with it (no longer reachable; a value that trails
    it could not either). Otherwise draw as many as agreement still needs, but no more than
    the outcome can afford to see disagree: after ``slack`` disagreeing samples it is
    decided, so a larger batch could only buy samples the decision no longer needs.
    """
    remaining = samples - drawn
    if top >= needed or top + remaining < needed:
        return 0
    slack = top + remaining - needed  # disagreeing samples that still leave agreement open
    return min(needed - top, slack + 1, remaining)


@validator("self_consistency")
class SelfConsistencyValidator:
    """Accepts the majority answer when at least ``min_agreement`` of ``samples`` agree.

    The attempt's answer is the first sample; the rest are drawn from the same provider as
    needed (``context.sample``), each under the tier's next variant, and stop as soon as the
    outcome is decided. Each sample's final answer comes from ``extractor`` (see
    ``cascade.validators._extract``: ``auto``, ``json:FIELD``, ``last_number``,
    ``regex:PATTERN``, ``hashes``, ``answer_is``, ``recorded``, or a callable), and two
    samples agree when ``answer_type`` says they are the same answer (see
    :func:`cascade.answer_type`): ``"auto"`` (the default; never makes two different
    dates, letters, times or words agree), ``"number"``, ``"date"`` (with ``date_order``
    ``"mdy"``, ``"dmy"`` or ``"strict"``, and extra strptime ``date_formats``),
    ``"choice"``, ``"boolean"``, ``"text"``, ``"json"``, or a callable ``key(answer)``.
    A sample whose answer the type cannot read (under ``"number"``: ``"(86, 42)"``,
    ``"40 + 60/x"``, ``"[invalid]"``) casts no vote, as if it had no answer: its stray
    numbers cannot make it agree with anything, and a sample that is nothing but a parse
    failure is replaced by the next variant's. ``single_number = true`` is the older
    spelling of ``answer_type = "number"``; ``normalize = false`` compares answers exactly
    as extracted.

    The verdict's ``parsed`` is the majority value (the canonical form: ``"1000"``,
    ``"2021-05-01"``, ``"B"``), its ``completion`` the first sample that carries it (the
    result text), its ``score`` the majority's share of the samples drawn.

    A ``regex:PATTERN`` extractor runs in a worker thread, as does reading an answer over
    16 KiB (with ``json:FIELD``, a worker process finds its JSON); a sample not read within
    ``time_limit_s`` (default 2 s) rejects the answer, with a reason saying it overran.

    ``samples = 5, min_agreement = 0.6`` is a 3-of-5 vote. ``early_stop = false`` draws
    every sample whatever the first ones say (a naive vote, to compare against).
    ``samples = 2, min_agreement = 0.5, answer_type = "number"`` accepts the first answer
    that is one number, and draws a second (under the next variant) only when it is not.
    """

    def __init__(
        self,
        *,
        samples: int,
        min_agreement: float = 0.5,
        extractor: Any = "auto",
        answer_type: Any = None,
        date_order: str = "mdy",
        date_formats: Any = (),
        normalize: bool = True,
        single_number: bool = False,
        early_stop: bool = True,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        name: str = "self_consistency",
    ) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 64:
            raise ConfigError(f"expected 1 <= samples <= 64, got {samples!r}", path="samples")
        if isinstance(min_agreement, bool) or not 0 < min_agreement <= 1:
            raise ConfigError(
                f"expected 0 < min_agreement <= 1, got {min_agreement!r}", path="min_agreement"
            )
        self.time_limit_s = check_time_limit(time_limit_s)
        try:
            self._extract: Extractor = get_extractor(extractor, time_limit_s=self.time_limit_s)
        except ValueError as exc:
            raise ConfigError(str(exc), path="extractor") from None
        # a user's pattern may take long: it runs in a thread (and raises Overrun)
        self._regex = self._extract if isinstance(self._extract, RegexExtractor) else None
        # a big answer's JSON is found by a worker process (parsing holds the GIL)
        self._field = self._extract if isinstance(self._extract, JsonFieldExtractor) else None
        self.name = name
        self.samples = samples
        self.min_agreement = float(min_agreement)
        self.needed = votes_needed(samples, self.min_agreement)
        self.answer_type: AnswerType | None = _answer_type(
            answer_type,
            date_order=date_order,
            date_formats=date_formats,
            normalize=normalize,
            single_number=single_number,
        )
        self.early_stop = early_stop

    def __repr__(self) -> str:
        return f"<SelfConsistencyValidator {self.needed} of {self.samples}>"

    def value(self, completion: Completion) -> Hashable | None:
        """The sample's vote: its answer's key under the answer type (None: no vote).

        Raises Overrun when a ``regex:`` extractor overruns ``time_limit_s``."""
        if self._regex is not None:
            raw = self._regex.search(completion.text)
        else:
            raw = self._extract(completion)
        return self._key(raw)

    def _key(self, raw: str | None) -> Hashable | None:
        if self.answer_type is None:
            return raw if raw else None
        return self.answer_type.key(raw)

    async def _vote(self, completion: Completion) -> Hashable | None:
        if self._regex is None and len(completion.text) <= BIG_TEXT:
            return self.value(completion)  # built-in extractors are linear: on the loop
        if self._field is not None:
            try:
                reply = await json_field(
                    completion.text,
                    self._field.keys,
                    lists=True,
                    what="reading the answer",
                    limit_s=self.time_limit_s,
                )
            except ValueError:  # the worker could not read it: no vote
                return None
            value = reply.get("value")
            return self._key(reply.get("text", None if value is None else str(value)))
        # a user's pattern (bounded by its own time limit too, which the regex engine checks
        # now and then only), or a big answer
        what = "reading the answer"
        if self._regex is not None:
            what = f"extractor regex {self._regex.pattern!r}"
        return await off_loop(self.value, completion, what=what, limit_s=self.time_limit_s)

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        try:
            return await self._validate(completion, context)
        except Overrun as exc:
            return Verdict(validator=self.name, passed=False, score=0.0, reason=str(exc))

    async def _validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        weights = context.weights
        plan = [weights[k % len(weights)] if weights else 1.0 for k in range(self.samples)]
        needed = self.min_agreement * sum(plan) - 1e-9 if weights else float(self.needed)
        answers = [completion]
        values = [await self._vote(completion)]
        tally: dict[Hashable, float] = {}
        if values[0] is not None:
            tally[values[0]] = plan[0]
        note = ""
        while True:
            drawn = len(values)
            top = max(tally.values(), default=0.0)
            if not self.early_stop:  # draw every sample, then count (for comparison)
                batch = self.samples - drawn
            elif weights:  # unequal votes: one at a time, deciding after each
                decided = top >= needed or top + sum(plan[drawn:]) < needed
                batch = 0 if decided else 1
            else:
                batch = next_batch(int(top), drawn, self.samples, self.needed)
            if batch == 0:
                break
            if context.sample is None:
                note = "; no provider to draw samples from"
                break
            try:
                new = await context.sample(batch)
            except ProviderError as exc:
                note = f"; sampling failed: {type(exc).__name__}"
                break
            for sample in new:
                answers.append(sample)
                value = await self._vote(sample)
                if value is not None:
                    tally[value] = tally.get(value, 0.0) + plan[len(values)]
                values.append(value)
        drawn_weight = sum(plan[: len(values)])
        return self._verdict(
            answers, values, tally, needed, note, weighted=bool(weights), drawn_weight=drawn_weight
        )

    def _verdict(
        self,
        answers: list[Completion],
        values: list[Hashable | None],
        tally: dict[Hashable, float],
        needed: float,
        note: str,
        *,
        weighted: bool,
        drawn_weight: float,
    ) -> Verdict:
        drawn = len(values)
        if not tally:
            return Verdict(
                validator=self.name,
                passed=False,
                score=0.0,
                reason=f"no final answer found in {drawn} samples{note}",
            )
        top = max(tally.values())
        # Ties go to the value that reached the top first (the earliest sample).
        majority = next(v for v in values if v is not None and tally[v] == top)
        carrier = answers[values.index(majority)]
        passed = top >= needed
        counts = Counter(v for v in values if v is not None)
        shown = ", ".join(f"{_shown(v)!r}: {n}" for v, n in counts.most_common(4))
        value = _shown(majority)
        if weighted:
            agree = f"votes weighing {top:g} of the {drawn} samples drawn agree on {value!r}"
            need = f"needs {needed:.3g} of {self.min_agreement:g} x the planned weight"
        else:
            agree = f"{top:g} of {drawn} samples agree on {value!r}"
            need = f"needs {self.needed} of {self.samples}"
        return Verdict(
            validator=self.name,
            passed=passed,
            # of everything drawn, answerless samples included
            score=min(1.0, top / drawn_weight) if weighted and drawn_weight else top / drawn,
            reason=f"{agree} ({need}; {shown}){note}"[:500],
            parsed=value if passed else None,
            completion=carrier,
        )


def _shown(key: Hashable) -> Any:
    """What a vote reports: the canonical value of a built-in type's key."""
    return key.value if isinstance(key, AnswerKey) else key


def _answer_type(
    spec: Any, *, date_order: str, date_formats: Any, normalize: bool, single_number: bool
) -> AnswerType | None:
    """The validator's answer type from its options; None: compare exactly as extracted."""
    for name, flag in (("normalize", normalize), ("single_number", single_number)):
        if not isinstance(flag, bool):
            raise ConfigError(f"expected true or false, got {flag!r}", path=name)
    if not normalize:
        if spec is not None or single_number:
            raise ConfigError(
                "normalize = false compares answers as written; it cannot be combined with "
                "answer_type or single_number",
                path="normalize",
            )
        return None
    if single_number:
        if spec not in (None, "number"):
            raise ConfigError(
                f"single_number = true means answer_type = 'number', not {spec!r}",
                path="single_number",
            )
        spec = "number"
    try:
        return answer_type(
            "auto" if spec is None else spec, date_order=date_order, date_formats=date_formats
        )
    except AnswerTypeError as exc:
        raise ConfigError(str(exc), path=exc.field) from None
