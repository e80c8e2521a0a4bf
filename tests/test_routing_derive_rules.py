"""``examples/mixed/derive_rules.py``: the decision list that wrote ``rules.toml`` from
``train`` (keywords and prompt length -> a range of tiers), and ``rules.toml`` itself a
config whose router builds and routes as its rules say."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import numpy as np
import pytest

from cascade import Message, RequestOptions, load_config
from cascade.routing import RouteRequest, TierInfo, build_router

EXAMPLES = Path(__file__).parent.parent / "examples" / "mixed"


@pytest.fixture(scope="module")
def derive() -> ModuleType:
    spec = importlib.util.spec_from_file_location("derive_rules", EXAMPLES / "derive_rules.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["derive_rules"] = module
    spec.loader.exec_module(module)
    return module


def texts() -> list[str]:
    """Sports questions (the cheap tier answers them), family questions (only the dear
    tier does) and long ones (both fail, the dear tier less often)."""
    out = []
    for i in range(40):
        out.append(f"Is this sentence plausible? Player {i} scored a goal.")
        out.append(f"How is Anna related to Tom in story {i}? Anna is Tom's aunt.")
        out.append(" ".join(["word"] * (100 + i)) + f" question {i}")
    return out


def outcomes(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(right, cost) per text and range; ranges (0,0), (0,1), (1,1)."""
    right = np.zeros((n, 3))
    cost = np.zeros((n, 3))
    for i in range(n):
        kind = i % 3
        if kind == 0:  # sports: the cheap tier accepts, right
            right[i] = (1, 1, 1)
            cost[i] = (0.01, 0.01, 1.0)
        elif kind == 1:  # family: the cheap tier's answer is wrong and accepted
            right[i] = (0, 0, 1)
            cost[i] = (0.01, 0.01, 1.0)
        else:  # long: the cheap tier rejects, the dear one is right half the time
            right[i] = (0, i % 2, i % 2)
            cost[i] = (0.01, 1.01, 1.0)
    return right, cost


def test_conditions_are_whole_words_and_length_deciles(derive: ModuleType) -> None:
    found, match = derive.conditions(texts(), 20)
    assert ("keyword", "plausible") in found
    assert ("keyword", "anna") in found
    assert ("keyword", "story") in found
    assert all(w != "a" for kind, w in found if kind == "keyword")  # two characters at least
    assert any(kind == "max_tokens" for kind, _ in found)
    assert match.shape == (len(found), len(texts()))
    row = match[found.index(("keyword", "plausible"))]
    assert row.tolist() == [i % 3 == 0 for i in range(len(texts()))]


def test_the_list_routes_each_kind_where_it_is_answered(derive: ModuleType) -> None:
    all_texts = texts()
    _, match = derive.conditions(all_texts, 20)
    right, cost = outcomes(len(all_texts))
    rules, default = derive.decision_list(
        match, right - 0.2 * cost, max_rules=4, min_support=10, min_gain=1.0
    )
    picked = derive.route(match, rules, default)
    for i, r in enumerate(picked):
        if i % 3 == 0:
            assert r in (0, 1)  # sports: the cheap tier
        else:  # family, and long (half right at 1.0 beats never right at 0.01)
            assert r == 2
    assert 1 <= len(rules) <= 4


def test_the_cost_weight_is_chosen_within_the_budget(derive: ModuleType) -> None:
    all_texts = texts()
    _, match = derive.conditions(all_texts, 20)
    right, cost = outcomes(len(all_texts))
    kw = {"ref": 1.0, "max_rules": 4, "min_support": 10, "min_gain": 1.0}
    _, _, figures = derive.fit(match, right, cost, budget_share=0.5, **kw)
    assert figures["cv_cost_share"] <= 0.5
    assert figures["cv_accuracy"] > 0.6
    # a tighter budget: a larger weight, a cheaper list
    _, _, tight = derive.fit(match, right, cost, budget_share=0.2, **kw)
    assert tight["cost_weight"] > figures["cost_weight"]
    assert tight["cv_cost_share"] < figures["cv_cost_share"]


