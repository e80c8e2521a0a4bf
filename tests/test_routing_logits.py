"""The classifier's decision path without a vector (issue #14: a decision clearly under
0.1 ms): ``TextModel.logits`` multiplies the known terms' counts into a precomputed
terms x rows matrix of idf x coefficient, ``class_probabilities`` reads the heads into
plain lists, and ``ClassifierRouter`` decides from them with ``choose``. Its probabilities
equal, within 1e-9 relative, those of the implementation before (the product with the
unit vector ``TextModel.vector`` still gives); its decisions are those ``decide`` makes
from ``predict``. Unicode and hostile texts included; the loader's new bounds refuse
what would overflow or outgrow them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade import ConfigError, Message, RequestOptions
from cascade.routing import RouteRequest, TierInfo
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._modelfile import ClassifierFile, encode_file, load_classifier
from cascade.routing._policy import decide
from cascade.routing._textmodel import OUTCOMES, Features, Head, TextModel, words_of

from .test_routing_featurise import CORPUS, HOSTILE, SHAPES, fitted

TIERS = ["small", "medium", "large"]
PLANS = [(1, 3), (2, 3)]


def heads(width: int, seed: int) -> list[Head]:
    """A head of every shape the loader takes: four outcomes, three, a binary head (one
    row), a binary plan head and a constant one; coefficients as large as a fit's."""
    rng = np.random.default_rng(seed)

    def head(classes: list[str], rows: int) -> Head:
        return Head(
            classes=classes,
            coef=(rng.normal(0, 3, (rows, width))).tolist(),
            intercept=rng.normal(0, 1, rows).tolist(),
        )

    return [
        head(list(OUTCOMES), 4),
        head(["accepted_right", "rejected_right", "rejected_wrong"], 3),
        head(["accepted_right", "rejected_wrong"], 1),
        head(["right", "wrong"], 1),
        Head(classes=["right"], coef=[], intercept=[]),
    ]


def router_file(tmp_path: Path, shape: int, seed: int) -> Path:
    model, _ = fitted(SHAPES[shape])
    file = ClassifierFile(
        tiers=TIERS,
        costs=[0.001, 0.01, 0.1],
        cost_weight=None if seed % 2 else 0.3,
        features=model.features,
        heads=heads(len(model.features.vocabulary), seed),
        plans=PLANS,
    )
    path = tmp_path / f"router-{shape}-{seed}.json"
    path.write_bytes(encode_file(file))
    return path


def predict_before(model: TextModel, text: str) -> list[dict[str, float]]:
    """``TextModel.predict`` as it was before: the coefficient rows' product with the unit
    vector, then each head's softmax (or logistic) in plain floats."""
    idx, w = model.vector(text)
    multi = [h for h in model.heads if len(h.classes) > 1]
    width = len(model.features.vocabulary)
    coef = np.asarray([r for h in multi for r in h.coef], dtype=np.float64).reshape(-1, width)
    intercept = np.asarray([b for h in multi for b in h.intercept], dtype=np.float64)
    zs: list[float] = (coef[:, idx] @ w + intercept).tolist()
    out: list[dict[str, float]] = []
    at = 0
    for head in model.heads:
        if len(head.classes) == 1:
            out.append({head.classes[0]: 1.0})
        elif len(head.coef) == 1:
            p1 = 1.0 / (1.0 + math.exp(-min(500.0, max(-500.0, zs[at]))))
            out.append({head.classes[0]: 1.0 - p1, head.classes[1]: p1})
            at += 1
        else:
            z = zs[at : at + len(head.coef)]
            e = [math.exp(v - max(z)) for v in z]
            out.append({c: v / sum(e) for c, v in zip(head.classes, e, strict=True)})
            at += len(head.coef)
    return out


MODELS = [
    TextModel(model.features, heads(len(model.features.vocabulary), seed))
    for seed, (model, _) in enumerate(fitted(shape) for shape in SHAPES)
]


def check(text: str) -> None:
    for model in MODELS:
        got, want = model.predict(text), predict_before(model, text)
        assert [list(p) for p in got] == [list(p) for p in want]  # classes, in order
        for p, q in zip(got, want, strict=True):
            for c in p:
                assert math.isclose(p[c], q[c], rel_tol=1e-9, abs_tol=1e-300), (c, p, q)


@pytest.mark.parametrize("text", CORPUS[:10] + HOSTILE)
def test_probabilities_are_the_ones_before(text: str) -> None:
    check(text)


def test_the_logits_are_not_the_intercepts_alone() -> None:
    """Not a vacuous comparison: the corpus's texts move every model's logits."""
    for model in MODELS:
        empty = model.logits("")
        assert all(model.logits(text) != empty for text in CORPUS[:10] if len(text) > 40)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    check(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(" ".join(CORPUS[:10]).split()), max_size=80))
def test_texts_of_known_words(words: list[str]) -> None:
    check(" ".join(words))


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=200), st.text(st.characters(max_codepoint=127), max_size=200)))
def test_words_are_the_regex_ones(text: str) -> None:
    """The ASCII cut (no regex) gives the regex's words; other texts take the regex."""
    assert words_of(text) == re.findall(r"\w\w+", text)


