"""Mechanism shared by the fake servers: app and runner, scripting, recording, faults.

A subclass knows one wire format: it parses and validates a request body
(`_parse`) and renders answers (`_json_body`, `_sse_events`, `_error_body`).
Everything about *when* and *how* bytes reach the socket lives here.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import TracebackType
from typing import Any, ClassVar, Self

import msgspec
from aiohttp import web

from cascade.testing._hostile import (
    DEEP_JSON,
    FILLER,
    oversized,
    send_body,
    send_endless,
    split_at_filler,
)
from cascade.testing._reply import FakeRequest, Reply, Responder
from cascade.testing._script import Playbook
from cascade.testing._wire import (
    Call,
    SSEEvents,
    decode_json,
    make_call,
    send_cut_json,
    send_sse,
)

__all__ = ["FakeServer"]

# Long enough for a response already being written to finish, short enough that
# closing a server never stalls a test suite; hung and sleeping handlers are
# woken by `_closing` and do not need it.
_SHUTDOWN_TIMEOUT_S = 1.0

_HOSTILE = frozenset({"huge", "gzip_bomb", "endless", "deep_json", "trickle"})


class _Closing(Exception):
    """Raised inside a handler that was waiting when the server began to close."""


def _host_in_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class FakeServer(ABC):
    """Base of the fake provider servers; see `FakeOpenAIServer` for an example.

    ``default`` answers models with no script or responder (without it they
    get a 404 in the API's error format); ``record=False`` keeps `requests`
    empty, for long benchmark runs. ``port=0`` binds any free port.
    """

    #: Appended to ``http://host:port`` to make `url`.
    _url_path: ClassVar[str]
    _chat_path: ClassVar[str]
    _request_id_header: ClassVar[str]
    #: Error message for a model with no script, responder or default.
    _unknown_model: ClassVar[str]

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Reply | str | None = None,
        record: bool = True,
    ) -> None:
        self._host = host
        self._port = port
        self._playbook = Playbook(default)
        self._record = record
        self._requests: list[FakeRequest] = []
        self._request_count = 0
        self._active_requests = 0
        self._disconnects = 0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._bound_port: int | None = None
        self._closing = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; `url` and `port` are valid afterwards."""
        if self._runner is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        self._closing = asyncio.Event()
        app = web.Application()
        app.router.add_post(self._chat_path, self._handle_chat)
        app.router.add_get("/v1/models", self._handle_models)
        self._add_routes(app)
        runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            # A client that gives up (timeout, disconnect) frees its handler,
            # so leak tests see connections and tasks go away.
            handler_cancellation=True,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = site.port

    def _add_routes(self, app: web.Application) -> None:  # noqa: B027 (a hook; optional)
        """More endpoints of a subclass (the OpenAI server's ``/v1/embeddings``)."""

    async def aclose(self) -> None:
        """Stop serving; hung or sleeping handlers are dropped, not awaited."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing.set()
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- introspection -----------------------------------------------------

    @property
    def port(self) -> int:
        """The bound TCP port (useful with ``port=0``)."""
        if self._bound_port is None or self._runner is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._bound_port

    @property
    def url(self) -> str:
        """Base URL to give a client."""
        return f"http://{_host_in_url(self._host)}:{self.port}{self._url_path}"

    @property
    def requests(self) -> list[FakeRequest]:
        """Every chat request received so far (empty with ``record=False``).

        Requests rejected as malformed (400) are counted but not recorded.
        """
        return list(self._requests)

    @property
    def request_count(self) -> int:
        """Number of chat requests received, counted even with ``record=False``."""
        return self._request_count

    @property
    def active_connections(self) -> int:
        """Currently open TCP connections to the server."""
        server = self._runner.server if self._runner is not None else None
        return 0 if server is None else len(server.connections)

    @property
    def active_requests(self) -> int:
        """Chat requests being answered right now (a hung or paced one included)."""
        return self._active_requests

    @property
    def disconnects(self) -> int:
        """Chat requests whose client went away before the answer was written.

        The handler is cancelled when the connection drops; a leak test waits for
        `active_requests` to fall and this to rise.
        """
        return self._disconnects

    def __repr__(self) -> str:
        where = self.url if self._runner is not None else "not started"
        models = self._playbook.models()
        return (
            f"<{type(self).__name__} {where} models={models} "
            f"requests={self._request_count} active_connections={self.active_connections}>"
        )

    # -- scripting ---------------------------------------------------------

    @property
    def default(self) -> Reply | None:
        """The reply for a model with no script or responder (None: answer 404).

        Settable: ``server.default = Reply(status=500)`` makes every unscripted model fail.
        """
        return self._playbook.default

    @default.setter
    def default(self, value: Reply | str | None) -> None:
        self._playbook.default = value

    def script(self, model: str, *replies: Reply | str) -> None:
        """Queue answers for ``model``, first in first out.

        Calling again appends to the queue. The last queued answer is repeated
        for every later request. Replaces a responder set for ``model``.
        """
        self._playbook.script(model, replies)

    def respond(self, model: str, responder: Responder) -> None:
        """Let ``responder`` decide every answer for ``model`` (replaces its script)."""
        self._playbook.respond(model, responder)

    def reset(self) -> None:
        """Forget scripts, responders, recorded requests and counts."""
        self._playbook.clear()
        self._requests.clear()
        self._request_count = 0
        self._disconnects = 0
        self._ids = itertools.count(1)

    # -- wire format, supplied by subclasses --------------------------------

    @abstractmethod
    def _parse(
        self, body: Any, headers: Mapping[str, str]
    ) -> tuple[str, list[dict[str, Any]], bool] | str:
        """Return ``(model, messages, stream)``, or why the request is invalid.

        ``headers`` is case-insensitive.
        """

    @abstractmethod
    def _error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        """An error body for ``status``."""

    @abstractmethod
    def _refusal_body(self, fault: str, model: str) -> bytes:
        """The API's 400 body for ``context_length`` or ``content_filter``."""

    @abstractmethod
    def _json_body(self, call: Call, reply: Reply) -> bytes:
        """The non-streaming success body."""

    @abstractmethod
    def _sse_events(self, call: Call, reply: Reply) -> SSEEvents:
        """The encoded SSE events of a streaming success."""

    @abstractmethod
    def _malformed_event(self, call: Call) -> bytes:
        """An SSE event whose ``data:`` payload is not valid JSON."""

    def _choices(self, body: dict[str, Any]) -> int:
        """How many answers the request asks for (``n`` in the OpenAI API)."""
        return 1

    @abstractmethod
    def _error_event(self, status: int, reply: Reply) -> bytes:
        """What the API sends when an error interrupts a stream it already started."""

    @abstractmethod
    def _trickle_events(self, call: Call, reply: Reply) -> bytes:
        """Stream events that carry usage or a finish reason but no text."""

    @abstractmethod
    def _models_body(self, models: list[str]) -> bytes:
        """The body of ``GET /v1/models``."""

    # -- request path ------------------------------------------------------

    async def _handle_chat(self, request: web.Request) -> web.StreamResponse:
        self._request_count += 1
        self._active_requests += 1
        n = next(self._ids)
        try:
            return await self._serve(request, n)
        except _Closing:
            if request.transport is not None:
                request.transport.abort()
            # Nothing reaches the client: the transport is already closing.
            return web.Response(status=503)
        except asyncio.CancelledError:
            # handler_cancellation: the client closed the connection mid-answer.
            self._disconnects += 1
            raise
        except ConnectionResetError:
            # The client left just before a write, before aiohttp cancelled the handler:
            # a disconnect too, not a server error worth a logged traceback.
            self._disconnects += 1
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        finally:
            self._active_requests -= 1

    async def _serve(self, request: web.Request, n: int) -> web.StreamResponse:
        try:
            body = decode_json(await request.read())
        except msgspec.DecodeError as exc:
            return self._error(400, f"request body is not valid JSON: {exc}", n)
        parsed = self._parse(body, request.headers)
        if isinstance(parsed, str):
            return self._error(400, parsed, n)
        model, messages, stream = parsed

        fake: FakeRequest | None = None
        if self._record or self._playbook.has_responder(model):
            fake = FakeRequest(
                model=model,
                messages=messages,
                stream=stream,
                body=body,
                headers={name.lower(): value for name, value in request.headers.items()},
            )
            if self._record:
                self._requests.append(fake)
        reply = await self._playbook.choose(model, fake)
        if reply is None:
            message = self._unknown_model.format(model=model)
            return self._error(404, message, n, code="model_not_found")

        await self._pause(reply.latency_s)
        if reply.fault == "reset":
            if request.transport is not None:
                request.transport.abort()  # before any header: nothing reaches the client
            return web.Response(status=503)
        if reply.fault in ("context_length", "content_filter"):
            body = self._refusal_body(reply.fault, model)
            return web.Response(
                status=400, body=body, headers=self._headers(n, reply, "application/json")
            )
        if reply.fault == "hang" or (reply.fault in ("stall", "trickle") and not stream):
            await self._closing.wait()
            raise _Closing
        if reply.fault == "error_event" and not stream:
            return self._error(reply.status if reply.status != 200 else 500,
                               reply.error_message, n, reply)  # fmt: skip
        if reply.fault == "deep_json" and reply.status != 200:
            headers = self._headers(n, reply, "application/json")
            return web.Response(status=reply.status, body=DEEP_JSON, headers=headers)
        if reply.status != 200 and reply.fault is None:
            return self._error(reply.status, reply.error_message, n, reply)

        call = make_call(n, model, messages, stream, body, reply)
        choices = 1
        if not stream and reply.fault is None:
            choices = self._choices(body) + reply.extra_choices
        if choices > 1:  # one more reply from the script or responder per extra choice
            extra = [await self._playbook.choose(model, fake) for _ in range(choices - 1)]
            call = call._replace(extra=tuple(r for r in extra if r is not None))
        if reply.fault in _HOSTILE:
            return await self._hostile(request, call, reply)
        if stream and reply.fault == "wrong_content_type":
            headers = self._headers(n, reply, "application/json")
            return web.Response(body=self._json_body(call, reply), headers=headers)
        if stream:
            return await self._stream(request, call, reply)
        payload = self._json_body(call, reply)
        out_headers = self._headers(n, reply, "application/json")
        if reply.fault == "drop":
            return await send_cut_json(request, payload, out_headers)
        if reply.fault == "malformed":
            # Cutting a JSON object in half always leaves it unterminated.
            payload = payload[: len(payload) // 2]
        return web.Response(body=payload, headers=out_headers)

    def _headers(self, n: int, reply: Reply | None, content_type: str) -> dict[str, str]:
        headers = {"Content-Type": content_type, self._request_id_header: f"req_{n}"}
        if reply is not None:
            if reply.retry_after_s is not None:
                headers["Retry-After"] = str(math.ceil(reply.retry_after_s))
                headers["retry-after-ms"] = str(round(reply.retry_after_s * 1000))
            headers.update(reply.headers)
        return headers

    def _error(
        self,
        status: int,
        message: str,
        n: int,
        reply: Reply | None = None,
        *,
        code: str | None = None,
    ) -> web.Response:
        return web.Response(
            status=status,
            body=self._error_body(status, message, code=code),
            headers=self._headers(n, reply, "application/json"),
        )

    async def _handle_models(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self._models_body(self._playbook.models()),
            headers=self._headers(next(self._ids), None, "application/json"),
        )

    async def _pause(self, delay_s: float) -> None:
        """Sleep, unless the server starts closing first (then raise `_Closing`)."""
        if delay_s <= 0:
            return
        try:
            async with asyncio.timeout(delay_s):
                await self._closing.wait()
        except TimeoutError:
            return
        raise _Closing

    async def _stream(self, request: web.Request, call: Call, reply: Reply) -> web.StreamResponse:
        headers = self._headers(call.n, reply, "text/event-stream")
        headers["Cache-Control"] = "no-cache"
        events = self._sse_events(call, reply)
        if reply.fault == "no_done":  # the terminator is the last event of both formats
            events = events._replace(tail=events.tail[:-1])
        elif reply.fault == "done_early":
            events = events._replace(deltas=events.deltas[:1], tail=events.tail[-1:])
        return await send_sse(
            request,
            headers,
            events,
            reply,
            self._malformed_event(call),
            self._error_event(reply.status if reply.status != 200 else 500, reply),
            self._pause,
        )

    async def _hostile(self, request: web.Request, call: Call, reply: Reply) -> web.StreamResponse:
        """A body generated as it is sent (see `Reply.fault`)."""
        fault, stream = reply.fault, call.stream
        headers = self._headers(
            call.n, reply, "text/event-stream" if stream else "application/json"
        )
        size = None if fault == "endless" else reply.fault_bytes
        marked = msgspec.structs.replace(reply, text=FILLER, chunk_chars=len(FILLER), logprobs=None)
        if not stream:
            if fault == "deep_json":
                return web.Response(body=DEEP_JSON, headers=headers)
            head, tail = split_at_filler(self._json_body(call, marked))
            pieces = oversized(head, size, tail)
            return await send_body(request, headers, pieces, gzip=fault == "gzip_bomb")
        events = self._sse_events(call, reply)
        first = b"".join([*events.head, *events.deltas[:1]])
        if fault in ("huge", "gzip_bomb"):
            framing = self._sse_events(call, marked)
            head, tail = split_at_filler(framing.deltas[0])
            pieces = itertools.chain(framing.head, oversized(head, size, tail), framing.tail)
            return await send_body(request, headers, pieces, gzip=fault == "gzip_bomb")
        if fault == "deep_json":
            return await send_body(request, headers, iter([first, b"data: " + DEEP_JSON + b"\n\n"]))
        if fault == "trickle":
            block, delay_s = self._trickle_events(call, reply), reply.chunk_delay_s or 0.05
        else:  # endless: text deltas in blocks of about 64 KiB, as fast as the client reads
            delta = events.deltas[0] if events.deltas else first
            block, delay_s = delta * max(1, 65536 // len(delta)), reply.chunk_delay_s
        return await send_endless(
            request, headers, first, block, delay_s=delay_s, pause=self._pause
        )
