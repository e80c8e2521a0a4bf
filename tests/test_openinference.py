"""The ``semconv`` option: OpenInference's span kinds, model, provider, token counts and cost
beside (or instead of) the GenAI conventions, and a status on every run, tier and call span
by outcome. Every span is exported over OTLP/HTTP to the receiver in the test and decoded
from protobuf, as an OpenInference backend (Arize Phoenix) would receive it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from cascade import (
    AllProvidersFailed,
    BudgetExceeded,
    Cascade,
    CascadeExhausted,
    Config,
    ConfigError,
    DeadlineExceeded,
)
from cascade._telemetry import _semconv as sc
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier
from .otlp_receiver import OTLPReceiver, attributes, span_tree

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
BOTH = ("gen_ai", "openinference")
OK, ERROR, UNSET = Status.STATUS_CODE_OK, Status.STATUS_CODE_ERROR, Status.STATUS_CODE_UNSET
OI_PREFIXES = ("openinference.", "llm.", "input.", "output.")

Run = Callable[[Cascade], Awaitable[object]]


def two_tiers(url: str, large_url: str | None = None, **extra: Any) -> dict[str, Any]:
    large_kind = "openai" if large_url is None else "anthropic"
    return {
        "tiers": [
            tier("small", provider("s", url, "ms"), validators=[JSON_SCHEMA]),
            tier(
                "large",
                provider("l", large_url or url, "ml", kind=large_kind),
                validators=[JSON_SCHEMA],
            ),
        ],
        **extra,
    }


async def traced(config: dict[str, Any], run: Run, *, spans: int, **kw: Any) -> list[Span]:
    """Run ``run`` on a Cascade built from ``config`` (and ``kw``), its spans exported over
    OTLP/HTTP with a batch processor; the ``spans`` spans the receiver decoded."""
    kw.setdefault("environ", {})
    with OTLPReceiver() as receiver:
        resource = Resource.create({"service.name": "cascade-openinference-test"})
        tracer_provider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=f"{receiver.url}/v1/traces")
        tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        try:
            async with Cascade.from_dict(config, tracer_provider=tracer_provider, **kw) as c:
                await run(c)
        finally:
            tracer_provider.shutdown()  # flushes (the receiver has its own thread)
        receiver.wait_for(lambda: len(receiver.spans()) >= spans)
        found = [s for s, _ in receiver.spans()]
    assert len(found) == spans, [s.name for s in found]
    return found


async def ask(c: Cascade) -> object:
    return await c.run(messages=USER)


def named(spans: list[Span]) -> dict[str, Span]:
    return {s.name: s for s in spans}


def oi_names(a: dict[str, Any]) -> set[str]:
    return {k for k in a if k.startswith(OI_PREFIXES)}


async def test_escalated_run_with_both_conventions(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ms", "Sure. The answer is 42.")
    openai_server.script("ml", ANSWER)
    spans = await traced(two_tiers(openai_server.url), ask, spans=5, semconv=BOTH)
    assert [(d, s.name) for d, s in span_tree(spans)] == [
        (0, "cascade.run"),
        (1, "cascade.tier small"),
        (2, "chat ms"),
        (1, "cascade.tier large"),
        (2, "chat ml"),
    ]
    by = named(spans)
    for name in ("cascade.run", "cascade.tier small", "cascade.tier large"):
        a = attributes(by[name])
        assert a[sc.OPENINFERENCE_SPAN_KIND] == "CHAIN", name
        # Kinds only: tokens and cost on a chain would be counted twice by a backend
        # that sums them over the trace.
        assert oi_names(a) == {sc.OPENINFERENCE_SPAN_KIND}, name
        assert by[name].status.code == OK, name  # the small tier's rejection is no error
    run = attributes(by["cascade.run"])
    assert run[sc.GEN_AI_USAGE_INPUT_TOKENS] > 0  # the GenAI attributes are still there
    assert attributes(by["cascade.tier small"])[sc.CASCADE_TIER_OUTCOME] == "rejected"
    total_cost = 0.0
    for name, model in (("chat ms", "ms"), ("chat ml", "ml")):
        chat = by[name]
        a = attributes(chat)
        assert chat.kind == Span.SPAN_KIND_CLIENT
        assert chat.status.code == OK, name  # a rejected answer is a call that went fine
        assert a[sc.OPENINFERENCE_SPAN_KIND] == "LLM"
        assert a[sc.LLM_MODEL_NAME] == model  # the fake server answers as the model asked
        assert sc.LLM_PROVIDER not in a  # a server on loopback: no well-known host
        assert a[sc.LLM_SYSTEM] == "openai"
        prompt, completion = a[sc.LLM_TOKEN_COUNT_PROMPT], a[sc.LLM_TOKEN_COUNT_COMPLETION]
        assert prompt == a[sc.GEN_AI_USAGE_INPUT_TOKENS]
        assert prompt > 0
        assert completion == a[sc.GEN_AI_USAGE_OUTPUT_TOKENS]
        assert completion > 0
        assert a[sc.LLM_TOKEN_COUNT_TOTAL] == prompt + completion
        # helpers.provider prices: $1 per million prompt tokens, $2 per million completion
        assert a[sc.LLM_COST_PROMPT] == pytest.approx(prompt * 1.0 / 1e6)
        assert a[sc.LLM_COST_COMPLETION] == pytest.approx(completion * 2.0 / 1e6)
        assert a[sc.LLM_COST_TOTAL] == pytest.approx(a[sc.CASCADE_COST_USD])
        assert a[sc.LLM_COST_TOTAL] > 0
        total_cost += a[sc.LLM_COST_TOTAL]
        # content capture is off: no prompt nor answer, in either convention
        for key in (sc.INPUT_VALUE, sc.OUTPUT_VALUE, sc.GEN_AI_INPUT_MESSAGES):
            assert key not in a
        assert a[sc.GEN_AI_REQUEST_MODEL] == model
        assert a[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert run[sc.CASCADE_COST_USD] == pytest.approx(total_cost)


async def test_openinference_alone_drops_the_gen_ai_span_attributes(
    openai_server: FakeOpenAIServer, anthropic_server: FakeAnthropicServer
) -> None:
    openai_server.script("ms", "no JSON here")
    anthropic_server.script("ml", ANSWER)
    config = two_tiers(openai_server.url, anthropic_server.url)
    spans = await traced(config, ask, spans=5, semconv=["openinference"])
    for span in spans:
        a = attributes(span)
        assert not [k for k in a if k.startswith("gen_ai.")], span.name
        assert sc.OPENINFERENCE_SPAN_KIND in a
        for event in span.events:
            assert not [k for k in attributes(event) if k.startswith("gen_ai.")]
    by = named(spans)
    large = attributes(by["chat ml"])
    assert sc.LLM_PROVIDER not in large  # the hosting provider: loopback is none known
    assert large[sc.LLM_SYSTEM] == "anthropic"
    assert large[sc.LLM_TOKEN_COUNT_TOTAL] > 0
    assert large[sc.SERVER_ADDRESS] == "127.0.0.1"  # not a GenAI name: kept
    assert large[sc.CASCADE_VALIDATED] is True
    assert attributes(by["cascade.run"])[sc.CASCADE_OUTCOME] == "accepted"


async def test_default_is_gen_ai_only(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ms", "Sure. The answer is 42.")
    openai_server.script("ml", ANSWER)
    spans = await traced(two_tiers(openai_server.url), ask, spans=5, capture_content=True)
    for span in spans:
        assert not oi_names(attributes(span)), span.name
        # GenAI alone: OK on the run only; a tier or call that did not fail is unset, as
        # OpenTelemetry asks of instrumentation (OK on them is OpenInference's habit)
        assert span.status.code == (OK if span.name == "cascade.run" else UNSET), span.name
    chat = attributes(named(spans)["chat ml"])
    assert chat[sc.GEN_AI_REQUEST_MODEL] == "ml"
    assert sc.GEN_AI_OUTPUT_MESSAGES in chat


async def test_prompt_and_answer_only_with_content_capture(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("ms", ANSWER)
    spans = await traced(
        two_tiers(openai_server.url), ask, spans=3, semconv=BOTH, capture_content=True
    )
    a = attributes(named(spans)["chat ms"])
    assert a[sc.INPUT_MIME_TYPE] == "application/json"
    prompt = json.loads(a[sc.INPUT_VALUE])
    assert prompt == json.loads(a[sc.GEN_AI_INPUT_MESSAGES])
    assert prompt[0]["parts"][0]["content"] == USER[0]["content"]
    assert (a[sc.OUTPUT_VALUE], a[sc.OUTPUT_MIME_TYPE]) == (ANSWER, "text/plain")
    run = attributes(named(spans)["cascade.run"])
    assert sc.INPUT_VALUE not in run  # calls only, as the GenAI messages
    assert sc.OUTPUT_VALUE not in run


Outcome = Callable[[Cascade, FakeOpenAIServer], Awaitable[object]]


async def plain(c: Cascade, server: FakeOpenAIServer) -> object:
    return await c.run(messages=USER)


async def budget_zero(c: Cascade, server: FakeOpenAIServer) -> object:
    return await c.run(messages=USER, max_cost_usd=0.0)


async def deadline(c: Cascade, server: FakeOpenAIServer) -> object:
    return await c.run(messages=USER, deadline_s=0.3)


async def cancelled(c: Cascade, server: FakeOpenAIServer) -> None:
    """The caller cancels the run once its first call is under way."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, c)
        with anyio.fail_after(5):
            while server.request_count == 0:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()


