"""Review 27: light span events, captured content cap, the gateway's cut drain, no
garbage cycles after failed runs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from cascade._telemetry._core import Telemetry
from cascade._telemetry._light import LightSpan

pytestmark = pytest.mark.anyio


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


def test_light_events_are_cut_at_the_global_length_limit_as_the_sdks() -> None:
    """SpanLimits(max_attribute_length=5, max_span_attribute_length=UNSET): the span's own
    attributes have no length limit (the span is light) but its events' do; the SDK cuts
    an event's strings at 5 (and warns); the light span kept them whole."""
    limits = dict(max_attribute_length=5, max_span_attribute_length=SpanLimits.UNSET)
    light = _events_as_exported(light=True, limits=SpanLimits(**limits))
    sdk = _events_as_exported(light=False, limits=SpanLimits(**limits))
    assert sdk[0][0][2][0] == ("s", str, "xxxxx")
    assert light == sdk
