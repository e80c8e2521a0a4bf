"""An HTTP provider's call answered with one JSON body, not a stream (``stream = false``,
``n`` answers): :func:`post_whole` does the POST within ``timeout_s`` and reads the body
whole, never past ``max_response_bytes`` nor what it could decode to; and the request
body's encoding, which every call (a stream's too) uses.

The provider base class and the streamed read are :mod:`._http`'s; errors are
translated as there (``_http_errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import msgspec

from .._errors import CascadeError, InputError
from .._timeouts import ClockLane
from ._http_errors import translate
from ._sizes import OBJECT_BYTES, json_cost

if TYPE_CHECKING:
    from ._http import HTTPProvider

__all__ = ["encode_body", "post_whole", "read_body"]

_MAX_DECODED_PER_BYTE = 4 + OBJECT_BYTES
"""The most ``json_cost`` can count per byte of body (a character at 4 bytes, an object per
byte): a body under ``limit`` / this needs no scan."""
_READ_BYTES = 65536
_encode = msgspec.json.Encoder().encode

T = TypeVar("T")


def encode_body(body: dict[str, Any]) -> bytes:
    """The request body as JSON; input that cannot be encoded is the caller's error."""
    try:
        return _encode(body)
    except (msgspec.EncodeError, TypeError, UnicodeEncodeError) as exc:
        raise InputError(f"cannot encode the request: {exc}") from None


async def post_whole(
    provider: HTTPProvider, body: dict[str, Any], parse: Callable[[bytes], T]
) -> T:
    """One non-streaming POST, its body parsed by ``parse``; errors translated as in
    ``HTTPProvider.stream``."""
    data = encode_body(body)
    timers = provider.timers
    lane = provider.timeouts if timers is None else ClockLane(timers, provider.config.timeout_s)
    try:
        deadline = lane.enter()  # timeout_s, as asyncio.timeout would (see _timeouts.py)
        try:
            async with provider._post(data) as resp:
                await provider._check(resp)
                limit = provider.config.max_response_bytes
                if _small_and_plain(resp, limit):
                    # aiohttp reads no more than Content-Length bytes of a body it does not
                    # decode, so one read() is bounded.
                    raw = _decoded_within(provider, await resp.read(), limit)
                else:
                    raw = await read_body(provider, resp)
        except BaseException as exc:
            lane.exit(deadline, exc)  # TimeoutError if timeout_s ran out
            raise
        lane.exit(deadline, None)
        return parse(raw)
    except CascadeError:
        raise
    except Exception as exc:
        error = translate(
            exc, provider=provider.name, model=provider.model, secret=provider._secret
        )
    try:
        raise error
    finally:  # the error's traceback holds this frame: no local may hold the error
        del error


async def read_body(provider: HTTPProvider, resp: aiohttp.ClientResponse) -> bytes:
    """The whole (decoded) body, read in bounded pieces; ``ResponseTooLarge`` as soon as
    it passes the provider's ``max_response_bytes``, holding at most that and one read,
    or when what it decodes to could take more than that (see ``_sizes.json_cost``)."""
    limit = provider.config.max_response_bytes
    parts: list[bytes] = []
    received = 0
    while True:
        piece = await resp.content.read(_READ_BYTES)
        if not piece:
            break
        received += len(piece)
        if received > limit:
            raise provider._too_large(received)
        parts.append(piece)
    body = parts[0] if len(parts) == 1 else b"".join(parts)
    del parts  # the pieces go before the body is scanned and decoded
    return _decoded_within(provider, body, limit)


def _small_and_plain(resp: aiohttp.ClientResponse, limit: int) -> bool:
    """A body of a Content-Length within one read and the cap, not encoded (the common
    small answer)."""
    length = resp.content_length
    return (
        length is not None
        and length <= min(_READ_BYTES, limit)
        and "Content-Encoding" not in resp.headers
    )


def _decoded_within(provider: HTTPProvider, body: bytes, limit: int) -> bytes:
    """``body``, unless what it decodes to could take more than ``limit``."""
    if len(body) * _MAX_DECODED_PER_BYTE > limit:  # else it cannot decode past the cap
        cost = json_cost(body)
        if cost > limit:
            raise provider._too_large(cost, decoded=True)
    return body