def request(text: str) -> RouteRequest:
    tiers = tuple(TierInfo(index=i + 1, name=n, est_cost_usd=0.0) for i, n in enumerate(TIERS))
    return RouteRequest(
        messages=(Message(role="user", content=text),),
        options=RequestOptions(),
        tiers=tiers,
        max_cost_usd=None,
    )


@pytest.fixture(scope="module")
def routers(tmp_path_factory: pytest.TempPathFactory) -> list[ClassifierRouter]:
    folder = tmp_path_factory.mktemp("logits")
    return [
        ClassifierRouter(model=router_file(folder, shape, seed), policy=policy)
        for shape in range(len(SHAPES))
        for seed in (0, 1)
        for policy in ("cascade", "single", "cheapest")
    ]


def decisions(routers: list[ClassifierRouter], text: str) -> None:
    """The fast path's decision is the one ``decide`` makes from ``predict`` (the very
    same floats); its range is the one the probabilities before give."""
    for router in routers:
        got = router.choose(*router.figures(text), request(text))
        probs, right = router.predict(text)
        kw = {"cost_weight": router.cost_weight, "min_pass": router.min_pass, "right": right}
        want = decide(probs, router.file.costs, policy=router.policy, router=router.name, **kw)
        assert got == want
        n = len(TIERS)
        before = predict_before(router.model, text)
        old_right = {
            (s - 1, m - 1): p.get("right", 0.0)
            for (s, m), p in zip(router.file.plans, before[n:], strict=True)
        }
        kw["right"] = old_right
        old = decide(before[:n], router.file.costs, policy=router.policy, router="x", **kw)
        assert (got.start_tier, got.max_tier) == (old.start_tier, old.max_tier)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=200), st.sampled_from(CORPUS[:10] + HOSTILE)))
def test_decisions_are_the_ones_before(routers: list[ClassifierRouter], text: str) -> None:
    decisions(routers, text)


@pytest.mark.anyio
async def test_route_takes_the_fast_path(routers: list[ClassifierRouter]) -> None:
    for router in routers:
        for text in CORPUS[:10]:
            probs, right = router.predict(text)
            kw = {"cost_weight": router.cost_weight, "min_pass": router.min_pass}
            costs = router.file.costs
            want = decide(probs, costs, policy=router.policy, right=right, router=router.name, **kw)
            assert await router.route(request(text)) == want


def test_the_fixtures_decide_differently() -> None:
    """Not vacuous: the models' ranges differ between texts."""
    model = MODELS[0]
    ranges = {max(p, key=p.__getitem__) for text in CORPUS[:10] for p in model.predict(text)[:1]}
    assert len(ranges) > 1


# -- the loader's bounds -------------------------------------------------------------------


def test_a_coefficient_that_could_overflow_is_refused(tmp_path: Path) -> None:
    path = router_file(tmp_path, 0, 0)
    data = path.read_bytes()
    model, _ = fitted(SHAPES[0])
    hs = heads(len(model.features.vocabulary), 0)
    hs[2] = Head(
        classes=hs[2].classes,
        coef=[[1e101, *hs[2].coef[0][1:]]],
        intercept=hs[2].intercept,
    )
    file = ClassifierFile(
        tiers=TIERS, costs=[0.0] * 3, features=model.features, heads=hs, plans=PLANS
    )
    path.write_bytes(encode_file(file))
    with pytest.raises(
        ConfigError, match=r"heads\[2\]: a coefficient of magnitude above 1e\+100"
    ) as got:
        load_classifier(path, at="model")
    assert got.value.path == "model"
    path.write_bytes(data)
    load_classifier(path, at="model")  # the file as written loads


def test_an_idf_that_could_overflow_is_refused(tmp_path: Path) -> None:
    model, _ = fitted(SHAPES[0])
    idf = [1e101, *model.features.idf[1:]]
    features = Features(
        word_ngrams=model.features.word_ngrams,
        vocabulary=model.features.vocabulary,
        idf=idf,
    )
    file = ClassifierFile(
        tiers=TIERS,
        costs=[0.0] * 3,
        features=features,
        heads=heads(len(idf), 0),
        plans=PLANS,
    )
    path = tmp_path / "idf.json"
    path.write_bytes(encode_file(file))
    with pytest.raises(ConfigError, match="an idf value is negative, above 1e\\+100"):
        load_classifier(path, at="model")


def test_the_weights_matrix_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The terms x rows matrix is refused before it is allocated when over the cap (the
    test lowers the cap: a file over the real one is over 64 MiB)."""
    import cascade.routing._textmodel as textmodel

    path = router_file(tmp_path, 0, 0)
    width = len(fitted(SHAPES[0])[0].features.vocabulary)
    rows = 4 + 3 + 1 + 1  # the multi-class heads' rows
    monkeypatch.setattr(textmodel, "MAX_WEIGHTS", width * (rows + 1) - 1)
    with pytest.raises(ConfigError, match="coefficient rows") as got:
        load_classifier(path, at="model")
    assert f"{width} terms x {rows + 1}" in got.value.message
    monkeypatch.setattr(textmodel, "MAX_WEIGHTS", width * (rows + 1))
    load_classifier(path, at="model")
