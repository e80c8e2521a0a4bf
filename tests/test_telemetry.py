"""The telemetry module on its own: spans, events, metrics and the routing record that the
engine's hooks produce, against the SDK's in-memory exporter and reader."""

from __future__ import annotations

import asyncio
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
from opentelemetry.trace import SpanKind, StatusCode
from structlog.testing import capture_logs

import cascade
from cascade import Attempt, Completion, ProviderConfig, RequestOptions, Verdict
from cascade._errors import CascadeExhausted, ProviderTimeout
from cascade._telemetry import Telemetry, add_trace_ids
from cascade._telemetry import _semconv as sc
from cascade._telemetry._metrics import instruments_for
from cascade._types import Message
from cascade.resilience import CircuitOpen

from .helpers import in_tier

MSGS = (Message(role="user", content="What is 6 * 7?"),)
OPTS = RequestOptions(max_tokens=64, temperature=0.2, metadata={"task_id": "t-1"})


@dataclass(frozen=True)
class FakeTier:
    index: int
    name: str


@dataclass(frozen=True)
class FakeProvider:
    name: str
    model: str
    config: ProviderConfig


def provider(name: str, model: str, url: str = "http://127.0.0.1:8080/v1") -> FakeProvider:
    config = ProviderConfig(
        name=name,
        kind="openai",
        base_url=url,
        model=model,
        input_cost_per_mtok=1.0,
        output_cost_per_mtok=2.0,
        stream=True,
    )
    return FakeProvider(name, model, config)


def completion(model: str, text: str = '{"answer": 42}', ttft: float | None = None) -> Completion:
    return Completion(
        text=text,
        provider="p",
        model=model,
        finish_reason="stop",
        input_tokens=10,
        output_tokens=5,
        latency_s=0.05,
        ttft_s=ttft,
    )


def record(tier: FakeTier, p: FakeProvider, outcome: str, **kw: Any) -> Attempt:
    return Attempt(
        tier=tier.index,
        tier_name=tier.name,
        provider=p.name,
        model=p.model,
        outcome=outcome,  # type: ignore[arg-type]
        **kw,
    )


@dataclass
class OTel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def telemetry(self, **kw: Any) -> Telemetry:
        return Telemetry(
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            environ=kw.pop("environ", {}),
            **kw,
        )

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        if data is None:
            return found
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    if m.name == name:
                        found.extend(m.data.data_points)
        return found


