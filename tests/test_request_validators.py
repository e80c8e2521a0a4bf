"""``Cascade.run(validators=...)`` / ``stream(validators=...)``: a request's own validators,
checked on every tier after the tier's own (the gateway's ``response_format`` schema)."""

from __future__ import annotations

import pytest

from cascade import Cascade, CascadeExhausted, Delta, Finished
from cascade.testing import FakeOpenAIServer, Reply
from cascade.validators import JsonSchemaValidator

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

INTEGER = JsonSchemaValidator(
    schema={
        "type": "object",
        "required": ["answer"],
        "properties": {"answer": {"type": "integer"}},
    },
    name="request_schema",
)


def two_tiers(url: str, validators: list[dict[str, object]] | None = None) -> dict[str, object]:
    return {
        "tiers": [
            tier("small", provider("a", url, "m1"), validators=validators),
            tier("big", provider("b", url, "m2"), validators=validators),
        ],
        "on_exhausted": "error",
    }


async def test_a_tier_without_validators_answers_to_the_requests(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", Reply(text='{"answer": 4.5}'), Reply(text='{"answer": 4.5}'))
    openai_server.script("m2", Reply(text='{"answer": 42}'), Reply(text='{"answer": 42}'))
    async with Cascade.from_dict(two_tiers(openai_server.url)) as c:
        result = await c.run(messages=USER, validators=[INTEGER])
        assert (result.tier, result.parsed) == (2, {"answer": 42})
        verdict = result.attempts[0].verdicts[-1]
        assert (verdict.validator, verdict.passed) == ("request_schema", False)
        plain = await c.run(messages=USER)  # the next request brings none: tier 1 answers
        assert plain.tier == 1
        async with c.stream(messages=USER, validators=[INTEGER]) as events:
            seen = [e async for e in events]
    text = "".join(e.text for e in seen if isinstance(e, Delta))
    assert text == '{"answer": 42}'
    assert isinstance(seen[-1], Finished)


async def test_the_requests_validators_must_pass_even_in_scored_mode(
    openai_server: FakeOpenAIServer,
) -> None:
    # the tier's own check passes any object; the request's wants an integer answer
    own = {"name": "json_schema", "schema": {"type": "object"}}
    config = two_tiers(openai_server.url, validators=[own])
    for t in config["tiers"]:  # type: ignore[attr-defined]
        t.update(mode="scored", threshold=0.1)
    openai_server.default = Reply(text='{"answer": "no"}')
    async with Cascade.from_dict(config) as c:
        with pytest.raises(CascadeExhausted) as caught:
            await c.run(messages=USER, validators=[INTEGER])
    assert [a.outcome for a in caught.value.attempts] == ["rejected", "rejected"]
    assert [v.validator for v in caught.value.attempts[0].verdicts] == [
        "json_schema",
        "request_schema",
    ]
