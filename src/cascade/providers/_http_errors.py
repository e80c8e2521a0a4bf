"""A provider call's failures in the CascadeError tree: a third-party exception
(:func:`translate`) and a non-2xx response (:func:`status_error`, OpenAI and Anthropic error
bodies alike, read up to 16 KiB). Every message is redacted of the API key, and no error
keeps a reference to aiohttp's objects (whose ``request_info`` holds the request headers).
"""

from __future__ import annotations

import aiohttp
import msgspec

from .._errors import (
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
)
from .._headers import retry_after_s
from ._redact import redact
from ._status import status_class

__all__ = ["MAX_ERROR_BODY", "status_error", "translate"]

MAX_ERROR_BODY = 16384
"""Most bytes of an error body read."""


def translate(exc: Exception, *, provider: str, model: str, secret: str | None) -> ProviderError:
    """The ProviderError for a third-party exception (httpcore's ``map_exceptions``)."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ProviderTimeout("connect timed out", provider=provider, model=model, phase="connect")
    if isinstance(exc, TimeoutError):
        return ProviderTimeout("timed out (timeout_s)", provider=provider, model=model)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return ProviderConnectionError(
            f"connection closed mid-response ({name})", provider=provider, model=model
        )
    if isinstance(exc, aiohttp.ClientResponseError):
        # A bad status line or header, too many redirects: the server broke HTTP.
        return MalformedResponse(
            redact(f"{name}: {exc.message}", secret), provider=provider, model=model
        )
    if isinstance(exc, aiohttp.ClientError):
        return ProviderConnectionError(
            redact(f"{name}: {exc}", secret), provider=provider, model=model
        )
    if isinstance(exc, msgspec.DecodeError | msgspec.ValidationError | UnicodeDecodeError):
        return MalformedResponse(redact(f"bad body: {exc}", secret), provider=provider, model=model)
    if isinstance(exc, RecursionError):
        # msgspec's answer to JSON nested deeper than the interpreter's recursion limit.
        return MalformedResponse("bad body: JSON nested too deep", provider=provider, model=model)
    return ProviderConnectionError(
        redact(f"unexpected {name}: {exc}", secret), provider=provider, model=model
    )


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | str | None = None


_error_decoder = msgspec.json.Decoder(_ErrorBody)


async def status_error(
    resp: aiohttp.ClientResponse, *, provider: str, model: str, secret: str | None
) -> ProviderStatusError:
    """Build the error for a non-2xx response (OpenAI and Anthropic error bodies alike)."""
    raw = b""
    try:
        while len(raw) < MAX_ERROR_BODY:
            piece = await resp.content.read(MAX_ERROR_BODY - len(raw))
            if not piece:
                break
            raw += piece
    except (aiohttp.ClientError, TimeoutError):
        pass  # the status says enough; a broken error body must not hide it
    body = redact(raw.decode("utf-8", "replace"), secret)
    message = resp.reason or "error"
    try:
        detail = _error_decoder.decode(raw).error
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
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
    cls = ProviderStatusError
    if isinstance(detail, _ErrorDetail):
        cls = status_class(status, code=detail.code, kind=detail.type, message=message)
    return cls(message, provider=provider, model=model, status=status, body=body)
