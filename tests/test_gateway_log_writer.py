"""``cascade serve``'s log lines are written by a thread: a reader that stalls drops lines
(counted, then reported), it never blocks the writer."""

from __future__ import annotations

import io
import json
import threading

from cascade.gateway._log_writer import LineWriter


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
