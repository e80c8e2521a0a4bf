"""Log lines written off the event loop, for ``cascade serve``.

A ``print`` to a pipe blocks once the pipe is full: with a log consumer that reads slowly,
every request would wait on it. :class:`LineWriter` is the logger structlog renders to: a
line goes into a bounded queue at once, and a thread writes the queue out. When the
queue is full the line is dropped and counted, and a ``gateway.log_dropped`` line says
how many once there is room again: the gateway slows for no log reader.

The thread wakes on a timer (every ``flush_interval_s``), not once per line: waking it for
each line made each request hand the interpreter's lock to the thread and back (a
request writes two lines, one of them before its response is sent). A line so waits up
to ``flush_interval_s`` before it is written; a queue half full wakes the thread at once.
:func:`render_json` renders a line with msgspec (a sixth of ``json.dumps``' time), and
:class:`UTCStamper` stamps it as structlog's ISO stamper does, in half its time.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any, TextIO

import msgspec
import structlog

__all__ = ["DirectLines", "LineWriter", "UTCStamper", "render_json"]


class LineWriter:
    """A file-like ``write``, and a structlog logger, that never blocks: lines go to
    ``out`` from a thread.

    >>> writer = LineWriter(sys.stdout)  # doctest: +SKIP
    >>> structlog.configure(logger_factory=lambda *args: writer)  # doctest: +SKIP
    """

    def __init__(
        self, out: TextIO, *, max_lines: int = 10_000, flush_interval_s: float = 0.05
    ) -> None:
        self._out = out
        self._lines: deque[str] = deque()
        self._max_lines = max_lines
        self._flush_interval_s = flush_interval_s
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()  # for the drop counts only: not taken per line
        self.dropped = 0
        """Lines dropped so far because the queue was full."""
        self._unreported = 0
        self._thread = threading.Thread(target=self._run, name="cascade-log-writer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<LineWriter {len(self._lines)} queued, {self.dropped} dropped>"

    def write(self, text: str) -> int:
        """Queue ``text`` (a deque's append: no lock, no wake-up of the thread)."""
        lines = self._lines
        queued = len(lines)
        if queued < self._max_lines:
            lines.append(text)
            if queued == self._max_lines // 2:
                self._wake.set()  # filling up between two timed flushes: flush now
        else:
            with self._lock:
                self.dropped += 1
                self._unreported += 1
        return len(text)

    def flush(self) -> None:
        """Nothing to do here: the thread flushes after each batch it writes."""

    def msg(self, message: str) -> None:
        """structlog's logger method: ``message`` as one line."""
        self.write(message + "\n")

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg

    def close(self, *, timeout_s: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout_s``) and stop the thread."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        lines = self._lines
        while True:
            self._wake.wait(self._flush_interval_s)
            self._wake.clear()
            stopping = self._stopping  # read before the drain: nothing queued is left
            batch = [lines.popleft() for _ in range(len(lines))]
            with self._lock:
                lost, self._unreported = self._unreported, 0
            if lost:
                batch.append(json.dumps({"event": "gateway.log_dropped", "lines": lost}) + "\n")
            if batch:
                try:
                    try:
                        self._out.write("".join(batch))
                    except UnicodeEncodeError:
                        self._write_each(batch)  # one line the output cannot encode
                    self._out.flush()
                except (OSError, ValueError):
                    pass  # the reader is gone: nothing left to tell it
            if stopping:
                return

    def _write_each(self, batch: list[str]) -> None:
        """``batch`` line by line, a line the output cannot encode with its non-ASCII
        characters escaped (``\\xe9``): it costs that line its exact text, not the batch
        its lines."""
        out = self._out
        for line in batch:
            try:
                out.write(line)
            except UnicodeEncodeError:
                out.write(line.encode("ascii", "backslashreplace").decode("ascii"))


class DirectLines:
    """cascade's own lines (access lines, routing records) run through ``cascade serve``'s
    structlog processors and queued on its :class:`LineWriter`, as structlog would, less
    its per-line machinery (a logger bound per call, the level filter, the event dict
    assembled): half the time of a line. Only while structlog's configuration is the one
    in force when this was made (its processors, level filter, logger factory and context
    class) and for a level it lets through (info and up); otherwise it declines and the
    line goes through structlog (an application or ``capture_logs`` that configured it
    otherwise sees every line)."""

    __slots__ = ("_chain", "_context", "_factory", "_processors", "_wrapper", "_writer")

    def __init__(self, writer: LineWriter, processors: list[Any]) -> None:
        self._writer = writer
        self._processors = processors
        self._chain = tuple(processors)  # capture_logs changes the list in place
        config = structlog.get_config()
        self._wrapper = config["wrapper_class"]
        self._factory = config["logger_factory"]
        self._context = config["context_class"]

    def __repr__(self) -> str:
        return f"<DirectLines to {self._writer!r}>"

    def __call__(self, level: str, event: str, fields: dict[str, Any]) -> bool:
        chain = self._chain
        config = structlog.get_config()
        configured = config["processors"]
        if level not in _PASSING or configured is not self._processors:
            return False
        if (
            config["wrapper_class"] is not self._wrapper  # another level filter
            or config["logger_factory"] is not self._factory  # lines go elsewhere
            or config["context_class"] is not self._context  # a context of its own
            or tuple(configured) != chain
        ):
            return False
        writer = self._writer
        event_dict: Any = dict(fields)  # as structlog's own: the caller's dict untouched
        event_dict["event"] = event
        try:
            for processor in chain:
                event_dict = processor(writer, level, event_dict)
        except structlog.DropEvent:
            return True  # as structlog does: dropped
        writer.msg(event_dict)
        return True


_PASSING = frozenset({"info", "warning", "error", "critical"})
"""The levels ``cascade serve``'s filtering logger (at info) lets through."""

_encode = msgspec.json.Encoder(enc_hook=repr).encode


def render_json(logger: Any, method_name: str, event_dict: MutableMapping[str, Any]) -> str:
    """structlog's last processor: the event as one line of JSON (values JSON cannot
    hold as their ``repr``, as ``structlog.processors.JSONRenderer`` does)."""
    try:
        line = _encode(event_dict)
    except (msgspec.EncodeError, TypeError, ValueError, OverflowError):
        # keys JSON cannot hold, integers past 64 bits: the standard library's way
        return json.dumps(event_dict, default=repr, skipkeys=True)
    if line.isascii():
        return line.decode()
    # msgspec writes non-ASCII text as is; escaped (as json.dumps does), a line goes to an
    # output of any encoding (a non-UTF-8 one would refuse it)
    return json.dumps(event_dict, default=repr, skipkeys=True)


class UTCStamper:
    """structlog's ``TimeStamper(fmt="iso")`` (UTC, ``2026-12-02T05:36:42.123456Z``; no
    fraction at a whole second, as ``datetime.isoformat``), the date and time to the
    second formatted once per second instead of once per line."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str] = (-1, "")  # replaced whole: safe across threads

    def __repr__(self) -> str:
        return "<UTCStamper>"

    def __call__(
        self, logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        second, micro = divmod(time.time_ns() // 1000, 1_000_000)
        cached, prefix = self._second
        if cached != second:
            prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = (second, prefix)
        event_dict["timestamp"] = f"{prefix}.{micro:06d}Z" if micro else prefix + "Z"
        return event_dict
