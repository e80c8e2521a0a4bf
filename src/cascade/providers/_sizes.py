"""What an answer costs in memory once decoded, counted against ``max_response_bytes``.

The bytes a server sends are not what their answer takes in Python. A ``str`` stores every
character at the width of its widest one (1 byte for Latin-1, 2 for the rest of the BMP, 4
beyond it: 8 MiB of ASCII and one emoji make a 32 MiB string), and each JSON object decoded
becomes a Python object (a token's ``{"logprob":0}`` is 14 bytes on the wire and about 80
in memory while it is decoded). So a provider checks these bounds as well as the bytes:

- :func:`json_cost` before decoding a whole body (or a large SSE event): its length times
  the widest character it can decode to, plus :data:`OBJECT_BYTES` for each JSON object
  past the first :data:`FREE_OBJECTS` (the frame any answer has);
- :class:`Held` while a stream delivers its answer: the characters received times the
  widest one's width, plus :data:`LOGPROB_BYTES` for each token log-probability.

Every check is linear, done in C (``bytes.count``, ``isascii``, one regex scan that runs
only on non-ASCII data or data with ``\\u`` escapes).
"""

from __future__ import annotations

import re
from operator import attrgetter
from typing import Final

from .._types import Chunk

__all__ = [
    "FREE_OBJECTS",
    "LOGPROB_BYTES",
    "OBJECT_BYTES",
    "Held",
    "json_cost",
    "json_width",
    "str_width",
]

OBJECT_BYTES: Final = 80
"""A decoded JSON object: a msgspec Struct (with its GC header), a float and a list slot."""
FREE_OBJECTS: Final = 1024
LOGPROB_BYTES: Final = 48
"""A kept log-probability: a float, its slot in the list collected and in the final tuple."""

# Beyond the BMP: a UTF-8 lead byte of 4, or an escaped surrogate (\ud800-\udbff).
_ASTRAL = re.compile(rb"[\xf0-\xf4]|\\u[dD][89abAB]")
# Beyond Latin-1: a UTF-8 lead byte of U+0100 and up, or an escape of \u0100 and up.
_WIDE = re.compile(rb"[\xc4-\xef]|\\u(?!00)")


def json_width(data: bytes) -> int:
    """The widest ``str`` storage (1, 2 or 4 bytes a character) JSON ``data`` decodes to."""
    if data.isascii() and b"\\u" not in data:
        return 1
    if _ASTRAL.search(data) is not None:
        return 4
    return 2 if _WIDE.search(data) is not None else 1


def json_cost(data: bytes) -> int:
    """At most how many bytes decoding ``data`` (JSON) can build: every string in it holds
    fewer characters than ``data`` has bytes; objects are counted past the first few."""
    objects = data.count(b"{")
    return len(data) * json_width(data) + max(0, objects - FREE_OBJECTS) * OBJECT_BYTES


_HELD_FIELDS = attrgetter("text", "refusal", "logprobs")


def str_width(text: str) -> int:
    """The bytes a character of ``text`` takes in memory (CPython's compact strings)."""
    if text.isascii():
        return 1
    top = ord(max(text))
    return 4 if top > 0xFFFF else 2 if top > 0xFF else 1


class Held:
    """What a stream's answer so far will take once the engine has joined it."""

    __slots__ = ("chars", "logprobs", "width")

    def __init__(self) -> None:
        self.chars = 0
        self.width = 1
        self.logprobs = 0

    def add(self, chunk: Chunk) -> int:
        """Count ``chunk``; the bytes held now."""
        text = chunk.text
        if text:
            self.chars += len(text)
            if self.width < 4 and not text.isascii():
                self.width = max(self.width, str_width(text))
        refusal = chunk.refusal
        if refusal:
            self.chars += len(refusal)
            if self.width < 4 and not refusal.isascii():
                self.width = max(self.width, str_width(refusal))
        if chunk.logprobs:
            self.logprobs += len(chunk.logprobs)
        return self.chars * self.width + self.logprobs * LOGPROB_BYTES

    def add_all(self, chunks: list[Chunk], limit: int) -> tuple[int, int]:
        """Count ``chunks`` (what one read brought) while the bytes held stay within
        ``limit``: how many were counted (all, or those before the one that passed it)
        and the bytes held with the last one counted. The same as :meth:`add` for each
        in turn, in a few calls in C."""
        saved = self.chars, self.width, self.logprobs
        texts, refusals, logprobs = zip(*map(_HELD_FIELDS, chunks), strict=True)
        if refusals.count(None) != len(refusals):
            texts += tuple(r for r in refusals if r)
        text = "".join(texts)
        self.chars += len(text)
        if self.width < 4 and not text.isascii():
            self.width = max(self.width, str_width(text))
        if logprobs.count(None) != len(logprobs):
            self.logprobs += sum(len(p) for p in logprobs if p)
        cost = self.chars * self.width + self.logprobs * LOGPROB_BYTES
        if cost <= limit:
            return len(chunks), cost
        self.chars, self.width, self.logprobs = saved  # find the one that passed it
        for i, chunk in enumerate(chunks):
            cost = self.add(chunk)
            if cost > limit:
                return i, cost
        return len(chunks), cost  # pragma: no cover - their sum passed the limit
