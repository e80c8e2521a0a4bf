"""``cascade serve``'s own lines (access lines, routing records) written without
structlog's per-line machinery: byte for byte the lines structlog writes under the same
configuration, and through structlog once anything configures it otherwise."""

from __future__ import annotations

import io
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider
from structlog.testing import capture_logs

from cascade._cli_serve import access_log_to_stdout
from cascade._telemetry import _logs
from cascade._telemetry._logs import emit, write_directly


class Unencodable:
    def __repr__(self) -> str:
        return "<Unencodable>"


CASES: list[tuple[str, dict[str, Any]]] = [
    ("info", {"method": "POST", "path": "/v1/chat/completions", "status": 200, "cost": 1e-5}),
    ("info", {"route": "caf\u00e9", "tier_path": ["small", "large"], "n": None}),  # non-ASCII
    ("info", {"odd": Unencodable(), "big": 2**70}),  # values JSON cannot hold as they are
    ("warning", {"outcome": "error", "error": "boom", "trace_id": "ab" * 16}),
    ("info", {"exc_info": False, "nested": {"a": [1, 2.5, True]}}),
]


@pytest.fixture
def served_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """structlog configured as ``cascade serve`` configures it, to a string, on a clock
    that stands still (each line's stamp alike)."""
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(time, "time_ns", lambda: 1_764_654_000_123_456_000)
    writer = access_log_to_stdout()
    try:
        yield out
    finally:
        writer.close()
        write_directly(None)
        structlog.reset_defaults()


@pytest.mark.parametrize(("level", "fields"), CASES)
def test_a_direct_line_is_structlogs_line(
    served_logging: io.StringIO, level: str, fields: dict[str, Any]
) -> None:
    log = structlog.get_logger("cascade.test")
    before = dict(fields)
    getattr(log, level)("some.event", **fields)  # structlog's own way
    direct = _logs._direct
    assert direct is not None
    assert direct(level, "some.event", fields) is True  # the direct way, taken
    assert fields == before  # the caller's dict is not changed
    structlog.get_config()["logger_factory"]().close()  # the writer: flush its queue
    structlog_line, direct_line = served_logging.getvalue().splitlines()
    assert direct_line == structlog_line
    assert json.loads(direct_line)["event"] == "some.event"


def test_a_direct_line_carries_the_current_spans_ids(served_logging: io.StringIO) -> None:
    provider = TracerProvider()
    log = structlog.get_logger("cascade.test")
    with provider.get_tracer("t").start_as_current_span("request") as span:
        log.info("ev", a=1)
        emit(log, "info", "ev", {"a": 1})
    structlog.get_config()["logger_factory"]().close()
    first, second = served_logging.getvalue().splitlines()
    assert first == second
    assert json.loads(second)["trace_id"] == format(span.get_span_context().trace_id, "032x")
    provider.shutdown()


def test_lines_go_through_structlog_once_it_is_configured_otherwise(
    served_logging: io.StringIO,
) -> None:
    log = structlog.get_logger("cascade.test")
    with capture_logs() as captured:
        assert _logs._direct is not None
        assert _logs._direct("info", "ev", {"a": 1}) is False  # declined
        emit(log, "info", "ev", {"a": 1})
    emit(log, "debug", "quiet", {"b": 2})  # below the gateway's level: structlog filters it
    emit(log, "info", "again", {"c": 3})  # configuration restored: direct again
    structlog.get_config()["logger_factory"]().close()
    assert captured == [{"event": "ev", "a": 1, "log_level": "info"}]
    assert [json.loads(line)["event"] for line in served_logging.getvalue().splitlines()] == [
        "again"
    ]


class Seeded(dict[str, Any]):
    """A context that starts every logger's with a field of the application's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self["service"] = "app"


@pytest.mark.parametrize("change", ["level", "logger_factory", "context_class"])
def test_lines_go_through_structlog_once_the_rest_of_its_configuration_changes(
    served_logging: io.StringIO, change: str
) -> None:
    """The processors are not all of structlog's configuration: an application that keeps
    them and raises the level, sends the lines elsewhere, or gives its loggers a context of
    its own gets cascade's lines as structlog would write them, not the gateway's way."""
    writer = structlog.get_config()["logger_factory"]()
    elsewhere = io.StringIO()
    if change == "level":
        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    elif change == "logger_factory":
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(elsewhere))
    else:
        structlog.configure(context_class=Seeded)
    emit(structlog.get_logger("cascade.test"), "info", "ev", {"a": 1})
    writer.close()
    served = [json.loads(line) for line in served_logging.getvalue().splitlines()]
    if change == "level":
        assert served == []  # info is below the level now: structlog drops it
    elif change == "logger_factory":
        assert served == []
        assert json.loads(elsewhere.getvalue())["event"] == "ev"
    else:
        assert [(e["event"], e.get("service")) for e in served] == [("ev", "app")]
