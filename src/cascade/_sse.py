"""Incremental Server-Sent Events decoder (the WHATWG event-stream format).

Bytes go in as they come off the socket, in pieces of any size; complete events come out.
Nothing is buffered beyond the current unfinished line and event, and those can be bounded.
Event data stays bytes: JSON payloads go straight to msgspec, which also rejects invalid UTF-8.
"""

from __future__ import annotations

from functools import partial
from itertools import repeat
from typing import NamedTuple

__all__ = ["EventTooLarge", "SSEDecoder", "SSEEvent", "plain_events"]

_BOM = b"\xef\xbb\xbf"


class SSEEvent(NamedTuple):
    event: str
    """The ``event:`` field; ``"message"`` when the event named none."""
    data: bytes
    """The ``data:`` lines joined with newlines."""


_new_event = partial(tuple.__new__, SSEEvent)
"""``SSEEvent`` from an (event, data) pair, in C (a NamedTuple's own ``__new__`` is not)."""


def plain_events(datas: list[bytes]) -> list[SSEEvent]:
    """The events (named ``message``) of these data, as ``SSEDecoder.feed_plain`` gives
    them."""
    return list(map(_new_event, zip(repeat("message"), datas)))


class EventTooLarge(ValueError):
    """An event (its lines so far, and the unfinished line) passed ``max_event_bytes``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"an SSE event of over {limit} bytes")


class SSEDecoder:
    """Feed bytes with :meth:`feed`; it returns the events those bytes completed.

    Lines may end in LF, CRLF or CR, split anywhere between two reads (a CRLF too); a
    leading byte-order mark is skipped. Linear in the bytes fed, however long a line: an
    unfinished line is kept as a list of pieces, joined once when its end arrives, and
    each read is split a few times at most (the end of an event begun in an earlier read
    line by line, then the events that are one ``data:`` line each, the common case, cut
    out whole, then the rest line by line). With ``max_event_bytes``, an event
    (its data lines and the unfinished line) that grows past it raises
    :class:`EventTooLarge` before the piece that would pass it is stored.

    >>> d = SSEDecoder()
    >>> d.feed(b"data: hel")
    []
    >>> d.feed(b"lo\\n\\n")
    [SSEEvent(event='message', data=b'hello')]
    """

    __slots__ = (
        "_data",
        "_event",
        "_limit",
        "_line",
        "_line_size",
        "_size",
        "_skip_lf",
        "_started",
    )

    def __init__(self, *, max_event_bytes: int | None = None) -> None:
        self._line: list[bytes] = []  # the unfinished line, in pieces (never a line end)
        self._line_size = 0
        self._size = 0  # bytes of the event's data lines so far
        self._limit = max_event_bytes
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
                if not chunk:
                    return []
        if not self._started:
            if self._line:  # at most two bytes: the start of a split BOM
                chunk = b"".join(self._line) + chunk
                self._line, self._line_size = [], 0
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._line, self._line_size = [chunk], len(chunk)  # could still be a BOM
                return []
            self._started = True
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if b"\r" in chunk:
            # The unfinished line holds no line end, so normalising this read alone is
            # the same as normalising the whole stream.
            self._skip_lf = chunk.endswith(b"\r")
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events: list[SSEEvent] = []
        if self._line or self._data or self._event:
            # An event began in an earlier read: line by line up to its end, then (the
            # decoder between two events again) the rest as a read of its own.
            end = chunk.find(b"\n\n")
            if end == -1:
                self._lines(chunk, events)
                return events
            self._lines(chunk[: end + 2], events)
            chunk = chunk[end + 2 :]
        if chunk:
            self._lines(self._whole_events(chunk, events), events)
        return events

    @property
    def pending_bytes(self) -> int:
        """The bytes of the unfinished event so far (its data lines and unfinished line):
        an event the next read completes is at most these and that read."""
        return self._size + self._line_size + len(self._event)

    def _lines(self, chunk: bytes, events: list[SSEEvent]) -> None:
        """``chunk`` line by line (line ends LF), the events it completes to ``events``."""
        lines = chunk.split(b"\n")
        rest = lines.pop()
        if lines:
            if self._line:
                self._check(self._line_size + len(lines[0]))
                self._line.append(lines[0])
                lines[0] = b"".join(self._line)
                self._line, self._line_size = [], 0
            limit = self._limit
            for line in lines:
                if not line:
                    if self._data:
                        events.append(SSEEvent(self._event or "message", b"\n".join(self._data)))
                        self._data = []
                        self._size = 0
                    self._event = ""
                    continue
                if line[0] == 58:  # ":" starts a comment
                    continue
                field, sep, value = line.partition(b":")
                if sep and value[:1] == b" ":
                    value = value[1:]
                if field == b"data":
                    if limit is not None:
                        self._check(len(value))
                    self._size += len(value) + 1
                    self._data.append(value)
                elif field == b"event":
                    self._event = value.decode("utf-8", "replace")
        if rest:
            self._check(self._line_size + len(rest))
            self._line.append(rest)
            self._line_size += len(rest)

    def _whole_events(self, chunk: bytes, events: list[SSEEvent]) -> bytes:
        """When every event ``chunk`` completes is one ``data:`` line (as an LLM
        stream's are), those events, found by a few scans in C instead of line by line;
        returns what is left for the line by line path: the unfinished event, or all of
        ``chunk`` when it completes any other kind of event. Called between two events
        (no line, data or event name pending), after line ends became LF."""
        found = self._payloads(chunk)
        if found is None:
            return chunk
        payloads, rest = found
        events.extend(plain_events(payloads))
        return rest

    def _payloads(self, chunk: bytes) -> tuple[list[bytes], bytes] | None:
        """``_whole_events``' scans: the data of the events ``chunk`` completes and what
        follows them, or None when an event it completes is not a lone ``data:`` line
        (or it completes none)."""
        end = chunk.rfind(b"\n\n")
        if end == -1 or not chunk.startswith(b"data: "):
            return None
        payloads = chunk[6:end].split(b"\n\ndata: ")
        if b"\n" in b"".join(payloads):  # (memchr: a count would look at every byte)
            return None  # a line that is not a lone data line (a comment, an event name)
        limit = self._limit
        if limit is not None and max(map(len, payloads)) > limit:
            size = next(len(p) for p in payloads if len(p) > limit)
            raise EventTooLarge(size, limit)
        return payloads, chunk[end + 2 :]

    def feed_plain(self, chunk: bytes) -> list[bytes] | None:
        """``feed`` for the common read, in fewer steps: the data of the events ``chunk``
        completes, when ``feed`` would return them as events named ``message`` of one
        ``data:`` line each, cut out whole (the read begins between two events and holds
        no CR, the stream's byte-order mark is behind it, every event it completes is a
        lone data line, and it completes one at least). Otherwise None, and nothing was
        consumed: ``feed`` takes that read. ``plain_events`` makes the events of the data.
        Raises :class:`EventTooLarge` where ``feed`` would."""
        if self._skip_lf or self._line or self._data or self._event or b"\r" in chunk:
            return None
        if not self._started:
            if not chunk or chunk[0] == _BOM[0]:
                return None  # (a byte-order mark, or the start of one)
            self._started = True  # as feed: this stream has no byte-order mark
        found = self._payloads(chunk)
        if found is None:
            return None
        payloads, rest = found
        if rest:
            # The start of an event, with no blank line: it completes none.
            self._lines(rest, [])
        return payloads

    def _check(self, line_size: int) -> None:
        if self._limit is not None and self._size + line_size > self._limit:
            raise EventTooLarge(self._size + line_size, self._limit)

    def flush(self) -> SSEEvent | None:
        """At end of stream: the event whose data lines ended but no blank line followed.

        The format says to drop it; callers use it only to recognise a terminator such as
        ``data: [DONE]`` sent without its final blank line.
        """
        if self._line:
            self.feed(b"\n")
        if not self._data:
            return None
        event = SSEEvent(self._event or "message", b"\n".join(self._data))
        self._data = []
        self._size = 0
        self._event = ""
        return event

    @property
    def pending(self) -> bool:
        """True while an event or a line has started but not ended."""
        return bool(self._line or self._data or self._event)
