"""confidence: JSON field, text, token logprobs; over loopback HTTP through a real Cascade."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cascade
from cascade import Cascade, Completion, ConfigError, RequestOptions, Result
from cascade.testing import FakeOpenAIServer, Reply
from cascade.validators import ConfidenceValidator, parse_confidence

from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

CTX = cascade.ValidationContext(messages=(), options=RequestOptions(), tier=1, tier_name="t")


async def run(
    server: FakeOpenAIServer,
    answer: str | Reply,
    spec: dict[str, Any],
    *,
    stream: bool = False,
    options: RequestOptions | None = None,
) -> Result:
    """One request: tier "small" answers ``answer`` under ``spec``; "large" takes anything."""
    server.reset()
    server.script("small", answer)
    server.script("large", "the large tier's answer")
    cfg = {
        "tiers": [
            tier("small", provider("s", server.url, "small", stream=stream),
                 validators=[{"name": "confidence", **spec}]),
            tier("large", provider("l", server.url, "large")),
        ]
    }  # fmt: skip
    async with Cascade.from_dict(cfg) as cc:
        return await cc.run(messages=USER, options=options)


async def judge(text: str, **spec: Any) -> cascade.Verdict:
    v = ConfidenceValidator(**{"min": 0.5, **spec})
    return await v.validate(Completion(text=text, provider="p", model="m"), CTX)


# -- end to end -------------------------------------------------------------------------------


async def test_json_field_accepts(openai_server: FakeOpenAIServer) -> None:
    result = await run(openai_server, '{"answer": 42, "confidence": 0.9}', {"min": 0.8})
    assert result.tier == 1 and result.validated
    (verdict,) = result.attempts[0].verdicts
    assert verdict.passed and verdict.score == 0.9
    assert verdict.reason == "confidence 0.9 (json) >= min 0.8"


async def test_json_field_below_the_threshold_escalates(openai_server: FakeOpenAIServer) -> None:
    answer = 'Sure:\n```json\n{"answer": 42, "meta": {"conf": "55%"}}\n```'
    result = await run(openai_server, answer, {"min": 0.8, "field": "meta.conf"})
    assert result.tier == 2 and result.attempts[0].outcome == "rejected"
    (verdict,) = result.attempts[0].verdicts
    assert not verdict.passed and verdict.score == pytest.approx(0.55)
    assert verdict.reason == "confidence 0.55 (json) is below min 0.8"


async def test_text_accepts_and_rejects(openai_server: FakeOpenAIServer) -> None:
    spec = {"min": 0.7, "source": "text"}
    accepted = await run(openai_server, "Paris.\n\nConfidence: 82%", spec)
    assert accepted.tier == 1 and accepted.attempts[0].verdicts[0].score == pytest.approx(0.82)
    rejected = await run(openai_server, "Maybe Lyon? (confidence 0.3)", spec)
    assert rejected.tier == 2
    assert rejected.attempts[0].verdicts[0].reason == "confidence 0.3 (text) is below min 0.7"


@pytest.mark.parametrize("stream", [False, True])
async def test_logprobs_end_to_end(openai_server: FakeOpenAIServer, stream: bool) -> None:
    logprobs = (-0.05, -0.2, -0.1, -0.05)
    spec = {"min": 0.8, "source": "logprobs"}
    reply = Reply(text="The capital is Paris.", logprobs=logprobs, chunk_chars=3)
    result = await run(openai_server, reply, spec, stream=stream,
                       options=RequestOptions(logprobs=True))  # fmt: skip
    assert openai_server.requests[0].body["logprobs"] is True
    first = result.attempts[0]
    assert first.completion is not None and first.completion.logprobs == logprobs
    assert result.tier == 1 and result.validated
    # exp(mean logprob): the geometric mean of the token probabilities
    assert first.verdicts[0].score == pytest.approx(math.exp(-0.1))
    assert first.verdicts[0].score == pytest.approx(
        math.prod(math.exp(lp) for lp in logprobs) ** 0.25
    )

    low = Reply(text="Lyon?", logprobs=(-2.0, -1.0))
    result = await run(
        openai_server, low, spec, stream=stream, options=RequestOptions(logprobs=True)
    )
    assert result.tier == 2
    assert result.attempts[0].verdicts[0].reason == "confidence 0.223 (logprobs) is below min 0.8"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("text", ["", "ab"])
async def test_logprobs_survive_odd_shapes(
    openai_server: FakeOpenAIServer, stream: bool, text: str
) -> None:
    # no text at all, or more tokens than characters
    logprobs = (-0.1, -0.2, -0.3)
    reply = Reply(text=text, logprobs=logprobs, chunk_chars=1)
    result = await run(openai_server, reply, {"min": 0.5, "source": "logprobs"}, stream=stream,
                       options=RequestOptions(logprobs=True))  # fmt: skip
    first = result.attempts[0]
    assert first.completion is not None and first.completion.logprobs == logprobs
    assert first.completion.text == text and result.tier == 1


async def test_logprobs_only_when_asked(openai_server: FakeOpenAIServer) -> None:
    reply = Reply(text="Paris", logprobs=(-0.01,))
    result = await run(openai_server, reply, {"min": 0.5, "source": "logprobs"})
    assert "logprobs" not in openai_server.requests[0].body
    first = result.attempts[0]
    assert first.completion is not None and first.completion.logprobs is None
    assert result.tier == 2
    assert first.verdicts[0].reason == "no confidence found (looked in: logprobs)"


async def test_missing_rejects_or_accepts(openai_server: FakeOpenAIServer) -> None:
    rejected = await run(openai_server, "Paris, I think.", {"min": 0.5})
    assert rejected.tier == 2
    (verdict,) = rejected.attempts[0].verdicts
    assert not verdict.passed and verdict.score == 0.0
    assert verdict.reason == (
        "no confidence found (looked in: JSON field 'confidence', text, logprobs)"
    )
    accepted = await run(openai_server, "Paris, I think.", {"min": 0.5, "on_missing": "accept"})
    assert accepted.tier == 1 and accepted.validated
    assert accepted.attempts[0].verdicts[0].score == 0.0
    assert "accepted" in accepted.attempts[0].verdicts[0].reason


# -- where the confidence comes from ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Confidence: 0.82", 0.82),
        ("confidence = 82%", 0.82),
        ("It is Paris (confidence 0.9).", 0.9),
        ("I am 90% confident.", 0.9),
        ("I'm 95 percent sure", 0.95),
        ("**Confidence level:** 8/10", 0.8),
        ("Confidence score: 7 out of 10", 0.7),
        ("My confidence is 60", 0.6),
        ("Confidence: 1", 1.0),
        ("Confidence: 1%", 0.01),
        ("Confidence: 0.2 at first; on reflection, confidence: 0.7", 0.7),  # the last one
        ('{"confidence": 0.4}', 0.4),
        ("Confidence: 250", None),  # no percentage
        ("Confidence: high", None),
        ("I scored 90% on the test", None),
        ("", None),
    ],
)
def test_text_forms(text: str, value: float | None) -> None:
    assert parse_confidence(text) == (pytest.approx(value) if value is not None else None)


@given(v=st.floats(min_value=0, max_value=1), percent=st.booleans(), prose=st.text(max_size=40))
def test_stated_confidence_round_trips(v: float, percent: bool, prose: str) -> None:
    stated = f"{v * 100:.0f}%" if percent else f"{v:.2f}"
    found = parse_confidence(f"{prose}\nConfidence: {stated}")
    assert found is not None
    assert abs(found - v) <= 0.005 + 1e-9  # the rounding of the stated value


@pytest.mark.parametrize(
    ("text", "spec", "score", "source"),
    [
        ('{"confidence": 0.9} Confidence: 0.1', {}, 0.9, "json"),  # auto: json first
        ('{"answer": 1} Confidence: 0.7', {}, 0.7, "text"),  # then text
        ('{"confidence": 0.9} Confidence: 0.6', {"source": "text"}, 0.6, "text"),
        ('{"confidence": 75}', {"source": "json"}, 0.75, "json"),  # a percentage
        ('{"confidence": true}', {"source": "json"}, 0.0, None),
        ('{"confidence": 0.9}', {"source": "json", "field": "p"}, 0.0, None),
        ("[0.9]", {"source": "json"}, 0.0, None),
    ],
)
async def test_sources(text: str, spec: dict[str, Any], score: float, source: str | None) -> None:
    verdict = await judge(text, **spec)
    assert verdict.score == pytest.approx(score)
    if source is None:
        assert verdict.reason.startswith("no confidence found")
    else:
        assert f"({source})" in verdict.reason


async def test_auto_falls_back_to_logprobs() -> None:
    v = ConfidenceValidator(min=0.5)
    c = Completion(text="Paris", provider="p", model="m", logprobs=(-0.5, -0.5))
    verdict = await v.validate(c, CTX)
    assert verdict.passed and verdict.score == pytest.approx(math.exp(-0.5))
    assert "(logprobs)" in verdict.reason
    assert repr(v) == "<ConfidenceValidator 'confidence' min=0.5 source=auto>"


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path", "message"),
    [
        ({"min": 1.5}, "min", "from 0 to 1"),
        ({"min": -0.1}, "min", "from 0 to 1"),
        ({"min": "0.5"}, "min", "from 0 to 1"),
        ({"min": True}, "min", "from 0 to 1"),
        ({"min": 0.5, "source": "vibes"}, "source", "auto, json, text, logprobs"),
        ({"min": 0.5, "field": ""}, "field", "field name"),
        ({"min": 0.5, "on_missing": "maybe"}, "on_missing", "'reject' or 'accept'"),
        ({}, "min", "needs 'min'"),  # required: named by its path
        (
            {"min": 0.5, "threshold": 1},
            "threshold",
            "no parameter 'threshold' (its parameters: min,",
        ),
    ],
)
def test_bad_config_is_a_config_error(spec: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict({"tiers": [tier("a", provider("a", "http://127.0.0.1:9/v1", "m"),
                                          validators=[{"name": "confidence", **spec}])]})  # fmt: skip
    assert info.value.path == "tiers[0].validators[0]" + (f".{path}" if path else "")
    assert message in info.value.message
