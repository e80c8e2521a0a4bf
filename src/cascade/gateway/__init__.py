"""``cascade serve``: an OpenAI-compatible HTTP gateway in front of the cascade.

>>> from cascade.gateway import serve  # doctest: +SKIP
>>> asyncio.run(serve("cascade.toml", host="127.0.0.1", port=8000))  # doctest: +SKIP

Or in a test, on a free port with an aiohttp runner of your own::

    gateway = build_gateway(load_gateway("cascade.toml"))
    runner = web.AppRunner(create_app(gateway), handler_cancellation=True)

Every request runs through the engine's one execution path (``Engine.execute``, the run
behind ``Cascade.run()`` and ``Cascade.stream()``): SSE through ``Cascade.stream()``, a JSON
answer in the handler's own task, sent as the run hands over its result.
"""

from __future__ import annotations

from ._app import Gateway, create_app, default_wires
from ._config import GatewayConfig, LoadedConfig, RouteConfig, load_gateway
from ._errors import GatewayError
from ._gate import OPEN_GATE, Gate
from ._keys import Admission, GatewayDenied, GatewayKeys, api_key_from_headers
from ._keys_config import KeyEntry, KeyLimits, KeysConfig, hash_key
from ._routes import Route
from ._server import build_gateway, serve
from ._wire import GatewayRequest, Limits, RunInfo, WireFormat, summary

__all__ = [
    "OPEN_GATE",
    "Admission",
    "Gate",
    "Gateway",
    "GatewayConfig",
    "GatewayDenied",
    "GatewayError",
    "GatewayKeys",
    "GatewayRequest",
    "KeyEntry",
    "KeyLimits",
    "KeysConfig",
    "Limits",
    "LoadedConfig",
    "Route",
    "RouteConfig",
    "RunInfo",
    "WireFormat",
    "api_key_from_headers",
    "build_gateway",
    "create_app",
    "default_wires",
    "hash_key",
    "load_gateway",
    "serve",
    "summary",
]
