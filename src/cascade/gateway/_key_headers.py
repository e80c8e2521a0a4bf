"""The key a request presents, read from its headers, and the refusal of a request by
its key (:class:`GatewayDenied`); what a key may do is ``_keys.py``'s.

A request presents its key as ``Authorization: Bearer <key>`` (OpenAI clients) or
``x-api-key: <key>`` (Anthropic clients); :func:`api_key_from_headers` reads either,
within ``MAX_HEADER_CHARS``, and refuses a malformed one (401) before any lookup.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Final

from ._errors import GatewayError
from ._keys_config import KEY_CHARS, MAX_KEY_CHARS

__all__ = ["MAX_HEADER_CHARS", "GatewayDenied", "api_key_from_headers"]

MAX_HEADER_CHARS: Final = MAX_KEY_CHARS + 16
"""The longest ``Authorization`` or ``x-api-key`` header read."""


class GatewayDenied(GatewayError):
    """A request the gateway refuses before running it: ``status`` (401, 403, 429),
    an OpenAI-style error ``code``, and for 429 the seconds until it may be retried;
    ``key``, the configured name of the key refused, when it is known (never the key)."""

    code: str

    def __init__(
        self,
        *,
        status: int,
        code: str,
        message: str,
        retry_after_s: float | None = None,
        should_retry: bool | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(
            status, message, code=code, retry_after_s=retry_after_s, should_retry=should_retry
        )
        self.key = key

    def __repr__(self) -> str:
        return f"GatewayDenied(status={self.status}, code={self.code!r})"


def _unauthorized(message: str, code: str = "invalid_api_key") -> GatewayDenied:
    return GatewayDenied(status=401, code=code, message=message)


def api_key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key a request presents (``Authorization: Bearer`` or ``x-api-key``), ``None``
    when it presents none; :class:`GatewayDenied` (401) when a header is malformed, too
    long, or the two headers name different keys. ``headers`` is case-insensitive
    (aiohttp's) or lower-case."""
    auth = headers.get("authorization")
    other = headers.get("x-api-key")
    key = None
    if auth is not None:
        if len(auth) > MAX_HEADER_CHARS:
            raise _unauthorized("the Authorization header is too long")
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise _unauthorized("expected 'Authorization: Bearer <key>'")
        key = _checked(value.strip())
    if other is not None:
        if len(other) > MAX_HEADER_CHARS:
            raise _unauthorized("the x-api-key header is too long")
        presented = _checked(other.strip())
        if key is not None and not hmac.compare_digest(presented, key):
            raise _unauthorized("Authorization and x-api-key hold different keys")
        key = presented
    return key


def _checked(key: str) -> str:
    if not key:
        raise _unauthorized("the API key is empty")
    if len(key) > MAX_KEY_CHARS or not KEY_CHARS.fullmatch(key):
        raise _unauthorized("malformed API key")
    return key
