"""A hostile review of the validators' hardening: a recursive schema checked under its time
limit, answer parsing bounded in the work it does and in the time its caller waits, a fair
queue for the schema workers, and config that used to escape as tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

import cascade
from cascade import Completion, ConfigError, Verdict
from cascade.validators import (
    ConfidenceValidator,
    JsonSchemaValidator,
    SelfConsistencyValidator,
    ValidationContext,
    _json_extract,
    extract_json,
    validator,
)
from cascade.validators._offload import Overrun, off_loop
from cascade.validators._registry import build_validator
from cascade.validators._schema_pool import _SIZE

pytestmark = pytest.mark.anyio

CTX = ValidationContext(messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t")
SRC = Path(cascade.__file__).resolve().parents[1]


def completion(text: str) -> Completion:
    return Completion(text=text, provider="p", model="m")


class _Ticker:
    """Counts turns of the event loop a task gets: a frozen loop gives it none."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await anyio.sleep(0)
            self.ticks += 1


# -- H2: a recursive schema is exponential in a small answer's nesting -----------------------


def _node(kind: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"const": kind},
            "children": {"type": "array", "items": {"$ref": "#"}},
        },
    }


TREE = {"oneOf": [_node("leaf"), _node("branch")]}


def _tree(depth: int, leaf: str) -> str:
    answer: dict[str, Any] = {"kind": leaf}
    for _ in range(depth):
        answer = {"kind": "branch", "children": [answer]}
    return json.dumps(answer)


@pytest.mark.timeout(30)
async def test_a_recursive_schema_is_checked_off_the_loop_under_its_limit() -> None:
    v = JsonSchemaValidator(schema=TREE, time_limit_s=0.5)
    hostile = _tree(20, leaf="x")  # ~700 characters; every level doubles the work (minutes)
    assert len(hostile) < 1024
    ticker = _Ticker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        verdict = await v.validate(completion(hostile), CTX)
        tg.cancel_scope.cancel()
    assert not verdict.passed
    assert "overran its time limit of 0.5s" in verdict.reason
    assert ticker.ticks > 100  # the loop kept turning meanwhile
    good = await v.validate(completion(_tree(3, leaf="leaf")), CTX)
    assert good.passed
    assert good.parsed["kind"] == "branch"


def test_plain_schemas_stay_on_the_loop() -> None:
    plain = JsonSchemaValidator(schema={"type": "object", "required": ["a"]})
    assert not plain._offloaded('{"a": 1}')
    # "pattern" as a property's *name*, and "$ref" inside a const, are data: not offloaded
    named = {"type": "object", "properties": {"pattern": {"const": {"$ref": "x"}}}}
    assert not JsonSchemaValidator(schema=named)._offloaded('{"pattern": 1}')
    assert JsonSchemaValidator(schema=TREE)._offloaded("{}")


# -- M1/M2: finding the JSON in an answer reads it a bounded number of times ------------------


def test_extract_json_reads_a_hostile_answer_at_most_a_few_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read = 0
    decode, raw_decode = _json_extract._decode, _json_extract._raw_decode

    def counted_decode(text: str) -> Any:
        nonlocal read
        read += len(text)
        return decode(text)

    def counted_raw_decode(text: str, start: int = 0) -> Any:
        nonlocal read
        read += len(text) - start
        return raw_decode(text, start)

    monkeypatch.setattr(_json_extract, "_decode", counted_decode)
    monkeypatch.setattr(_json_extract, "_raw_decode", counted_raw_decode)
    hostile = "[" * 63 + "1," * 50_000 + "[]"  # every opener's scan used to read to the end
    with pytest.raises(ValueError, match="no JSON value"):
        extract_json(hostile)
    assert read <= 3 * len(hostile)
    read = 0
    # prose with braces of its own still finds its JSON
    assert extract_json("use {name} here: " + '{"a": "b"}' + " and {x}") == {"a": "b"}
    assert read <= 3 * 50


def test_a_lone_surrogate_is_text_like_any_other() -> None:
    assert extract_json('{"a": "\ud800x"}') == {"a": "\ud800x"}
    assert extract_json('say {"a": "\ud800x"} now') == {"a": "\ud800x"}
    with pytest.raises(ValueError, match="no JSON value"):
        extract_json("\ud800 no json here")


