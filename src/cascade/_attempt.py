"""One attempt at one tier: the provider call.

The engine (``engine/_core.py``) decides which tier (``_tier.py``) and provider to try;
this module holds the mechanics of trying one: collecting the stream into a Completion
(with early rejection by validators that can judge a partial answer, and the call's
timeouts). The validators' verdicts are composed in ``_judge.py``; further samples for
validators that ask for them: ``_sampler.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from time import perf_counter
from typing import Literal

import msgspec

from ._clock import SupportsTimers, timeout_at
from ._errors import ProviderError, ProviderTimeout
from ._telemetry import NOOP_ATTEMPT, AttemptTrace
from ._tier import PartialCheck, Tier
from ._types import (
    Chunk,
    Completion,
    Message,
    RequestOptions,
    Verdict,
    estimate_prompt_tokens,
    estimate_text_tokens,
    join_chunks,
)
from .providers import Provider, answers_whole, batches_of
from .providers._base import joined_of
from .validators import ValidationContext

__all__ = ["InFlight", "complete", "whole_answer", "whole_completion"]


_PARTIAL_WINDOW = 4096
"""Partial checks see the answer's first 4 KB: what they judge (how it starts, its first
fence) is settled by then, and re-reading a long answer on every chunk would be quadratic."""


class InFlight(msgspec.Struct, eq=False):
    """The attempt under way: what it has cost so far, and what a deadline records. (A
    Struct, mutable and compared by identity: built in C, once per call.)"""

    tier: Tier
    provider: Provider
    t0: float
    hedge: bool = False
    completion: Completion | None = None
    cost: float = 0.0
    received: int = 0  # characters of answer so far (costed if the call is cut off)
    cut_off_tokens: int = 0
    """Output tokens a call cut off after its request was sent is billed at least: a
    provider that does not stream generates (and bills) the whole answer whether or
    not anyone waits for it; set by the caller (``ProviderCalls.attempt``)."""
    phase: Literal["waiting", "sent", "backoff"] = "waiting"
    """Where the call is: waiting for its rate limit or breaker, its request sent (the
    prompt is billed from here on), or between tries (the failed try was recorded and
    costed; nothing is under way)."""
    samples: list[Completion] = []
    trace: AttemptTrace = NOOP_ATTEMPT  # the span of the call (try) under way

    def seen(self, chars: int) -> None:
        """Count text as it arrives (``complete``'s ``on_text``)."""
        self.received += chars


async def complete(
    provider: Provider,
    msgs: tuple[Message, ...],
    opts: RequestOptions,
    t0: float,
    *,
    partial: tuple[PartialCheck, ...] = (),
    ctx: ValidationContext | None = None,
    on_text: Callable[[int], None] | None = None,
    on_delta: Callable[[str], Awaitable[None] | None] | None = None,
    clock: SupportsTimers | None = None,
) -> tuple[Completion, Verdict | None]:
    """Collect a provider's stream into one Completion.

    With ``partial`` checks, each text chunk is shown to them; the first failed verdict
    stops reading (closing the stream cancels the upstream request) and is returned with
    the partial answer, whose output tokens are then estimated from its length.

    The provider's ``first_token_timeout_s`` and ``idle_timeout_s`` are enforced here, on
    chunks rather than socket reads (so keep-alive comments do not count as progress), for
    every kind of provider; only chunks with text reset the idle timer. ``on_text`` is
    called with the length of each text chunk; ``on_delta`` is called with the text
    (that a partial check passed) and what it returns, if anything, is awaited before the
    next chunk is read (a slow reader downstream); that wait does not count against the
    call's timeouts. The timeouts
    run on ``clock`` if given (a clock that runs timers), else on the loop's clock.
    """
    if whole_answer(provider):
        one: Chunk = await provider.complete_whole(msgs, opts)  # type: ignore[attr-defined]
        ttft = arrived(one, t0, on_text)
        if on_delta is not None and one.text:
            wait = on_delta(one.text)
            if wait is not None:
                await wait
        return whole_completion(provider, msgs, opts, t0, one, ttft, on_text), None
    parts: list[str] = []
    text_so_far = ""
    early: Verdict | None = None
    ttft = None
    finish: str | None = None
    in_tokens: int | None = None
    out_tokens: int | None = None
    model: str | None = None
    answer: str | None = None
    logprobs: list[float] | None = None
    cache_read: int | None = None
    cache_write: int | None = None
    refusal: list[str] | None = None
    config = provider.config
    first_s, idle_s = config.first_token_timeout_s, config.idle_timeout_s
    watch = first_s is not None or idle_s is not None
    started = False  # a chunk has arrived: idle_timeout_s counts from now on
    tick = asyncio.get_running_loop().time if clock is None else clock.monotonic
    now = tick()
    # timeout_s is enforced with _clock.timeout_at, not by aiohttp: aiohttp's timer un-cancels
    # its task twice, which swallows a deadline (the run's, or the caller's) firing in the
    # same turn. Here for every call but a whole-body call of a provider that bounds those
    # itself (the HTTP providers' post_whole), which would otherwise run two timers.
    total_at = now + config.timeout_s
    first_at = None if first_s is None else now + first_s
    at, phase = total_at, "total"
    if first_at is not None and first_at < total_at:
        at, phase = first_at, "first_token"  # idle_timeout_s counts from the first chunk
    watchdog = timeout_at(clock, at)
    source: AsyncIterator[Chunk]
    if on_delta is None and not partial and batches_of(provider):
        # Nothing looks at the answer chunk by chunk: what one read of the stream brought
        # is one chunk, one turn of this loop (not one per SSE event); an HTTP provider
        # may join a read without making its chunks.
        if joined_of(provider):
            source = provider.stream_joined(msgs, opts)  # type: ignore[attr-defined]
        else:
            source = _joined(provider.stream_batches(msgs, opts))  # type: ignore[attr-defined]
    else:
        source = provider.stream(msgs, opts)
    try:
        async with (
            watchdog,
            aclosing(source) as chunks,  # type: ignore[type-var]
        ):
            async for chunk in chunks:
                # Only answer text (or a refusal's) is progress: a chunk of usage or a
                # finish reason alone starts the idle timer (when it is the first chunk)
                # but never resets it, so a server trickling such events cannot keep a
                # call alive.
                progress = bool(chunk.text or chunk.refusal)
                if watch and (progress or not started):
                    started = True
                    if progress and first_at is not None:
                        first_at = None  # the first token came: from now on, only idle
                    at, phase = total_at, "total"
                    if idle_s is not None and tick() + idle_s < at:
                        at, phase = tick() + idle_s, "idle"
                    if first_at is not None and first_at <= at:
                        at, phase = first_at, "first_token"
                    watchdog.reschedule(at)
                if chunk.text:
                    if ttft is None:
                        ttft = perf_counter() - t0
                    parts.append(chunk.text)
                    if on_text is not None:
                        on_text(len(chunk.text))
                    if partial and len(text_so_far) < _PARTIAL_WINDOW:
                        text_so_far += chunk.text
                        early = _first_failure(partial, text_so_far, ctx)
                        if early is not None:
                            finish = "rejected_early"
                            out_tokens = None  # nothing reported yet for what was received
                            break
                    if on_delta is not None:
                        wait = on_delta(chunk.text)
                        if wait is not None:  # the reader's time is not the provider's
                            watchdog.reschedule(None)
                            before = tick()
                            await wait
                            waited = tick() - before
                            total_at += waited
                            at += waited
                            watchdog.reschedule(at)
                if chunk.finish_reason is not None:
                    finish = chunk.finish_reason
                if chunk.input_tokens is not None:
                    in_tokens = chunk.input_tokens
                if chunk.output_tokens is not None:
                    out_tokens = chunk.output_tokens
                if chunk.model:
                    model = chunk.model
                if chunk.answer is not None:
                    answer = chunk.answer
                if chunk.logprobs:
                    if logprobs is None:
                        logprobs = []
                    logprobs.extend(chunk.logprobs)
                if chunk.cache_read_tokens is not None:
                    cache_read = chunk.cache_read_tokens
                if chunk.cache_write_tokens is not None:
                    cache_write = chunk.cache_write_tokens
                if chunk.refusal is not None:
                    if refusal is None:
                        refusal = []
                    refusal.append(chunk.refusal)
                    if on_text is not None and chunk.refusal:
                        on_text(len(chunk.refusal))  # a refusal's text is a first token too
    except ProviderError as exc:
        if parts or refusal:
            # A stream that broke after text arrived was still generated, and billed:
            # the engine costs what arrived (about 4 characters a token).
            exc.received_chars = _received(parts, refusal)
        raise
    except TimeoutError:
        if not watchdog.expired():
            raise
        limit = {"first_token": first_s, "idle": idle_s}.get(phase, config.timeout_s)
        what = {"first_token": "no first token", "idle": "no chunk"}.get(phase, "not done")
        field = "timeout_s" if phase == "total" else f"{phase}_timeout_s"
        error = ProviderTimeout(
            f"{what} within {limit}s ({field})",
            provider=provider.name,
            model=provider.model,
            phase=phase,
        )
        error.received_chars = _received(parts, refusal)
        try:
            raise error from None
        finally:  # the error's traceback holds this frame: no local may hold the error
            del error
    text = parts[0] if len(parts) == 1 else "".join(parts)
    # The pieces go once joined, before the logprobs are copied into their tuple: the
    # answer is then held once, as max_response_bytes counts it (providers/_sizes.py).
    parts.clear()
    return _completion(
        provider, msgs, opts, t0, text, ttft, finish, in_tokens, out_tokens, model, answer,
        logprobs, cache_read, cache_write, refusal,
    ), early  # fmt: skip


async def _joined(batches: AsyncIterator[list[Chunk]]) -> AsyncGenerator[Chunk, None]:
    """Each batch of a stream (:class:`~cascade.providers.SupportsBatches`) as one chunk
    (an empty one, which a provider of the user's may send, as none)."""
    async with aclosing(batches):  # type: ignore[type-var]
        async for batch in batches:
            if len(batch) == 1:
                yield batch[0]
            elif batch:
                yield join_chunks(batch)


def whole_answer(provider: Provider) -> bool:
    """Whether a call to ``provider`` is one awaited ``complete_whole``: a provider that
    does not stream and answers whole (:class:`~cascade.providers.SupportsWhole`), with no
    first-token or idle timeout to watch. It bounds the call itself (its ``timeout_s``):
    no iterator of one chunk, no second timer. (Partial checks are for streams only.)"""
    config = provider.config
    return (
        not config.stream
        and config.first_token_timeout_s is None
        and config.idle_timeout_s is None
        and answers_whole(provider)
    )


def arrived(one: Chunk, t0: float, on_text: Callable[[int], None] | None) -> float | None:
    """A whole answer came: its time to first token (None if it has no text), its text
    counted by ``on_text``."""
    if not one.text:
        return None
    ttft = perf_counter() - t0
    if on_text is not None:
        on_text(len(one.text))
    return ttft


def whole_completion(
    provider: Provider,
    msgs: tuple[Message, ...],
    opts: RequestOptions,
    t0: float,
    one: Chunk,
    ttft: float | None,
    on_text: Callable[[int], None] | None,
) -> Completion:
    """The Completion of a whole answer (after :func:`arrived`); a refusal's text counted."""
    if one.refusal and on_text is not None:
        on_text(len(one.refusal))
    return _completion(
        provider, msgs, opts, t0, one.text, ttft, one.finish_reason, one.input_tokens,
        one.output_tokens, one.model, one.answer,
        None if one.logprobs is None else list(one.logprobs),
        one.cache_read_tokens, one.cache_write_tokens,
        None if one.refusal is None else [one.refusal],
    )  # fmt: skip


def _completion(
    provider: Provider,
    msgs: tuple[Message, ...],
    opts: RequestOptions,
    t0: float,
    text: str,
    ttft: float | None,
    finish: str | None,
    in_tokens: int | None,
    out_tokens: int | None,
    model: str | None,
    answer: str | None,
    logprobs: list[float] | None,
    cache_read: int | None,
    cache_write: int | None,
    refusal: list[str] | None,
) -> Completion:
    """The call's Completion; counts the provider did not report are estimated, and so
    are counts of zero for a prompt or an answer that has text: no model reads or writes
    text for free, and a zero would make the call cost nothing (a key's daily budget that
    never moves, a cost-aware router misled)."""
    if in_tokens is None or (in_tokens == 0 and not cache_read and not cache_write):
        in_tokens = estimate_prompt_tokens(msgs)  # ~4 characters a token
    # (Anthropic counts cached prompt tokens apart: 0 beside them is the whole prompt read
    # from its cache.)
    if not out_tokens:
        out_tokens = estimate_text_tokens(len(text) + sum(len(r) for r in refusal or ()))
    return Completion(
        text=text,
        provider=provider.name,
        model=model or provider.model,
        finish_reason=finish,
        input_tokens=in_tokens,
        output_tokens=out_tokens,
        latency_s=perf_counter() - t0,
        ttft_s=ttft,
        variant=opts.variant,
        logprobs=tuple(logprobs) if logprobs is not None else None,
        answer=answer,
        cache_read_tokens=cache_read or 0,
        cache_write_tokens=cache_write or 0,
        refusal=None if refusal is None else "".join(refusal),
    )


def _received(parts: list[str], refusal: list[str] | None) -> int:
    """Characters a broken call had sent, answer and refusal text alike (both billed)."""
    return sum(map(len, parts)) + (sum(map(len, refusal)) if refusal else 0)


def _first_failure(
    checks: tuple[PartialCheck, ...], text: str, ctx: ValidationContext | None
) -> Verdict | None:
    assert ctx is not None
    for check in checks:
        try:
            verdict = check.check_partial(text, ctx)
        except Exception:
            verdict = None  # a crashing check must not kill an answer: the full check decides
        if verdict is not None and not verdict.passed:
            return verdict
    return None
