"""The json_schema validator's quick yes (validators/_schema_fast.py) never accepts what
the full validator rejects, on any draft it is used for, and leaves every other schema to
the full validator."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade import Completion, RequestOptions
from cascade.validators import ValidationContext
from cascade.validators._schema_fast import quick_check
from cascade.validators.json_schema import JsonSchemaValidator

pytestmark = pytest.mark.anyio

DRAFTS = [
    jsonschema.Draft4Validator,
    jsonschema.Draft6Validator,
    jsonschema.Draft7Validator,
    jsonschema.Draft201909Validator,
    jsonschema.Draft202012Validator,
]
TYPES = ["object", "array", "string", "boolean", "null"]
NAMES = ["a", "b", "answer"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(-2, 2, allow_nan=False)
    | st.sampled_from(["", "x", "a"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from([*NAMES, "z"]), inner, max_size=4)
    ),
    max_leaves=8,
)


def schemas(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    sub = schemas(depth - 1) if depth else st.just({"type": "string"})
    return st.fixed_dictionaries(
        {},
        optional={
            "type": st.sampled_from(TYPES)
            | st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True),
            "required": st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True),
            "properties": st.dictionaries(st.sampled_from(NAMES), sub, max_size=3),
            "additionalProperties": st.booleans(),
            "title": st.just("t"),
        },
    )


@settings(max_examples=400, deadline=None)
@given(schema=schemas(), value=json_values)
def test_a_quick_yes_is_the_full_validators_yes(schema: dict[str, Any], value: Any) -> None:
    check = quick_check(schema)
    assert check is not None  # every schema drawn here is in the quick subset
    if check(value):
        for draft in DRAFTS:
            assert draft(schema).is_valid(value), (draft.__name__, schema, value)


@settings(max_examples=200, deadline=None)
@given(schema=schemas(), value=json_values)
def test_the_quick_check_says_yes_where_it_should(schema: dict[str, Any], value: Any) -> None:
    # Not a proof of completeness (a no only costs the full check), but the quick path must
    # not be dead: on its own subset it agrees with the full validator.
    check = quick_check(schema)
    assert check is not None
    assert check(value) == jsonschema.Draft202012Validator(schema).is_valid(value)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer"},  # int/float edge cases differ between drafts
        {"type": "number"},
        {"type": "object", "properties": {"n": {"minimum": 1}}},
        {"enum": [1, 2]},
        {"type": "string", "format": "email"},
        {"additionalProperties": {"type": "string"}},
        {"type": "object", "unknownKeyword": 1},
        {"type": []},
        {"required": "answer"},
        False,
    ],
)
def test_other_schemas_are_left_to_the_full_validator(schema: Any) -> None:
    assert quick_check(schema) is None


def test_draft3_never_takes_the_quick_path() -> None:
    schema = {"$schema": "http://json-schema.org/draft-03/schema#", "type": "object"}
    assert JsonSchemaValidator(schema=schema)._quick is None
    assert JsonSchemaValidator(schema={"type": "object"})._quick is not None


@pytest.mark.parametrize(
    "text",
    ['{"answer": 42}', '{"other": 1}', "[1]", '```json\n{"answer": "x"}\n```', "no json"],
)
async def test_verdicts_are_the_full_validators(text: str) -> None:
    schema = {"type": "object", "required": ["answer"], "properties": {"answer": True}}
    quick = JsonSchemaValidator(schema=schema)
    full = JsonSchemaValidator(schema=schema)
    full._quick = None
    completion = Completion(text=text, provider="p", model="m")
    ctx = ValidationContext(messages=(), options=RequestOptions(), tier=1, tier_name="t")
    assert await quick.validate(completion, ctx) == await full.validate(completion, ctx)
