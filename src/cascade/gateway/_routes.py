"""Routes as served: each named route's Cascade, found by the request's ``model``; and the
generation they belong to, so that a reload (SIGHUP) swaps every route at once and closes
the old cascades only once their requests are done."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from .._config import in_file
from .._engine import Cascade
from .._errors import ConfigError, InputError
from ._config import LoadedConfig, RouteConfig

__all__ = ["Generation", "Route", "build_generation"]


class Route:
    """A route and the Cascade that answers it."""

    __slots__ = ("cascade", "config", "deadline_s", "max_cost_usd", "models")

    def __init__(self, config: RouteConfig, cascade: Cascade, max_deadline_s: float) -> None:
        self.config = config
        self.cascade = cascade
        self.models: dict[str, str] = {
            p.name: p.model for t in cascade.config.tiers for p in t.providers
        }
        """Each provider's model, by the provider's name (unique in a cascade): what a
        stream's chunks name as their text arrives."""
        own = config.deadline_s if config.deadline_s is not None else cascade.config.deadline_s
        self.deadline_s = max_deadline_s if own is None else min(own, max_deadline_s)
        self.max_cost_usd = config.max_cost_usd

    def __repr__(self) -> str:
        return f"<Route {self.config.name!r} {self.config.mode} {self.cascade!r}>"

    @property
    def name(self) -> str:
        return self.config.name


class Generation:
    """The routes of one loaded config, and the requests using them.

    A request :meth:`enter` s the generation current when it starts and :meth:`leave` s it
    when done; a retired generation closes its cascades after its last request.
    """

    def __init__(self, loaded: LoadedConfig, routes: list[Route], cascades: list[Cascade]):
        self.loaded = loaded
        self.routes = routes
        self.cascades = cascades
        self._names: dict[str, Route] = {}
        self.default: Route | None = None
        for route in routes:
            for name in (route.config.name, *route.config.models):
                self._names[name] = route
            if route.config.default:
                self.default = route
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.closed = False

    def __repr__(self) -> str:
        names = ", ".join(r.name for r in self.routes)
        return f"<Generation [{names}] {self.in_flight} in flight>"

    def find(self, model: str) -> Route | None:
        """The route answering ``model``: the one naming it, else the default one."""
        route = self._names.get(model)
        return self.default if route is None else route

    def model_names(self) -> Iterator[str]:
        """Every model name a route claims, routes first."""
        for route in self.routes:
            yield route.config.name
            yield from route.config.models

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    async def open(self) -> None:
        for cascade in self.cascades:
            await cascade.open()

    async def aclose(self, *, wait_s: float = 0.0) -> None:
        """Close the cascades, after the requests in flight (for at most ``wait_s``)."""
        if self.closed:
            return
        self.closed = True
        if wait_s > 0 and self.in_flight:
            try:
                async with asyncio.timeout(wait_s):
                    await self._idle.wait()
            except TimeoutError:
                pass
        for cascade in self.cascades:
            await cascade.aclose()

    def ready(self) -> bool:
        """Some provider can take a call: its breaker is not open (or due a probe)."""
        for cascade in self.cascades:
            for breaker in cascade.breakers.values():
                if breaker.state != "open" or breaker.retry_in_s() <= 0:
                    return True
        return False


def build_generation(loaded: LoadedConfig, **cascade_kwargs: Any) -> Generation:
    """Build every route's Cascade (not opened): routes without a ``config`` of their own
    share one Cascade of the file's tiers; every check a Cascade makes runs here, so a bad
    reload fails before anything is swapped."""
    gateway = loaded.gateway
    shared: Cascade | None = None
    cascades: list[Cascade] = []
    routes: list[Route] = []
    for r, route in enumerate(gateway.resolved_routes()):
        own = loaded.route_configs.get(route.name)
        if own is None:
            if shared is None:
                shared = Cascade(loaded.config, base_dir=loaded.base_dir, **cascade_kwargs)
                cascades.append(shared)
            cascade = shared
        else:
            assert route.config is not None
            base_dir = (loaded.base_dir / route.config).parent
            with in_file(str(loaded.base_dir / route.config)):
                cascade = Cascade(own, base_dir=base_dir, **cascade_kwargs)
            cascades.append(cascade)
        for field in ("start_tier", "max_tier"):
            try:  # a tier the route's cascade does not have fails at load
                cascade._tier_index(getattr(route, field), field, 0)
            except InputError as exc:
                raise ConfigError(exc.message, path=f"gateway.routes[{r}].{field}") from None
        routes.append(Route(route, cascade, gateway.max_deadline_s))
    return Generation(loaded, routes, cascades)
