"""Further samples of an attempt, for validators that ask for them (self-consistency).

Validators reach a :class:`Sampler` as ``context.sample(count)``; it draws from the
provider that gave the attempt's first answer, in one request with ``n`` where the provider
supports it, else in concurrent requests, and costs every sample as it arrives.
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any, Protocol

from ._attempt import InFlight, complete
from ._types import Chunk, Completion, Message, RequestOptions, estimate_prompt_tokens

__all__ = ["Sampler"]


class Sampler:
    """Draws further answers from the provider that gave the attempt's first one.

    Validators reach it as ``context.sample(count)``. Sample ``k`` of the attempt uses the
    tier's ``k``-th variant (in turn); every sample is costed into the run as it arrives.
    """

    __slots__ = ("_flight", "_msgs", "_next", "_opts", "_spend")

    def __init__(
        self,
        flight: InFlight,
        msgs: tuple[Message, ...],
        opts: RequestOptions,
        spend: _Spend,
    ) -> None:
        self._flight = flight
        self._msgs = msgs
        self._opts = opts
        self._spend = spend
        self._next = 1  # the attempt's first answer was sample 0

    async def __call__(self, count: int) -> list[Completion]:
        if count < 1:
            return []
        first = self._next
        self._next += count
        flight = self._flight
        many = getattr(flight.provider, "complete_n", None)
        if count > 1 and not flight.tier.variants and many is not None:
            return await self._in_one_request(many, count)
        results: list[Completion | None] = [None] * count
        outcomes = await asyncio.gather(
            *(self._one(first + i, results, i) for i in range(count)), return_exceptions=True
        )
        done = [r for r in results if r is not None]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        for error in errors:
            if not isinstance(error, Exception):
                raise error  # cancellation and the like go up as they are
        if errors and not done:
            raise errors[0]
        return done  # a failed sample is skipped; the paid ones still count

    async def _in_one_request(self, many: Any, count: int) -> list[Completion]:
        """All samples from one request with ``n`` (the provider supports it)."""
        flight = self._flight
        provider = flight.provider
        t0 = perf_counter()
        trace = flight.trace.samples(self._next - count, count, self._msgs, self._opts)
        try:
            chunks: list[Chunk] = await many(self._msgs, self._opts, count)
        except BaseException as exc:
            trace.failed(exc)
            raise
        latency = perf_counter() - t0
        out = []
        for chunk in chunks:
            completion = Completion(
                text=chunk.text,
                provider=provider.name,
                model=chunk.model or provider.model,
                finish_reason=chunk.finish_reason,
                input_tokens=(
                    chunk.input_tokens
                    if chunk.input_tokens is not None
                    else estimate_prompt_tokens(self._msgs)
                ),
                output_tokens=chunk.output_tokens or 0,
                latency_s=latency,
                variant=self._opts.variant,
            )
            cost = provider.config.cost_usd(completion.input_tokens, completion.output_tokens)
            flight.cost += cost
            flight.samples.append(completion)
            self._spend(cost)
            out.append(completion)
        if out:
            trace.completed(*out)
        trace.end()
        return out

    async def _one(self, sample: int, results: list[Completion | None], slot: int) -> None:
        flight = self._flight
        msgs, opts = flight.tier.request(self._msgs, self._opts, sample)
        # A sibling span of the other samples, under the attempt's (gather copied the
        # context: this task attaches and detaches its own span).
        trace = flight.trace.sample(sample, msgs, opts)
        try:
            completion, _ = await complete(flight.provider, msgs, opts, perf_counter())
        except BaseException as exc:
            trace.failed(exc)
            raise
        trace.completed(completion)
        trace.end()
        cost = flight.provider.config.cost_usd(completion.input_tokens, completion.output_tokens)
        flight.cost += cost
        flight.samples.append(completion)
        self._spend(cost)
        results[slot] = completion


class _Spend(Protocol):
    def __call__(self, cost: float) -> None: ...
