"""Review of the quiet start and the ended spans' shared empty lists (``_telemetry/
_attributes.py``): what they must not change."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider, id_generator
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanContext, TraceFlags

from cascade import Cascade, RequestOptions
from cascade._telemetry._attributes import end_span
from cascade.testing import FakeOpenAIServer

from .helpers import USER, provider, tier

LINKED = SpanContext(trace_id=7, span_id=9, is_remote=True, trace_flags=TraceFlags(1))

_OLD_SDK = textwrap.dedent(
    """
    import sys

    from opentelemetry.sdk.trace import TracerProvider

    sys.modules["opentelemetry.sdk.trace._tracer_metrics"] = None  # 1.39 has none
    import anyio
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cascade import Cascade, RequestOptions
    from cascade.testing import FakeOpenAIServer


    async def main() -> None:
        exporter = InMemorySpanExporter()
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(exporter))
        async with FakeOpenAIServer() as server:
            server.default = "42"
            provider = {"name": "p", "kind": "openai", "base_url": server.url, "model": "m"}
            config = {"tiers": [{"name": "t", "providers": [provider]}]}
            async with Cascade.from_dict(config, tracer_provider=tp, environ={}) as c:
                await c.run(
                    messages=[{"role": "user", "content": "hi"}],
                    options=RequestOptions(metadata={"team": "a"}),
                )
        run = exporter.get_finished_spans()[-1]
        print(len(exporter.get_finished_spans()), run.attributes["cascade.metadata.team"])


    anyio.run(main)
    """
)


def test_an_sdk_without_head_sampling_still_traces() -> None:
    """The oldest SDK supported (1.39) has no ``_tracer_metrics`` module (nor the random
    trace id flag): cascade decides no head sampling there, and a traced run must still
    run, its spans as before (the quiet start asked the samplers module for classes it
    had not imported: a NameError out of every run)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _OLD_SDK], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["3", "a"]


class _Between:
    """A span's lock that, the first time it is let go, runs ``act`` (another thread
    taking its turn there)."""

    def __init__(self, lock: Any, act: Callable[[], None]) -> None:
        self._inner = lock
        self._act: Callable[[], None] | None = act

    def __enter__(self) -> None:
        self._inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self._inner.release()
        act, self._act = self._act, None
        if act is not None:
            act()


