"""A second review's attacks on the hostile-client fixes and the budget's reservation ids:
each test is an attack that should fail to hurt the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cascade import ConfigError
from cascade.gateway import GatewayDenied, hash_key
from cascade.resilience.shared import SharedState
from cascade.testing import FakeClock, FakeOpenAIServer
from cascade.validators import JsonSchemaValidator

from . import test_shared_redis as _redis
from .gateway import serving, write_config
from .test_gateway_attack4 import HI, answer_of, head, one_tier, status_line
from .test_gateway_attack4 import KEY as A4_KEY
from .test_gateway_keys_redis import KEY as GW_KEY
from .test_gateway_keys_redis import replica
from .test_shared_redis import RedisServer, _prefix

# the fixtures that start (or find) a redis-server
redis_bin = _redis.redis_bin
redis_server = _redis.redis_server

ROOT = Path(__file__).resolve().parents[1]
PROBES: list[Any] = [None, True, 0, "", [], {}]


# -- a schema's pattern, met by the build's probes -------------------------------------


def in_a_child(code: str, stalled: str) -> str:
    """What ``code`` prints, run in a child interpreter (a held GIL cannot be interrupted
    in-process): a test failure saying ``stalled`` if it runs over 30 s."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired:
        pytest.fail(stalled)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_schema_pattern_is_not_run_by_the_probes_that_build_it() -> None:
    """The probes that look for references fanning out checked ``""`` against the
    schema's ``pattern`` with Python's ``re``, which holds the GIL: a 100-byte pattern
    exponential on the empty string (``(|)(|)...(?=a)``) froze the whole gateway (its
    event loop included, though the build runs on a thread) for minutes, from one
    request. Run in a child (a GIL held for hours cannot be interrupted in-process)."""
    code = textwrap.dedent(
        """
        from cascade.validators import JsonSchemaValidator
        pattern = "(|)" * 60 + "(?=a)"  # 2 ** 60 steps on "" in re
        schema = {"$defs": {"p": {"type": "string", "pattern": pattern}}, "$ref": "#/$defs/p"}
        v = JsonSchemaValidator(schema=schema)
        print("built")
        """
    )
    out = in_a_child(code, "building the schema's validator ran the pattern for over 30 s")
    assert out == "built"


D3 = "http://json-schema.org/draft-03/schema#"
EVIL = "^(a+)+$"  # exponential on "aaa...a!" in re


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"$schema": D3, "extends": {"type": "string", "pattern": EVIL}}, id="extends"),
        pytest.param({"$schema": D3, "type": [{"type": "string", "pattern": EVIL}]}, id="type"),
        pytest.param({"$schema": D3, "disallow": [{"type": "string", "pattern": "^(a+)+b$"}]},
                     id="disallow"),
    ],
)  # fmt: skip
def test_a_draft3_pattern_meets_an_answer_off_the_event_loop(schema: dict[str, Any]) -> None:
    """A draft 3 schema holds subschemas where later drafts do not (``extends``, ``type``,
    ``disallow``): a ``pattern`` there was not seen, and every answer was checked on the
    event loop with Python's re, which holds the GIL: an answer of 40 "a" and a "!"
    froze the gateway for hours (a prompt asks the model to write it). Run in a child:
    a GIL held for hours cannot be interrupted in-process."""
    code = textwrap.dedent(
        f"""
        import asyncio, json
        import cascade
        from cascade import Completion
        from cascade.validators import JsonSchemaValidator, ValidationContext
        ctx = ValidationContext(
            messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t"
        )
        v = JsonSchemaValidator(schema=json.loads({json.dumps(json.dumps(schema))}),
                                time_limit_s=1.0)
        answer = Completion(text=json.dumps("a" * 40 + "!"), provider="p", model="m")
        verdict = asyncio.run(v.validate(answer, ctx))
        print("passed" if verdict.passed else "rejected")
        """
    )
    out = in_a_child(code, "the answer was checked against the pattern on the event loop for 30 s")
    assert out in ("passed", "rejected")


