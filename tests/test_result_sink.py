"""``ResultSink``: the gateway's JSON answers run in the handler's own task, the response
handed the result before the run writes its routing record, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import gc
import weakref
from typing import Any

import pytest
from structlog.testing import capture_logs

from cascade import Cascade, Failed, Finished
from cascade.engine._stream import ResultSink
from cascade.testing import FakeOpenAIServer, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier
from .leaks import eventually, in_use

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'


def two_tiers(url: str) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("a", url, "m1"), validators=[JSON_SCHEMA]),
            tier("big", provider("b", url, "m2"), validators=[JSON_SCHEMA]),
        ]
    }


def plan_of(c: Cascade) -> Any:
    return c._plan(USER, None, None, None, None, None, ())


async def test_the_answer_comes_before_the_routing_record(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(text="not json"))
    openai_server.script("m2", Reply(text=ANSWER))
    order: list[str] = []

    async def answer(end: Finished) -> None:
        order.append(f"answer {end.result.text}")
        await asyncio.sleep(0)  # a write that waits: the run must still wait for it
        order.append("sent")

    sink = ResultSink(answer)
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        with capture_logs() as logs:
            end = await c._answer(plan_of(c), sink)
            order.extend(e["event"] for e in logs)
    assert isinstance(end, Finished)
    assert order == [f"answer {ANSWER}", "sent", "cascade.route"]
    assert logs[0]["outcome"] == "accepted"
    assert logs[0]["tier_path"] == ["small", "big"]
    # every attempt is kept, the escalated one too
    assert [a.outcome for a in sink.attempts] == ["rejected", "accepted"]
    assert list(sink.attempts) == list(end.result.attempts)
    assert sink.error is None


async def test_what_the_answer_raises_is_kept_and_the_run_recorded_as_answered(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(text=ANSWER))

    class Gone(Exception):
        pass

    async def answer(end: Finished) -> None:
        raise Gone

    sink = ResultSink(answer)
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        with capture_logs() as logs:
            end = await c._answer(plan_of(c), sink)
    assert isinstance(end, Finished)
    assert isinstance(sink.error, Gone)
    (record,) = logs
    assert record["outcome"] == "accepted"  # the run answered; the client did not take it


async def test_a_cancellation_while_answering_is_kept_for_the_caller(
    openai_server: FakeOpenAIServer,
) -> None:
    """The handler cancelled while it writes the response (the client left): the run
    still writes its record, then the caller raises the cancellation."""
    openai_server.script("m1", Reply(text=ANSWER))
    started = asyncio.Event()

    async def answer(end: Finished) -> None:
        started.set()
        await asyncio.sleep(3600)  # a client that reads nothing

    sink = ResultSink(answer)
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:

        async def handler() -> None:
            await c._answer(plan_of(c), sink)
            if sink.error is not None:
                raise sink.error

        with capture_logs() as logs:
            task = asyncio.get_running_loop().create_task(handler())
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert isinstance(sink.error, asyncio.CancelledError)
    (record,) = logs
    assert record["outcome"] == "accepted"


async def test_a_cancellation_before_the_answer_cancels_the_call(
    openai_server: FakeOpenAIServer,
) -> None:
    """The client left while the provider was still answering: the call is cut off at
    once, its connection returned, and the attempt kept (cancelled) for the bill."""
    openai_server.script("m1", Reply(text=ANSWER, fault="hang"))
    answered: list[Finished] = []

    async def answer(end: Finished) -> None:
        answered.append(end)

    sink = ResultSink(answer)
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        task = asyncio.get_running_loop().create_task(c._answer(plan_of(c), sink))
        await eventually(lambda: len(openai_server.requests) >= 1, "the call is under way")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: in_use(c) == 0, "its connection is returned")
    assert answered == []
    assert [a.outcome for a in sink.attempts] == ["cancelled"]


async def test_a_run_that_fails_is_returned_not_answered(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(status=500))
    openai_server.script("m2", Reply(status=500))
    answered: list[Finished] = []

    async def answer(end: Finished) -> None:
        answered.append(end)

    sink = ResultSink(answer)
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        end = await c._answer(plan_of(c), sink)
    assert isinstance(end, Failed)
    assert answered == []
    assert len(sink.attempts) >= 2
    assert list(sink.attempts) == list(end.error.attempts)


async def test_a_failed_run_leaves_no_cycle_holding_the_sink(
    openai_server: FakeOpenAIServer,
) -> None:
    """A failed run's state can be held in a cycle through its errors' tracebacks (the
    frames of its calls); the caller's answer (and all it holds: the request, its body)
    is not in it, and goes as the caller drops it, not at a collection."""
    openai_server.script("m1", Reply(status=500))
    openai_server.script("m2", Reply(status=500))

    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        gc.collect()
        gc.disable()
        try:

            async def answer(end: Finished) -> None:
                pass

            gone = weakref.ref(answer)  # held by the sink alone once this name goes
            sink = ResultSink(answer)
            del answer
            end = await c._answer(plan_of(c), sink)
            assert isinstance(end, Failed)
            del sink, end
            assert gone() is None
        finally:
            gc.enable()


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_a_text_stream_carries_text_withdrawals_and_the_end_only(
    openai_server: FakeOpenAIServer, mode: str
) -> None:
    """What the gateway's OpenAI SSE reads: an escalated run's text (a withdrawal in
    speculative mode) and its Finished event, and nothing else, not even the events a
    trace still hears (here the routing record's)."""
    openai_server.script("m1", Reply(text="not json", chunk_chars=3))
    openai_server.script("m2", Reply(text=ANSWER, chunk_chars=3))
    config = {
        "tiers": [
            tier("small", provider("a", openai_server.url, "m1", stream=True),
                 validators=[JSON_SCHEMA]),
            tier("big", provider("b", openai_server.url, "m2", stream=True),
                 validators=[JSON_SCHEMA]),
        ]
    }  # fmt: skip
    async with Cascade.from_dict(config) as c:
        with capture_logs() as logs:
            async with c._text_stream(plan_of(c), mode) as stream:  # type: ignore[arg-type]
                events = [event async for event in stream]
            async with c.stream(messages=USER, mode=mode) as full:  # type: ignore[arg-type]
                every = [event async for event in full]
    kinds = {type(e).__name__ for e in events}
    expected = {"Delta", "Finished"} | ({"Retracted"} if mode == "speculative" else set())
    assert kinds == expected
    # the same ones as a full stream's (a Finished of its own: its latency differs)
    assert [e for e in every[:-1] if type(e).__name__ in expected] == events[:-1]
    assert {"TierStarted", "AttemptStarted", "AttemptFinished", "Escalated"} <= {
        type(e).__name__ for e in every
    }
    assert [e["event"] for e in logs] == ["cascade.route", "cascade.route"]
    text_run, full_run = (r["escalations"] for r in logs)
    assert text_run == full_run != []  # the record heard the escalation all the same
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.result.text == ANSWER
    assert [a.outcome for a in stream.attempts] == ["rejected", "accepted"]
