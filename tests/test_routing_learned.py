"""The ``classifier`` router: fitted with scikit-learn on labelled examples, saved as JSON,
loaded with every shape checked; routing over real loopback HTTP; hostile model files are
ConfigErrors naming the file."""

from __future__ import annotations

import json
import os
import pickle
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from cascade import Cascade, ConfigError, Message, RequestOptions
from cascade.routing import RouteRequest, TierInfo
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._labels import Labelled
from cascade.routing._modelfile import TierLabel, encode_file
from cascade.routing._policy import decide, plans
from cascade.routing._textmodel import MAX_FILE_BYTES, TextModel
from cascade.routing._train import fit_classifier, simulate
from cascade.testing import FakeOpenAIServer

from .helpers import provider, tier

pytest.importorskip("sklearn")

pytestmark = pytest.mark.anyio

TIERS = ["small", "large"]
NAMES = ["Anna", "Tom", "Rosa", "Ivan", "Mei", "Omar", "Lena", "Kofi", "Sara", "Paul"]
SPORTS = ["soccer", "tennis", "hockey", "golf", "rugby", "cricket", "baseball", "boxing"]


def family(i: int) -> str:
    a, b = NAMES[i % 10], NAMES[(i * 3 + 1) % 10]
    return f"{a} took her daughter to the park with her uncle. How is {a} related to {b}? ({i})"


def sports(i: int) -> str:
    return f"Is this sentence plausible? The striker scored in {SPORTS[i % 8]} match {i}."


def label(outcome: str, cost: float) -> TierLabel:
    return TierLabel(outcome=outcome, cost_usd=cost, score=0.5)  # type: ignore[arg-type]


def training() -> list[Labelled]:
    """Family questions: the small tier's answers are wrong (rejected), the large one is
    right. Sports questions: both are right; the large one costs 30 times more."""
    rows = []
    for i in range(60):
        rows.append(
            Labelled(
                text=family(i),
                tiers=(label("rejected_wrong", 0.001), label("accepted_right", 0.03)),
            )
        )
        rows.append(
            Labelled(
                text=sports(i),
                tiers=(label("accepted_right", 0.001), label("accepted_right", 0.03)),
            )
        )
    return rows


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("router") / "router.json"
    path.write_bytes(encode_file(fit_classifier(training(), TIERS)))
    return path


def request(text: str, names: list[str] = TIERS) -> RouteRequest:
    return RouteRequest(
        messages=(Message(role="user", content=text),),
        options=RequestOptions(),
        tiers=tuple(
            TierInfo(index=i + 1, name=n, est_cost_usd=0.001 * 30**i) for i, n in enumerate(names)
        ),
        max_cost_usd=None,
    )


# -- the policy --------------------------------------------------------------------------


def test_simulate_runs_tiers_as_the_engine_does() -> None:
    wrong_rejected = TierLabel(outcome="rejected_wrong", cost_usd=1.0, score=0.9)
    right_rejected = TierLabel(outcome="rejected_right", cost_usd=2.0, score=0.4)
    accepted = TierLabel(outcome="accepted_right", cost_usd=5.0)
    assert simulate((wrong_rejected, accepted), 0, 1) == (True, 6.0)
    assert simulate((wrong_rejected, accepted), 1, 1) == (True, 5.0)
    # all rejected: the best-scored rejected answer is returned (here the wrong one)
    assert simulate((wrong_rejected, right_rejected), 0, 1) == (False, 3.0)


def test_plans_and_decide() -> None:
    probs = [
        {"accepted_right": 0.2, "accepted_wrong": 0.6, "rejected_wrong": 0.2},
        {"accepted_right": 0.9, "rejected_wrong": 0.1},
    ]
    got = {(p.start, p.stop): p for p in plans(probs, [1.0, 30.0])}
    assert got[0, 1].cost == pytest.approx(1.0 + 0.2 * 30.0)
    assert got[0, 1].right == pytest.approx(0.2 + 0.2 * 0.9)
    assert got[1, 1].right == pytest.approx(0.9)
    # accuracy first (weight 0): start at the large tier
    d = decide(probs, [1.0, 30.0], cost_weight=0.0, router="t")
    assert (d.start_tier, d.max_tier) == (2, 2) and d.tier_scores == (0.2, 0.9)
    # cost per right answer: the small tier alone is far cheaper per right answer
    d = decide(probs, [1.0, 30.0], router="t")
    assert (d.start_tier, d.max_tier) == (1, 1)
    # a range predicted as a whole overrides the independence estimate
    d = decide(probs, [1.0, 30.0], cost_weight=0.0, right={(0, 1): 0.99}, router="t")
    assert (d.start_tier, d.max_tier) == (1, 2)
    d = decide(probs, [1.0, 30.0], policy="cheapest", router="t")
    assert (d.start_tier, d.max_tier) == (2, None)


