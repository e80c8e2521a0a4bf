"""Requests aiohttp's HTTP parser refuses before any handler runs: a header line over
8190 bytes or more than 128 header fields (431), a request line over 8190 bytes, a
malformed request line, an invalid header name or ``Content-Length``, bad chunked
framing (400). Each is answered in the error format of the API its path belongs to, like
every other error of the gateway, and gets its ``gateway.request`` access line.

aiohttp answers these itself, before any middleware, in plain text quoting the bytes it
refused (a header line too long may be a key), and no public hook reaches them (aiohttp
issue #3287). :class:`GatewayRunner` is an ``AppRunner`` whose connections are
:class:`_Connection`, aiohttp's ``RequestHandler`` with two methods extended:

- ``data_received`` keeps the start of the request being received (at most 256 bytes of
  its first line, and that line's length): aiohttp's stand-in for a refused request has
  the path ``/`` whatever the client sent. Those bytes are only matched against the
  routes' paths: never logged, never sent back. A refusal inside a body already handed to
  a handler (bad chunked framing after the headers) fails that body at once (the handler
  answers 400 ``invalid_body``), where aiohttp left the handler waiting for the rest of it
  until ``body_timeout_s``.
- ``handle_error`` lets aiohttp do what it does for a refusal (log it, which
  ``_server._NoRequestBytes`` scrubs of the bytes; refuse if an answer was already under
  way), then answers in the API's format instead of aiohttp's text, the connection still
  closed after it.

``tests/test_gateway_parse_errors.py`` checks the aiohttp internals this builds on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from time import perf_counter
from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.http_parser import RawRequestMessage
from aiohttp.streams import StreamReader

from .._telemetry._logs import emit
from ._access import ACCESS_EVENT
from ._errors import GatewayError
from ._respond import error_response
from ._wire import WireFormat

__all__ = ["WIRES", "GatewayRunner"]

log = structlog.get_logger("cascade.gateway")

WIRES = web.AppKey("cascade_wires", tuple)
"""The app's wire formats (``create_app``): whose error format a refusal is answered in."""

_KEPT = 256
"""Bytes kept of a request line: enough for a method and any route's path."""
_DEFAULT_MAX_LINE = 8190  # aiohttp's default max_line_size
_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message, both parsers
_METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH"}
)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer a request aiohttp's parser refuses in
    the error format of the app's API for its path (see the module doc)."""

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server (and the app's startup) here; the same server, its
        # connections being _Connection. aiohttp offers no public hook for either.
        made = await super()._make_server()
        server = _Server(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            **made._kwargs,
        )
        wires: tuple[WireFormat, ...] = self.app[WIRES]  # (an app create_app made)
        paths = {r.canonical for r in self.app.router.resources()}
        server.refusals = _Refusals(wires, paths)
        return server


class _Server(web.Server):
    refusals: _Refusals

    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


class _Refusals:
    """How a refused request is answered and logged."""

    def __init__(self, wires: Sequence[WireFormat], paths: Iterable[str]) -> None:
        self.wires = {wire.path: wire for wire in wires}
        self.fallback = wires[0] if wires else None
        self.paths = frozenset(paths)

    def path_of(self, target: bytes | None) -> str | None:
        """The route path ``target`` names, or None (none does, or it is cut short)."""
        if not target:
            return None
        end = len(target)
        for sep in b"?#":
            found = target.find(sep)
            if found >= 0:
                end = min(end, found)
        path = target[:end].decode("latin-1")
        return path if path in self.paths else None


def _refusal(status: int, exc: HttpProcessingError, line_len: int, max_line: int) -> GatewayError:
    """The gateway's error for aiohttp's refusal ``exc`` (answered ``status`` by aiohttp)."""
    if isinstance(exc, LineTooLong):
        if line_len > max_line:  # the request line, not a header line
            return GatewayError(
                status,
                f"the request line is over {max_line} bytes",
                code="request_line_too_long",
            )
        return GatewayError(431, "a request header field is too large", code="headers_too_large")
    if exc.message == _TOO_MANY_HEADERS:
        return GatewayError(431, "the request has too many header fields", code="headers_too_large")
    return GatewayError(
        status,
        f"the request is not valid HTTP/1.1 ({type(exc).__name__})",
        code="malformed_request",
    )


class _Connection(web.RequestHandler):
    """aiohttp's connection, which knows the path of a request its parser refuses and
    answers it in that API's error format (see the module doc)."""

    def __init__(
        self, manager: _Server, *, max_line_size: int = _DEFAULT_MAX_LINE, **kwargs: Any
    ) -> None:
        super().__init__(manager, max_line_size=max_line_size, **kwargs)
        self._refusals = manager.refusals
        self._max_line = max_line_size
        self._line: bytes | None = b""
        """The start of the request line being received; None while a body is."""
        self._line_len = 0
        self._line_done = False
        self._t0 = perf_counter()
        self._method: bytes | None = None
        self._target: bytes | None = None
        self._body: StreamReader | None = None

    def data_received(self, data: bytes) -> None:
        body = self._body
        if body is not None and body.is_eof():  # that request is whole: the next one starts
            self._body = None
            self._line, self._line_len, self._line_done = b"", 0, False
            self._t0 = perf_counter()
        if self._line is not None and not self._line_done:
            self._note_line(data)
        count = self._request_count
        super().data_received(data)
        if self._request_count == count:
            return
        message, payload = self._messages[-1]  # the last one parsed (or refused) of these
        if isinstance(message, RawRequestMessage):
            self._method = message.method.encode("latin-1")
            self._target = message.path.encode("utf-8", "surrogateescape")[:_KEPT]
            self._line, self._body = None, payload
        elif body is not None and not body.is_eof() and body.exception() is None:
            # refused inside a body a handler may be reading: it fails now, not at the
            # handler's body timeout (aiohttp's parser drops that body without a word)
            body.set_exception(web.RequestPayloadError("the request body's framing is invalid"))

    def _note_line(self, data: bytes) -> None:
        assert self._line is not None
        if not self._line_len:
            data = data.lstrip(b"\r\n")  # empty lines before a request line are allowed
        end = data.find(b"\n")
        piece = data if end < 0 else data[:end]
        self._line_len += len(piece)
        if len(self._line) < _KEPT:
            self._line += piece[: _KEPT - len(self._line)]
        if end >= 0:
            self._line_done = True
            self._line_len -= piece.endswith(b"\r")
        method, _, rest = self._line.partition(b" ")
        self._method = method
        self._target = rest.partition(b" ")[0] or None

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to ``exc``; for a request its parser refused, in the API's
        error format: logged by aiohttp as before (scrubbed), the bytes never echoed."""
        answer = super().handle_error(request, status, exc, message)  # logs, checks
        if not isinstance(exc, HttpProcessingError):
            return answer  # a handler's failure past the middleware: aiohttp's own answer
        refusal = _refusal(status, exc, self._line_len, self._max_line)
        refusals = self._refusals
        path = refusals.path_of(self._target)
        wire = refusals.wires.get(path or "", refusals.fallback)
        if wire is None:
            return answer
        response = error_response(wire, refusal)
        response.force_close()
        method = self._method
        fields: dict[str, Any] = {
            "method": method.decode() if method is not None and method in _METHODS else "_OTHER",
            "path": path,
            "status": refusal.status,
            "duration_ms": round((perf_counter() - self._t0) * 1000, 3),
            "error": refusal.code,
        }
        emit(log, "info", ACCESS_EVENT, fields)
        return response
