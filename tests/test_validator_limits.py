"""Validation work that could hold the event loop runs off it, under ``time_limit_s``: JSON
Schema checks of big answers (or under ``pattern``) in a killable worker process, a user's
``regex:`` extractor in a thread. An overrun is a rejection that escalates, the work stops,
and concurrent runs on the same loop go on meanwhile."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import anyio
import pytest

import cascade
from cascade import Cascade, Completion, ConfigError, Result
from cascade.testing import FakeOpenAIServer, Reply
from cascade.validators import JsonSchemaValidator, ValidationContext, get_extractor
from cascade.validators._offload import Overrun

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

CTX = ValidationContext(messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t")
UNIQUE = {"type": "array", "uniqueItems": True}
# uniqueItems compares every pair of 5,000 objects: ~40 s of CPU on the loop before
HOSTILE_JSON = json.dumps([{"a": i % 7, "b": [i]} for i in range(5000)])
# exponential backtracking even on the regex engine: every split of the a's is tried
HOSTILE_PATTERN = "(a|a)+b"
HOSTILE_TEXT = "a" * 60


def completion(text: str) -> Completion:
    return Completion(text=text, provider="p", model="m")


async def _settled_workers() -> list[int]:
    """The schema workers still running after a while (a fresh replacement may be busy
    importing for a moment; a check left running would stay busy for ~40 s)."""
    for _ in range(100):
        running = _running_workers()
        if not running:
            return []
        await anyio.sleep(0.05)
    return running


def _running_workers() -> list[int]:
    """Schema worker processes of this process that are running (not asleep on a read)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"_schema_worker" in cmdline and fields[0] == "R":
            found.append(int(stat.parent.name))
    return found