@pytest.mark.parametrize("pad", [0, 20_000], ids=["inline", "worker"])
async def test_a_lone_surrogate_answer_is_validated(pad: int) -> None:
    text = '{"a": "\ud800x", "pad": "' + "p" * pad + '"}'
    for schema in (
        {"type": "object"},
        {"type": "object", "properties": {"a": {"type": "string", "pattern": "x"}}},
    ):
        verdict = await JsonSchemaValidator(schema=schema).validate(completion(text), CTX)
        assert verdict.passed, verdict.reason
    conf = ConfidenceValidator(min=0.5)
    verdict = await conf.validate(completion('{"confidence": 0.9, "a": "\ud800"}'), CTX)
    assert verdict.passed


@pytest.mark.parametrize("pad", [0, 70_000], ids=["inline", "worker"])
async def test_a_big_answers_json_is_read_the_same_in_the_worker(pad: int) -> None:
    text = '{"confidence": "85%", "a": {"b": [1, 2.5]}, "pad": "' + "p" * pad + '"}'
    conf = await ConfidenceValidator(min=0.8).validate(completion(text), CTX)
    assert conf.passed
    assert conf.reason == "confidence 0.85 (json) >= min 0.8"
    only_json = ConfidenceValidator(min=0.8, field="nope", source="json")
    missing = await only_json.validate(completion(text), CTX)
    assert not missing.passed
    assert missing.reason.startswith("no confidence found")
    for field, expected in (("a.b.1", "2.5"), ("a.b", "[1, 2.5]"), ("a.c", None)):
        vote = SelfConsistencyValidator(samples=1, extractor=f"json:{field}", normalize=False)
        verdict = await vote.validate(completion(text), CTX)
        assert verdict.parsed == expected


# -- M1: off_loop's caller returns at the limit; a thread never holds up the exit -------------


@pytest.mark.timeout(20)
async def test_off_loop_returns_at_the_limit_while_the_work_runs_on() -> None:
    release = threading.Event()
    try:
        with pytest.raises(Overrun, match=r"stuck overran its time limit of 0\.2s"):
            await off_loop(release.wait, 60, what="stuck", limit_s=0.2)
        # one thread is busy with that work: another caller is served all the same
        assert await off_loop(sum, [1, 2], what="sum", limit_s=10) == 3
    finally:
        release.set()


@pytest.mark.timeout(60)
async def test_a_hostile_big_answer_does_not_starve_a_legit_one() -> None:
    v = ConfidenceValidator(min=0.5, time_limit_s=5)
    hostile = "[" * 63 + "1," * 1_000_000 + "[]"  # 64 full scans of 2 MB before
    legit = "Some long answer. " * 6000 + "\nConfidence: 0.95"  # 100 KiB: off the loop too
    verdicts: dict[str, Verdict] = {}

    async def check(name: str, text: str) -> None:
        verdicts[name] = await v.validate(completion(text), CTX)

    async with anyio.create_task_group() as tg:
        tg.start_soon(check, "hostile", hostile)
        await anyio.sleep(0.05)
        tg.start_soon(check, "legit", legit)
    assert verdicts["legit"].passed, verdicts["legit"].reason
    assert not verdicts["hostile"].passed


