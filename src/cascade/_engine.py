"""The Cascade: built from config, it owns the providers, their connection pools and the
engine (``engine/_core.py``: tiers in order, failover within a tier, validators,
escalation, budget and deadline), and runs requests through it."""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp
import msgspec

from ._build import build_tiers, connection_shares, provider_keys, the_router
from ._calls import ProviderCalls
from ._clock import Clock
from ._config import Config, in_file, load_config
from ._errors import ConfigError, InputError
from ._telemetry import Telemetry
from ._telemetry import _conventions as conventions
from ._tier import Tier
from ._types import Message, RequestOptions, Result, coerce_messages
from .engine._core import Engine, Plan
from .engine._events import Failed, Finished, StreamMode
from .engine._stream import NO_SINK, ResultSink, Stream, TextStream
from .providers import build_provider
from .providers.replay import resolve_datasets
from .resilience import AsyncBreaker, BreakerListener
from .resilience.quality import QualityBreaker
from .routing import Router, resolve_router_paths
from .validators import Validator
from .validators._plugins import load_validator_folder

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["Cascade", "connection_shares"]

_DEFAULT_OPTIONS = RequestOptions()
_NO_AIOHTTP_TIMER = aiohttp.ClientTimeout()  # every field None: the engine bounds each call


class Cascade:
    """Runs each request through tiers of models, cheap to expensive.

    >>> async with Cascade.from_config("cascade.toml") as cascade:  # doctest: +SKIP
    ...     result = await cascade.run(messages=[{"role": "user", "content": "Hi"}])
    ...     print(result.text, result.tier, result.cost_usd)

    Everything that can be checked is checked when the Cascade is built: provider kinds,
    API key variables, validator names and parameters (a bad JSON Schema included).
    ``validator_paths`` folders are imported first (relative to ``base_dir``, else the
    working directory; so are replay datasets and a router's file paths), and validators
    named nowhere else are looked up in the ``cascade.validators`` entry-point group. The
    aiohttp sessions (a connection pool per provider, so one that hangs cannot take the
    connections of the others; see ``ProviderConfig.max_connections``) open on
    ``async with`` or the first ``run`` and close with ``aclose``. A ``session`` passed in
    is shared by every provider instead, and its pool is the caller's to size.

    ``router`` (or config's ``[router]`` table; the argument wins) is asked once per run,
    before the first tier, where the run starts and stops (see :mod:`cascade.routing`),
    within ``router_timeout_s`` (config's by default) on ``clock``.

    Every run is traced and measured through the OpenTelemetry API (``tracer_provider`` /
    ``meter_provider``, the global ones by default: nothing is recorded until the
    application configures the SDK). ``capture_content=True`` (or
    ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``) adds prompts and answers
    to the spans; ``CASCADE_TELEMETRY=off`` in the environment turns telemetry off.
    ``semconv`` names the conventions the spans follow: ``("gen_ai",)`` (OpenTelemetry's
    GenAI conventions, the default), ``("openinference",)`` (span kinds, model, provider,
    tokens and cost under OpenInference's names, for Arize Phoenix), or both; without it,
    ``CASCADE_SEMCONV`` (comma-separated) in the environment, else config's
    ``[telemetry] semconv``.
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
        semconv: Sequence[str] | None = None,
        router: Router | None = None,
        router_timeout_s: float | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        if base_dir is not None:  # relative to the config file
            config = resolve_datasets(config, base_dir)
            if config.router is not None:
                router_table = resolve_router_paths(config.router, base_dir)
                config = msgspec.structs.replace(config, router=dict(router_table))
        for i, folder in enumerate(config.validator_paths):
            load_validator_folder(
                folder,
                base_dir=None if base_dir is None else Path(base_dir),
                config_path=f"validator_paths[{i}]",
            )
        self.config = config
        self._keys = provider_keys(config, env)
        self._tiers = build_tiers(config)
        self._router = the_router(config, router)
        self._telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            capture_content=capture_content,
            environ=env,
            semconv=conventions.resolve(semconv, env, config.telemetry.semconv),
        )
        self._calls = ProviderCalls(
            config,
            clock=clock,
            breaker_listeners=(*breaker_listeners, self._telemetry.on_breaker_change),
            environ=env,
        )
        self._telemetry.watch_breakers(self._calls.breakers)
        listener = self._telemetry.on_quality_change
        for built, tier_cfg in zip(self._tiers, config.tiers, strict=True):
            if tier_cfg.quality is not None:
                built.quality = QualityBreaker(
                    tier_cfg.name, tier_cfg.quality, clock=self._calls.clock, listeners=(listener,)
                )
        if router_timeout_s is not None and not 0 < router_timeout_s < float("inf"):
            raise ConfigError("expected a finite number of seconds > 0", path="router_timeout_s")
        self._engine = Engine(
            config, self._calls, self._telemetry, router_timeout_s=router_timeout_s
        )
        self._session = session
        self._owns_session = session is None
        self._pools: dict[str, aiohttp.ClientSession] = {}  # ours, by provider name
        self._open = False
        self._closed = False

    @classmethod
    def from_config(cls, path: str | os.PathLike[str], **kwargs: Any) -> Self:
        """Build from a TOML file (see :class:`~cascade.Config` for its shape); relative
        ``validator_paths``, replay ``dataset`` paths and a router's file paths (the
        ``classifier`` router's ``model``) resolve against the file's folder."""
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
            # No cookie a provider sets is kept or sent back: no state shared across the
            # requests, or a gateway's tenants, of one pool. No aiohttp total timer by
            # default either: the engine bounds every call (``timeout_s`` and the rest, on
            # its clock) and the HTTP providers give each request its connect timeout.
            self._pools = {
                name: aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=size),
                    raise_for_status=False,
                    timeout=_NO_AIOHTTP_TIMER,
                    cookie_jar=aiohttp.DummyCookieJar(),
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
                if hasattr(provider, "timers"):
                    provider.timers = self._calls.timers  # post_whole's timeout_s on the clock
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
        self._engine.close()
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
        validators: Sequence[Validator] = (),
    ) -> Result:
        """Run one request through the tiers and return the first accepted answer.

        ``start_tier`` / ``max_tier`` (1-based index or tier name) bound the tiers tried;
        either one given, the cascade's router (if any) is not asked: the call's choice
        wins, and ``Result.route`` is None. Otherwise the router decides the range
        (``Result.route``, the :class:`~cascade.Routed` event) before the first tier.
        ``max_cost_usd`` skips a tier whose estimated cost exceeds what is left.
        ``deadline_s`` bounds the whole run, every tier included.
        ``validators`` are this request's own: every tier's answer must pass each of them
        too, after the tier's own validators accept it (a request's JSON Schema).

        Raises :class:`~cascade.InputError` for bad input, and a
        :class:`~cascade.RunError` subclass (carrying ``attempts``) when no answer can be
        returned. The run is :meth:`stream`'s, read to its end without its text.
        """
        plan = self._plan(
            messages, options, start_tier, max_tier, max_cost_usd, deadline_s, validators
        )
        if not self._open:
            await self._open_for_run()
        end = await self._engine.execute(plan, NO_SINK)
        if isinstance(end, Failed):
            try:
                raise end.error
            finally:  # the error's traceback holds this frame: no local may hold the error
                del end
        return end.result

    def stream(
        self,
        *,
        messages: Sequence[Message | Mapping[str, Any]],
        options: RequestOptions | None = None,
        start_tier: int | str | None = None,
        max_tier: int | str | None = None,
        max_cost_usd: float | None = None,
        deadline_s: float | None = None,
        mode: StreamMode = "buffered",
        validators: Sequence[Validator] = (),
    ) -> Stream:
        """Run one request as :meth:`run` does (the same arguments, ``validators``
        included), handing its events to the caller as they happen (see
        :mod:`cascade.engine` for the events).

        >>> async with cascade.stream(messages=msgs) as events:  # doctest: +SKIP
        ...     async for event in events:
        ...         if isinstance(event, cascade.Delta):
        ...             print(event.text, end="")

        ``mode="buffered"``: :class:`~cascade.Delta` events carry only the text of an
        answer its tier accepted, in pieces once it was accepted. ``mode="speculative"``:
        text as it arrives from the provider; when that answer is then rejected (or its
        stream fails) a :class:`~cascade.Retracted` event comes before the next answer's
        text. A hedged tier sends text only of the call it keeps, once validated. The last
        event is :class:`~cascade.Finished` (the Result) or :class:`~cascade.Failed` (the
        error ``run`` would raise).

        The reader sets the pace: text is read from the provider no faster than the
        reader takes it. Leaving the ``async with`` block early (``break``, an exception,
        a cancel scope, a timeout) cancels the call under way at once and records it in
        the stream's ``attempts``. Bad input raises :class:`~cascade.InputError` here.
        """
        if mode not in ("buffered", "speculative"):
            raise InputError("expected 'buffered' or 'speculative'", path="mode")
        plan = self._plan(
            messages, options, start_tier, max_tier, max_cost_usd, deadline_s, validators
        )

        return self._stream(plan, mode)

    def _stream(self, plan: Plan, mode: StreamMode) -> Stream:
        """:meth:`stream` of ``plan`` (:meth:`_plan`'s)."""
        return Stream(mode, self._starter(plan))

    def _text_stream(self, plan: Plan, mode: StreamMode) -> TextStream:
        """:meth:`stream` of ``plan`` (:meth:`_plan`'s) for a reader of the answer's text
        alone (the gateway's OpenAI SSE): see :class:`~cascade.engine._stream.TextStream`."""
        return TextStream(mode, self._starter(plan))

    def _starter(self, plan: Plan) -> Callable[[Stream], Coroutine[Any, Any, None]]:
        async def start(stream: Stream) -> None:
            if not self._open:
                await self._open_for_run()
            # The last event reaches the reader through the stream. Not the task's result
            # too: a Failed event's error holds (through its traceback) the run, which
            # holds the stream, which holds this task: a cycle.
            await self._engine.execute(plan, stream)

        return start

    async def _answer(self, plan: Plan, sink: ResultSink) -> Finished | Failed:
        """:meth:`run` of ``plan`` (:meth:`_plan`'s) in the caller's task, for a caller
        that answers someone (the gateway's JSON responses): ``sink`` is handed the
        result before the run writes its span and routing record, and keeps the
        attempts. The last event is returned; what ``sink``'s answer raised is the
        caller's to raise."""
        try:
            if not self._open:
                await self._open_for_run()
            return await self._engine.execute(plan, sink)
        finally:
            sink.done()

    def _plan(
        self,
        messages: Sequence[Message | Mapping[str, Any]],
        options: RequestOptions | None,
        start_tier: int | str | None,
        max_tier: int | str | None,
        max_cost_usd: float | None,
        deadline_s: float | None,
        validators: Sequence[Validator] = (),
    ) -> Plan:
        msgs = coerce_messages(messages)
        opts = _DEFAULT_OPTIONS if options is None else options
        first = 0 if start_tier is None else self._tier_index(start_tier, "start_tier", 0)
        last = len(self._tiers) - 1
        if max_tier is not None:
            last = self._tier_index(max_tier, "max_tier", last)
        if first > last:
            raise InputError("start_tier is above max_tier", path="start_tier")
        budget = self.config.max_cost_usd if max_cost_usd is None else max_cost_usd
        if budget is not None and not budget >= 0:
            raise InputError("expected a cost >= 0", path="max_cost_usd")
        deadline = self.config.deadline_s if deadline_s is None else deadline_s
        if deadline is not None and not deadline > 0:
            raise InputError("expected a deadline > 0 seconds", path="deadline_s")
        tiers: Sequence[Tier] = self._tiers
        if first or last < len(tiers) - 1:
            tiers = tiers[first : last + 1]
        if validators:
            extra = tuple(validators)
            tiers = [tier.with_required(extra) for tier in tiers]
        router = self._router
        if router is not None and (start_tier is not None or max_tier is not None):
            router = None  # the call's own range wins; the router is not asked
        return Plan(msgs, opts, tiers, budget, deadline, router)

    async def _open_for_run(self) -> None:
        if self._closed:
            raise RuntimeError("cannot run: this Cascade is closed")
        await self.open()

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

    @property
    def router(self) -> Router | None:
        """The router asked before the first tier of each run (None: none)."""
        return self._router

    @property
    def quality_breakers(self) -> Mapping[str, QualityBreaker]:
        """The tiers' quality breakers, by tier name (only tiers with a ``quality`` table)."""
        return MappingProxyType({t.name: t.quality for t in self._tiers if t.quality is not None})

    @property
    def breakers(self) -> Mapping[str, AsyncBreaker]:
        """Each provider's circuit breaker, by provider name (state, counts, ``repr``)."""
        return MappingProxyType(self._calls.breakers)
