"""The classifier's featuriser and policy, made fast (issue #14: a decision under 0.1 ms):
``TextModel.vector`` gives the row scikit-learn's fitted ``TfidfVectorizer`` gives the same
text, and the very vector (terms, order, weights to the bit) of the implementation it
replaced (``analyze`` then ``Counter``); ``plans`` gives the very plans of the one it
replaced; so decisions are unchanged. Unicode and hostile texts included."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cascade.routing._policy import Plan, Policy, decide, pass_chance, plans
from cascade.routing._textmodel import Features, Head, TextModel, analyze

pytest.importorskip("sklearn")

from sklearn.feature_extraction.text import TfidfVectorizer

CORPUS = [
    "Is this sentence plausible? Lionel Messi scored a penalty kick.",
    "How is Anna related to Tom? Anna took her daughter Rosa to the park.",
    "Could a llama birth twice during the War in Vietnam (1945-46)?",
    "A car is driven towards a tower at 45\u00b0 and 60\u00b0. # Answer option: ['A)5', 'B)6']",
    "\u0130stanbul'da \u00e7ok g\u00fczel bir g\u00fcn. \u0130Y\u0130 G\u00dcNLER stra\u00dfe STRASSE",
    "\u4eca\u65e5\u306f\u3044\u3044\u5929\u6c17\u3067\u3059 \u4eca\u65e5\u306f \u4eca\u65e5",
    "caf\u00e9 cafe\u0301 na\u00efve \u0645\u0631\u062d\u0628\u0627 \u0628\u0643\u0645 \u05e9\u05dc\u05d5\u05dd",
    "the the the the the answer is the answer, the answer is 42 42 42",
    "x\u200by zero\u200dwidth \ufeffbom tab\tnew\nline\r\nend \U0001f600\U0001f600 emoji",
    "SELECT name FROM users WHERE id = 1; -- DROP TABLE users",
] * 2  # min_df = 2 keeps every term of the corpus

HOSTILE = [
    "",
    " ",
    "\x00\x00 nul \x00",
    "a",  # no word of two characters
    "\u0130" * 50,  # lower() makes each two characters
    "x" * 5000,  # one word past max_chars
    "ab " * 3000,  # many repeats of one term, past max_chars
    "the answer " * 2000,
    "\ud800 lone \udfff surrogates",
    "\U0001f600" * 100,
    "\u202etxet desrever\u202c the answer",
    "<script>alert('the answer')</script>",
    "%s %d {0} {} \\x00 the",
    "\u00df\u00df \u1e9e STRASSE stra\u00dfe",
    "\u0645\u0631\u062d\u0628\u0627 \u0628\u0643\u0645 " * 50,
]

SHAPES = [
    Features(word_ngrams=(1, 2)),
    Features(word_ngrams=(1, 3), char_ngrams=(2, 4)),
    Features(word_ngrams=(2, 2), char_ngrams=(3, 3), max_chars=40),
]


def fitted(shape: Features) -> tuple[TextModel, Any]:
    """A TextModel with ``shape``'s n-grams, its vocabulary and idf fitted by scikit-learn
    as ``cascade train-router`` fits them, and the vectorizer."""
    vectorizer = TfidfVectorizer(
        analyzer=partial(analyze, features=shape), min_df=2, sublinear_tf=True
    )
    vectorizer.fit(CORPUS)
    vocab = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
    features = Features(
        word_ngrams=shape.word_ngrams,
        char_ngrams=shape.char_ngrams,
        max_chars=shape.max_chars,
        vocabulary=vocab,
        idf=[float(v) for v in vectorizer.idf_],
    )
    return TextModel(features, [Head(classes=["only"], coef=[], intercept=[])]), vectorizer


MODELS = [fitted(shape) for shape in SHAPES]


def before(model: TextModel, text: str) -> tuple[np.ndarray, np.ndarray]:
    """The vector as the implementation before issue #14's speed-up computed it."""
    index = {term: i for i, term in enumerate(model.features.vocabulary)}
    counts = Counter(analyze(text, model.features))
    found = [(index[t], c) for t, c in counts.items() if t in index]
    if not found:
        return np.zeros(0, dtype=np.intp), np.zeros(0)
    idx = np.fromiter((i for i, _ in found), dtype=np.intp, count=len(found))
    tf = np.fromiter((c for _, c in found), dtype=np.float64, count=len(found))
    w = (1.0 + np.log(tf)) * model._idf[idx]
    norm = math.sqrt(float(w @ w))
    return idx, (w / norm if norm > 0 else w)


def check(text: str) -> None:
    for model, vectorizer in MODELS:
        idx, w = model.vector(text)
        old_idx, old_w = before(model, text)
        assert idx.tolist() == old_idx.tolist()  # the same terms in the same order
        assert w.tobytes() == old_w.tobytes()  # the same weights, to the bit
        row = vectorizer.transform([text])
        mine = np.zeros(row.shape[1])
        mine[idx] = w
        np.testing.assert_allclose(mine, row.toarray()[0], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("text", CORPUS[:10] + HOSTILE)
def test_the_vector_is_scikit_learns_and_the_one_before(text: str) -> None:
    check(text)


def test_known_terms_are_found() -> None:
    """Not a vacuous comparison: the corpus's texts have known terms under every shape."""
    for model, _ in MODELS:
        assert all(len(model.vector(text)[0]) > 0 for text in CORPUS[:10] if len(text) > 40)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text(text: str) -> None:
    check(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(" ".join(CORPUS[:10]).split()), max_size=80))
def test_texts_of_known_words(words: list[str]) -> None:
    check(" ".join(words))


# -- the policy ----------------------------------------------------------------------------


