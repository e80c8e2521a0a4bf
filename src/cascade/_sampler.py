"""Further samples of an attempt, for validators that ask for them (self-consistency).

Validators reach a :class:`Sampler` as ``context.sample(count)``; it draws from the
provider that gave the attempt's first answer. Samples that share a prompt variant go in
one request with ``n`` where the provider supports it (:class:`~cascade.SupportsN`), so
their prompt is paid once; the others go in concurrent requests. Every sample is costed as
it arrives.
"""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from time import perf_counter
from typing import Protocol

from ._attempt import InFlight, complete
from ._clock import SupportsTimers, timeout_after
from ._errors import MalformedResponse, ProviderTimeout
from ._types import (
    Chunk,
    Completion,
    Message,
    RequestOptions,
    estimate_prompt_tokens,
    estimate_text_tokens,
)
from .providers import SupportsN, answers_whole

__all__ = ["Sampler"]


class Sampler:
    """Draws further answers from the provider that gave the attempt's first one.

    Validators reach it as ``context.sample(count)``. Sample ``k`` of the attempt uses the
    tier's ``k``-th variant (in turn); samples of one variant in the same call are one
    request with ``n`` when the provider supports it and its config allows it
    (``batch_samples``). Every sample is costed into the run as it arrives. The answers
    come back in sample order; a failed request's samples are left out (the paid ones
    still count), and only when nothing came back is its error raised.
    """

    __slots__ = ("_charge", "_clock", "_flight", "_msgs", "_next", "_opts")

    def __init__(
        self,
        flight: InFlight,
        msgs: tuple[Message, ...],
        opts: RequestOptions,
        charge: _Charge,
        *,
        clock: SupportsTimers | None = None,
    ) -> None:
        self._flight = flight
        self._msgs = msgs
        self._opts = opts
        self._charge = charge
        self._clock = clock  # the timeouts' clock, if not the loop's
        self._next = 1  # the attempt's first answer was sample 0

    async def __call__(self, count: int) -> list[Completion]:
        if count < 1:
            return []
        first = self._next
        self._next += count
        flight = self._flight
        tier = flight.tier
        # Samples of the same prompt (variant) go together: sample k uses variant k mod V.
        groups: dict[int, list[int]] = {}
        for sample in range(first, first + count):
            variant = sample % len(tier.variants) if tier.variants else 0
            groups.setdefault(variant, []).append(sample)
        provider = flight.provider
        batch = provider.config.batch_samples
        many = provider if batch and isinstance(provider, SupportsN) else None
        results: dict[int, Completion] = {}
        calls = []
        for samples in groups.values():
            if many is not None and len(samples) > 1:
                calls.append(self._many(many, samples, results))
            else:
                calls.extend(self._one(sample, results) for sample in samples)
        start = len(flight.samples)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        drawn = [results[k] for k in sorted(results)]
        flight.samples[start:] = drawn  # in sample order, whatever order they arrived in
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error  # cancellation and the like go up as they are
        if errors and not results:
            raise errors[0]
        if not results:  # a server that answered with no choices at all
            raise MalformedResponse(
                "no answers in the response", provider=provider.name, model=provider.model
            )
        return drawn

    def _paid(self, completion: Completion, sample: int, results: dict[int, Completion]) -> None:
        flight = self._flight
        self._charge(flight, completion)
        flight.samples.append(completion)
        results[sample] = completion

    async def _many(
        self, provider: SupportsN, samples: list[int], results: dict[int, Completion]
    ) -> None:
        """``samples`` (all of one variant) from one request with ``n``."""
        flight = self._flight
        msgs, opts = flight.tier.request(self._msgs, self._opts, samples[0])
        t0 = perf_counter()
        trace = flight.trace.samples(samples[0], len(samples), msgs, opts)
        config = flight.provider.config
        # timeout_s bounds the whole call, as complete() does for one answer, unless the
        # provider bounds its whole-body calls itself (post_whole): one timer, not two.
        own = answers_whole(flight.provider)
        watchdog = None if own else timeout_after(self._clock, config.timeout_s)
        try:
            async with watchdog or nullcontext():
                chunks = await provider.complete_n(msgs, opts, len(samples))
        except TimeoutError as exc:
            if watchdog is None or not watchdog.expired():
                trace.failed(exc)
                raise
            error = ProviderTimeout(
                f"not done within {config.timeout_s}s (timeout_s)",
                provider=config.name,
                model=flight.provider.model,
            )
            trace.failed(error)
            raise error from None
        except BaseException as exc:
            trace.failed(exc)
            raise
        latency = perf_counter() - t0
        # A server may send fewer answers than asked, or more (one that ignores n): those
        # are no samples, but they were billed, so their tokens go on the first answer.
        kept, extra = chunks[: len(samples)], chunks[len(samples) :]
        unasked = sum(_output_tokens(c) for c in extra)
        out = []
        for i, (sample, chunk) in enumerate(zip(samples, kept, strict=False)):
            prompt = chunk.input_tokens
            if not prompt:  # no usage reported (or 0): the prompt once, on the first answer
                prompt = estimate_prompt_tokens(msgs) if i == 0 else 0
            output = _output_tokens(chunk) + (unasked if i == 0 else 0)
            completion = Completion(
                text=chunk.text,
                provider=flight.provider.name,
                model=chunk.model or flight.provider.model,
                finish_reason=chunk.finish_reason,
                input_tokens=prompt,
                output_tokens=output,
                latency_s=latency,
                variant=opts.variant,
                answer=chunk.answer,
                cache_read_tokens=chunk.cache_read_tokens or 0,
                cache_write_tokens=chunk.cache_write_tokens or 0,
                refusal=chunk.refusal,
            )
            self._paid(completion, sample, results)
            out.append(completion)
        if out:
            trace.completed(*out)
        trace.end()

    async def _one(self, sample: int, results: dict[int, Completion]) -> None:
        flight = self._flight
        msgs, opts = flight.tier.request(self._msgs, self._opts, sample)
        # A sibling span of the other samples, under the attempt's (gather copied the
        # context: this task attaches and detaches its own span).
        trace = flight.trace.sample(sample, msgs, opts)
        try:
            completion, _ = await complete(
                flight.provider, msgs, opts, perf_counter(), clock=self._clock
            )
        except BaseException as exc:
            trace.failed(exc)
            raise
        trace.completed(completion)
        trace.end()
        self._paid(completion, sample, results)


def _output_tokens(chunk: Chunk) -> int:
    """The tokens a chunk reports, else (none, or 0 for text) an estimate from its text
    and its refusal's (both billed)."""
    if not chunk.output_tokens:
        return estimate_text_tokens(len(chunk.text) + len(chunk.refusal or ""))
    return chunk.output_tokens


class _Charge(Protocol):
    def __call__(self, flight: InFlight, completion: Completion) -> float: ...
