"""The gateway's aiohttp application: a ``POST`` route per wire format (``_chat.py``),
``GET /v1/models`` (a valid key asked for, when keys are configured), ``/healthz`` and
``/readyz`` (never a key: probes), and every routing error (404, 405, 413) in the error
format of the API its path belongs to. Requests a browser made for another site are
refused first (``_guard.py``). Every request gets one access-log line: the chat routes
write their own (``_chat.py``), the middleware every other one (the listing, the probes,
refusals before a handler ran), the connection those aiohttp's HTTP parser refuses
(``_protocol.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from time import perf_counter
from typing import Any

import structlog
from aiohttp import HttpVersion11, web

from .._telemetry._logs import emit
from ._access import ACCESS_EVENT, LOGGED, new_request_id
from ._anthropic_wire import AnthropicWire
from ._chat import chat_handler
from ._errors import GatewayError, internal_error
from ._gate import check_key
from ._gateway import GATEWAY, Gateway
from ._guard import check_request
from ._openai_wire import OpenAIWire
from ._respond import ClientGone, error_response, send
from ._wire import WireFormat

__all__ = ["GATEWAY", "Gateway", "create_app", "default_wires"]

log = structlog.get_logger("cascade.gateway")


def default_wires() -> list[WireFormat]:
    """The formats served: OpenAI's Chat Completions and Anthropic's Messages."""
    return [OpenAIWire(), AnthropicWire()]


def create_app(gateway: Gateway, *, wires: Sequence[WireFormat] | None = None) -> web.Application:
    """The aiohttp application serving ``gateway``: each wire format's ``POST`` route,
    ``GET /v1/models``, ``/healthz`` and ``/readyz``. Closing the app closes the
    gateway's cascades."""
    formats = list(default_wires() if wires is None else wires)
    app = web.Application(
        client_max_size=gateway.generation.loaded.gateway.max_body_bytes,
        # one middleware: each one is a frame more on every resumption of every request
        middlewares=[_front_middleware(formats)],
    )
    app[GATEWAY] = gateway
    # Expect is the middleware's (417) and the chat handler's (100 Continue), not
    # aiohttp's: its own sends 100 before any check, and its 417 skips the middleware.
    for wire in formats:
        app.router.add_post(wire.path, chat_handler(wire), expect_handler=_expect_later)
    app.router.add_get("/v1/models", _models, expect_handler=_expect_later)
    # a name may hold "/"
    app.router.add_get("/v1/models/{model:.+}", _model, expect_handler=_expect_later)
    app.router.add_get("/healthz", _healthz, expect_handler=_expect_later)
    app.router.add_get("/readyz", _readyz, expect_handler=_expect_later)

    async def open_routes(app: web.Application) -> None:
        await app[GATEWAY].gate.open()
        await app[GATEWAY].generation.open()

    async def close(app: web.Application) -> None:
        await app[GATEWAY].aclose()
        await app[GATEWAY].gate.aclose()

    app.on_startup.append(open_routes)
    app.on_response_prepare.append(_tell_closing)
    app.on_cleanup.append(close)
    return app


async def _expect_later(request: web.Request) -> None:
    """Nothing yet: an ``Expect`` is answered once the request passed its checks."""


def _check_expect(request: web.Request) -> None:
    """Raise ``GatewayError`` (417) for an expectation other than ``100-continue``
    (which the chat request answers when it reads the body: ``_serve.py``)."""
    expect = request.headers.get("Expect")
    if expect is None or request.version != HttpVersion11:
        return
    if expect.strip().lower() != "100-continue":
        raise GatewayError(
            417, "the only expectation served is Expect: 100-continue", code="expectation_failed"
        )


# -- plain routes ------------------------------------------------------------------------


async def _models(request: web.Request) -> web.Response:
    """The route names: with gateway keys, for a valid key only (401), and only those
    the key may ask for, as OpenAI lists the models a key has access to."""
    may_use = check_key(request.app[GATEWAY].gate, request.headers)
    generation = request.app[GATEWAY].generation
    created = int(time.time())
    data = [
        _model_object(name, created)
        for name in generation.model_names()
        if (route := generation.find(name)) is not None and may_use(route.name, name)
    ]
    # Anthropic's pager reads has_more and the ids: one page, the last
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    listing = {"object": "list", "data": data, "has_more": False}
    return web.json_response(listing | {"first_id": first, "last_id": last})


def _model_object(name: str, created: int) -> dict[str, Any]:
    """A model as both APIs list it: OpenAI's ``object``, ``created``, ``owned_by``, and
    Anthropic's ``type``, ``display_name``, ``created_at`` (each SDK ignores the other's)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))
    return {
        "id": name,
        "object": "model",
        "created": created,
        "owned_by": "cascade",
        "type": "model",
        "display_name": name,
        "created_at": stamp,
    }


async def _model(request: web.Request) -> web.Response:
    """One model name: any a route claims, or (with a default route) any at all; with
    gateway keys, for a valid key only (401 before the 404 of an unknown name), and a
    name the key may not ask for is as unknown to it (404)."""
    may_use = check_key(request.app[GATEWAY].gate, request.headers)
    name = request.match_info["model"]
    route = request.app[GATEWAY].generation.find(name)
    if route is None or not may_use(route.name, name):
        raise GatewayError(
            404, f"no route serves the model {name[:200]!r}", param="model", code="model_not_found"
        )
    return web.json_response(_model_object(name, int(time.time())))


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    if gateway.draining:
        return web.json_response({"status": "draining"}, status=503)
    if not gateway.generation.ready():
        return web.json_response({"status": "every provider's breaker is open"}, status=503)
    return web.json_response({"status": "ready"})


# -- errors ------------------------------------------------------------------------------


def _access(
    request: web.Request,
    status: int,
    error: str | None,
    t0: float,
    request_id: str | None = None,
) -> None:
    """The access line of a request no chat handler logged. Its path is the route's
    pattern (``/v1/models/{model}``), never the client's own text (which could hold
    anything, a key pasted into a URL too): ``null`` for a path no route serves."""
    fields: dict[str, Any] = {
        "method": request.method if request.method in _METHODS else "_OTHER",
        "path": _pattern(request),
        "status": status,
        "duration_ms": round((perf_counter() - t0) * 1000, 3),
    }
    if request_id is not None:
        fields["request_id"] = request_id
    if error is not None:
        fields["error"] = error
    emit(log, "info", ACCESS_EVENT, fields)


_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
)
"""The methods an access line names; any other is ``_OTHER`` (OpenTelemetry's
``http.request.method``): aiohttp's pure-Python parser takes any token as a method."""


