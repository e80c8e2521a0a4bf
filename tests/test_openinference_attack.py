"""Hostile review of the ``semconv`` option (OpenInference attributes) and of the span
statuses by outcome: cached prompt tokens, hostile content, early exits from a stream, the
router's own calls, and bad ``semconv`` values from every source."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from cascade import Cascade, CascadeError, Config, ConfigError, Delta, Finished
from cascade._telemetry import _semconv as sc
from cascade._telemetry._content import MAX_CAPTURED, input_messages
from cascade._types import Message
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .gateway import serving, write_config
from .helpers import JSON_SCHEMA, USER, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
BOTH = ("gen_ai", "openinference")


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def cascade(self, config: dict[str, Any], **kw: Any) -> Cascade:
        kw.setdefault("environ", {})
        kw.setdefault("semconv", BOTH)
        return Cascade.from_dict(
            config, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kw
        )

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span


@pytest.fixture
def spans(caplog: pytest.LogCaptureFixture) -> Iterator[Spans]:
    s = Spans()
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        yield s
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    s.tracer_provider.shutdown()
    s.meter_provider.shutdown()


def attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


# --- cached prompt tokens ------------------------------------------------------------------

OPENAI_CACHED_USAGE = {
    "prompt_tokens": 3000,
    "completion_tokens": 50,
    "total_tokens": 3050,
    "prompt_tokens_details": {"cached_tokens": 2000},
}
ANTHROPIC_CACHED_USAGE = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 1000,
    "cache_read_input_tokens": 2000,
    "output_tokens": 50,
}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_cached_prompt_tokens_and_their_cost(
    spans: Spans,
    openai_server: FakeOpenAIServer,
    anthropic_server: FakeAnthropicServer,
    kind: str,
) -> None:
    """A call whose prompt was partly read from (or written to) the provider's cache: its
    span's cost is the one the Result charges (cache prices), and OpenInference's cache
    token counts and costs say how much of the prompt the cache served."""
    server: Any = openai_server if kind == "openai" else anthropic_server
    usage = OPENAI_CACHED_USAGE if kind == "openai" else ANTHROPIC_CACHED_USAGE
    server.script("m", Reply(text=ANSWER, usage=usage))
    config = {"tiers": [tier("t", provider("p", server.url, "m", kind=kind))]}
    async with spans.cascade(config) as c:
        result = await c.run(messages=USER)
    completion = result.attempts[0].completion
    assert completion is not None
    assert completion.cache_read_tokens == 2000
    a = attrs(spans.one("chat m"))
    # one cost, wherever it is read
    assert a[sc.CASCADE_COST_USD] == pytest.approx(result.cost_usd)
    assert a[sc.LLM_COST_TOTAL] == pytest.approx(result.cost_usd)
    assert a[sc.LLM_COST_PROMPT] + a[sc.LLM_COST_COMPLETION] == pytest.approx(result.cost_usd)
    assert a[sc.LLM_COST_COMPLETION] == pytest.approx(50 * 2.0 / 1e6)
    assert a[sc.LLM_TOKEN_COUNT_PROMPT] == completion.input_tokens
    assert a[sc.LLM_TOKEN_COUNT_CACHE_READ] == 2000
    read_price, write_price = c.config.tiers[0].providers[0].cache_prices()
    assert a[sc.LLM_COST_CACHE_READ] == pytest.approx(2000 * read_price / 1e6)
    if kind == "anthropic":
        assert a[sc.LLM_TOKEN_COUNT_CACHE_WRITE] == 1000
        assert a[sc.LLM_COST_CACHE_WRITE] == pytest.approx(1000 * write_price / 1e6)
    else:
        assert sc.LLM_TOKEN_COUNT_CACHE_WRITE not in a
    # the cost metric agrees with the Result too
    data = spans.reader.get_metrics_data()
    assert data is not None
    total = sum(
        p.value
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == sc.METRIC_COST
        for p in m.data.data_points
    )
    assert total == pytest.approx(result.cost_usd)


# --- statuses: early exits, the router, hostile content -----------------------------------


def statuses(spans: Spans) -> dict[str, list[StatusCode]]:
    found: dict[str, list[StatusCode]] = {}
    for s in spans.all():
        found.setdefault(s.name, []).append(s.status.status_code)
    return found


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_a_reader_that_leaves_early(
    spans: Spans, openai_server: FakeOpenAIServer, mode: str
) -> None:
    """The reader breaks out after the first piece of text: no span is left unset."""
    openai_server.script("m", Reply(text="x" * 400, chunk_chars=4, chunk_delay_s=0.01))
    config = {"tiers": [tier("t", provider("p", openai_server.url, "m", stream=True))]}
    async with (
        spans.cascade(config) as c,
        c.stream(messages=USER, mode=mode) as events,  # type: ignore[arg-type]
    ):
        async for event in events:
            if isinstance(event, Delta):
                break
    found = statuses(spans)
    assert set(found) == {"cascade.run", "cascade.tier t", "chat m"}
    for name, codes in found.items():
        assert StatusCode.UNSET not in codes, (name, found)
    for span in spans.all():  # an error says what it was (here: the reader left)
        if span.status.status_code is StatusCode.ERROR:
            assert span.status.description, span.name


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_a_reader_that_leaves_after_the_answer(
    spans: Spans, openai_server: FakeOpenAIServer, mode: str
) -> None:
    openai_server.script("m", ANSWER)
    config = {"tiers": [tier("t", provider("p", openai_server.url, "m", stream=True))]}
    async with (
        spans.cascade(config) as c,
        c.stream(messages=USER, mode=mode) as events,  # type: ignore[arg-type]
    ):
        async for event in events:
            if isinstance(event, Finished):
                break
    found = statuses(spans)
    assert found == {
        "cascade.run": [StatusCode.OK],
        "cascade.tier t": [StatusCode.OK],
        "chat m": [StatusCode.OK],
    }


async def test_the_routers_own_call(spans: Spans, openai_server: FakeOpenAIServer) -> None:
    """The LLM router's rating call: an LLM span under a CHAIN tier span, both OK; the
    same provider's answering call later is under its own tier's span, not the router's."""
    openai_server.script("m1", "1", ANSWER)
    config = {
        "tiers": [
            tier("small", provider("small-a", openai_server.url, "m1"), validators=[JSON_SCHEMA]),
            tier("large", provider("large-a", openai_server.url, "m3")),
        ],
        "router": {"kind": "llm", "provider": "small-a", "thresholds": [3]},
    }
    async with spans.cascade(config) as c:
        result = await c.run(messages=USER)
    assert [a.tier_name for a in result.attempts] == ["router", "small"]
    router_tier = spans.one("cascade.tier router")
    assert attrs(router_tier)[sc.OPENINFERENCE_SPAN_KIND] == "CHAIN"
    assert router_tier.status.status_code is StatusCode.OK
    rating, answering = sorted(spans.named("chat m1"), key=lambda s: s.start_time or 0)
    for span in (rating, answering):
        assert attrs(span)[sc.OPENINFERENCE_SPAN_KIND] == "LLM"
        assert span.status.status_code is StatusCode.OK
    small_tier = spans.one("cascade.tier small")
    assert attrs(router_tier)[sc.CASCADE_TIER_INDEX] == 0
    assert attrs(small_tier)[sc.CASCADE_TIER_INDEX] == 1
    assert rating.parent is not None
    assert rating.parent.span_id == router_tier.context.span_id
    assert answering.parent is not None
    assert answering.parent.span_id == small_tier.context.span_id
    for span in (rating, answering):  # the tier is the parent's attribute, not the call's
        assert sc.CASCADE_TIER_NAME not in attrs(span)


