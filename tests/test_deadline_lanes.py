"""Run deadlines of one length share one loop timer (a lane, ``_timeouts.py``), with
``asyncio.timeout``'s behaviour: over real loopback HTTP, on the event loop's clock."""

from __future__ import annotations

import asyncio

import pytest

from cascade import Cascade, DeadlineExceeded
from cascade.engine._core import _MAX_LANES
from cascade.testing import FakeOpenAIServer, Reply

from .helpers import JSON_SCHEMA, USER, provider, tier

pytestmark = pytest.mark.anyio


def one_tier(url: str) -> dict[str, object]:
    return {"tiers": [tier("only", provider("a", url, "m1"))]}


async def test_runs_of_one_deadline_share_a_lane_and_each_keeps_its_own_time(
    openai_server: FakeOpenAIServer,
) -> None:
    """A run that ended early leaves the lane's timer to the run behind it, which is still
    cut off at its own deadline, not its predecessor's."""
    openai_server.script("m1", "4", "4", "4", Reply(text="4", fault="hang"))
    async with Cascade.from_dict(one_tier(openai_server.url)) as c:
        for _ in range(3):
            assert (await c.run(messages=USER, deadline_s=0.3)).text == "4"
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(DeadlineExceeded) as info:
            await c.run(messages=USER, deadline_s=0.3)
        took = loop.time() - t0
        assert list(c._engine._lanes) == [0.3]
    assert took >= 0.29  # not the first runs' deadlines, long gone
    (cut,) = info.value.attempts
    assert cut.outcome == "failed"


async def test_concurrent_runs_are_each_cut_at_their_deadline(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(text="4", fault="hang"))
    async with Cascade.from_dict(one_tier(openai_server.url)) as c:

        async def one(delay: float) -> float:
            await asyncio.sleep(delay)
            t0 = asyncio.get_running_loop().time()
            with pytest.raises(DeadlineExceeded):
                await c.run(messages=USER, deadline_s=0.25)
            return asyncio.get_running_loop().time() - t0

        took = await asyncio.gather(one(0), one(0.05), one(0.1))
        assert len(c._engine._lanes) == 1
    assert all(t >= 0.24 for t in took), took


async def test_past_the_lane_cap_a_run_gets_a_timer_of_its_own(
    openai_server: FakeOpenAIServer,
) -> None:
    n = _MAX_LANES + 4
    openai_server.script("m1", *["4"] * n, Reply(text="4", fault="hang"))
    async with Cascade.from_dict(one_tier(openai_server.url)) as c:
        for i in range(n):
            await c.run(messages=USER, deadline_s=10 + i)
        assert len(c._engine._lanes) == _MAX_LANES
        with pytest.raises(DeadlineExceeded):
            await c.run(messages=USER, deadline_s=0.2)  # no lane: asyncio.timeout's own
        assert 0.2 not in c._engine._lanes


async def test_a_deadline_with_on_exhausted_best_returns_the_answer_it_has(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(text="not json"))
    openai_server.script("m2", Reply(text="{}", fault="hang"))
    config = {
        "on_exhausted": "best",
        "tiers": [
            tier("small", provider("a", openai_server.url, "m1"), validators=[JSON_SCHEMA]),
            tier("big", provider("b", openai_server.url, "m2")),
        ],
    }
    async with Cascade.from_dict(config) as c:
        result = await c.run(messages=USER, deadline_s=0.3)
    assert result.text == "not json"
    assert not result.validated


async def test_closing_the_cascade_stops_the_lanes_timers(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(text="4"))
    async with Cascade.from_dict(one_tier(openai_server.url)) as c:
        await c.run(messages=USER, deadline_s=600)
        lane = c._engine._lanes[600]
        assert lane._timer is not None  # set for the finished run's time, 10 minutes on
    assert lane._timer is None