def test_a_cancelled_parse_does_not_hold_up_the_exit() -> None:
    script = textwrap.dedent(
        """
        import asyncio, time
        from cascade.validators._offload import off_loop

        async def main():
            try:
                async with asyncio.timeout(0.2):  # the run's deadline
                    await off_loop(time.sleep, 120, what="parsing", limit_s=100)
            except TimeoutError:
                print("cancelled", flush=True)

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "cancelled\n"


# -- M5b: the schema workers' queue is fair --------------------------------------------------

PATTERN = {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a|aa)*$"}}}


@pytest.mark.timeout(60)
async def test_a_legit_answer_beside_hostile_ones_in_flight_is_accepted() -> None:
    v = JsonSchemaValidator(schema=PATTERN, time_limit_s=0.5)
    hostile = '{"s": "' + "a" * 60 + '!"}'  # catastrophic backtracking: killed at the limit
    verdicts: dict[int, Verdict] = {}

    async def check(n: int, text: str) -> None:
        verdicts[n] = await v.validate(completion(text), CTX)

    async with anyio.create_task_group() as tg:
        for n in range(_SIZE + 2):  # every worker busy, and more waiting
            tg.start_soon(check, n, hostile)
        await anyio.sleep(0.05)
        tg.start_soon(check, -1, '{"s": "aaaa"}')
    good = verdicts.pop(-1)
    assert good.passed, good.reason
    assert len(verdicts) == _SIZE + 2
    assert not any(b.passed for b in verdicts.values())


@pytest.mark.timeout(60)
def test_a_schema_worker_dies_with_its_engine() -> None:
    script = textwrap.dedent(
        """
        import asyncio, os
        from cascade.validators import _schema_pool
        from cascade.validators._schema_pool import schema_check

        async def main():
            schema = '{"properties": {"s": {"pattern": "^(a|aa)*$"}}}'
            text = '{"s": "' + "a" * 80 + '!"}'  # hours of backtracking
            task = asyncio.create_task(schema_check(schema, text, limit_s=600))
            while not _schema_pool._POOL._busy:
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as f:
                            line = f.read()
                        with open(f"/proc/{pid}/stat") as f:
                            parent = int(f.read().rsplit(")", 1)[1].split()[1])
                    except OSError:
                        continue
                    if b"_schema_worker" in line and parent == os.getpid():
                        print(pid, flush=True)
            os._exit(0)  # the engine dies mid-check

        asyncio.run(main())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    (pid,) = done.stdout.split()
    for _ in range(200):  # up to ~10 s, until the orphan is gone
        if not _alive(int(pid)):
            break
        time.sleep(0.05)
    assert not _alive(int(pid))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and b"_schema_worker" in cmdline


# -- config that used to escape as tracebacks, or to pass build and fail every answer ---------


def _nested(depth: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(depth):
        schema = {"not": schema}
    return schema


@pytest.mark.parametrize("depth", [150, 300, 5000])
def test_a_deep_schema_is_a_config_error(depth: int) -> None:
    with pytest.raises(ConfigError, match="nested too deeply") as info:
        JsonSchemaValidator(schema=_nested(depth))
    assert info.value.path == "schema"


def test_a_deep_schema_in_a_config_names_its_path() -> None:
    cfg = {
        "tiers": [
            {
                "name": "t",
                "providers": [
                    {"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:9", "model": "m"}
                ],
                "validators": [{"name": "json_schema", "schema": _nested(5000)}],
            }
        ]
    }
    with pytest.raises(ConfigError, match="nested too deeply") as info:
        cascade.Cascade.from_dict(cfg)
    assert info.value.path == "tiers[0].validators[0].schema"


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "loop without end"),
        (
            {
                "properties": {"a": {"$id": "https://example.com/sub/", "$ref": "#/$defs/q"}},
                "$defs": {"q": {"type": "string"}},
            },
            "resolves to nothing",
        ),
    ],
    ids=["cycle", "pointer-under-a-sub-id"],
)
def test_a_schema_whose_refs_cannot_work_fails_at_build(schema: Any, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        JsonSchemaValidator(schema=schema)


@pytest.mark.parametrize(
    "schema",
    [
        {
            "$defs": {
                "x": {
                    "$id": "https://example.com/x.json",
                    "$defs": {"y": {"type": "string"}},
                    "$ref": "#/$defs/y",
                }
            },
            "properties": {"a": {"$ref": "https://example.com/x.json"}},
        },
        {"type": "object", "properties": {"a": {"const": {"$ref": "not-a-ref"}}}},
        {"type": "object", "properties": {"a": {"default": {"$ref": "x.json"}, "enum": ["s"]}}},
    ],
    ids=["embedded-resource", "ref-in-const", "ref-in-default"],
)
async def test_valid_schemas_with_refs_build(schema: Any) -> None:
    v = JsonSchemaValidator(schema=schema)
    verdict = await v.validate(completion('{"a": "s"}'), CTX)
    assert verdict.passed == ("const" not in json.dumps(schema)), verdict.reason


@pytest.mark.parametrize("limit", [1e10, 3601.0])
def test_a_huge_time_limit_is_a_config_error(limit: float) -> None:
    with pytest.raises(ConfigError, match="<= 3600") as info:
        JsonSchemaValidator(schema={"type": "object"}, time_limit_s=limit)
    assert info.value.path == "time_limit_s"


def test_a_factory_raising_anything_is_a_config_error() -> None:
    @validator("review_keyerror", replace=True)
    def broken() -> Any:
        return {}["missing"]

    with pytest.raises(ConfigError, match="KeyError: 'missing'") as info:
        build_validator({"name": "review_keyerror"}, path="tiers[0].validators[0]")
    assert info.value.path == "tiers[0].validators[0]"


def test_a_validator_whose_name_is_not_text_is_a_config_error() -> None:
    class Numbered:
        name = 42

        async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
            return Verdict(validator="x", passed=True)

    validator("review_numbered", replace=True)(Numbered)
    with pytest.raises(ConfigError, match=r"Numbered\.name is 42"):
        build_validator({"name": "review_numbered"}, path="tiers[0].validators[0]")