def test_rules_toml_is_a_config_whose_router_routes(derive: ModuleType) -> None:
    config = load_config(EXAMPLES / "rules.toml")
    assert [t.name for t in config.tiers] == ["gpt-3.5", "gpt-4", "gpt-4-cot", "gpt-4-nlsl"]
    assert config.router is not None
    assert config.router["kind"] == "rules"
    router = build_router(config.router)
    tiers = tuple(
        TierInfo(index=i + 1, name=t.name, est_cost_usd=0.0) for i, t in enumerate(config.tiers)
    )

    async def route(text: str) -> tuple[int | None, int | None]:
        request = RouteRequest(
            messages=(Message(role="user", content=text),),
            options=RequestOptions(),
            tiers=tiers,
            max_cost_usd=None,
        )
        d = await router.route(request)
        return d.start_tier, d.max_tier

    default = config.router["default"]
    assert anyio.run(route, "word " * 2000) == (default["start_tier"], default["max_tier"])
    for rule in config.router["rules"]:
        if "max_tokens" in rule and len(rule) == 4:  # a length rule alone (and its reason)
            short = "Is it?"
            assert anyio.run(route, short) == (rule["start_tier"], rule["max_tier"])


def test_the_figures_are_the_chosen_weights_when_no_weight_meets_the_budget(
    derive: ModuleType,
) -> None:
    """No weight routes within a budget below every range's cost: the list is fitted at the
    largest weight, and its cross-validated figures must be that weight's out-of-fold
    routing (here: the cheapest range for every text), not range 0's for every text."""
    all_texts = texts()
    _, match = derive.conditions(all_texts, 20)
    n = len(all_texts)
    right = np.ones((n, 3))
    cost = np.tile([1.0, 0.5, 0.1], (n, 1))  # range 0 the dearest, range 2 the cheapest
    kw = {"ref": 1.0, "max_rules": 4, "min_support": 10, "min_gain": 1.0}
    _, default, figures = derive.fit(match, right, cost, budget_share=0.01, **kw)
    assert default == 2
    assert figures["cost_weight"] == derive.LAMBDAS[-1]
    assert figures["cv_cost_share"] == pytest.approx(0.1)
    assert figures["cv_cost_share"] == pytest.approx(figures["train_cost_share"])


def test_a_keyword_condition_holds_where_the_rules_router_matches_it(derive: ModuleType) -> None:
    """The list is fitted on where each keyword matches; the rules router must match it on
    the same texts. Lower-casing then splitting into words is not the router's
    case-insensitive whole-word search: "\u0130stanbul" lower-cases to "i\u0307stanbul",
    whose word is "stanbul", a keyword the router does not find in "\u0130stanbul" (a word
    character before it); the router finds "stop" in "\u017ftop" (long s)."""
    corpus = (
        ["\u0130stanbul is a city"] * 10
        + ["stanbul stop"] * 10
        + ["\u017ftop here"] * 10
        + ["KEY \u212aey points"] * 10
    )
    found, match = derive.conditions(corpus, 5)
    tiers = (TierInfo(index=1, name="a", est_cost_usd=0.0),)
    keywords = [(i, w) for i, (kind, w) in enumerate(found) if kind == "keyword"]
    assert ("keyword", "stanbul") in found
    assert ("keyword", "stop") in found
    for i, word in keywords:
        router = build_router({"kind": "rules", "rules": [{"keywords": [word], "start_tier": 1}]})

        async def matches(text: str, router: Any = router) -> bool:
            request = RouteRequest(
                messages=(Message(role="user", content=text),),
                options=RequestOptions(),
                tiers=tiers,
                max_cost_usd=None,
            )
            return (await router.route(request)).start_tier == 1

        assert match[i].tolist() == [anyio.run(matches, t) for t in corpus], word
