"""Running the gateway: building it from a config file, serving it on a port, draining on
SIGTERM and reloading on SIGHUP (``cascade serve``).

- SIGTERM / SIGINT: with ``gateway.drain_delay_s``, first go on serving that long
  (``/readyz`` 503, every answer ``Connection: close``: a load balancer leaves); then
  stop accepting connections, let the requests in flight finish (their
  streams included) for at most ``gateway.drain_timeout_s``, then give up on what is left
  (``gateway.drain_cut``, see ``_drain``): each is cancelled, which closes its upstream
  call, and answers 503 ``shutting_down`` (a stream already started: its format's error
  event); close the cascades, exit 0. A reload's build under way is abandoned, not
  waited for. ``/readyz`` answers 503 from the signal on. A second SIGTERM or SIGINT
  ends the delay and gives up at once; a third one takes the signal's default action. A SIGHUP while
  draining is ignored (``gateway.reload_ignored``).
  A reload opening its routes (the swap) holds neither: the listener closes at once, and
  the reload is cancelled once the drain is over (the routes it opened are closed).
- SIGHUP: read the config file again and build every route's cascade from it; if that
  fails, log why and keep serving the old config; else swap the routes at once (requests
  that started keep the cascade they started on) and close the old cascades once their
  last request is done (each is bounded by its deadline: ``Gateway.longest_request_s``);
  the ``[gateway]`` limits each request reads (``allowed_hosts``, ``max_in_flight``,
  ``max_messages``, the schema limits, ``body_timeout_s``, ``write_timeout_s``) apply
  from then on too. Keys follow the file (added, revoked, rotated under their name:
  ``GatewayKeys.reload``) as soon as it is read, before the new routes open (and even if
  SIGTERM comes before they are swapped in). The listening address, ``max_body_bytes``,
  ``idle_timeout_s``, the drain's delay and timeout, the keys' limits (a keys table
  added or removed whole too) and the ``[shared]`` Redis of their counters stay as they
  were at start (``gateway.reload_kept`` names those the file changed): those need a
  restart.
- A connection with no request in a handler is closed after ``gateway.idle_timeout_s``:
  idle between requests, or still sending its request line and headers (aiohttp's
  keep-alive timer, which runs from the connection's start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .._clock import Clock
from .._config import in_file
from ._app import Gateway, create_app
from ._config import LoadedConfig, load_gateway
from ._gate import OPEN_GATE, Gate
from ._key_gate import KeyGate
from ._protocol import GatewayRunner
from ._reload import in_a_thread, reload_config
from ._routes import Generation, build_generation

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["app_runner", "build_gateway", "serve"]

log = structlog.get_logger("cascade.gateway")
_T = TypeVar("_T")


def build_gateway(
    loaded: LoadedConfig,
    *,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    environ: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    gate: Gate | None = None,
) -> Gateway:
    """The gateway for a loaded config file: every route's Cascade built (not opened; the
    app opens them as it starts), and its key gate."""
    kwargs: dict[str, Any] = {
        "tracer_provider": tracer_provider,
        "meter_provider": meter_provider,
        "environ": environ,
        "clock": clock,
    }
    with in_file(loaded.path):
        generation = build_generation(loaded, **kwargs)
        if gate is None:
            gate = _gate_for(loaded, clock=clock, environ=environ)
    return Gateway(
        generation,
        gate=gate,
        tracer_provider=tracer_provider,
        rebuild=lambda fresh: _rebuilt(fresh, kwargs),
    )


def _rebuilt(loaded: LoadedConfig, kwargs: dict[str, Any]) -> Generation:
    """A reload's routes, its errors naming the file as a start's do."""
    with in_file(loaded.path):
        return build_generation(loaded, **kwargs)


def _gate_for(
    loaded: LoadedConfig, *, clock: Clock | None, environ: Mapping[str, str] | None
) -> Gate:
    """The key gate of ``[gateway.keys]``; none configured: every request admitted."""
    if loaded.gateway.keys is None:
        return OPEN_GATE
    return KeyGate.from_config(loaded.gateway.keys, loaded.config, clock=clock, environ=environ)


def app_runner(gateway: Gateway, *, shutdown_timeout: float) -> web.AppRunner:
    """The aiohttp runner of ``gateway``'s app, as ``cascade serve`` runs it: a request
    aiohttp's parser refuses is answered in the API's error format (``_protocol.py``)."""
    return GatewayRunner(
        create_app(gateway),
        handle_signals=False,
        access_log=None,  # the gateway writes its own access log (no keys, no text)
        handler_cancellation=True,  # a client that leaves cancels its run at once
        shutdown_timeout=shutdown_timeout,
        # aiohttp closes a connection that has no request in a handler for this long:
        # idle between requests, and also before its first request is whole (a client
        # trickling its request line and headers).
        keepalive_timeout=gateway.generation.loaded.gateway.idle_timeout_s,
    )


class _NoRequestBytes(logging.Filter):
    """aiohttp logs a request it cannot parse with its exception, whose message quotes
    the offending bytes: a header line too long may be a key. Such a record keeps its
    line (the client's address) and the error's kind and status, not the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.msg}: {type(exc).__name__} (HTTP {exc.code})"
            record.exc_info = None
            record.exc_text = None
        return True


