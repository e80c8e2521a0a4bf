"""Log lines written off the event loop, for ``cascade serve``.

A ``print`` to a pipe blocks once the pipe is full: with a log consumer that reads slowly,
every request would wait on it. :class:`LineWriter` is the file structlog prints to: a
line goes into a bounded queue at once, and a thread writes the queue out. When the
queue is full the line is dropped and counted, and a ``gateway.log_dropped`` line says
how many once there is room again: the gateway slows for no log reader.
"""

from __future__ import annotations

import json
import queue
import threading
from typing import TextIO

__all__ = ["LineWriter"]

_STOP = object()


class LineWriter:
    """A file-like ``write`` that never blocks: lines go to ``out`` from a thread.

    >>> writer = LineWriter(sys.stdout)  # doctest: +SKIP
    >>> structlog.configure(logger_factory=structlog.PrintLoggerFactory(writer))  # doctest: +SKIP
    """

    def __init__(self, out: TextIO, *, max_lines: int = 10_000) -> None:
        self._out = out
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_lines)
        self._lock = threading.Lock()
        self.dropped = 0
        """Lines dropped so far because the queue was full."""
        self._unreported = 0
        self._thread = threading.Thread(target=self._run, name="cascade-log-writer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<LineWriter {self._queue.qsize()} queued, {self.dropped} dropped>"

    def write(self, text: str) -> int:
        try:
            self._queue.put_nowait(text)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                self._unreported += 1
        return len(text)

    def flush(self) -> None:
        """Nothing to do here: the thread flushes after each batch it writes."""

    def close(self, *, timeout_s: float = 5.0) -> None:
        """Write what is queued (for at most ``timeout_s``) and stop the thread."""
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)

    def _run(self) -> None:
        out = self._out
        while True:
            item = self._queue.get()
            batch = []
            while item is not _STOP:
                assert isinstance(item, str)
                batch.append(item)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            with self._lock:
                lost, self._unreported = self._unreported, 0
            if lost:
                batch.append(json.dumps({"event": "gateway.log_dropped", "lines": lost}) + "\n")
            try:
                out.write("".join(batch))
                out.flush()
            except (OSError, ValueError):
                pass  # the reader is gone: nothing left to tell it
            if item is _STOP:
                return