def wide(n: int) -> dict[str, Any]:
    """Definitions ``30 x 30`` references deep over one that lists ``n`` empty subschemas:
    each of the probes' keyword checks is cheap to count, the last one is ``n`` checks."""
    return {
        "$defs": {
            "leaf": {"allOf": [{}] * n},
            "mid": {"allOf": [{"$ref": "#/$defs/leaf"}] * 30},
        },
        "allOf": [{"$ref": "#/$defs/mid"}] * 30,
    }


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(wide(1000), id="allOf-of-empty"),
        pytest.param(
            {**wide(1), "$defs": {**wide(1)["$defs"], "leaf": {"enum": [[0]] * 3000 + PROBES}}},
            id="long-enum",
        ),
    ],
)
def test_a_schema_whose_probes_pay_for_long_lists_is_refused_when_built(
    schema: dict[str, Any],
) -> None:
    """The probes counted keyword checks, whatever each one costs: a check over a list
    (``allOf`` of a thousand ``{}``, an ``enum`` of thousands of values) is that many
    checks. A 9 KB schema so held a validation thread ~95 s (one of two on two cores: the
    gateway's other schemas then wait into 503, its big answers into overrun), while
    counting under the 20,000 steps the probes may take."""
    with pytest.raises(ConfigError, match="fan out"):
        JsonSchemaValidator(schema=schema)


# -- budget reservations with ids in Redis -----------------------------------------------


async def _calls(state: SharedState, command: str) -> int:
    stats = await state.run(lambda client: client.info("commandstats"))
    assert stats is not None
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


@pytest.mark.anyio
async def test_a_refused_reservation_reads_every_hold_only_when_one_may_be_over(
    redis_server: RedisServer,
) -> None:
    """A reserve that Redis refuses dropped the holds past their time first, reading the
    whole day's record (HGETALL and a Lua loop: 55 ms of Redis for 20,000 requests in
    flight) at every refusal, though no hold could be past for an hour: a key held by its
    requests in flight on one replica made each of its requests on another replica block
    Redis for every key and breaker. The record now says when the first hold may end."""
    prefix = _prefix()
    a, b = (SharedState(redis_url=redis_server.url, key_prefix=prefix, timeout_s=2.0) for _ in "ab")
    async with a, b:
        clock = FakeClock()
        one, two = replica(a, clock, usd_per_day=0.5), replica(b, clock, usd_per_day=0.5)
        held = []
        for _ in range(60):  # 50 holds of 0.01 take the whole 0.5
            try:
                held.append(await one.admit(GW_KEY, estimated_tokens=1, estimated_cost_usd=0.01))
            except GatewayDenied:
                break
        assert len(held) >= 50
        before = await _calls(b, "hgetall")
        for _ in range(20):  # two holds nothing itself: each goes to Redis, refused there
            with pytest.raises(GatewayDenied) as info:
                await two.admit(GW_KEY, estimated_tokens=1, estimated_cost_usd=0.01)
            assert info.value.code == "insufficient_quota"
        assert await _calls(b, "hgetall") == before
        for admission in held:  # released: room again
            await one.settle(admission, tokens=1, cost_usd=0.0)
        await a.flush()
        await two.admit(GW_KEY, estimated_tokens=1, estimated_cost_usd=0.01)


