"""Attacks on the engine's hot-path changes: the json_schema quick yes
(validators/_schema_fast.py), the providers' shared timeout lane (_timeouts.py), breaker
permits settled by hand (_calls.py) and the engine's state as msgspec Structs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade import Cascade, Completion, ConfigError, RequestOptions
from cascade._timeouts import TimeoutLane
from cascade.testing import FakeClock, FakeOpenAIServer, Reply
from cascade.validators import ValidationContext
from cascade.validators._schema_fast import quick_check
from cascade.validators.json_schema import JsonSchemaValidator

from .gateway import serving, write_config
from .helpers import USER, lane_guard, provider, tier
from .leaks import eventually, in_use, other_tasks

pytestmark = pytest.mark.anyio

DRAFT3 = "http://json-schema.org/draft-03/schema#"
CTX = ValidationContext(messages=(), options=RequestOptions(), tier=1, tier_name="t")


async def verdicts(schema: dict[str, Any], text: str) -> tuple[bool, bool]:
    """(quick path on, full validator only) verdicts for ``text``."""
    quick = JsonSchemaValidator(schema=schema)
    full = JsonSchemaValidator(schema=schema)
    full._quick = None
    completion = Completion(text=text, provider="p", model="m")
    a = await quick.validate(completion, CTX)
    b = await full.validate(completion, CTX)
    return a.passed, b.passed


# -- (a) the quick yes ------------------------------------------------------------------


@pytest.mark.parametrize(
    "schema",
    [
        # A subschema's own $schema switches jsonschema to that draft for it (evolve() asks
        # validator_for): under draft 3 a property's "required" is a flag, so a list there
        # makes the property required, where the quick check read it as draft 4's list.
        {
            "type": "object",
            "properties": {
                "a": {"$schema": DRAFT3, "type": "object", "properties": {"b": {"required": ["z"]}}}
            },
        },
        {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "properties": {"a": {"$schema": DRAFT3, "properties": {"b": {"required": ["z"]}}}},
        },
    ],
)
async def test_a_subschema_in_another_draft_gets_no_quick_yes(schema: dict[str, Any]) -> None:
    value = {"a": {}}
    assert not jsonschema.Draft202012Validator(schema).is_valid(value)
    check = quick_check(schema)
    assert check is None or not check(value)
    # and the validator refuses the mixture at once (one draft per schema)
    with pytest.raises(ConfigError) as caught:
        JsonSchemaValidator(schema=schema)
    assert caught.value.path == "schema.properties.a.$schema"


async def test_a_draft3_subschema_that_crashes_jsonschema_is_refused() -> None:
    # jsonschema's draft 3 reads each property's subschema with .get(): a boolean schema
    # there raised AttributeError at every answer (the quick yes hid it, before)
    schema = {"properties": {"a": {"$schema": DRAFT3, "properties": {"b": True}}}}
    with pytest.raises(AttributeError):
        jsonschema.Draft202012Validator(schema).is_valid({"a": {}})
    with pytest.raises(ConfigError) as caught:
        JsonSchemaValidator(schema=schema)
    assert caught.value.path == "schema.properties.a.$schema"


@pytest.mark.parametrize("uri", ["https://json-schema.org/draft/2020-12/schema", "urn:x:y"])
async def test_a_subschema_naming_the_same_draft_is_fine(uri: str) -> None:
    schema = {"properties": {"a": {"$schema": uri, "type": "string"}}}
    assert await verdicts(schema, '{"a": 1}') == (False, False)
    assert await verdicts(schema, '{"a": "x"}') == (True, True)


_URIS = [
    DRAFT3,
    "http://json-schema.org/draft-04/schema#",
    "http://json-schema.org/draft-06/schema#",
    "http://json-schema.org/draft-07/schema#",
    "https://json-schema.org/draft/2019-09/schema",
    "https://json-schema.org/draft/2020-12/schema",
    "urn:example:not-a-draft",
]
_TYPES = ["object", "array", "string", "boolean", "null"]
_NAMES = ["a", "b", "\u00e9"]


def _schemas(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    sub = _schemas(depth - 1) if depth else st.just({})
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(_TYPES)
            | st.lists(st.sampled_from(_TYPES), min_size=1, max_size=3, unique=True),
            "required": st.lists(st.sampled_from(_NAMES), min_size=1, max_size=2, unique=True),
            "properties": st.dictionaries(st.sampled_from(_NAMES), sub | st.just(True), max_size=2),
            "additionalProperties": st.booleans(),
            "$schema": st.sampled_from([DRAFT3, DRAFT3, *_URIS]),  # draft 3 differs most
            "$id": st.sampled_from(["http://x/1", "http://x/2"]),
        },
    )


_values = st.just({n: {} for n in _NAMES}) | st.recursive(  # an object of empty objects
    st.none() | st.booleans() | st.sampled_from([0, 1.0, "", "x"]),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from([*_NAMES, "z"]), inner)
    ),
    max_leaves=8,
)


@settings(max_examples=400, deadline=None)
@given(schema=_schemas(2), value=_values)
def test_a_quick_yes_is_the_full_validators_under_any_drafts(
    schema: dict[str, Any], value: Any
) -> None:
    # drafts at the root and in subschemas (as the validator picks them, not one draft)
    try:
        validator = JsonSchemaValidator(schema=schema)
    except ConfigError:
        return
    quick = validator._quick
    if quick is not None and quick(value):
        assert validator._validator.is_valid(value), (schema, value)


@pytest.mark.parametrize("draft", [None, DRAFT3, "http://json-schema.org/draft-04/schema#"])
async def test_a_root_schema_keeps_its_quick_yes(draft: str | None) -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "string"}}}
    if draft is not None:
        schema["$schema"] = draft
    quick = JsonSchemaValidator(schema=schema)._quick
    assert (quick is None) == (draft == DRAFT3)


@pytest.mark.parametrize(
    ("schema", "text"),
    [
        # the quick subset has no numbers: bool vs integer, 1.0 vs integer, NaN
        ({"type": "object", "properties": {"n": {"type": "integer"}}}, '{"n": true}'),
        ({"type": "object", "properties": {"n": {"type": "integer"}}}, '{"n": 1.0}'),
        ({"type": "object", "properties": {"n": {"type": "string"}}}, '{"n": NaN}'),
        ({"type": "object", "properties": {"n": {"type": "boolean"}}}, '{"n": 1}'),
        ({"type": "object", "properties": {"n": {"type": "null"}}}, '{"n": 0}'),
        ({"type": ["string", "null"]}, "[null]"),
        # duplicate keys: both validators see the value the decoder kept (the last)
        ({"properties": {"a": {"type": "string"}}}, '{"a": "x", "a": 1}'),
        ({"properties": {"a": {"type": "string"}}}, '{"a": 1, "a": "x"}'),
        # keywords outside the quick subset, nested
        ({"properties": {"a": {"type": "string", "minLength": 3}}}, '{"a": "x"}'),
        ({"properties": {"a": {"type": "string", "format": "email"}}}, '{"a": "x"}'),
        ({"properties": {"a": {"type": "string", "enum": ["y"]}}}, '{"a": "x"}'),
        ({"properties": {"a": {"type": "string", "const": "y"}}}, '{"a": "x"}'),
        (
            {"$defs": {"s": {"type": "null"}}, "properties": {"a": {"$ref": "#/$defs/s"}}},
            '{"a": "x"}',
        ),
        ({"properties": {"a": {"allOf": [{"type": "null"}]}}}, '{"a": "x"}'),
        ({"patternProperties": {"^a": {"type": "null"}}}, '{"a": "x"}'),
        ({"dependentRequired": {"a": ["b"]}}, '{"a": "x"}'),
        ({"properties": {"a": True}, "unevaluatedProperties": False}, '{"a": 1, "b": 2}'),
        ({"additionalProperties": {"type": "null"}}, '{"a": "x"}'),
        # unicode keys: no normalisation on either side
        ({"required": ["\u00e9"]}, '{"e\u0301": 1}'),
        (
            {"properties": {"\u00e9": {"type": "null"}}, "additionalProperties": False},
            '{"e\\u0301": null}',
        ),
    ],
)
async def test_the_quick_path_never_says_yes_alone(schema: dict[str, Any], text: str) -> None:
    quick, full = await verdicts(schema, text)
    assert quick == full


@pytest.mark.parametrize("draft", ["4", "6", "7", "2019-09", "2020-12", "unknown"])
async def test_every_draft_agrees_on_the_quick_subset(draft: str) -> None:
    uri = {
        "4": "http://json-schema.org/draft-04/schema#",
        "6": "http://json-schema.org/draft-06/schema#",
        "7": "http://json-schema.org/draft-07/schema#",
        "2019-09": "https://json-schema.org/draft/2019-09/schema",
        "2020-12": "https://json-schema.org/draft/2020-12/schema",
        "unknown": "urn:example:not-a-draft",
    }[draft]
    schema = {
        "$schema": uri,
        "type": "object",
        "required": ["a"],
        "properties": {"a": {"type": ["string", "null"]}, "b": {"type": "array"}},
        "additionalProperties": False,
    }
    for text in [
        '{"a": null}',
        '{"a": "x", "b": []}',
        '{"a": 1}',
        '{"b": []}',
        '{"a": "x", "c": 1}',
    ]:
        quick, full = await verdicts(schema, text)
        assert quick == full, text


@pytest.mark.parametrize("bad", [5, [], {"a": 1}, True])
async def test_a_schema_uri_that_is_not_a_string_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError) as caught:
        JsonSchemaValidator(schema={"$schema": bad, "type": "object"})
    assert caught.value.path == "schema.$schema"


async def test_a_clients_schema_uri_that_is_not_a_string_is_a_400(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.script("m", "{}")
    config = {"tiers": [tier("t", provider("a", openai_server.url, "m"))]}
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$schema": 5}}}
    body = {"model": "cascade", "messages": USER, "response_format": fmt}
    async with (
        serving(write_config(tmp_path / "c.toml", config)) as gw,
        aiohttp.ClientSession() as session,
        session.post(f"{gw.base_url}/chat/completions", json=body) as resp,
    ):
        assert resp.status == 400, await resp.text()
        assert "$schema" in await resp.text()


async def test_a_deep_answer_is_a_rejection_not_a_crash() -> None:
    # 16 KiB and under is checked on the loop: an answer nested thousands deep must not
    # raise RecursionError out of the validator, quick path or not
    text = "[" * 8000 + "]" * 8000
    for schema in ({"type": "array"}, {"type": "object"}, {"type": "array", "minItems": 1}):
        quick, full = await verdicts(schema, text)
        assert quick == full


async def test_a_schema_nested_past_the_quick_depth_goes_to_the_full_validator() -> None:
    schema: dict[str, Any] = {"type": "null"}
    for _ in range(20):
        schema = {"type": "object", "properties": {"a": schema}}
    assert quick_check(schema) is None
    text = "null"
    for _ in range(20):
        text = '{"a": ' + text + "}"
    assert await verdicts(schema, text) == (True, True)
    assert await verdicts(schema, text.replace("null", "1")) == (False, False)


# -- (b) the timeout lane ----------------------------------------------------------------


class _Blocking(asyncio.Future[None]):
    """A future whose cancel() holds its thread (in a lane's timer callback) until told."""

    entered = threading.Event()
    release = threading.Event()

    def cancel(self, msg: Any = None) -> bool:
        self.entered.set()
        self.release.wait(5)
        return super().cancel(msg)


def _in_thread(body: Callable[[], Awaitable[str]], out: list[str]) -> threading.Thread:
    def run() -> None:
        out.append(asyncio.run(body()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_lanes_of_two_threads_fire_at_the_same_time() -> None:
    # Each thread runs its own loop and its own Cascade (so its own lanes). A lane's timer
    # that runs while another thread's lane timer is running must still time its call
    # out: the callback's contextvars.Context must not be one object shared by every lane
    # (Context.run refuses a context already entered in another thread, and the lane,
    # its timer lost, would never time out a call again).
    _Blocking.entered.clear()
    _Blocking.release.clear()
    first: list[str] = []
    second: list[str] = []

    async def held() -> str:
        lane = TimeoutLane(0.001)
        deadline = lane.enter()
        try:
            await _Blocking()
        except BaseException as exc:
            try:
                lane.exit(deadline, exc)
            except TimeoutError:
                return "TimeoutError"
            raise
        lane.exit(deadline, None)
        return "returned"

    async def other() -> str:
        await asyncio.to_thread(_Blocking.entered.wait, 5)  # the first lane's timer runs
        outcomes = []
        lane = TimeoutLane(0.001)
        for _ in range(2):  # the call under way then, and one after
            try:
                async with asyncio.timeout(5):  # a bound on failure only
                    deadline = lane.enter()
                    try:
                        await asyncio.sleep(2)
                    except BaseException as exc:
                        lane.exit(deadline, exc)
                        raise
                    lane.exit(deadline, None)
            except TimeoutError as exc:
                # the lane's own TimeoutError comes from the lane's cancellation
                outcomes.append("lane" if exc.__cause__ is not None else "outer bound")
        _Blocking.release.set()
        return ",".join(outcomes)

    a = _in_thread(held, first)
    b = _in_thread(other, second)
    b.join(10)
    _Blocking.release.set()
    a.join(10)
    assert second == ["lane,lane"]
    assert first == ["TimeoutError"]


class Hands:
    """The running loop's clock, moved by hand (as tests/test_timeout_lane.py does)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(asyncio.get_running_loop(), "time", lambda: self.now)

    async def move(self, seconds: float) -> None:
        self.now += seconds
        for _ in range(5):
            await asyncio.sleep(0)


async def _asyncio_guarded(length: float, body: Callable[[], Awaitable[str]]) -> str:
    async with asyncio.timeout(length):
        return await body()


async def _outcome(task: asyncio.Task[str]) -> str:
    try:
        return f"returned {await task}"
    except TimeoutError:
        return "TimeoutError"
    except asyncio.CancelledError:
        return "CancelledError"


async def _uncancel_scenario(hands: Hands, guard: Callable[..., Awaitable[str]]) -> str:
    """Cancelled from outside while queued; the body takes the cancellation back
    (uncancel) and waits on; then its deadline passes."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    async def body() -> str:
        try:
            await asyncio.shield(gate)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            assert task is not None
            task.uncancel()
        await gate
        return "answer"

    task = loop.create_task(guard(body))
    await hands.move(0)
    await hands.move(1)
    task.cancel()
    await hands.move(0)
    await hands.move(20)
    return await _outcome(task)


async def test_an_uncancelled_call_still_times_out_as_asyncio_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hands = Hands(monkeypatch)
    lane = TimeoutLane(10)
    got = await _uncancel_scenario(hands, lambda body: lane_guard(lane)(body))
    want = await _uncancel_scenario(hands, lambda body: _asyncio_guarded(10, body))
    assert got == want == "TimeoutError"
    assert repr(lane) == "<TimeoutLane 10s live=0>"


async def _at_the_deadline(
    hands: Hands, guard: Callable[..., Awaitable[str]], answer_first: bool
) -> str:
    """The answer arrives by a timer due at the very time of the call's deadline, set
    before or after the call starts."""
    loop = asyncio.get_running_loop()
    gate: asyncio.Future[None] = loop.create_future()

    def answer() -> None:
        if not gate.done():
            gate.set_result(None)

    async def body() -> str:
        await gate
        return "answer"

    if answer_first:
        loop.call_at(hands.now + 10, answer)
    task = loop.create_task(guard(body))
    await hands.move(0)
    if not answer_first:
        loop.call_at(hands.now + 10, answer)
    await hands.move(10)
    return await _outcome(task)


@pytest.mark.parametrize("answer_first", [True, False])
async def test_an_answer_at_the_deadline_ends_as_under_asyncio_timeout(
    monkeypatch: pytest.MonkeyPatch, answer_first: bool
) -> None:
    hands = Hands(monkeypatch)
    lane = TimeoutLane(10)
    got = await _at_the_deadline(hands, lambda body: lane_guard(lane)(body), answer_first)
    want = await _at_the_deadline(hands, lambda body: _asyncio_guarded(10, body), answer_first)
    # either way the deadline wins: the task is cancelled before it resumes
    assert got == want == "TimeoutError"
    assert repr(lane) == "<TimeoutLane 10s live=0>"


async def test_a_call_cancelled_while_queued_leaves_the_lane_clean(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hands = Hands(monkeypatch)
    lane = TimeoutLane(10)
    loop = asyncio.get_running_loop()
    gates = [loop.create_future() for _ in range(5)]

    def hang(gate: asyncio.Future[None]) -> Callable[[], Awaitable[str]]:
        async def body() -> str:
            await gate
            return "answer"

        return body

    tasks = [loop.create_task(lane_guard(lane)(hang(g))) for g in gates]
    await hands.move(0)
    tasks[0].cancel()  # the head, from outside
    tasks[2].cancel()  # one in the middle
    await hands.move(0)
    await hands.move(10.5)  # the others' deadline
    assert [await _outcome(t) for t in tasks] == [
        "CancelledError",
        "TimeoutError",
        "CancelledError",
        "TimeoutError",
        "TimeoutError",
    ]
    assert repr(lane) == "<TimeoutLane 10s live=0>"
    assert not lane._queue


async def test_a_closed_cascade_leaves_no_lane_timer(
    openai_server: FakeOpenAIServer,
) -> None:
    # asyncio.timeout's timer goes with its call; the lane's shared timer must not outlive
    # the Cascade either (held by the loop for up to timeout_s, the lane with it)
    cfg = {"tiers": [tier("t", provider("a", openai_server.url, "m", stream=False))]}
    openai_server.script("m", "hello")
    loop = asyncio.get_running_loop()
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
        assert result.text == "hello"
    scheduled = [
        h for h in loop._scheduled  # type: ignore[attr-defined]
        if not h.cancelled() and isinstance(getattr(h._callback, "__self__", None), TimeoutLane)
    ]  # fmt: skip
    assert scheduled == []


async def test_closing_a_lane_keeps_the_deadlines_of_calls_under_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a Cascade on the caller's own session leaves its calls running after aclose(): they
    # still time out
    hands = Hands(monkeypatch)
    lane = TimeoutLane(10)
    loop = asyncio.get_running_loop()
    gates = [loop.create_future(), loop.create_future()]

    async def body() -> str:
        await gates[0]
        return "answer"

    task = loop.create_task(lane_guard(lane)(body))
    await hands.move(0)
    lane.close()
    await hands.move(10.5)
    assert await _outcome(task) == "TimeoutError"
    gates.pop(0)
    task = loop.create_task(lane_guard(lane)(body))  # a lane closed with none under way...
    await hands.move(0)
    gates[0].set_result(None)
    assert await _outcome(task) == "returned answer"
    lane.close()
    assert lane._timer is None  # ...and closed again: nothing left on the loop


# -- (c) breaker permits -----------------------------------------------------------------


def test_each_run_and_call_has_its_own_lists() -> None:
    # the Structs' [] defaults are copied per instance (msgspec), never shared by runs
    from cascade._attempt import InFlight
    from cascade._records import RunState

    one, two = RunState(0.0, None), RunState(0.0, None)
    assert one.attempts is not two.attempts
    assert one.flights is not two.flights
    a, b = InFlight(None, None, 0.0), InFlight(None, None, 0.0)  # type: ignore[arg-type]
    assert a.samples is not b.samples
    assert a != b  # compared by identity: run.flights.remove() takes the one it is given
    assert len({a, b}) == 2


class Interrupt(BaseException):
    """A BaseException that is not a cancellation (as KeyboardInterrupt, SystemExit)."""


def _half_open(c: Cascade, clock: FakeClock) -> None:
    breaker = c.breakers["a"]
    breaker._cb.open()
    clock.advance(31)


def _breaker_cfg(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "tiers": [
            tier(
                "t",
                provider("a", url, "ma", breaker={"fail_max": 2, "reset_timeout_s": 30}, **extra),
                provider("b", url, "mb"),
            )
        ]
    }


def _gate_provider(c: Cascade, gate: asyncio.Future[None], *, stream: bool) -> None:
    """Provider a's call waits on ``gate`` and raises what it is set to (a hostile
    provider: the engine must settle its permit whatever comes out)."""
    target = c._tiers[0].providers[0]
    assert target.name == "a"

    async def whole(*args: Any, **kwargs: Any) -> Any:
        await gate
        raise AssertionError("the gate only ever raises")

    async def chunks(*args: Any, **kwargs: Any) -> Any:
        await gate
        yield  # pragma: no cover

    if stream:
        target.stream = chunks  # type: ignore[method-assign]
    else:
        target.complete_whole = whole  # type: ignore[attr-defined]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("kind", ["cancelled", "interrupt", "bug", "timeout", "503"])
async def test_a_half_open_probe_is_settled_whatever_ends_it(
    openai_server: FakeOpenAIServer, kind: str, stream: bool
) -> None:
    clock = FakeClock()
    openai_server.script("mb", "from b")
    openai_server.script("ma", Reply(status=503) if kind == "503" else Reply(fault="hang"))
    async with Cascade.from_dict(_breaker_cfg(openai_server.url, stream=stream), clock=clock) as c:
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if kind in ("interrupt", "bug"):
            _gate_provider(c, gate, stream=stream)
        _half_open(c, clock)
        breaker = c.breakers["a"]
        task = asyncio.get_running_loop().create_task(c.run(messages=USER))
        for _ in range(500):
            await asyncio.sleep(0.001)
            if breaker._probe_out and (openai_server.request_count or kind in ("interrupt", "bug")):
                break
        assert breaker._probe_out or kind == "503"  # the probe is out (a 503 is quick)
        if kind in ("timeout", "503"):
            while not task.done():  # timeout_s (5 s) passes on the clock
                clock.advance(1)
                await asyncio.sleep(0.001)
            result = await task
            assert result.provider == "b"
            assert breaker.state == "open"  # the probe failed: open again, counted once
            assert breaker.fail_counter == 1
        else:
            expected: type[BaseException]
            if kind == "cancelled":
                task.cancel()
                expected = asyncio.CancelledError
            else:
                error = Interrupt() if kind == "interrupt" else ValueError("bug")
                gate.set_exception(error)
                expected = type(error)
            with pytest.raises(expected):
                await task
            assert breaker.fail_counter == 0  # not the provider's failure
            if kind == "bug":
                assert breaker.state == "closed"  # it answered: a success (as documented)
            else:
                assert breaker.state == "half_open"
        assert not breaker._probe_out  # released, or settled: never stuck out


async def test_calls_timed_out_by_the_lane_settle_breaker_and_limiter_once_per_try(
    openai_server: FakeOpenAIServer,
) -> None:
    # whole-body calls on the loop's clock (no FakeClock: the lane, not ClockLane), each
    # try timed out: one failure per try on the breaker, every lease back, the lane empty
    openai_server.script("ma", Reply(fault="hang"), Reply(fault="hang"))
    openai_server.script("mb", "from b")
    a = provider(
        "a",
        openai_server.url,
        "ma",
        stream=False,
        timeout_s=0.05,
        breaker={"fail_max": 2, "reset_timeout_s": 600},
        limits={"max_concurrency": 1, "requests_per_minute": 600},
        retry={"attempts": 2, "base_s": 0, "max_s": 0, "on_error": {"timeout": "retry"}},
    )
    cfg = {"tiers": [tier("t", a, provider("b", openai_server.url, "mb"))]}
    baseline = asyncio.all_tasks()
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
        assert result.provider == "b"
        assert [x.error_type for x in result.attempts[:2]] == ["ProviderTimeout"] * 2
        breaker = c.breakers["a"]
        assert breaker.state == "open"  # two counted failures, fail_max 2
        assert not breaker._probe_out
        limiter = c._calls.limiters["a"]
        assert limiter.headroom.slots == 1
        lane = c._tiers[0].providers[0].timeouts  # type: ignore[attr-defined]
        assert repr(lane) == "<TimeoutLane 0.05s live=0>"
        assert openai_server.request_count == 3
        # the timed-out calls' connections are not handed out any more
        await eventually(lambda: in_use(c) == 0, "connections of timed-out calls returned")
    # nothing left running (the fake server's handlers of the hung calls end too)
    await eventually(lambda: not other_tasks(baseline), "no task left", extra=lambda: baseline)
    assert lane._timer is None  # closed: the lane's timer went with the Cascade
