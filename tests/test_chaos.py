"""Random faults on a share of calls, at a size CI affords (``benchmarks/chaos.py`` runs
the full 5,000 requests at concurrency 200): every run ends within its deadline with a
Result or a typed error, nothing leaks, a healthy provider per tier means every request is
answered; breakers probe once, limiters hold, as the fake servers count."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import anyio
import pytest

import cascade
from cascade import Cascade
from cascade.testing import (
    Chaos,
    FakeAnthropicServer,
    FakeClock,
    FakeOpenAIServer,
    FakeRequest,
    Reply,
)

from .helpers import JSON_SCHEMA, USER, provider, tier
from .leaks import eventually, in_use, nothing_left, other_tasks

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
PROSE = "It is forty-two."  # a good response that json_schema rejects: the run escalates


def request(model: str, task: int = 0) -> FakeRequest:
    return FakeRequest(
        model=model,
        messages=[{"role": "user", "content": f"#{task}"}],
        stream=False,
        body={},
        headers={},
    )


# -- the responder -----------------------------------------------------------------------


async def fates(chaos: Chaos, model: str, n: int) -> list[Reply]:
    return [await chaos(request(model)) for _ in range(n)]


async def test_chaos_is_deterministic_per_model_whatever_the_interleaving() -> None:
    alone = await fates(Chaos(ANSWER, seed=3), "a", 200)
    mixed = Chaos(ANSWER, seed=3)
    interleaved: list[Reply] = []
    for _ in range(200):
        interleaved.append(await mixed(request("a")))
        await mixed(request("b"))  # another model's calls do not shift a's fates
    assert interleaved == alone
    assert await fates(Chaos(ANSWER, seed=4), "a", 200) != alone


async def test_chaos_injects_every_fault_at_the_rate_asked() -> None:
    chaos = Chaos(ANSWER, rate=0.3, seed=1)
    replies = await fates(chaos, "m", 2000)
    counts = chaos.counts
    assert chaos.calls == 2000 and sum(counts.values()) == 2000
    assert 0.25 < chaos.faults_injected / 2000 < 0.35
    for fault in ("server_error", "rate_limited", "drop", "malformed", "hang"):
        assert counts[fault] > 60, counts  # ~120 each: the five share the 30% evenly
    assert counts["error_event"] == 0  # not in the default mix
    assert chaos.counts_for("m") == counts
    limited = [r for r in replies if r.status == 429]
    assert all(r.retry_after_s is not None and 0 <= r.retry_after_s <= 0.2 for r in limited)
    assert {r.status for r in replies if r.status >= 500} <= {500, 502, 503}
    assert {r.fault for r in replies} == {None, "drop", "malformed", "hang"}
    assert all(r.text == ANSWER for r in replies if r.fault in ("drop", "malformed"))
    assert "rate=0.3" in repr(chaos) and "hang=" in repr(chaos)


async def test_chaos_rate_and_mix_bounds() -> None:
    assert all(r.fault is None for r in await fates(Chaos(ANSWER, rate=0.0), "m", 50))
    only = Chaos(ANSWER, rate=1.0, faults={"error_event": 1.0})
    assert {r.fault for r in await fates(only, "m", 20)} == {"error_event"}

    def per_task(req: FakeRequest) -> str:
        return f"answer to {req.messages[-1]['content']}"

    chaos = Chaos(per_task, rate=0.0)
    assert (await chaos(request("m", 7))).text == "answer to #7"
    for bad in (
        {"rate": 1.5},
        {"faults": {"meteor": 1.0}},
        {"faults": {"hang": 0.0}},
        {"retry_after_s": (0.2, 0.1)},
        {"statuses": (404,)},
    ):
        with pytest.raises(ValueError):
            Chaos(ANSWER, **bad)


# -- the invariants under chaos -------------------------------------------------------------

REQUESTS = 300
CONCURRENCY = 50
DEADLINE_S = 1.5
MARGIN_S = 0.5  # a bound, not a speed: every run must end by deadline + margin
CHAOS_TIMEOUT_S = 0.1  # cuts a hang, well below the deadline (see the xfail below)


def task_of(req: FakeRequest) -> int:
    return int(str(req.messages[-1]["content"]).rsplit("#", 1)[-1])


def small(req: FakeRequest) -> Reply:
    return Reply(text=PROSE if task_of(req) % 4 == 0 else ANSWER, chunk_chars=5)


def large(req: FakeRequest) -> Reply:
    return Reply(text=ANSWER, chunk_chars=5)


def chaos_config(oai: str, ant: str, *, healthy: bool) -> dict[str, Any]:
    def p(name: str, url: str, *, kind: str = "openai", well: bool = False, **kw: Any) -> Any:
        timeout = 5 if well and healthy else CHAOS_TIMEOUT_S
        breaker = {"fail_max": 3, "reset_timeout_s": 0.2}
        return provider(name, url, name, kind=kind, timeout_s=timeout, breaker=breaker, **kw)

    retry = {"attempts": 2, "base_s": 0.01, "max_s": 0.05}
    return {
        "tiers": [
            tier("small",
                 p("a-openai", oai, stream=True, retry=retry),
                 p("b-claude", ant, kind="anthropic"),
                 p("ok-openai", oai, well=True),
                 validators=[JSON_SCHEMA]),
            tier("large",
                 p("c-claude", ant, kind="anthropic", stream=True, retry=retry),
                 p("ok-claude", ant, kind="anthropic", stream=True, well=True),
                 validators=[JSON_SCHEMA]),
        ]
    }  # fmt: skip


@pytest.mark.parametrize("healthy", [True, False], ids=["healthy", "no-healthy"])
async def test_under_chaos_every_run_ends_in_time_typed_and_leaves_nothing(
    healthy: bool,
) -> None:
    chaos = Chaos(small, rate=0.3, seed=11)
    chaos_large = Chaos(large, rate=0.3, seed=12)
    async with FakeOpenAIServer(record=False) as oai, FakeAnthropicServer(record=False) as ant:
        for server, name, fleet_tier in (
            (oai, "a-openai", "small"), (ant, "b-claude", "small"),
            (oai, "ok-openai", "small"), (ant, "c-claude", "large"),
            (ant, "ok-claude", "large"),
        ):  # fmt: skip
            if healthy and name.startswith("ok-"):
                server.respond(name, small if fleet_tier == "small" else large)
            else:
                server.respond(name, chaos if fleet_tier == "small" else chaos_large)
        baseline = asyncio.all_tasks()
        outcomes: Counter[str] = Counter()
        untyped: list[BaseException] = []
        overshoot: list[float] = []
        c = Cascade.from_dict(chaos_config(oai.url, ant.url, healthy=healthy))
        await c.open()
        queue = iter(range(REQUESTS))

        async def worker() -> None:
            for i in queue:
                t0 = time.monotonic()
                try:
                    messages = [{"role": "user", "content": f"6 * 7 as JSON? #{i}"}]
                    result = await c.run(messages=messages, deadline_s=DEADLINE_S)
                except cascade.CascadeError as exc:
                    outcomes[type(exc).__name__] += 1
                except Exception as exc:
                    untyped.append(exc)
                else:
                    outcomes["validated" if result.validated else "unvalidated"] += 1
                overshoot.append(time.monotonic() - t0 - DEADLINE_S)
                await asyncio.sleep(0)  # a run refused by open breakers never suspends

        with anyio.fail_after(60):  # a hung run fails the test, it does not stall CI
            async with anyio.create_task_group() as tg:
                for _ in range(CONCURRENCY):
                    tg.start_soon(worker)
        assert in_use(c) == 0  # every finished run gave its connection back
        await c.aclose()
        await nothing_left(baseline, oai, ant)
        assert not other_tasks(baseline)
    assert untyped == []
    assert sum(outcomes.values()) == REQUESTS
    assert max(overshoot) <= MARGIN_S
    injected = Counter(chaos.counts) + Counter(chaos_large.counts)
    assert sum(injected.values()) - injected["ok"] >= 20  # ~45: open breakers spare the rest
    assert all(injected[f] for f in ("server_error", "rate_limited", "drop", "malformed", "hang"))
    if healthy:
        assert outcomes == {"validated": REQUESTS}
    else:
        assert set(outcomes) - {"validated", "unvalidated"} <= {
            "AllProvidersFailed",
            "DeadlineExceeded",
        }
        assert outcomes["AllProvidersFailed"] > 0  # no healthy provider: failures show


async def test_a_provider_timeout_tied_with_the_deadline_still_ends_the_run(
    openai_server: FakeOpenAIServer,
) -> None:
    deadline = 0.3
    openai_server.script("m1", Reply(fault="hang"))
    openai_server.script("m2", Reply(fault="hang"))
    cfg = {
        "tiers": [
            tier("a", provider("a", openai_server.url, "m1", timeout_s=deadline)),
            tier("b", provider("b", openai_server.url, "m2", timeout_s=deadline)),
        ]
    }
    loop = asyncio.get_running_loop()
    async with Cascade.from_dict(cfg) as c:
        # A busy loop (here: one blocking callback) makes both timers due in one turn,
        # as they are under load whenever timeout_s equals what is left of the deadline.
        loop.call_later(deadline - 0.02, time.sleep, 0.05)
        # It ends with DeadlineExceeded; a run that missed both timers would hang until
        # the guard fails it (a bound against a hang, not a speed).
        with anyio.fail_after(10), pytest.raises(cascade.DeadlineExceeded):
            await c.run(messages=USER, deadline_s=deadline)


# -- breakers, counted at the server -------------------------------------------------------


def pair(url: str, **first: Any) -> dict[str, Any]:
    return {
        "tiers": [
            tier("t", provider("a", url, "ma", **first), provider("b", url, "mb"),
                 validators=[JSON_SCHEMA]),
        ]
    }  # fmt: skip


def served(server: FakeOpenAIServer, model: str) -> int:
    return sum(r.model == model for r in server.requests)


@pytest.mark.parametrize("probe_ok", [True, False], ids=["probe-succeeds", "probe-fails"])
async def test_breaker_opens_after_fail_max_and_probes_once_under_concurrency(
    openai_server: FakeOpenAIServer, probe_ok: bool
) -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    healthy = False

    async def ma(req: FakeRequest) -> Reply:
        if not healthy:
            return Reply(status=503)
        await gate.wait()  # the probe stays in flight while the others arrive
        return Reply(text=ANSWER) if probe_ok else Reply(status=500)

    openai_server.respond("ma", ma)
    openai_server.script("mb", ANSWER)
    cfg = pair(openai_server.url, breaker={"fail_max": 3, "reset_timeout_s": 10})
    async with Cascade.from_dict(cfg, clock=clock) as c:

        def state() -> str:  # read afresh each time: runs move the breaker along
            return c.breakers["a"].state

        async def runs(n: int) -> list[cascade.Result]:
            results: list[cascade.Result] = []

            async def one() -> None:
                results.append(await c.run(messages=USER))

            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(one)
            return results

        for _ in range(3):  # fail_max outages, each failed over to b
            assert (await c.run(messages=USER)).provider == "b"
        assert state() == "open" and served(openai_server, "ma") == 3
        await runs(20)  # open: a is not called at all
        assert served(openai_server, "ma") == 3

        clock.advance(10)  # half-open from here: one probe, however many runs arrive
        healthy = True
        async with anyio.create_task_group() as tg:
            tg.start_soon(runs, 50)
            # 3 + 20 runs went to b already; now 49 of these 50 fail over while one probes
            await eventually(lambda: served(openai_server, "mb") == 3 + 20 + 49, "49 failovers")
            assert served(openai_server, "ma") == 4
            assert state() == "half_open"
            gate.set()
        assert served(openai_server, "ma") == 4  # exactly one probe reached the server
        if probe_ok:
            assert state() == "closed"
            assert (await c.run(messages=USER)).provider == "a"
            assert served(openai_server, "ma") == 5
        else:
            assert state() == "open"  # a new window, no second probe
            await runs(20)
            assert served(openai_server, "ma") == 4


# -- limiters, counted at the server -------------------------------------------------------


def arrivals_respect(
    times: list[float], *, per_minute: float, burst_s: float, eps: float = 1e-6
) -> bool:
    """Whether every window of arrivals holds at most ``burst + rate * span`` requests."""
    rate = per_minute / 60
    times = sorted(times)
    return all(
        j - i + 1 <= rate * burst_s + rate * (times[j] - times[i]) + eps
        for i in range(len(times))
        for j in range(i, len(times))
    )


async def test_limiter_passes_a_busy_provider_over_and_holds_its_quota(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock()
    openai_server.script("ma", ANSWER)
    openai_server.script("mb", ANSWER)
    limits = {"requests_per_minute": 60, "burst_s": 10}  # 1 a second, 10 in the bucket
    async with Cascade.from_dict(pair(openai_server.url, limits=limits), clock=clock) as c:

        async def runs(n: int) -> None:
            async with anyio.create_task_group() as tg:
                for _ in range(n):
                    tg.start_soon(lambda: c.run(messages=USER))

        await runs(50)
        assert served(openai_server, "ma") == 10  # the bucket; the other 40 went to b
        assert served(openai_server, "mb") == 40
        clock.advance(5)
        await runs(50)
        assert served(openai_server, "ma") == 15  # five seconds refilled five
        clock.advance(3600)
        await runs(50)
        assert served(openai_server, "ma") == 25  # never more than a full bucket


async def test_limiter_admits_waiting_requests_one_refill_at_a_time(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock()  # moved by hand: no time passes while a request is on the wire
    openai_server.script("ma", ANSWER)
    limits = {"requests_per_minute": 30, "burst_s": 4}  # one per 2 s, two in the bucket
    cfg = {"tiers": [tier("t", provider("a", openai_server.url, "ma", limits=limits))]}
    done = 0
    async with Cascade.from_dict(cfg, clock=clock) as c:

        async def one() -> None:
            nonlocal done
            await c.run(messages=USER)
            done += 1

        async with anyio.create_task_group() as tg:
            for _ in range(12):  # no sibling: they queue for their turn
                tg.start_soon(one)
            await eventually(lambda: done == 2 and clock.sleepers == 1, "the bucket's two")
            for k in range(1, 11):
                clock.advance(1.0)  # half a refill: nobody is let through
                await asyncio.sleep(0)
                assert openai_server.request_count == 1 + k
                clock.advance(1.0)  # a whole refill: exactly one more
                await eventually(lambda: done == 2 + k, f"request {2 + k}")  # noqa: B023
                assert openai_server.request_count == 2 + k  # counted by the server
    assert openai_server.request_count == 12


async def test_retries_count_against_the_providers_quota(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock(autojump=True)
    seen: list[float] = []

    def ma(req: FakeRequest) -> Reply:
        seen.append(clock.monotonic())
        return Reply(status=503)

    openai_server.respond("ma", ma)
    openai_server.script("mb", ANSWER)
    limits = {"requests_per_minute": 6, "burst_s": 10}  # one in the bucket, then 1 per 10 s
    retry = {"attempts": 3, "base_s": 0.01, "max_s": 0.01}
    async with Cascade.from_dict(pair(openai_server.url, limits=limits, retry=retry),
                                 clock=clock) as c:  # fmt: skip
        result = await c.run(messages=USER)
    assert result.provider == "b"
    assert arrivals_respect(seen, per_minute=6, burst_s=10), seen  # 3 requests in 0.02 s