# -- fitted, saved, loaded, routing ------------------------------------------------------


async def test_routes_each_kind_of_question_where_it_is_answered_right(model_file: Path) -> None:
    router = ClassifierRouter(model=model_file)
    assert router.file.cost_weight is not None  # fitted on the training rows
    fam = await router.route(request(family(1000)))
    assert (fam.start_tier, fam.max_tier) == (2, 2), fam.reason
    spo = await router.route(request(sports(1000)))
    assert spo.start_tier == 1, spo.reason
    assert fam.tier_scores[1] > 0.8 > fam.tier_scores[0]
    # a weight on cost stops sports at the small tier, where it is right anyway
    thrifty = ClassifierRouter(model=model_file, cost_weight=5)
    spo = await thrifty.route(request(sports(1000)))
    assert (spo.start_tier, spo.max_tier) == (1, 1), spo.reason
    assert spo.router == "classifier" and len(spo.reason) <= 200
    single = ClassifierRouter(model=model_file, policy="single")
    d = await single.route(request(family(2000)))
    assert d.start_tier == d.max_tier == 2


async def test_a_cascade_of_other_tiers_gets_no_opinion(model_file: Path) -> None:
    d = await ClassifierRouter(model=model_file).route(request(family(1), ["a", "b"]))
    assert d.start_tier is None and d.max_tier is None
    assert "trained for tiers" in d.reason


async def test_a_huge_or_odd_prompt_is_routed_quickly(model_file: Path) -> None:
    router = ClassifierRouter(model=model_file)
    for text in ("x" * 5_000_000, "", "\x00\ud7ff" * 1000, family(3) * 50_000):
        d = await router.route(request(text))
        assert d.start_tier is not None


async def test_the_engine_starts_where_the_router_says(model_file: Path) -> None:
    async with FakeOpenAIServer() as server:
        server.respond("m-small", lambda r: "small says")
        server.respond("m-large", lambda r: "large says")
        config = {
            "tiers": [
                tier("small", provider("small", server.url, "m-small")),
                tier("large", provider("large", server.url, "m-large")),
            ],
            "router": {"kind": "classifier", "model": str(model_file)},
        }
        async with Cascade.from_dict(config) as cascade:
            fam = await cascade.run(messages=[{"role": "user", "content": family(77)}])
            spo = await cascade.run(messages=[{"role": "user", "content": sports(77)}])
        assert (fam.tier_name, fam.text) == ("large", "large says")
        assert (spo.tier_name, spo.text) == ("small", "small says")
        assert [r.model for r in server.requests] == ["m-large", "m-small"]
        assert fam.route is not None and fam.route.router == "classifier"


# -- hostile model files -----------------------------------------------------------------


def build(path: Path | str, **params: Any) -> None:
    config = {
        "tiers": [tier("small", provider("small", "http://127.0.0.1:9/v1", "m"))],
        "router": {"kind": "classifier", "model": str(path), **params},
    }
    Cascade.from_dict(config)


