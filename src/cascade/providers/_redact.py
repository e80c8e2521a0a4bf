"""Keeping an API key out of what a server sends back: exact echoes, and the pieces of one
that a cut (ours or the server's) leaves behind."""

from __future__ import annotations

from functools import lru_cache

__all__ = ["FRAGMENT", "MAX_FIELD", "Scrubber", "redact", "shorten"]

FRAGMENT = 8
"""The shortest piece of a key that is removed wherever it appears: a cut 8 characters
into an echo no longer shows the key; a shorter piece (``sk-``) would hit ordinary text."""

MAX_FIELD = 256
"""Server-sent metadata (a model name, a finish reason) is cut to this many characters."""

_MASK = "***"


@lru_cache(maxsize=8)
def _pieces(secret: str) -> frozenset[str]:
    return frozenset(secret[i : i + FRAGMENT] for i in range(len(secret) - FRAGMENT + 1))


def redact(text: str, secret: str | None) -> str:
    """Remove a credential from text a server may have echoed back: the whole key, and
    any run of text made of pieces of it ``FRAGMENT`` characters long or more.

    Linear in the text for each distinct piece of the key (``str.find``); a run of
    overlapping pieces becomes one ``***``.
    """
    if not secret or len(text) < min(len(secret), FRAGMENT):
        return text
    if len(secret) <= FRAGMENT:
        return text.replace(secret, _MASK) if secret in text else text
    marks: bytearray | None = None
    for piece in _pieces(secret):
        at = text.find(piece)
        while at != -1:
            if marks is None:
                marks = bytearray(len(text))
            marks[at : at + FRAGMENT] = b"\x01" * FRAGMENT
            at = text.find(piece, at + 1)
    if marks is None:
        return text
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if marks[i]:
            j = marks.find(0, i)
            out.append(_MASK)
        else:
            j = marks.find(1, i)
            out.append(text[i : n if j == -1 else j])
        i = n if j == -1 else j
    return "".join(out)


def shorten(text: str, secret: str | None, limit: int = 200) -> str:
    """``text`` redacted, then cut to ``limit`` characters: cutting first could leave most
    of a key that the exact match then misses."""
    return redact(text, secret)[:limit]


class Scrubber:
    """``redact`` and ``MAX_FIELD`` for a provider's response metadata (model names, finish
    reasons), which reach results, spans and logs. Remembers a few values: a server repeats
    its model name in every chunk of a stream."""

    __slots__ = ("_secret", "_seen")

    def __init__(self, secret: str | None) -> None:
        self._secret = secret or None
        self._seen: dict[str, str] = {}

    def __call__(self, value: str | None) -> str | None:
        if value is None:
            return None
        found = self._seen.get(value)
        if found is None:
            found = redact(value, self._secret)[:MAX_FIELD]
            if len(value) <= MAX_FIELD and len(self._seen) < 16:
                self._seen[value] = found
        return found
