"""A run leaves no reference cycle behind, answered or failed: what it made goes as the
caller drops it, not at a garbage collection (under load, collections of cycles that
hold frames, tracebacks and whole runs cost every request in the process).

Providers fail here by answering 500 or timing out. A refused connection is left out: on
Python 3.11, asyncio's ``sock_connect`` makes a cycle of its own through the error's
traceback, and the frames it holds reach back up to the run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cascade import Cascade, CascadeError, Failed
from cascade.testing import FakeOpenAIServer, Reply

from .gateway import serving, write_config
from .helpers import JSON_SCHEMA, USER, provider, tier
from .leaks import cycles_after

pytestmark = pytest.mark.anyio


def configs(url: str) -> dict[str, dict[str, Any]]:
    return {
        "answered": {"tiers": [tier("t", provider("a", url, "ok"))]},
        "failed over": {"tiers": [tier("t", provider("a", url, "500"), provider("b", url, "ok"))]},
        "every provider failed": {
            "tiers": [tier("t", provider("a", url, "500")), tier("u", provider("b", url, "500"))]
        },
        "rejected, exhausted": {
            "tiers": [tier("t", provider("a", url, "prose"), validators=[JSON_SCHEMA])]
        },
        "escalated": {
            "tiers": [
                tier("t", provider("a", url, "prose"), validators=[JSON_SCHEMA]),
                tier("u", provider("b", url, "ok")),
            ]
        },
    }


async def one(c: Cascade, how: str) -> None:
    try:
        if how == "run":
            await c.run(messages=USER)
        else:
            async with c.stream(messages=USER) as events:
                async for _ in events:
                    pass
    except CascadeError:
        pass


@pytest.mark.parametrize("traced", [False, True])
@pytest.mark.parametrize("how", ["run", "stream"])
@pytest.mark.parametrize(
    "case",
    ["answered", "failed over", "every provider failed", "rejected, exhausted", "escalated"],
)
async def test_a_run_leaves_no_cycle(
    openai_server: FakeOpenAIServer, case: str, how: str, traced: bool
) -> None:
    openai_server.default = '{"answer": 42}'
    openai_server.script("500", *[Reply(status=500)] * 50)
    openai_server.script("prose", *[Reply(text="not json")] * 50)
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    extra: dict[str, Any] = {"tracer_provider": tracing} if traced else {}
    async with Cascade.from_dict(configs(openai_server.url)[case], environ={}, **extra) as c:
        found = await cycles_after(lambda: one(c, how))
    assert found == 0
    assert bool(exporter.get_finished_spans()) is traced


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", ["answered", "every provider failed", "escalated"])
async def test_a_gateway_request_leaves_no_cycle(
    openai_server: FakeOpenAIServer, tmp_path: Path, case: str, stream: bool
) -> None:
    """The same through ``cascade serve``'s app (JSON and SSE; a 502 included)."""
    openai_server.default = '{"answer": 42}'
    openai_server.script("500", *[Reply(status=500)] * 50)
    openai_server.script("prose", *[Reply(text="not json")] * 50)
    path = write_config(tmp_path / "c.toml", configs(openai_server.url)[case])
    body = {"model": "cascade", "messages": USER, "stream": stream}
    async with serving(path, environ={}) as g, aiohttp.ClientSession() as http:

        async def one() -> None:
            async with http.post(f"{g.base_url}/chat/completions", json=body) as resp:
                await resp.read()

        found = await cycles_after(one)
    assert found == 0


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
@pytest.mark.parametrize("how", ["run", "stream"])
async def test_a_surfaced_error_leaves_no_cycle(
    openai_server: FakeOpenAIServer, how: str, mode: str
) -> None:
    """A streamed call's 400, surfaced (``on_error.status_4xx = "surface"``): the
    RequestRejected, read from a stream in either mode or raised by ``run()``."""
    openai_server.script("400", *[Reply(status=400)] * 50)
    surfaced = {"on_error": {"status_4xx": "surface"}}
    config = {"tiers": [tier("t", provider("a", openai_server.url, "400", stream=True,
                                          retry=surfaced))]}  # fmt: skip
    seen: list[str] = []

    async def one(c: Cascade) -> None:
        try:
            if how == "run":
                await c.run(messages=USER)
                return
            async with c.stream(messages=USER, mode=mode) as events:  # type: ignore[arg-type]
                async for event in events:
                    if isinstance(event, Failed):
                        seen.append(type(event.error).__name__)
        except CascadeError as exc:
            seen.append(type(exc).__name__)

    async with Cascade.from_dict(config, environ={}) as c:
        found = await cycles_after(lambda: one(c))
    assert set(seen) == {"RequestRejected"}
    assert found == 0