def plans_before(
    probs: Sequence[Mapping[str, float]],
    costs: Sequence[float],
    right: Mapping[tuple[int, int], float] | None = None,
    cost: Mapping[tuple[int, int], float] | None = None,
) -> list[Plan]:
    """``plans`` as it was before issue #14's speed-up."""
    out: list[Plan] = []
    n = len(probs)
    for start in range(n):
        for stop in range(start, n):
            reach, p_right, spent, fallback = 1.0, 0.0, 0.0, 0.0
            for j in range(start, stop + 1):
                p = probs[j]
                accepted = p.get("accepted_right", 0.0) + p.get("accepted_wrong", 0.0)
                spent += reach * costs[j]
                p_right += reach * p.get("accepted_right", 0.0)
                reach *= max(0.0, 1.0 - accepted)
                rejected = 1.0 - accepted
                if rejected > 1e-9:
                    fallback = max(fallback, p.get("rejected_right", 0.0) / rejected)
            chance = min(1.0, p_right + reach * fallback)
            if right is not None and (start, stop) in right:
                chance = right[start, stop]
            if cost is not None and (start, stop) in cost:
                spent = cost[start, stop]
            out.append(Plan(start, stop, chance, spent))
    return out


OUTCOME = st.sampled_from(["accepted_right", "accepted_wrong", "rejected_right", "rejected_wrong"])
PROB = st.floats(min_value=0.0, max_value=1.0)


@st.composite
def tier_probs(draw: st.DrawFn) -> dict[str, float]:
    """A tier's outcome probabilities: a softmax's (summing to 1), or odd ones (some
    outcomes missing, all accepted, all rejected, not summing to 1)."""
    if draw(st.booleans()):
        raw = draw(st.lists(PROB, min_size=4, max_size=4))
        total = sum(raw) or 1.0
        names = ["accepted_right", "accepted_wrong", "rejected_right", "rejected_wrong"]
        return {k: v / total for k, v in zip(names, raw, strict=True)}
    return draw(st.dictionaries(OUTCOME, PROB, max_size=4))


@settings(max_examples=500, deadline=None)
@given(
    st.lists(tier_probs(), min_size=1, max_size=5),
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=5, max_size=5),
    st.booleans(),
    st.booleans(),
)
def test_plans_are_the_ones_before(
    probs: list[dict[str, float]], costs: list[float], with_right: bool, with_cost: bool
) -> None:
    """Overrides included: a range's own cost must not leak into the longer ranges."""
    n = len(probs)
    right = {(0, n - 1): 0.5, (0, 0): 0.25} if with_right else None
    cost = {(0, 0): 7.0, (n - 1, n - 1): 3.0} if with_cost else None
    assert plans(probs, costs, right, cost) == plans_before(probs, costs, right, cost)


def decide_before(
    probs: Sequence[Mapping[str, float]],
    costs: Sequence[float],
    *,
    policy: str,
    cost_weight: float | None,
    right: Mapping[tuple[int, int], float] | None,
) -> tuple[Any, ...]:
    """``decide``'s range, score and tier scores as it computed them before issue #14's
    speed-up (the policies ``cascade`` and ``single``)."""
    scores = tuple(round(pass_chance(p), 4) for p in probs)
    options = plans_before(probs, costs, right)
    if policy == "single":
        options = [p for p in options if p.start == p.stop]
    top = max(costs[-1], 1e-12)
    if cost_weight is None:
        pick = min(options, key=lambda p: (p.cost / max(p.right, 1e-6), -p.right))
    else:
        w = cost_weight
        pick = max(options, key=lambda p: (p.right - w * p.cost / top, -p.cost))
    return pick.start + 1, pick.stop + 1, round(pick.right, 4), scores


@settings(max_examples=500, deadline=None)
@given(
    st.lists(tier_probs(), min_size=1, max_size=5),
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=5, max_size=5),
    st.sampled_from(["cascade", "single"]),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=5.0)),
    st.booleans(),
)
def test_decisions_are_the_ones_before(
    probs: list[dict[str, float]],
    costs: list[float],
    policy: Policy,
    cost_weight: float | None,
    with_right: bool,
) -> None:
    right = {(0, len(probs) - 1): 0.5} if with_right else None
    d = decide(probs, costs, policy=policy, cost_weight=cost_weight, right=right, router="t")
    got = (d.start_tier, d.max_tier, d.score, d.tier_scores)
    kw = {"policy": policy, "cost_weight": cost_weight, "right": right}
    assert got == decide_before(probs, costs, **kw)


ODD = st.sampled_from([0.0, 0.5, 1.0, 2.0, -0.5, 1e-10, math.nan, math.inf, -math.inf])


@settings(max_examples=500, deadline=None)
@given(
    st.lists(st.dictionaries(OUTCOME, ODD, max_size=4), min_size=1, max_size=4),
    st.lists(st.sampled_from([0.0, 0.3, 1.0, math.nan, math.inf]), min_size=5, max_size=5),
    st.sampled_from(["cascade", "single"]),
    st.sampled_from([None, 0.5]),
)
def test_plans_and_decisions_are_the_ones_before_for_nan_and_infinite_figures(
    probs: list[dict[str, float]], costs: list[float], policy: Policy, cost_weight: float | None
) -> None:
    """The comparisons that replaced min() and max() give what they gave for NaN, infinite
    and out-of-range figures too (compared by repr: NaN is not equal to itself)."""
    assert repr(plans(probs, costs)) == repr(plans_before(probs, costs))
    d = decide(probs, costs, policy=policy, cost_weight=cost_weight, router="t")
    got = (d.start_tier, d.max_tier, d.score, d.tier_scores)
    want = decide_before(probs, costs, policy=policy, cost_weight=cost_weight, right=None)
    assert repr(got) == repr(want)
