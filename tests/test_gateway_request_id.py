"""Every chat request gets an id: sent in the header each API's SDK reads (OpenAI's
``x-request-id``, Anthropic's ``request-id``: the SDK objects' ``_request_id``, and the
SDK errors' ``request_id``), and written on its access line beside the name of its key,
so a platform team finds the line of a request a service complains about."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from structlog.testing import capture_logs

from cascade.gateway import hash_key
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .gateway import serving, write_config
from .helpers import provider, tier

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
KEY = "sk-team-a-0123456789"
REQUEST_ID = re.compile(r"req_[0-9a-f]{32}")


def config(url: str, kind: str = "openai") -> dict[str, Any]:
    keys = {"entries": [{"name": "team-a", "sha256": hash_key(KEY)}]}
    return {
        "tiers": [tier("t", provider("a", url, "m1", kind=kind))],
        "gateway": {"keys": keys},
    }


def access(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "gateway.request"]


async def test_openai_sdk_reads_the_request_id_of_answers_streams_and_errors(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.default = Reply(text="hello")
    with capture_logs() as logs:
        async with (
            serving(write_config(tmp_path / "c.toml", config(openai_server.url))) as gw,
            openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as client,
        ):
            completion = await client.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
            raw = await client.chat.completions.with_raw_response.create(
                model="cascade",
                messages=HI,  # type: ignore[arg-type]
                stream=True,
            )
            async for _ in raw.parse():
                pass
            async with openai.AsyncOpenAI(
                base_url=gw.base_url, api_key="sk-unknown-0123456789", max_retries=0
            ) as stranger:
                with pytest.raises(openai.AuthenticationError) as caught:
                    await stranger.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    ids = [completion._request_id, raw.request_id, caught.value.request_id]
    assert all(i is not None and REQUEST_ID.fullmatch(i) for i in ids), ids
    assert len(set(ids)) == 3
    lines = access(logs)
    assert [(e["request_id"], e["key"], e["status"]) for e in lines] == [
        (ids[0], "team-a", 200),
        (ids[1], "team-a", 200),
        (ids[2], None, 401),
    ]


async def test_anthropic_sdk_reads_the_request_id(
    anthropic_server: FakeAnthropicServer, tmp_path: Path
) -> None:
    anthropic_server.default = Reply(text="hello")
    cfg = config(anthropic_server.url, kind="anthropic")
    with capture_logs() as logs:
        async with (
            serving(write_config(tmp_path / "c.toml", cfg)) as gw,
            anthropic.AsyncAnthropic(base_url=gw.url, api_key=KEY, max_retries=0) as client,
        ):
            message = await client.messages.create(model="cascade", max_tokens=50, messages=HI)  # type: ignore[arg-type]
            async with client.messages.stream(
                model="cascade",
                max_tokens=50,
                messages=HI,  # type: ignore[arg-type]
            ) as stream:
                await stream.get_final_message()
                streamed_id = stream.request_id
    assert message._request_id is not None and REQUEST_ID.fullmatch(message._request_id)
    assert streamed_id is not None and REQUEST_ID.fullmatch(streamed_id)
    lines = access(logs)
    chat = [e for e in lines if e["path"] == "/v1/messages"]
    assert [(e["request_id"], e["key"]) for e in chat] == [
        (message._request_id, "team-a"),
        (streamed_id, "team-a"),
    ]


async def test_a_key_refused_for_its_limits_is_named_on_its_line(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    cfg = config(openai_server.url)
    cfg["gateway"]["keys"]["entries"][0]["usd_per_day"] = 0.0  # denies every request
    with capture_logs() as logs:
        async with (
            serving(write_config(tmp_path / "c.toml", cfg)) as gw,
            openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as client,
        ):
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    [line] = access(logs)
    assert (line["key"], line["status"], line["error"]) == ("team-a", 429, "insufficient_quota")
    assert line["request_id"] == caught.value.request_id
    assert openai_server.request_count == 0


async def test_the_response_id_and_the_request_id_share_their_digits(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """One random draw a request: ``chatcmpl-<hex>`` and ``req_<hex>`` name the same one."""
    openai_server.default = Reply(text="hello")
    async with (
        serving(write_config(tmp_path / "c.toml", config(openai_server.url))) as gw,
        openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY, max_retries=0) as client,
    ):
        completion = await client.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert completion._request_id == "req_" + completion.id.removeprefix("chatcmpl-")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_405_on_a_chat_path_carries_a_request_id(
    openai_server: FakeOpenAIServer, tmp_path: Path, method: str, path: str
) -> None:
    import aiohttp

    header = "x-request-id" if path == "/v1/chat/completions" else "request-id"
    with capture_logs() as logs:
        async with (
            serving(write_config(tmp_path / "c.toml", config(openai_server.url))) as gw,
            aiohttp.ClientSession() as session,
            session.request(method, f"{gw.url}{path}") as r,
        ):
            assert r.status == 405
            request_id = r.headers.get(header)
    assert request_id is not None and REQUEST_ID.fullmatch(request_id)
    [line] = access(logs)
    assert (line["status"], line["request_id"]) == (405, request_id)
