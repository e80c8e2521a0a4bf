"""Review of the drain's cut, a key's ``max_in_flight``, the request ids and the zero
usage estimate, as a hostile client (or a hostile moment) would try them."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from structlog.testing import capture_logs

from cascade.gateway import Gateway, build_gateway, hash_key, load_gateway
from cascade.gateway._server import _CLOSE_S, _drain, app_runner
from cascade.testing import FakeOpenAIServer, Reply

from .gateway import write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
KEY = "sk-review-0123456789"


def keyed(url: str, *, max_in_flight: int = 2, **gateway: Any) -> dict[str, Any]:
    keys = {"entries": [{"name": "team", "sha256": hash_key(KEY), "max_in_flight": max_in_flight}]}
    return {
        "tiers": [tier("t", provider("a", url, "m1"))],
        "gateway": {"keys": keys, **gateway},
    }


class Served:
    def __init__(self, gateway: Gateway, runner: web.AppRunner, port: int) -> None:
        self.gateway = gateway
        self.runner = runner
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    async def cut(self) -> None:
        """What SIGTERM then the end of ``drain_timeout_s`` do (``_server.serve``)."""
        self.gateway.draining = True
        await _drain(self.gateway, self.runner, 0.0, asyncio.Event())


@asynccontextmanager
async def served(path: Path) -> AsyncIterator[Served]:
    """The gateway as ``cascade serve`` runs it, its runner at hand for the drain."""
    gateway = build_gateway(load_gateway(path))
    runner = app_runner(gateway, shutdown_timeout=_CLOSE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Served(gateway, runner, runner.addresses[0][1])
    finally:
        await runner.cleanup()


def access_lines(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "gateway.request"]


async def post(
    url: str, body: dict[str, Any], *, path: str = "/v1/chat/completions", **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + path, json=body, headers=headers) as r,
    ):
        return r.status, r.headers.copy(), await r.read()


def key_slots(gateway: Gateway) -> int:
    from cascade.gateway._key_gate import KeyGate

    gate = gateway.gate
    assert isinstance(gate, KeyGate)
    return sum(k.in_flight for k in gate.keys._by_index.values())


# -- a key's max_in_flight and the access line ------------------------------------------


async def test_a_key_busy_429_names_its_key_on_the_access_line(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The CHANGELOG: the access line names the request's key "also for a key's 429s":
    a key at its ``max_in_flight`` is one (the operator looks for which tenant is
    refused)."""
    openai_server.script("m1", Reply(text="slow", latency_s=30))
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url, max_in_flight=1))
    with capture_logs() as logs:
        async with served(path) as gw:
            auth = {"Authorization": f"Bearer {KEY}"}
            slow = asyncio.create_task(post(gw.url, {"model": "m", "messages": HI}, **auth))
            try:
                await eventually(lambda: openai_server.active_requests == 1, "the slow call")
                status, headers, body = await post(gw.url, {"model": "m", "messages": HI}, **auth)
                assert status == 429, body
                assert b"key_busy" in body
            finally:
                slow.cancel()
                await asyncio.gather(slow, return_exceptions=True)
            await eventually(lambda: key_slots(gw.gateway) == 0, "the key's slots back")
    busy = [e for e in access_lines(logs) if e.get("error") == "key_busy"]
    assert [(e["status"], e["key"]) for e in busy] == [(429, "team")]
    assert busy[0]["request_id"] == headers["x-request-id"]


# -- request ids -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "header"), [("/v1/chat/completions", "x-request-id"), ("/v1/messages", "request-id")]
)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Expect": "something-else"}, 417),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": "http://evil.example"}, 403),
    ],
)
async def test_a_chat_refusal_before_the_handler_carries_a_request_id(
    openai_server: FakeOpenAIServer,
    tmp_path: Path,
    path: str,
    header: str,
    headers: dict[str, str],
    status: int,
) -> None:
    """"Every chat response, errors included, carries a request id": also the refusals the
    middleware answers before the chat handler runs, and their access line names it."""
    path_ = write_config(tmp_path / "c.toml", keyed(openai_server.url))
    body = {"model": "m", "max_tokens": 10, "messages": HI}
    with capture_logs() as logs:
        async with served(path_) as gw:
            got, answer_headers, answer = await post(
                gw.url, body, path=path, Authorization=f"Bearer {KEY}", **headers
            )
    assert got == status, answer
    request_id = answer_headers.get(header)
    assert request_id is not None and request_id.startswith("req_"), answer_headers
    [line] = access_lines(logs)
    assert line["request_id"] == request_id
    assert openai_server.request_count == 0
