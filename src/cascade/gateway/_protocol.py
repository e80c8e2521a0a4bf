"""Requests aiohttp's HTTP parser refuses before any handler runs: a header line over
8190 bytes or more than 128 header fields (431), a request line over 8190 bytes (414), a
malformed request line, an invalid header name or ``Content-Length``, bad chunked
framing (400). Each is answered in JSON that both APIs' SDKs read as an error, like every
other error of the gateway, and gets its ``gateway.request`` access line.

aiohttp answers these itself, before any middleware, in plain text quoting the bytes it
refused (a header line too long may be a key), and no public hook reaches them (aiohttp
issue #3287). :class:`GatewayRunner` is an ``AppRunner`` whose connections are
:class:`_Connection`, aiohttp's ``RequestHandler`` with ``handle_error`` extended: it lets
aiohttp do what it does for a refusal (log it, which ``_server._NoRequestBytes`` scrubs of
the bytes; refuse if an answer was already under way), then answers in JSON instead of
aiohttp's text, the connection still closed after it.

The refused request's path is not known (aiohttp's stand-in for it has the path ``/``):
learning it would mean watching every byte received, which cost 1.7% of a request's
instructions (``benchmarks/gateway_cost.py --callgrind``). So the answer's body is the one
both formats read: ``{"type": "error", "error": {"type", "message", "param", "code"}}`` is
OpenAI's error object under Anthropic's envelope, and each SDK raises it as its API's
error; the access line's method is ``_OTHER`` and its path ``null``.

``tests/test_gateway_parse_errors.py`` checks the aiohttp internals this builds on.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import structlog
from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.http_parser import HttpRequestParser, HttpRequestParserPy

from .._telemetry._logs import emit
from ._access import ACCESS_EVENT, new_request_id
from ._errors import GatewayError

__all__ = ["GatewayRunner"]

log = structlog.get_logger("cascade.gateway")

_TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message, both parsers
_PURE_PYTHON_PARSER = HttpRequestParser is HttpRequestParserPy  # as aiohttp's connections
_METHOD_FIRST = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+ ")
"""How the pure-Python parser's request line starts (a method token and a space), quoted
in a ``LineTooLong``; a header line starts with its name and a colon."""


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer a request aiohttp's parser refuses in
    JSON (see the module doc)."""

    async def _make_server(self) -> web.Server:
        # aiohttp builds its Server (and the app's startup) here; the same server, its
        # connections being _Connection. aiohttp offers no public hook for either.
        made = await super()._make_server()
        try:
            return _Server(
                made.request_handler,
                request_factory=made.request_factory,
                handler_cancellation=made.handler_cancellation,
                **made._kwargs,
            )
        except (AttributeError, TypeError) as exc:  # an aiohttp that changed these
            # The gateway still serves; only a refusal by the parser is aiohttp's own
            # plain text again (its bytes still scrubbed from the log).
            log.warning("gateway.parse_refusals_plain", error=repr(exc)[:200])
            return made


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)


def _refusal(status: int, exc: HttpProcessingError) -> GatewayError:
    """The gateway's error for aiohttp's refusal ``exc`` (answered ``status`` by aiohttp)."""
    if isinstance(exc, LineTooLong):
        if _is_request_line(exc.args[0] if exc.args else b""):
            return GatewayError(414, "the request line is too long", code="uri_too_long")
        return GatewayError(431, "a request header field is too large", code="headers_too_large")
    if isinstance(exc, ContentEncodingError):  # (br without the brotli package, say)
        return GatewayError(
            415, "the request's Content-Encoding is not supported", code="unsupported_encoding"
        )
    if exc.message == _TOO_MANY_HEADERS:
        return GatewayError(431, "the request has too many header fields", code="headers_too_large")
    return GatewayError(
        status,
        f"the request is not valid HTTP/1.1 ({type(exc).__name__})",
        code="malformed_request",
    )


def _is_request_line(line: object) -> bool:
    """Whether the line a ``LineTooLong`` quotes is the request line, not a header's. The
    C parser quotes the request target from its buffer (a ``bytearray``: ``/...``,
    ``http://...``, ``*...``) and a header's name or value as ``bytes`` (a value may start
    like a target or a request line); the pure-Python parser quotes the whole line, the
    request line starting with its method."""
    if not _PURE_PYTHON_PARSER:
        return isinstance(line, bytearray)
    return isinstance(line, bytes | bytearray) and _METHOD_FIRST.match(line) is not None


class _Connection(web.RequestHandler):
    """aiohttp's connection, which answers a request its parser refuses in JSON (see the
    module doc)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's answer to ``exc``; for a request its parser refused, JSON: logged by
        aiohttp as before (scrubbed), the bytes never echoed."""
        answer = super().handle_error(request, status, exc, message)  # logs, checks
        if not isinstance(exc, HttpProcessingError):
            return answer  # a handler's failure past the middleware: aiohttp's own answer
        refusal = _refusal(status, exc)
        body = {
            "type": "error",  # Anthropic's envelope, around OpenAI's error object
            "error": {
                "message": refusal.message,
                "type": "invalid_request_error",
                "param": None,
                "code": refusal.code,
            },
        }
        request_id = new_request_id()
        response = web.Response(
            status=refusal.status,
            body=msgspec.json.encode(body),
            content_type="application/json",
            # the header of each API's SDK: which one sent it is not known
            headers={"x-request-id": request_id, "request-id": request_id},
        )
        response.force_close()
        fields: dict[str, Any] = {
            "method": "_OTHER",
            "path": None,
            "request_id": request_id,
            "status": refusal.status,
            "error": refusal.code,
        }
        emit(log, "info", ACCESS_EVENT, fields)
        return response