class _Ticker:
    """Counts turns of the event loop a task gets: a lag probe in ticks, not seconds."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await anyio.sleep(0)
            self.ticks += 1


async def _hostile_next_to_healthy(
    server: FakeOpenAIServer, validators: list[dict[str, Any]], hostile: str
) -> tuple[Result, Result, list[str], int]:
    """A run whose tier-1 answer is ``hostile`` beside a healthy run on the same loop: both
    results, the order they finished in, and the ticks a concurrent task got meanwhile."""
    server.script("bad", hostile)
    server.script("good", Reply(text='{"answer": 42}', latency_s=0.2))
    server.script("big", '{"answer": 42}')
    hostile_cfg = {"tiers": [tier("t1", provider("p1", server.url, "bad"), validators=validators),
                             tier("t2", provider("p2", server.url, "big"))]}  # fmt: skip
    healthy_cfg = {"tiers": [tier("t1", provider("p1", server.url, "good"))]}
    order: list[str] = []
    results: dict[str, Result] = {}
    ticker = _Ticker()

    async def run(name: str, cfg: dict[str, Any]) -> None:
        async with Cascade.from_dict(cfg) as cc:
            results[name] = await cc.run(messages=USER)
        order.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        async with anyio.create_task_group() as runs:
            runs.start_soon(run, "hostile", hostile_cfg)
            runs.start_soon(run, "healthy", healthy_cfg)
        tg.cancel_scope.cancel()
    return results["hostile"], results["healthy"], order, ticker.ticks


@pytest.mark.timeout(30)
async def test_schema_overrun_is_a_rejection_that_escalates(
    openai_server: FakeOpenAIServer,
) -> None:
    schema = {"name": "json_schema", "schema": UNIQUE, "time_limit_s": 1.0}
    hostile, healthy, order, ticks = await _hostile_next_to_healthy(
        openai_server, [schema], HOSTILE_JSON
    )
    (verdict,) = hostile.attempts[0].verdicts
    assert not verdict.passed
    assert "JSON Schema validation overran its time limit of 1s (time_limit_s)" in verdict.reason
    assert hostile.tier == 2
    assert hostile.text == '{"answer": 42}'
    # the healthy run (its answer 0.2 s away) finished while the hostile answer was checked
    assert healthy.validated
    assert order == ["healthy", "hostile"]
    # the loop kept turning: a frozen loop gives a concurrent task none (the order above is
    # the check; a count of turns is the machine's speed too: 536 on a loop that stalled)
    assert ticks > 100
    assert await _settled_workers() == []  # the overrunning check stopped, not left running


@pytest.mark.timeout(30)
async def test_regex_extractor_overrun_is_a_rejection_that_escalates(
    openai_server: FakeOpenAIServer,
) -> None:
    vote = {"name": "self_consistency", "samples": 1, "extractor": f"regex:{HOSTILE_PATTERN}",
            "time_limit_s": 0.5}  # fmt: skip
    hostile, healthy, order, ticks = await _hostile_next_to_healthy(
        openai_server, [vote], HOSTILE_TEXT
    )
    (verdict,) = hostile.attempts[0].verdicts
    assert not verdict.passed
    assert verdict.reason == (
        f"extractor regex {HOSTILE_PATTERN!r} overran its time limit of 0.5s (time_limit_s)"
    )
    assert hostile.tier == 2
    assert healthy.validated
    assert order == ["healthy", "hostile"]
    assert ticks > 100  # (as above)


async def test_big_answers_are_checked_by_the_worker_as_inline() -> None:
    schema = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": {"type": "integer"}}},
    }
    v = JsonSchemaValidator(schema=schema)
    good = json.dumps({"items": list(range(10_000))})
    bad = json.dumps({"items": [*range(10_000), "x"]})
    assert v._offloaded(good)
    ok = await v.validate(completion(good), CTX)
    assert ok.passed
    assert ok.parsed == json.loads(good)
    no = await v.validate(completion(bad), CTX)
    assert not no.passed
    assert no.reason == "at $.items[10000]: 'x' is not of type 'integer'"
    # the same answers, small: on the loop, with the same verdicts
    inline = await v.validate(completion('{"items": [1, "x"]}'), CTX)
    assert not v._offloaded('{"items": [1, "x"]}')
    assert inline.reason == "at $.items[1]: 'x' is not of type 'integer'"


@pytest.mark.timeout(30)
async def test_schema_patterns_run_in_the_worker() -> None:
    # a schema's own pattern meets the answer's strings: exponential on a short one
    v = JsonSchemaValidator(
        schema={"type": "object", "properties": {"s": {"pattern": "^(a+)+$"}}}, time_limit_s=0.5
    )
    assert v._offloaded('{"s": "aaa"}')
    assert (await v.validate(completion('{"s": "aaa"}'), CTX)).passed
    slow = await v.validate(completion(json.dumps({"s": "a" * 40 + "!"})), CTX)
    assert "overran its time limit of 0.5s" in slow.reason
    # the next check gets a fresh worker
    assert (await v.validate(completion('{"s": "aaaa"}'), CTX)).passed


@pytest.mark.timeout(30)
async def test_a_cancelled_check_stops() -> None:
    v = JsonSchemaValidator(schema=UNIQUE, time_limit_s=25)
    with anyio.move_on_after(0.5):  # the caller leaves (its run's deadline) mid-check
        await v.validate(completion(HOSTILE_JSON), CTX)
    assert await _settled_workers() == []  # not 25 s of a runaway check


def test_regex_extractor_outside_a_run() -> None:
    extract = get_extractor(f"regex:{HOSTILE_PATTERN}", time_limit_s=0.2)
    assert extract(completion(HOSTILE_TEXT)) is None  # cascade eval: no answer, no hang
    with pytest.raises(Overrun, match=r"overran its time limit of 0\.2s"):
        extract.search(HOSTILE_TEXT)  # type: ignore[attr-defined]
    assert get_extractor(r"regex:(\d+) apples")(completion("3 apples, 5 apples")) == "5"


@pytest.mark.parametrize("value", [0, -1, math.inf, math.nan, "2", True])
@pytest.mark.parametrize(
    "spec",
    [
        {"name": "json_schema", "schema": {"type": "object"}},
        {"name": "self_consistency", "samples": 3},
    ],
)
def test_time_limit_must_be_a_finite_positive_number(spec: dict[str, Any], value: Any) -> None:
    cfg = {"tiers": [tier("t", provider("p", "http://127.0.0.1:9/v1", "m"),
                          validators=[{**spec, "time_limit_s": value}])]}  # fmt: skip
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg)
    assert info.value.path == "tiers[0].validators[0].time_limit_s"
