"""Incremental Server-Sent Events decoder (the WHATWG event-stream format).

Bytes go in as they come off the socket, in pieces of any size; complete events come out.
Nothing is buffered beyond the current unfinished line and event.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent"]


class SSEEvent(NamedTuple):
    event: str
    """The ``event:`` field; ``"message"`` when the event named none."""
    data: str
    """The ``data:`` lines joined with newlines."""


class SSEDecoder:
    """Feed bytes with :meth:`feed`; it returns the events those bytes completed.

    Lines may end in LF, CRLF or CR, split anywhere between two reads (a CRLF too).

    >>> d = SSEDecoder()
    >>> d.feed(b"data: hel")
    []
    >>> d.feed(b"lo\\n\\n")
    [SSEEvent(event='message', data='hello')]
    """

    __slots__ = ("_buf", "_data", "_event", "_skip_lf")

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            # The last read ended in CR: an LF now is the second half of that CRLF.
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[SSEEvent] = []
        for raw in lines:
            if not raw:
                if self._data:
                    events.append(SSEEvent(self._event or "message", "\n".join(self._data)))
                    self._data = []
                self._event = ""
                continue
            line = raw.decode("utf-8", "replace")
            if line[0] == ":":
                continue
            field, sep, value = line.partition(":")
            if sep and value[:1] == " ":
                value = value[1:]
            if field == "data":
                self._data.append(value)
            elif field == "event":
                self._event = value
        return events

    @property
    def pending(self) -> bool:
        """True while an event or a line has started but not ended."""
        return bool(self._buf or self._data or self._event)
