"""How one provider is called: its circuit breaker, its rate limit, its retries, and the
Attempt the call leaves behind. The engine (``_engine.py``) picks providers; this calls them."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from time import perf_counter
from typing import Literal

from ._attempt import (
    InFlight,
    arrived,
    complete,
    whole_answer,
    whole_completion,
)
from ._clock import Clock, SystemClock, timers_of
from ._config import Config
from ._errors import ProviderError, RequestRejected
from ._judge import judge, refused
from ._records import RunState, attempt_record, quota_used
from ._sampler import Sampler
from ._telemetry._spans import NOOP_TIER
from ._tier import PartialCheck, Tier
from ._types import (
    Attempt,
    Chunk,
    Completion,
    Message,
    RequestOptions,
    Verdict,
    estimate_prompt_tokens,
)
from .engine._events import AttemptStarted
from .providers import Provider
from .resilience import AsyncBreaker, BreakerListener, RetryPolicy, call_with_retries, classify
from .resilience.limiter import Lease, RateLimiter
from .resilience.shared import SharedState
from .validators import ValidationContext

__all__ = ["ProviderCalls"]

_TTFT_WINDOW = 200


class ProviderCalls:
    """Each provider's breaker, limiter (where limits are set) and retry policy; with a
    ``[shared]`` table, the Redis state the breakers and limiters share (``shared``, opened
    and closed by the Cascade)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None,
        breaker_listeners: Sequence[BreakerListener],
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._estimate_output_tokens = config.estimate_output_tokens
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.timers = timers_of(self.clock)
        """The clock, if timeouts and hedge delays run on it (else on the loop's clock)."""
        self._rng = random.Random()
        self.shared = (
            None
            if config.shared is None
            else SharedState.from_config(config.shared, environ=environ)
        )
        self.breakers: dict[str, AsyncBreaker] = {
            p.name: AsyncBreaker(
                p.name,
                fail_max=p.breaker.fail_max,
                reset_timeout_s=p.breaker.reset_timeout_s,
                count_rate_limits=p.breaker.count_rate_limits,
                clock=self.clock,
                listeners=breaker_listeners,
                shared=self.shared,
            )
            for t in config.tiers
            for p in t.providers
        }
        self.limiters: dict[str, RateLimiter] = {
            p.name: RateLimiter(
                p.name,
                requests_per_minute=p.limits.requests_per_minute,
                tokens_per_minute=p.limits.tokens_per_minute,
                max_concurrency=p.limits.max_concurrency,
                burst_s=p.limits.burst_s,
                max_wait_s=p.limits.max_wait_s,
                clock=self.clock,
                shared=self.shared,
            )
            for t in config.tiers
            for p in t.providers
            if p.limits.configured
        }
        self.ttft_windows: dict[str, deque[float]] = {
            p.name: deque(maxlen=_TTFT_WINDOW)
            for t in config.tiers
            if t.hedge is not None and t.hedge.percentile is not None
            for p in t.providers
        }
        """Recent times to first token of providers whose tier hedges on a percentile."""
        self._whole: dict[str, bool] = {}  # each provider's whole_answer, once known
        self.retries: dict[str, RetryPolicy | None] = {
            p.name: None if p.retry.attempts == 1 else p.retry
            for t in config.tiers
            for p in t.providers
        }

    async def attempt(
        self,
        run: RunState,
        tier: Tier,
        provider: Provider,
        msgs: tuple[Message, ...],
        opts: RequestOptions,
        lease: Lease | None,
        *,
        flight: InFlight | None = None,
        on_text: Callable[[int], None] | None = None,
        show_text: bool = True,
    ) -> Attempt | None:
        """One provider's attempt at the tier: the Attempt (accepted or rejected), or None
        when the call failed (recorded; the caller fails over).

        ``flight`` is the caller's record of the call (a hedge race keeps its own);
        ``on_text`` sees the length of each text chunk. A cancelled call leaves its flight
        in ``run.flights`` for whoever cancelled it to record. In a speculative stream
        (and a tier that does not hedge) the text goes to the caller as it arrives, unless
        ``show_text`` is False (the router's own call).
        """
        if flight is None:
            flight = InFlight(tier, provider, perf_counter())
        t0 = flight.t0
        if on_text is None:
            on_text = flight.seen  # what a deadline cuts off is costed from this
        run.flights.append(flight)
        if run.listening:  # the sink's alone: the call's span is started below
            run.sink.emit(
                AttemptStarted(
                    tier=tier.index,
                    tier_name=tier.name,
                    provider=provider.name,
                    model=provider.model,
                    hedge=flight.hedge,
                )
            )
        on_delta = None
        if run.speculative and tier.hedge is None and show_text:
            on_delta = run.delta_sender(flight)
        tier_msgs, tier_opts = tier.request(msgs, opts, 0) if tier.variants else (msgs, opts)
        flight.cut_off_tokens = self.cut_off_tokens(provider, tier_opts)
        # The span of the call (one per try: a retry replaces it), current until judged.
        if run.tier_trace is not NOOP_TIER:
            flight.trace = run.tier_trace.attempt(
                provider, tier_msgs, tier_opts, hedge=flight.hedge
            )
        ctx = None
        if tier.validators or tier.required:
            ctx = ValidationContext(
                messages=tier_msgs,
                options=tier_opts,
                tier=tier.index,
                tier_name=tier.name,
                sample=Sampler(flight, msgs, opts, run.charge, clock=self.timers),
                weights=tier.weights_of_variants,
            )
        partial = tier.partial if provider.config.stream else ()
        try:
            policy = self.retries[provider.name]
            if policy is None:
                completion, early = await self._call(
                    flight, tier_msgs, tier_opts, t0, partial, ctx, on_text, on_delta
                )
            else:
                held = [lease]  # each retry takes a lease of its own
                try:
                    completion, early = await self._with_retries(
                        run, flight, policy, tier_msgs, tier_opts, partial, ctx, held,
                        on_text=on_text, on_delta=on_delta,
                    )  # fmt: skip
                finally:
                    lease = held[0]
        except ProviderError as exc:
            if lease is not None:
                lease.release(used_tokens=quota_used(flight, tier_msgs, exc))
            run.flights.remove(flight)
            run.last_error = exc
            run.record(run.failure(flight, t0, exc, tier_msgs))  # ends its span
            # Retried already (or not: on_error said so); fail over, or stop the run.
            if classify(exc, provider.config.retry.on_error) == "surface":
                raise RequestRejected(
                    f"surfaced, not routed around: {exc}", attempts=run.attempts, error=exc
                ) from exc
            return None
        except BaseException as exc:
            flight.trace.failed(exc)  # cancelled: by the deadline, or a hedge that lost
            if lease is not None:
                lease.release(used_tokens=quota_used(flight, tier_msgs, None))
            raise
        if lease is not None:
            lease.release(used_tokens=completion.input_tokens + completion.output_tokens)
        window = self.ttft_windows.get(provider.name)
        if window is not None and completion.ttft_s is not None:
            window.append(completion.ttft_s)
        run.charge(flight, completion)  # paid for from here on, whatever validation says
        flight.completion = completion
        if early is not None:
            verdicts: tuple[Verdict, ...] = (early,)
            passed = False
        elif completion.refusal is not None and not tier.accept_refusals:
            verdicts, passed = (refused(completion),), False  # an answer, not a failure
        elif ctx is not None:
            try:
                verdicts, passed = await judge(tier, completion, ctx)
            except BaseException as exc:
                flight.trace.failed(exc)
                raise
        else:
            verdicts, passed = (), True
        run.flights.remove(flight)
        attempt = attempt_record(flight, completion, verdicts, passed)
        run.record(attempt)  # its AttemptFinished event ends the call's span
        return attempt

    # -- taking a provider: the one place its rate limit and its breaker are taken -------

    async def reserve(
        self, provider: Provider, msgs: tuple[Message, ...], opts: RequestOptions
    ) -> Lease | Literal[False] | None:
        """``provider``'s rate-limit lease if it has headroom now; False if it has none
        (a sibling goes first); None if it has no rate limits."""
        limiter = self.limiters.get(provider.name)
        if limiter is None:
            return None
        lease = await limiter.reserve(tokens=self.token_estimate(provider, msgs, opts))
        return False if lease is None else lease

    async def acquire(
        self,
        provider: Provider,
        msgs: tuple[Message, ...],
        opts: RequestOptions,
        *,
        deadline: float | None,
    ) -> Lease | None:
        """``provider``'s rate-limit lease, waited for in fair order until ``deadline`` (on
        the clock; :class:`~cascade.LimiterTimeout` past it); None if it has no limits."""
        limiter = self.limiters.get(provider.name)
        if limiter is None:
            return None
        return await limiter.acquire(
            tokens=self.token_estimate(provider, msgs, opts), deadline=deadline
        )

    async def _call(
        self,
        flight: InFlight,
        msgs: tuple[Message, ...],
        opts: RequestOptions,
        t0: float,
        partial: tuple[PartialCheck, ...],
        ctx: ValidationContext | None,
        on_text: Callable[[int], None] | None,
        on_delta: Callable[[str], Awaitable[None] | None] | None,
    ) -> tuple[Completion, Verdict | None]:
        """One call through the provider's circuit breaker (:class:`~cascade.CircuitOpen`
        when it is open); from here on ``flight``'s request counts as sent."""
        provider = flight.provider
        breaker = self.breakers[provider.name]
        permit = await breaker.acquire() if breaker.shared else breaker.admit()
        flight.phase = "sent"
        done: tuple[Completion, Verdict | None]
        try:
            whole = self._whole.get(provider.name)
            if whole is None:  # the same for every call: the provider's config and class
                whole = self._whole[provider.name] = whole_answer(provider)
            if whole and on_delta is None:
                # ``complete``'s own first step, without its frame: one awaited call.
                one: Chunk = await provider.complete_whole(msgs, opts)  # type: ignore[attr-defined]
                ttft = arrived(one, t0, on_text)
                done = whole_completion(provider, msgs, opts, t0, one, ttft, on_text), None
            else:
                done = await complete(
                    provider, msgs, opts, t0, partial=partial, ctx=ctx, on_text=on_text,
                    on_delta=on_delta, clock=self.timers,
                )  # fmt: skip
        except BaseException as exc:
            permit.settle(exc)
            raise
        permit.success()
        return done

    def token_estimate(
        self, provider: Provider, msgs: tuple[Message, ...], opts: RequestOptions
    ) -> int:
        """Tokens to reserve in a rate limit: the prompt's estimate plus the output cap (the
        request's ``max_tokens``, at most the provider's; the limiter charges at most a
        whole bucket of it)."""
        out = opts.max_tokens or provider.config.max_tokens or self._estimate_output_tokens
        if provider.config.max_tokens is not None:
            out = min(out, provider.config.max_tokens)
        return estimate_prompt_tokens(msgs) + out

    def cut_off_tokens(self, provider: Provider, opts: RequestOptions) -> int:
        """The output a call to ``provider`` is billed if we cut it off after sending it:
        none from a provider that streams (it stops when the connection closes), else the
        expected answer, ``estimate_output_tokens`` or the request's cap if smaller."""
        if provider.config.stream:
            return 0
        cap = opts.max_tokens or provider.config.max_tokens
        out = self._estimate_output_tokens
        return out if cap is None else min(out, cap)

    async def _with_retries(
        self,
        run: RunState,
        flight: InFlight,
        policy: RetryPolicy,
        msgs: tuple[Message, ...],
        opts: RequestOptions,
        partial: tuple[PartialCheck, ...],
        ctx: ValidationContext | None,
        held: list[Lease | None],
        *,
        on_text: Callable[[int], None] | None,
        on_delta: Callable[[str], Awaitable[None] | None] | None,
    ) -> tuple[Completion, Verdict | None]:
        """``complete`` with retries; each failed try is recorded as an attempt.

        ``held[0]`` is the rate-limit lease of the try under way: a failed try's lease is
        spent (the provider counted the request), and a retry waits for a new one, in fair
        order and within the deadline, like any request."""
        provider = flight.provider
        started = [perf_counter()]
        retries = [0]

        async def once() -> tuple[Completion, Verdict | None]:
            started[0] = t0 = perf_counter()
            if retries[0]:  # the first try's span (and event) were started by the caller
                flight.trace = run.tier_trace.attempt(
                    provider, msgs, opts, retry=retries[0], hedge=flight.hedge
                )
                run.emit(
                    AttemptStarted(
                        tier=flight.tier.index,
                        tier_name=flight.tier.name,
                        provider=provider.name,
                        model=provider.model,
                        retry=retries[0],
                        hedge=flight.hedge,
                    )
                )
            retries[0] += 1
            flight.phase = "waiting"
            if held[0] is None:
                held[0] = await self.acquire(provider, msgs, opts, deadline=run.deadline_at)
            return await self._call(flight, msgs, opts, t0, partial, ctx, on_text, on_delta)

        def on_retry(attempt_no: int, exc: Exception, wait_s: float) -> None:
            assert isinstance(exc, ProviderError)  # only provider errors are retryable
            if held[0] is not None:
                # the failed request counted its prompt and any text against the quota
                held[0].release(used_tokens=quota_used(flight, msgs, exc))
                held[0] = None
            run.tier_trace.retry(provider.name, exc, wait_s, retry=attempt_no)
            run.record(run.failure(flight, started[0], exc, msgs))
            # Recorded and costed: until the next try is under way, nothing is to cut off.
            flight.phase = "backoff"
            flight.received = 0

        return await call_with_retries(
            once,
            policy=policy,
            clock=self.clock,
            deadline=run.deadline_at,
            rng=self._rng,
            on_retry=on_retry,
            max_wait_s=provider.config.limits.max_wait_s,
        )
