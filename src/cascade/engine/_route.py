"""Pre-routing inside a run: the cascade's router is asked once, before the first tier,
which tiers the request should try.

The router's decision narrows the run's range (start tier, max tier, the start tier's
prompt variant); validators still escalate inside it. A router must never lose a request:
one that raises, overruns ``router_timeout_s`` (on the cascade's clock) or answers with a
tier out of range is a failed decision: the run goes on over the whole range, the failure
in the decision's ``reason`` and a warning in the log. Its own provider calls (the ``llm``
router's, through :attr:`RouteRequest.complete`) are attempts of the run at tier 0, named
``router``: through the provider's breaker, rate limit and retries, and costed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from .._clock import timeout_after
from .._config import ProviderConfig, TierConfig
from .._tier import Tier
from .._types import Completion, Message, RequestOptions, estimate_prompt_tokens
from ..routing import RouteDecision, Router, RouteRequest, TierInfo
from ..routing._params import warn_failed
from ._events import Routed
from ._outcomes import tier_outcome

if TYPE_CHECKING:
    from .._calls import ProviderCalls
    from .._records import RunState

__all__ = ["ROUTER_TIER_NAME", "RouterCancelled", "ask_router", "router_tier"]

ROUTER_TIER_NAME = "router"
"""The tier name of the router's own calls in a run's attempts (their tier is 0)."""

MAX_REASON = 200


class RouterCancelled(Exception):
    """Why a router's call under way when its time ran out was cut off (its attempt's
    ``error_type``); never raised."""


def router_tier(config: ProviderConfig) -> Tier:
    """The tier the router's calls are attempts of: index 0, no validators, a refusal an
    answer like any (a rating, not an answer to the user)."""
    return Tier(
        0,
        TierConfig(name=ROUTER_TIER_NAME, providers=[config], accept_refusals=True),
        (),
        (),
    )


async def ask_router(
    router: Router,
    *,
    run: RunState,
    calls: ProviderCalls,
    tiers: Sequence[Tier],
    msgs: tuple[Message, ...],
    opts: RequestOptions,
    budget: float | None,
    timeout_s: float,
    estimate_output_tokens: int,
) -> Sequence[Tier]:
    """Ask ``router`` where the run starts and stops; emit :class:`Routed`, keep the
    decision on ``run.route``, and return the tiers to try (``tiers`` when the router has
    no opinion or failed)."""
    calling = _Calling(run, calls, tiers)
    request = RouteRequest(
        messages=msgs,
        options=opts,
        tiers=_tier_infos(tiers, msgs, opts, estimate_output_tokens),
        max_cost_usd=None if budget is None else max(budget - run.spent, 0.0),
        complete=calling.complete,
    )
    try:
        decision = await _bounded(router, request, calls, timeout_s)
        first, last, variant = _range(decision, tiers)
        if not decision.router or len(decision.reason) > MAX_REASON:
            decision = msgspec.structs.replace(
                decision, router=decision.router or router.name, reason=decision.reason[:MAX_REASON]
            )
    except Exception as exc:  # a router must never lose the request
        calling.cut_off(RouterCancelled(f"cut off: the router {_what(exc, timeout_s)}"))
        decision = _failed(router, exc, timeout_s)
        first, last, variant = 0, len(tiers) - 1, None
    else:
        calling.cut_off(RouterCancelled("the router returned before its call ended"))
    finally:
        calling.end()
    run.route = decision
    chosen = list(tiers[first : last + 1])
    if variant is not None:
        chosen[0] = chosen[0].starting_with(variant)
    run.emit(
        Routed(
            route=decision,
            start_tier=chosen[0].index,
            start_tier_name=chosen[0].name,
            max_tier=chosen[-1].index,
            max_tier_name=chosen[-1].name,
        )
    )
    return chosen


async def _bounded(
    router: Router, request: RouteRequest, calls: ProviderCalls, timeout_s: float
) -> RouteDecision:
    """``router.route(request)`` within ``timeout_s`` on the cascade's clock."""
    timeout = timeout_after(calls.timers, timeout_s)
    try:
        async with timeout:
            decision = await router.route(request)
    except TimeoutError as exc:
        if timeout.expired():
            raise _RouterTimeout(f"no decision within {timeout_s}s") from exc
        raise  # the router's own TimeoutError: a failure like any
    if not isinstance(decision, RouteDecision):
        raise TypeError(f"route() returned {type(decision).__name__}, not a RouteDecision")
    return decision


