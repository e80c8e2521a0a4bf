"""Wire types: what goes into a run and what comes out, as frozen msgspec Structs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ._errors import InputError

__all__ = [
    "Attempt",
    "Chunk",
    "Completion",
    "Message",
    "Outcome",
    "RequestOptions",
    "Result",
    "Usage",
    "Verdict",
]

Role = Literal["system", "user", "assistant"]
Outcome = Literal["accepted", "rejected", "failed", "skipped", "cancelled"]
NonNegFloat = Annotated[float, Meta(ge=0)]
NonNegInt = Annotated[int, Meta(ge=0)]

MAX_REPORTED_TOKENS = 1_000_000_000
"""The most tokens a server may report for one call (prompt, completion, cached).

Ten times the largest context window of any model, times the 128 answers ``n`` allows,
is still far below it. A count above it, below 0, or not an integer is a
:class:`~cascade.MalformedResponse`: a bogus usage must neither make a run look free
(and so let a later tier bypass ``max_cost_usd``) nor overflow the cost arithmetic."""
ReportedTokens = Annotated[int, Meta(ge=0, le=MAX_REPORTED_TOKENS)]
"""A token count as decoded from a server's usage object."""


class Message(msgspec.Struct, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=True):
    """One chat message. Plain ``{"role": ..., "content": ...}`` dicts are accepted too."""

    role: Role
    content: str


class RequestOptions(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True
):
    """Sampling options sent to every provider the request reaches.

    ``metadata`` is never sent upstream: it tags the run for logs and traces. ``variant``
    names the prompt variant the request was built with (set by the engine from the tier's
    ``variants``; a replay provider serves the recorded answer of that variant).
    ``logprobs`` asks OpenAI-compatible servers for token log-probabilities.
    ``response_format`` is the OpenAI-style object (``{"type": "json_object"}``); providers
    without such a field ignore it.
    """

    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stop: tuple[str, ...] | None = None
    seed: int | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None
    variant: str | None = None
    metadata: dict[str, str] | None = None

    def __post_init__(self) -> None:
        # Meta bounds are checked when decoding; a Struct built in Python needs this.
        t, m, n = self.temperature, self.max_tokens, self.n
        if t is not None and not 0 <= t <= 2:
            raise InputError(f"expected 0 <= temperature <= 2, got {t}", path="temperature")
        p = self.top_p
        if p is not None and not 0 <= p <= 1:
            raise InputError(f"expected 0 <= top_p <= 1, got {p}", path="top_p")
        if m is not None and m < 1:
            raise InputError(f"expected max_tokens >= 1, got {m}", path="max_tokens")
        if n is not None and not 1 <= n <= 128:
            raise InputError(f"expected 1 <= n <= 128, got {n}", path="n")