NO_ANSWER = "no JSON here"
HANG = Reply(fault="hang")
FAIL = Reply(status=500, text="down")

# name: (small's reply, large's reply, config extras, run, error raised,
#        run status, [(span, status)] of the other spans in start order)
OUTCOMES: dict[str, tuple[Any, Any, dict[str, Any], Outcome, type[Exception] | None, int, Any]] = {
    "accepted": (ANSWER, ANSWER, {}, plain, None, OK, [("tier", OK), ("chat", OK)]),
    "best answer": (
        NO_ANSWER,
        NO_ANSWER,
        {},
        plain,
        None,
        OK,
        [("tier", OK), ("chat", OK), ("tier", OK), ("chat", OK)],
    ),
    "exhausted": (
        NO_ANSWER,
        NO_ANSWER,
        {"on_exhausted": "error"},
        plain,
        CascadeExhausted,
        ERROR,
        [("tier", OK), ("chat", OK), ("tier", OK), ("chat", OK)],
    ),
    "all providers failed": (
        FAIL,
        FAIL,
        {},
        plain,
        AllProvidersFailed,
        ERROR,
        [("tier", ERROR), ("chat", ERROR), ("tier", ERROR), ("chat", ERROR)],
    ),
    "budget": (ANSWER, ANSWER, {}, budget_zero, BudgetExceeded, ERROR, [("tier", OK)] * 2),
    "deadline, best answer": (
        NO_ANSWER,
        HANG,
        {},
        deadline,
        None,
        OK,
        [("tier", OK), ("chat", OK), ("tier", ERROR), ("chat", ERROR)],
    ),
    "deadline": (
        HANG,
        ANSWER,
        {"on_exhausted": "error"},
        deadline,
        DeadlineExceeded,
        ERROR,
        [("tier", ERROR), ("chat", ERROR)],
    ),
    "cancelled": (HANG, ANSWER, {}, cancelled, None, ERROR, [("tier", ERROR), ("chat", ERROR)]),
}


