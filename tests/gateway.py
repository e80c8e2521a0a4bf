"""Running the gateway in-process on a free loopback port, for the gateway tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from cascade.gateway import Gateway, build_gateway, load_gateway
from cascade.gateway._server import app_runner


def toml_value(value: Any) -> str:
    """``value`` as TOML (inline tables and arrays; None keys are left out)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML for {type(value).__name__}")


def write_config(path: Path, config: dict[str, Any]) -> Path:
    """Write ``config`` as a TOML file (each top-level key a line)."""
    lines = [f"{key} = {toml_value(v)}" for key, v in config.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


class Running:
    """A gateway serving on loopback: its ``url`` (``http://127.0.0.1:PORT``) and state."""

    def __init__(self, gateway: Gateway, port: int) -> None:
        self.gateway = gateway
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.url}/v1"


@asynccontextmanager
async def serving(path: Path, **kwargs: Any) -> AsyncIterator[Running]:
    """Serve the config file at ``path`` on port 0 as ``cascade serve`` does
    (``handler_cancellation``: a client that leaves cancels its request)."""
    gateway = build_gateway(load_gateway(path), **kwargs)
    runner = app_runner(gateway, shutdown_timeout=5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Running(gateway, runner.addresses[0][1])
    finally:
        await runner.cleanup()