@pytest.fixture
def otel() -> Iterator[OTel]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield OTel(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {s.name: s for s in spans}


def test_one_tier_accepted_span_tree(otel: OTel) -> None:
    tel = otel.telemetry()
    tier, p = FakeTier(1, "cheap"), provider("small", "gpt-mini")
    attempts: list[Attempt] = []
    with tel.run(attempts, OPTS, max_cost_usd=0.5) as run, in_tier(run, tier) as tt:
        at = tt.attempt(p, MSGS, OPTS)
        at.completed(completion("gpt-mini-2025", ttft=0.01))
        verdict = Verdict(validator="json_schema", passed=True, score=1.0, reason="ok")
        at.judged((verdict,), True)
        attempts.append(record(tier, p, "accepted", verdicts=(verdict,), cost_usd=2e-5))
    spans = by_name(otel.finished())
    assert set(spans) == {"cascade.run", "cascade.tier cheap", "chat gpt-mini"}
    run_span, tier_span, chat = (
        spans["cascade.run"],
        spans["cascade.tier cheap"],
        spans["chat gpt-mini"],
    )
    assert run_span.parent is None and run_span.kind is SpanKind.INTERNAL
    assert tier_span.parent is not None and tier_span.parent.span_id == run_span.context.span_id
    assert chat.parent is not None and chat.parent.span_id == tier_span.context.span_id
    assert chat.kind is SpanKind.CLIENT
    a = dict(chat.attributes or {})
    assert a[sc.GEN_AI_OPERATION_NAME] == "chat"
    assert a[sc.GEN_AI_PROVIDER_NAME] == "openai"
    assert a[sc.GEN_AI_REQUEST_MODEL] == "gpt-mini"
    assert a[sc.GEN_AI_RESPONSE_MODEL] == "gpt-mini-2025"
    assert a[sc.GEN_AI_USAGE_INPUT_TOKENS] == 10 and a[sc.GEN_AI_USAGE_OUTPUT_TOKENS] == 5
    assert a[sc.GEN_AI_RESPONSE_FINISH_REASONS] == ("stop",)
    assert a[sc.GEN_AI_REQUEST_MAX_TOKENS] == 64 and a[sc.GEN_AI_REQUEST_TEMPERATURE] == 0.2
    assert sc.GEN_AI_REQUEST_STOP_SEQUENCES not in a and sc.GEN_AI_REQUEST_SEED not in a
    assert a[sc.SERVER_ADDRESS] == "127.0.0.1" and a[sc.SERVER_PORT] == 8080
    assert sc.CASCADE_TIER_NAME not in a and sc.CASCADE_TIER_INDEX not in a  # the parent's
    t = dict(tier_span.attributes or {})
    assert t[sc.CASCADE_TIER_NAME] == "cheap" and t[sc.CASCADE_TIER_INDEX] == 1
    assert a[sc.CASCADE_ATTEMPT_NUMBER] == 1 and a[sc.CASCADE_PROVIDER] == "small"
    assert a[sc.CASCADE_COST_USD] == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
    assert a[sc.CASCADE_VALIDATED] is True and a[sc.CASCADE_OUTCOME] == "accepted"
    assert a[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] == 0.01
    assert sc.GEN_AI_INPUT_MESSAGES not in a and sc.GEN_AI_OUTPUT_MESSAGES not in a
    (event,) = chat.events
    assert event.name == sc.EVENT_VALIDATION
    assert dict(event.attributes or {}) == {
        sc.CASCADE_VALIDATION_VALIDATOR: "json_schema",
        sc.CASCADE_VALIDATION_PASSED: True,
        sc.CASCADE_VALIDATION_SCORE: 1.0,
        sc.CASCADE_VALIDATION_REASON: "passed",  # content capture is off: no reasons
    }
    assert dict(tier_span.attributes or {})[sc.CASCADE_TIER_OUTCOME] == "accepted"
    r = dict(run_span.attributes or {})
    assert r[sc.CASCADE_MAX_COST_USD] == 0.5 and r["cascade.metadata.task_id"] == "t-1"
    assert run_span.status.status_code is StatusCode.UNSET


def test_stop_sequences_and_seed_when_set(otel: OTel) -> None:
    tel = otel.telemetry()
    opts = RequestOptions(stop=("\n\n", "END"), seed=7)
    with tel.run([], opts) as run, in_tier(run, FakeTier(1, "cheap")) as tt:
        tt.attempt(provider("small", "gpt-mini"), MSGS, opts).end()
    a = by_name(otel.finished())["chat gpt-mini"].attributes or {}
    assert a[sc.GEN_AI_REQUEST_STOP_SEQUENCES] == ("\n\n", "END")
    assert a[sc.GEN_AI_REQUEST_SEED] == 7


def test_metrics_of_a_call(otel: OTel) -> None:
    tel = otel.telemetry()
    tier, p = FakeTier(1, "cheap"), provider("small", "gpt-mini")
    attempts: list[Attempt] = []
    with tel.run(attempts, OPTS) as run, in_tier(run, tier) as tt:
        at = tt.attempt(p, MSGS, OPTS)
        at.completed(completion("gpt-mini", ttft=0.01))
        at.judged((), True)
        attempts.append(record(tier, p, "accepted"))
    (duration,) = otel.points(sc.GEN_AI_CLIENT_OPERATION_DURATION)
    assert duration.count == 1 and duration.sum == pytest.approx(0.05)
    assert dict(duration.attributes) == {
        sc.GEN_AI_OPERATION_NAME: "chat",
        sc.GEN_AI_PROVIDER_NAME: "openai",
        sc.GEN_AI_REQUEST_MODEL: "gpt-mini",
        sc.GEN_AI_RESPONSE_MODEL: "gpt-mini",
        sc.SERVER_ADDRESS: "127.0.0.1",
        sc.SERVER_PORT: 8080,
    }
    tokens = {
        p.attributes[sc.GEN_AI_TOKEN_TYPE]: p.sum for p in otel.points(sc.GEN_AI_CLIENT_TOKEN_USAGE)
    }
    assert tokens == {"input": 10, "output": 5}
    (ttft,) = otel.points(sc.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK)
    assert ttft.sum == pytest.approx(0.01)
    (cost,) = otel.points(sc.METRIC_COST)
    assert cost.value == pytest.approx(2e-5)
    assert dict(cost.attributes) == {
        sc.CASCADE_TIER_NAME: "cheap",
        sc.CASCADE_PROVIDER: "small",
        sc.GEN_AI_REQUEST_MODEL: "gpt-mini",
    }
    assert otel.points(sc.METRIC_ESCALATIONS) == []


def test_escalation_event_and_metric(otel: OTel) -> None:
    tel = otel.telemetry()
    cheap, big = FakeTier(1, "cheap"), FakeTier(2, "big")
    small, large = provider("small", "m-small"), provider("large", "m-large")
    attempts: list[Attempt] = []
    bad = Verdict(validator="json_schema", passed=False, score=0.0, reason="not JSON")
    with tel.run(attempts, OPTS) as run:
        with in_tier(run, cheap) as tt:
            at = tt.attempt(small, MSGS, OPTS)
            at.completed(completion("m-small", text="hmm"))
            at.judged((bad,), False)
            attempts.append(record(cheap, small, "rejected", verdicts=(bad,)))
        with in_tier(run, big) as tt:
            at = tt.attempt(large, MSGS, OPTS)
            at.completed(completion("m-large"))
            at.judged((), True)
            attempts.append(record(big, large, "accepted"))
    spans = by_name(otel.finished())
    (event,) = spans["cascade.run"].events
    assert event.name == sc.EVENT_ESCALATION
    assert dict(event.attributes or {}) == {
        sc.CASCADE_ESCALATION_FROM: "cheap",
        sc.CASCADE_ESCALATION_TO: "big",
        sc.CASCADE_ESCALATION_REASON: "rejected",
        sc.CASCADE_ESCALATION_DETAIL: "json_schema: rejected",  # no reason, capture off
    }
    rejected = dict(spans["chat m-small"].attributes or {})
    assert rejected[sc.CASCADE_VALIDATED] is False and rejected[sc.CASCADE_OUTCOME] == "rejected"
    assert dict(spans["chat m-large"].attributes or {})[sc.CASCADE_ATTEMPT_NUMBER] == 2
    assert dict(spans["cascade.tier cheap"].attributes or {})[sc.CASCADE_TIER_OUTCOME] == "rejected"
    (esc,) = otel.points(sc.METRIC_ESCALATIONS)
    assert esc.value == 1
    assert dict(esc.attributes) == {
        sc.CASCADE_TIER_NAME: "cheap",
        sc.CASCADE_ESCALATION_REASON: "rejected",
    }


def test_failed_call_and_an_open_breaker(otel: OTel) -> None:
    tel = otel.telemetry()
    tier, p, q = FakeTier(1, "cheap"), provider("a", "m-a"), provider("b", "m-b")
    attempts: list[Attempt] = []
    with tel.run(attempts, OPTS) as run, in_tier(run, tier) as tt:
        at = tt.attempt(p, MSGS, OPTS)
        exc = ProviderTimeout("timed out", provider="a", model="m-a")
        at.failed(exc)
        tt.retry("a", exc, 0.25, retry=1)
        attempts.append(record(tier, p, "failed", error_type="ProviderTimeout"))
        at = tt.attempt(p, MSGS, OPTS, retry=1)
        at.failed(CircuitOpen(provider="a", retry_in_s=3.0))
        attempts.append(record(tier, p, "failed", error_type="CircuitOpen"))
        at = tt.attempt(q, MSGS, OPTS)
        at.completed(completion("m-b"))
        at.judged((), True)
        attempts.append(record(tier, q, "accepted"))
    chats = [s for s in otel.finished() if s.name.startswith("chat")]
    first, second, third = chats
    assert first.status.status_code is StatusCode.ERROR
    assert first.status.description == "a (m-a): timed out"
    assert dict(first.attributes or {})[sc.ERROR_TYPE] == "ProviderTimeout"
    assert dict(second.attributes or {})[sc.ERROR_TYPE] == "CircuitOpen"
    assert dict(second.attributes or {})[sc.CASCADE_RETRY_COUNT] == 1
    assert sc.ERROR_TYPE not in dict(third.attributes or {})
    tier_span = by_name(otel.finished())["cascade.tier cheap"]
    (retry,) = tier_span.events
    assert retry.name == sc.EVENT_RETRY
    assert dict(retry.attributes or {})[sc.CASCADE_RETRY_WAIT_S] == 0.25
    # The open breaker sent nothing: it has no duration; the timeout has one, with error.type.
    errors = [
        d.attributes.get(sc.ERROR_TYPE) for d in otel.points(sc.GEN_AI_CLIENT_OPERATION_DURATION)
    ]
    assert sorted(map(str, errors)) == ["None", "ProviderTimeout"]


def test_failed_run_sets_error_status(otel: OTel) -> None:
    tel = otel.telemetry()
    tier, p = FakeTier(1, "only"), provider("a", "m-a")
    attempts: list[Attempt] = []

    def go() -> None:
        with tel.run(attempts, OPTS) as run:
            with in_tier(run, tier) as tt:
                at = tt.attempt(p, MSGS, OPTS)
                at.completed(completion("m-a"))
                at.judged((), False)
                attempts.append(record(tier, p, "rejected", cost_usd=0.001))
            raise CascadeExhausted("no answer passed validation", attempts=attempts)

    with pytest.raises(CascadeExhausted):
        go()
    run_span = by_name(otel.finished())["cascade.run"]
    assert run_span.status.status_code is StatusCode.ERROR
    a = dict(run_span.attributes or {})
    assert a[sc.ERROR_TYPE] == "CascadeExhausted" and a[sc.CASCADE_OUTCOME] == "error"
    assert a[sc.CASCADE_TIER_PATH] == ("only",) and a[sc.CASCADE_COST_USD] == 0.001
    assert run_span.events == ()  # the last tier rejecting is no escalation
    assert otel.points(sc.METRIC_ESCALATIONS) == []


@pytest.mark.anyio
async def test_samples_are_sibling_children_of_the_attempt(otel: OTel) -> None:
    tel = otel.telemetry()
    tier, p = FakeTier(1, "cheap"), provider("a", "m-a")
    attempts: list[Attempt] = []

    async def draw(at: Any, k: int) -> None:
        s = at.sample(k, MSGS, OPTS)
        await asyncio.sleep(0)
        s.completed(completion("m-a"))
        s.end()

    with tel.run(attempts, OPTS) as run, in_tier(run, tier) as tt:
        at = tt.attempt(p, MSGS, OPTS)
        at.completed(completion("m-a"))
        await asyncio.gather(draw(at, 1), draw(at, 2))
        at.judged((), True)
        attempts.append(record(tier, p, "accepted"))
    chats = [s for s in otel.finished() if s.name == "chat m-a"]
    first = next(s for s in chats if sc.CASCADE_SAMPLE not in (s.attributes or {}))
    samples = [s for s in chats if s is not first]
    assert sorted(dict(s.attributes or {})[sc.CASCADE_SAMPLE] for s in samples) == [1, 2]
    for s in samples:
        assert s.parent is not None and s.parent.span_id == first.context.span_id
        assert s.kind is SpanKind.CLIENT


def test_limiter_hedge_and_breaker_events(otel: OTel) -> None:
    tel = otel.telemetry()
    tier, p = FakeTier(1, "cheap"), provider("a", "m-a")
    attempts: list[Attempt] = []
    with tel.run(attempts, OPTS) as run, in_tier(run, tier) as tt:
        tt.limiter_busy("a")
        tt.limiter_wait("a", 0.5, acquired=True)
        tt.hedge("a", 0.2)
        at = tt.attempt(p, MSGS, OPTS)
        tel.on_breaker_change("a", "closed", "open")  # on the span under way: the attempt
        at.lost("b")
        at.failed(asyncio.CancelledError())
    spans = by_name(otel.finished())
    names = [e.name for e in spans["cascade.tier cheap"].events]
    assert names == [sc.EVENT_LIMITER_BUSY, sc.EVENT_LIMITER_WAIT, sc.EVENT_HEDGE]
    chat = spans["chat m-a"]
    assert [e.name for e in chat.events] == [sc.EVENT_BREAKER, sc.EVENT_HEDGE_LOST]
    assert dict(chat.events[0].attributes or {})[sc.CASCADE_BREAKER_TO] == "open"
    assert dict(chat.events[1].attributes or {}) == {sc.CASCADE_HEDGE_WINNER: "b"}
    chat_attrs = dict(chat.attributes or {})
    assert chat_attrs[sc.CASCADE_HEDGE_CANCELLED] is True
    assert chat_attrs[sc.CASCADE_OUTCOME] == "cancelled" and sc.ERROR_TYPE not in chat_attrs
    assert chat.status.status_code is StatusCode.UNSET  # losing a race is no error
    (wait,) = otel.points(sc.METRIC_LIMITER_WAIT)
    assert wait.sum == 0.5 and dict(wait.attributes)[sc.CASCADE_LIMITER_OUTCOME] == "acquired"


def test_breaker_state_gauge(otel: OTel) -> None:
    @dataclass
    class B:
        state: str

    tel = otel.telemetry()
    tel.watch_breakers({"a": B("closed"), "b": B("open"), "c": B("half_open")})
    values = {
        p.attributes[sc.CASCADE_PROVIDER]: p.value for p in otel.points(sc.METRIC_BREAKER_STATE)
    }
    assert values == {"a": 0, "b": 2, "c": 1}


def test_content_is_captured_only_when_asked(otel: OTel) -> None:
    tier, p = FakeTier(1, "cheap"), provider("a", "m-a")
    for tel, captured in (
        (otel.telemetry(), False),
        (otel.telemetry(capture_content=True), True),
        (otel.telemetry(environ={sc.ENV_CAPTURE_CONTENT: "true"}), True),
        (otel.telemetry(environ={sc.ENV_CAPTURE_CONTENT: "true"}, capture_content=False), False),
    ):
        otel.spans.clear()
        with tel.run([], OPTS) as run, in_tier(run, tier) as tt:
            at = tt.attempt(p, MSGS, OPTS)
            at.completed(completion("m-a"))
            at.judged((), True)
        chat = by_name(otel.finished())["chat m-a"]
        a = dict(chat.attributes or {})
        assert (sc.GEN_AI_INPUT_MESSAGES in a) is captured
        if captured:
            assert a[sc.GEN_AI_INPUT_MESSAGES] == (
                '[{"role":"user","parts":[{"type":"text","content":"What is 6 * 7?"}]}]'
            )
            assert '"finish_reason":"stop"' in a[sc.GEN_AI_OUTPUT_MESSAGES]


def test_server_address_never_carries_credentials(otel: OTel) -> None:
    tel = otel.telemetry()
    tier = FakeTier(1, "t")
    cases = {
        "https://api.example.com/v1": ("api.example.com", 443),
        "http://user:sk-canary@10.0.0.2:9000/v1?api-key=sk-canary": ("10.0.0.2", 9000),
        "http://localhost/v1": ("localhost", 80),
    }
    for i, (url, (host, port)) in enumerate(cases.items()):
        info = tel.provider_info(tier, provider(f"p{i}", "m", url=url))
        assert info.span_attrs[sc.SERVER_ADDRESS] == host
        assert info.span_attrs[sc.SERVER_PORT] == port
        assert "sk-canary" not in repr(info.span_attrs)


def test_not_recording_records_metrics_only(otel: OTel) -> None:
    tel = Telemetry(
        tracer_provider=trace.NoOpTracerProvider(), meter_provider=otel.meter_provider, environ={}
    )
    tier, p = FakeTier(1, "cheap"), provider("a", "m-a")
    with tel.run([], OPTS) as run, in_tier(run, tier) as tt:
        assert run.span is None and tt.span is None
        at = tt.attempt(p, MSGS, OPTS)
        assert at.span is None
        at.completed(completion("m-a"))
        at.judged((), True)
    assert otel.finished() == []
    assert len(otel.points(sc.GEN_AI_CLIENT_OPERATION_DURATION)) == 1


def test_telemetry_off(otel: OTel) -> None:
    tel = otel.telemetry(environ={sc.ENV_TELEMETRY: "off"})
    assert not tel.enabled and repr(tel) == "<Telemetry off>"
    tier, p = FakeTier(1, "cheap"), provider("a", "m-a")
    with capture_logs() as logs, tel.run([], OPTS) as run, in_tier(run, tier) as tt:
        at = tt.attempt(p, MSGS, OPTS)
        at.completed(completion("m-a"))
        at.judged((), True)
    assert otel.finished() == [] and logs == []
    assert otel.points(sc.GEN_AI_CLIENT_OPERATION_DURATION) == []


def test_instruments_are_made_once_per_meter_provider(otel: OTel) -> None:
    version = cascade.__version__
    first = instruments_for(otel.meter_provider, version)
    assert instruments_for(otel.meter_provider, version) is first
    assert instruments_for(None, version) is instruments_for(None, version)
    assert instruments_for(MeterProvider(), version) is not first


def test_routing_record_carries_the_trace_ids(otel: OTel) -> None:
    from cascade import Result, Usage

    tel = otel.telemetry()
    cheap, big = FakeTier(1, "cheap"), FakeTier(2, "big")
    small, large = provider("small", "m-small"), provider("large", "m-large")
    attempts: list[Attempt] = []
    with capture_logs() as logs, tel.run(attempts, OPTS) as run:
        with in_tier(run, cheap):
            attempts.append(record(cheap, small, "failed", error="boom", error_type="X"))
        with in_tier(run, big):
            attempts.append(record(big, large, "accepted", cost_usd=0.25))
        result = Result(
            text="42",
            parsed=None,
            tier=2,
            tier_name="big",
            provider="large",
            model="m-large",
            cost_usd=0.25,
            usage=Usage(input_tokens=7, output_tokens=3),
            latency_s=0.1,
            attempts=tuple(attempts),
            validated=True,
        )
        run.observe(cascade.Finished(result=result))
    (entry,) = logs
    ctx = by_name(otel.finished())["cascade.run"].context
    assert entry["event"] == "cascade.route" and entry["log_level"] == "info"
    assert entry["trace_id"] == format(ctx.trace_id, "032x")
    assert entry["span_id"] == format(ctx.span_id, "016x")
    assert entry["task_id"] == "t-1" and entry["tier_path"] == ["cheap", "big"]
    assert entry["escalations"] == ["cheap: failed (boom)"]
    assert entry["model"] == "m-large" and entry["cost_usd"] == 0.25
    assert entry["input_tokens"] == 7 and entry["output_tokens"] == 3


def test_add_trace_ids_processor(otel: OTel) -> None:
    tracer = otel.tracer_provider.get_tracer("t")
    with tracer.start_as_current_span("outer") as span:
        event = add_trace_ids(None, "info", {"event": "x"})
    assert event["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert add_trace_ids(None, "info", {"event": "y"}) == {"event": "y"}  # no span: no ids


def test_no_routing_record_when_structlog_is_not_configured(
    otel: OTel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(structlog, "is_configured", lambda: False)
    seen: list[Any] = []
    monkeypatch.setattr("cascade._telemetry._logs.log", type("L", (), {"info": seen.append}))
    with otel.telemetry().run([], OPTS):
        pass
    assert seen == []


def test_an_sdk_configured_after_the_cascade_is_built_is_used() -> None:
    # The global tracer provider can be set once per process: in a child process.
    code = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from cascade import RequestOptions
from cascade._telemetry import NOOP_TIER, Telemetry

class Tier:
    index, name = 1, "t"

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

tel = Telemetry(environ={})  # the global API, nothing configured yet
with tel.run([], RequestOptions()) as run:
    assert run.span is None
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
with tel.run([], RequestOptions()) as run:  # metrics only: no span, but escalations count
    tier = run.tier(Tier())
    assert run.span is None and tier is not NOOP_TIER
    tier.end("none")
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with tel.run([], RequestOptions()) as run:
    assert run.span is not None
print([s.name for s in exporter.get_finished_spans()])
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['cascade.run']"