@pytest.mark.parametrize(
    "content", ["lone \ud800 surrogate", "nul \x00 byte", "\U0001f600 and \u202e"]
)
async def test_hostile_prompt_with_content_capture(
    spans: Spans, openai_server: FakeOpenAIServer, content: str
) -> None:
    """A prompt no UTF-8 can carry (a lone surrogate) or with control characters: content
    capture changes nothing of how the run ends (an answer, or the InputError a prompt
    that cannot be sent raises), and every span is exportable (OTLP strings are UTF-8)."""
    openai_server.script("m", ANSWER, ANSWER)
    config = {"tiers": [tier("t", provider("p", openai_server.url, "m"))]}
    messages = [{"role": "user", "content": content}]

    async def outcome(capture: bool) -> object:
        async with spans.cascade(config, capture_content=capture) as c:
            try:
                return (await c.run(messages=messages)).text
            except CascadeError as exc:
                return type(exc)

    assert await outcome(True) == await outcome(False)
    for span in spans.all():
        for value in attrs(span).values():
            if isinstance(value, str):
                value.encode()  # no UnicodeEncodeError in the exporter
    chat = attrs(spans.named("chat m")[0])
    assert chat[sc.INPUT_VALUE] == chat[sc.GEN_AI_INPUT_MESSAGES]
    sent = json.loads(chat[sc.INPUT_VALUE])[0]["parts"][0]["content"]
    # what UTF-8 can carry is kept as it was; a lone surrogate is replaced
    assert sent == content.encode("utf-8", "replace").decode()


