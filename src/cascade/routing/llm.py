"""``llm``: a cheap model of the cascade rates the request's difficulty from 1 to 5, and
the rating picks the start tier.

::

    router_timeout_s = 5          # the rating is a model call: give it time

    [router]
    kind = "llm"
    provider = "small-a"          # a provider of the cascade (checked at build)
    thresholds = [3, 5]           # rating >= 3: tier 2; >= 5: tier 3; else tier 1

The call goes through the engine's own path (:attr:`RouteRequest.complete`): the
provider's circuit breaker, rate limit and retries apply, and it is an attempt of the run
(tier 0, ``router``), costed into ``Result.cost_usd`` and the budget. When it fails (its
breaker is open, it errors, it has no headroom now) or its reply holds no rating, the
router has no opinion and the run goes on over every tier.

The model sees ``prompt`` (a system message) and the last user message, at most its
first ``max_chars`` characters. Ratings are cached by a hash of what the model would see
(a bounded LRU of ``cache_size`` entries), so a repeated prompt costs nothing.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Annotated, Final

import msgspec
import regex
from msgspec import Meta

from .._errors import ConfigError
from .._types import Message, RequestOptions
from ._decision import RouteDecision, RouteRequest
from ._params import convert
from ._registry import router

__all__ = ["DEFAULT_PROMPT", "LLMRouter", "parse_rating"]

DEFAULT_PROMPT: Final = (
    "Rate how difficult the user's request is for a language model to answer correctly, "
    "from 1 (trivial: a fact or a one-step task) to 5 (expert: long multi-step reasoning "
    "or specialist knowledge). Do not answer the request. Reply with the digit only."
)

_REPLY_CHARS = 400  # a rating is at the start of a reply: never scan a long one
_WORDS = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_RATING = regex.compile(r"(?<![\w.])([1-5]|one|two|three|four|five)(?![\w]|\.\d)", regex.IGNORECASE)


def parse_rating(reply: str) -> int | None:
    """The first rating 1-5 in ``reply`` (a digit or a number word standing alone:
    ``"4"``, ``"Difficulty: 4/5"``, ``'{"difficulty": 4}'``, ``"I'd say three."``), else
    None (``"10"``, ``"4.5"``, ``"0"`` and ``"rating"`` are not ratings)."""
    found = _RATING.search(reply[:_REPLY_CHARS])
    if found is None:
        return None
    token = found.group(1).lower()
    return _WORDS.get(token) or int(token)


class LLMParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    provider: Annotated[str, Meta(min_length=1, max_length=128)]
    thresholds: Annotated[list[Annotated[int, Meta(ge=1, le=5)]], Meta(max_length=100)]
    prompt: Annotated[str, Meta(min_length=1, max_length=20_000)] = DEFAULT_PROMPT
    max_chars: Annotated[int, Meta(ge=1, le=1 << 20)] = 4000
    max_tokens: Annotated[int, Meta(ge=1, le=1000)] = 8
    cache_size: Annotated[int, Meta(ge=0, le=1_000_000)] = 4096
    name: Annotated[str, Meta(min_length=1, max_length=1000)] = "llm"


@router("llm")
class LLMRouter:
    """A difficulty rating from a provider of the cascade -> the start tier: tier
    ``1 + (thresholds at or below the rating)``."""

    def __init__(
        self,
        *,
        provider: str,
        thresholds: list[int],
        prompt: str = DEFAULT_PROMPT,
        max_chars: int = 4000,
        max_tokens: int = 8,
        cache_size: int = 4096,
        name: str = "llm",
    ) -> None:
        params = convert(
            {
                "provider": provider,
                "thresholds": thresholds,
                "prompt": prompt,
                "max_chars": max_chars,
                "max_tokens": max_tokens,
                "cache_size": cache_size,
                "name": name,
            },
            LLMParams,
        )
        if any(a > b for a, b in zip(params.thresholds, params.thresholds[1:], strict=False)):
            raise ConfigError(
                f"expected ratings in increasing order, got {params.thresholds}",
                path="thresholds",
            )
        self.name = params.name
        self.provider = params.provider
        self.thresholds = tuple(params.thresholds)
        self._prompt = params.prompt
        self._max_chars = params.max_chars
        self._options = RequestOptions(max_tokens=params.max_tokens, temperature=0.0)
        self._cache_size = params.cache_size
        self._cache: OrderedDict[bytes, int] = OrderedDict()

    def __repr__(self) -> str:
        return (
            f"<LLMRouter {self.name!r} provider={self.provider!r} "
            f"thresholds={list(self.thresholds)} cached={len(self._cache)}>"
        )

    def providers_used(self) -> Mapping[str, str]:
        return {"provider": self.provider}

    def tier_for(self, rating: int) -> int:
        """The start tier a rating gives."""
        return 1 + sum(1 for t in self.thresholds if rating >= t)

    async def route(self, request: RouteRequest) -> RouteDecision:
        text = ""
        for m in reversed(request.messages):
            if m.role == "user":
                text = m.content[: self._max_chars]
                break
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        rating = self._cache.get(key)
        cached = rating is not None
        if rating is not None:
            self._cache.move_to_end(key)
        else:
            if request.complete is None:
                return self._no_opinion("no provider to ask outside a run")
            asked = (
                Message(role="system", content=self._prompt),
                Message(role="user", content=text),
            )
            completion = await request.complete(self.provider, asked, self._options)
            if completion is None:
                return self._no_opinion(f"no rating: the call to {self.provider!r} failed")
            rating = parse_rating(completion.text)
            if rating is None:
                shown = completion.text[:60]
                return self._no_opinion(f"no rating in the reply {shown!r}")
            self._remember(key, rating)
        tier = self.tier_for(rating)
        if request.tiers:
            tier = min(tier, len(request.tiers))  # more thresholds than tiers: the last
        return RouteDecision(
            start_tier=tier,
            reason=f"difficulty {rating}/5{' (cached)' if cached else ''}",
            score=float(rating),
            router=self.name,
        )

    def _remember(self, key: bytes, rating: int) -> None:
        if not self._cache_size:
            return
        self._cache[key] = rating
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _no_opinion(self, why: str) -> RouteDecision:
        return RouteDecision(reason=why, router=self.name)