async def serve(
    path: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    ready: Callable[[int], None] | None = None,
    **kwargs: Any,
) -> None:
    """Serve the config file at ``path`` until SIGTERM or SIGINT (see the module doc);
    ``ready`` gets the bound port once the gateway listens (``port = 0`` picks one)."""
    source = str(path)
    loop = asyncio.get_running_loop()
    # SIGHUP's default action kills the process: one while the routes are first built
    # (seconds, for a large router file) is a reload once the gateway listens.
    hups: list[None] = []
    loop.add_signal_handler(signal.SIGHUP, hups.append, None)
    # Nor is a SIGTERM then a reason for its default action (exit -15): nothing is in
    # flight, the build is abandoned, and the process exits 0.
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        started = await _start(source, stop, kwargs)
    except BaseException:
        _forget_signals(loop)
        raise
    if started is None:
        _forget_signals(loop)
        log.info("gateway.stopped", reason="signal before listening")
        return
    gateway, runner = started
    config = gateway.generation.loaded.gateway
    scrub = _NoRequestBytes()
    cleaned = False
    aiohttp_log = logging.getLogger("aiohttp.server")
    aiohttp_log.addFilter(scrub)
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1] if runner.addresses else port
        log.info("gateway.listening", host=host, port=bound, config=source, loop=_loop_name(loop))
        if ready is not None:
            ready(bound)
        cut_now = asyncio.Event()
        reloads: set[asyncio.Task[None]] = set()

        def on_hup() -> None:
            task = loop.create_task(reload_config(gateway, source))
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        def hup_while_draining() -> None:  # its default action would kill the process
            log.info("gateway.reload_ignored", reason="draining")

        def cut() -> None:  # a second SIGTERM or SIGINT while draining
            for sig in (signal.SIGTERM, signal.SIGINT):  # a third: the default action
                loop.remove_signal_handler(sig)
            cut_now.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        if hups:
            on_hup()
        await stop.wait()
        loop.add_signal_handler(signal.SIGHUP, hup_while_draining)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, cut)
        gateway.draining = True
        log.info("gateway.draining", in_flight=gateway.in_flight, timeout_s=config.drain_timeout_s)
        if gateway.reload_build is not None:
            gateway.reload_build.cancel()  # a build under way is not waited for
        cleaned = True  # (the cut stays the handler while the drain lasts)
        if config.drain_delay_s > 0:  # still serving, /readyz 503: the balancer leaves
            log.info("gateway.drain_delay", delay_s=config.drain_delay_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(cut_now.wait(), config.drain_delay_s)
        await _drain(gateway, runner, config.drain_timeout_s, cut_now)
        await runner.cleanup()  # close the connections left, then the cascades
        # Nor is a swap under way (opening its routes): cancelled, it closes them.
        for task in list(reloads):
            task.cancel()
        await asyncio.gather(*reloads, return_exceptions=True)
    finally:
        _forget_signals(loop)
        if not cleaned:  # serving failed, or was cancelled
            await runner.cleanup()
        aiohttp_log.removeFilter(scrub)
    log.info("gateway.stopped")


async def _start(
    source: str, stop: asyncio.Event, kwargs: dict[str, Any]
) -> tuple[Gateway, web.AppRunner] | None:
    """The gateway of ``source`` built (off the loop, as a reload is: what starts can be
    reloaded) and its app set up; ``None`` when ``stop`` came first (a SIGTERM before the
    gateway listens), what was opened closed again."""
    gateway = await _unless(
        stop, in_a_thread(lambda: build_gateway(load_gateway(source), **kwargs))
    )
    if gateway is None:
        return None
    # The drain itself is _drain's; aiohttp's shutdown then only waits for what the cut
    # left answering (and the listing, the probes), twice this at most.
    runner = app_runner(gateway, shutdown_timeout=_CLOSE_S)
    # Nor is the routes' opening waited for (a [shared] Redis that does not answer holds
    # it for up to its timeout_s, the key gate's and the routes' each).
    setup = asyncio.ensure_future(runner.setup())
    await _unless(stop, setup)
    if not setup.done():  # (cancelled by the signal, not yet unwound)
        await asyncio.wait((setup,))
        # what the app's cleanup closes (its startup did not end: nor will its cleanup)
        await gateway.aclose()
        await gateway.gate.aclose()
        return None
    return gateway, runner


def _forget_signals(loop: asyncio.AbstractEventLoop) -> None:
    """The signals ``serve`` handles back to their default actions."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.remove_signal_handler(sig)


_CLOSE_S = 2.0
"""How long aiohttp's shutdown, after the drain, waits for a handler (twice at most): a
request the drain gave up on sends its 503 within a second (``_chat._CUT_WRITE_S``)."""


async def _drain(
    gateway: Gateway, runner: web.AppRunner, timeout_s: float, cut_now: asyncio.Event
) -> None:
    """Stop accepting, let the chat requests in flight finish for at most ``timeout_s``
    (or until ``cut_now``: a second SIGTERM), then give up on those left: each is
    cancelled (its run, and so its upstream call, with it) and answers 503
    ``shutting_down`` with ``Retry-After: 1`` (a stream already started ends with its
    format's error event), which an SDK retries, on another replica behind a balancer.
    Before, aiohttp's own shutdown waited up to twice the timeout, then closed the
    connections: an answer cut short, or no answer at all."""
    for site in list(runner.sites):
        await site.stop()
    server = runner.server
    if server is not None:
        server.pre_shutdown()  # idle keep-alive connections close; busy ones after this
    gateway.drained.clear()  # (set whenever the count touched 0 during drain_delay_s)
    if gateway.in_flight:
        waits = [
            asyncio.ensure_future(gateway.drained.wait()),
            asyncio.ensure_future(cut_now.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()
    if not gateway.in_flight:
        return
    reason = "signal" if cut_now.is_set() else "timeout"
    log.warning("gateway.drain_cut", in_flight=gateway.in_flight, reason=reason)
    gateway.cut = True
    for task in list(gateway.requests):
        task.cancel()


def _loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``uvloop`` or ``asyncio``: which event loop serves (``cascade serve --loop``)."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


async def _unless(stop: asyncio.Event, work: asyncio.Future[_T]) -> _T | None:
    """``work``'s result, or ``None`` once ``stop`` is set first (``work`` cancelled)."""
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((work, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not work.done():
            work.cancel()
    return work.result() if work.done() and not work.cancelled() else None