async def test_a_huge_prompt_and_answer_are_captured_cut(
    spans: Spans, openai_server: FakeOpenAIServer
) -> None:
    """An 800,000-character prompt over three messages and a 300,000-character answer,
    content captured under both conventions: the run answers in full, and each captured
    attribute holds at most MAX_CAPTURED characters of text, valid JSON, the cut marked
    with what was left out (the messages after it are not listed)."""
    answer = "a" * 300_000
    openai_server.script("m", answer)
    config = {"tiers": [tier("t", provider("p", openai_server.url, "m"))]}
    messages = [
        {"role": "system", "content": "s" * 10},
        {"role": "user", "content": "u" * 799_980},
        {"role": "user", "content": "v" * 10},
    ]
    async with spans.cascade(config, capture_content=True) as c:
        assert (await c.run(messages=messages)).text == answer
    chat = attrs(spans.named("chat m")[0])
    limit = MAX_CAPTURED + 100  # the marker
    for name in (sc.GEN_AI_INPUT_MESSAGES, sc.INPUT_VALUE, sc.GEN_AI_OUTPUT_MESSAGES):
        assert len(chat[name]) <= limit
    sent = json.loads(chat[sc.GEN_AI_INPUT_MESSAGES])
    assert [m["role"] for m in sent] == ["system", "user"]
    assert sent[0]["parts"][0]["content"] == "s" * 10
    cut = sent[1]["parts"][0]["content"]
    kept = len(cut) - len(cut.lstrip("u"))
    assert 0 < kept < MAX_CAPTURED
    assert cut[kept:] == f"…[{799_980 - kept} more characters, 1 more message not captured]"
    (said,) = json.loads(chat[sc.GEN_AI_OUTPUT_MESSAGES])
    assert said["parts"][0]["content"].endswith(" more characters not captured]")
    assert chat[sc.OUTPUT_VALUE] == "a" * MAX_CAPTURED + (
        f"…[{300_000 - MAX_CAPTURED} more characters not captured]"
    )


def test_many_small_messages_are_captured_up_to_the_limit() -> None:
    """100,000 one-character messages: the captured JSON lists as many as the limit
    lets it (each counted with its role and JSON), the last one saying how many more."""
    many = [Message(role="user", content="x")] * 100_000
    sent = json.loads(input_messages(many))
    assert 100 < len(sent) < MAX_CAPTURED // 40
    assert sent[-1]["parts"][0]["content"] == (
        f"…[1 more characters, {100_000 - len(sent)} more messages not captured]"
    )
    assert (
        json.loads(input_messages(many[:3]))
        == [{"role": "user", "parts": [{"type": "text", "content": "x"}]}] * 3
    )


