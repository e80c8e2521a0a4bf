"""``POST /v1/messages`` through the official ``anthropic`` SDK: the gateway in-process on
a free loopback port, in front of fake OpenAI- and Anthropic-format servers.

Sync clients run in a worker thread (``anyio.to_thread``), so the gateway's event loop
keeps serving while they wait.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import anyio
import pytest
from anthropic import Anthropic, AsyncAnthropic

from cascade.gateway import GatewayError
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply
from cascade.testing._hostile import DEEP_JSON

from .gateway import Running, serving, write_config
from .helpers import JSON_SCHEMA, provider, tier
from .leaks import eventually, in_use, open_on

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]
GOOD = '{"answer": 42}'
ONCE = {"retry": {"attempts": 1}}


def fleet(
    small_url: str,
    big_url: str,
    *,
    kind: str = "openai",
    stream: bool = False,
    gateway: dict[str, Any] | None = None,
    **top: Any,
) -> dict[str, Any]:
    """Two tiers (small: two providers, answers checked by a JSON Schema; big: one)."""
    common = {"kind": kind, "stream": stream, "idle_timeout_s": 2, **ONCE}
    return {
        "tiers": [
            tier(
                "small",
                provider("small-a", small_url, "small-a", **common),
                provider("small-b", small_url, "small-b", **common),
                validators=[JSON_SCHEMA],
            ),
            tier("big", provider("big-a", big_url, "big-a", **common)),
        ],
        "gateway": gateway,
        **top,
    }


@asynccontextmanager
async def gateway_for(
    tmp_path: Path, config: dict[str, Any], **kwargs: Any
) -> AsyncIterator[Running]:
    path = write_config(tmp_path / "cascade.toml", config)
    async with serving(path, environ={}, **kwargs) as running:
        yield running


def clients(running: Running, **kwargs: Any) -> tuple[AsyncAnthropic, Anthropic]:
    options: dict[str, Any] = {"base_url": running.url, "api_key": "sk-gw", "max_retries": 0}
    return AsyncAnthropic(**options | kwargs), Anthropic(**options | kwargs)


@pytest.fixture
async def oai() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def ant() -> AsyncIterator[FakeAnthropicServer]:
    async with FakeAnthropicServer() as server:
        yield server


# -- answers -------------------------------------------------------------------------------


async def test_create_async_and_sync_with_the_cascade_headers(
    tmp_path: Path, oai: FakeOpenAIServer, ant: FakeAnthropicServer
) -> None:
    # small answers prose (rejected by its schema) both times: big (Anthropic) answers.
    oai.script("small-a", "not json", "not json")
    ant.script("big-a", GOOD, GOOD)
    config = fleet(oai.url, oai.url)
    config["tiers"][1]["providers"][0] |= {"kind": "anthropic", "base_url": ant.url}
    async with gateway_for(tmp_path, config) as running:
        aclient, client = clients(running)
        async with aclient:
            raw = await aclient.messages.with_raw_response.create(
                model="cascade", max_tokens=64, messages=HI, system="Answer in JSON."
            )
            msg = await raw.parse()
        assert msg.content[0].type == "text"
        assert msg.content[0].text == GOOD
        assert msg.stop_reason == "end_turn"
        assert msg.role == "assistant"
        assert msg.id.startswith("msg_")
        assert msg.model == "big-a"
        assert msg.usage.input_tokens > 0
        assert msg.usage.output_tokens > 0
        headers = raw.headers
        assert headers["x-cascade-tier"] == "2"
        assert headers["x-cascade-model"] == "big-a"
        assert headers["x-cascade-escalations"] == "1"
        assert headers["x-cascade-attempts"] == "2"
        assert float(headers["x-cascade-cost-usd"]) > 0
        # The run's summary rides along as an extra field the SDK keeps.
        assert (msg.model_extra or {})["cascade"]["tier_name"] == "big"

        def sync_call() -> Any:
            with client:
                return client.messages.create(model="anything", max_tokens=64, messages=HI)

        sync = await anyio.to_thread.run_sync(sync_call)
        assert sync.content[0].text == GOOD
    # The system prompt reached the OpenAI-format tier as a system message.
    assert oai.requests[0].messages[0] == {"role": "system", "content": "Answer in JSON."}
    assert ant.requests[0].messages[0] == {"role": "system", "content": "Answer in JSON."}
    assert oai.requests[0].body["max_tokens"] == 64


async def test_stream_async_and_sync(tmp_path: Path, oai: FakeOpenAIServer) -> None:
    answer = '{"answer": 42, "why": "six times seven"}'
    oai.script(
        "small-a",
        Reply(text=answer, chunk_chars=5, finish_reason="length"),
        Reply(text=answer, chunk_chars=5),
    )
    async with gateway_for(tmp_path, fleet(oai.url, oai.url, stream=True)) as running:
        aclient, client = clients(running)
        async with aclient:
            async with aclient.messages.stream(model="cascade", max_tokens=64, messages=HI) as s:
                pieces = [text async for text in s.text_stream]
                final = await s.get_final_message()
            assert "".join(pieces) == answer
            assert final.content[0].type == "text"
            assert final.content[0].text == answer
            assert final.stop_reason == "max_tokens"
            assert final.usage.input_tokens > 0
            assert final.usage.output_tokens > 0
            assert final.model == "small-a"

            # stream=True: the raw events, in Anthropic's order, and the headers.
            raw = await aclient.messages.with_raw_response.create(
                model="cascade", max_tokens=64, messages=HI, stream=True
            )
            assert raw.headers["content-type"].startswith("text/event-stream")
            assert raw.headers["x-cascade-tier"] == "1"
            assert raw.headers["x-cascade-model"] == "small-a"
            kinds = [event.type async for event in await raw.parse()]
        assert kinds[:3] == ["message_start", "content_block_start", "content_block_delta"]
        assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]

        def sync_stream() -> tuple[str, str | None]:
            with client, client.messages.stream(model="cascade", max_tokens=64, messages=HI) as s:
                text = "".join(s.text_stream)
                return text, s.get_final_message().stop_reason

        assert await anyio.to_thread.run_sync(sync_stream) == (answer, "end_turn")


async def test_an_output_format_is_a_validator_of_every_tier(
    tmp_path: Path, oai: FakeOpenAIServer
) -> None:
    # Both small answers pass the tier's schema but not the request's: big answers.
    oai.script("small-a", '{"answer": 1}')
    oai.script("small-b", '{"answer": 2}')
    oai.script("big-a", '{"answer": 3, "unit": "apples"}')
    schema = {"type": "object", "required": ["unit"]}
    async with gateway_for(tmp_path, fleet(oai.url, oai.url)) as running:
        aclient, _ = clients(running)
        async with aclient:
            msg = await aclient.messages.create(
                model="cascade",
                max_tokens=64,
                messages=HI,
                output_config={"format": {"type": "json_schema", "schema": schema}},
            )
    assert msg.content[0].type == "text"
    assert msg.content[0].text == '{"answer": 3, "unit": "apples"}'
    assert oai.requests[-1].body["response_format"]["type"] == "json_schema"


# -- errors --------------------------------------------------------------------------------


class _KeyGate:
    """Admits only the key ``good`` (the gate protocol; ``_keys.py`` is the real one)."""

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def admit(self, headers: Mapping[str, str], **_: Any) -> None:
        # The SDK sends api_key as x-api-key, or (2.x) as Authorization: Bearer.
        if "good" not in (headers.get("x-api-key"), headers.get("Authorization", "")[7:]):
            raise GatewayError(401, "invalid gateway key", code="invalid_api_key")

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        return None


async def test_errors_are_the_sdks_typed_exceptions(tmp_path: Path, oai: FakeOpenAIServer) -> None:
    oai.default = Reply(text=GOOD)
    config = fleet(
        oai.url,
        oai.url,
        gateway={"max_body_bytes": 4096, "routes": [{"name": "cascade"}]},
    )
    async with gateway_for(tmp_path, config, gate=_KeyGate()) as running:
        aclient, client = clients(running, api_key="good")
        async with aclient:
            image = {"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}
            messages = [
                *HI,
                {"role": "assistant", "content": "?"},
                {"role": "user", "content": [image]},
            ]
            with pytest.raises(anthropic.BadRequestError) as bad:
                await aclient.messages.create(model="cascade", max_tokens=64, messages=messages)  # type: ignore[arg-type]
            assert bad.value.status_code == 400
            assert bad.value.type == "invalid_request_error"
            assert "messages[2].content[0].type" in bad.value.message

            with pytest.raises(anthropic.BadRequestError) as missing:
                await aclient.post(
                    "/v1/messages", cast_to=object, body={"model": "cascade", "messages": HI}
                )
            assert "max_tokens" in missing.value.message

            with pytest.raises(anthropic.NotFoundError) as unknown:
                await aclient.messages.create(model="gpt-9", max_tokens=64, messages=HI)
            assert unknown.value.type == "not_found_error"

            big = [{"role": "user", "content": "x" * 8192}]
            with pytest.raises(anthropic.APIStatusError) as too_large:
                await aclient.messages.create(model="cascade", max_tokens=64, messages=big)  # type: ignore[arg-type]
            assert too_large.value.status_code == 413
            assert too_large.value.type == "request_too_large"  # type: ignore[comparison-overlap]

            async with AsyncAnthropic(base_url=running.url, api_key="bad", max_retries=0) as wrong:
                with pytest.raises(anthropic.AuthenticationError) as denied:
                    await wrong.messages.create(model="cascade", max_tokens=64, messages=HI)
            assert denied.value.type == "authentication_error"

        def sync_denied() -> anthropic.APIStatusError:
            with Anthropic(base_url=running.url, api_key="bad", max_retries=0) as wrong:
                try:
                    wrong.messages.create(model="cascade", max_tokens=64, messages=HI)
                except anthropic.APIStatusError as exc:
                    return exc
            raise AssertionError("no error")

        assert isinstance(
            await anyio.to_thread.run_sync(sync_denied), anthropic.AuthenticationError
        )
        client.close()
    assert oai.request_count == 0  # nothing refused reached a provider


async def test_upstream_failures_are_429_502_and_504(tmp_path: Path, oai: FakeOpenAIServer) -> None:
    config = fleet(
        oai.url,
        oai.url,
        gateway={"routes": [{"name": "cascade"}, {"name": "quick", "deadline_s": 0.3}]},
    )
    async with gateway_for(tmp_path, config) as running:
        aclient, _ = clients(running)
        async with aclient:
            oai.default = Reply(status=429, retry_after_s=2)
            with pytest.raises(anthropic.RateLimitError) as limited:
                await aclient.messages.create(model="cascade", max_tokens=64, messages=HI)
            assert limited.value.type == "rate_limit_error"
            assert limited.value.response.headers["retry-after"] == "2"

            oai.default = Reply(status=500)
            with pytest.raises(anthropic.InternalServerError) as failed:
                await aclient.messages.create(model="cascade", max_tokens=64, messages=HI)
            assert failed.value.status_code == 502
            assert failed.value.type == "api_error"
            # Streamed, a run that fails before any text is the same error status.
            with pytest.raises(anthropic.InternalServerError) as failed_stream:
                async with aclient.messages.stream(
                    model="cascade", max_tokens=64, messages=HI
                ) as s:
                    await s.get_final_message()
            assert failed_stream.value.status_code == 502

            oai.default = Reply(fault="hang")
            with pytest.raises(anthropic.InternalServerError) as late:
                await aclient.messages.create(model="quick", max_tokens=64, messages=HI)
            assert late.value.status_code == 504
            assert late.value.type == "timeout_error"


# -- broken streams --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_stream_broken_upstream_is_the_next_providers_whole_answer(
    tmp_path: Path, oai: FakeOpenAIServer, ant: FakeAnthropicServer, kind: str
) -> None:
    server: FakeOpenAIServer | FakeAnthropicServer = oai if kind == "openai" else ant
    answer = '{"answer": 42, "note": "from the second provider"}'
    server.script(
        "small-a", Reply(text='{"answer": 41, "note": "cut off', fault="drop", chunk_chars=4)
    )
    server.script("small-b", Reply(text=answer, chunk_chars=4))
    async with gateway_for(
        tmp_path, fleet(server.url, server.url, kind=kind, stream=True)
    ) as running:
        aclient, _ = clients(running)
        async with (
            aclient,
            aclient.messages.stream(model="cascade", max_tokens=64, messages=HI) as s,
        ):
            text = "".join([piece async for piece in s.text_stream])
            final = await s.get_final_message()
    assert text == answer
    assert final.content[0].type == "text"
    assert final.content[0].text == answer
    assert final.stop_reason == "end_turn"


async def test_speculative_text_withdrawn_is_an_error_event_the_sdk_raises(
    tmp_path: Path, oai: FakeOpenAIServer
) -> None:
    oai.script(
        "small-a",
        Reply(text='{"answer": 41, "note": "cut off', fault="drop", chunk_chars=4),
        Reply(text=GOOD, chunk_chars=3),
        Reply(text='{"answer": 4', fault="error_event", status=529, chunk_chars=3),
    )
    oai.script("small-b", Reply(text=GOOD))
    routes = [{"name": "cascade", "mode": "speculative"}]
    config = fleet(oai.url, oai.url, stream=True, gateway={"routes": routes})
    async with gateway_for(tmp_path, config) as running:
        aclient, client = clients(running)
        shown: list[str] = []
        async with aclient:

            async def read() -> None:
                async with aclient.messages.stream(
                    model="cascade", max_tokens=64, messages=HI
                ) as s:
                    async for piece in s.text_stream:
                        shown.append(piece)

            with pytest.raises(anthropic.APIStatusError) as broken:
                await read()
            assert shown  # text had been sent when the answer was withdrawn
            assert broken.value.type == "api_error"
            assert "withdrawn" in broken.value.message

            # A speculative answer that is not withdrawn streams as usual.
            async with aclient.messages.stream(model="cascade", max_tokens=64, messages=HI) as s:
                assert await s.get_final_text() == GOOD

        # An in-stream error upstream after the first text: an error event once that text
        # was written; when it came before the gateway had written it (it writes the
        # events that are ready together, in one write), the client saw nothing of it and
        # gets the next provider's whole answer. Never the cut answer read as a success.
        def sync_broken() -> BaseException | str:
            try:
                with (
                    client,
                    client.messages.stream(model="cascade", max_tokens=64, messages=HI) as s,
                ):
                    text = "".join(s.text_stream)
                    final = s.get_final_message()
            except anthropic.APIStatusError as exc:
                return exc
            assert final.content[0].type == "text"
            assert final.content[0].text == text
            return text

        outcome = await anyio.to_thread.run_sync(sync_broken)
        if isinstance(outcome, str):
            assert outcome == GOOD  # small-b's answer, nothing of the withdrawn one
        else:
            assert isinstance(outcome, anthropic.APIStatusError)
            assert outcome.type == "api_error"


async def test_hostile_bodies_are_400s_in_anthropics_format(
    tmp_path: Path, oai: FakeOpenAIServer
) -> None:
    oai.default = Reply(text=GOOD)
    config = fleet(oai.url, oai.url, gateway={"max_messages": 8})
    many = {"model": "cascade", "max_tokens": 8, "messages": [HI[0]] * 9}
    bad_schema = {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}}
    async with (
        gateway_for(tmp_path, config) as running,
        aiohttp.ClientSession() as session,
    ):
        for raw, field in (
            (DEEP_JSON, ""),
            (b"\xff\xfe{", ""),
            (b'{"model": "cascade", "max_tokens": 8, "messages": [' + b"[" * 5000, ""),
            (json.dumps(many).encode(), "messages"),
            (
                json.dumps({**many, "messages": HI, "output_config": bad_schema}).encode(),
                ("output_config.format.schema"),
            ),
        ):
            async with session.post(
                f"{running.url}/v1/messages",
                data=raw,
                headers={"Content-Type": "application/json", "anthropic-version": "2023-06-01"},
            ) as response:
                assert response.status == 400, raw[:80]
                error = (await response.json())["error"]
                assert error["type"] == "invalid_request_error"
                assert error["message"].startswith(field), error
    assert oai.request_count == 0


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_a_client_that_leaves_cancels_the_upstream_call(
    tmp_path: Path, oai: FakeOpenAIServer, mode: str
) -> None:
    oai.script("small-a", Reply(text="word " * 400, chunk_chars=5, chunk_delay_s=0.02))
    routes = [{"name": "cascade", "mode": mode}]
    config = fleet(oai.url, oai.url, stream=True, gateway={"routes": routes})
    config["tiers"][0]["validators"] = []
    async with gateway_for(tmp_path, config) as running:
        cascade = running.gateway.generation.cascades[0]
        aclient, _ = clients(running)
        async with aclient:
            if mode == "speculative":
                async with aclient.messages.stream(
                    model="cascade", max_tokens=64, messages=HI
                ) as s:
                    async for _text in s.text_stream:
                        break  # text is flowing: leave
            else:
                # buffered: nothing is sent before acceptance; the client gives up waiting
                call = asyncio.create_task(
                    aclient.messages.create(
                        model="cascade", max_tokens=64, messages=HI, stream=True
                    )
                )
                await eventually(lambda: oai.active_requests == 1, "upstream call")
                call.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await call
        await eventually(lambda: open_on([oai]) == 0, "upstream connections closed")
        await eventually(lambda: running.gateway.in_flight == 0, "the request over")
        assert in_use(cascade) == 0
    assert oai.disconnects >= 1
    assert oai.request_count == 1  # cancelled, not failed over
