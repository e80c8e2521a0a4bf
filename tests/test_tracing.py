"""Spans, events, metrics and routing records of real runs over loopback HTTP, with the
SDK's in-memory exporter and reader (passed to the Cascade: no global provider is set)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import structlog
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode
from structlog.testing import capture_logs

import cascade
from cascade import AllProvidersFailed, Cascade, CascadeExhausted, DeadlineExceeded
from cascade._telemetry import _semconv as sc
from cascade.testing import FakeOpenAIServer, Reply

from .helpers import JSON_SCHEMA, USER, VIAS, answer, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
CANARY = "sk-canary-7f3a9c1e5b2d4086"


@dataclass
class OTel:
    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def cascade(self, config: dict[str, Any], **kw: Any) -> Cascade:
        kw.setdefault("environ", {})
        return Cascade.from_dict(
            config, tracer_provider=self.tracer_provider, meter_provider=self.meter_provider, **kw
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def tree(self) -> list[tuple[int, str]]:
        """(depth, name) depth first, children in start order."""
        spans = self.spans()
        ids = {s.context.span_id for s in spans}
        kids: dict[int | None, list[ReadableSpan]] = {}
        for s in spans:
            parent = s.parent.span_id if s.parent is not None else None
            kids.setdefault(parent if parent in ids else None, []).append(s)
        out: list[tuple[int, str]] = []

        def walk(span: ReadableSpan, depth: int) -> None:
            out.append((depth, span.name))
            for child in sorted(kids.get(span.context.span_id, []), key=start):
                walk(child, depth + 1)

        for root in sorted(kids.get(None, []), key=start):
            walk(root, 0)
        return out

    def one(self, name: str) -> ReadableSpan:
        (span,) = [s for s in self.spans() if s.name == name]
        return span

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        if data is None:
            return []
        return [
            p
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for p in m.data.data_points
        ]


def start(span: ReadableSpan) -> int:
    return span.start_time or 0


def attrs(span: Any) -> dict[str, Any]:
    return dict(span.attributes or {})


@pytest.fixture
def otel(caplog: pytest.LogCaptureFixture) -> Iterator[OTel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        yield OTel(exporter, reader, tracer_provider, meter_provider)
    # A context detached out of order, an attribute of a bad type, an event on an
    # ended span: the SDK logs these rather than raising.
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    tracer_provider.shutdown()
    meter_provider.shutdown()


def two_tiers(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("s", url, "ms"), validators=[JSON_SCHEMA]),
            tier("large", provider("l", url, "ml")),
        ],
        **extra,
    }


async def test_accepted_at_tier_1(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.default = ANSWER
    async with otel.cascade(two_tiers(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.tier == 1
    assert otel.tree() == [(0, "cascade.run"), (1, "cascade.tier small"), (2, "chat ms")]
    run, chat = otel.one("cascade.run"), otel.one("chat ms")
    assert run.kind is SpanKind.INTERNAL and chat.kind is SpanKind.CLIENT
    a = attrs(chat)
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat" and a[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[sc.GEN_AI_REQUEST_MODEL] == "ms" and a[sc.GEN_AI_RESPONSE_MODEL] == "ms"
    assert a[sc.SERVER_ADDRESS] == "127.0.0.1" and a[sc.SERVER_PORT] == openai_server.port
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == result.usage.input_tokens
    assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == result.usage.output_tokens
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    # The tier's name and index are on the call's parent, its tier's span, only.
    assert sc.CASCADE_TIER_NAME not in a and sc.CASCADE_TIER_INDEX not in a
    tier_attrs = attrs(otel.one("cascade.tier small"))
    assert tier_attrs[sc.CASCADE_TIER_NAME] == "small" and tier_attrs[sc.CASCADE_TIER_INDEX] == 1
    assert a[sc.CASCADE_ATTEMPT_NUMBER] == 1 and a[sc.CASCADE_PROVIDER] == "s"
    assert a[sc.CASCADE_COST_USD] == pytest.approx(result.cost_usd)
    assert a[sc.CASCADE_VALIDATED] is True
    (event,) = chat.events
    assert event.name == sc.EVENT_VALIDATION and attrs(event)[sc.CASCADE_VALIDATION_PASSED]
    r = attrs(run)
    assert r[sc.CASCADE_OUTCOME] == "accepted" and r[sc.CASCADE_TIER_NAME] == "small"
    assert r[sc.CASCADE_TIER_PATH] == ("small",) and r[sc.CASCADE_ESCALATIONS] == 0
    assert r[sc.CASCADE_COST_USD] == pytest.approx(result.cost_usd)
    assert run.events == ()
    (duration,) = otel.points(sc.GEN_AI_CLIENT_OPERATION_DURATION)
    assert duration.count == 1 and duration.attributes[sc.SERVER_PORT] == openai_server.port
    tokens = {
        p.attributes[sc.GEN_AI_TOKEN_TYPE]: p.sum for p in otel.points(sc.GEN_AI_CLIENT_TOKEN_USAGE)
    }
    assert tokens == {"input": result.usage.input_tokens, "output": result.usage.output_tokens}
    (cost,) = otel.points(sc.METRIC_COST)
    assert cost.value == pytest.approx(result.cost_usd)


async def test_escalated(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ms", "Sure! The answer is 42.")
    openai_server.script("ml", ANSWER)
    async with otel.cascade(two_tiers(openai_server.url)) as c:
        result = await c.run(messages=USER)
    assert result.tier == 2
    assert otel.tree() == [
        (0, "cascade.run"),
        (1, "cascade.tier small"),
        (2, "chat ms"),
        (1, "cascade.tier large"),
        (2, "chat ml"),
    ]
    rejected = otel.one("chat ms")
    assert attrs(rejected)[sc.CASCADE_VALIDATED] is False
    assert attrs(rejected)[sc.CASCADE_OUTCOME] == "rejected"
    assert rejected.status.status_code is StatusCode.UNSET  # the call went fine: no status
    (verdict,) = rejected.events
    assert attrs(verdict)[sc.CASCADE_VALIDATION_VALIDATOR] == "json_schema"
    assert attrs(verdict)[sc.CASCADE_VALIDATION_PASSED] is False
    assert attrs(verdict)[sc.CASCADE_VALIDATION_REASON]
    assert attrs(otel.one("cascade.tier small"))[sc.CASCADE_TIER_OUTCOME] == "rejected"
    run = otel.one("cascade.run")
    (escalation,) = run.events
    e = attrs(escalation)
    assert escalation.name == sc.EVENT_ESCALATION
    assert (e[sc.CASCADE_ESCALATION_FROM], e[sc.CASCADE_ESCALATION_TO]) == ("small", "large")
    assert e[sc.CASCADE_ESCALATION_REASON] == "rejected"
    assert e[sc.CASCADE_ESCALATION_DETAIL].startswith("json_schema: ")
    assert attrs(run)[sc.CASCADE_TIER_PATH] == ("small", "large")
    assert attrs(run)[sc.CASCADE_ESCALATIONS] == 1
    (count,) = otel.points(sc.METRIC_ESCALATIONS)
    assert count.value == 1 and count.attributes[sc.CASCADE_ESCALATION_REASON] == "rejected"
    costs = {p.attributes[sc.CASCADE_TIER_NAME]: p.value for p in otel.points(sc.METRIC_COST)}
    assert set(costs) == {"small", "large"}
    assert sum(costs.values()) == pytest.approx(result.cost_usd)


async def test_failed_over(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ma", Reply(status=500))
    openai_server.script("mb", ANSWER)
    url = openai_server.url
    cfg = {"tiers": [tier("t", provider("a", url, "ma"), provider("b", url, "mb"))]}
    async with otel.cascade(cfg) as c:
        result = await c.run(messages=USER)
    assert result.provider == "b"
    assert otel.tree() == [
        (0, "cascade.run"),
        (1, "cascade.tier t"),
        (2, "chat ma"),
        (2, "chat mb"),
    ]
    failed = otel.one("chat ma")
    assert failed.status.status_code is StatusCode.ERROR
    assert attrs(failed)[sc.ERROR_TYPE] == "ProviderStatusError"
    assert attrs(failed)[sc.CASCADE_OUTCOME] == "failed"
    assert sc.ERROR_TYPE not in attrs(otel.one("chat mb"))
    assert attrs(otel.one("chat mb"))[sc.CASCADE_ATTEMPT_NUMBER] == 2
    assert otel.one("cascade.run").events == ()  # failing over is no escalation
    errors = {
        p.attributes.get(sc.ERROR_TYPE) for p in otel.points(sc.GEN_AI_CLIENT_OPERATION_DURATION)
    }
    assert errors == {None, "ProviderStatusError"}


async def test_exhausted(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.default = "not JSON"
    cfg = two_tiers(openai_server.url, on_exhausted="error")
    cfg["tiers"][1]["validators"] = [JSON_SCHEMA]
    async with otel.cascade(cfg) as c:
        with pytest.raises(CascadeExhausted):
            await c.run(messages=USER)
    run = otel.one("cascade.run")
    assert run.status.status_code is StatusCode.ERROR
    assert attrs(run)[sc.ERROR_TYPE] == "CascadeExhausted"
    assert attrs(run)[sc.CASCADE_TIER_PATH] == ("small", "large")
    (escalation,) = run.events  # small -> large; the last tier rejecting escalates nowhere
    assert attrs(escalation)[sc.CASCADE_ESCALATION_TO] == "large"
    assert attrs(otel.one("cascade.tier large"))[sc.CASCADE_TIER_OUTCOME] == "rejected"


async def test_every_provider_failed(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.default = Reply(status=503)
    async with otel.cascade(two_tiers(openai_server.url)) as c:
        with pytest.raises(AllProvidersFailed):
            await c.run(messages=USER)
    run = otel.one("cascade.run")
    assert attrs(run)[sc.ERROR_TYPE] == "AllProvidersFailed"
    (escalation,) = run.events
    assert attrs(escalation)[sc.CASCADE_ESCALATION_REASON] == "failed"
    assert attrs(otel.one("cascade.tier small"))[sc.CASCADE_TIER_OUTCOME] == "failed"


async def test_each_retry_is_a_span(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ma", Reply(status=503), Reply(status=503), ANSWER)
    retry = {"attempts": 3, "base_s": 0, "max_s": 0}
    cfg = {"tiers": [tier("t", provider("a", openai_server.url, "ma", retry=retry))]}
    async with otel.cascade(cfg) as c:
        result = await c.run(messages=USER)
    assert [a.outcome for a in result.attempts] == ["failed", "failed", "accepted"]
    chats = sorted((s for s in otel.spans() if s.name == "chat ma"), key=start)
    assert [attrs(s).get(sc.CASCADE_RETRY_COUNT) for s in chats] == [None, 1, 2]
    assert [attrs(s).get(sc.CASCADE_ATTEMPT_NUMBER) for s in chats] == [1, 2, 3]
    assert [s.status.status_code for s in chats] == [StatusCode.ERROR] * 2 + [StatusCode.UNSET]
    tier_span = otel.one("cascade.tier t")
    assert [attrs(s)[sc.CASCADE_RETRY_COUNT] for s in tier_span.events] == [1, 2]
    assert {e.name for e in tier_span.events} == {sc.EVENT_RETRY}
    for chat in chats:
        assert chat.parent is not None and chat.parent.span_id == tier_span.context.span_id


async def test_breaker_opening_and_open(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ma", Reply(status=500))
    openai_server.default = ANSWER
    url = openai_server.url
    a = provider("a", url, "ma", breaker={"fail_max": 1, "reset_timeout_s": 60})
    cfg = {"tiers": [tier("t", a, provider("b", url, "mb"))]}
    async with otel.cascade(cfg) as c:
        await c.run(messages=USER)
        opened = next(s for s in otel.spans() if s.name == "chat ma")
        (change,) = opened.events
        assert change.name == sc.EVENT_BREAKER
        assert attrs(change)[sc.CASCADE_BREAKER_TO] == "open"
        states = {
            p.attributes[sc.CASCADE_PROVIDER]: p.value for p in otel.points(sc.METRIC_BREAKER_STATE)
        }
        assert states == {"a": 2, "b": 0}
        otel.exporter.clear()
        result = await c.run(messages=USER)
    assert result.provider == "b"
    refused = otel.one("chat ma")
    assert attrs(refused)[sc.ERROR_TYPE] == "CircuitOpen"
    assert refused.status.status_code is StatusCode.ERROR


async def test_self_consistency_samples_are_sibling_spans(
    otel: OTel, openai_server: FakeOpenAIServer
) -> None:
    openai_server.default = "Reasoning... The answer is 7."
    small = tier(
        "small",
        provider("s", openai_server.url, "ms"),
        validators=[{"name": "self_consistency", "samples": 3, "min_agreement": 1.0}],
    )
    small["variants"] = [{"name": n, "system": f"variant {n}"} for n in "ABC"]
    async with otel.cascade({"tiers": [small]}) as c:
        result = await c.run(messages=USER)
    assert result.validated and len(result.attempts[0].samples) == 2
    assert otel.tree() == [
        (0, "cascade.run"),
        (1, "cascade.tier small"),
        (2, "chat ms"),
        (3, "chat ms"),
        (3, "chat ms"),
    ]
    chats = [s for s in otel.spans() if s.name == "chat ms"]
    first = next(s for s in chats if sc.CASCADE_SAMPLE not in attrs(s))
    samples = [s for s in chats if s is not first]
    assert sorted(attrs(s)[sc.CASCADE_SAMPLE] for s in samples) == [1, 2]
    assert sorted(attrs(s)[sc.CASCADE_VARIANT] for s in samples) == ["B", "C"]
    total = sum(attrs(s)[sc.CASCADE_COST_USD] for s in chats)
    assert total == pytest.approx(result.cost_usd)
    assert [e.name for e in first.events] == [sc.EVENT_VALIDATION]


async def test_hedge_loser_ends_cancelled(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.script("ma", Reply(text=ANSWER, latency_s=30))
    openai_server.script("mb", ANSWER)
    url = openai_server.url
    t = tier("t", provider("a", url, "ma", stream=True), provider("b", url, "mb", stream=True))
    t["hedge"] = {"after_s": 0.05}
    async with otel.cascade({"tiers": [t]}) as c:
        result = await c.run(messages=USER)
    assert result.provider == "b"
    loser, winner = otel.one("chat ma"), otel.one("chat mb")
    assert attrs(loser)[sc.CASCADE_HEDGE_CANCELLED] is True
    assert attrs(loser)[sc.CASCADE_OUTCOME] == "cancelled"
    assert loser.status.status_code is StatusCode.UNSET
    assert [e.name for e in loser.events] == [sc.EVENT_HEDGE_LOST]
    assert attrs(loser.events[0])[sc.CASCADE_HEDGE_WINNER] == "b"
    assert attrs(winner)[sc.CASCADE_HEDGE] is True and attrs(winner)[sc.CASCADE_VALIDATED]
    assert sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK in attrs(winner)  # streamed
    hedge = next(e for e in otel.one("cascade.tier t").events if e.name == sc.EVENT_HEDGE)
    assert attrs(hedge) == {sc.CASCADE_PROVIDER: "b", sc.CASCADE_HEDGE_DELAY_S: 0.05}
    assert len(otel.points(sc.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK)) == 1


async def test_deadline(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.default = Reply(text=ANSWER, latency_s=30)
    async with otel.cascade(two_tiers(openai_server.url)) as c:
        with pytest.raises(DeadlineExceeded):
            await c.run(messages=USER, deadline_s=0.1)
    assert attrs(otel.one("cascade.run"))[sc.ERROR_TYPE] == "DeadlineExceeded"
    assert attrs(otel.one("chat ms"))[sc.ERROR_TYPE] == "cancelled"


async def test_routing_record_per_run(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    from cascade import RequestOptions

    openai_server.script("ms", "nope")
    openai_server.script("ml", ANSWER)
    async with otel.cascade(two_tiers(openai_server.url)) as c:
        with capture_logs() as logs:
            result = await c.run(
                messages=USER, options=RequestOptions(metadata={"task_id": "q-17"})
            )
    (entry,) = [e for e in logs if e["event"] == "cascade.route"]
    run = otel.one("cascade.run")
    assert entry["trace_id"] == format(run.context.trace_id, "032x")
    assert entry["span_id"] == format(run.context.span_id, "016x")
    assert entry["task_id"] == "q-17" and entry["tier_path"] == ["small", "large"]
    assert entry["tier_name"] == "large" and entry["model"] == "ml"
    assert entry["cost_usd"] == result.cost_usd and entry["outcome"] == "accepted"
    assert entry["input_tokens"] == result.usage.input_tokens
    (reason,) = entry["escalations"]
    assert reason.startswith("small: rejected (json_schema: ")
    assert attrs(run)["cascade.metadata.task_id"] == "q-17"


async def test_a_broken_logging_setup_does_not_fail_the_run(
    otel: OTel,
    openai_server: FakeOpenAIServer,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cascade._telemetry import _spans

    def broken(logger: Any, method: str, event: Any) -> Any:
        raise RuntimeError("log sink down")

    monkeypatch.setattr(_spans, "_RECORD_FAILED", [])
    openai_server.default = ANSWER
    structlog.configure(processors=[broken])
    async with otel.cascade(two_tiers(openai_server.url)) as c:
        with caplog.at_level(logging.WARNING, logger="cascade"):
            first = await c.run(messages=USER)
            second = await c.run(messages=USER)
    assert first.text == second.text == ANSWER
    (warning,) = [r for r in caplog.records if r.name == "cascade"]  # said once
    assert "routing record" in warning.getMessage() and warning.exc_info is not None
    assert len([s for s in otel.spans() if s.name == "cascade.run"]) == 2  # ended


async def test_telemetry_off(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    openai_server.default = ANSWER
    async with otel.cascade(
        two_tiers(openai_server.url), environ={"CASCADE_TELEMETRY": "off"}
    ) as c:
        with capture_logs() as logs:
            await c.run(messages=USER)
    assert otel.spans() == [] and logs == []
    assert otel.points(sc.GEN_AI_CLIENT_OPERATION_DURATION) == []


async def test_no_api_key_in_anything_exported(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    # The server echoes the key in an error body; content capture is on; every outcome.
    openai_server.script("ma", Reply(status=401, error_message=f"invalid key {CANARY}"))
    openai_server.script("ms", "not JSON")
    openai_server.default = ANSWER
    url = openai_server.url
    cfg = {
        "tiers": [
            tier(
                "small",
                provider("a", url, "ma", api_key_env="K"),
                provider("s", url, "ms", api_key_env="K", headers={"X-Trace": "1"}),
                validators=[JSON_SCHEMA],
            ),
            tier("large", provider("l", url, "ml", api_key_env="K")),
        ]
    }
    async with otel.cascade(cfg, environ={"K": CANARY}, capture_content=True) as c:
        with capture_logs() as logs:
            result = await c.run(messages=USER)
    assert result.tier == 2
    assert all(CANARY in r.headers["authorization"] for r in openai_server.requests)
    spans = otel.spans()
    assert len(spans) == 6
    texts = [repr(logs)]
    for span in spans:
        texts += [span.name, repr(attrs(span)), str(span.status.description)]
        texts += [repr(attrs(e)) for e in span.events] + [repr(dict(span.resource.attributes))]
    assert any("invalid key" in t for t in texts)  # the echoed error is there, redacted
    assert not [t for t in texts if CANARY in t]
    assert sc.GEN_AI_INPUT_MESSAGES in attrs(otel.one("chat ml"))  # content was captured


@pytest.mark.parametrize("capture", [False, True])
async def test_a_rejected_answers_text_is_exported_only_with_content_capture(
    otel: OTel, openai_server: FakeOpenAIServer, capture: bool
) -> None:
    """json_schema quotes the value it rejects: with content capture off, the text of a
    rejected answer reaches no span, event, metric or log record (the reasons are reduced
    to the validator and "rejected"); with it on, the reasons carry it. Result.attempts
    keep the full reasons either way: they go to the caller."""
    secret = "Jane-Doe-SSN-123-45-6789"
    openai_server.script("ms", '{"answer": "' + secret + '"}')
    openai_server.script("ml", ANSWER)
    async with otel.cascade(two_tiers(openai_server.url), capture_content=capture) as c:
        with capture_logs() as logs:
            result = await c.run(messages=USER)
    assert result.tier == 2
    rejected = result.attempts[0]
    assert any(secret in v.reason for v in rejected.verdicts)  # the caller's copy is whole
    texts = [repr(logs), repr(otel.reader.get_metrics_data())]
    for span in otel.spans():
        texts += [repr(attrs(span)), str(span.status.description)]
        texts += [repr(attrs(e)) for e in span.events]
    leaked = [t for t in texts if secret in t]
    (verdict,) = otel.one("chat ms").events
    (escalation,) = otel.one("cascade.run").events
    (route,) = [e for e in logs if e["event"] == "cascade.route"]
    if capture:
        assert secret in attrs(verdict)[sc.CASCADE_VALIDATION_REASON]
        assert secret in attrs(escalation)[sc.CASCADE_ESCALATION_DETAIL]
        assert secret in route["escalations"][0]
    else:
        assert not leaked, leaked[0]
        assert attrs(verdict)[sc.CASCADE_VALIDATION_REASON] == "rejected"
        assert attrs(escalation)[sc.CASCADE_ESCALATION_DETAIL] == "json_schema: rejected"
        assert route["escalations"] == ["small: rejected (json_schema: rejected)"]


async def test_limiter_wait_is_visible(otel: OTel, openai_server: FakeOpenAIServer) -> None:
    import asyncio

    openai_server.default = Reply(text=ANSWER, latency_s=0.05)
    a = provider("a", openai_server.url, "ma", limits={"max_concurrency": 1})
    async with otel.cascade({"tiers": [tier("t", a)]}) as c:
        await asyncio.gather(c.run(messages=USER), c.run(messages=USER))
    events = [e for s in otel.spans() if s.name == "cascade.tier t" for e in s.events]
    assert [e.name for e in events] == [sc.EVENT_LIMITER_BUSY, sc.EVENT_LIMITER_WAIT]
    wait = attrs(events[1])
    assert wait[sc.CASCADE_LIMITER_OUTCOME] == "acquired" and wait[sc.CASCADE_LIMITER_WAIT_S] > 0
    (point,) = otel.points(sc.METRIC_LIMITER_WAIT)
    assert point.count == 1 and point.attributes[sc.CASCADE_PROVIDER] == "a"


def test_a_hedge_that_lost_is_not_the_tiers_escalation_reason() -> None:
    from cascade import Attempt
    from cascade.engine._core import tier_outcome as _tier_outcome

    common: dict[str, Any] = {"tier": 1, "tier_name": "t", "model": "m"}
    attempts = [
        Attempt(provider="a", outcome="cancelled", error_type="HedgeLost", error="lost", **common),
        Attempt(
            provider="b", outcome="failed", error_type="ProviderTimeout", error="slow", **common
        ),
    ]
    assert _tier_outcome(attempts, 0) == ("failed", "slow")


_CURRENT: list[Any] = []


@cascade.validator("test_current_span", replace=True)
class CurrentSpan:
    """Passes everything; records the span current while it validates."""

    def __init__(self) -> None:
        self.name = "current_span"

    async def validate(
        self, completion: cascade.Completion, context: cascade.ValidationContext
    ) -> cascade.Verdict:
        _CURRENT.append(trace.get_current_span().get_span_context())
        return cascade.Verdict(validator=self.name, passed=True)


@pytest.mark.parametrize("metrics", [False, True], ids=["nothing-else", "metrics-on"])
async def test_a_run_the_sampler_drops(
    otel: OTel, openai_server: FakeOpenAIServer, metrics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No span is exported, but the run's unsampled span is current under it (so an
    instrumented HTTP client inherits the decision), the caller's trace continues, and the
    metrics still count the call."""
    from cascade._telemetry import Telemetry

    made = []
    real_provider_info = Telemetry.provider_info

    def provider_info(self: Telemetry, tier: Any, provider: Any) -> Any:
        made.append(provider.name)
        return real_provider_info(self, tier, provider)

    monkeypatch.setattr(Telemetry, "provider_info", provider_info)
    openai_server.default = ANSWER
    provider_ = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider_.add_span_processor(SimpleSpanProcessor(otel.exporter))
    config = {"tiers": [tier("t", provider("s", openai_server.url, "m"))]}
    config["tiers"][0]["validators"] = [{"name": "test_current_span"}]
    _CURRENT.clear()
    async with Cascade.from_dict(
        config,
        tracer_provider=provider_,
        meter_provider=otel.meter_provider if metrics else None,
        environ={},
    ) as c:
        await c.run(messages=USER)
        assert trace.get_current_span() is trace.INVALID_SPAN  # detached again
        caller = NonRecordingSpan(SpanContext(0xABC, 0xDEF, is_remote=True))
        with trace.use_span(caller):
            await c.run(messages=USER)
    provider_.shutdown()
    assert otel.spans() == []
    first, second = _CURRENT
    assert first.is_valid and not first.trace_flags.sampled
    assert second.trace_id == 0xABC and second.span_id != 0xDEF  # the run's, in the caller's
    assert len(otel.points(sc.GEN_AI_CLIENT_OPERATION_DURATION)) == (1 if metrics else 0)
    # With nothing to record, the run skipped the metrics bookkeeping altogether.
    assert made == (["s"] if metrics else [])


