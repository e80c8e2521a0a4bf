"""Finding the code in an answer: its Markdown fences, and their bodies laid out at the
answer's own line numbers."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from typing import NamedTuple

__all__ = ["Fence", "fences", "layout"]

# A fence line: up to any indentation, three or more backticks, the info string, and the
# line end (absent while a streaming answer has not finished the line).
_OPEN = re.compile(r"^[ \t]*(`{3,})([^`\r\n]*)(\r?\n|\Z)", re.M)
_CLOSE = re.compile(r"^[ \t]*(`{3,})[ \t]*(?:\r?\n|\Z)", re.M)


class Fence(NamedTuple):
    tag: str | None  # lower-cased first word of the info string; None: line not finished
    start: int  # where the body starts
    end: int  # where the body ends (the closing fence, or the end of the text)


def fences(text: str) -> Iterator[Fence]:
    pos = 0
    while (m := _OPEN.search(text, pos)) is not None:
        if not m.group(3):
            yield Fence(None, m.end(), m.end())
            return
        info = m.group(2).split(maxsplit=1)
        tag = info[0].strip("{}.").lower() if info else ""
        ticks = len(m.group(1))
        close = _CLOSE.search(text, m.end())
        while close is not None and len(close.group(1)) < ticks:
            close = _CLOSE.search(text, close.end())
        end = close.start() if close is not None else len(text)
        yield Fence(tag, m.end(), end)
        if close is None:
            return
        pos = close.end()


def layout(text: str, blocks: list[Fence]) -> str:
    """The fences' bodies at their lines of ``text``, every other line left blank (so a
    compiler's line numbers are the answer's)."""
    parts: list[str] = []
    emitted = 0  # newlines written so far
    line = 0  # newlines of the answer before the current fence's body
    pos = 0
    for f in blocks:
        line += text.count("\n", pos, f.start)
        pos = f.start
        body = textwrap.dedent(text[f.start : f.end])
        parts.append("\n" * (line - emitted))
        parts.append(body)
        emitted = line + body.count("\n")
    return "".join(parts)
