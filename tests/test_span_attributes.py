"""Attributes stored on a span under way by cascade (``_telemetry/_attributes.py``) are what
the SDK's ``set_attributes`` stores: the same values, types, order and dropped count, and
the same warnings and limits, for whatever values and spans it is given."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.trace import NonRecordingSpan, SpanContext

from cascade._telemetry._attributes import set_attributes

CASES: dict[str, list[dict[str, Any]]] = {
    "scalars": [{"a": "x", "b": 1, "c": 0.5, "d": True, "e": None}],
    "sequences": [{"path": ["cheap", "strong"], "reasons": ("stop",), "empty": []}],
    "set_again_moves_last": [{"a": 1, "b": 2, "c": 3}, {"a": 4}],
    "start_then_end": [{"x": "start"}, {"y": ["s"], "x": "end"}],
    # the SDK's own checks, left to it: another type, a sequence of numbers, a bad key
    "converted": [{"n": [1, 2]}, {"o": logging, "p": b"raw", "q": [b"x"]}],
    "int_subclass": [{"status": logging.INFO}],
    "empty_key": [{"": "dropped", "kept": 1}],
}


def spans(limits: SpanLimits | None = None) -> tuple[Any, Any, TracerProvider]:
    provider = TracerProvider(span_limits=limits)
    tracer = provider.get_tracer("t")
    return tracer.start_span("theirs"), tracer.start_span("ours"), provider


def stored(span: Any) -> tuple[Any, ...]:
    attrs = span.attributes
    return tuple((k, type(v), v) for k, v in attrs.items()), span.dropped_attributes


@pytest.mark.parametrize("case", list(CASES))
def test_the_sdk_stores_the_same(case: str, caplog: pytest.LogCaptureFixture) -> None:
    theirs, ours, provider = spans()
    for attrs in CASES[case]:
        theirs.set_attributes(attrs)
    their_logs = [r.getMessage() for r in caplog.records]
    caplog.clear()
    for attrs in CASES[case]:
        set_attributes(ours, attrs)
    assert [r.getMessage() for r in caplog.records] == their_logs
    assert stored(ours) == stored(theirs)
    provider.shutdown()


@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(SpanLimits(max_span_attribute_length=3), id="value-length"),
        pytest.param(SpanLimits(max_span_attributes=4), id="attribute-count"),
    ],
)
def test_limits_that_bite_are_the_sdks(
    limits: SpanLimits, caplog: pytest.LogCaptureFixture
) -> None:
    """A value length limit truncates, a full span drops its oldest attribute (and counts
    it): as the SDK does, with its warnings."""
    theirs, ours, provider = spans(limits)
    attrs = [{"a": "long value", "b": ["long", "values"], "c": 1}, {"d": 2, "e": "x"}]
    for a in attrs:
        theirs.set_attributes(a)
    their_logs = [r.getMessage() for r in caplog.records]
    caplog.clear()
    for a in attrs:
        set_attributes(ours, a)
    # (the SDK warns of these limits from 1.4x on; before, neither does)
    assert [r.getMessage() for r in caplog.records] == their_logs
    assert stored(ours) == stored(theirs)
    provider.shutdown()


def test_an_ended_span_is_left_as_it_was(caplog: pytest.LogCaptureFixture) -> None:
    theirs, ours, provider = spans()
    for span in (theirs, ours):
        span.set_attributes({"a": 1})
        span.end()
    theirs.set_attributes({"a": 2, "b": 3})
    their_logs = [r.getMessage() for r in caplog.records]
    caplog.clear()
    set_attributes(ours, {"a": 2, "b": 3})
    assert (
        their_logs
        == [r.getMessage() for r in caplog.records]
        == ["Setting attribute on ended span."]
    )
    assert stored(ours) == stored(theirs)
    provider.shutdown()


def test_other_spans_get_set_attributes() -> None:
    """Not the SDK's span: its own ``set_attributes`` (a no-op for a non-recording one)."""
    span = NonRecordingSpan(SpanContext(1, 2, False))
    set_attributes(span, {"a": 1})  # no AttributeError

    seen: list[dict[str, Any]] = []

    class Recording(NonRecordingSpan):
        def set_attributes(self, attributes: Any) -> None:
            seen.append(dict(attributes))

    set_attributes(Recording(SpanContext(1, 2, False)), {"a": ["x"]})
    assert seen == [{"a": ["x"]}]


def test_plain_values_skip_the_sdks_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The values cascade sets at the end of a call or run (strings, numbers, booleans,
    lists of strings) are stored without ``set_attributes``'s checks; a value the SDK
    converts goes through it."""
    from opentelemetry.sdk.trace import Span

    _, ours, provider = spans()
    calls: list[dict[str, Any]] = []
    real = Span.set_attributes

    def counted(self: Span, attributes: Any) -> None:
        calls.append(dict(attributes))
        real(self, attributes)

    monkeypatch.setattr(Span, "set_attributes", counted)
    set_attributes(ours, {"a": "x", "b": 1, "c": 0.5, "d": False, "path": ["t1", "t2"]})
    assert calls == []
    set_attributes(ours, {"n": [1, 2]})
    assert calls == [{"n": [1, 2]}]
    assert ours.attributes["path"] == ("t1", "t2") and ours.attributes["n"] == (1, 2)
    provider.shutdown()


def test_a_sequence_is_one_tuple_for_every_span() -> None:
    """The same tier path on two spans is one tuple: a span waiting in a batch processor's
    queue holds no tuple of its own (one allocation less for the garbage collector)."""
    first, second, provider = spans()
    set_attributes(first, {"path": ["cheap", "strong"]})
    set_attributes(second, {"path": ["cheap", "strong"]})
    assert first.attributes["path"] == ("cheap", "strong")
    assert first.attributes["path"] is second.attributes["path"]
    provider.shutdown()


def test_a_long_sequence_is_not_kept() -> None:
    """A provider's long finish reason is not kept for later spans (only short ones are
    shared, and at most a few hundred)."""
    from cascade._telemetry import _attributes

    first, second, provider = spans()
    long = ["x" * 1000]
    set_attributes(first, {"reasons": long})
    set_attributes(second, {"reasons": long})
    assert first.attributes["reasons"] == second.attributes["reasons"] == ("x" * 1000,)
    assert first.attributes["reasons"] is not second.attributes["reasons"]
    assert ("x" * 1000,) not in _attributes._TUPLES
    provider.shutdown()


@pytest.mark.parametrize("case", list(CASES))
def test_an_sdk_of_another_layout_gets_its_own_set_attributes(
    case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the import-time probe finds the SDK storing values otherwise (no type it
    stores as is), every value goes through the SDK's own ``set_attributes``."""
    from cascade._telemetry import _attributes

    monkeypatch.setattr(_attributes, "_AS_IS", frozenset())
    monkeypatch.setattr(_attributes, "_store", None)  # would raise if it were reached
    theirs, ours, provider = spans()
    for attrs in CASES[case]:
        theirs.set_attributes(attrs)
        set_attributes(ours, attrs)
    assert stored(ours) == stored(theirs)
    provider.shutdown()