# --- the gateway ---------------------------------------------------------------------------

GATEWAY_KEY = "sk-gateway-canary-5d1e"
PROVIDER_KEY = "sk-provider-canary-93b0"
SECRET = "my secret prompt text"


@pytest.mark.parametrize("capture", [False, True])
async def test_the_gateway_honours_the_config_key(
    spans: Spans, openai_server: FakeOpenAIServer, tmp_path: Path, capture: bool
) -> None:
    """``cascade serve`` with ``[telemetry] semconv``: OpenInference spans, and no key
    anywhere in them; the prompt only with content capture."""
    import openai

    openai_server.script("m", ANSWER)
    path = write_config(
        tmp_path / "c.toml",
        {
            "telemetry": {"semconv": ["openinference"]},
            "tiers": [tier("t", provider("p", openai_server.url, "m", api_key_env="OIA_KEY"))],
        },
    )
    environ = {"OIA_KEY": PROVIDER_KEY}
    if capture:
        environ[sc.ENV_CAPTURE_CONTENT] = "true"
    async with (
        serving(path, tracer_provider=spans.tracer_provider, environ=environ) as g,
        openai.AsyncOpenAI(base_url=g.base_url, api_key=GATEWAY_KEY, max_retries=0) as c,
    ):
        await c.chat.completions.create(
            model="cascade",
            messages=[{"role": "user", "content": SECRET}],
        )
    assert openai_server.requests[0].headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    by = {s.name: s for s in spans.all()}
    assert attrs(by["cascade.run"])[sc.OPENINFERENCE_SPAN_KIND] == "CHAIN"
    chat = attrs(by["chat m"])
    assert chat[sc.OPENINFERENCE_SPAN_KIND] == "LLM"
    assert not [k for k in chat if k.startswith("gen_ai.")]
    assert (SECRET in chat.get(sc.INPUT_VALUE, "")) is capture
    for span in spans.all():
        everything = repr(attrs(span)) + repr([attrs(e) for e in span.events])
        assert GATEWAY_KEY not in everything, span.name
        assert PROVIDER_KEY not in everything, span.name
        if not capture:
            assert SECRET not in everything, span.name


# --- semconv from every source -------------------------------------------------------------

BASE = {"tiers": [tier("t", provider("p", "http://127.0.0.1:1", "m"))]}


@pytest.mark.parametrize(
    ("semconv", "environ", "path"),
    [
        (b"gen_ai", {}, "semconv[0]"),  # bytes: a sequence of ints
        ([1], {}, "semconv[0]"),
        ([["gen_ai"]], {}, "semconv[0]"),
        (None, {sc.ENV_SEMCONV: " , "}, sc.ENV_SEMCONV),
        (None, {sc.ENV_SEMCONV: "gen_ai;openinference"}, f"{sc.ENV_SEMCONV}[0]"),
        (None, {sc.ENV_SEMCONV: "gen_ai openinference"}, f"{sc.ENV_SEMCONV}[0]"),
    ],
)
def test_bad_semconv_is_a_config_error(semconv: Any, environ: dict[str, str], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(BASE, semconv=semconv, environ=environ)
    assert info.value.path == path


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({sc.ENV_SEMCONV: "OPENINFERENCE"}, ("openinference",)),
        ({sc.ENV_SEMCONV: " openinference , gen_ai ,, "}, ("openinference", "gen_ai")),
        ({sc.ENV_SEMCONV: "gen_ai,gen_ai"}, ("gen_ai",)),
        ({sc.ENV_SEMCONV: "   "}, ("gen_ai",)),
    ],
)
def test_semconv_from_the_environment(environ: dict[str, str], expected: tuple[str, ...]) -> None:
    c = Cascade.from_dict(BASE, environ=environ)
    assert c._telemetry.semconv == expected


