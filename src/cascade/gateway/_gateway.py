"""The gateway's state: the routes served now (swapped whole on a reload), the key gate,
the limits, the requests in flight, and the validators of recent request schemas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import trace

from .._errors import ConfigError, InputError
from ..validators import JsonSchemaValidator, Validator
from ..validators._json_extract import whole_json
from ..validators._offload import Overrun, off_loop
from ._config import GatewayConfig, LoadedConfig
from ._errors import GatewayError
from ._gate import OPEN_GATE, Gate
from ._routes import Generation
from ._wire import Limits

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

__all__ = ["GATEWAY", "RESTART_ONLY", "Gateway"]

_SCHEMA_CACHE = 128  # validators of recent request schemas, by schema text
_SCHEMA_BUILD_S = 10.0
"""Longest a request's schema may take to check and build (waiting for a thread
included): the work is bounded (the schema's size, and ``JsonSchemaValidator``'s probes),
this only bounds the wait."""
_MAX_REFUSAL_CHARS = 300
"""The most characters of a refused schema's message a 400 echoes (it quotes the schema)."""

RESTART_ONLY = ("drain_delay_s", "drain_timeout_s", "idle_timeout_s", "keys", "max_body_bytes")
"""The ``[gateway]`` settings read once at start (the server's and the app's, and the
keys' counters): a reload keeps them, and says so when the file changed one. Of ``keys``,
a reload applies the keys listed (added, revoked, rotated), not their limits."""