@pytest.mark.anyio
async def test_a_request_cancelled_while_its_reserve_is_on_its_way_holds_nothing(
    redis_server: RedisServer,
) -> None:
    """A client leaving while its reservation is on its way to Redis (slow, or just the
    round trip) left it held there for an hour (HOLD_S): the reservation has an id, and
    its release goes out as a lost reply's does."""
    prefix = _prefix()
    a, b = (SharedState(redis_url=redis_server.url, key_prefix=prefix, timeout_s=5.0) for _ in "ab")
    async with a, b:
        clock = FakeClock()
        one, two = replica(a, clock, usd_per_day=1.0), replica(b, clock, usd_per_day=1.0)
        await one.settle(await one.admit(GW_KEY, estimated_tokens=1), tokens=1, cost_usd=0.0)
        await a.flush()  # a connection to Redis, idle: the reserve is written at once
        redis_server.pause()  # the reserve waits in the socket; it runs once Redis resumes
        try:
            leaving = asyncio.ensure_future(
                one.admit(GW_KEY, estimated_tokens=1, estimated_cost_usd=1.5)
            )
            await asyncio.sleep(0.2)
            assert not leaving.done()
            leaving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leaving
        finally:
            redis_server.resume()
        await asyncio.wait_for(a.flush(), 10)
        # nothing held: room for a request of 0.5 on the other replica
        await two.admit(GW_KEY, estimated_tokens=1, estimated_cost_usd=0.5)


# -- Expect: 100-continue answered with a final status -----------------------------------


@pytest.mark.anyio
async def test_a_request_refused_before_its_100_continue_does_not_take_the_next_request_as_its_body(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A client that sent ``Expect: 100-continue`` and got a final answer instead of the
    100 does not send its body (curl, RFC 9110 10.1.1): the gateway kept the connection
    and waited for that body, so the next request on it was read as the last one's body
    (no answer, or another request's bytes taken as this one's). Such a connection now
    closes after the answer, as when a body is left unread for any reason the client
    cannot see."""
    entry = {"name": "k", "sha256": hash_key(A4_KEY)}
    config = one_tier(openai_server.url, keys={"entries": [entry]})
    payload = json.dumps({"model": "cascade", "messages": HI}).encode()
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(head("/v1/chat/completions", len(payload), "Expect: 100-continue"))
            await writer.drain()
            first = await status_line(reader)
            fields = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(fields.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await asyncio.wait_for(reader.readexactly(length), 10)
            # the body is not sent (no 100 came); the client's next request, on this one
            auth = f"Authorization: Bearer {A4_KEY}"
            writer.write(head("/v1/chat/completions", len(payload), auth) + payload)
            await writer.drain()
            try:
                second = (await answer_of(reader))[0]
            except (asyncio.IncompleteReadError, ConnectionError):
                second = None  # closed after the first answer: the client sends it anew
            except TimeoutError:
                second = -1  # read as the first request's body: no answer comes
        finally:
            writer.close()
    assert first == 401
    assert b"connection: close" in fields.lower()  # the client is told
    assert second is None


@pytest.mark.anyio
async def test_a_request_whose_body_followed_its_100_continue_keeps_its_connection(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    openai_server.default = "ok"
    async with serving(write_config(tmp_path / "c.toml", one_tier(openai_server.url))) as gw:
        payload = json.dumps({"model": "cascade", "messages": HI, "max_tokens": 8}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(head("/v1/chat/completions", len(payload), "Expect: 100-continue"))
            assert await status_line(reader) == 100
            assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 10) == b"\r\n"
            writer.write(payload)
            first, _ = await answer_of(reader)
            writer.write(head("/v1/chat/completions", len(payload)) + payload)
            second, _ = await answer_of(reader)
        finally:
            writer.close()
    assert (first, second) == (200, 200)


@pytest.mark.anyio
async def test_a_refused_schema_sent_again_costs_no_second_build(
    tmp_path: Path, openai_server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A schema refused when built (here: its probes would fan out) costs a thread up to
    a second of work; a client resending it gets the same 400 from the cache."""
    from cascade import InputError
    from cascade.gateway import _gateway

    builds: list[int] = []
    build = _gateway._build_schema_validator

    def counting(schema: dict[str, Any]) -> Any:
        builds.append(1)
        return build(schema)

    monkeypatch.setattr(_gateway, "_build_schema_validator", counting)
    async with serving(write_config(tmp_path / "c.toml", one_tier(openai_server.url))) as gw:
        for _ in range(3):
            with pytest.raises(InputError, match="fan out") as caught:
                await gw.gateway.schema_validator(wide(1000))
            assert caught.value.path == "response_format.json_schema.schema"
    assert len(builds) == 1