@pytest.mark.parametrize("via", VIAS)
async def test_call_spans_are_the_attempt_records(
    otel: OTel, openai_server: FakeOpenAIServer, via: str
) -> None:
    # A failure, a retried failure, a rejection and an acceptance: each call's span is
    # ended from its AttemptFinished record, so it says what the Result's attempt says,
    # however the run is read.
    url = openai_server.url
    openai_server.script("ma", Reply(status=503))
    openai_server.script("mb", Reply(status=500), "Sure! The answer is 42.")
    openai_server.script("ml", ANSWER)
    retry = {"attempts": 2, "base_s": 0.0}
    cfg = {
        "tiers": [
            tier(
                "small",
                provider("a", url, "ma"),
                provider("b", url, "mb", retry=retry),
                validators=[JSON_SCHEMA],
            ),
            tier("large", provider("l", url, "ml")),
        ]
    }
    async with otel.cascade(cfg) as c:
        result = await answer(c, via)
    calls = sorted((s for s in otel.spans() if s.name.startswith("chat ")), key=start)
    assert [s.name for s in calls] == ["chat ma", "chat mb", "chat mb", "chat ml"]
    assert len(calls) == len(result.attempts)
    for span, attempt in zip(calls, result.attempts, strict=True):
        a = attrs(span)
        assert a[sc.CASCADE_OUTCOME] == attempt.outcome
        assert a[sc.CASCADE_PROVIDER] == attempt.provider
        if attempt.outcome == "failed":
            assert a[sc.ERROR_TYPE] == attempt.error_type
            assert span.status.description == attempt.error
        else:
            assert attempt.completion is not None
            assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == attempt.completion.input_tokens
            assert a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == attempt.completion.output_tokens
            assert a[sc.CASCADE_COST_USD] == pytest.approx(attempt.cost_usd)
            assert [attrs(e)[sc.CASCADE_VALIDATION_PASSED] for e in span.events] == [
                v.passed for v in attempt.verdicts
            ]
    assert [a.outcome for a in result.attempts] == ["failed", "failed", "rejected", "accepted"]


