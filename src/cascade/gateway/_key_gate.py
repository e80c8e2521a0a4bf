"""The keyed :class:`~cascade.gateway.Gate`: :class:`~cascade.gateway.GatewayKeys` in the
request path of ``cascade serve``.

A request is admitted once it is parsed and its route found, before the route's cascade
runs: a refused request (401, 403, 429) reaches no provider. It reserves, from its key's
daily budget, what it could cost at most as far as the prices say: for every tier its
route may try, the dearest provider's price for the prompt and ``max_tokens`` (else the
provider's or the cascade's output estimate), times the calls one answer of the tier may
pay for (``self_consistency``'s samples, a hedge), capped at the route's ``max_cost_usd``. So
the day's spend passes the budget by at most one request's reservation (see
``_budget.py``), the engine's own estimate of a call aside.

A request whose client leaves (its handler cancelled) is settled at its reservation, or its
cost if that is more. The engine costs a call it cut off by what it can know (the prompt,
the text that came, a non-streaming provider's *expected* answer), but the provider bills
the answer it generated, and the client chose both how long that answer may be and when
to leave: settled at the engine's estimate, asking for long answers and leaving just
before they come would spend the operator's money while the budget barely moves. The
reservation is the most the request could have cost, the figure the key was admitted on.

The gate keeps its own :class:`~cascade.resilience.shared.SharedState` on the config
file's ``[shared]`` Redis (the same scripts and key prefix as the breakers and limiters,
one connection of its own): the keys' counters then outlive a config reload (SIGHUP),
which replaces the cascades and their shared state; a reload adds and revokes keys (and
rotates a key's hash under its name), keeping each remaining key's counters
(``GatewayKeys.reload``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .._clock import Clock, SystemClock
from .._config import Config
from .._types import estimate_prompt_tokens
from ..resilience.shared import SharedState
from ._keys import Admission, GatewayKeys, _Key, api_key_from_headers, resolved_keys
from ._keys_config import KeyLimits, KeysConfig

if TYPE_CHECKING:
    from ._routes import Route
    from ._wire import GatewayRequest

__all__ = ["KeyGate", "max_cost_usd"]


def max_cost_usd(route: Route, request: GatewayRequest) -> float:
    """The most ``request`` may cost on ``route`` by the prices of its tiers' providers."""
    config: Config = route.cascade.config
    names = [t.name for t in config.tiers]
    first = _tier(route.config.start_tier, names, 0)
    last = _tier(route.config.max_tier, names, len(names) - 1)
    prompt = estimate_prompt_tokens(request.messages)
    built = route.cascade._tiers
    total = 0.0
    for index, tier in enumerate(config.tiers[first : last + 1], start=first):
        dearest = 0.0
        for p in tier.providers:
            out = request.options.max_tokens or p.max_tokens or config.estimate_output_tokens
            dearest = max(dearest, p.cost_usd(prompt, out))
        total += dearest * built[index].calls
    cap = route.max_cost_usd if route.max_cost_usd is not None else config.max_cost_usd
    return total if cap is None else min(total, cap)


def _client_left() -> bool:
    """Whether the request settling now was cancelled: its client went away (aiohttp's
    ``handler_cancellation``), or a drain gave up on it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _tier(ref: int | str | None, names: list[str], default: int) -> int:
    if ref is None:
        return default
    if isinstance(ref, str):
        return names.index(ref) if ref in names else default
    return min(max(ref - 1, 0), len(names) - 1)


class KeyGate:
    """Admits requests by their gateway key (``[gateway.keys]``); see the module doc."""

    __slots__ = ("_environ", "_shared", "keys")

    def __init__(
        self,
        keys: GatewayKeys,
        *,
        shared: SharedState | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.keys = keys
        self._shared = shared
        self._environ = environ
        """Where ``env`` entries are read, at start and by each reload."""

    @classmethod
    def from_config(
        cls,
        keys: KeysConfig,
        config: Config,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> KeyGate:
        """The gate for ``[gateway.keys]``, sharing its counters through ``config``'s
        ``[shared]`` Redis when there is one."""
        shared = (
            None
            if config.shared is None
            else SharedState.from_config(config.shared, environ=environ)
        )
        built = GatewayKeys.from_config(
            keys, clock=clock or SystemClock(), shared=shared, environ=environ
        )
        return cls(built, shared=shared, environ=environ)

    def resolve(self, keys: KeysConfig) -> list[tuple[str, bytes, KeyLimits]]:
        """The keys of a config file read again, resolved as at start (a reload's build:
        a missing ``env`` variable fails the reload)."""
        return resolved_keys(keys, self._environ)

    def check_headers(self, headers: Mapping[str, str]) -> Callable[[str, str], bool]:
        """The key of ``headers`` is one this gate knows (401 otherwise); nothing counted.
        Returns whether that key may ask a route (its name) for a model name."""
        return self.keys.check(api_key_from_headers(headers))

    def enter(self, headers: Mapping[str, str]) -> _Key:
        """:meth:`check_headers` for a request about to be served: counted in its key's
        requests in flight (429 ``key_busy`` at its ``max_in_flight``) until the returned
        key's ``leave()``."""
        return self.keys.enter(api_key_from_headers(headers))

    async def open(self) -> None:
        if self._shared is not None:
            await self._shared.open()

    async def aclose(self) -> None:
        """Let the settlements under way reach Redis (within its timeout), those kept
        while it was down included, disconnect."""
        if self._shared is not None:
            self.keys.send_unsent()
            await self._shared.flush()  # (a closed state sends nothing more)
            await self._shared.aclose()

    async def admit(
        self, headers: Mapping[str, str], *, request: GatewayRequest, route: Route | None
    ) -> Admission:
        return await self.keys.admit(
            api_key_from_headers(headers),
            estimated_tokens=request.estimated_tokens,
            estimated_cost_usd=0.0 if route is None else max_cost_usd(route, request),
            route=None if route is None else route.name,
            model=request.model,
        )

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        if isinstance(admission, Admission):
            if _client_left():  # see the module docstring
                cost_usd = max(cost_usd, admission.reserved_usd)
            await self.keys.settle(admission, tokens=tokens, cost_usd=cost_usd)

    def __repr__(self) -> str:
        return f"<KeyGate {self.keys!r}>"
