"""The ``[gateway]`` table of a cascade config file: limits, drain, and named routes.

One file configures the cascade (``[[tiers]]``) and the gateway in front of it::

    [gateway]
    max_body_bytes = 4194304
    max_deadline_s = 120
    drain_delay_s = 0           # SIGTERM: /readyz 503, still serving, this long first
    drain_timeout_s = 30

    [[gateway.routes]]
    name = "cascade"            # the model name clients send
    default = true              # and every other model name no route claims

    [[gateway.routes]]
    name = "cheap"
    models = ["gpt-4o-mini"]    # further names it answers
    max_tier = "small"          # only the first tiers of this file's cascade

    [[gateway.routes]]
    name = "coder"
    config = "coder.toml"       # a cascade of its own (relative to this file)
    mode = "speculative"

With no route at all, one route named ``cascade`` answers every model name. The core
:class:`~cascade.Config` keeps the table as read (``Config.gateway``); it is checked here,
errors naming ``gateway.<field>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .._config import Config, _config_error, in_file, load_config
from .._errors import ConfigError
from ._keys_config import KeysConfig

__all__ = ["GatewayConfig", "LoadedConfig", "RouteConfig", "load_gateway"]

_FLOAT_MAX = sys.float_info.max
PosFloat = Annotated[float, Meta(gt=0, le=_FLOAT_MAX)]
Name = Annotated[str, Meta(min_length=1, max_length=128, pattern=r"^[^\s\x00-\x1f\x7f-\x9f]+$")]
"""A route or model name: no whitespace, no control character (it goes in headers)."""
TierRef = int | Annotated[str, Meta(min_length=1)]

DEFAULT_ROUTE = "cascade"


class RouteConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A named cascade clients reach by sending its ``name`` (or one of ``models``) as the
    request's ``model``."""

    name: Name
    """The model name this route answers (listed by ``GET /v1/models``)."""
    models: list[Name] = []
    """Further model names it answers (a client hard-wired to ``gpt-4o`` keeps working)."""
    default: bool = False
    """Answer every model name that no route claims (at most one route)."""
    config: str | None = None
    """A config file of its own for this route's cascade (relative to this file); default:
    this file's tiers. Its own ``[gateway]`` table, if any, is ignored."""
    start_tier: TierRef | None = None
    """First tier tried (1-based index or name); default the first."""
    max_tier: TierRef | None = None
    """Last tier tried; default the last."""
    mode: Literal["buffered", "speculative"] = "buffered"
    """How a streamed answer reaches the client. ``buffered``: only text its tier
    accepted (the client never sees rejected text). ``speculative``: text as it arrives,
    and a ``cascade.retracted`` chunk when that answer is rejected (see the README)."""
    deadline_s: PosFloat | None = None
    """This route's deadline per request (default the cascade's ``deadline_s``); held to
    ``gateway.max_deadline_s``."""
    max_cost_usd: Annotated[float, Meta(ge=0, le=_FLOAT_MAX)] | None = None
    """This route's cost cap per request (default the cascade's ``max_cost_usd``)."""


class GatewayConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The gateway in front of the cascade (``cascade serve``)."""

    routes: list[RouteConfig] = []
    """Named routes; none: one route ``cascade`` answering every model name."""
    max_body_bytes: Annotated[int, Meta(ge=1024, le=1 << 30)] = 4 << 20
    """Largest request body read (413 beyond it)."""
    max_messages: Annotated[int, Meta(ge=1, le=100_000)] = 2048
    """Most messages in one request (400 beyond it)."""
    max_schema_bytes: Annotated[int, Meta(ge=64, le=1 << 20)] = 64 << 10
    """Largest ``response_format`` JSON Schema a request may send, as JSON (400 beyond)."""
    max_schema_depth: Annotated[int, Meta(ge=2, le=256)] = 32
    """Deepest nesting of objects and arrays in that schema (400 beyond)."""
    max_deadline_s: PosFloat = 300.0
    """No request runs longer than this, whatever its route or cascade says (504)."""
    body_timeout_s: PosFloat = 30.0
    """Longest wait for a request's whole body (408 beyond it): a client trickling its
    body cannot hold a connection open."""
    write_timeout_s: PosFloat = 30.0
    """Longest wait for one write of a response to reach the client's socket: a client
    that stops reading (a full TCP window) is cut off after it, its run cancelled and its
    in-flight slot freed."""
    idle_timeout_s: PosFloat = 30.0
    """Longest a connection may go without a request being handled: idle between
    requests (keep-alive), or still sending its request line and headers (a client
    trickling its headers cannot hold a connection open)."""
    allowed_hosts: list[Annotated[str, Meta(min_length=1, max_length=253)]] | None = None
    """Host names (``Host`` header, without the port) a request may name besides IP
    literals and ``localhost``. Bound to a loopback address, the gateway refuses (403)
    any other ``Host``: a web page cannot reach it by DNS rebinding. Set, it is checked
    on every address."""
    max_in_flight: Annotated[int, Meta(ge=1)] = 4096
    """Requests served at once; more get 429 with ``Retry-After: 1``."""
    drain_delay_s: Annotated[float, Meta(ge=0, le=3600)] = 0.0
    """On SIGTERM, before the drain: keep accepting and serving this long while
    ``/readyz`` answers 503 and every response says ``Connection: close``, so that a load
    balancer (a Kubernetes Service's endpoints) stops sending here before the listener
    closes; a second SIGTERM ends the wait (and the drain) at once."""
    drain_timeout_s: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    """On SIGTERM: stop accepting, let requests in flight finish for this long, then cut
    them off and close. (A reload, SIGHUP, closes the old cascades once their requests
    are done, waiting as long as one of them may take: ``Gateway.longest_request_s``.)"""
    keys: KeysConfig | None = None
    """Gateway API keys (as SHA-256 hashes), their requests and tokens per minute and
    USD per day (see :class:`~cascade.gateway.KeysConfig`); none: the gateway asks for no
    key. A reload (SIGHUP) applies the keys listed (added, revoked, rotated under their
    name, each keeping its counters: ``GatewayKeys.reload``); their limits, ``required``
    and ``defaults`` are read at start only."""

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        defaults = 0
        for r, route in enumerate(self.routes):
            for n, name in enumerate((route.name, *route.models)):
                where = f"routes[{r}].name" if n == 0 else f"routes[{r}].models[{n - 1}]"
                if name in seen:
                    raise ConfigError(f"model name {name!r} is already {seen[name]}'s", path=where)
                seen[name] = f"route {route.name!r}"
            defaults += route.default
            if defaults > 1:
                raise ConfigError("a second default route", path=f"routes[{r}].default")

    def resolved_routes(self) -> list[RouteConfig]:
        """The routes, or the implicit default one."""
        return self.routes or [RouteConfig(name=DEFAULT_ROUTE, default=True)]


class LoadedConfig(msgspec.Struct, frozen=True, kw_only=True):
    """A config file as ``cascade serve`` reads it: the cascade, the gateway, where the
    file is (relative paths resolve against it), and each route's own cascade config."""

    path: str
    config: Config
    gateway: GatewayConfig
    route_configs: dict[str, Config]
    """Route name to the Config of its own file, for routes with ``config``."""

    @property
    def base_dir(self) -> Path:
        return Path(self.path).parent


def gateway_config(config: Config) -> GatewayConfig:
    """The ``[gateway]`` table of ``config`` checked (defaults where there is none)."""
    try:
        return msgspec.convert(config.gateway or {}, type=GatewayConfig)
    except msgspec.ValidationError as exc:
        error = _config_error(exc)
    except ConfigError as exc:  # from GatewayConfig.__post_init__
        error = exc
    raise ConfigError(error.message, path=f"gateway.{error.path}".rstrip(".")) from None


def load_gateway(path: str | os.PathLike[str]) -> LoadedConfig:
    """Read a config file for ``cascade serve``; ConfigError names the file and field."""
    source = str(path)
    config = load_config(source)
    with in_file(source):
        gateway = gateway_config(config)
    route_configs: dict[str, Config] = {}
    for r, route in enumerate(gateway.routes):
        if route.config is None:
            continue
        own = Path(source).parent / route.config
        with in_file(source):
            if not own.is_file():
                raise ConfigError(
                    f"no config file at {str(own)!r}", path=f"gateway.routes[{r}].config"
                )
        route_configs[route.name] = load_config(own)
    return LoadedConfig(path=source, config=config, gateway=gateway, route_configs=route_configs)
