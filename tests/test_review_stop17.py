"""Review of stop 17 (the quiet start, the shared empty lists): what must still hold as
with the SDK alone."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest
from opentelemetry.metrics import NoOpMeter, NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cascade._telemetry._attributes import end_span
from cascade.testing import FakeOpenAIServer

from .test_tracing_review2 import LINKED, _Between, _one_run


class _MirrorToSpan(logging.Handler):
    """A log bridge that copies each record onto ``span`` as an event while it records
    (the SDK's ``is_recording``), as span-event log handlers do."""

    def __init__(self, span: Any) -> None:
        super().__init__()
        self.span = span

    def emit(self, record: logging.LogRecord) -> None:
        if self.span.is_recording():
            self.span.add_event("log", {"message": record.getMessage()})


@pytest.mark.parametrize("what", ["event", "link"])
def test_an_add_racing_the_end_runs_no_handler_under_the_spans_lock(what: str) -> None:
    """An event or link another thread adds between ``end_span``'s swap and ``end``:
    the SDK warns of an add after the end outside the span's lock, once the span no longer
    records. Warning from inside the lock, while the span still records, a handler that
    copies the record onto the span took the span's lock again: the thread hung."""
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    span = tp.get_tracer("t").start_span("raced")

    def between() -> None:
        if what == "event":
            span.add_event("between")
        else:
            span.add_link(LINKED)

    span._lock = _Between(span._lock, between)  # type: ignore[attr-defined]
    sdk_log = logging.getLogger("opentelemetry.sdk.trace")
    handler = _MirrorToSpan(span)
    sdk_log.addHandler(handler)
    ending = threading.Thread(target=end_span, args=[span], daemon=True)
    try:
        ending.start()
        ending.join(10)
    finally:
        sdk_log.removeHandler(handler)
    assert not ending.is_alive(), "end_span hung: a log handler ran under the span's lock"
    (exported,) = exporter.get_finished_spans()
    tp.shutdown()
    # came before the end, as the SDK may order it: kept (or refused after it: neither here)
    if what == "event":
        assert [e.name for e in exported.events] == ["between"]
        assert exported.links == ()
    else:
        assert [link.context for link in exported.links] == [LINKED]
        assert exported.events == ()


class _Counter:
    def __init__(self, held: list[bool], lock: Any) -> None:
        self.held = held
        self.lock = lock

    def add(self, amount: float, attributes: Any = None, context: Any = None) -> None:
        self.held.append(self.lock[0].locked())


class _Meter(NoOpMeter):
    def __init__(self, held: list[bool], lock: Any) -> None:
        super().__init__("self-metrics")
        self.held = held
        self.lock = lock

    def create_counter(self, *args: Any, **kwargs: Any) -> Any:
        return _Counter(self.held, self.lock)

    def create_up_down_counter(self, *args: Any, **kwargs: Any) -> Any:
        return _Counter(self.held, self.lock)


class _Meters(NoOpMeterProvider):
    """The application's meter provider: its instruments are its own code."""

    def __init__(self) -> None:
        self.held: list[bool] = []
        self.lock: list[Any] = [None]

    def get_meter(self, *args: Any, **kwargs: Any) -> Any:
        return _Meter(self.held, self.lock)


@pytest.mark.anyio
async def test_the_sdks_self_metrics_are_not_recorded_under_the_processors_lock(
    openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the SDK's span self-metrics on, ``start_span`` records to the application's
    meter provider: code of the application's, which must not run under the span
    processors' lock (one that adds a processor there never returns)."""
    pytest.importorskip("opentelemetry.sdk.trace._tracer_metrics")
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    openai_server.default = '{"answer": 42}'
    meters = _Meters()
    exporter = InMemorySpanExporter()
    tp = TracerProvider(meter_provider=meters)
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    meters.lock[0] = tp._active_span_processor._lock
    await _one_run(openai_server.url, tp)
    assert len(exporter.get_finished_spans()) == 3
    assert meters.held and not any(meters.held)


@pytest.mark.anyio
async def test_an_applications_runtime_context_is_not_asked_under_the_processors_lock(
    openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a runtime context of the application's (``OTEL_PYTHON_CONTEXT``),
    ``start_span`` asks it for the current context: its code, not to run under the span
    processors' lock."""
    from opentelemetry import context as otel_context
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    held: list[bool] = []
    lock: list[Any] = [None]

    class Watched(ContextVarsRuntimeContext):
        def get_current(self) -> Any:
            if lock[0] is not None:
                held.append(lock[0].locked())
            return super().get_current()

    found = otel_context._RUNTIME_CONTEXT
    watched = Watched()
    watched._current_context = found._current_context  # type: ignore[attr-defined]
    monkeypatch.setattr(otel_context, "_RUNTIME_CONTEXT", watched)
    openai_server.default = '{"answer": 42}'
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    lock[0] = tp._active_span_processor._lock
    await _one_run(openai_server.url, tp)
    assert len(exporter.get_finished_spans()) == 3
    assert held and not any(held)


@pytest.mark.anyio
async def test_a_build_raising_stop_iteration_is_a_failed_reload(
    openai_server: FakeOpenAIServer, tmp_path: Any
) -> None:
    """A build that raises StopIteration (a plug-in's ``next()`` on an empty iterator): a
    failed reload, logged, the next one applies, as from anyio's worker thread (which hands
    it on as a RuntimeError). A future cannot take a StopIteration: it never settled, the
    reload waited for ever holding the reload lock, and no SIGHUP reloaded again."""
    import anyio
    from structlog.testing import capture_logs

    from cascade.gateway._reload import reload_config as _reload

    from .gateway import serving, write_config
    from .test_gateway_reload_thread import config_for

    path = write_config(tmp_path / "c.toml", config_for(openai_server.url, "start"))
    async with serving(path) as gw:
        gateway = gw.gateway
        assert gateway.rebuild is not None
        rebuild = gateway.rebuild
        fail = [True]

        def flaky(fresh: Any) -> Any:
            if fail.pop():
                next(iter(()))
            return rebuild(fresh)

        gateway.rebuild = flaky
        write_config(path, config_for(openai_server.url, "next"))
        with capture_logs() as logs:
            with anyio.fail_after(10):
                await _reload(gateway, str(path))
            assert [r.name for r in gateway.generation.routes] == ["start"]
            assert not gateway.reloading.locked()
            fail.append(False)
            with anyio.fail_after(10):
                await _reload(gateway, str(path))
        assert [r.name for r in gateway.generation.routes] == ["next"]
    failed = [e for e in logs if e["event"] == "gateway.reload_failed"]
    assert [e["error_type"] for e in failed] == ["RuntimeError"]
    assert [e["event"] for e in logs][-1] == "gateway.reloaded"


@pytest.mark.anyio
async def test_a_reload_that_cannot_start_its_thread_is_a_failed_reload(
    openai_server: FakeOpenAIServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No thread to be had (a process at its limit of threads): a failed reload, logged as
    such (as when anyio's worker thread could not start), not an exception out of the
    reload's task that no one logs."""
    from structlog.testing import capture_logs

    from cascade.gateway import _reload as reloading

    from .gateway import serving, write_config
    from .test_gateway_reload_thread import config_for

    class NoThread:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

        def start(self) -> None:
            raise RuntimeError("can't start new thread")

    path = write_config(tmp_path / "c.toml", config_for(openai_server.url, "start"))
    async with serving(path) as gw:
        gateway = gw.gateway
        write_config(path, config_for(openai_server.url, "next"))
        monkeypatch.setattr(reloading.threading, "Thread", NoThread)
        with capture_logs() as logs:
            await reloading.reload_config(gateway, str(path))
        monkeypatch.undo()
        assert [r.name for r in gateway.generation.routes] == ["start"]
        assert gateway.reload_build is None and not gateway.reloading.locked()
    failed = [e for e in logs if e["event"] == "gateway.reload_failed"]
    assert [(e["error_type"], e["error"]) for e in failed] == [
        ("RuntimeError", "can't start new thread")
    ]
