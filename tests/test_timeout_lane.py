"""TimeoutLane: a provider's whole-body calls share one loop timer, and each call still
sees exactly what ``asyncio.timeout`` would give it. The loop's clock is replaced by a
hand-moved one (as aiolimiter's tests patch ``loop.time``), so nothing waits for real."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from cascade._timeouts import ClockLane, TimeoutLane
from cascade.testing import FakeClock

from .helpers import Guard, lane_guard

pytestmark = pytest.mark.anyio

LENGTH = 10.0


class Hands:
    """The running loop's clock, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: self.now)

    async def move(self, seconds: float) -> None:
        """Move the clock, and let the loop run what came due (timers, then the tasks
        they woke)."""
        self.now += seconds
        for _ in range(5):
            await asyncio.sleep(0)


@pytest.fixture
async def hands(monkeypatch: pytest.MonkeyPatch) -> Hands:
    return Hands(monkeypatch)


async def asyncio_guard(body: Callable[[], Awaitable[Any]]) -> Any:
    async with asyncio.timeout(LENGTH):
        return await body()


def guards() -> Iterator[tuple[str, Callable[[], Guard]]]:
    yield "asyncio.timeout", lambda: asyncio_guard
    yield "TimeoutLane", lambda: lane_guard(TimeoutLane(LENGTH))


async def outcome(task: asyncio.Task[Any]) -> str:
    """How the call ended; a TimeoutError must come from the CancelledError it replaced."""
    try:
        return f"returned {await task}"
    except TimeoutError as exc:
        cause = exc.__cause__
    except asyncio.CancelledError:
        return "CancelledError"
    return "TimeoutError" if isinstance(cause, asyncio.CancelledError) else f"cause {cause!r}"


def hang(gate: asyncio.Future[None]) -> Callable[[], Awaitable[str]]:
    async def body() -> str:
        await gate
        return "answer"

    return body


def swallow(gate: asyncio.Future[None]) -> Callable[[], Awaitable[str]]:
    async def body() -> str:
        try:
            await gate
        except asyncio.CancelledError:
            return "swallowed"
        return "answer"

    return body


async def scenario(name: str, hands: Hands, guard: Guard) -> str:
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    body = swallow(gate) if name == "swallowed" else hang(gate)
    task = loop.create_task(guard(body))
    await hands.move(0)
    if name == "in time":
        await hands.move(LENGTH - 1)
        gate.set_result(None)
    elif name == "late":
        await hands.move(LENGTH + 1)
    elif name == "late and cancelled":
        hands.now += LENGTH + 1
        task.cancel()  # someone else cancels it in the turn its deadline fires
        await hands.move(0)
    elif name == "cancelled in time":
        await hands.move(1)
        task.cancel()
    elif name == "swallowed":
        await hands.move(LENGTH + 1)
    return await outcome(task)


@pytest.mark.parametrize(
    "name", ["in time", "late", "late and cancelled", "cancelled in time", "swallowed"]
)
async def test_a_call_sees_what_asyncio_timeout_gives_it(name: str, hands: Hands) -> None:
    seen = {label: await scenario(name, hands, make()) for label, make in guards()}
    assert seen["TimeoutLane"] == seen["asyncio.timeout"], seen
    expected = {
        "in time": "returned answer",
        "late": "TimeoutError",
        "late and cancelled": "CancelledError",
        "cancelled in time": "CancelledError",
        "swallowed": "returned swallowed",
    }
    assert seen["TimeoutLane"] == expected[name]


async def test_each_call_times_out_at_its_own_deadline(hands: Hands) -> None:
    loop = asyncio.get_running_loop()
    guarded = lane_guard(TimeoutLane(LENGTH))
    gates = [loop.create_future() for _ in range(3)]
    tasks = []
    for gate in gates:  # entered at 0, 1 and 2 s
        tasks.append(loop.create_task(guarded(hang(gate))))
        await hands.move(0)  # it enters
        await hands.move(1)
    await hands.move(LENGTH - 3 + 0.5)  # 10.5 s: only the first is due
    assert [t.done() for t in tasks] == [True, False, False]
    await hands.move(1)  # 11.5 s: the second
    assert [t.done() for t in tasks] == [True, True, False]
    gates[2].set_result(None)  # the third answers in time
    assert [await outcome(t) for t in tasks] == ["TimeoutError", "TimeoutError", "returned answer"]


async def test_one_loop_timer_serves_every_call(
    hands: Hands, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = asyncio.get_running_loop()
    lane = TimeoutLane(LENGTH)
    timers: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Any, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    guarded = lane_guard(lane)

    async def quick() -> str:
        await asyncio.sleep(0)
        return "answer"

    for _ in range(20):
        await asyncio.gather(*(guarded(quick) for _ in range(50)))
        await hands.move(0.1)
    assert len(timers) == 1
    await hands.move(LENGTH)  # the timer fires with nothing due, and is not set again
    assert len(timers) == 1
    assert repr(lane) == f"<TimeoutLane {LENGTH:g}s live=0>"


async def test_calls_that_end_behind_a_slow_one_are_not_held(hands: Hands) -> None:
    loop = asyncio.get_running_loop()
    lane = TimeoutLane(LENGTH)
    guarded = lane_guard(lane)
    gate: asyncio.Future[None] = loop.create_future()
    slow = loop.create_task(guarded(hang(gate)))
    await hands.move(0)

    async def quick() -> None:
        await asyncio.sleep(0)

    for _ in range(1000):
        await guarded(quick)
        # the slow call and at most a bounded number of done ones (not all 1000)
        assert len(lane._queue) <= 2 * 2 + 64 + 1
    gate.set_result(None)
    assert await outcome(slow) == "returned answer"
    assert not lane._queue


def test_a_lane_used_on_a_second_loop_starts_afresh(monkeypatch: pytest.MonkeyPatch) -> None:
    lane = TimeoutLane(LENGTH)

    async def late() -> str:
        hands = Hands(monkeypatch)
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.get_running_loop().create_task(lane_guard(lane)(hang(gate)))
        await hands.move(0)
        await hands.move(LENGTH + 1)
        return await outcome(task)

    assert asyncio.run(late()) == "TimeoutError"
    assert asyncio.run(late()) == "TimeoutError"


async def test_entering_outside_a_task_is_refused() -> None:
    lane = TimeoutLane(LENGTH)
    loop = asyncio.get_running_loop()
    error: list[BaseException] = []

    def outside() -> None:
        try:
            lane.enter()
        except RuntimeError as exc:
            error.append(exc)

    loop.call_soon(outside)
    await asyncio.sleep(0)
    assert error
    assert "inside a task" in str(error[0])


@pytest.mark.parametrize("late", [False, True])
async def test_a_clock_lane_times_out_on_its_clock(late: bool) -> None:
    clock = FakeClock()
    lane = ClockLane(clock, LENGTH)
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()
    task = loop.create_task(lane_guard(lane)(hang(gate)))
    for _ in range(3):
        await asyncio.sleep(0)
    assert clock.sleepers == 1  # its timer, on the clock
    clock.advance(LENGTH + 1 if late else LENGTH - 1)
    if not late:
        gate.set_result(None)
    assert await outcome(task) == ("TimeoutError" if late else "returned answer")
    assert clock.sleepers == 0  # nothing left on the clock for an autojump to find
