"""Finding the JSON value in an answer (``extract_json``).

Self-contained (the standard library and msgspec only, no relative imports): the JSON
Schema worker process loads this file by its path, to find the JSON of a big answer on its
side.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

__all__ = ["extract_json"]

# possessive blanks: a fence followed by 20,000 spaces must not backtrack over them
_FENCE = re.compile(r"```[ \t]*+(?:json|JSON|json5)?[ \t]*+\r?\n(.*?)```", re.S)
_decode = msgspec.json.decode
_raw_decode = json.JSONDecoder().raw_decode
_OPENERS = re.compile(r"[{\[]")
_MAX_SCANS = 64
_NOT_FOUND = object()


def extract_json(text: str) -> Any:
    """Find the JSON value in an answer: the whole text, a fenced block, or the outermost
    ``{...}`` / ``[...]`` span. Raises ValueError when there is none.

    >>> extract_json('Sure! ```json\\n{"a": 1}\\n``` done')
    {'a': 1}
    """
    stripped = text.strip()
    if stripped:
        found = _try(stripped)
        if found is not _NOT_FOUND:
            return found
    for m in _FENCE.finditer(text):
        found = _try(m.group(1).strip())
        if found is not _NOT_FOUND:
            return found
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            found = _try(text[start : end + 1])
            if found is not _NOT_FOUND:
                return found
    # Prose with braces of its own ("the template {name} gives {...}"): try each opening
    # bracket in turn, and take the first complete JSON value that starts there.
    tried = 0
    for m in _OPENERS.finditer(text):
        tried += 1
        if tried > _MAX_SCANS:
            break
        try:
            value, _ = _raw_decode(text, m.start())
        except (ValueError, RecursionError):
            continue
        return value
    raise ValueError("no JSON value found in the answer")


def _try(candidate: str) -> Any:
    if candidate[:1] not in '{["-0123456789tfn':
        return _NOT_FOUND
    try:
        return _decode(candidate)
    except (msgspec.DecodeError, RecursionError):  # [[[[...: nested deeper than decoders go
        return _NOT_FOUND