def _pattern(request: web.Request) -> str | None:
    """The pattern of the route ``request`` was for, or None for a path no route serves."""
    resource = request.match_info.route.resource
    if resource is not None:
        return resource.canonical
    # a method no route of the path takes (405), or a path no route serves
    paths = {r.canonical for r in request.app.router.resources()}
    return request.path if request.path in paths else None


def _wire_for(path: str, wires: Iterable[WireFormat]) -> WireFormat:
    """The format whose API ``path`` belongs to: its chat path or a path under it (an
    endpoint not served, such as Anthropic's ``/v1/messages/count_tokens``: the SDK
    reads the error in its own format); else the first format's."""
    fallback: WireFormat | None = None
    for wire in wires:
        if path == wire.path or path.startswith(wire.path + "/"):
            return wire
        fallback = fallback or wire
    assert fallback is not None
    return fallback


def _chat_wire(path: str, wires: Iterable[WireFormat]) -> WireFormat | None:
    """The wire format whose chat path ``path`` is, if any."""
    return next((wire for wire in wires if wire.path == path), None)


def _front_middleware(wires: list[WireFormat]) -> Any:
    """Before every handler, the guard (``_guard.py``); around it, every error the
    router or the guard raises as a response in the format of the path's API; after it,
    the response sent within ``write_timeout_s`` if the handler did not send it."""

    @web.middleware
    async def front(request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = perf_counter()
        error: str | None = None
        try:
            check_request(request, request.app[GATEWAY].allowed_hosts)
            _check_expect(request)
            response: web.StreamResponse = await handler(request)
        except GatewayError as exc:
            response = error_response(_wire_for(request.path, wires), exc)
            error = exc.code or exc.type
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            wire = _wire_for(request.path, wires)
            message = {
                404: f"no route for {request.method} {request.path[:200]}",
                405: f"method {request.method} not allowed on {request.path[:200]}",
                413: "the request body is too large",
            }.get(exc.status, exc.reason)
            refusal = GatewayError(exc.status, message)
            response = error_response(wire, refusal)
            error = refusal.code or refusal.type
            if exc.status == 405 and "Allow" in exc.headers:
                response.headers["Allow"] = exc.headers["Allow"]
        except Exception:
            # A bug: in the format of the path's API (not aiohttp's page), and logged.
            log.exception("gateway.internal_error", path=_pattern(request))
            failure = internal_error()
            response = error_response(_wire_for(request.path, wires), failure)
            error = failure.code
        status = response.status
        request_id = None
        if LOGGED not in request and not response.prepared:
            chat = _chat_wire(request.path, wires)
            if chat is not None:  # a request to a chat path refused before its handler ran
                # (403, 417, a 405 for a method other than POST): an id too
                request_id = new_request_id()
                response.headers[chat.request_id_header] = request_id
        if not response.prepared:
            # Sent here, within the write timeout, not by aiohttp once this returns (with
            # no timer): a client that pipelines small requests and reads nothing would
            # hold its connection forever once the socket's buffers were full.
            try:
                await send(
                    request, response, last=True, timeout_s=request.app[GATEWAY].write_timeout_s
                )
            except ClientGone:  # its connection is aborted: it did not get the answer
                status = 499
            except asyncio.CancelledError:  # it left while the answer was being written
                if LOGGED not in request:
                    _access(request, 499, error, t0, request_id)
                raise
        if LOGGED not in request:
            _access(request, status, error, t0, request_id)
        _forgo_rest(request)
        return response

    return front


def _forgoes_rest(request: web.Request) -> bool:
    """Whether the body the request left unread (refused before it was read, or cut at the
    limit) is not to be read to be dropped, the connection closing after the answer
    instead: when it is compressed (aiohttp's lingering would inflate what is left of it
    on the event loop: a 1 MB gzip bomb refused with a 401 is 1 GiB to inflate), or was
    to follow a 100 Continue (a client whose final answer came first does not send it:
    lingering took its next request on the connection for that body). A plain body is
    left to aiohttp, which keeps the connection."""
    if request.content.is_eof():
        return False
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    expecting = "Expect" in request.headers and request.version == HttpVersion11
    return encoding not in ("", "identity") or expecting


async def _tell_closing(request: web.Request, response: web.StreamResponse) -> None:
    """An answer after which the connection closes (:func:`_forgoes_rest`, or any answer
    while the gateway drains) says so: a client's pool then does not send its next
    request on a connection closing under it."""
    if request.app[GATEWAY].draining or _forgoes_rest(request):
        response.force_close()
        response.headers["Connection"] = "close"  # its headers are made: set it too


def _forgo_rest(request: web.Request) -> None:
    if _forgoes_rest(request):
        request.protocol.close()  # ignores what arrives from now on; closes after this
        request.content.feed_eof()  # nothing left to linger over
