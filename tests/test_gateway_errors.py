"""Every error status of the gateway, in the OpenAI error format, through the SDK where
the SDK can send the request and raw HTTP where it cannot (broken bodies, wrong methods)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from cascade import AllProvidersFailed, Attempt
from cascade.engine import Event
from cascade.gateway import GatewayError, build_gateway, create_app, load_gateway
from cascade.gateway._errors import from_run_error
from cascade.gateway._openai_wire import OpenAIWire
from cascade.gateway._wire import GatewayRequest, RunInfo
from cascade.resilience.quality import QUALITY_OPEN
from cascade.testing import FakeAnthropicServer, FakeClock, FakeOpenAIServer, Reply

from .gateway import Running, serving, write_config
from .helpers import provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]


def one_tier(url: str, **extra: Any) -> dict[str, Any]:
    return {"tiers": [tier("t", provider("a", url, "m1"))], **extra}


def exhausting(url: str) -> dict[str, Any]:
    """One tier whose answers must be a JSON object, and no fallback to a rejected one."""
    schema = {"name": "json_schema", "schema": {"type": "object"}}
    tiers = [tier("t", provider("a", url, "m1"), validators=[schema])]
    return {"on_exhausted": "error", "tiers": tiers}


@pytest.fixture
async def gw(openai_server: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Running]:
    config = one_tier(openai_server.url, gateway={"max_body_bytes": 4096, "max_messages": 8})
    async with serving(write_config(tmp_path / "c.toml", config)) as g:
        yield g


def client(gw: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0)


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict)  # the SDK hands over the "error" object
    assert set(body) == {"message", "type", "param", "code"}
    return body


async def post_raw(gw: Running, data: bytes, *, method: str = "POST") -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, f"{gw.base_url}/chat/completions", data=data) as response,
    ):
        return response.status, await response.json(), response.headers


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content[0]",
        ),
        ({"messages": HI * 9}, "messages"),
        ({"temperature": 3}, "temperature"),
        ({"n": 2}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["x"] * 17}, "stop"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"stream": "yes"}, "stream"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type"),
    ],
)
async def test_400_names_the_field(gw: Running, extra: dict[str, Any], param: str) -> None:
    request = {"model": "cascade", "messages": HI, **extra}
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as caught:
            await c.post("/chat/completions", body=request, cast_to=object)
    assert caught.value.status_code == 400
    error = error_of(caught.value)
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"


async def test_400_for_bodies_that_are_not_json_or_too_deep(gw: Running) -> None:
    status, body, _ = await post_raw(gw, b"{not json")
    assert status == 400
    assert body["error"]["code"] == "invalid_json"
    status, body, _ = await post_raw(gw, b"[" * 2000 + b"]" * 2000)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"


async def test_400_for_a_schema_too_deep_or_too_big(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = one_tier(openai_server.url, gateway={"max_schema_depth": 8, "max_schema_bytes": 1024})
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(10):
        deep = {"type": "object", "properties": {"a": deep}}
    big = {"type": "object", "description": "x" * 2000}
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        for schema, words in ((deep, "nested deeper"), (big, "bytes as JSON")):
            with pytest.raises(openai.BadRequestError) as caught:
                await c.chat.completions.create(
                    model="cascade",
                    messages=HI,  # type: ignore[arg-type]
                    response_format={
                        "type": "json_schema",
                        "json_schema": {"name": "s", "schema": schema},
                    },
                )
            error = error_of(caught.value)
            assert error["param"] == "response_format.json_schema.schema"
            assert words in error["message"]
    assert openai_server.request_count == 0


class KeyGate:
    """A gate asking for one key (the keyed gate proper is ``_keys.py``'s)."""

    def __init__(self) -> None:
        self.settled: list[tuple[int, float]] = []

    async def open(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    async def admit(self, headers: Mapping[str, str], **estimates: Any) -> str:
        if headers.get("Authorization") != "Bearer right":
            raise GatewayError(401, "invalid API key", code="invalid_api_key")
        return "right"

    async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None:
        self.settled.append((tokens, cost_usd))


async def test_401_from_the_gate_and_no_provider_call(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    gate = KeyGate()
    openai_server.script("m1", Reply(text="ok", input_tokens=3, output_tokens=2))
    async with serving(
        write_config(tmp_path / "c.toml", one_tier(openai_server.url)), gate=gate
    ) as g:
        async with openai.AsyncOpenAI(base_url=g.base_url, api_key="wrong", max_retries=0) as c:
            with pytest.raises(openai.AuthenticationError) as caught:
                await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        assert error_of(caught.value)["code"] == "invalid_api_key"
        assert openai_server.request_count == 0
        async with openai.AsyncOpenAI(base_url=g.base_url, api_key="right", max_retries=0) as c:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert gate.settled == [(5, pytest.approx(3e-6 + 4e-6))]


async def test_404_unknown_model_and_unknown_path(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = one_tier(openai_server.url, gateway={"routes": [{"name": "smart"}]})
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        with pytest.raises(openai.NotFoundError) as caught:
            await c.chat.completions.create(model="gpt-4o", messages=HI)  # type: ignore[arg-type]
        error = error_of(caught.value)
        assert (error["code"], error["param"]) == ("model_not_found", "model")
        with pytest.raises(openai.NotFoundError) as caught:
            await c.models.retrieve("gpt-4o")
        assert error_of(caught.value)["code"] == "model_not_found"
        with pytest.raises(openai.NotFoundError) as caught:
            await c.post("/nowhere", body={}, cast_to=object)
        assert error_of(caught.value)["type"] == "not_found_error"
    assert openai_server.request_count == 0


async def test_405_wrong_method(gw: Running) -> None:
    status, body, headers = await post_raw(gw, b"", method="GET")
    assert status == 405
    assert body["error"]["type"] == "invalid_request_error"
    assert "POST" in headers["Allow"]


async def test_413_body_too_large(gw: Running, openai_server: FakeOpenAIServer) -> None:
    async with client(gw) as c:
        with pytest.raises(openai.APIStatusError) as caught:
            await c.chat.completions.create(
                model="cascade",
                messages=[{"role": "user", "content": "x" * 5000}],
            )
    assert caught.value.status_code == 413
    assert error_of(caught.value)["code"] == "body_too_large"

    # a chunked body (no Content-Length) is cut off at the limit too
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b" " * 1000

    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.base_url}/chat/completions", data=chunks()) as response,
    ):
        assert response.status == 413
    assert openai_server.request_count == 0


async def test_429_when_every_provider_is_rate_limited(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    openai_server.script("m1", Reply(status=429, retry_after_s=7))
    async with client(gw) as c:
        with pytest.raises(openai.RateLimitError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert caught.value.response.headers["Retry-After"] == "7"
    assert error_of(caught.value)["code"] == "upstream_rate_limited"


async def test_429_over_max_in_flight(openai_server: FakeOpenAIServer, tmp_path: Path) -> None:
    openai_server.script("m1", Reply(fault="hang"))
    config = one_tier(openai_server.url, gateway={"max_in_flight": 1})
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        first = asyncio.create_task(c.chat.completions.create(model="cascade", messages=HI))  # type: ignore[arg-type]
        await eventually(lambda: g.gateway.in_flight == 1, "the first request in flight")
        with pytest.raises(openai.RateLimitError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        assert caught.value.response.headers["Retry-After"] == "1"
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        await eventually(lambda: g.gateway.in_flight == 0, "the first request let go")


async def test_502_when_every_provider_fails(gw: Running, openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(status=500))
    async with client(gw) as c:
        with pytest.raises(openai.InternalServerError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        assert caught.value.status_code == 502
        assert error_of(caught.value)["code"] == "all_providers_failed"
        openai_server.script("m1", Reply(status=500))
        # streamed and buffered: nothing was sent yet, so the status is the error's too
        with pytest.raises(openai.InternalServerError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI, stream=True)  # type: ignore[arg-type]
        assert caught.value.status_code == 502


@pytest.mark.parametrize("status", [400, 422])
async def test_400_when_every_provider_refuses_the_request_as_written(
    gw: Running, openai_server: FakeOpenAIServer, status: int
) -> None:
    """A request no provider takes as written (a seed past 64 bits, say) is the client's
    to fix: a 400 quoting the last refusal, not a 502 outage."""
    openai_server.script("m1", Reply(status=status, error_message="seed: integer too large"))
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 400
    error = error_of(caught.value)
    assert error["code"] == "upstream_invalid_request"
    assert "seed: integer too large" in error["message"]


async def test_502_when_the_providers_refuse_for_other_reasons(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A provider's 401 (the operator's key) or a mix of 400 and 5xx is not the client's
    request: 502."""
    config = {
        "tiers": [
            tier("t1", provider("a", openai_server.url, "m1")),
            tier("t2", provider("b", openai_server.url, "m2")),
        ]
    }
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        for first, second in ((400, 500), (401, 401)):
            openai_server.script("m1", Reply(status=first))
            openai_server.script("m2", Reply(status=second))
            with pytest.raises(openai.InternalServerError) as caught:
                await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
            assert caught.value.status_code == 502
            assert error_of(caught.value)["code"] == "all_providers_failed"


async def test_502_when_the_400_is_the_operators_account(
    anthropic_server: FakeAnthropicServer, tmp_path: Path
) -> None:
    """Anthropic refuses with a 400 ``invalid_request_error`` when the operator's credit
    runs out: every request fails so, and none is the client's to fix. An outage (502),
    not a 400 the client would not retry and no 5xx alert would see."""
    broke = (
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits."
    )
    config = one_tier(anthropic_server.url)
    config["tiers"][0]["providers"][0]["kind"] = "anthropic"
    anthropic_server.script("m1", Reply(status=400, error_message=broke))
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        with pytest.raises(openai.InternalServerError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    assert error_of(caught.value)["code"] == "all_providers_failed"


def test_502_when_a_tier_refused_with_400_and_another_was_not_tried() -> None:
    """A tier skipped (its quality breaker open) never saw the request: "every provider
    refused it" does not hold, and the skip is passing (a retry may be served), so a 400
    the client must not retry would be wrong: 502, as before."""
    skipped = Attempt(
        tier=1,
        tier_name="t1",
        provider="a",
        model="m1",
        outcome="skipped",
        error_type=QUALITY_OPEN,
        error="quality breaker open; next probe in 30s",
    )
    refused = Attempt(
        tier=2,
        tier_name="t2",
        provider="b",
        model="m2",
        outcome="failed",
        error_type="ContextLengthExceeded",
        error="b (m2): HTTP 400: prompt is too long",
        status=400,
    )
    error = from_run_error(AllProvidersFailed("every provider failed", attempts=[skipped, refused]))
    assert (error.status, error.code) == (502, "all_providers_failed")
    alone = from_run_error(AllProvidersFailed("every provider failed", attempts=[refused]))
    assert (alone.status, alone.code) == (400, "upstream_invalid_request")


async def test_502_when_no_answer_passes_and_on_exhausted_is_error(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = exhausting(openai_server.url)
    openai_server.script("m1", Reply(text="not json"))
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        with pytest.raises(openai.InternalServerError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 502
    assert error_of(caught.value)["code"] == "cascade_exhausted"


async def test_504_at_the_deadline(openai_server: FakeOpenAIServer, tmp_path: Path) -> None:
    clock = FakeClock()
    openai_server.script("m1", Reply(fault="hang"))
    config = one_tier(openai_server.url, gateway={"max_deadline_s": 5})
    async with serving(write_config(tmp_path / "c.toml", config), clock=clock) as g, client(g) as c:
        call = asyncio.create_task(c.chat.completions.create(model="cascade", messages=HI))  # type: ignore[arg-type]
        await eventually(lambda: openai_server.active_requests == 1, "the call under way")
        clock.advance(5)  # the gateway's cap on any request's deadline
        with pytest.raises(openai.APIStatusError) as caught:
            await call
    assert caught.value.status_code == 504
    assert error_of(caught.value)["code"] == "deadline_exceeded"


class BrokenGate(KeyGate):
    async def admit(self, headers: Mapping[str, str], **estimates: Any) -> str:
        raise RuntimeError("a bug with a secret in it: sk-live-123")


async def test_a_bug_is_a_500_without_a_traceback(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    path = write_config(tmp_path / "c.toml", one_tier(openai_server.url))
    with capture_logs() as logs:
        async with serving(path, gate=BrokenGate()) as g, client(g) as c:
            with pytest.raises(openai.InternalServerError) as caught:
                await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert caught.value.status_code == 500
    error = error_of(caught.value)
    assert error["code"] == "internal_error"
    assert "sk-live" not in caught.value.response.text
    assert "Traceback" not in caught.value.response.text
    assert any(log["event"] == "gateway.internal_error" for log in logs)


async def test_408_for_a_body_that_never_arrives(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = one_tier(openai_server.url, gateway={"body_timeout_s": 0.2})
    async with serving(write_config(tmp_path / "c.toml", config)) as g:
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{"
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        writer.close()
        await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 408")
    assert g.gateway.in_flight == 0


async def test_readyz_is_503_once_every_breaker_is_open(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    config = {
        "tiers": [
            tier(
                "t",
                provider(
                    "a", openai_server.url, "m1", breaker={"fail_max": 1, "reset_timeout_s": 600}
                ),
            )
        ]
    }
    openai_server.script("m1", Reply(status=500))
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        assert await c.get("/../readyz", cast_to=object) == {"status": "ready"}
        with pytest.raises(openai.InternalServerError):
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        with pytest.raises(openai.APIStatusError) as caught:
            await c.get("/../readyz", cast_to=object)
        assert caught.value.status_code == 503
        assert await c.get("/../healthz", cast_to=object) == {"status": "ok"}


class _BreaksAfterItsFirstChunk(OpenAIWire):
    """The OpenAI format with a bug of the gateway's own once the stream has begun."""

    async def sse(
        self, events: AsyncIterator[Event], request: GatewayRequest, info: RunInfo
    ) -> AsyncGenerator[bytes, None]:
        async with aclosing(super().sse(events, request, info)) as chunks:
            sent = 0
            async for data in chunks:
                if sent == 2:  # the first were written (the upstream paces its deltas)
                    raise RuntimeError("a bug after the status line was sent")
                yield data
                sent += 1


async def test_a_failure_after_the_status_line_ends_the_stream_never_a_second_response(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.default = Reply(
        text="Hello there, a long enough answer.", chunk_chars=4, chunk_delay_s=0.02
    )
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1", stream=True))],
        "gateway": {"routes": [{"name": "cascade", "default": True, "mode": "speculative"}]},
    }
    gateway = build_gateway(load_gateway(write_config(tmp_path / "c.toml", config)))
    runner = web.AppRunner(
        create_app(gateway, wires=[_BreaksAfterItsFirstChunk()]), handler_cancellation=True
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = (
            b'{"model": "cascade", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}'
        )
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        with capture_logs():
            raw = await asyncio.wait_for(reader.read(), 10)  # to the end: the server closes
        writer.close()
        await writer.wait_closed()
    finally:
        await runner.cleanup()
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert raw.count(b"HTTP/1.1 ") == 1  # one response on the connection, not a 500 after it
    assert b'"code":"internal_error"' in raw
    assert b"data: [DONE]" not in raw


def test_a_header_value_never_carries_a_line_break() -> None:
    from cascade.gateway._respond import header_value

    assert header_value("small\r\nX-Injected: 1") == "small%0D%0AX-Injected: 1"
    assert header_value("gpt-4o") == "gpt-4o"


async def test_a_502_a_retry_cannot_mend_tells_the_sdks_not_to_retry(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Every tier's answer rejected (``on_exhausted = "error"``): the SDKs retry a 502 twice
    by default, running the whole cascade again each time at its full price, for the same
    rejections. ``x-should-retry: false``, which they obey, keeps it to one run."""
    config = exhausting(openai_server.url)
    openai_server.script("m1", Reply(text="not json"))
    async with serving(write_config(tmp_path / "c.toml", config)) as g:
        sdk = openai.AsyncOpenAI(base_url=g.base_url, api_key="k")  # the SDK's own retries
        async with sdk:
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert error_of(caught.value)["code"] == "cascade_exhausted"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert openai_server.request_count == 1


async def test_a_502_over_the_budget_tells_the_sdks_not_to_retry(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """No tier fits the run's ``max_cost_usd``: the same request meets the same budget."""
    config = one_tier(openai_server.url, max_cost_usd=1e-12)
    async with serving(write_config(tmp_path / "c.toml", config)) as g, client(g) as c:
        with pytest.raises(openai.InternalServerError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert error_of(caught.value)["code"] == "budget_exceeded"
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert openai_server.request_count == 0


async def test_a_502_of_an_outage_may_be_retried(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Every provider failing is an outage a retry may outlast: the SDKs' own rule."""
    openai_server.script("m1", Reply(status=500))
    path = write_config(tmp_path / "c.toml", one_tier(openai_server.url))
    async with serving(path) as g, client(g) as c:
        with pytest.raises(openai.InternalServerError) as caught:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert error_of(caught.value)["code"] == "all_providers_failed"
    assert "x-should-retry" not in caught.value.response.headers
