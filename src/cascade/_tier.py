"""A tier as the engine runs it: its providers, validators, variants and the checks that
can reject a partial answer, and how many calls one of its answers is billed for.

Built from a :class:`~cascade.TierConfig` by ``_build.py`` (the Cascade sets its
providers and quality breaker); the engine (``engine/_core.py``) runs tiers in order, and
``_attempt.py`` tries one provider of one.
"""

from __future__ import annotations

import copy
from typing import Protocol

import msgspec

from ._config import TierConfig, Variant
from ._types import Message, RequestOptions, Verdict
from .providers import Provider
from .resilience.quality import QualityBreaker
from .validators import ValidationContext, Validator
from .validators.consistency import SelfConsistencyValidator

__all__ = ["PartialCheck", "Tier", "apply_variant", "calls_per_answer"]


class PartialCheck(Protocol):
    """A validator that can reject an answer before it is complete."""

    name: str

    def check_partial(self, text: str, context: ValidationContext) -> Verdict | None: ...


def calls_per_answer(validators: tuple[Validator, ...], hedged: bool) -> int:
    """The most provider calls one answer is billed for: the answer, and every further
    sample each ``self_consistency`` validator may draw (its ``samples`` less the answer:
    each draws its own), twice over when the tier may hedge (the hedge and the call it
    raced are both costed; a tier of one provider has no sibling to hedge to)."""
    samples = 1 + sum(v.samples - 1 for v in validators if isinstance(v, SelfConsistencyValidator))
    return samples * (2 if hedged else 1)


class Tier:
    """A tier as the engine runs it: its providers, validators and variants."""

    __slots__ = (
        "accept_refusals",
        "calls",
        "hedge",
        "hedges",
        "index",
        "mode",
        "name",
        "partial",
        "providers",
        "quality",
        "repair",
        "required",
        "threshold",
        "validators",
        "variants",
        "weights",
        "weights_of_variants",
    )

    def __init__(
        self,
        index: int,
        config: TierConfig,
        validators: tuple[Validator, ...],
        weights: tuple[float, ...],
    ) -> None:
        self.index = index  # 1-based, as users count tiers
        self.name = config.name
        self.mode = config.mode
        self.threshold = config.threshold
        self.validators = validators
        self.weights = weights
        self.variants: tuple[Variant, ...] = tuple(config.variants)
        weights = tuple(v.weight for v in self.variants)
        self.weights_of_variants = weights if any(w != 1.0 for w in weights) else ()
        self.partial: tuple[PartialCheck, ...] = tuple(
            v  # type: ignore[misc]
            for v in validators
            if callable(getattr(v, "check_partial", None)) and getattr(v, "early_reject", True)
        )
        self.hedge = config.hedge
        # a hedge goes to a sibling: a tier of one provider never sends one
        self.hedges = config.hedge is not None and len(config.providers) > 1
        self.calls = calls_per_answer(validators, self.hedges)
        """The most provider calls one answer of this tier is billed for (what
        ``max_cost_usd`` and a gateway key's reservation count)."""
        self.accept_refusals = config.accept_refusals
        self.repair = config.repair
        self.quality: QualityBreaker | None = None
        """The tier's quality breaker (set by the Cascade, which owns the clock)."""
        self.providers: tuple[Provider, ...] = ()
        self.required: tuple[Validator, ...] = ()
        """A request's own validators (``Cascade.run(validators=...)``): each must pass,
        after the tier's own accept the answer."""

    def with_required(self, validators: tuple[Validator, ...]) -> Tier:
        """This tier for one request that brings validators of its own."""
        tier = copy.copy(self)
        tier.required = self.required + validators
        tier.calls = calls_per_answer(self.validators + tier.required, self.hedges)
        return tier

    def starting_with(self, variant: str) -> Tier:
        """This tier with its variants turned so that its first request uses ``variant``
        (a router's choice); further samples take the others in turn."""
        names = [v.name for v in self.variants]
        k = names.index(variant)
        tier = object.__new__(Tier)
        for slot in Tier.__slots__:
            object.__setattr__(tier, slot, getattr(self, slot))
        tier.variants = self.variants[k:] + self.variants[:k]
        if self.weights_of_variants:
            tier.weights_of_variants = self.weights_of_variants[k:] + self.weights_of_variants[:k]
        return tier

    def request(
        self, msgs: tuple[Message, ...], opts: RequestOptions, sample: int
    ) -> tuple[tuple[Message, ...], RequestOptions]:
        """The messages and options of this tier's ``sample``-th request (0 = the first)."""
        if not self.variants:
            return msgs, opts
        return apply_variant(msgs, opts, self.variants[sample % len(self.variants)])


def apply_variant(
    msgs: tuple[Message, ...], opts: RequestOptions, variant: Variant
) -> tuple[tuple[Message, ...], RequestOptions]:
    """Rewrite a request into one prompt variant: its system text, its suffix, its name."""
    out = list(msgs)
    if variant.suffix:
        for i in range(len(out) - 1, -1, -1):
            if out[i].role == "user":
                out[i] = Message(role="user", content=f"{out[i].content}\n\n{variant.suffix}")
                break
    if variant.system:
        out.insert(0, Message(role="system", content=variant.system))
    return tuple(out), msgspec.structs.replace(opts, variant=variant.name)
