"""Operating the gateway: named routes, tracing continued from the caller, the access log,
config errors of ``cascade serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from structlog.testing import capture_logs

from cascade._cli import main
from cascade.testing import FakeOpenAIServer, Reply

from .gateway import serving, write_config
from .helpers import JSON_SCHEMA, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
SECRET_PROMPT = "my secret prompt text"
HI = [{"role": "user", "content": SECRET_PROMPT}]


def routed(url: str) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("a", url, "m1"), validators=[JSON_SCHEMA]),
            tier("big", provider("b", url, "m2"), validators=[JSON_SCHEMA]),
        ],
        "gateway": {
            "routes": [
                {"name": "smart", "default": True},
                {"name": "cheap", "models": ["gpt-4o-mini"], "max_tier": "small"},
                {"name": "premium", "start_tier": 2},
                {"name": "coder", "config": "coder.toml", "mode": "speculative"},
            ]
        },
    }


async def test_named_routes_tier_ranges_own_config_and_default(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    write_config(
        tmp_path / "coder.toml", {"tiers": [tier("code", provider("c", openai_server.url, "m3"))]}
    )
    openai_server.default = Reply(text="not json")
    openai_server.script("m2", *[Reply(text=ANSWER)] * 3)
    openai_server.script("m3", Reply(text="def f(): pass"))
    path = write_config(tmp_path / "main.toml", routed(openai_server.url))
    async with (
        serving(path) as g,
        openai.AsyncOpenAI(base_url=g.base_url, api_key="k", max_retries=0) as c,
    ):
        models = [m.id for m in (await c.models.list()).data]
        assert models == ["smart", "cheap", "gpt-4o-mini", "premium", "coder"]
        assert (await c.models.retrieve("gpt-4o-mini")).id == "gpt-4o-mini"
        assert (await c.models.retrieve("unlisted")).id == "unlisted"  # the default route

        async def ask(model: str) -> tuple[str | None, dict[str, str]]:
            raw = await c.chat.completions.with_raw_response.create(model=model, messages=HI)  # type: ignore[arg-type]
            return raw.parse().choices[0].message.content, dict(raw.headers)

        text, headers = await ask("gpt-4o-mini")  # cheap: tier 1 only, best answer kept
        assert (text, headers["x-cascade-route"], headers["x-cascade-tier"]) == (
            "not json",
            "cheap",
            "1",
        )
        assert headers["x-cascade-validated"] == "false"
        text, headers = await ask("premium")  # starts at tier 2
        assert (text, headers["x-cascade-attempts"]) == (ANSWER, "1")
        text, headers = await ask("anything-else")  # the default route: both tiers
        assert (text, headers["x-cascade-route"], headers["x-cascade-escalations"]) == (
            ANSWER,
            "smart",
            "1",
        )
        text, headers = await ask("coder")  # a cascade of its own
        assert (text, headers["x-cascade-model"]) == ("def f(): pass", "m3")
    assert len(g.gateway.generation.cascades) == 2


async def test_traceparent_is_continued_by_a_server_span_parent_of_the_run(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    openai_server.script("m1", Reply(text=ANSWER))
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    parent_id = "b7ad6b7169203331"
    path = write_config(
        tmp_path / "c.toml", {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    )
    async with (
        serving(path, tracer_provider=tracer_provider) as g,
        openai.AsyncOpenAI(base_url=g.base_url, api_key="k", max_retries=0) as c,
    ):
        raw = await c.chat.completions.with_raw_response.create(
            model="cascade",
            messages=HI,  # type: ignore[arg-type]
            extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
    assert raw.headers["x-cascade-trace-id"] == trace_id
    assert (raw.parse().model_extra or {})["cascade"]["trace_id"] == trace_id
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["POST /v1/chat/completions"]
    assert server.kind == SpanKind.SERVER
    assert server.context is not None
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None
    assert format(server.parent.span_id, "016x") == parent_id
    assert server.attributes is not None
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["cascade.route"] == "cascade"
    run = spans["cascade.run"]
    assert run.parent is not None
    assert run.parent.span_id == server.context.span_id
    tracer_provider.shutdown()


async def test_without_a_tracer_provider_only_a_traceparent_gets_a_server_span(
    openai_server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the global API with no provider set, the server span is a no-op: it is
    skipped, unless the caller's ``traceparent`` must be carried on to what runs under it
    (an instrumented HTTP client propagates the no-op span's context); once a provider is
    set globally, every request gets one."""
    monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)
    openai_server.script("m1", Reply(text=ANSWER))
    path = write_config(
        tmp_path / "c.toml", {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    )
    parent = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    async with serving(path) as g:
        assert not g.gateway.traced({})
        assert g.gateway.traced(parent)
        async with openai.AsyncOpenAI(base_url=g.base_url, api_key="k", max_retries=0) as c:
            for headers in ({}, parent):
                raw = await c.chat.completions.with_raw_response.create(
                    model="cascade",
                    messages=HI,  # type: ignore[arg-type]
                    extra_headers=headers,
                )
                assert raw.parse().choices[0].message.content == ANSWER
                assert "x-cascade-trace-id" not in raw.headers  # nothing recorded it
        monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", TracerProvider())
        assert g.gateway.traced({})
    async with serving(path, tracer_provider=TracerProvider()) as g:
        monkeypatch.setattr(otel_trace, "_TRACER_PROVIDER", None)
        assert g.gateway.traced({})  # a provider of its own: always


async def test_access_log_has_trace_route_status_cost_but_no_key_or_text(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    openai_server.script("m1", Reply(text=ANSWER, input_tokens=10, output_tokens=5))
    path = write_config(
        tmp_path / "c.toml", {"tiers": [tier("t", provider("a", openai_server.url, "m1"))]}
    )
    with capture_logs() as logs:
        async with (
            serving(path, tracer_provider=tracer_provider) as g,
            openai.AsyncOpenAI(base_url=g.base_url, api_key="sk-gateway-key", max_retries=0) as c,
        ):
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
            with pytest.raises(openai.NotFoundError):
                await c.post("/nowhere", body={}, cast_to=object)
    access = [e for e in logs if e["event"] == "gateway.request"]
    assert len(access) == 2  # one line per request
    line, nowhere = access
    # a path no route serves: logged, but never as the client's own text
    assert nowhere["status"] == 404
    assert nowhere["path"] is None
    assert nowhere["error"] == "not_found_error"
    assert "nowhere" not in repr(nowhere)
    assert line["status"] == 200
    assert line["route"] == "cascade"
    assert line["cost_usd"] == pytest.approx(10e-6 + 10e-6)
    assert line["tier"] == 1
    assert len(line["trace_id"]) == 32
    assert line["duration_ms"] >= 0
    everything = repr(logs)
    assert "sk-gateway-key" not in everything
    assert SECRET_PROMPT not in everything
    assert ANSWER not in everything
    tracer_provider.shutdown()


@pytest.mark.parametrize(
    ("gateway", "words"),
    [
        ({"routes": [{"name": "a", "mode": "fast"}]}, "gateway.routes[0].mode"),
        (
            {"routes": [{"name": "a"}, {"name": "b", "models": ["a"]}]},
            "gateway.routes[1].models[0]",
        ),
        ({"routes": [{"name": "a", "max_tier": "nope"}]}, "gateway.routes[0].max_tier"),
        ({"routes": [{"name": "a", "config": "missing.toml"}]}, "gateway.routes[0].config"),
        ({"max_body_bytes": 10}, "gateway.max_body_bytes"),
        ({"unknown": 1}, "gateway.unknown"),
    ],
)
def test_serve_refuses_a_bad_gateway_table_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], gateway: dict[str, Any], words: str
) -> None:
    config = {"tiers": [tier("t", provider("a", "http://127.0.0.1:9", "m"))], "gateway": gateway}
    path = write_config(tmp_path / "c.toml", config)
    assert main(["serve", "--config", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert words in err


def test_check_checks_the_gateway_table_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = {
        "tiers": [tier("t", provider("a", "http://127.0.0.1:9", "m"))],
        "gateway": {"routes": [{"name": "a"}, {"name": "b", "max_tier": 1}]},
    }
    path = write_config(tmp_path / "c.toml", config)
    assert main(["check", str(path)]) == 0
    assert "gateway: routes 'a', 'b'" in capsys.readouterr().out
    config["gateway"] = {"routes": [{"name": "a", "start_tier": 2}]}
    write_config(path, config)
    assert main(["check", str(path)]) == 2
    assert "gateway.routes[0].start_tier" in capsys.readouterr().err
