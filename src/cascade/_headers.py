"""Parsing what HTTP responses say about time and capacity: Retry-After, OpenAI's
Go-style reset durations, Anthropic's RFC 3339 reset times. Garbage gives None, never an
exception: a provider's odd header must not fail a request."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

__all__ = ["duration_s", "http_date", "number", "retry_after_s", "until_s"]


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
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


def duration_s(raw: str | None) -> float | None:
    """OpenAI's Go-style durations ("1s", "6m0s", "20ms", "1h2m3.5s"); bare seconds too."""
    if raw is None:
        return None
    text = raw.strip()
    plain = number(text)
    if plain is not None:
        return plain
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        pos = match.end()
    return total if pos == len(text) and pos > 0 and math.isfinite(total) else None


def until_s(raw: str | None, wall: float) -> float | None:
    """Seconds from ``wall`` to an RFC 3339 timestamp or HTTP date (0 if already past)."""
    if raw is None:
        return None
    at = _rfc3339(raw) or http_date(raw)
    return None if at is None else max(0.0, at - wall)


def _rfc3339(raw: str) -> float | None:
    try:
        stamp = datetime.fromisoformat(raw.strip())
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    return stamp.timestamp()


def http_date(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        stamp = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if stamp.tzinfo is None:
        return None
    return stamp.timestamp()


def retry_after_s(headers: Mapping[str, str], *, wall: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date,
    measured from ``wall``, the server's time when known, else ours)."""
    ms = number(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    seconds = number(value)
    if seconds is not None:
        return seconds
    return until_s(value, time.time() if wall is None else wall)
