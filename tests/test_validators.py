"""Validators: json_schema, JSON extraction (property-based), user registration."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cascade
from cascade import Cascade, Completion, ConfigError, Verdict
from cascade.testing import FakeOpenAIServer
from cascade.validators import (
    JsonSchemaValidator,
    ValidationContext,
    extract_json,
    registered_validators,
)

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

SCHEMA = {
    "type": "object",
    "required": ["answer", "items"],
    "properties": {
        "answer": {"type": "number"},
        "items": {"type": "array", "items": {"type": "string"}},
    },
}
CTX = ValidationContext(messages=(), options=cascade.RequestOptions(), tier=1, tier_name="t")


def completion(text: str) -> Completion:
    return Completion(text=text, provider="p", model="m")


@pytest.mark.parametrize(
    ("text", "passed", "reason"),
    [
        ('{"answer": 1, "items": ["a"]}', True, ""),
        ('Here you go:\n```json\n{"answer": 1, "items": []}\n```\nAnything else?', True, ""),
        ('The result is {"answer": 2, "items": ["b"]} as requested.', True, ""),
        ('{"answer": "one", "items": []}', False, "at $.answer: 'one' is not of type 'number'"),
        ('{"answer": 1, "items": [1]}', False, "at $.items[0]: 1 is not of type 'string'"),
        ('{"items": []}', False, "'answer' is a required property"),
        ("I think it is 42.", False, "no JSON value found"),
        ('{"answer": 1, "items": [', False, "no JSON value found"),
    ],
)  # fmt: skip
async def test_json_schema_verdicts(text: str, passed: bool, reason: str) -> None:
    v = JsonSchemaValidator(schema=SCHEMA)
    verdict = await v.validate(completion(text), CTX)
    assert verdict.passed is passed
    assert reason in verdict.reason
    assert verdict.score == (1.0 if passed else 0.0)
    if passed:
        assert verdict.parsed == extract_json(text)


def test_bad_schema_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="invalid JSON Schema"):
        JsonSchemaValidator(schema={"type": 12})
    with pytest.raises(ConfigError, match="expected a JSON Schema object"):
        JsonSchemaValidator(schema=[1])  # type: ignore[arg-type]


def test_schema_draft_is_respected() -> None:
    # Draft 2020-12 by default: prefixItems is understood
    v = JsonSchemaValidator(schema={"type": "array", "prefixItems": [{"type": "integer"}]})
    assert v._validator.is_valid([1, "x"]) and not v._validator.is_valid(["x"])


_json = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**12), max_value=10**12)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)  # fmt: skip
_prose = st.text(alphabet=st.characters(blacklist_characters="{}[]`\"", blacklist_categories=("Cs",)),
                 max_size=30)  # fmt: skip


@given(st.dictionaries(st.text(max_size=6), _json, max_size=4), _prose, _prose,
       st.sampled_from(["raw", "fenced", "inline"]))  # fmt: skip
def test_extract_json_finds_the_object(
    obj: dict[str, Any], before: str, after: str, how: str
) -> None:
    body = json.dumps(obj, indent=None if how == "inline" else 2)
    text = {
        "raw": body,
        "fenced": f"{before}\n```json\n{body}\n```\n{after}",
        "inline": f"{before} {body} {after}",
    }[how]
    assert extract_json(text) == obj


@given(_prose)
def test_extract_json_rejects_prose(text: str) -> None:
    try:
        value = extract_json(text)
    except ValueError:
        return
    # prose made only of a JSON scalar ("12", "true") is a JSON value, not an error
    assert value == json.loads(text.strip())


async def test_user_validator_through_public_registration() -> None:
    calls: list[tuple[str, str]] = []

    @cascade.validator("test_contains", replace=True)
    class Contains:
        def __init__(self, *, word: str) -> None:
            self.name = "contains"
            self.word = word

        async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
            calls.append((completion.text, context.tier_name))
            ok = self.word in completion.text
            return Verdict(validator=self.name, passed=ok, reason="" if ok else f"no {self.word!r}")

    assert "test_contains" in registered_validators()
    async with FakeOpenAIServer() as server:
        server.script("m1", "nothing here")
        server.script("m2", "the magic word")
        cfg = {
            "tiers": [
                tier("a", provider("a", server.url, "m1"), validators=[{"name": "test_contains", "word": "magic"}]),
                tier("b", provider("b", server.url, "m2"), validators=[{"name": "test_contains", "word": "magic"}]),
            ]
        }  # fmt: skip
        async with Cascade.from_dict(cfg) as c:
            result = await c.run(messages=USER)
    assert result.tier == 2
    assert result.attempts[0].verdicts == (
        Verdict(validator="contains", passed=False, score=1.0, reason="no 'magic'"),
    )
    assert calls == [("nothing here", "a"), ("the magic word", "b")]
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict({"tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m1"),
                                          validators=[{"name": "test_contains"}])]})  # fmt: skip
    assert info.value.path == "tiers[0].validators[0].word" and "needs 'word'" in str(info.value)


def test_registration_rules() -> None:
    with pytest.raises(ValueError, match="already registered"):
        cascade.validator("json_schema")(lambda **kw: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError):
        cascade.validator("")

    @cascade.validator("test_not_a_validator", replace=True)
    def factory() -> object:
        return object()

    with pytest.raises(ConfigError, match="async `validate"):
        Cascade.from_dict({"tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m"),
                                          validators=[{"name": "test_not_a_validator"}])]})  # fmt: skip


async def test_all_validators_run_and_all_must_pass() -> None:
    @cascade.validator("test_always", replace=True)
    def always(*, passed: bool) -> Any:
        class V:
            name = f"always-{passed}"

            async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
                return Verdict(validator=self.name, passed=passed, score=1.0 if passed else 0.0)

        return V()

    async with FakeOpenAIServer() as server:
        server.script("m1", '{"answer": 1}')
        server.script("m2", '{"answer": 2}')
        cfg = {
            "tiers": [
                tier("a", provider("a", server.url, "m1"), validators=[
                    {"name": "json_schema", "schema": {"type": "object"}},
                    {"name": "test_always", "passed": False},
                ]),
                tier("b", provider("b", server.url, "m2"), validators=[
                    {"name": "json_schema", "schema": {"type": "object"}},
                    {"name": "test_always", "passed": True},
                ]),
            ]
        }  # fmt: skip
        async with Cascade.from_dict(cfg) as c:
            result = await c.run(messages=USER)
    first = result.attempts[0]
    assert [v.passed for v in first.verdicts] == [True, False] and first.outcome == "rejected"
    assert result.tier == 2 and result.parsed == {"answer": 2}


def test_prose_with_braces_before_the_json() -> None:
    text = 'Using the template {name}, the result is {"answer": 1} as asked.'
    assert extract_json(text) == {"answer": 1}


def test_unresolvable_ref_fails_at_construction() -> None:
    with pytest.raises(ConfigError, match="resolves to nothing"):
        JsonSchemaValidator(schema={"$ref": "#/$defs/missing"})
    ok = JsonSchemaValidator(
        schema={"$defs": {"n": {"type": "number"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}
    )
    assert ok._validator.is_valid({"a": 1}) and not ok._validator.is_valid({"a": "x"})


def test_schema_names_an_older_draft() -> None:
    # Draft 4 reads exclusiveMaximum as a boolean modifier; 2020-12 would reject the schema
    v = JsonSchemaValidator(schema={"$schema": "http://json-schema.org/draft-04/schema#",
                                    "type": "number", "maximum": 5, "exclusiveMaximum": True})  # fmt: skip
    assert v._validator.is_valid(4) and not v._validator.is_valid(5)