class Chunk(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One piece of a provider's answer stream.

    Text deltas carry ``text``; the last chunk usually carries ``finish_reason`` and the
    token usage the provider reported. ``input_tokens`` counts the whole prompt, cache
    reads and writes included; ``cache_read_tokens`` and ``cache_write_tokens`` are the
    parts of it read from or written to the provider's prompt cache. ``refusal``: a piece
    of the model's refusal to answer (OpenAI ``refusal``; Anthropic ``stop_reason:
    "refusal"``).
    """

    text: str = ""
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None
    logprobs: tuple[float, ...] | None = None
    answer: str | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    refusal: str | None = None


def join_chunks(chunks: Sequence[Chunk]) -> Chunk:
    """One chunk for ``chunks`` (pieces of a stream that arrived together), as a reader of
    the stream sums them up: the text and the refusal joined, the logprobs in one tuple,
    of every other field the last value sent (of ``model``, the last non-empty one).

    >>> one = join_chunks([Chunk(text="4", model="m"), Chunk(text="2", finish_reason="stop")])
    >>> one.text, one.model, one.finish_reason
    ('42', 'm', 'stop')
    """
    # One pass, field by field (a loop of attribute checks costs less than building the
    # columns, for two chunks or forty).
    finish = input_tokens = output_tokens = model = answer = cache_read = cache_write = None
    logprobs: list[float] | None = None
    refusal: list[str] | None = None
    for c in chunks:
        if c.finish_reason is not None:
            finish = c.finish_reason
        if c.input_tokens is not None:
            input_tokens = c.input_tokens
        if c.output_tokens is not None:
            output_tokens = c.output_tokens
        if c.model:
            model = c.model
        if c.logprobs is not None:
            if logprobs is None:
                logprobs = []
            logprobs += c.logprobs
        if c.answer is not None:
            answer = c.answer
        if c.cache_read_tokens is not None:
            cache_read = c.cache_read_tokens
        if c.cache_write_tokens is not None:
            cache_write = c.cache_write_tokens
        if c.refusal is not None:
            if refusal is None:
                refusal = []
            refusal.append(c.refusal)
    return Chunk(
        text="".join([c.text for c in chunks]),
        finish_reason=finish,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        model=model,
        logprobs=None if logprobs is None else tuple(logprobs),
        answer=answer,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        refusal=None if refusal is None else "".join(refusal),
    )


class Completion(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One provider's whole answer to one request.

    ``input_tokens`` is the whole prompt, the cached part included (as OpenAI counts
    ``prompt_tokens``; Anthropic's ``input_tokens`` leaves the cache out, and is added to
    its cache counts here).
    """

    text: str
    provider: str
    model: str
    finish_reason: str | None = None
    input_tokens: NonNegInt = 0
    output_tokens: NonNegInt = 0
    latency_s: NonNegFloat = 0.0
    ttft_s: NonNegFloat | None = None
    variant: str | None = None
    logprobs: tuple[float, ...] | None = None
    """Token log-probabilities, when the provider returned them."""
    answer: str | None = None
    """A final answer the provider reported apart from the text (a replay's recorded one)."""
    cache_read_tokens: NonNegInt = 0
    """Prompt tokens served from the provider's prompt cache (part of ``input_tokens``)."""
    cache_write_tokens: NonNegInt = 0
    """Prompt tokens written to the provider's prompt cache (part of ``input_tokens``)."""
    refusal: str | None = None
    """The model refused to answer: its refusal text (OpenAI ``message.refusal``), or a
    note of the stop reason (Anthropic ``stop_reason: "refusal"``). A refusal is an
    answer, costed like any other; the engine rejects it unless the tier sets
    ``accept_refusals`` (then the validators judge it)."""


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    """What one validator said of one completion.

    ``score`` is in [0, 1] (1.0 for a plain pass); ``parsed`` carries a value the validator
    extracted (the JSON object for ``json_schema``), which fills ``Result.parsed``.
    """

    validator: str
    passed: bool
    score: Annotated[float, Meta(ge=0, le=1)] = 1.0
    reason: str = ""
    parsed: Any = None
    completion: Completion | None = None
    """The answer this validator stands behind, when it is not the attempt's first one
    (``self_consistency``: a sample carrying the majority value). An accepted attempt's
    result text comes from it."""


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """One call to one provider within a run (or a tier skipped for budget).

    ``outcome``: ``accepted`` (every validator passed), ``rejected`` (a validator failed:
    see ``verdicts``), ``failed`` (transport or provider error: see ``error_type``),
    ``skipped`` (the tier was not tried: see ``error``), or ``cancelled`` (the engine
    stopped it: a hedged call that lost its race, see ``error``).
    """

    tier: int
    tier_name: str
    provider: str
    model: str
    outcome: Outcome
    verdicts: tuple[Verdict, ...] = ()
    error_type: str | None = None
    error: str | None = None
    cost_usd: NonNegFloat = 0.0
    input_tokens: NonNegInt = 0
    output_tokens: NonNegInt = 0
    latency_s: NonNegFloat = 0.0
    ttft_s: NonNegFloat | None = None
    completion: Completion | None = None
    samples: tuple[Completion, ...] = ()
    """Extra answers drawn from the same provider for validation (self-consistency); their
    cost and tokens are included above."""
    hedge: bool = False
    """This call was started as a hedge: its sibling had no first token in time."""
    status: int | None = None
    """The HTTP status the provider failed this call with (``ProviderStatusError`` and
    its subclasses: 400, 429, 500...); None otherwise."""

    @property
    def score(self) -> float:
        """Mean validator score; 0.0 for an attempt with no completion."""
        if self.completion is None:
            return 0.0
        if not self.verdicts:
            return 1.0
        return sum(v.score for v in self.verdicts) / len(self.verdicts)


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Tokens summed over every attempt of a run."""

    input_tokens: NonNegInt = 0
    output_tokens: NonNegInt = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Result(msgspec.Struct, frozen=True, kw_only=True):
    """The answer of a run, with what it cost and the whole escalation path.

    ``validated`` is False only when ``on_exhausted = "best"`` returned the best rejected
    answer. ``cost_usd``, ``usage`` and ``latency_s`` cover every attempt, not only the
    accepted one.
    """

    text: str
    parsed: Any
    tier: int
    tier_name: str
    provider: str
    model: str
    cost_usd: float
    usage: Usage
    latency_s: float
    attempts: tuple[Attempt, ...]
    validated: bool
    finish_reason: str | None = None
    variant: str | None = None
    """The prompt variant of the answer returned."""
    answer: str | None = None
    """The final answer a provider reported apart from the text (replay), if any."""
    refusal: str | None = None
    """The answer returned is a refusal (``Completion.refusal``): returned only when no
    tier accepted anything (``on_exhausted = "best"``) or its tier ``accept_refusals``."""
    route: RouteDecision | None = None
    """The cascade's router's decision for this run (None: no router, or the call set
    ``start_tier`` / ``max_tier`` itself). The router's own calls, if any (the ``llm``
    router), are attempts of tier 0 named ``router``, costed into ``cost_usd``."""

    @property
    def escalations(self) -> int:
        """How many tiers were left behind before the answering one (the router's calls,
        tier 0, are not a tier left behind)."""
        return len({a.tier for a in self.attempts if a.tier != self.tier and a.tier})


def coerce_messages(messages: Sequence[Message | Mapping[str, Any]]) -> tuple[Message, ...]:
    """Turn user input into Messages, or raise InputError naming the bad item."""
    raw: object = messages  # callers without type checking pass anything
    kind = type(raw)
    # a list or tuple (the common case) skips the ABC check, which is slow
    if (
        kind is not list
        and kind is not tuple
        and (isinstance(raw, str | bytes) or not isinstance(raw, Sequence))
    ):
        raise InputError("expected a list of messages", path="messages")
    if not messages:
        raise InputError("expected at least one message", path="messages")
    out: list[Message] = []
    for i, m in enumerate(messages):
        if isinstance(m, Message):
            out.append(m)
            continue
        if type(m) is not dict and not isinstance(m, Mapping):
            raise InputError(
                f"expected a message object, got {type(m).__name__}", path=f"messages[{i}]"
            )
        role = m.get("role")
        if role not in ("system", "user", "assistant"):
            raise InputError(
                f"expected 'system', 'user' or 'assistant', got {role!r}",
                path=f"messages[{i}].role",
            )
        content = m.get("content")
        if not isinstance(content, str):
            raise InputError(
                f"expected a string, got {type(content).__name__}",
                path=f"messages[{i}].content",
            )
        out.append(Message(role=role, content=content))
    return tuple(out)


def estimate_prompt_tokens(messages: Sequence[Message]) -> int:
    """A prompt's tokens when the provider reports none: ~4 characters a token, plus a few
    per message for its framing."""
    return sum(len(m.content) for m in messages) // 4 + 4 * len(messages)


def estimate_text_tokens(chars: str | int) -> int:
    """An answer's tokens when the provider reports none: ~4 characters a token, at least
    one for any text (``chars``: the text or its length)."""
    n = chars if isinstance(chars, int) else len(chars)
    return max(1, n // 4) if n else 0


# Last: the routing package imports Message and RequestOptions from here, and Result's
# annotation must resolve (msgspec reads it from this module's globals).
from .routing._decision import RouteDecision  # noqa: E402