@pytest.mark.parametrize("semconv", [("gen_ai",), BOTH], ids=["gen_ai", "both"])
@pytest.mark.parametrize("outcome", list(OUTCOMES))
async def test_status_by_outcome(
    openai_server: FakeOpenAIServer, outcome: str, semconv: tuple[str, ...]
) -> None:
    """The run span is OK when the run answers (accepted, or the best answer) and ERROR
    when it raises or is cancelled, never unset; a tier is ERROR only when no provider
    answered; a call OK when it answered, ERROR when it failed. OK on tiers and calls is
    OpenInference's (its instrumentations set it); with GenAI's conventions alone they are
    left unset unless they failed, as OpenTelemetry asks of instrumentation."""
    small, large, extra, run, raised, run_status, others = OUTCOMES[outcome]
    openai_server.script("ms", small)
    openai_server.script("ml", large)

    async def go(c: Cascade) -> None:
        if raised is None:
            await run(c, openai_server)
        else:
            with pytest.raises(raised):
                await run(c, openai_server)

    spans = await traced(
        two_tiers(openai_server.url, **extra), go, spans=1 + len(others), semconv=semconv
    )
    tree = [s for _, s in span_tree(spans)]
    assert tree[0].name == "cascade.run"
    assert tree[0].status.code == run_status
    if run_status == ERROR:
        assert tree[0].status.message
    seen = [(s.name.split()[0].removeprefix("cascade."), s.status.code) for s in tree[1:]]
    if "openinference" not in semconv:  # GenAI alone: a tier or call that did not fail
        others = [(name, UNSET if code == OK else code) for name, code in others]
    assert seen == others
    kinds = {s.name: attributes(s).get(sc.OPENINFERENCE_SPAN_KIND) for s in spans}
    if "openinference" in semconv:
        assert kinds["cascade.run"] == "CHAIN"
        assert {kinds[s.name] for s in tree[1:]} <= {"CHAIN", "LLM"}
    else:
        assert set(kinds.values()) == {None}


