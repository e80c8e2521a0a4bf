"""``rules``: ordered rules on keywords, a regular expression, the prompt's length and the
request's metadata, each giving a tier range; the first rule that matches decides.

::

    [router]
    kind = "rules"
    default = { start_tier = 1 }       # no rule matched (absent: no opinion)
    rules = [
      { metadata = { task = "clutrr" }, start_tier = 3 },
      { keywords = ["prove", "derive"], start_tier = 2 },
      { pattern = '\\bSELECT\\b.+\\bFROM\\b', start_tier = 2, max_tier = 2 },
      { min_tokens = 2000, start_tier = 2 },
      { max_tokens = 40, max_tier = 1, reason = "short question" },
    ]

A rule matches when every condition it has holds: ``keywords`` (any of them, as whole
words, case-insensitive), ``pattern`` (a regular expression searched in the text, run by
the ``regex`` engine within ``regex_time_limit_s``), ``min_tokens`` / ``max_tokens`` (the
prompt's estimated tokens, every message), ``metadata`` (each key equals the value, or one
of the values of a list, in ``RequestOptions.metadata``). Keywords and patterns look at
the last user message (``scope = "all"``: every message), at most its first ``max_chars``
characters; a text longer than :data:`ON_LOOP_CHARS` is searched off the event loop. A
pattern that overruns its time limit is a router failure (the run goes on over every
tier, the failure recorded), not a rule that silently did not match.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec
import regex
from msgspec import Meta

from .._errors import ConfigError
from .._types import Message, estimate_prompt_tokens
from ..validators._offload import off_loop
from ._decision import RouteDecision, RouteRequest
from ._params import convert, tier_range
from ._registry import router

__all__ = ["ON_LOOP_CHARS", "RulesRouter"]

ON_LOOP_CHARS: Final = 4096
"""Texts up to this many characters are searched on the event loop (a pattern that
overruns holds it at most ``regex_time_limit_s``); longer ones in a worker thread."""

Tier = Annotated[int, Meta(ge=1, le=1000)]
Text = Annotated[str, Meta(min_length=1, max_length=1000)]


class Rule(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One rule: its conditions (all that are given must hold) and its tier range."""

    keywords: Annotated[list[Text], Meta(min_length=1, max_length=10_000)] | None = None
    pattern: Text | None = None
    min_tokens: Annotated[int, Meta(ge=0)] | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    metadata: dict[str, str | list[str]] | None = None
    start_tier: Tier | None = None
    max_tier: Tier | None = None
    variant: Text | None = None
    reason: Annotated[str, Meta(max_length=200)] | None = None


