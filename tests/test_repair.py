"""Repair on escalation, over loopback HTTP: a tier with ``repair = true`` receives the
rejected draft and the validators' reasons (the fake server records the request), within
their bounds; only after a rejection; costed as any call."""

from __future__ import annotations

from typing import Any

import pytest

from cascade import Cascade, ConfigError, Escalated, Finished, Verdict
from cascade._config import Config
from cascade._types import Completion
from cascade.engine._repair import CUT_MARK, MAX_DRAFT_CHARS, MAX_REASONS_CHARS
from cascade.testing import FakeOpenAIServer, Reply
from cascade.validators import ValidationContext

from .helpers import JSON_SCHEMA, USER, VIAS, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
DRAFT = '{"answer": "forty-two"}'
PREFIX = "Your previous answer was rejected: "


def chain(url: str, *repairs: bool, **extra: Any) -> dict[str, Any]:
    names = ["small", "medium", "large"]
    tiers = []
    for i, repair in enumerate((False, *repairs)):
        spec = tier(names[i], provider(names[i], url, f"m{i + 1}"), validators=[JSON_SCHEMA])
        tiers.append({**spec, "repair": repair})
    return {"tiers": tiers, **extra}


def sent(server: FakeOpenAIServer, model: str) -> list[list[dict[str, Any]]]:
    return [r.messages for r in server.requests if r.model == model]


@pytest.mark.parametrize("via", VIAS)
async def test_the_next_tier_gets_the_draft_and_the_reasons(
    openai_server: FakeOpenAIServer, via: str
) -> None:
    openai_server.script("m1", DRAFT)
    openai_server.script("m2", ANSWER)
    async with Cascade.from_dict(chain(openai_server.url, True)) as c:
        events: list[Any] = []
        if via == "run":
            result = await c.run(messages=USER)
        else:
            async with c.stream(messages=USER, mode=via) as stream:  # type: ignore[arg-type]
                async for event in stream:
                    events.append(event)
            assert isinstance(events[-1], Finished)
            result = events[-1].result
    assert result.tier_name == "medium" and result.text == ANSWER
    rejected = result.attempts[0]
    reasons = "; ".join(f"{v.validator}: {v.reason}" for v in rejected.verdicts if not v.passed)
    assert reasons.startswith("json_schema: ")
    (messages,) = sent(openai_server, "m2")
    assert messages == [
        *USER,
        {"role": "assistant", "content": DRAFT},
        {"role": "user", "content": f"{PREFIX}{reasons}. Fix it."},
    ]
    assert sent(openai_server, "m1") == [USER]
    # costed as usual: the repaired call's longer prompt is what is paid for
    chars = sum(len(m["content"]) for m in messages)
    assert result.attempts[1].input_tokens == chars // 4 > result.attempts[0].input_tokens
    assert result.cost_usd == pytest.approx(sum(a.cost_usd for a in result.attempts))
    if events:
        (up,) = [e for e in events if isinstance(e, Escalated)]
        assert up.repair and up.reason == "rejected"