async def test_config_key_and_environment(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ms", ANSWER)
    base = two_tiers(openai_server.url)

    async def kind_of_run(config: dict[str, Any], **kw: Any) -> str | None:
        spans = await traced(config, ask, spans=3, **kw)
        return attributes(named(spans)["cascade.run"]).get(sc.OPENINFERENCE_SPAN_KIND)

    in_config = {**base, "telemetry": {"semconv": ["gen_ai", "openinference"]}}
    assert await kind_of_run(in_config) == "CHAIN"
    assert await kind_of_run(base, environ={sc.ENV_SEMCONV: "gen_ai, OpenInference"}) == "CHAIN"
    # the argument wins over the environment, and the environment over the config
    env = {sc.ENV_SEMCONV: "openinference"}
    assert await kind_of_run(base, environ=env, semconv=("gen_ai",)) is None
    assert await kind_of_run(in_config, environ={sc.ENV_SEMCONV: "gen_ai"}) is None


@pytest.mark.parametrize(
    ("semconv", "path"),
    [
        (["gen_ai", "open_inference"], "telemetry.semconv[1]"),
        ([], "telemetry.semconv"),
        ("openinference", "telemetry.semconv"),
    ],
)
def test_config_rejects_a_bad_convention(semconv: object, path: str) -> None:
    data = {"tiers": [tier("t", provider("p", "http://127.0.0.1:1", "m"))]}
    with pytest.raises(ConfigError) as info:
        Config.from_dict({**data, "telemetry": {"semconv": semconv}})
    assert info.value.path == path


def test_toml_config_key() -> None:
    toml = """
[telemetry]
semconv = ["gen_ai", "openinference"]

[[tiers]]
name = "t"
[[tiers.providers]]
name = "p"
kind = "openai"
base_url = "http://127.0.0.1:1"
model = "m"
"""
    assert Config.from_toml(toml).telemetry.semconv == BOTH
    with pytest.raises(ConfigError) as info:
        Config.from_toml(toml.replace('"openinference"', '"phoenix"'), source="c.toml")
    assert (info.value.path, info.value.source) == ("telemetry.semconv[1]", "c.toml")


@pytest.mark.parametrize(
    ("semconv", "environ", "path"),
    [
        ("openinference", {}, "semconv"),  # a str, not a sequence of names
        (("gen_ai", "otel"), {}, "semconv[1]"),
        ((), {}, "semconv"),
        (None, {sc.ENV_SEMCONV: "gen_ai,bogus"}, f"{sc.ENV_SEMCONV}[1]"),
    ],
)
def test_argument_and_environment_reject_a_bad_convention(
    semconv: Any, environ: dict[str, str], path: str
) -> None:
    data = {"tiers": [tier("t", provider("p", "http://127.0.0.1:1", "m"))]}
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(data, semconv=semconv, environ=environ)
    assert info.value.path == path
    assert "gen_ai" in info.value.message


async def test_cli_run_with_the_config_key(openai_server: FakeOpenAIServer, tmp_path: Path) -> None:
    """``cascade run``, configured by the OTEL_* variables and the config's
    ``[telemetry]`` table alone."""
    openai_server.script("ms", "Sure. The answer is 42.")
    openai_server.script("ml", ANSWER)
    cfg = tmp_path / "cascade.toml"
    cfg.write_text(
        f"""
[telemetry]
semconv = ["gen_ai", "openinference"]

[[tiers]]
name = "small"
validators = [{{ name = "json_schema", schema = {{ type = "object", required = ["answer"] }} }}]
[[tiers.providers]]
name = "s"
kind = "openai"
base_url = "{openai_server.url}"
model = "ms"
input_cost_per_mtok = 0.5
output_cost_per_mtok = 1.5

[[tiers]]
name = "large"
[[tiers.providers]]
name = "l"
kind = "openai"
base_url = "{openai_server.url}"
model = "ml"
input_cost_per_mtok = 5
output_cost_per_mtok = 15
"""
    )
    with OTLPReceiver() as receiver:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CASCADE_"))}
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
        )
        done = await anyio.run_process(
            [sys.executable, "-m", "cascade._cli", "run", "--config", str(cfg), "6 * 7?"],
            env=env,
            check=False,
        )
        assert done.returncode == 0, done.stderr.decode()
        receiver.wait_for(lambda: len(receiver.spans()) == 5)
        spans = [s for s, _ in receiver.spans()]
    kinds = [(s.name, attributes(s)[sc.OPENINFERENCE_SPAN_KIND]) for _, s in span_tree(spans)]
    assert kinds == [
        ("cascade.run", "CHAIN"),
        ("cascade.tier small", "CHAIN"),
        ("chat ms", "LLM"),
        ("cascade.tier large", "CHAIN"),
        ("chat ml", "LLM"),
    ]
    large = attributes(named(spans)["chat ml"])
    assert large[sc.LLM_COST_TOTAL] == pytest.approx(
        (large[sc.LLM_TOKEN_COUNT_PROMPT] * 5 + large[sc.LLM_TOKEN_COUNT_COMPLETION] * 15) / 1e6
    )
    assert all(s.status.code == OK for s in spans)
