"""A caller that gives up (task.cancel, an anyio cancel scope, its own asyncio.timeout)
closes the upstream connection at once: the fake server sees the client leave, the pool
gets nothing back it cannot reuse, no task outlives the run, and the Cascade goes on.

Every wait here is a bounded poll on what the servers count; nothing sleeps for a fixed
time to let cleanup "probably" happen.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import anyio
import pytest

import cascade
from cascade import Cascade
from cascade.testing import FakeAnthropicServer, FakeClock, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier
from .leaks import eventually, in_use, nothing_left, other_tasks, pooled

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
Ready = Callable[[], Awaitable[None]]

# -- knowing when the answer is half-way ----------------------------------------------------

_SEEN: dict[str, asyncio.Event] = {}


@cascade.validator("test_sees_text", replace=True)
class SeesText:
    """Passes everything; signals when the first text of a streamed answer arrives."""

    def __init__(self, *, key: str) -> None:
        self.name = "sees_text"
        self.key = key

    def check_partial(self, text: str, context: cascade.ValidationContext) -> None:
        _SEEN[self.key].set()

    async def validate(
        self, completion: cascade.Completion, context: cascade.ValidationContext
    ) -> cascade.Verdict:
        return cascade.Verdict(validator=self.name, passed=True)


# -- three ways for a caller to give up -----------------------------------------------------


async def by_task_cancel(c: Cascade, ready: Ready) -> None:
    task = asyncio.create_task(c.run(messages=USER))
    await ready()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def by_cancel_scope(c: Cascade, ready: Ready) -> None:
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(c.run, messages=USER))
        await ready()
        tg.cancel_scope.cancel()


async def by_caller_timeout(c: Cascade, ready: Ready) -> None:
    loop = asyncio.get_running_loop()

    async def expire(timeout: asyncio.Timeout) -> None:
        await ready()
        timeout.reschedule(loop.time())  # the caller's own timeout runs out now

    async def call() -> None:
        async with asyncio.timeout(None) as timeout:
            helpers.append(asyncio.create_task(expire(timeout)))
            await c.run(messages=USER)

    helpers: list[asyncio.Task[None]] = []
    with pytest.raises(TimeoutError):  # the caller's TimeoutError, not a CascadeError
        await call()
    await helpers[0]


GIVE_UP = {"task.cancel": by_task_cancel, "cancel-scope": by_cancel_scope,
           "asyncio.timeout": by_caller_timeout}  # fmt: skip


def server_of(kind: str) -> FakeOpenAIServer | FakeAnthropicServer:
    return FakeOpenAIServer() if kind == "openai" else FakeAnthropicServer()


@pytest.mark.parametrize("how", list(GIVE_UP))
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_caller_giving_up_mid_answer_closes_the_upstream_connection(
    kind: str, stream: bool, how: str
) -> None:
    key = f"{kind}-{stream}-{how}"
    _SEEN[key] = asyncio.Event()
    async with server_of(kind) as server:
        if stream:  # head and first delta, then 30 s until the next delta
            first = Reply(text=ANSWER * 4, chunk_chars=4, chunk_delay_s=30)
        else:  # the request is in, no answer comes
            first = Reply(fault="hang")
        server.script("m", first, ANSWER)
        p = provider("a", server.url, "m", kind=kind, stream=stream)
        cfg = {"tiers": [tier("t", p, validators=[{"name": "test_sees_text", "key": key}])]}
        baseline = asyncio.all_tasks()

        async def mid_answer() -> None:
            with anyio.fail_after(5):
                if stream:
                    await _SEEN[key].wait()  # text has arrived, the rest has not
                else:
                    await eventually(lambda: server.active_requests == 1, "request in")

        async with Cascade.from_dict(cfg) as c:
            await GIVE_UP[how](c, mid_answer)
            # The server sees the client leave: its handler is cancelled, the socket closed
            # (a half-read response is never put back in the pool).
            await eventually(lambda: server.disconnects == 1, "server saw the disconnect")
            await eventually(lambda: server.active_requests == 0, "handler ended")
            await eventually(lambda: server.active_connections == 0, "connection closed")
            assert in_use(c) == 0
            await eventually(
                lambda: not other_tasks(baseline),
                "no task left",
                extra=lambda: other_tasks(baseline),
            )
            # and the Cascade carries on
            result = await c.run(messages=USER)
            assert result.text == ANSWER and result.validated
        await nothing_left(baseline, server)
        assert server.request_count == 2


async def keep_alive_only(
    c: Cascade, server: FakeOpenAIServer, baseline: set[asyncio.Task[object]]
) -> None:
    """What a finished response leaves: one idle connection in the pool, the server's end
    of it, and the server's task waiting on it for a next request; nothing else."""
    assert in_use(c) == 0 and pooled(c) == 1
    await eventually(
        lambda: (
            server.active_requests == 0
            and server.active_connections == 1
            and len(other_tasks(baseline)) == 1
        ),
        "only the keep-alive connection's server task",
        extra=lambda: other_tasks(baseline),
    )


