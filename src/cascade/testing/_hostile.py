"""Hostile bodies, generated as they are sent: oversized, endless, compressed, deep.

A fake server asks for these with a `Reply`'s ``fault`` (``huge``, ``endless``,
``gzip_bomb``, ``deep_json``, ``trickle``). None of them is ever held whole in memory:
a body of a gigabyte is a prefix, one constant block written again and again, and a
suffix; a client that stops reading stops the writing (its connection closes, or the
server's writes wait on the socket).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import web

__all__ = ["DEEP_JSON", "FILLER", "oversized", "send_body", "send_endless", "split_at_filler"]

FILLER = "<<fault-filler>>"
"""The text a format renders where the oversized filler goes (then split out)."""

DEEP_JSON = b'{"nested": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
"""An object with a field nested 100,000 deep: valid JSON, and deeper than any decoder's
recursion limit (a field the reader does not know is still parsed to be skipped)."""

_BLOCK = b" " * 65536


def split_at_filler(rendered: bytes) -> tuple[bytes, bytes]:
    """The bytes before and after `FILLER` in a rendered body or event."""
    head, sep, tail = rendered.partition(FILLER.encode())
    if not sep:
        raise ValueError("the rendered body does not contain the filler marker")
    return head, tail


def oversized(head: bytes, size: int | None, tail: bytes) -> Iterator[bytes]:
    """``head``, then ``size`` spaces (forever with None) in 64 KiB blocks, then ``tail``.

    The spaces sit inside a JSON string, so the body stays valid JSON of any size.
    """
    yield head
    if size is None:
        while True:
            yield _BLOCK
    full, part = divmod(size, len(_BLOCK))
    for _ in range(full):
        yield _BLOCK
    if part:
        yield _BLOCK[:part]
    yield tail


def _gzipped(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """``pieces`` compressed into one gzip member, flushed now and then so the client
    receives (and decodes) as it goes. Spaces compress about 1000 to 1."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    pending = 0
    for piece in pieces:
        out = compressor.compress(piece)
        pending += len(piece)
        if pending >= 1 << 20:  # every MiB of input, about a KiB out
            out += compressor.flush(zlib.Z_SYNC_FLUSH)
            pending = 0
        if out:
            yield out
    yield compressor.flush()


async def send_body(
    request: web.Request,
    headers: dict[str, str],
    pieces: Iterator[bytes],
    *,
    gzip: bool = False,
) -> web.StreamResponse:
    """Write ``pieces`` as the body (chunked, gzip-encoded with ``gzip``), one at a time.

    Each write waits while the socket's buffer is full: a client that stops reading holds
    the server back, one that closes the connection ends it.
    """
    response = web.StreamResponse(headers=headers)
    response.force_close()
    if gzip:
        response.headers["Content-Encoding"] = "gzip"
        pieces = _gzipped(pieces)
    await response.prepare(request)
    for piece in pieces:
        await response.write(piece)
        await asyncio.sleep(0)  # a client on the same loop reads (and stops) as it goes
    await response.write_eof()
    return response


async def send_endless(
    request: web.Request,
    headers: dict[str, str],
    first: bytes,
    block: bytes,
    *,
    delay_s: float,
    pause: Callable[[float], Awaitable[None]],
) -> web.StreamResponse:
    """Write ``first``, then ``block`` again and again (``delay_s`` apart) until the client
    leaves or the server closes."""
    response = web.StreamResponse(headers=headers)
    response.force_close()
    await response.prepare(request)
    await response.write(first)
    while True:
        if delay_s > 0:
            await pause(delay_s)
        else:
            await asyncio.sleep(0)  # a fast client on the same loop must get to read
        await response.write(block)