class _RouterTimeout(Exception):
    pass


def _range(decision: RouteDecision, tiers: Sequence[Tier]) -> tuple[int, int, str | None]:
    """The decision as 0-based positions in ``tiers`` and a variant of the start tier;
    ValueError for a decision outside the cascade (a router's bug, treated as a failure)."""
    n = len(tiers)
    first = _position(decision.start_tier, "start_tier", n, 0)
    last = _position(decision.max_tier, "max_tier", n, n - 1)
    if first > last:
        raise ValueError(f"start_tier {decision.start_tier} is above max_tier {decision.max_tier}")
    variant = decision.variant
    if variant is not None and all(v.name != variant for v in tiers[first].variants):
        raise ValueError(f"tier {tiers[first].name!r} has no prompt variant {variant!r}")
    return first, last, variant


def _position(value: object, field: str, n: int, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n:
        raise ValueError(f"{field} {value!r} is not a tier from 1 to {n}")
    return value - 1


def _failed(router: Router, exc: Exception, timeout_s: float) -> RouteDecision:
    name = getattr(router, "name", "") or type(router).__name__
    what = _what(exc, timeout_s)
    reason = f"router {name!r} {what}; the run goes on over every tier"
    warn_failed(name, what)
    return RouteDecision(reason=reason[:MAX_REASON], router=name)


def _what(exc: Exception, timeout_s: float) -> str:
    if isinstance(exc, _RouterTimeout):
        return f"timed out after {timeout_s}s"
    return f"failed: {type(exc).__name__}: {exc}"


def _tier_infos(
    tiers: Sequence[Tier], msgs: tuple[Message, ...], opts: RequestOptions, out_default: int
) -> tuple[TierInfo, ...]:
    """Each tier as a router sees it: this request's cost at its first provider's prices,
    times the calls one answer pays for (the estimate the budget check makes)."""
    in_tokens = estimate_prompt_tokens(msgs)
    infos = []
    for tier in tiers:
        config = tier.providers[0].config
        out_tokens = opts.max_tokens or config.max_tokens or out_default
        infos.append(
            TierInfo(
                index=tier.index,
                name=tier.name,
                est_cost_usd=config.cost_usd(in_tokens, out_tokens) * tier.calls,
            )
        )
    return tuple(infos)


class _Calling:
    """What :attr:`RouteRequest.complete` calls: a provider of the cascade, by name,
    through the engine's own path, each call an attempt of the run's tier 0."""

    __slots__ = ("_calls", "_msgs", "_providers", "_run", "_tiers", "_trace")

    def __init__(self, run: RunState, calls: ProviderCalls, tiers: Sequence[Tier]) -> None:
        self._run = run
        self._calls = calls
        self._providers = {p.name: p for t in tiers for p in t.providers}
        self._tiers: dict[str, Tier] = {}
        self._msgs: tuple[Message, ...] = ()
        self._trace = False

    async def complete(
        self,
        provider_name: str,
        messages: Sequence[Message],
        options: RequestOptions | None = None,
    ) -> Completion | None:
        provider = self._providers.get(provider_name)
        if provider is None:
            raise ValueError(f"the cascade has no provider named {provider_name!r}")
        msgs = tuple(messages)
        opts = RequestOptions() if options is None else options
        tier = self._tiers.get(provider_name)
        if tier is None:
            tier = self._tiers[provider_name] = router_tier(provider.config)
        run, calls = self._run, self._calls
        if not self._trace:  # the router's calls have a tier span of their own
            self._trace = True
            # Not current here: a router may call in tasks of its own (asyncio.gather),
            # so each call makes it current in its own task, and leaves it there.
            run.tier_trace = run.trace.tier(tier, current=False)
        tier_trace = run.tier_trace
        lease = await calls.reserve(provider, msgs, opts)
        if lease is False:
            return None  # no headroom now: a router does not wait for it
        self._msgs = msgs
        token = tier_trace.made_current()
        try:
            attempt = await calls.attempt(run, tier, provider, msgs, opts, lease, show_text=False)
        finally:
            tier_trace.detach(token)
        return None if attempt is None else attempt.completion

    def cut_off(self, exc: Exception) -> None:
        """Record the calls a timeout (or a router that did not wait) left under way."""
        run = self._run
        if run.flights:
            run.cut_off(self._msgs, exc, "cancelled")

    def end(self) -> None:
        if self._trace:
            self._run.tier_trace.end(tier_outcome(self._run.attempts, 0)[0])