async def test_cancel_during_a_retry_backoff(openai_server: FakeOpenAIServer) -> None:
    clock = FakeClock()  # never advanced: the backoff lasts until cancelled
    openai_server.script("m", Reply(status=503), ANSWER)
    retry = {"attempts": 3, "base_s": 10, "max_s": 10}
    # timeout_s 1000: the call's own timer is a sleeper on the clock too while the 503 is
    # in flight; the backoff is the one due within base_s
    a = provider("a", openai_server.url, "m", retry=retry, timeout_s=1000)
    cfg = {"tiers": [tier("t", a)]}
    baseline = asyncio.all_tasks()
    async with Cascade.from_dict(cfg, clock=clock) as c:
        task = asyncio.create_task(c.run(messages=USER))

        def backing_off() -> bool:
            due = [when for when, _, f in clock._sleepers if not f.done()]
            return len(due) == 1 and due[0] <= clock.monotonic() + 10

        await eventually(backing_off, "sleeping before the retry")
        assert openai_server.request_count == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert clock.sleepers == 0  # the backoff's sleep went with the task
        assert openai_server.request_count == 1  # the retry was never sent
        await keep_alive_only(c, openai_server, baseline)
        result = await c.run(messages=USER)
        assert result.text == ANSWER
    await nothing_left(baseline, openai_server)


async def test_cancel_while_waiting_for_the_limiter(openai_server: FakeOpenAIServer) -> None:
    clock = FakeClock()
    openai_server.script("m", ANSWER)
    limits = {"requests_per_minute": 1, "burst_s": 0}  # one now, the next in a minute
    cfg = {"tiers": [tier("t", provider("a", openai_server.url, "m", limits=limits))]}
    baseline = asyncio.all_tasks()
    async with Cascade.from_dict(cfg, clock=clock) as c:
        await c.run(messages=USER)
        task = asyncio.create_task(c.run(messages=USER))
        await eventually(lambda: clock.sleepers == 1, "queued for its turn")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert clock.sleepers == 0
        assert "waiters=0" in repr(c._calls.limiters["a"])
        assert openai_server.request_count == 1  # the cancelled run sent nothing
        await keep_alive_only(c, openai_server, baseline)
        # Its place in the queue is gone: the next run gets the next turn, not a ghost.
        clock.advance(60)
        with anyio.fail_after(5):
            assert (await c.run(messages=USER)).text == ANSWER
    assert openai_server.request_count == 2
    await nothing_left(baseline, openai_server)


async def test_a_caller_timeout_tied_with_a_provider_timeout_still_cancels(
    openai_server: FakeOpenAIServer,
) -> None:
    limit = 0.3
    openai_server.script("m1", Reply(fault="hang"))
    openai_server.script("m2", Reply(fault="hang"))
    cfg: dict[str, Any] = {
        "tiers": [
            tier("a", provider("a", openai_server.url, "m1", timeout_s=limit)),
            tier("b", provider("b", openai_server.url, "m2", timeout_s=limit)),
        ]
    }
    loop = asyncio.get_running_loop()
    async with Cascade.from_dict(cfg) as c:
        loop.call_later(limit - 0.02, time.sleep, 0.05)  # a busy loop: both timers due at once
        # The property is that the run ends (with the caller's TimeoutError), not how
        # soon: a run that missed both timers would hang until the guard fails it.
        with anyio.fail_after(10), pytest.raises(TimeoutError):
            async with asyncio.timeout(limit):
                await c.run(messages=USER)
