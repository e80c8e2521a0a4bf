"""What a hostile review of light span events, the captured content cap, the gateway's
cut drain and the garbage cycles of failed runs found: each test failed before its fix."""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cascade._telemetry._core import Telemetry
from cascade._telemetry._light import LightSpan

from .leaks import cycles_after
from .sdk_features import LIGHT_SPANS

pytestmark = pytest.mark.anyio

_UVLOOP = pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed"
)


class Subclassed(SimpleSpanProcessor):
    """The SDK's processor, subclassed: no quiet start, so no light spans."""


def _events_as_exported(*, light: bool, limits: SpanLimits) -> tuple[Any, list[str]]:
    exporter = InMemorySpanExporter()
    tp = TracerProvider(span_limits=limits)
    tp.add_span_processor((SimpleSpanProcessor if light else Subclassed)(exporter))
    tel = Telemetry(tracer_provider=tp, environ={})
    logged: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    handler = Keep(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        span = tel.start_span("s", SpanKind.INTERNAL, {"a": 1})
        if light:
            assert type(span) is LightSpan
        span.add_event("e", {"s": "x" * 50, "l": ["y" * 50], "short": "z"}, 5)
        span.add_event("f", {"k": 1}, 6)
        span.end()
    finally:
        root.removeHandler(handler)
    (got,) = exporter.get_finished_spans()
    tp.shutdown()
    forms = [
        (
            e.name,
            e.timestamp,
            [(k, type(v), v) for k, v in e.attributes.items()],
            e.dropped_attributes,
            e.attributes.max_value_len,
        )
        for e in got.events
    ]
    return forms, logged


@LIGHT_SPANS
def test_light_events_are_cut_at_the_global_length_limit_as_the_sdks() -> None:
    """SpanLimits(max_attribute_length=5, max_span_attribute_length=UNSET): the span's own
    attributes have no length limit (the span is light) but its events' do; the SDK cuts
    an event's strings at 5 (and warns); the light span kept them whole."""
    limits: dict[str, Any] = {
        "max_attribute_length": 5,
        "max_span_attribute_length": SpanLimits.UNSET,
    }
    light = _events_as_exported(light=True, limits=SpanLimits(**limits))
    sdk = _events_as_exported(light=False, limits=SpanLimits(**limits))
    assert sdk[0][0][2][0] == ("s", str, "xxxxx")
    assert light == sdk


# --- captured content: at most MAX_CAPTURED characters (and the cut's marker) -----------------

LIMIT = 32_768 + 100  # MAX_CAPTURED and the marker, as test_openinference_attack allows


def test_many_empty_messages_are_captured_within_the_limit() -> None:
    """A million empty messages: each message's JSON is ~55 characters, counted as 44;
    the captured JSON was 41,031 characters."""
    import json

    from cascade._telemetry._content import input_messages
    from cascade._types import Message

    sent = input_messages([Message(role="user", content="")] * 1_000_000)
    assert len(sent) <= LIMIT
    last = json.loads(sent)[-1]["parts"][0]["content"]
    assert last.endswith(f"{1_000_000 - len(json.loads(sent))} more messages not captured]")


@pytest.mark.parametrize("char", ["\x00", '"', "\\", "\n"])
def test_json_escapes_are_counted_in_the_limit(char: str) -> None:
    """40,000 control characters (or quotes): each is up to six characters of JSON; the
    captured attribute was up to 196,436 characters."""
    import json

    from cascade._telemetry._content import input_messages, output_messages
    from cascade._types import Completion, Message

    sent = input_messages([Message(role="user", content=char * 40_000)])
    assert len(sent) <= LIMIT
    content = json.loads(sent)[0]["parts"][0]["content"]
    kept = len(content) - len(content.lstrip(char))
    assert content[kept:] == f"…[{40_000 - kept} more characters not captured]"
    said = output_messages(
        [Completion(text=char * 40_000, provider="p", model="m", finish_reason="stop")] * 2
    )
    assert len(said) <= LIMIT
    json.loads(said)


def test_a_huge_finish_reason_is_not_captured_whole() -> None:
    """The provider's finish reason sat whole in the captured answers' JSON (and
    ``output.value`` with several choices): a 1 MB one made a 1 MB attribute."""
    import json

    from cascade._telemetry._content import output_messages
    from cascade._telemetry._conventions import output_attributes
    from cascade._types import Completion

    choices = [
        Completion(text="y" * 100, provider="p", model="m", finish_reason="r" * 1_000_000)
    ] * 3
    said = output_messages(choices)
    assert len(said) <= LIMIT
    assert [m["parts"][0]["content"] for m in json.loads(said)] == ["y" * 100] * 3
    assert all(len(v) <= LIMIT for v in output_attributes(choices, said).values())


# --- cascade serve: signals while draining ------------------------------------------------


@pytest.mark.parametrize("loop", ["asyncio", pytest.param("uvloop", marks=_UVLOOP)])
async def test_a_sighup_while_draining_neither_kills_nor_cuts_the_drain(
    openai_server: Any, tmp_path: Any, loop: str
) -> None:
    """SIGTERM, then SIGHUP while a request drains: SIGHUP's handler was removed at the
    first signal, so its default action killed the process (exit -1), the request in
    flight lost and nothing closed. It is ignored while draining, logged."""
    import asyncio
    import signal

    from cascade.testing import Reply

    from .gateway import write_config
    from .leaks import eventually
    from .test_gateway_serve import HI, cascade_serve, client, config

    openai_server.script("m1", Reply(text="finished", latency_s=1.5))
    path = write_config(tmp_path / "c.toml", config(openai_server.url, "m1", "r"))
    async with cascade_serve(path, "--loop", loop) as served, client(served) as c:
        call = asyncio.create_task(c.chat.completions.create(model="r", messages=HI))  # type: ignore[arg-type]
        await eventually(lambda: openai_server.active_requests == 1, "the slow call under way")
        served.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: "gateway.draining" in served.events(), "draining")
        served.proc.send_signal(signal.SIGHUP)
        await eventually(lambda: "gateway.reload_ignored" in served.events(), "ignored")
        assert (await call).choices[0].message.content == "finished"
        assert await asyncio.wait_for(served.proc.wait(), 30) == 0
    events = served.events()
    assert events[-1] == "gateway.stopped"
    assert [line["status"] for line in served.lines if line.get("event") == "gateway.request"] == [
        200
    ]