class Default(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the router says when no rule matches."""

    start_tier: Tier | None = None
    max_tier: Tier | None = None
    variant: Text | None = None
    reason: Annotated[str, Meta(max_length=200)] = "no rule matched"


class RulesParams(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    rules: Annotated[list[Rule], Meta(min_length=1, max_length=10_000)]
    default: Default | None = None
    scope: Literal["last_user", "all"] = "last_user"
    max_chars: Annotated[int, Meta(ge=1, le=1 << 24)] = 32_768
    regex_time_limit_s: Annotated[float, Meta(gt=0, le=60)] = 0.1
    name: Text = "rules"


class _Compiled:
    """A rule ready to test: its keywords as one whole-word pattern, its regex compiled."""

    __slots__ = ("decision", "keywords", "max_tokens", "metadata", "min_tokens", "pattern")

    def __init__(self, i: int, rule: Rule, name: str) -> None:
        path = f"rules[{i}]."
        if (
            rule.keywords is None
            and rule.pattern is None
            and rule.min_tokens is None
            and rule.max_tokens is None
            and not rule.metadata
        ):
            raise ConfigError(
                "a rule needs a condition: keywords, pattern, min_tokens, max_tokens or "
                "metadata (for what applies otherwise, use `default`)",
                path=f"rules[{i}]",
            )
        if rule.start_tier is None and rule.max_tier is None:
            raise ConfigError("a rule needs start_tier or max_tier", path=f"rules[{i}]")
        tier_range(rule.start_tier, rule.max_tier, path=path)
        self.keywords: re.Pattern[str] | None = None
        if rule.keywords is not None:
            words = sorted({w.strip() for w in rule.keywords if w.strip()}, key=len, reverse=True)
            if not words:
                raise ConfigError("expected a non-blank keyword", path=f"{path}keywords")
            # whole words: no word character on either side (so "c++" and "e-mail" work)
            alternatives = "|".join(re.escape(w) for w in words)
            self.keywords = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
        self.pattern: Any = None  # a regex.Pattern
        if rule.pattern is not None:
            try:
                self.pattern = regex.compile(rule.pattern)
            except regex.error as exc:
                raise ConfigError(f"bad regular expression: {exc}", path=f"{path}pattern") from None
        self.min_tokens = rule.min_tokens
        self.max_tokens = rule.max_tokens
        self.metadata: tuple[tuple[str, frozenset[str]], ...] = tuple(
            (k, frozenset([v]) if isinstance(v, str) else frozenset(v))
            for k, v in (rule.metadata or {}).items()
        )
        self.decision = RouteDecision(
            start_tier=rule.start_tier,
            max_tier=rule.max_tier,
            variant=rule.variant,
            reason=rule.reason or f"rule {i + 1} matched",
            router=name,
        )


@router("rules")
class RulesRouter:
    """Ordered rules -> a tier range; the first rule that matches decides (see the
    module's documentation for the table)."""

    def __init__(
        self,
        *,
        rules: list[Any],
        default: Any = None,
        scope: str = "last_user",
        max_chars: int = 32_768,
        regex_time_limit_s: float = 0.1,
        name: str = "rules",
    ) -> None:
        params = convert(
            {
                "rules": rules,
                "default": default,
                "scope": scope,
                "max_chars": max_chars,
                "regex_time_limit_s": regex_time_limit_s,
                "name": name,
            },
            RulesParams,
        )
        self.name = params.name
        self._rules = tuple(_Compiled(i, r, params.name) for i, r in enumerate(params.rules))
        self._scope = params.scope
        self._max_chars = params.max_chars
        self._limit_s = params.regex_time_limit_s
        self._needs_text = any(r.keywords or r.pattern for r in self._rules)
        self._needs_tokens = any(
            r.min_tokens is not None or r.max_tokens is not None for r in self._rules
        )
        d = params.default
        if d is not None:
            tier_range(d.start_tier, d.max_tier, path="default.")
        self._default = (
            RouteDecision(reason="no rule matched", router=params.name)
            if d is None
            else RouteDecision(
                start_tier=d.start_tier,
                max_tier=d.max_tier,
                variant=d.variant,
                reason=d.reason,
                router=params.name,
            )
        )

    def __repr__(self) -> str:
        return f"<RulesRouter {self.name!r} rules={len(self._rules)}>"

    async def route(self, request: RouteRequest) -> RouteDecision:
        text = self._text(request.messages) if self._needs_text else ""
        if len(text) > ON_LOOP_CHARS:
            return await off_loop(
                self.decide, request, text, what=f"router {self.name!r}", limit_s=self._limit_s
            )
        return self.decide(request, text)

    def decide(self, request: RouteRequest, text: str) -> RouteDecision:
        """The first matching rule's decision, else the default (synchronous: the text
        is already bounded)."""
        tokens = estimate_prompt_tokens(request.messages) if self._needs_tokens else 0
        metadata = request.options.metadata or {}
        for rule in self._rules:
            if rule.min_tokens is not None and tokens < rule.min_tokens:
                continue
            if rule.max_tokens is not None and tokens > rule.max_tokens:
                continue
            if rule.metadata and not all(metadata.get(k) in v for k, v in rule.metadata):
                continue
            if rule.keywords is not None and rule.keywords.search(text) is None:
                continue
            if rule.pattern is not None and not self._search(rule.pattern, text):
                continue
            return rule.decision
        return self._default

    def _search(self, pattern: Any, text: str) -> bool:
        try:
            return pattern.search(text, concurrent=True, timeout=self._limit_s) is not None
        except TimeoutError:
            raise TimeoutError(
                f"pattern {pattern.pattern[:100]!r} overran regex_time_limit_s ({self._limit_s:g}s)"
            ) from None

    def _text(self, messages: tuple[Message, ...]) -> str:
        limit = self._max_chars
        if self._scope == "last_user":
            for m in reversed(messages):
                if m.role == "user":
                    return m.content[:limit]
            return ""
        parts: list[str] = []
        left = limit
        for m in messages:
            if left <= 0:
                break
            parts.append(m.content[:left])
            left -= len(parts[-1]) + 1
        return "\n".join(parts)