@cascade.router("test_two_votes", replace=True)
class TwoVotes:
    """A router asking the same provider two questions at once (``RouteRequest.complete``
    in tasks of its own, as ``asyncio.gather`` runs them)."""

    def __init__(self) -> None:
        self.name = "two_votes"

    async def route(self, request: cascade.RouteRequest) -> cascade.RouteDecision:
        import asyncio

        assert request.complete is not None
        await asyncio.gather(
            *(
                request.complete("small-a", [cascade.Message(role="user", content=question)])
                for question in ("slow", "fast")
            )
        )
        return cascade.RouteDecision(start_tier=1, router=self.name)


async def test_a_routers_concurrent_calls_each_get_their_own_span(
    otel: OTel, openai_server: FakeOpenAIServer
) -> None:
    """Two calls of the router at once to one provider, the first answering last: each
    call's span is ended with its own attempt (the answer to the question it asked), both
    under the router's tier span, and no context is detached in a task that did not
    attach it (the fixture checks the SDK logged nothing)."""
    replies = {"slow": Reply(text="1", latency_s=0.2), "fast": "22 22 22"}  # latency orders

    def respond(request: Any) -> Reply | str:
        content = request.messages[-1]["content"]
        return replies.get(content, ANSWER)

    openai_server.respond("m1", respond)
    config = {
        "tiers": [tier("small", provider("small-a", openai_server.url, "m1"))],
        "router": {"kind": "test_two_votes"},
    }
    async with otel.cascade(config, capture_content=True) as c:
        result = await c.run(messages=USER)
    router_attempts = [a for a in result.attempts if a.tier_name == "router"]
    assert len(router_attempts) == 2
    router_tier = otel.one("cascade.tier router")
    calls = [s for s in otel.spans() if s.name == "chat m1" and s.parent is not None]
    under = [s for s in calls if s.parent.span_id == router_tier.context.span_id]  # type: ignore[union-attr]
    assert len(under) == 2
    for span in under:
        asked = attrs(span)[sc.GEN_AI_INPUT_MESSAGES]  # set at its start, from its request
        answered = attrs(span)[sc.GEN_AI_OUTPUT_MESSAGES]  # at its end, from an attempt
        expected = "22 22 22" if '"fast"' in asked else '"1"'
        assert expected in answered, (asked, answered)


