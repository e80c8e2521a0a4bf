"""Incremental Server-Sent Events decoder (the WHATWG event-stream format).

Bytes go in as they come off the socket, in pieces of any size; complete events come out.
Nothing is buffered beyond the current unfinished line and event. Event data stays bytes:
JSON payloads go straight to msgspec, which also rejects invalid UTF-8.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["SSEDecoder", "SSEEvent"]

_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    event: str
    """The ``event:`` field; ``"message"`` when the event named none."""
    data: bytes
    """The ``data:`` lines joined with newlines."""


class SSEDecoder:
    """Feed bytes with :meth:`feed`; it returns the events those bytes completed.

    Lines may end in LF, CRLF or CR, split anywhere between two reads (a CRLF too); a
    leading byte-order mark is skipped.

    >>> d = SSEDecoder()
    >>> d.feed(b"data: hel")
    []
    >>> d.feed(b"lo\\n\\n")
    [SSEEvent(event='message', data=b'hello')]
    """

    __slots__ = ("_buf", "_data", "_event", "_skip_lf", "_started")

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False
        self._started = False
        self._event = ""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._skip_lf:
            # The last read ended in CR: an LF now is the second half of that CRLF.
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf  # could still be a split BOM
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
        if b"\r" in buf:
            self._skip_lf = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        self._buf = lines.pop()
        events: list[SSEEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(SSEEvent(self._event or "message", b"\n".join(self._data)))
                    self._data = []
                self._event = ""
                continue
            if line[0] == 58:  # ":" starts a comment
                continue
            field, sep, value = line.partition(b":")
            if sep and value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
        return events

    def flush(self) -> SSEEvent | None:
        """At end of stream: the event whose data lines ended but no blank line followed.

        The format says to drop it; callers use it only to recognise a terminator such as
        ``data: [DONE]`` sent without its final blank line.
        """
        if self._buf:
            self.feed(b"\n")
        if not self._data:
            return None
        event = SSEEvent(self._event or "message", b"\n".join(self._data))
        self._data = []
        self._event = ""
        return event

    @property
    def pending(self) -> bool:
        """True while an event or a line has started but not ended."""
        return bool(self._buf or self._data or self._event)
