"""Shared HTTP mechanics: translate aiohttp/msgspec failures into the CascadeError tree."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import aiohttp
import msgspec

from .._errors import (
    CascadeError,
    MalformedResponse,
    ProviderConnectionError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
)

__all__ = ["map_exceptions", "redact", "retry_after_s", "status_error"]

_MAX_ERROR_BODY = 8192


def redact(text: str, secret: str | None) -> str:
    """Remove a credential from text a server may have echoed back."""
    if secret and secret in text:
        text = text.replace(secret, "***")
    return text


@contextmanager
def map_exceptions(provider: str, model: str, secret: str | None) -> Iterator[None]:
    """Translate third-party exceptions raised inside the block (httpcore's pattern)."""
    try:
        yield
    except CascadeError:
        raise
    except TimeoutError:
        raise ProviderTimeout("timed out", provider=provider, model=model) from None
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
        raise ProviderConnectionError(
            f"connection closed mid-response ({type(exc).__name__})", provider=provider, model=model
        ) from None
    except aiohttp.ClientConnectionError as exc:
        raise ProviderConnectionError(
            redact(f"{type(exc).__name__}: {exc}", secret), provider=provider, model=model
        ) from None
    except aiohttp.ClientError as exc:
        raise ProviderConnectionError(
            redact(f"{type(exc).__name__}: {exc}", secret), provider=provider, model=model
        ) from None
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        raise MalformedResponse(
            redact(f"bad body: {exc}", secret), provider=provider, model=model
        ) from None


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | str | None = None


_error_decoder = msgspec.json.Decoder(_ErrorBody)


async def status_error(
    resp: aiohttp.ClientResponse, *, provider: str, model: str, secret: str | None
) -> ProviderStatusError:
    """Build the error for a non-2xx response (OpenAI and Anthropic error bodies alike)."""
    try:
        raw = await resp.content.read(_MAX_ERROR_BODY)
    except (aiohttp.ClientError, TimeoutError):
        raw = b""
    body = redact(raw.decode("utf-8", "replace"), secret)
    message = resp.reason or "error"
    try:
        detail = _error_decoder.decode(raw).error
    except (msgspec.DecodeError, msgspec.ValidationError):
        detail = None
    if isinstance(detail, _ErrorDetail) and detail.message:
        message = detail.message
    elif isinstance(detail, str) and detail:
        message = detail
    message = redact(message, secret)
    status = resp.status
    if status in (429, 529):
        return RateLimited(
            message,
            provider=provider,
            model=model,
            status=status,
            body=body,
            retry_after=retry_after_s(resp.headers),
        )
    return ProviderStatusError(message, provider=provider, model=model, status=status, body=body)