class Gateway:
    """The state behind the app: the current routes (swapped whole on reload), the key
    gate, the limits, and the requests in flight."""

    def __init__(
        self,
        generation: Generation,
        *,
        gate: Gate = OPEN_GATE,
        tracer_provider: TracerProvider | None = None,
        rebuild: Callable[[LoadedConfig], Generation] | None = None,
    ) -> None:
        from .. import __version__

        self.generation = generation
        self.gate = gate
        self.at_start = generation.loaded.gateway
        """The ``[gateway]`` table read at start: its ``RESTART_ONLY`` settings stay."""
        self.shared_at_start = generation.loaded.config.shared
        """The ``[shared]`` table read at start: the key gate's counters stay there."""
        self._apply(generation.loaded.gateway)
        self.max_body_bytes = generation.loaded.gateway.max_body_bytes
        self.rebuild = rebuild
        """Builds the routes of a config file read again (SIGHUP), as at start."""
        self.tracer = trace.get_tracer("cascade.gateway", __version__, tracer_provider)
        self._tracer_via_global = tracer_provider is None
        self.in_flight = 0
        self.requests: set[asyncio.Task[Any]] = set()
        """The tasks of the chat requests in flight (``in_flight`` of them): those a
        drain that gives up cancels."""
        self.draining = False
        self.drained = asyncio.Event()
        """Set once the gateway drains and no chat request is left in flight."""
        self.cut = False
        """The drain gave up (``drain_timeout_s``, or a second SIGTERM): each request
        still in flight, cancelled, answers 503 ``shutting_down`` (a stream already
        started ends with its format's error event)."""
        self._schemas: dict[str, Validator | str] = {}  # a validator, or why it was refused
        self._retired: set[asyncio.Task[None]] = set()
        self.reloading = asyncio.Lock()
        """Held by a reload (SIGHUP) from reading the file to the swap: reloads apply in the
        order their signals came."""
        self.reload_waiting = False
        """A reload waits for ``reloading``: another signal needs no reload of its own."""
        self.reload_build: asyncio.Future[Any] | None = None
        """The reload's build under way (in a thread): SIGTERM cancels it, and the gateway
        drains without waiting for routes it would not use."""

    def _apply(self, gw: GatewayConfig) -> None:
        """The ``[gateway]`` settings each request reads: set at start, and again by
        each reload (those read once at start are in ``RESTART_ONLY``)."""
        self.limits = Limits(
            max_messages=gw.max_messages,
            max_schema_bytes=gw.max_schema_bytes,
            max_schema_depth=gw.max_schema_depth,
        )
        self.max_in_flight = gw.max_in_flight
        self.body_timeout_s = gw.body_timeout_s
        self.write_timeout_s = gw.write_timeout_s
        self.allowed_hosts = (
            None if gw.allowed_hosts is None else frozenset(h.lower() for h in gw.allowed_hosts)
        )

    def __repr__(self) -> str:
        state = "draining" if self.draining else "serving"
        return f"<Gateway {state}, {self.in_flight} in flight, {self.generation!r}>"

    def traced(self, headers: Mapping[str, str]) -> bool:
        """Whether a request gets a server span: with a tracer provider (given, or set
        globally), always; through the global API with none set yet (whose tracer hands
        out no-op spans), only to carry a caller's ``traceparent`` on to what runs under
        it. A no-op span without a parent is an invalid one: skipping it changes nothing
        but the time it takes."""
        return (
            not self._tracer_via_global
            or getattr(trace, "_TRACER_PROVIDER", self) is not None
            or "traceparent" in headers
        )

    async def swap(self, generation: Generation, *, wait_s: float | None = None) -> bool:
        """Serve ``generation`` (opened) from now on; the old one closes once its
        requests are done (at most ``wait_s`` later: by default, the longest a request
        admitted before the swap may still take, :meth:`longest_request_s`, so that none
        has its cascade closed under it), without holding the caller. False,
        ``generation`` closed, if the gateway started draining while it opened (a
        ``[shared]`` Redis that does not answer holds it for up to its ``timeout_s``):
        nothing more is swapped in; also closed if its opening fails or is cancelled."""
        try:
            await generation.open()
        except BaseException:
            await generation.aclose()
            raise
        if self.draining:
            await generation.aclose()
            return False
        old, self.generation = self.generation, generation
        if wait_s is None:
            wait_s = self.longest_request_s(old)  # with the limits it was admitted under
        self._apply(generation.loaded.gateway)
        self._schemas.clear()
        task = asyncio.get_running_loop().create_task(old.aclose(wait_s=wait_s))
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)
        return True

    def longest_request_s(self, generation: Generation) -> float:
        """The longest a chat request on ``generation`` may take from its start: its
        body (``body_timeout_s``), its schema's validator, its run (its route's deadline,
        at most ``max_deadline_s``), its last write (``write_timeout_s``), and a margin.
        A retired generation waits this long for its requests (a SIGTERM's drain cuts
        them sooner): not ``drain_timeout_s``, which would close the cascade of a long
        answer under it, a reload failing a request the README says it finishes."""
        deadline = max((route.deadline_s for route in generation.routes), default=0.0)
        return self.body_timeout_s + _SCHEMA_BUILD_S + deadline + self.write_timeout_s + 5.0

    async def aclose(self) -> None:
        for task in list(self._retired):
            await task
        await self.generation.aclose()

    async def schema_validator(
        self, schema: dict[str, Any], *, param: str = "response_format.json_schema.schema"
    ) -> Validator:
        """A json_schema validator for a request's schema (cached by its text); a bad
        schema is a 400 naming the field (its refusal cached too: sent again, it costs no
        second build), a build that waited too long for a thread a 503.
        Built off the event loop (a 64 KiB schema's check holds its thread for about half
        a second; a client can send a new one each time), on the validators' low-priority
        threads."""
        key = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        found = self._schemas.get(key)
        if found is not None:
            if isinstance(found, str):  # refused before: the same 400, not the same work
                raise InputError(found, path=param)
            return found
        try:
            built: Validator = await off_loop(
                _build_schema_validator,
                schema,
                what="checking the request's JSON Schema",
                limit_s=_SCHEMA_BUILD_S,
            )
        except ConfigError as exc:
            # it quotes the schema (a value it refuses, the keys on the way to it): cut
            message = exc.message[:_MAX_REFUSAL_CHARS]
            self._remember(key, message)
            raise InputError(message, path=param) from None
        except Overrun:  # the threads are busy (or the machine is): not the request's fault
            raise GatewayError(
                503,
                "the gateway is too busy to check the request's JSON Schema now",
                code="server_busy",
                retry_after_s=1.0,
            ) from None
        self._remember(key, built)
        return built

    def _remember(self, key: str, outcome: Validator | str) -> None:
        if len(self._schemas) >= _SCHEMA_CACHE:
            self._schemas.pop(next(iter(self._schemas)))
        self._schemas[key] = outcome


def _build_schema_validator(schema: dict[str, Any]) -> Validator:
    built = JsonSchemaValidator(schema=schema, name="response_format")
    # a request's schema (response_format, output_config.format): the answer must be the
    # JSON value itself, as both APIs promise (the client's json.loads of the content),
    # not text or a fence around a value that passes
    built.find_json = whole_json
    return built


GATEWAY = web.AppKey("cascade_gateway", Gateway)
"""Where the app keeps its :class:`Gateway`."""
