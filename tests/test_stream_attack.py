"""A reader that leaves a stream at its last event, in every way a caller can: the run
past ``Finished`` is only bookkeeping (its span, its routing record), which neither a
cancellation from outside nor the reader's own cancel scope may lose or turn into an
error, and which leaves nothing behind."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from structlog.testing import capture_logs

from cascade import Cascade, Failed, Finished
from cascade.testing import FakeOpenAIServer, Reply

from .helpers import USER
from .leaks import eventually, in_use, nothing_left, other_tasks
from .test_stream import ANSWER, two_tiers

pytestmark = pytest.mark.anyio


@pytest.fixture
def exporter(caplog: pytest.LogCaptureFixture) -> Iterator[tuple[InMemorySpanExporter, Any]]:
    spans = InMemorySpanExporter()
    provider_ = TracerProvider()
    provider_.add_span_processor(SimpleSpanProcessor(spans))
    with caplog.at_level(logging.WARNING, logger="opentelemetry"):
        yield spans, provider_
    assert [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")] == []
    provider_.shutdown()


def run_span(spans: InMemorySpanExporter) -> Any:
    (span,) = [s for s in spans.get_finished_spans() if s.name == "cascade.run"]
    return span


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_a_run_cancelled_from_outside_after_its_finished_event_still_answered(
    openai_server: FakeOpenAIServer,
    exporter: tuple[InMemorySpanExporter, Any],
    mode: str,
) -> None:
    """The reader has the result; a cancellation reaching the run in the loop turn it
    yields after ``Finished`` (a task group torn down, a loop shutting down) must not end
    its span in ERROR, drop its routing record, or record a cancelled attempt."""
    spans, tracer_provider = exporter
    openai_server.script("m1", Reply(text=ANSWER))
    baseline = asyncio.all_tasks()
    async with Cascade.from_dict(
        two_tiers(openai_server.url), tracer_provider=tracer_provider, environ={}
    ) as c:
        with capture_logs() as logs:
            async with c.stream(messages=USER, mode=mode) as stream:  # type: ignore[arg-type]
                async for event in stream:
                    if isinstance(event, Finished):
                        task = stream._task
                        assert task is not None
                        assert not task.done()  # it yielded one turn after Finished
                        task.cancel()
                        break
        assert [a.outcome for a in stream.attempts] == ["accepted"]
        records = [e for e in logs if e["event"] == "cascade.route"]
        assert len(records) == 1
        assert records[0]["outcome"] == "accepted"
        span = run_span(spans)
        assert span.status.status_code is StatusCode.OK
        assert span.attributes["cascade.outcome"] == "accepted"
        assert in_use(c) == 0
    await nothing_left(baseline, openai_server)


async def test_a_reader_whose_scope_is_cancelled_as_it_leaves_after_finished(
    openai_server: FakeOpenAIServer, exporter: tuple[InMemorySpanExporter, Any]
) -> None:
    """The reader's own cancel scope fires while leaving waits for the run's record: the
    leaving ends (no hang), the scope is honoured, the record and span are whole."""
    spans, tracer_provider = exporter
    openai_server.script("m1", Reply(text=ANSWER))
    baseline = asyncio.all_tasks()
    async with Cascade.from_dict(
        two_tiers(openai_server.url), tracer_provider=tracer_provider, environ={}
    ) as c:
        with capture_logs() as logs:
            with anyio.fail_after(10):  # a hang fails here, not in the suite's timeout
                with anyio.CancelScope() as scope:
                    async with c.stream(messages=USER) as stream:
                        async for event in stream:
                            if isinstance(event, Finished):
                                scope.cancel()  # delivered as the block is left
                                break
                    pytest.fail("the cancel scope was not honoured")  # pragma: no cover
            assert scope.cancelled_caught
        records = [e for e in logs if e["event"] == "cascade.route"]
        assert [r["outcome"] for r in records] == ["accepted"]
        assert run_span(spans).status.status_code is StatusCode.OK
        assert [a.outcome for a in stream.attempts] == ["accepted"]
    await nothing_left(baseline, openai_server)


async def test_a_reader_that_leaves_at_failed_sees_the_run_recorded_as_an_error(
    openai_server: FakeOpenAIServer, exporter: tuple[InMemorySpanExporter, Any]
) -> None:
    spans, tracer_provider = exporter
    openai_server.script("m1", Reply(status=500))
    openai_server.script("m2", Reply(status=500))
    baseline = asyncio.all_tasks()
    config = two_tiers(openai_server.url)
    async with Cascade.from_dict(config, tracer_provider=tracer_provider, environ={}) as c:
        with capture_logs() as logs:
            async with c.stream(messages=USER) as stream:
                async for event in stream:
                    if isinstance(event, Failed):
                        break
                else:  # pragma: no cover
                    pytest.fail("no Failed event")
        records = [e for e in logs if e["event"] == "cascade.route"]
        assert [r["outcome"] for r in records] == ["error"]
        assert run_span(spans).status.status_code is StatusCode.ERROR
        assert {a.outcome for a in stream.attempts} == {"failed"}
        await eventually(lambda: in_use(c) == 0, "connections returned")
    await nothing_left(baseline, openai_server)
    assert not other_tasks(baseline)


@pytest.mark.parametrize("via", ["run", "stream"])
async def test_metrics_without_a_tracer_still_hear_every_call_and_escalation(
    openai_server: FakeOpenAIServer, via: str
) -> None:
    """A meter provider and no tracer (none given, none set globally): the run has a
    listener, so the events the metrics come from are built, for ``run()`` as for a
    stream."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    openai_server.script("m1", "not json")  # rejected: escalates
    openai_server.script("m2", ANSWER)
    try:
        async with Cascade.from_dict(
            two_tiers(openai_server.url), meter_provider=meters, environ={}
        ) as c:
            if via == "run":
                result = await c.run(messages=USER)
            else:
                async with c.stream(messages=USER) as stream:
                    events = [event async for event in stream]
                last = events[-1]
                assert isinstance(last, Finished)
                result = last.result
        assert result.escalations == 1
        data = reader.get_metrics_data()
        assert data is not None
        points: dict[str, list[Any]] = {}
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    points.setdefault(m.name, []).extend(m.data.data_points)
        durations = points["gen_ai.client.operation.duration"]
        assert sum(p.count for p in durations) == 2  # both calls
        assert sum(p.value for p in points["cascade.escalations"]) == 1
    finally:
        meters.shutdown()
