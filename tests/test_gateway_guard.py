"""Requests a browser makes for another site are refused before any provider is called:
a cross-site ``POST`` (``Sec-Fetch-Site``, a foreign ``Origin``), and on loopback a
``Host`` that is not the gateway's (DNS rebinding). SDKs and curl send neither header."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cascade.testing import FakeOpenAIServer

from .gateway import serving, write_config
from .helpers import provider, tier

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]


def config(url: str, **gateway: Any) -> dict[str, Any]:
    return {"tiers": [tier("t", provider("a", url, "m1"))], "gateway": gateway or None}


async def call(url: str, path: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    body = {"model": "cascade", "messages": HI, "max_tokens": 16} if path != "/healthz" else None
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            "GET" if body is None else "POST", f"{url}{path}", json=body, headers=headers
        ) as r,
    ):
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({"Sec-Fetch-Site": "cross-site"}, "cross_origin_request"),
        ({"Sec-Fetch-Site": "same-site"}, "cross_origin_request"),
        ({"Origin": "https://evil.example"}, "cross_origin_request"),
        ({"Origin": "null"}, "cross_origin_request"),
        ({"Origin": "http://127.0.0.1:1"}, "cross_origin_request"),  # another port
        ({"Host": "evil.example:8000"}, "host_not_allowed"),
        ({"Host": "evil.example", "Origin": "http://evil.example"}, "host_not_allowed"),
    ],
)
async def test_a_request_for_another_site_is_403_and_reaches_no_provider(
    openai_server: FakeOpenAIServer, tmp_path: Path, headers: dict[str, str], code: str
) -> None:
    openai_server.default = "ok"
    async with serving(write_config(tmp_path / "c.toml", config(openai_server.url))) as gw:
        status, body = await call(gw.url, "/v1/chat/completions", headers)
    assert status == 403
    assert body["error"]["code"] == code
    assert openai_server.request_count == 0


async def test_anthropic_clients_get_the_refusal_in_anthropics_format(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    async with serving(write_config(tmp_path / "c.toml", config(openai_server.url))) as gw:
        status, body = await call(gw.url, "/v1/messages", {"Origin": "https://evil.example"})
    assert status == 403
    assert body["type"] == "error"
    assert body["error"]["type"] == "permission_error"


async def test_a_rebinding_host_is_refused_on_every_route(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    async with serving(write_config(tmp_path / "c.toml", config(openai_server.url))) as gw:
        status, _ = await call(gw.url, "/healthz", {"Host": "evil.example"})
    assert status == 403


@pytest.mark.parametrize(
    "headers",
    [
        {},  # an SDK, curl
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},  # typed in the address bar
        {"Host": "localhost:8000", "Origin": "http://localhost:8000"},  # the page it serves
        {"Host": "[::1]:8000"},
        {"Host": "gw.internal:8000", "Origin": "http://gw.internal:8000"},
    ],
)
async def test_same_origin_sdk_and_allowed_hosts_are_served(
    openai_server: FakeOpenAIServer, tmp_path: Path, headers: dict[str, str]
) -> None:
    openai_server.default = "ok"
    path = write_config(
        tmp_path / "c.toml", config(openai_server.url, allowed_hosts=["GW.internal"])
    )
    async with serving(path) as gw:
        status, body = await call(gw.url, "/v1/chat/completions", headers)
    assert status == 200, body
    assert openai_server.request_count == 1


async def test_with_allowed_hosts_set_a_same_origin_page_on_it_is_served(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.default = "ok"
    path = write_config(tmp_path / "c.toml", config(openai_server.url, allowed_hosts=["a.b"]))
    async with serving(path) as gw:
        refused, _ = await call(gw.url, "/v1/chat/completions", {"Host": "c.d"})
        served, _ = await call(gw.url, "/v1/chat/completions", {"Host": "a.b"})
    assert refused == 403
    assert served == 200
