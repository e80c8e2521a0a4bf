"""Review of the quiet start and the ended spans' shared empty lists (``_telemetry/
_attributes.py``): what they must not change."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

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