def test_an_answer_with_a_lone_surrogate_is_exportable() -> None:
    """A plug-in provider's answer may hold a lone surrogate: with content capture its
    text goes on the span replaced, never as a str the OTLP exporter cannot encode."""
    from cascade import Completion
    from cascade._telemetry import _content, _conventions

    one = Completion(text="a \ud800 b", provider="p", model="m", finish_reason="stop")
    answer = _content.output_messages((one,))
    assert json.loads(answer)[0]["parts"][0]["content"] == "a ? b"
    out = _conventions.output_attributes((one,), answer)
    assert out[sc.OUTPUT_VALUE] == "a ? b"
    two = _conventions.output_attributes((one, one), _content.output_messages((one, one)))
    assert json.loads(two[sc.OUTPUT_VALUE])[1]["parts"][0]["content"] == "a ? b"


# --- llm.provider is the host, llm.system the API ------------------------------------------


@pytest.mark.parametrize(
    ("kind", "base_url", "system", "hosting"),
    [
        ("openai", "https://api.openai.com/v1", "openai", "openai"),
        ("openai", "https://my-res.openai.azure.com/openai/v1", "openai", "azure"),
        ("openai", "https://api.groq.com/openai/v1", "openai", "groq"),
        ("openai", "https://api.together.xyz/v1", "openai", "together"),
        ("openai", "https://API.DeepSeek.com/v1", "openai", "deepseek"),
        ("openai", "http://127.0.0.1:8000/v1", "openai", None),  # vLLM, say: not OpenAI
        ("openai", "https://notapi.openai.com.evil.example/v1", "openai", None),
        ("openai", "https://evilapi.openai.com/v1", "openai", None),  # a label boundary
        ("anthropic", "https://api.anthropic.com", "anthropic", "anthropic"),
        ("anthropic", "http://localhost:9/", "anthropic", None),
    ],
)
def test_llm_provider_names_the_host(
    kind: str, base_url: str, system: str, hosting: str | None
) -> None:
    """OpenInference: ``llm.system`` is the API (the provider's kind), ``llm.provider`` the
    hosting provider, one of the well-known values when the host is theirs, else left
    out (as OpenInference's own OpenAI instrumentation does)."""
    config = Config.from_dict({"tiers": [tier("t", provider("p", base_url, "m", kind=kind))]})
    c = Cascade(config, semconv=("openinference",), environ={})
    one = SimpleNamespace(name="p", model="m", config=config.tiers[0].providers[0])
    info = c._telemetry.provider_info(SimpleNamespace(index=1, name="t"), one)
    assert info.span_attrs[sc.LLM_SYSTEM] == system
    assert info.span_attrs.get(sc.LLM_PROVIDER) == hosting


async def test_metrics_keep_their_names_without_gen_ai_spans(
    spans: Spans, openai_server: FakeOpenAIServer
) -> None:
    """``semconv=("openinference",)`` changes span attributes only: the metrics (which
    OpenInference has no conventions for) are recorded as with the default."""
    openai_server.script("m", Reply(text=ANSWER, input_tokens=10, output_tokens=5))
    config = {"tiers": [tier("t", provider("p", openai_server.url, "m"))]}
    async with spans.cascade(config, semconv=("openinference",)) as c:
        result = await c.run(messages=USER)
    data = spans.reader.get_metrics_data()
    assert data is not None
    points = {
        m.name: list(m.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    (duration,) = points[sc.GEN_AI_CLIENT_OPERATION_DURATION]
    assert dict(duration.attributes or {})[sc.GEN_AI_REQUEST_MODEL] == "m"
    assert sorted(p.sum for p in points[sc.GEN_AI_CLIENT_TOKEN_USAGE]) == [5, 10]
    assert sum(p.value for p in points[sc.METRIC_COST]) == pytest.approx(result.cost_usd)
