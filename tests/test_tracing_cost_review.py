"""Review of the tracing-cost work (a dropped run handed to the engine as its span's token,
attributes stored on the SDK's span directly): cases its own tests left out."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.anyio

SRC = Path(__file__).resolve().parents[1] / "src"

# The API's own thread-local runtime context of old (opentelemetry-api < 1.13), as an
# application may still plug it in (OTEL_PYTHON_CONTEXT): its tokens are not contextvars'.
_RUNTIME = """
import threading

from opentelemetry.context.context import Context, _RuntimeContext


class ThreadLocalRuntimeContext(_RuntimeContext):
    class Token:
        def __init__(self, context):
            self._context = context

    def __init__(self):
        self._local = threading.local()

    def attach(self, context):
        current = self.get_current()
        self._local.context = context
        return self.Token(current)

    def get_current(self):
        return getattr(self._local, "context", None) or Context()

    def detach(self, token):
        self._local.context = token._context
"""

_RUN = """
import asyncio

from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

import cascade
from cascade import Cascade
from cascade.testing import FakeOpenAIServer

assert type(context._RUNTIME_CONTEXT).__name__ == "ThreadLocalRuntimeContext"
SEEN = []


@cascade.validator("seen_span")
class Seen:
    name = "seen_span"

    async def validate(self, completion, ctx):
        SEEN.append(trace.get_current_span().get_span_context())
        return cascade.Verdict(validator=self.name, passed=True)


async def main():
    async with FakeOpenAIServer(default="42") as server:
        t = {"name": "t", "validators": [{"name": "seen_span"}], "providers": [
            {"name": "s", "kind": "openai", "base_url": server.url, "model": "m"}]}
        for sampler in (ParentBased(ALWAYS_OFF), ALWAYS_ON):
            exporter = InMemorySpanExporter()
            provider = TracerProvider(sampler=sampler)
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            async with Cascade.from_dict(
                {"tiers": [t]}, tracer_provider=provider, environ={}
            ) as c:
                assert (await c.run(messages=[{"role": "user", "content": "hi"}])).text == "42"
                assert trace.get_current_span() is trace.INVALID_SPAN  # detached again
            print(sampler.get_description(), len(exporter.get_finished_spans()),
                  SEEN[-1].is_valid, SEEN[-1].trace_flags.sampled)
            provider.shutdown()


asyncio.run(main())
"""


def test_a_dropped_run_under_another_runtime_context(tmp_path: Path) -> None:
    """Under a runtime context of the application's own (``OTEL_PYTHON_CONTEXT``), whose
    tokens are not contextvars', a run the sampler drops still runs, its non-recording
    span current while it lasts, and is detached after it (the engine took the token of
    such a run for a RunTrace: every dropped run raised TypeError)."""
    dist = tmp_path / "ctxplug-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ctxplug\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[opentelemetry_context]\nthreadlocal_context = ctxplug:ThreadLocalRuntimeContext\n"
    )
    (tmp_path / "ctxplug.py").write_text(textwrap.dedent(_RUNTIME))
    (tmp_path / "run.py").write_text(textwrap.dedent(_RUN))
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "run.py")],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "PYTHONPATH": f"{SRC}:{tmp_path}",
            "OTEL_PYTHON_CONTEXT": "threadlocal_context",
        },
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    dropped, sampled = proc.stdout.splitlines()
    # dropped: no span exported, a valid unsampled span current under the run
    assert dropped.split()[1:] == ["0", "True", "False"]
    assert sampled.split()[1:] == ["3", "True", "True"]


def test_the_import_time_probe_logs_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK's attribute store is probed when cascade is imported; an SDK that drops a
    None value with a warning (opentelemetry-sdk 1.39, the oldest cascade supports) is
    probed without that warning reaching the application's logs (with no logging set up,
    Python printed it on stderr: every ``import cascade``, every ``cascade`` command), and
    None then goes through ``set_attributes``."""
    from opentelemetry.attributes import BoundedAttributes

    from cascade._telemetry import _attributes

    class Bounded(BoundedAttributes):  # stores a value as opentelemetry-api 1.39 does
        def __setitem__(self, key: str, value: Any) -> None:
            if value is None:
                logging.getLogger(__name__).warning(
                    "Invalid type NoneType for attribute %r value.", key
                )
                return
            super().__setitem__(key, value)

    monkeypatch.setattr(_attributes, "_Bounded", Bounded)
    with caplog.at_level(logging.DEBUG):
        kept = _attributes._as_is()
    assert [r.getMessage() for r in caplog.records] == []
    assert str in kept and type(None) not in kept
    # the probe's filter is gone: the logger's own warnings are logged again
    logging.getLogger(__name__).warning("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]


def test_a_non_recording_span_with_slots_falls_back_to_its_class(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The import-time check of the inlined ``NonRecordingSpan(context)`` falls back to the
    class itself for an API whose span keeps its context in a slot (no instance dict),
    rather than failing ``import cascade`` with vars()'s TypeError."""
    from opentelemetry.trace import SpanContext

    from cascade._telemetry import _sampling

    class Slotted:  # NonRecordingSpan as an API with __slots__ throughout would make it
        __slots__ = ("_context",)

        def __init__(self, context: SpanContext) -> None:
            self._context = context

        def get_span_context(self) -> SpanContext:
            return self._context

    monkeypatch.setattr(_sampling, "NonRecordingSpan", Slotted)
    made = _sampling._checked_non_recording()
    span = made(SpanContext(7, 9, False))
    assert type(span) is Slotted and span.get_span_context() == SpanContext(7, 9, False)
