"""``cascade serve``'s OpenAI format through the official ``openai`` SDK (sync and async,
JSON and SSE, raw responses for the headers) and ``curl``, against the fake fleet."""

from __future__ import annotations

import json
import random
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from cascade.testing import FakeOpenAIServer, Reply

from .gateway import Running, serving, write_config
from .helpers import JSON_SCHEMA, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
HI = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]


def two_tiers(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("a", url, "m1", stream=True), validators=[JSON_SCHEMA]),
            tier("big", provider("b", url, "m2", stream=True), validators=[JSON_SCHEMA]),
        ],
        **extra,
    }


@pytest.fixture
async def gw(openai_server: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Running]:
    async with serving(write_config(tmp_path / "c.toml", two_tiers(openai_server.url))) as g:
        yield g


def client(gw: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0)


async def test_json_escalates_and_says_so_in_headers_and_body(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    openai_server.script("m1", Reply(text="not json", input_tokens=10, output_tokens=3))
    openai_server.script("m2", Reply(text=ANSWER, input_tokens=20, output_tokens=5))
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(model="cascade", messages=HI)
    completion = raw.parse()
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "m2"
    headers = raw.headers
    assert headers["x-cascade-tier"] == "2"
    assert headers["x-cascade-tier-name"] == "big"
    assert headers["x-cascade-model"] == "m2"
    assert headers["x-cascade-attempts"] == "2"
    assert headers["x-cascade-escalations"] == "1"
    assert headers["x-cascade-route"] == "cascade"
    assert float(headers["x-cascade-cost-usd"]) > 0
    info = (completion.model_extra or {})["cascade"]
    assert info["tier"] == 2
    assert [p["outcome"] for p in info["path"]] == ["rejected", "accepted"]
    assert info["cost_usd"] == pytest.approx(float(headers["x-cascade-cost-usd"]), abs=1e-8)
    usage = completion.usage
    assert usage is not None  # every attempt's tokens: what the request spent
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (30, 8, 38)


async def test_async_stream_buffered_with_usage(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    openai_server.script("m1", Reply(text="rejected text", chunk_chars=2))
    openai_server.script("m2", Reply(text=ANSWER, chunk_chars=3))
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="cascade",
            messages=HI,
            stream=True,
            stream_options={"include_usage": True},
        )
        assert raw.headers["content-type"].startswith("text/event-stream")
        # buffered: the headers go with the accepted answer's first text, so they are final
        assert raw.headers["x-cascade-tier"] == "2"
        assert raw.headers["x-cascade-model"] == "m2"
        assert raw.headers["x-cascade-escalations"] == "1"
        chunks = [chunk async for chunk in raw.parse()]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ANSWER  # never the rejected text
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices]
    assert finishes[-1] == "stop"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.total_tokens > 0
    assert (last.model_extra or {})["cascade"]["tier_name"] == "big"


async def test_sync_client_from_a_thread(gw: Running, openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(text=ANSWER), Reply(text=ANSWER))

    def call() -> tuple[str | None, str]:
        with openai.OpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as sync:
            done = sync.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
            streamed = sync.chat.completions.create(
                model="cascade",
                messages=HI,  # type: ignore[arg-type]
                stream=True,
            )
            text = "".join(ch.choices[0].delta.content or "" for ch in streamed if ch.choices)
        return done.choices[0].message.content, text

    content, text = await anyio.to_thread.run_sync(call)
    assert content == ANSWER
    assert text == ANSWER


async def test_options_pass_through_to_the_provider(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    openai_server.script("m1", Reply(text=ANSWER))
    async with client(gw) as c:
        await c.chat.completions.create(
            model="cascade",
            messages=[{"role": "developer", "content": "Be terse."}, *HI],  # type: ignore[list-item]
            max_completion_tokens=50,
            temperature=0.5,
            stop=["\n\n"],
            seed=7,
            n=1,
        )
    body = openai_server.requests[-1].body
    assert body["max_tokens"] == 50
    assert body["temperature"] == 0.5
    assert body["stop"] == ["\n\n"]
    assert body["seed"] == 7
    assert body["messages"][0] == {"role": "system", "content": "Be terse."}


async def test_response_format_json_schema_is_a_validator_of_every_tier(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    # tiers without validators of their own: the request's schema alone rejects tier 1
    config = {
        "tiers": [
            tier("small", provider("a", openai_server.url, "m1")),
            tier("big", provider("b", openai_server.url, "m2")),
        ]
    }
    openai_server.script("m1", Reply(text='{"answer": "forty-two"}'))
    openai_server.script("m2", Reply(text=ANSWER))
    schema = {
        "type": "object",
        "required": ["answer"],
        "properties": {"answer": {"type": "integer"}},
    }
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="cascade",
            messages=HI,
            response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        )
    assert raw.parse().choices[0].message.content == ANSWER
    assert raw.headers["x-cascade-tier"] == "2"
    sent = openai_server.requests[0].body["response_format"]
    assert sent["type"] == "json_schema"
    assert sent["json_schema"]["schema"] == schema


async def test_models_healthz_readyz(gw: Running) -> None:
    async with client(gw) as c:
        models = await c.models.list()
        assert [m.id for m in models.data] == ["cascade"]
        health = await c.get("/../healthz", cast_to=object)
        assert health == {"status": "ok"}
        ready = await c.get("/../readyz", cast_to=object)
        assert ready == {"status": "ready"}


def curl(*args: str) -> tuple[int, str]:
    proc = subprocess.run(
        ["curl", "-sS", "--max-time", "20", "-w", "\n%{http_code}", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body, _, status = proc.stdout.rpartition("\n")
    return int(status), body


async def test_curl_json_and_sse(gw: Running, openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(text=ANSWER), Reply(text=ANSWER, chunk_chars=4))
    request = {"model": "cascade", "messages": HI}
    url = f"{gw.base_url}/chat/completions"
    status, body = await anyio.to_thread.run_sync(
        lambda: curl(url, "-H", "Content-Type: application/json", "-d", json.dumps(request))
    )
    assert status == 200
    assert json.loads(body)["choices"][0]["message"]["content"] == ANSWER
    stream = json.dumps({**request, "stream": True})
    status, body = await anyio.to_thread.run_sync(lambda: curl("-N", url, "-d", stream))
    assert status == 200
    events = [line.removeprefix("data: ") for line in body.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == ANSWER
    assert chunks[-1]["cascade"]["attempts"] == 1


async def test_response_ids_are_random_and_no_seed_repeats_them(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    """128 random bits per id (as a uuid4's), from the gateway's own generator: an
    application's ``random.seed`` does not make two responses share an id."""
    openai_server.script("m1", Reply(text=ANSWER))
    ids = []
    async with client(gw) as c:
        for _ in range(3):
            random.seed(0)
            completion = await c.chat.completions.create(model="cascade", messages=HI)
            ids.append(completion.id)
    assert len(set(ids)) == 3
    assert all(re.fullmatch(r"chatcmpl-[0-9a-f]{32}", i) for i in ids), ids