async def test_without_the_option_the_next_tier_starts_over(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", DRAFT)
    openai_server.script("m2", ANSWER)
    async with Cascade.from_dict(chain(openai_server.url, False)) as c:
        await c.run(messages=USER)
    assert sent(openai_server, "m2") == [USER]


async def test_a_failed_tier_leaves_nothing_to_repair(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(status=500))
    openai_server.script("m2", ANSWER)
    cfg = chain(openai_server.url, True)
    cfg["tiers"][0]["providers"][0]["retry"] = {"attempts": 1}
    async with Cascade.from_dict(cfg) as c:
        events = []
        async with c.stream(messages=USER) as stream:
            async for event in stream:
                events.append(event)
    assert sent(openai_server, "m2") == [USER]
    (up,) = [e for e in events if isinstance(e, Escalated)]
    assert up.reason == "failed" and not up.repair


async def test_each_tier_repairs_the_draft_of_the_tier_just_left(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m1", DRAFT)
    openai_server.script("m2", "still not JSON")
    openai_server.script("m3", ANSWER)
    async with Cascade.from_dict(chain(openai_server.url, True, True)) as c:
        result = await c.run(messages=USER)
    assert result.tier_name == "large"
    (messages,) = sent(openai_server, "m3")
    assert messages[:-1] == [*USER, {"role": "assistant", "content": "still not JSON"}]
    assert messages[-1]["content"].startswith(PREFIX)
    assert DRAFT not in str(messages)  # never a chain of every draft


class Picky:
    """Rejects answers that do not start with ``{``, with a very long reason."""

    name = "picky"

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        if completion.text.startswith("{"):
            return Verdict(validator=self.name, passed=True)
        return Verdict(validator=self.name, passed=False, reason="because " + "r" * 20_000)


async def test_the_draft_and_the_reasons_are_bounded(openai_server: FakeOpenAIServer) -> None:
    long_draft = "x" * 50_000
    openai_server.script("m1", long_draft)
    openai_server.script("m2", ANSWER)
    cfg = chain(openai_server.url, True)
    for t in cfg["tiers"]:
        t["validators"] = []
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER, validators=[Picky()])
    assert result.tier_name == "medium"
    (messages,) = sent(openai_server, "m2")
    draft, fix = messages[-2]["content"], messages[-1]["content"]
    assert len(draft) == MAX_DRAFT_CHARS and draft.endswith(CUT_MARK)
    assert draft.startswith("x" * (MAX_DRAFT_CHARS - len(CUT_MARK)))
    assert fix.startswith(PREFIX + "picky: because rrr") and fix.endswith(". Fix it.")
    reasons = fix[len(PREFIX) : -len(". Fix it.")]
    assert len(reasons) == MAX_REASONS_CHARS and reasons.endswith(CUT_MARK)


def test_repair_on_the_first_tier_is_a_config_error() -> None:
    cfg = chain("http://127.0.0.1:1", True)
    cfg["tiers"][0]["repair"] = True
    with pytest.raises(ConfigError) as info:
        Config.from_dict(cfg)
    assert info.value.path == "tiers[0].repair"


async def test_replay_cannot_measure_repair(tmp_path: Any) -> None:
    """The replay provider serves answers recorded to the original question (its key is
    the last user message): a repaired request matches no record and fails, visibly,
    rather than yielding made-up figures."""
    import json

    record = {
        "question": USER[0]["content"],
        "responses": {
            "small": [{"variant": "A", "text": DRAFT}],
            "big": [{"variant": "A", "text": ANSWER}],
        },
    }
    dataset = tmp_path / "d.jsonl"
    dataset.write_text(json.dumps(record) + "\n")

    def replay(name: str) -> dict[str, Any]:
        return {"name": name, "kind": "replay", "model": name, "dataset": str(dataset)}

    cfg = {
        "tiers": [
            tier("small", replay("small"), validators=[JSON_SCHEMA]),
            {**tier("big", replay("big"), validators=[JSON_SCHEMA]), "repair": True},
        ]
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    assert not result.validated and result.text == DRAFT  # on_exhausted = "best"
    failed = result.attempts[1]
    assert (failed.tier_name, failed.outcome, failed.error_type) == (
        "big",
        "failed",
        "ProviderStatusError",
    )
    assert failed.error is not None and "no recorded question matches" in failed.error
    assert PREFIX.strip() in failed.error
    cfg["tiers"][1]["repair"] = False
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)  # without repair, the recorded answer
    assert result.validated and result.text == ANSWER


async def test_the_escalation_span_event_says_repair(openai_server: FakeOpenAIServer) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from cascade._telemetry import _semconv as sc

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    openai_server.script("m1", DRAFT)
    openai_server.script("m2", "still not JSON")
    openai_server.script("m3", ANSWER)
    cfg = chain(openai_server.url, True, False)
    async with Cascade.from_dict(cfg, environ={}, tracer_provider=tracer_provider) as c:
        await c.run(messages=USER)
    tracer_provider.shutdown()
    (run,) = [s for s in exporter.get_finished_spans() if s.name == "cascade.run"]
    ups = [dict(e.attributes or {}) for e in run.events if e.name == sc.EVENT_ESCALATION]
    assert [u.get(sc.CASCADE_ESCALATION_REPAIR) for u in ups] == [True, None]
