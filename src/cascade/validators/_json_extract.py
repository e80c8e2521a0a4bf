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

__all__ = ["extract_json", "whole_json"]

# possessive blanks: a fence followed by 20,000 spaces must not backtrack over them
_FENCE = re.compile(r"```[ \t]*+(?:json|JSON|json5)?[ \t]*+\r?\n(.*?)```", re.S)
_decode = msgspec.json.decode
_raw_decode = json.JSONDecoder().raw_decode
_OPENERS = re.compile(r"[{\[]")
_MAX_SCANS = 64
_SLACK = 4096  # the scan budget beyond 2x the text, for short answers with many brackets
_NOT_FOUND = object()
_OBJECT = frozenset("{[")


class _Budget:
    """Characters the decoders may still read: every candidate is paid for, so finding the
    JSON reads at most ~2x the text however its brackets nest (``[[[...1,1,...`` made each
    of 64 scans read to the end: 64x)."""

    __slots__ = ("left", "scans")

    def __init__(self, text: str) -> None:
        self.left = 2 * len(text) + _SLACK
        self.scans = 0

    def pay(self, chars: int) -> bool:
        """Whether ``chars`` more may be read (and they are counted)."""
        if chars > self.left:
            return False
        self.left -= chars
        return True


def extract_json(text: str) -> Any:
    """Find the JSON value in an answer: the whole text, a fenced block, or the outermost
    ``{...}`` / ``[...]`` span. Raises ValueError when there is none.

    Linear in the text: the candidates together read at most about twice its length.

    >>> extract_json('Sure! ```json\\n{"a": 1}\\n``` done')
    {'a': 1}
    """
    stripped = text.strip()
    surrogate = False
    if stripped[:1] in _OBJECT:  # the common case first, before any bookkeeping
        try:
            return _decode(stripped)
        except (msgspec.DecodeError, RecursionError):
            pass
        except UnicodeEncodeError:
            surrogate = True
    budget = _Budget(text)
    if stripped and (surrogate or stripped[:1] not in _OBJECT):
        found = _try(stripped, budget, decoded=surrogate)
        if found is not _NOT_FOUND:
            return found
    elif stripped:
        budget.pay(len(stripped))  # read once above
    for m in _FENCE.finditer(text):
        found = _try(m.group(1).strip(), budget)
        if found is not _NOT_FOUND:
            return found
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            span = text[start : end + 1]
            if span == stripped:  # already tried
                continue
            found = _try(span, budget)
            if found is not _NOT_FOUND:
                return found
    # Prose with braces of its own ("the template {name} gives {...}"): try each opening
    # bracket in turn, and take the first complete JSON value that starts there. A scan
    # pays for what it read (up to where it failed).
    for m in _OPENERS.finditer(text):
        budget.scans += 1
        if budget.scans > _MAX_SCANS or budget.left <= 0:
            break
        start = m.start()
        # a scan reads no further than the budget left: the window ends there
        window, at = text, start
        if len(text) - start > budget.left:
            window, at = text[start : start + budget.left], 0
        try:
            value, _ = _raw_decode(window, at)
        except json.JSONDecodeError as exc:
            budget.pay(min(budget.left, exc.pos - at + 1))
            continue
        except (ValueError, RecursionError):  # nested deeper than the decoder goes
            budget.pay(min(budget.left, len(window) - at))
            continue
        return value
    raise ValueError("no JSON value found in the answer")


def whole_json(text: str) -> Any:
    """The one JSON value ``text`` is (blanks around it aside), as an API that promises
    JSON output gives it: no prose, fence or second value around it. Raises ValueError
    otherwise.

    >>> whole_json(' {"a": 1}\\n')
    {'a': 1}
    """
    # Not ``text.strip()``: only JSON's blanks, which both decoders skip (a value between
    # U+2028s or NBSPs is not JSON: the client's ``json.loads`` fails on it).
    try:
        return _decode(text)
    except (msgspec.DecodeError, RecursionError):
        pass
    except UnicodeEncodeError:  # a lone surrogate: a str the json module reads
        try:
            return json.loads(text, parse_constant=_not_json)  # (NaN, Infinity: not JSON)
        except (ValueError, RecursionError):
            pass
    raise ValueError("the answer is not one JSON value alone (text or a fence around it)")


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _try(candidate: str, budget: _Budget, *, decoded: bool = False) -> Any:
    """The JSON value ``candidate`` is, or _NOT_FOUND; ``decoded``: msgspec met a lone
    surrogate in it already (only the json module's look is left)."""
    if candidate[:1] not in '{["-0123456789tfn':
        return _NOT_FOUND
    if not budget.pay(len(candidate)):
        return _NOT_FOUND
    if not decoded:
        try:
            return _decode(candidate)
        except (msgspec.DecodeError, RecursionError):  # [[[[...: deeper than decoders go
            return _NOT_FOUND
        except UnicodeEncodeError:
            pass  # a lone surrogate ("\ud800"): not UTF-8, but a str the json module reads
    if not budget.pay(len(candidate)):
        return _NOT_FOUND
    try:
        value, end = _raw_decode(candidate)
    except (ValueError, RecursionError):
        return _NOT_FOUND
    return value if end == len(candidate) else _NOT_FOUND