def good(model_file: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(model_file.read_bytes())
    return data


def corrupt_cases(model_file: Path) -> dict[str, bytes]:
    raw = model_file.read_bytes()
    cases: dict[str, bytes] = {
        "truncated": raw[: len(raw) // 2],
        "empty": b"",
        "not json": b"\x80\x04\x95 binary",
        "pickle": pickle.dumps({"format": "cascade-router"}),
        "a list": b"[1, 2, 3]",
    }

    def mutate(name: str, change: Any) -> None:
        data = good(model_file)
        change(data)
        cases[name] = json.dumps(data).encode()

    mutate("other format", lambda d: d.update(format="sklearn"))
    mutate("semantic kind", lambda d: d.update(kind="semantic"))
    mutate("version 3", lambda d: d.update(version=3))
    mutate("short idf", lambda d: d["features"]["idf"].pop())
    mutate("short coef row", lambda d: d["heads"][0]["coef"][0].pop())
    mutate("extra coef row", lambda d: d["heads"][0]["coef"].append(d["heads"][0]["coef"][0]))
    mutate("missing head", lambda d: d["heads"].pop())
    mutate("extra tier", lambda d: d["tiers"].append("x"))
    mutate("bad class", lambda d: d["heads"][0]["classes"].__setitem__(0, "maybe"))
    mutate(
        "repeated term",
        lambda d: d["features"]["vocabulary"].__setitem__(1, d["features"]["vocabulary"][0]),
    )
    mutate("negative idf", lambda d: d["features"]["idf"].__setitem__(0, -1.0))
    mutate("string coef", lambda d: d["heads"][0]["coef"][0].__setitem__(0, "1"))
    mutate("plan out of range", lambda d: d["plans"].__setitem__(0, [2, 9]))
    mutate("unknown field", lambda d: d.update(pickle="x"))
    mutate("ngrams reversed", lambda d: d["features"].update(word_ngrams=[3, 1]))
    mutate("huge max_chars", lambda d: d["features"].update(max_chars=10**12))
    inf = json.dumps(good(model_file)).replace('"intercept": [', '"intercept": [1e999, ', 1)
    cases["infinite intercept"] = inf.encode()
    return cases


@pytest.mark.parametrize(
    "case",
    [
        "truncated", "empty", "not json", "pickle", "a list", "other format", "semantic kind",
        "version 3", "short idf", "short coef row", "extra coef row", "missing head",
        "extra tier", "bad class", "repeated term", "negative idf", "string coef",
        "plan out of range", "unknown field", "ngrams reversed", "huge max_chars",
        "infinite intercept",
    ],
)  # fmt: skip
def test_a_corrupt_model_file_is_a_config_error_naming_it(
    model_file: Path, tmp_path: Path, case: str
) -> None:
    path = tmp_path / f"{case.replace(' ', '_')}.json"
    path.write_bytes(corrupt_cases(model_file)[case])
    with pytest.raises(ConfigError) as info:
        build(path)
    assert info.value.path == "router.model"
    assert str(path) in info.value.message


def test_a_missing_huge_or_special_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    huge = tmp_path / "huge.json"
    with huge.open("wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)  # sparse: nothing is written
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # opening it must not wait for a writer
    for path, why in [
        (tmp_path / "absent.json", "cannot read"),
        (huge, "larger than"),
        (fifo, "not a regular file"),
        (tmp_path, "Is a directory"),
    ]:
        with pytest.raises(ConfigError) as info:
            build(path)
        assert info.value.path == "router.model" and why in info.value.message
        assert str(path) in info.value.message


def test_bad_parameters_name_their_path(model_file: Path) -> None:
    for params, where in [
        ({"policy": "greedy"}, "router.policy"),
        ({"cost_weight": -1}, "router.cost_weight"),
        ({"min_pass": 2}, "router.min_pass"),
        ({"threshold": 0.5}, "router.threshold"),  # a semantic parameter
    ]:
        with pytest.raises(ConfigError) as info:
            build(model_file, **params)
        assert info.value.path == where, params


def test_the_kinds_register_without_numpy_imported() -> None:
    import subprocess

    code = (
        "import sys; import cascade.routing as r; "
        "assert {'classifier', 'semantic'} <= set(r.registered_routers()); "
        "assert 'numpy' not in sys.modules, 'numpy imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_a_prompt_is_featurised_off_the_event_loop_by_the_work_it_takes(
    tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Character n-grams look up a string per character and n-gram size (2..5: four),
    about ten times the work per character of word unigrams and bigrams: a 1,500-character
    prompt is milliseconds of CPU for such a model, which must not run on the event loop;
    the word model featurises the same prompt inline."""
    chars = tmp_path / "chars.json"
    chars.write_bytes(encode_file(fit_classifier(training(), TIERS, char_ngrams=(2, 5))))
    threads: list[int] = []
    counts = TextModel._counts  # what featurises a text, for a decision or a vector

    def spy(self: TextModel, text: str) -> Any:
        threads.append(threading.get_ident())
        return counts(self, text)

    monkeypatch.setattr(TextModel, "_counts", spy)
    prompt = " ".join(family(i) for i in range(20))[:1500]
    await ClassifierRouter(model=chars).route(request(prompt))
    await ClassifierRouter(model=model_file).route(request(prompt))
    await ClassifierRouter(model=chars).route(request(family(1)[:40]))
    assert threads[0] != threading.get_ident()
    assert threads[1] == threading.get_ident()
    assert threads[2] == threading.get_ident()
