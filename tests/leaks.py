"""Counting what a run leaves behind: tasks, pooled connections, server connections,
garbage cycles."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import aiohttp

from cascade import Cascade
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer

Server = FakeOpenAIServer | FakeAnthropicServer
T = TypeVar("T")


async def cycles_after(
    call: Callable[[], Awaitable[object]],
    *,
    warm: int = 3,
    runs: int = 5,
    collect: Callable[[], T] = gc.collect,  # type: ignore[assignment]
) -> T:
    """What ``collect`` finds (by default the number of objects only a garbage collection
    frees) after ``runs`` calls made with the collector off, after ``warm`` calls
    (connections, caches, a breaker opening)."""
    for _ in range(warm):
        await call()
    gc.collect()
    gc.disable()
    try:
        for _ in range(runs):
            await call()
        return collect()
    finally:
        gc.enable()


async def eventually(
    check: Callable[[], bool],
    what: str,
    *,
    within_s: float = 5.0,
    extra: Callable[[], object] = lambda: "",
) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``within_s`` seconds.

    Cleanup on the far side of a socket takes a loop turn or two: a bounded poll, never a
    fixed sleep.
    """
    loop = asyncio.get_running_loop()
    stop = loop.time() + within_s
    while not check():
        if loop.time() > stop:
            raise AssertionError(f"still not true after {within_s} s: {what}; {extra()}")
        await asyncio.sleep(0.005)


def other_tasks(baseline: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks alive now that were not at ``baseline`` (the current one aside)."""
    return asyncio.all_tasks() - baseline - {asyncio.current_task()}


def connectors(cascade: Cascade) -> list[aiohttp.TCPConnector]:
    """The open connection pools of the Cascade (one per provider, or the caller's)."""
    sessions = [cascade._session, *cascade._pools.values()]
    found = []
    for session in sessions:
        if session is None or session.closed:
            continue
        connector = session.connector
        assert isinstance(connector, aiohttp.TCPConnector)
        found.append(connector)
    return found


def in_use(cascade: Cascade) -> int:
    """Connections the Cascade's pools have handed out and not got back."""
    return sum(len(c._acquired) for c in connectors(cascade))


def pooled(cascade: Cascade) -> int:
    """Idle keep-alive connections in the Cascade's pools."""
    return sum(len(conns) for c in connectors(cascade) for conns in c._conns.values())


def open_on(servers: Iterable[Server]) -> int:
    """Connections open and chat requests in progress, counted by the servers."""
    return sum(s.active_connections + s.active_requests for s in servers)


async def nothing_left(
    baseline: set[asyncio.Task[object]], *servers: Server, within_s: float = 5.0
) -> None:
    """No connection open on ``servers`` and no task beyond ``baseline``."""
    await eventually(lambda: open_on(servers) == 0, "server connections closed", within_s=within_s)
    await eventually(lambda: not other_tasks(baseline), "tasks finished", within_s=within_s)
