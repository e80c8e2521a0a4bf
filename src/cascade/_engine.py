"""The engine: policy over providers. Tiers in order, failover within a tier, validators,
escalation, budget and deadline."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from time import perf_counter
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import msgspec

from ._attempt import Tier
from ._build import build_tiers, provider_keys
from ._calls import ProviderCalls
from ._clock import Clock
from ._config import Config, in_file, load_config
from ._errors import (
    AllProvidersFailed,
    BudgetExceeded,
    CascadeExhausted,
    DeadlineExceeded,
    InputError,
)
from ._hedge import race
from ._records import RunState, attempt_record, best_attempt, failed_record
from ._telemetry import Telemetry
from ._types import (
    Attempt,
    Message,
    RequestOptions,
    Result,
    coerce_messages,
    estimate_prompt_tokens,
)
from .providers import Provider, build_provider
from .providers.replay import resolve_datasets
from .resilience import AsyncBreaker, BreakerListener
from .resilience.limiter import LimiterTimeout
from .validators._plugins import load_validator_folder

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["Cascade", "connection_shares"]

_DEFAULT_OPTIONS = RequestOptions()


class Cascade:
    """Runs each request through tiers of models, cheap to expensive.

    >>> async with Cascade.from_config("cascade.toml") as cascade:  # doctest: +SKIP
    ...     result = await cascade.run(messages=[{"role": "user", "content": "Hi"}])
    ...     print(result.text, result.tier, result.cost_usd)

    Everything that can be checked is checked when the Cascade is built: provider kinds,
    API key variables, validator names and parameters (a bad JSON Schema included).
    ``validator_paths`` folders are imported first (relative to ``base_dir``, else the
    working directory), and validators named nowhere else are looked up in the
    ``cascade.validators`` entry-point group. The
    aiohttp sessions (a connection pool per provider, so one that hangs cannot take the
    connections of the others; see ``ProviderConfig.max_connections``) open on
    ``async with`` or the first ``run`` and close with ``aclose``. A ``session`` passed in
    is shared by every provider instead, and its pool is the caller's to size.

    Every run is traced and measured through the OpenTelemetry API (``tracer_provider`` /
    ``meter_provider``, the global ones by default: nothing is recorded until the
    application configures the SDK). ``capture_content=True`` (or
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``) adds prompts and answers
    to the spans; ``CASCADE_TELEMETRY=off`` in the environment turns telemetry off.
    """

    def __init__(
        self,
        config: Config,
        *,
        session: aiohttp.ClientSession | None = None,
        environ: Mapping[str, str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        clock: Clock | None = None,
        breaker_listeners: Sequence[BreakerListener] = (),
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        capture_content: bool | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        if base_dir is not None:
            config = resolve_datasets(config, base_dir)  # relative to the config file
        for i, folder in enumerate(config.validator_paths):
            load_validator_folder(
                folder,
                base_dir=None if base_dir is None else Path(base_dir),
                config_path=f"validator_paths[{i}]",
            )
        self.config = config
        self._keys = provider_keys(config, env)
        self._tiers = build_tiers(config)
        self._telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            capture_content=capture_content,
            environ=env,
        )
        self._calls = ProviderCalls(
            config,
            clock=clock,
            breaker_listeners=(*breaker_listeners, self._telemetry.on_breaker_change),
            environ=env,
        )
        self._telemetry.watch_breakers(self._calls.breakers)
        self._session = session
        self._owns_session = session is None
        self._pools: dict[str, aiohttp.ClientSession] = {}  # ours, by provider name
        self._open = False
        self._closed = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **kwargs: Any) -> Self:
        """Build from a TOML file (see :class:`~cascade.Config` for its shape); relative
        ``validator_paths`` resolve against the file's folder."""
        kwargs.setdefault("base_dir", Path(path).parent)
        with in_file(str(path)):  # a build error (unknown kind, unset key) names the file too
            return cls(load_config(Path(path)), **kwargs)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **kwargs: Any) -> Self:
        """Build from a mapping of the same shape as the TOML file."""
        return cls(Config.from_dict(data), **kwargs)

    def __repr__(self) -> str:
        tiers = ", ".join(f"{t.name}({len(t.providers) or '-'})" for t in self._tiers)
        state = "closed" if self._closed else "open" if self._open else "idle"
        return f"<Cascade [{tiers}] {state}>"

    @property
    def tiers(self) -> tuple[str, ...]:
        """Tier names, cheapest first."""
        return tuple(t.name for t in self._tiers)

    async def open(self) -> None:
        """Create the connection pool and the providers, and connect the ``[shared]`` Redis
        state if any (``async with`` does this)."""
        if self._closed:
            raise RuntimeError("this Cascade is closed")
        if self._open:
            return
        if self._owns_session:
            self._pools = {
                name: aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=size), raise_for_status=False
                )
                for name, size in connection_shares(self.config).items()
            }
        for tier, tier_cfg in zip(self._tiers, self.config.tiers, strict=True):
            tier.providers = tuple(
                build_provider(
                    p,
                    session=self._session if self._session is not None else self._pools[p.name],
                    api_key=self._keys[p.name],
                )
                for p in tier_cfg.providers
            )
            for provider in tier.providers:
                limiter = self._calls.limiters.get(provider.name)
                if limiter is not None and hasattr(provider, "observe"):
                    provider.observe = limiter.observe  # learn from rate-limit headers
        self._open = True
        if self._calls.shared is not None:
            await self._calls.shared.open()  # after _open: a concurrent run() builds nothing twice

    async def aclose(self) -> None:
        """Close every provider, the connection pool (if this Cascade created it) and the
        shared state."""
        if self._closed:
            return
        self._closed = True
        self._open = False
        # Runs still in flight fail as their connections close: not the providers' fault,
        # so no breaker counts it (a rolling deploy must not open every replica's breaker).
        for breaker in self._calls.breakers.values():
            breaker.retire()
        for tier in self._tiers:
            for provider in tier.providers:
                await provider.aclose()
        for pool in self._pools.values():
            await pool.close()
        if self._calls.shared is not None:
            await self._calls.shared.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- running ---------------------------------------------------------------------------

    async def run(
        self,
        *,
        messages: Sequence[Message | Mapping[str, Any]],
        options: RequestOptions | None = None,
        start_tier: int | str | None = None,
        max_tier: int | str | None = None,
        max_cost_usd: float | None = None,
        deadline_s: float | None = None,
    ) -> Result:
        """Run one request through the tiers and return the first accepted answer.

        ``start_tier`` / ``max_tier`` (1-based index or tier name) bound the tiers tried.
        ``max_cost_usd`` skips a tier whose estimated cost exceeds what is left.
        ``deadline_s`` bounds the whole run, every tier included.

        Raises :class:`~cascade.InputError` for bad input, and a
        :class:`~cascade.RunError` subclass (carrying ``attempts``) when no answer can be
        returned.
        """
        msgs = coerce_messages(messages)
        opts = _DEFAULT_OPTIONS if options is None else options
        first = self._tier_index(start_tier, "start_tier", 0)
        last = self._tier_index(max_tier, "max_tier", len(self._tiers) - 1)
        if first > last:
            raise InputError("start_tier is above max_tier", path="start_tier")
        budget = self.config.max_cost_usd if max_cost_usd is None else max_cost_usd
        if budget is not None and not budget >= 0:
            raise InputError("expected a cost >= 0", path="max_cost_usd")
        deadline = self.config.deadline_s if deadline_s is None else deadline_s
        if deadline is not None and not deadline > 0:
            raise InputError("expected a deadline > 0 seconds", path="deadline_s")
        if not self._open:
            if self._closed:
                raise RuntimeError("cannot run: this Cascade is closed")
            await self.open()

        run = RunState(
            perf_counter(), None if deadline is None else self._calls.clock.monotonic() + deadline
        )
        tiers = self._tiers[first : last + 1]
        # The run's span (a child of the caller's), ended with its routing record.
        with self._telemetry.run(
            run.attempts, opts, max_cost_usd=budget, deadline_s=deadline
        ) as run.trace:
            result = await self._run_within(run, tiers, msgs, opts, budget, deadline)
            run.trace.done(result)
        return result

    async def _run_within(
        self,
        run: RunState,
        tiers: list[Tier],
        msgs: tuple[Message, ...],
        opts: RequestOptions,
        budget: float | None,
        deadline: float | None,
    ) -> Result:
        """The tiers, within the run's deadline."""
        if deadline is None:
            return await self._run_tiers(run, tiers, msgs, opts, budget)
        timeout = asyncio.timeout(deadline)
        try:
            async with timeout:
                return await self._run_tiers(run, tiers, msgs, opts, budget)
        except TimeoutError:
            if not timeout.expired():
                raise  # not our deadline: a bug in a provider or validator, not a timeout
            return self._deadline_exceeded(run, deadline, msgs)

    def _tier_index(self, value: int | str | None, field: str, default: int) -> int:
        if value is None:
            return default
        if isinstance(value, str):
            for tier in self._tiers:
                if tier.name == value:
                    return tier.index - 1
            raise InputError(f"no tier named {value!r}", path=field)
        if isinstance(value, bool) or not 1 <= value <= len(self._tiers):
            raise InputError(f"expected a tier from 1 to {len(self._tiers)}", path=field)
        return value - 1

    async def _run_tiers(
        self,
        run: RunState,
        tiers: list[Tier],
        msgs: tuple[Message, ...],
        opts: RequestOptions,
        budget: float | None,
    ) -> Result:
        attempts = run.attempts
        for tier in tiers:
            # The tier's span; its outcome, and the escalation, come from its attempts.
            with run.trace.tier(tier) as run.tier_trace:
                if budget is not None:
                    skip = self._over_budget(tier, msgs, opts, budget - run.spent)
                    if skip is not None:
                        attempts.append(skip)
                        continue
                attempt = None
                busy: list[Provider] = []  # no headroom in their rate limits right now
                tried: set[str] = set()  # taken as hedges
                for provider in tier.providers:
                    if provider.name in tried:
                        continue
                    lease = None
                    limiter = self._calls.limiters.get(provider.name)
                    if limiter is not None:
                        lease = await limiter.reserve(
                            tokens=self._calls.token_estimate(provider, msgs, opts)
                        )
                        if lease is None:
                            busy.append(provider)  # a sibling with headroom goes first
                            run.tier_trace.limiter_busy(provider.name)
                            continue
                    if tier.hedge is None:
                        attempt = await self._calls.attempt(run, tier, provider, msgs, opts, lease)
                    else:
                        tried.add(provider.name)
                        attempt = await race(
                            self._calls, run, tier, provider, lease, msgs, opts, tried
                        )
                    if attempt is not None:
                        break
                if tried:
                    busy = [p for p in busy if p.name not in tried]
                if attempt is None and busy:
                    # Every provider with headroom failed or none had any: wait, in fair
                    # order and never past the deadline, for the first busy one.
                    provider = busy[0]
                    limiter = self._calls.limiters[provider.name]
                    t0 = perf_counter()
                    try:
                        lease = await limiter.acquire(
                            tokens=self._calls.token_estimate(provider, msgs, opts),
                            deadline=run.deadline_at,
                        )
                    except LimiterTimeout as exc:
                        run.tier_trace.limiter_wait(
                            provider.name, perf_counter() - t0, acquired=False
                        )
                        run.last_error = exc
                        attempts.append(failed_record(tier, provider, t0, exc))
                    else:
                        run.tier_trace.limiter_wait(
                            provider.name, perf_counter() - t0, acquired=True
                        )
                        attempt = await self._calls.attempt(run, tier, provider, msgs, opts, lease)
                if attempt is not None and attempt.outcome == "accepted":
                    return run.result(attempt, validated=True)
                if attempt is None and self.config.on_outage == "error":
                    break  # every provider failed: an outage, which must not escalate the bill
                # rejected by a validator, or every provider failed: escalate to the next tier
        return self._exhausted(run)

    @property
    def breakers(self) -> Mapping[str, AsyncBreaker]:
        """Each provider's circuit breaker, by provider name (state, counts, ``repr``)."""
        return MappingProxyType(self._calls.breakers)

    def _over_budget(
        self, tier: Tier, msgs: tuple[Message, ...], opts: RequestOptions, left: float
    ) -> Attempt | None:
        provider = tier.providers[0]
        in_tokens = estimate_prompt_tokens(msgs)
        out_tokens = (
            opts.max_tokens or provider.config.max_tokens or self.config.estimate_output_tokens
        )
        estimate = provider.config.cost_usd(in_tokens, out_tokens)
        if estimate <= left:
            return None
        return Attempt(
            tier=tier.index,
            tier_name=tier.name,
            provider=provider.name,
            model=provider.model,
            outcome="skipped",
            error_type="BudgetExceeded",
            error=f"estimated ${estimate:.6f} exceeds the ${max(left, 0.0):.6f} left",
        )

    def _exhausted(self, run: RunState) -> Result:
        best = best_attempt(run.attempts)
        if best is not None:
            if self.config.on_exhausted == "best":
                return run.result(best, validated=False)
            raise CascadeExhausted(
                f"no answer passed validation in {len(run.attempts)} attempts",
                attempts=run.attempts,
            )
        if any(a.outcome == "rejected" for a in run.attempts):
            raise CascadeExhausted(  # only early-rejected fragments: nothing to fall back on
                f"no answer passed validation in {len(run.attempts)} attempts",
                attempts=run.attempts,
            )
        if any(a.outcome == "skipped" for a in run.attempts):
            raise BudgetExceeded(
                "no affordable tier produced an answer within max_cost_usd", attempts=run.attempts
            )
        raise AllProvidersFailed(
            f"every provider failed ({len(run.attempts)} attempts); last: {run.last_error}",
            attempts=run.attempts,
        ) from run.last_error

    def _deadline_exceeded(
        self, run: RunState, deadline: float, msgs: tuple[Message, ...]
    ) -> Result:
        for flight in run.flights:
            exc = DeadlineExceeded(f"deadline of {deadline}s reached", attempts=())
            completion = flight.completion
            if completion is None:
                in_tokens = out_tokens = 0
                cost = 0.0
                if flight.received:  # a stream cut off after text came: prompt and text billed
                    in_tokens, out_tokens, cost = run.charge_unanswered(
                        flight, msgs, flight.received
                    )
                attempt = failed_record(
                    flight.tier,
                    flight.provider,
                    flight.t0,
                    exc,
                    in_tokens=in_tokens,
                    out_tokens=out_tokens,
                    cost=cost,
                    hedge=flight.hedge,
                )
            else:
                # The answer arrived (and was paid for); validation had not finished.
                attempt = msgspec.structs.replace(
                    attempt_record(flight, completion, (), passed=False),
                    error_type=type(exc).__name__,
                    error=str(exc),
                )
            run.attempts.append(attempt)
        run.flights.clear()
        best = best_attempt(run.attempts)
        if best is not None and self.config.on_exhausted == "best":
            return run.result(best, validated=False)
        raise DeadlineExceeded(
            f"deadline of {deadline}s reached after {len(run.attempts)} attempts",
            attempts=run.attempts,
        )


def connection_shares(config: Config) -> dict[str, int]:
    """Each provider's connection pool size: its ``max_connections``, else an equal share
    of what the cascade's ``max_connections`` leaves after the providers that set theirs
    (at least 1)."""
    providers = [p for t in config.tiers for p in t.providers]
    fixed = sum(p.max_connections for p in providers if p.max_connections is not None)
    rest = sum(1 for p in providers if p.max_connections is None)
    share = max(1, (config.max_connections - fixed) // rest) if rest else 1
    return {
        p.name: p.max_connections if p.max_connections is not None else share for p in providers
    }
