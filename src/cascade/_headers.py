"""Parsing what HTTP responses say about time and capacity: Retry-After, OpenAI's
Go-style reset durations, Anthropic's RFC 3339 reset times. Garbage gives None, never an
exception: a provider's odd header must not fail a request.

No wait a server asks for is trusted whole: every one is capped at a ceiling
(:data:`MAX_WAIT_S` unless the caller passes its own), and an absolute time is measured
against the response's own ``Date`` only when that ``Date`` is within a day of our clock
(a server stuck in 1970 or 9999 would otherwise turn a one-minute reset into decades).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Final

__all__ = [
    "MAX_SKEW_S",
    "MAX_WAIT_S",
    "duration_s",
    "http_date",
    "number",
    "retry_after_s",
    "server_wall",
    "until_s",
]

MAX_WAIT_S: Final = 300.0
"""The default ceiling on any wait a server asks for (``LimitsConfig.max_wait_s``)."""
MAX_SKEW_S: Final = 86400.0
"""A response's ``Date`` further than this from our clock is not believed."""

# Possessive runs: no backtracking, so a header of 8,000 digits is one linear scan.
_DURATION_PART = re.compile(r"(\d++(?:\.\d*+)?|\.\d++)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _capped(seconds: float | None, max_s: float) -> float | None:
    return None if seconds is None else min(max(seconds, 0.0), max_s)


def duration_s(raw: str | None, *, max_s: float = MAX_WAIT_S) -> float | None:
    """OpenAI's Go-style durations ("1s", "6m0s", "20ms", "1h2m3.5s"); bare seconds too.
    At most ``max_s``."""
    if raw is None:
        return None
    text = raw.strip()
    plain = number(text)
    if plain is not None:
        return _capped(plain, max_s)
    pos, total = 0, 0.0
    while pos < len(text):  # each part anchored where the last ended: one pass, no rescans
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    if pos != len(text) or pos == 0 or math.isnan(total):
        return None
    return _capped(total, max_s)  # an overflow to inf is "very long": the ceiling


def until_s(raw: str | None, wall: float, *, max_s: float = MAX_WAIT_S) -> float | None:
    """Seconds from ``wall`` to an RFC 3339 timestamp or HTTP date (0 if already past,
    at most ``max_s``)."""
    if raw is None:
        return None
    at = _rfc3339(raw)
    if at is None:
        at = http_date(raw)
    return None if at is None else _capped(at - wall, max_s)


def _rfc3339(raw: str) -> float | None:
    try:
        stamp = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    try:
        return stamp.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def http_date(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        stamp = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if stamp.tzinfo is None:
        return None
    try:
        return stamp.timestamp()
    except (OverflowError, ValueError, OSError):
        return None


def server_wall(headers: Mapping[str, str], *, local: float | None = None) -> float:
    """The time a response was sent, by its ``Date`` header when it has a believable one
    (within :data:`MAX_SKEW_S` of ``local``, our wall clock by default), else ``local``.

    Reset times and Retry-After dates are the server's: measured from its own ``Date``
    they are right even when its clock and ours disagree a little."""
    here = time.time() if local is None else local
    sent = http_date(headers.get("date"))
    if sent is None or abs(sent - here) > MAX_SKEW_S:
        return here
    return sent


def retry_after_s(
    headers: Mapping[str, str], *, wall: float | None = None, max_s: float = MAX_WAIT_S
) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date,
    measured from ``wall``, else from :func:`server_wall`), at most ``max_s``.

    ``headers`` may have names in any case (aiohttp's are case-insensitive; a plain dict
    must have them in lower case)."""
    ms = number(headers.get("retry-after-ms"))
    if ms is not None:
        return _capped(ms / 1000.0, max_s)
    value = headers.get("retry-after")
    seconds = number(value)
    if seconds is not None:
        return _capped(seconds, max_s)
    if value is None:
        return None
    return until_s(value, server_wall(headers) if wall is None else wall, max_s=max_s)
