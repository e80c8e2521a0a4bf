"""``Cascade.stream``: the engine's events, in both modes, over real loopback HTTP; and
``run()`` as the same stream read to its end."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

import cascade
from cascade import (
    AllProvidersFailed,
    AttemptFinished,
    AttemptStarted,
    Cascade,
    Delta,
    Escalated,
    Event,
    Failed,
    Finished,
    InputError,
    Retracted,
    TierStarted,
)
from cascade.testing import FakeOpenAIServer, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier
from .leaks import eventually, in_use, nothing_left, other_tasks

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'


def two_tiers(url: str, **config: Any) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("a", url, "m1", stream=True), validators=[JSON_SCHEMA]),
            tier("big", provider("b", url, "m2", stream=True), validators=[JSON_SCHEMA]),
        ],
        **config,
    }


async def events_of(c: Cascade, **kw: Any) -> list[Event]:
    async with c.stream(messages=USER, **kw) as stream:
        return [event async for event in stream]


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


async def test_buffered_stream_of_an_accepted_answer(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(text=ANSWER, chunk_chars=3))
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        events = await events_of(c)
    assert kinds(events) == [
        "TierStarted",
        "AttemptStarted",
        "AttemptFinished",
        "Delta",  # after acceptance: one piece, however the provider chunked it
        "Finished",
    ]
    assert events[0] == TierStarted(tier=1, tier_name="small")
    assert events[1] == AttemptStarted(tier=1, tier_name="small", provider="a", model="m1")
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert text_of(events) == finished.result.text == ANSWER
    attempt = events[2]
    assert isinstance(attempt, AttemptFinished)
    assert attempt.attempt == finished.result.attempts[0]


async def test_buffered_stream_shows_no_rejected_text(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(text="forty-two", chunk_chars=2))
    openai_server.script("m2", Reply(text=ANSWER, chunk_chars=2))
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        events = await events_of(c)
        result = await c.run(messages=USER)  # run() reads the same stream: same answer
    assert kinds(events) == [
        "TierStarted",
        "AttemptStarted",
        "AttemptFinished",
        "Escalated",
        "TierStarted",
        "AttemptStarted",
        "AttemptFinished",
        "Delta",
        "Finished",
    ]
    escalated = events[3]
    assert isinstance(escalated, Escalated)
    assert (escalated.from_tier_name, escalated.to_tier_name) == ("small", "big")
    assert escalated.reason == "rejected" and "no JSON" in escalated.detail
    assert text_of(events) == ANSWER
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert [a.outcome for a in finished.result.attempts] == ["rejected", "accepted"]
    assert (result.text, result.tier) == (finished.result.text, finished.result.tier)


async def test_a_long_accepted_answer_comes_in_bounded_pieces(
    openai_server: FakeOpenAIServer,
) -> None:
    long = '{"answer": 42, "pad": "' + "x" * 10_000 + '"}'
    openai_server.script("m1", Reply(text=long, chunk_chars=5000))
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        events = await events_of(c)
    pieces = [e.text for e in events if isinstance(e, Delta)]
    assert "".join(pieces) == long
    assert len(pieces) == 3
    assert max(map(len, pieces)) <= 4096


async def test_speculative_stream_retracts_a_rejected_answer(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(text="forty-two", chunk_chars=4))
    openai_server.script("m2", Reply(text=ANSWER, chunk_chars=4))
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        events = await events_of(c, mode="speculative")
    assert kinds(events) == [
        "TierStarted",
        "AttemptStarted",
        *["Delta"] * 3,  # "fort", "y-tw", "o": as they came
        "AttemptFinished",
        "Retracted",
        "Escalated",
        "TierStarted",
        "AttemptStarted",
        *["Delta"] * 4,
        "AttemptFinished",
        "Finished",
    ]
    first = [e.text for e in events[2:5] if isinstance(e, Delta)]
    assert first == ["fort", "y-tw", "o"]
    retracted = events[6]
    assert isinstance(retracted, Retracted)
    assert (retracted.tier, retracted.provider, retracted.chars) == (1, "a", len("forty-two"))
    assert text_of(events[7:]) == ANSWER


async def test_speculative_stream_retracts_a_stream_that_broke(
    openai_server: FakeOpenAIServer,
) -> None:
    cfg = {
        "tiers": [
            tier(
                "only",
                provider("a", openai_server.url, "m1", stream=True),
                provider("b", openai_server.url, "m2", stream=True),
            )
        ]
    }
    openai_server.script("m1", Reply(text="a half answer that never ends", fault="drop"))
    openai_server.script("m2", Reply(text=ANSWER))
    async with Cascade.from_dict(cfg) as c:
        events = await events_of(c, mode="speculative")
    at = next(i for i, e in enumerate(events) if isinstance(e, Retracted))
    shown = text_of(events[:at])
    retracted = events[at]
    assert isinstance(retracted, Retracted)
    assert retracted.chars == len(shown) > 0
    failed = events[at - 1]
    assert isinstance(failed, AttemptFinished) and failed.attempt.outcome == "failed"
    assert text_of(events[at:]) == ANSWER  # the failover's text, after the retraction
    assert isinstance(events[-1], Finished)


async def test_a_run_with_no_answer_ends_with_failed(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(status=500))
    openai_server.script("m2", Reply(status=500))
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        events = await events_of(c, mode="speculative")
        with pytest.raises(AllProvidersFailed) as raised:
            await c.run(messages=USER)
    last = events[-1]
    assert isinstance(last, Failed) and isinstance(last.error, AllProvidersFailed)
    assert [a.outcome for a in last.error.attempts] == ["failed", "failed"]
    assert len(raised.value.attempts) == 2
    (escalated,) = [e for e in events if isinstance(e, Escalated)]
    assert escalated.reason == "failed"


async def test_bad_input_is_raised_at_the_call(openai_server: FakeOpenAIServer) -> None:
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        with pytest.raises(InputError) as raised:
            c.stream(messages=USER, mode="eager")  # type: ignore[arg-type]
        assert raised.value.path == "mode"
        with pytest.raises(InputError):
            c.stream(messages=USER, max_tier=7)


# -- backpressure and leaving early ---------------------------------------------------------


async def test_a_reader_that_stops_reading_stops_the_socket(
    openai_server: FakeOpenAIServer,
) -> None:
    # 50 MB of answer on offer: a reader that takes one delta and then waits holds the
    # engine at that delta, so the process reads (and holds) no more than socket buffers.
    big = 64 << 20
    cfg = two_tiers(openai_server.url)
    cfg["tiers"][0]["providers"][0]["max_response_bytes"] = big
    cfg["tiers"][0]["providers"][0]["timeout_s"] = 60
    openai_server.script("m1", Reply(text="x" * 64, chunk_chars=64, fault="endless"))
    async with Cascade.from_dict(cfg) as c:
        tracemalloc.start()
        try:
            async with c.stream(messages=USER, mode="speculative") as stream:
                async for event in stream:
                    if isinstance(event, Delta):
                        break
                base, _ = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                # Let the loop run: an engine that read ahead would take MBs per turn.
                for _ in range(300):
                    await asyncio.sleep(0.001)
                _, peak = tracemalloc.get_traced_memory()
                held = peak - base
        finally:
            tracemalloc.stop()
        assert held < 1 << 20, f"{held} bytes held while the reader waited"
        delta = await stream.__anext__()  # still there, one delta further on
        assert isinstance(delta, Delta)


async def test_breaking_out_after_the_first_delta_cancels_the_call(
    openai_server: FakeOpenAIServer,
) -> None:
    slow = Reply(text="x" * 200, chunk_chars=10, chunk_delay_s=0.05)
    openai_server.script("m1", slow, Reply(text=ANSWER))
    baseline = asyncio.all_tasks()
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        async with c.stream(messages=USER, mode="speculative") as stream:
            async for event in stream:
                if isinstance(event, Delta):
                    break
        # Left: the call is closed and recorded at once, costed for what it sent.
        (attempt,) = stream.attempts
        assert attempt.outcome == "cancelled" and attempt.error_type == "RunCancelled"
        assert attempt.cost_usd > 0 and attempt.output_tokens > 0
        assert in_use(c) == 0
        await nothing_left(baseline, openai_server)
        # The Cascade goes on.
        assert (await c.run(messages=USER)).text == ANSWER


async def _leave_by_aclose(c: Cascade) -> cascade.Stream:
    stream = c.stream(messages=USER, mode="speculative")
    await stream.__aenter__()
    async for event in stream:
        if isinstance(event, Delta):
            break
    await stream.aclose()
    return stream


async def _leave_by_cancel_scope(c: Cascade) -> cascade.Stream:
    with anyio.CancelScope() as scope:
        async with c.stream(messages=USER, mode="speculative") as stream:
            async for event in stream:
                if isinstance(event, Delta):
                    scope.cancel()
                    await anyio.sleep(1)  # cancelled here
    assert scope.cancelled_caught
    return stream


async def _leave_by_timeout(c: Cascade) -> cascade.Stream:
    loop = asyncio.get_running_loop()
    stream = c.stream(messages=USER, mode="speculative")

    async def read() -> None:
        async with asyncio.timeout(None) as timeout, stream:
            async for event in stream:
                if isinstance(event, Delta):
                    timeout.reschedule(loop.time())  # the caller's timeout runs out now

    with pytest.raises(TimeoutError):
        await read()
    return stream


@pytest.mark.parametrize("leave", [_leave_by_aclose, _leave_by_cancel_scope, _leave_by_timeout])
async def test_every_way_of_leaving_early_cancels_and_records(
    openai_server: FakeOpenAIServer, leave: Any
) -> None:
    openai_server.script("m1", Reply(text="x" * 200, chunk_chars=10, chunk_delay_s=0.05))
    baseline = asyncio.all_tasks()
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        stream = await leave(c)
        assert [a.outcome for a in stream.attempts] == ["cancelled"]
        await eventually(lambda: in_use(c) == 0, "connections returned")
        await nothing_left(baseline, openai_server)
    assert not other_tasks(baseline)


async def test_a_slow_reader_is_not_an_idle_provider(openai_server: FakeOpenAIServer) -> None:
    # idle_timeout_s measures the provider, not the reader downstream.
    cfg = two_tiers(openai_server.url)
    cfg["tiers"][0]["providers"][0]["idle_timeout_s"] = 0.05
    openai_server.script("m1", Reply(text=ANSWER, chunk_chars=4))
    events = []
    async with Cascade.from_dict(cfg) as c, c.stream(messages=USER, mode="speculative") as stream:
        async for event in stream:
            events.append(event)
            if isinstance(event, Delta):
                await asyncio.sleep(0.1)  # twice the idle timeout, per delta
    last = events[-1]
    assert isinstance(last, Finished) and last.result.tier == 1
    assert not any(isinstance(e, Retracted) for e in events)


async def test_a_hedged_tier_shows_only_the_kept_calls_text(
    openai_server: FakeOpenAIServer,
) -> None:
    url = openai_server.url
    cfg = {
        "tiers": [
            {
                **tier(
                    "t",
                    provider("a", url, "m1", stream=True),
                    provider("b", url, "m2", stream=True),
                ),
                "hedge": {"after_s": 0.05},
            }
        ]
    }
    openai_server.script("m1", Reply(text="the slow one", latency_s=0.5))
    openai_server.script("m2", Reply(text="the hedge", chunk_chars=3))
    async with Cascade.from_dict(cfg) as c:
        events = await events_of(c, mode="speculative")
    assert {e.provider for e in events if isinstance(e, Delta)} == {"b"}
    assert text_of(events) == "the hedge"
    assert not any(isinstance(e, Retracted) for e in events)
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert sorted((a.provider, a.outcome) for a in finished.result.attempts) == [
        ("a", "cancelled"),
        ("b", "accepted"),
    ]
    started = [e for e in events if isinstance(e, AttemptStarted)]
    assert [(e.provider, e.hedge) for e in started] == [("a", False), ("b", True)]


async def test_a_closed_cascade_raises_to_the_reader(openai_server: FakeOpenAIServer) -> None:
    c = Cascade.from_dict(two_tiers(openai_server.url))
    await c.aclose()
    stream = c.stream(messages=USER)
    with pytest.raises(RuntimeError, match="closed"):
        await read_all(stream)


async def read_all(stream: cascade.Stream) -> list[Event]:
    async with stream:
        return [event async for event in stream]


async def test_two_readers_of_one_stream_is_an_error_not_a_hang(
    openai_server: FakeOpenAIServer,
) -> None:
    slow = Reply(text="x" * 200, chunk_chars=10, chunk_delay_s=0.05)
    openai_server.script("m1", slow)
    cfg = two_tiers(openai_server.url)
    async with Cascade.from_dict(cfg) as c, c.stream(messages=USER, mode="speculative") as s:
        async for event in s:
            if isinstance(event, Delta):
                break  # the next delta is 50 ms away: a reader now waits for it
        first = asyncio.ensure_future(s.__anext__())
        await asyncio.sleep(0)
        second = asyncio.ensure_future(s.__anext__())
        done = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 10)
        assert any(isinstance(d, RuntimeError) for d in done)


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_the_deltas_spell_the_best_unvalidated_answer_too(
    openai_server: FakeOpenAIServer, mode: str
) -> None:
    # on_exhausted = "best": the run returns a rejected answer; a relay that forwards the
    # deltas must show what run() returns, not nothing.
    openai_server.script("m1", Reply(text="not json one"))
    openai_server.script("m2", Reply(text="not json two, longer"))
    cfg = two_tiers(openai_server.url, on_exhausted="best")
    async with Cascade.from_dict(cfg) as c, c.stream(messages=USER, mode=mode) as stream:
        shown = ""
        async for event in stream:
            if isinstance(event, Delta):
                shown += event.text
            elif isinstance(event, Retracted):
                shown = shown[: len(shown) - event.chars]
            elif isinstance(event, Finished):
                final = event.result
    assert not final.validated
    assert shown == final.text


async def test_a_reader_slower_than_timeout_s_is_not_a_provider_timeout(
    openai_server: FakeOpenAIServer,
) -> None:
    # The reader pauses longer than timeout_s plus any backstop: the call's timers stop
    # while it does, and no other timer (aiohttp's) may kill the call and blame the provider.
    # The answer is larger than the socket buffers, so the server is still sending.
    text = "x" * 4_000_000
    cfg = {
        "tiers": [
            tier(
                "t",
                provider(
                    "a",
                    openai_server.url,
                    "m1",
                    stream=True,
                    timeout_s=1.0,  # room for 4 MB on a loaded machine
                    max_response_bytes=16_000_000,
                    retry={"attempts": 1},
                    breaker={"fail_max": 1},
                ),
            )
        ]
    }
    openai_server.script("m1", Reply(text=text, chunk_chars=4000))
    async with Cascade.from_dict(cfg) as c:
        async with c.stream(messages=USER, mode="speculative") as stream:
            events: list[Event] = []
            async for event in stream:
                if isinstance(event, Delta) and not any(isinstance(e, Delta) for e in events):
                    await asyncio.sleep(2.5)  # once: > timeout_s + 1
                events.append(event)
        last = events[-1]
        assert isinstance(last, Finished)
        assert last.result.text == text
        assert [a.outcome for a in stream.attempts] == ["accepted"]
        assert c.breakers["a"].fail_counter == 0


async def test_the_reader_takes_the_result_before_the_run_writes_its_record(
    openai_server: FakeOpenAIServer,
) -> None:
    """The last event reaches the reader before the run's span and routing record are
    written (a gateway answers its client first); leaving the stream then waits for that
    bookkeeping, and cancels nothing."""
    openai_server.script("m1", Reply(text=ANSWER))
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        with capture_logs() as logs:
            async with c.stream(messages=USER) as stream:
                async for event in stream:
                    if isinstance(event, Finished):
                        break
                routes = [e for e in logs if e["event"] == "cascade.route"]
                assert routes == []  # not yet: the reader came first
            records = [e for e in logs if e["event"] == "cascade.route"]
    assert len(records) == 1
    assert records[0]["outcome"] == "accepted"
    assert records[0]["latency_s"] == round(event.result.latency_s, 6)  # the result's own
    assert [a.outcome for a in stream.attempts] == ["accepted"]
