"""A config reload (SIGHUP, ``cascade serve``): the file read again and its routes built
in a thread of their own, the keys it lists applied at once, the routes swapped in (see
:mod:`._server` for what a reload changes and what needs a restart)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import structlog

from .._config import in_file
from .._errors import CascadeError
from ._config import LoadedConfig, load_gateway
from ._gateway import RESTART_ONLY, Gateway
from ._key_gate import KeyGate
from ._routes import Generation

__all__ = ["draining", "in_a_thread", "reload_config"]

log = structlog.get_logger("cascade.gateway")
_T = TypeVar("_T")


async def reload_config(gateway: Gateway, source: str) -> None:
    """Read ``source`` again and swap its routes in: one reload at a time, in the order
    they came. A reload asked for while another waits to start adds nothing (the waiting
    one reads the file as it is once its turn comes): a storm of SIGHUPs builds twice at
    most, not once per signal. Once the gateway drains (SIGTERM), nothing more is built
    nor swapped in."""
    if gateway.rebuild is None:
        log.error("gateway.reload_failed", error="this gateway was not built to reload")
        return
    rebuild = gateway.rebuild
    gate = gateway.gate

    def build() -> tuple[LoadedConfig, Generation, list[Any] | None]:
        fresh = load_gateway(source)
        keys = fresh.gateway.keys
        resolved = None
        if isinstance(gate, KeyGate) and keys is not None:
            with in_file(fresh.path):  # a missing env variable fails the reload
                resolved = gate.resolve(keys)
        return fresh, rebuild(fresh), resolved

    if gateway.reload_waiting:
        return
    gateway.reload_waiting = True
    try:
        await gateway.reloading.acquire()
    finally:
        gateway.reload_waiting = False
    try:
        if draining(gateway):
            return
        # In a thread: reading the files and building every route's cascade (a router
        # file of up to 64 MiB decoded) would stop the loop for seconds, and every
        # request with it.
        try:
            building = gateway.reload_build = in_a_thread(build)
            fresh, generation, resolved = await building
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if building.cancelled() and task is not None and not task.cancelling():
                log.info("gateway.reload_abandoned")  # SIGTERM: the gateway is closing
                return
            raise
        except CascadeError as exc:
            log.error("gateway.reload_failed", error=str(exc)[:1000])
            return
        except Exception as exc:  # a plug-in's bug, a MemoryError: still a failed reload
            log.exception(
                "gateway.reload_failed", error_type=type(exc).__name__, error=str(exc)[:1000]
            )
            return
        finally:
            gateway.reload_build = None
        changes = None
        if isinstance(gate, KeyGate) and fresh.gateway.keys is not None:
            assert resolved is not None
            # Keys are added, revoked and rotated at once, whatever becomes of the routes:
            # not after they open (a [shared] Redis that does not answer holds that up),
            # nor only if they are swapped in (a SIGTERM meanwhile): a draining gateway
            # still serves (drain_delay_s, requests queued on its connections) and ignores
            # a SIGHUP, so a leaked key revoked now would otherwise work to the end.
            try:
                with in_file(fresh.path):
                    changes = gate.keys.reload(fresh.gateway.keys, resolved)
            except CascadeError as exc:  # a key under another name: nothing applied
                log.error("gateway.reload_failed", error=str(exc)[:1000])
                return
            if changes.added or changes.revoked or changes.rotated:
                log.info(
                    "gateway.keys_reloaded",
                    added=changes.added,
                    revoked=changes.revoked,
                    rotated=changes.rotated,
                )
        if draining(gateway):  # SIGTERM while it was built: the gateway is closing
            return
        before = gateway.at_start  # what is in effect: not what the last reload read
        try:
            swapped = await gateway.swap(generation)
        except Exception as exc:  # its routes did not open (closed again): the old serve
            log.exception(
                "gateway.reload_failed",
                error_type=type(exc).__name__,
                error=str(exc)[:1000],
                keys_applied=changes is not None,  # (the file's keys are in effect)
            )
            return
        if not swapped:
            return  # SIGTERM while it opened: closed, not swapped in
        kept = [f for f in RESTART_ONLY if getattr(fresh.gateway, f) != getattr(before, f)]
        if changes is not None:
            kept = [f for f in kept if f != "keys"]  # only a limit waits for a restart
            if changes.kept or changes.settings_kept:
                kept.append("keys")  # limits: the counters stay as they were built
        if isinstance(gate, KeyGate) and fresh.config.shared != gateway.shared_at_start:
            kept.append("shared")  # the routes move to it; the keys' budgets do not
        if kept:
            named = {} if changes is None or not changes.kept else {"keys": changes.kept}
            # (the keys whose limits stay: their names, as the access lines give them)
            log.warning("gateway.reload_kept", fields=kept, reason="read at start only", **named)
    finally:
        gateway.reloading.release()
    log.info("gateway.reloaded", routes=[r.name for r in generation.routes])


def in_a_thread(build: Callable[[], _T]) -> asyncio.Future[_T]:
    """``build()`` in a daemon thread of its own, as a future of the running loop. Cancelling
    the future abandons the build: its thread ends on its own or with the process, which
    therefore never waits for it at exit (anyio's worker threads are not daemons)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[_T] = loop.create_future()

    def deliver(settle: Callable[[Any], None], value: Any) -> None:
        def settled() -> None:
            if not future.done():  # cancelled meanwhile: nobody waits for it
                settle(value)

        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits either
            loop.call_soon_threadsafe(settled)

    def run() -> None:
        try:
            result = build()
        except BaseException as exc:  # handed to the awaiting task
            if isinstance(exc, StopIteration):  # which a future refuses: as anyio hands it
                wrapped = RuntimeError("coroutine raised StopIteration")
                wrapped.__cause__ = exc
                exc = wrapped
            deliver(future.set_exception, exc)
        else:
            deliver(future.set_result, result)

    threading.Thread(target=run, name="cascade-reload", daemon=True).start()
    return future


def draining(gateway: Gateway) -> bool:
    """``gateway.draining``, read again after an ``await`` (SIGTERM sets it meanwhile)."""
    return gateway.draining
