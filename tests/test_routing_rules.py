"""The ``rules``, ``cost`` and ``first_of`` routers, called directly (their decisions)
and on hostile input (huge prompts, an exponential pattern: bounded, never a hang)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from structlog.testing import capture_logs

from cascade import Message, RequestOptions, RouteDecision
from cascade.routing import (
    CostRouter,
    FirstOf,
    RouteRequest,
    RulesRouter,
    TierInfo,
    build_router,
)
from cascade.routing import rules as rules_module
from cascade.routing.rules import ON_LOOP_CHARS
from cascade.validators._offload import Overrun

pytestmark = pytest.mark.anyio

TIERS = (
    TierInfo(index=1, name="small", est_cost_usd=0.001),
    TierInfo(index=2, name="medium", est_cost_usd=0.01),
    TierInfo(index=3, name="large", est_cost_usd=0.1),
)


def request(
    text: str,
    *,
    metadata: dict[str, str] | None = None,
    system: str | None = None,
    budget: float | None = None,
) -> RouteRequest:
    msgs = [Message(role="user", content=text)]
    if system is not None:
        msgs.insert(0, Message(role="system", content=system))
    return RouteRequest(
        messages=tuple(msgs),
        options=RequestOptions(metadata=metadata),
        tiers=TIERS,
        max_cost_usd=budget,
    )


RULES: list[dict[str, Any]] = [
    {"metadata": {"task": ["clutrr", "logic"]}, "start_tier": 3, "reason": "needs the big one"},
    {"keywords": ["prove", "C++"], "start_tier": 2},
    {"pattern": r"\bSELECT\b.+\bFROM\b", "start_tier": 2, "max_tier": 2},
    {"min_tokens": 500, "start_tier": 2, "variant": "cot"},
    {"max_tokens": 20, "keywords": ["capital"], "max_tier": 1},
]


@pytest.fixture
def rules() -> RulesRouter:
    return RulesRouter(rules=RULES, default={"start_tier": 1, "reason": "default"})


@pytest.mark.parametrize(
    ("text", "metadata", "expected"),
    [
        ("anything", {"task": "logic"}, (3, None, "needs the big one")),
        ("anything", {"task": "sports"}, (1, None, "default")),
        ("Please PROVE that it holds.", None, (2, None, "rule 2 matched")),
        ("a proven fact", None, (1, None, "default")),  # whole words only
        ("write it in c++ please", None, (2, None, "rule 2 matched")),
        ("select name from users", None, (1, None, "default")),  # the pattern is case-sensitive
        ("SELECT name FROM users", None, (2, 2, "rule 3 matched")),
        ("word " * 600, None, (2, None, "rule 4 matched")),
        ("The capital of France?", None, (None, 1, "rule 5 matched")),
        ("The capital of France? " * 10, None, (1, None, "default")),  # too long for rule 5
    ],
)
async def test_first_matching_rule_wins(
    rules: RulesRouter,
    text: str,
    metadata: dict[str, str] | None,
    expected: tuple[int | None, int | None, str],
) -> None:
    decision = await rules.route(request(text, metadata=metadata))
    assert (decision.start_tier, decision.max_tier, decision.reason) == expected
    assert decision.router == "rules"


async def test_variant_and_scope() -> None:
    router = RulesRouter(rules=RULES)
    decision = await router.route(request("word " * 600))
    assert decision.variant == "cot"
    # keywords look at the last user message unless scope = "all"
    assert (await router.route(request("hello", system="prove it"))).start_tier is None
    everything = RulesRouter(rules=RULES, scope="all")
    assert (await everything.route(request("hello", system="prove it"))).start_tier == 2


async def test_no_default_is_no_opinion() -> None:
    decision = await RulesRouter(rules=RULES).route(request("hello"))
    assert decision == RouteDecision(reason="no rule matched", router="rules")


async def test_only_the_first_max_chars_are_read() -> None:
    router = RulesRouter(rules=[{"keywords": ["needle"], "start_tier": 3}], max_chars=100)
    assert (await router.route(request("x " * 40 + "needle"))).start_tier == 3
    assert (await router.route(request("x " * 60 + "needle"))).start_tier is None


async def test_a_huge_prompt_is_searched_off_the_loop_and_bounded() -> None:
    huge = "lorem ipsum " * 2_000_000 + "SELECT a FROM b"  # 24 MB: past max_chars
    router = RulesRouter(rules=RULES[2:3], max_chars=ON_LOOP_CHARS * 4)
    t0 = time.perf_counter()
    decision = await router.route(request(huge))
    assert decision.start_tier is None  # the pattern is beyond max_chars: not seen
    assert time.perf_counter() - t0 < 5  # a bound against a hang, not a benchmark
    near = "lorem ipsum " * 1000 + "SELECT a FROM b"  # past ON_LOOP_CHARS, within max_chars
    assert (await router.route(request(near))).start_tier == 2


HOSTILE_PATTERN = "(a|a)+b"  # on a run of a's with no b: exponential backtracking


@pytest.mark.parametrize("size", [60, ON_LOOP_CHARS + 10])
async def test_an_exponential_pattern_overruns_and_fails(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    offloaded: list[str] = []
    real = rules_module.off_loop

    async def off_loop(fn: Any, *args: Any, what: str, limit_s: float) -> Any:
        offloaded.append(what)
        return await real(fn, *args, what=what, limit_s=limit_s)

    monkeypatch.setattr(rules_module, "off_loop", off_loop)
    router = RulesRouter(
        rules=[{"pattern": HOSTILE_PATTERN, "start_tier": 3}], regex_time_limit_s=0.05
    )
    # the regex's own timeout, or (a loaded machine: the worker thread slow to start or
    # to finish) the off-loop guard's just past it: either way the pattern overran
    with pytest.raises((TimeoutError, Overrun), match="overran"):
        await router.route(request("a" * size))
    assert offloaded == ([] if size == 60 else ["router 'rules'"])


async def test_an_exponential_pattern_in_a_run_falls_back_to_every_tier(
    openai_server: Any,
) -> None:
    from cascade import Cascade

    from .helpers import provider, tier

    openai_server.script("m1", "fine")
    cfg = {
        "tiers": [tier("t1", provider("a", openai_server.url, "m1"))],
        "router": {
            "kind": "rules",
            "rules": [{"pattern": HOSTILE_PATTERN, "start_tier": 1}],
            "regex_time_limit_s": 0.05,
        },
    }
    async with Cascade.from_dict(cfg) as c:
        with capture_logs() as logs:
            result = await c.run(messages=[{"role": "user", "content": "a" * 60}])
    assert result.text == "fine"
    assert result.route is not None and "overran" in result.route.reason
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["cascade.router_failed"]


# -- cost -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "share", "start"),
    [
        (None, 1.0, None),  # no budget: no opinion
        (1.0, 1.0, 3),
        (0.05, 1.0, 2),
        (0.05, 0.1, 1),
        (0.0001, 1.0, 1),  # nothing fits: the cheapest
    ],
)
async def test_cost_router(budget: float | None, share: float, start: int | None) -> None:
    decision = await CostRouter(share=share).route(request("q", budget=budget))
    assert decision.start_tier == start and decision.max_tier is None
    assert decision.router == "cost"


async def test_cost_router_nothing_fits_picks_the_cheapest_not_the_first() -> None:
    tiers = (
        TierInfo(index=1, name="odd", est_cost_usd=0.5),
        TierInfo(index=2, name="cheap", est_cost_usd=0.2),
    )
    req = RouteRequest(
        messages=(Message(role="user", content="q"),),
        options=RequestOptions(),
        tiers=tiers,
        max_cost_usd=0.1,
    )
    decision = await CostRouter().route(req)
    assert decision.start_tier == 2 and "the cheapest, 'cheap'" in decision.reason


async def test_cost_router_in_a_run(openai_server: Any) -> None:
    from cascade import Cascade

    from .helpers import provider, tier

    openai_server.script("m2", "ok")
    cfg = {
        "tiers": [
            tier("small", provider("a", openai_server.url, "m1")),
            tier("big", provider("b", openai_server.url, "m2")),
        ],
        "router": {"kind": "cost"},
    }
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=[{"role": "user", "content": "q"}], max_cost_usd=1.0)
    assert result.tier == 2 and [r.model for r in openai_server.requests] == ["m2"]


# -- first_of ---------------------------------------------------------------------------


class Boom:
    name = "boom"

    async def route(self, request: RouteRequest) -> RouteDecision:
        raise RuntimeError("down")


async def test_first_of_asks_in_turn() -> None:
    composed = build_router(
        {
            "kind": "first_of",
            "routers": [
                {"kind": "rules", "rules": [{"metadata": {"task": "sql"}, "start_tier": 2}]},
                {"kind": "cost"},
            ],
        }
    )
    first = await composed.route(request("q", metadata={"task": "sql"}, budget=1.0))
    assert (first.start_tier, first.router) == (2, "rules")
    second = await composed.route(request("q", budget=1.0))
    assert (second.start_tier, second.router) == (3, "cost")
    neither = await composed.route(request("q"))
    assert neither.start_tier is None and neither.router == "first_of"
    assert neither.reason == (
        "no router decided (rules: no rule matched; cost: no budget: no opinion)"
    )


async def test_first_of_passes_over_a_failing_router() -> None:
    composed = FirstOf(routers=[Boom(), CostRouter()])
    with capture_logs() as logs:
        decision = await composed.route(request("q", budget=1.0))
    assert (decision.start_tier, decision.router) == (3, "cost")
    (warning,) = logs
    assert warning["router"] == "boom" and "RuntimeError: down" in warning["error"]
    alone = FirstOf(routers=[Boom()])
    with capture_logs():
        decision = await alone.route(request("q"))
    assert decision.start_tier is None and "boom failed: RuntimeError: down" in decision.reason