async def test_the_jaeger_readme_tree_names_each_attribute_on_its_own_span(
    otel: OTel, openai_server: FakeOpenAIServer
) -> None:
    """examples/jaeger/README.md draws an escalated trace span by span: each attribute it
    lists under a span is one an escalated run puts on that kind of span (run, tier, call),
    not on another."""
    from pathlib import Path

    readme = Path(__file__).parent.parent / "examples" / "jaeger" / "README.md"
    block = readme.read_text().split("```text\n", 1)[1].split("```", 1)[0]
    drawn: dict[str, set[str]] = {"run": set(), "tier": set(), "chat": set()}
    kind = ""
    for line in block.splitlines():
        text = line.lstrip("│├└─ ")
        for prefix, name in (("cascade.run ", "run"), ("cascade.tier ", "tier"), ("chat ", "chat")):
            if text.startswith(prefix):
                kind = name
        if "event " in text or text.startswith(("detail =", "reason =")):
            continue  # an event's attributes
        drawn[kind] |= set(re.findall(r"((?:cascade|gen_ai|server)\.[a-z_.]+) = ", text))
    openai_server.script("ms", "prose")
    openai_server.script("ml", ANSWER)
    config = {
        "tiers": [
            tier(
                "cheap",
                provider("mini", openai_server.url, "ms", max_tokens=200),
                validators=[JSON_SCHEMA],
            ),
            tier("strong", provider("big", openai_server.url, "ml")),
        ]
    }
    async with otel.cascade(config) as c:
        await c.run(messages=USER, options=cascade.RequestOptions(metadata={"task_id": "inv-17"}))
    emitted: dict[str, set[str]] = {"run": set(), "tier": set(), "chat": set()}
    for span in otel.spans():
        name = "run" if span.name == "cascade.run" else span.name.split()[0].split(".")[-1]
        emitted[name] |= set(attrs(span))
    for name, keys in drawn.items():
        assert keys, name  # the block was read
        assert keys <= emitted[name], (name, sorted(keys - emitted[name]))