@pytest.mark.parametrize("what", ["event", "link"])
def test_what_another_thread_adds_at_the_end_is_kept_as_before_it(
    what: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An event or a link another thread adds while ``end_span`` is under way (after the
    lists were swapped, before ``end``): kept, as when it comes just before the end (one
    order the race may always take), and nothing said; the span is exported whole. Once
    the span has ended, the SDK's own warning, word for word."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("t").start_span("raced")
    added: list[bool] = []

    def other_thread() -> None:
        if span._end_time is None:  # type: ignore[attr-defined]
            if what == "event":
                span.add_event("between", {"k": "v"})
            else:
                span.add_link(LINKED, {"why": "between"})
            added.append(True)

    span._lock = _Between(span._lock, other_thread)  # type: ignore[attr-defined]
    end_span(span)
    (exported,) = exporter.get_finished_spans()
    provider.shutdown()
    assert added  # it came between the swap and the end
    if what == "event":
        assert [(e.name, dict(e.attributes or {})) for e in exported.events] == [
            ("between", {"k": "v"})
        ]
        assert exported.links == ()
    else:
        assert [(link.context, dict(link.attributes or {})) for link in exported.links] == [
            (LINKED, {"why": "between"})
        ]
        assert exported.events == ()
    assert not caplog.records
    # the same add once the span has ended: the SDK's words
    if what == "event":
        span.add_event("after")
    else:
        span.add_link(LINKED)
    assert [r.getMessage() for r in caplog.records] == [
        f"Tried calling _add_{what} on an ended span."
    ]


class _Seeing(SpanProcessor):
    """Notes each span's attributes as its ``on_start`` finds them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.seen.append((span.name, dict(span.attributes or {})))


class _AddingMeanwhile:
    """The ``random`` the SDK's id generator draws from: while the ``at``-th 64-bit id
    (a span id) is drawn (inside ``start_span``, before the processors' ``on_start``),
    another thread adds ``processor`` to ``provider``."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.provider: TracerProvider | None = None
        self.processor = _Seeing()

    def getrandbits(self, bits: int) -> int:
        if bits == 64:
            self.at -= 1
            if self.at == 0:
                assert self.provider is not None
                adding = threading.Thread(
                    target=self.provider.add_span_processor, args=[self.processor]
                )
                adding.start()
                adding.join(0.2)  # a lock held by the start: it adds after it
        return random.getrandbits(bits)


@pytest.mark.anyio
@pytest.mark.parametrize("at", [1, 2, 3], ids=["run", "tier", "call"])
async def test_a_processor_added_while_a_span_starts_sees_its_attributes(
    openai_server: FakeOpenAIServer, at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processor another thread adds while a span starts either sees it start with its
    attributes or does not see it start, as with the SDK's ``start_span``: the span must
    not start bare because the processors looked quiet just before."""
    openai_server.default = '{"answer": 42}'
    ids = _AddingMeanwhile(at)
    monkeypatch.setattr(id_generator, "random", ids)
    tp = TracerProvider()  # the SDK's own ids: the quiet start is taken
    ids.provider = tp
    tp.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    config = {"tiers": [tier("t", provider("p", openai_server.url, "m"))]}
    try:
        async with Cascade.from_dict(config, tracer_provider=tp, environ={}) as c:
            await c.run(messages=USER, options=RequestOptions(metadata={"team": "a"}))
    finally:
        tp.shutdown()
    bare = [name for name, attrs in ids.processor.seen if not attrs]
    assert not bare


async def _one_run(url: str, tp: TracerProvider) -> None:
    config = {"tiers": [tier("t", provider("p", url, "m"))]}
    try:
        async with Cascade.from_dict(config, tracer_provider=tp, environ={}) as c:
            await c.run(messages=USER, options=RequestOptions(metadata={"team": "a"}))
    finally:
        tp.shutdown()


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["instance", "class"])
async def test_a_patched_processor_start_sees_the_attributes(
    openai_server: FakeOpenAIServer, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK's simple processor, its ``on_start`` replaced (on the object, or on the
    class after cascade's import-time probe), is not known to do nothing at a span's
    start: it sees the span with its attributes, and what it sets there wins, as with
    ``start_span`` (the span started bare, and cascade's attributes overwrote it)."""
    openai_server.default = '{"answer": 42}'
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    seen: list[dict[str, Any]] = []

    def on_start(*args: Any, **kwargs: Any) -> None:
        span = args[-1] if where == "instance" else args[1]
        seen.append(dict(span.attributes or {}))
        span.set_attribute("cascade.tier.name", "tagged")

    if where == "instance":
        processor.on_start = on_start  # type: ignore[method-assign]
    else:
        monkeypatch.setattr(SimpleSpanProcessor, "on_start", on_start)
    tp = TracerProvider()
    tp.add_span_processor(processor)
    await _one_run(openai_server.url, tp)
    assert seen and all(seen)
    tier_span = next(s for s in exporter.get_finished_spans() if s.name == "cascade.tier t")
    assert tier_span.attributes is not None
    assert tier_span.attributes["cascade.tier.name"] == "tagged"


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["root", "delegate"])
async def test_a_patched_sampler_is_asked_with_the_attributes(
    openai_server: FakeOpenAIServer, where: str
) -> None:
    """The SDK's sampler, its ``should_sample`` replaced on the object: it is asked with
    the span's attributes, as by ``start_span``."""
    openai_server.default = '{"answer": 42}'
    inner = TraceIdRatioBased(1.0)
    sampler = ParentBased(inner)
    patched = sampler if where == "root" else inner
    asked: list[dict[str, Any]] = []
    original = patched.should_sample

    def should_sample(*args: Any, **kwargs: Any) -> Any:
        asked.append(dict(kwargs.get("attributes") or (args[4] if len(args) > 4 else {}) or {}))
        return original(*args, **kwargs)

    patched.should_sample = should_sample  # type: ignore[method-assign]
    tp = TracerProvider(sampler=sampler)
    tp.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    await _one_run(openai_server.url, tp)
    assert asked and all(asked)


@pytest.mark.anyio
async def test_a_wrapped_start_span_is_given_the_attributes(
    openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK tracer's ``start_span`` wrapped (as an instrumentation may) after cascade's
    import: the wrapper is handed each span's attributes, as without the quiet start."""
    from opentelemetry.sdk.trace import Tracer

    openai_server.default = '{"answer": 42}'
    given: list[dict[str, Any]] = []
    original = Tracer.start_span

    def start_span(self: Tracer, name: str, *args: Any, **kwargs: Any) -> Any:
        given.append(dict(kwargs.get("attributes") or {}))
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(Tracer, "start_span", start_span)
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    await _one_run(openai_server.url, tp)
    assert len(given) == 3 and all(given)


class _AddingHere(RandomIdGenerator):
    """Ids of the application's own, which add a span processor while a span id is drawn
    (in another thread, so that a lock held by the start shows as a wait, not a hang)."""

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None
        self.processor = _Seeing()
        self.blocked = False

    def generate_span_id(self) -> int:
        if self.provider is not None:
            provider, self.provider = self.provider, None
            adding = threading.Thread(target=provider.add_span_processor, args=[self.processor])
            adding.start()
            adding.join(5)
            self.blocked = adding.is_alive()  # the same call in this thread: a deadlock
        return super().generate_span_id()


@pytest.mark.anyio
async def test_ids_of_the_applications_own_start_spans_as_start_span_does(
    openai_server: FakeOpenAIServer,
) -> None:
    """A span starts without its attributes only under the processors' lock, so only with
    the SDK's own ids: an id generator of the application's may add a processor (or do
    anything else) as the span starts, which under that lock, in the same thread, would
    never return."""
    openai_server.default = '{"answer": 42}'
    ids = _AddingHere()
    tp = TracerProvider(id_generator=ids)
    ids.provider = tp
    tp.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    await _one_run(openai_server.url, tp)
    assert not ids.blocked
    assert ids.processor.seen and all(attrs for _, attrs in ids.processor.seen)