# --- no garbage cycles: the run's frames, errors and tasks -----------------------------------
# Python 3.11's selector transports make a cycle of their own when closed (a bound method on
# the transport): a call cut off (a timeout, a deadline, a reader that left) leaves one.
# What is checked here is that nothing of cascade's (frames, errors, tasks, the run, the
# stream) is in a cycle.


def _cascade_garbage() -> list[str]:
    import gc
    import types

    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
    finally:
        gc.set_debug(0)
    found = []
    for o in gc.garbage:
        if isinstance(o, types.FrameType):
            found.append(f"frame {o.f_code.co_qualname}")
        elif isinstance(o, BaseException) or type(o).__name__ in ("Task", "RunState", "Stream"):
            found.append(type(o).__name__)
    gc.garbage.clear()
    return found


def _gc_configs(url: str) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    from .helpers import JSON_SCHEMA, provider, tier

    return {
        "provider timeout": (
            {"tiers": [tier("t", provider("a", url, "hang", timeout_s=0.05))]},
            {},
        ),
        "streamed provider timeout": (
            {"tiers": [tier("t", provider("a", url, "hang", timeout_s=0.05, stream=True))]},
            {},
        ),
        "budget exceeded": (
            {
                "tiers": [
                    tier("t", provider("a", url, "prose"), validators=[JSON_SCHEMA]),
                    tier("u", provider("b", url, "ok")),
                ]
            },
            {"max_cost_usd": 1e-9},
        ),
        "deadline": ({"tiers": [tier("t", provider("a", url, "slow"))]}, {"deadline_s": 0.05}),
    }


@pytest.mark.parametrize("how", ["run", "stream", "left early"])
@pytest.mark.parametrize(
    "case", ["provider timeout", "streamed provider timeout", "budget exceeded", "deadline"]
)
async def test_no_frame_error_or_task_of_a_failed_run_in_a_cycle(
    openai_server: Any, case: str, how: str
) -> None:
    """A provider that timed out (the provider's translated error held by a local of the
    frame its traceback holds: post_whole, stream), a stream left early whose last event,
    unread, was Failed (the engine's frames held the stream), a stream left early that
    cancelled its run (the stream held its task, whose CancelledError's traceback holds
    the run's frames, which hold the stream): each a cycle, frames, run and all."""
    import sys

    from cascade import Cascade, CascadeError
    from cascade.testing import Reply

    if how == "left early" and case.endswith("timeout") and sys.version_info < (3, 12):
        pytest.skip("cancelled while connecting: Python 3.11's sock_connect makes a cycle")

    from .helpers import USER

    openai_server.default = '{"answer": 42}'
    openai_server.script("prose", *[Reply(text="not json")] * 50)
    openai_server.script("slow", *[Reply(text="x", latency_s=0.3)] * 50)
    openai_server.script("hang", *[Reply(fault="hang")] * 50)
    cfg, kw = _gc_configs(openai_server.url)[case]

    async def one(c: Cascade) -> None:
        try:
            if how == "run":
                await c.run(messages=USER, **kw)
                return
            async with c.stream(messages=USER, **kw) as events:
                async for _ in events:
                    if how == "left early":
                        break
        except CascadeError:
            pass

    async with Cascade.from_dict(cfg, environ={}) as c:
        found = await cycles_after(lambda: one(c), warm=2, runs=3, collect=_cascade_garbage)
    assert found == [], "; ".join(found)
