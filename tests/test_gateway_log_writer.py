"""``cascade serve``'s log lines are written by a thread: a reader that stalls drops lines
(counted, then reported), it never blocks the writer; lines are msgspec-rendered JSON."""

from __future__ import annotations

import io
import json
import re
import threading
import time
from datetime import UTC, datetime

import pytest
import structlog

from cascade.gateway._log_writer import LineWriter, UTCStamper, render_json


class Stalled(io.StringIO):
    """An output whose first write waits until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.go = threading.Event()

    def write(self, text: str) -> int:
        self.entered.set()
        assert self.go.wait(10)
        return super().write(text)


def test_a_stalled_reader_drops_lines_and_says_how_many() -> None:
    out = Stalled()
    writer = LineWriter(out, max_lines=3)
    writer.write("first\n")
    assert out.entered.wait(10)  # the thread holds "first", stuck in the output
    for i in range(10):  # with the reader stalled: 3 queued, 7 dropped, none blocks
        writer.write(f"line {i}\n")
    assert writer.dropped == 7
    out.go.set()
    writer.close()
    lines = out.getvalue().splitlines()
    assert lines[:4] == ["first", "line 0", "line 1", "line 2"]
    assert json.loads(lines[4]) == {"event": "gateway.log_dropped", "lines": 7}
    assert len(lines) == 5
    assert "7 dropped" in repr(writer)


def test_lines_keep_their_order_and_close_writes_them_all() -> None:
    out = io.StringIO()
    writer = LineWriter(out)
    for i in range(1000):
        writer.write(f"{i}\n")
    writer.close()
    assert out.getvalue().splitlines() == [str(i) for i in range(1000)]
    assert writer.dropped == 0


def test_a_line_is_written_without_a_close_or_a_wake_up_per_line() -> None:
    """The thread flushes on its own timer: no write wakes it (nor takes a lock)."""
    out = io.StringIO()
    writer = LineWriter(out, flush_interval_s=0.01)
    try:
        writer.write("one\n")
        for _ in range(1000):  # the thread's own timer, whatever the machine's load
            if out.getvalue():
                break
            threading.Event().wait(0.01)
        assert out.getvalue() == "one\n"
    finally:
        writer.close()


def test_the_writer_is_the_structlog_logger_and_lines_are_json() -> None:
    out = io.StringIO()
    writer = LineWriter(out)
    log = structlog.wrap_logger(writer, processors=[render_json])
    log.info("gateway.request", status=200, route="json", cost_usd=0.5, odd={1: object()})
    log.warning("cascade.route", big=2**70)  # past msgspec's 64 bits: the stdlib's way
    writer.close()
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["event"] == "gateway.request"
    assert first["status"] == 200
    assert first["cost_usd"] == 0.5
    assert first["odd"]["1"].startswith("<object object")  # repr, as structlog's renderer
    assert second == {"event": "cascade.route", "big": 2**70}


def test_utc_stamper_writes_what_structlogs_iso_stamper_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stamper = UTCStamper()
    for ns in (1_764_654_000_000_000_000, 1_764_654_000_000_001_999, 1_764_654_059_123_456_000):
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        whole = datetime.fromtimestamp(ns // 10**9, UTC)
        expected = whole.replace(microsecond=ns // 1000 % 10**6).isoformat()
        assert stamper(None, "info", {})["timestamp"] == expected.replace("+00:00", "Z")
    monkeypatch.undo()
    theirs = structlog.processors.TimeStamper(fmt="iso")(None, "info", {})["timestamp"]
    ours = stamper(None, "info", {})["timestamp"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z", ours)
    assert abs(datetime.fromisoformat(ours) - datetime.fromisoformat(theirs)).total_seconds() < 5
