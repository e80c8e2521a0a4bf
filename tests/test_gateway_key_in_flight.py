"""A key's ``max_in_flight``: one tenant cannot take every slot of the gateway.

Without it, a client holding one valid key and trickling its bodies (or simply asking
slow questions) holds all ``gateway.max_in_flight`` slots, and every other key gets 429
``gateway_busy``. The key's count starts when its headers are checked, before its body
is read, and ends with the request, however it ends.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from cascade.gateway import hash_key
from cascade.testing import FakeOpenAIServer, Reply

from .gateway import Running, serving, write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
GREEDY, OTHER = "sk-greedy-0123456789", "sk-other-0123456789"


def config(url: str, **gateway: Any) -> dict[str, Any]:
    keys = {
        "defaults": {"max_in_flight": 2},
        "entries": [
            {"name": "greedy", "sha256": hash_key(GREEDY)},
            {"name": "other", "sha256": hash_key(OTHER), "max_in_flight": 5},
        ],
    }
    return {
        "tiers": [tier("t", provider("a", url, "m1"))],
        "gateway": {"keys": keys, "max_in_flight": 4, **gateway},
    }


async def post(gw: Running, key: str) -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{gw.base_url}/chat/completions",
            json={"model": "cascade", "messages": HI},
            headers={"Authorization": f"Bearer {key}"},
        ) as r,
    ):
        return r.status, dict(r.headers), await r.read()


async def test_a_key_at_its_limit_gets_429_and_other_keys_are_served(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        "m1", Reply(text="slow", latency_s=30), Reply(text="slow", latency_s=30), "quick"
    )
    async with serving(write_config(tmp_path / "c.toml", config(openai_server.url))) as gw:
        slow = [asyncio.create_task(post(gw, GREEDY)) for _ in range(2)]
        try:
            await eventually(lambda: openai_server.active_requests == 2, "two slow calls")
            status, headers, body = await post(gw, GREEDY)
            assert status == 429, body
            assert headers["Retry-After"] == "1"
            assert b'"code":"key_busy"' in body.replace(b" ", b"")
            assert openai_server.request_count == 2  # the refused one reached nobody
            # the gateway has slots left (4): another key is served
            status, _, body = await post(gw, OTHER)
            assert status == 200, body
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)
        await eventually(lambda: gw.gateway.in_flight == 0, "the slow requests over")
        # the cancelled requests gave their key's slots back
        status, _, body = await post(gw, GREEDY)
        assert status == 200, body


async def test_bodies_trickled_under_one_key_hold_only_that_keys_slots(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The count starts from the headers: a body that never ends holds its key's slot
    (for ``body_timeout_s``), not the gateway's whole ``max_in_flight``."""
    openai_server.default = "ok"
    gateway = {"body_timeout_s": 30.0}
    async with serving(
        write_config(tmp_path / "c.toml", config(openai_server.url, **gateway))
    ) as gw:
        hogs: list[asyncio.StreamWriter] = []
        try:
            for _ in range(2):
                _, writer = await asyncio.open_connection("127.0.0.1", gw.port)
                writer.write(
                    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Authorization: Bearer " + GREEDY.encode() + b"\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                    b'{"model": '
                )
                await writer.drain()
                hogs.append(writer)
            await eventually(lambda: gw.gateway.in_flight == 2, "two bodies arriving")
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + GREEDY.encode() + b"\r\n"
                b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            )
            await writer.drain()
            # refused from its headers: its body is never waited for
            line = await asyncio.wait_for(reader.readline(), 10)
            assert line.startswith(b"HTTP/1.1 429 "), line
            writer.close()
            assert gw.gateway.in_flight == 2
            status, _, body = await post(gw, OTHER)
            assert status == 200, body
        finally:
            for hog in hogs:
                hog.close()
        await eventually(lambda: gw.gateway.in_flight == 0, "the trickled bodies given up")
        status, _, body = await post(gw, GREEDY)
        assert status == 200, body


async def test_the_sdk_sees_key_busy_as_a_rate_limit(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script(
        "m1", Reply(text="slow", latency_s=30), Reply(text="slow", latency_s=30), "quick"
    )
    path = write_config(tmp_path / "c.toml", config(openai_server.url))
    async with (
        serving(path) as gw,
        openai.AsyncOpenAI(base_url=gw.base_url, api_key=GREEDY, max_retries=0) as client,
    ):
        slow = [
            asyncio.create_task(client.chat.completions.create(model="cascade", messages=HI))  # type: ignore[arg-type]
            for _ in range(2)
        ]
        try:
            await eventually(lambda: openai_server.active_requests == 2, "two slow calls")
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
            assert caught.value.code == "key_busy"
        finally:
            for task in slow:
                task.cancel()
            await asyncio.gather(*slow, return_exceptions=True)


def test_max_in_flight_is_checked_in_the_config(tmp_path: Path) -> None:
    from cascade import ConfigError
    from cascade.gateway import load_gateway

    bad = config("http://127.0.0.1:9/v1")
    bad["gateway"]["keys"]["entries"][1]["max_in_flight"] = 0
    with pytest.raises(ConfigError) as caught:
        load_gateway(write_config(tmp_path / "c.toml", bad))
    assert "gateway.keys.entries[1].max_in_flight" in str(caught.value)
