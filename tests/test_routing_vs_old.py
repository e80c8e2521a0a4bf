"""Hostile review of the classifier's fast decision path (4586f26, 6dc51e6): its decisions
against the code before it (commit 7502111's ``TextModel.predict`` and ``decide``, read
from git), on random models of every head shape (one tier to five, every range planned,
some, or none; constant, binary, three- and four-class tier heads), extreme but loadable
magnitudes, and texts of unknown words, repeated words and control characters."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cascade import Message, RequestOptions
from cascade.routing import RouteRequest, TierInfo
from cascade.routing._classifier import ClassifierRouter
from cascade.routing._modelfile import ClassifierFile, encode_file
from cascade.routing._textmodel import OUTCOMES, Features, Head, TextModel, words_of

from .test_routing_featurise import CORPUS, HOSTILE, SHAPES, fitted

BEFORE = "7502111"
ROOT = Path(__file__).resolve().parents[1]


def old_module(name: str) -> ModuleType:
    """``cascade.routing.<name>`` as it was at BEFORE, as a module of the package."""
    try:
        source = subprocess.run(
            ["git", "show", f"{BEFORE}:src/cascade/routing/{name}.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.CalledProcessError):  # pragma: no cover - not a checkout
        pytest.skip(f"no git history with {BEFORE}")
    full = f"cascade.routing.{name}_before"
    spec = importlib.util.spec_from_loader(full, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "cascade.routing"
    sys.modules[full] = module
    exec(compile(source, f"{BEFORE}:{name}.py", "exec"), module.__dict__)
    return module


OLD_TM = old_module("_textmodel")
OLD_POLICY = old_module("_policy")

CLASS_SETS = [
    ["accepted_right"],
    ["rejected_wrong"],
    ["accepted_right", "rejected_wrong"],
    ["accepted_wrong", "rejected_right"],
    ["accepted_right", "rejected_right", "rejected_wrong"],
    list(OUTCOMES),
]


@st.composite
def files(draw: st.DrawFn) -> tuple[ClassifierFile, int]:
    shape = draw(st.integers(0, len(SHAPES) - 1))
    model, _ = fitted(SHAPES[shape])
    width = len(model.features.vocabulary)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(1, 5))
    scale = draw(st.sampled_from([3.0, 1e-3, 1e50, 1e100]))
    idf_scale = draw(st.sampled_from([1.0, 1e-160, 1e-300, 0.0, 1e99]))
    idf = (np.asarray(model.features.idf) * idf_scale).tolist()
    idf = [min(v, 1e100) for v in idf]
    features = Features(
        word_ngrams=model.features.word_ngrams,
        char_ngrams=model.features.char_ngrams,
        max_chars=model.features.max_chars,
        vocabulary=model.features.vocabulary,
        idf=idf,
    )

    def head(classes: list[str], binary_rows: int = 1) -> Head:
        k = len(classes)
        rows = 0 if k == 1 else binary_rows if k == 2 else k
        coef = np.clip(rng.normal(0, scale, (rows, width)), -1e100, 1e100)
        return Head(
            classes=classes,
            coef=coef.tolist(),
            intercept=np.clip(rng.normal(0, 1, rows), -1e100, 1e100).tolist(),
        )

    heads = [
        head(draw(st.sampled_from(CLASS_SETS)), draw(st.sampled_from([1, 2]))) for _ in range(n)
    ]
    every = [(s + 1, m + 1) for s in range(n) for m in range(s, n)]
    plans = draw(st.sampled_from([every, [], every[:1], every[::-1]]))
    for _ in plans:
        classes = draw(st.sampled_from([["right", "wrong"], ["right"], ["wrong"]]))
        heads.append(head(classes, draw(st.sampled_from([1, 2]))))
    costs = draw(st.sampled_from([[0.0] * n, [10.0**j for j in range(n)], [1.0] * n]))
    file = ClassifierFile(
        tiers=[f"t{j}" for j in range(n)],
        costs=costs,
        cost_weight=draw(st.sampled_from([None, 0.0, 0.3, 1e6])),
        features=features,
        heads=heads,
        plans=plans,
    )
    return file, seed


def request(tiers: list[str], text: str) -> RouteRequest:
    infos = tuple(
        TierInfo(index=i + 1, name=name, est_cost_usd=0.001 * (i + 1))
        for i, name in enumerate(tiers)
    )
    return RouteRequest(
        messages=(Message(role="user", content=text),),
        options=RequestOptions(),
        tiers=infos,
        max_cost_usd=None,
    )


TEXTS = st.one_of(
    st.sampled_from(CORPUS[:10] + HOSTILE),
    st.text(max_size=120),
    st.lists(st.sampled_from(" ".join(CORPUS[:10]).split()), max_size=40).map(" ".join),
    st.sampled_from(["zzqq " * 500, "the " * 30000, "qq", "\x0b\x0c\x1c\x1d\x1e\x1f"]),
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(files(), st.sampled_from(["cascade", "single", "cheapest"]), TEXTS)
def test_decisions_are_the_old_codes(
    tmp_path: Path, drawn: tuple[ClassifierFile, int], policy: str, text: str
) -> None:
    file, seed = drawn
    path = tmp_path / f"r{seed}.json"
    path.write_bytes(encode_file(file))
    router = ClassifierRouter(model=path, policy=policy)  # type: ignore[arg-type]
    req = request(file.tiers, text)
    got = router.choose(*router.figures(text), req)
    old = OLD_TM.TextModel(file.features, file.heads)
    out = old.predict(text)
    n = len(file.tiers)
    right = {
        (s - 1, m - 1): p.get("right", 0.0) for (s, m), p in zip(file.plans, out[n:], strict=True)
    }
    costs = file.costs if any(file.costs) else [t.est_cost_usd for t in req.tiers]
    want = OLD_POLICY.decide(
        out[:n],
        costs,
        policy=policy,
        cost_weight=router.cost_weight,
        min_pass=router.min_pass,
        right=right,
        router=router.name,
    )
    assert (got.start_tier, got.max_tier) == (want.start_tier, want.max_tier), (got, want)
    assert got.tier_scores == want.tier_scores
    assert got.score == pytest.approx(want.score, rel=1e-6, abs=1e-4)
    for h in range(len(file.heads)):  # the plan table's pick of a cluster, too
        assert router.model.likeliest(text, h) == old.likeliest(text, h)


ASCII_EDGES = "\x00\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f _'-.!?09azAZ\x7f"


@settings(max_examples=1000, deadline=None)
@given(
    st.text(st.sampled_from(ASCII_EDGES), max_size=60)
    | st.text(st.characters(max_codepoint=127), max_size=60)
    | st.text(st.sampled_from(ASCII_EDGES + "\u212a\u0130\u00e9\u2028\x85\xa0"), max_size=60),
    st.integers(1, 70),
)
def test_words_are_the_old_tokenizers(text: str, max_chars: int) -> None:
    """``words_of`` after the cut and lower() of a decision gives the old regex's words
    (texts ASCII only before or only after the cut, or only after lower())."""
    cut = text[:max_chars].lower()
    assert words_of(cut) == OLD_TM._WORD.findall(cut)
    assert words_of(text) == re.findall(r"\w\w+", text)
    model, _ = fitted(SHAPES[1])
    feats = msgspec.structs.replace(model.features, max_chars=max_chars)
    got = TextModel(feats, model.heads)._counts(text + " the answer")
    want = OLD_TM.TextModel(feats, model.heads)._counts(text + " the answer")
    assert list(got.items()) == list(want.items())


def test_a_fitted_file_over_the_weights_bound_is_not_written(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``fit_classifier`` never returns a file the loader refuses: over ``MAX_WEIGHTS``
    (reachable through ``max_features`` with many tiers and mostly-zero coefficients,
    a file under 64 MiB; the test lowers the cap) it is an InputError, not a file."""
    import cascade.routing._textmodel as textmodel
    from cascade import InputError
    from cascade.routing._train import fit_classifier

    from .test_routing_learned import TIERS, training

    file = fit_classifier(training(), TIERS, fit_weight=False)
    rows = sum(len(h.coef) for h in file.heads if len(h.classes) > 1)
    weights = len(file.features.vocabulary) * (rows + 1)
    monkeypatch.setattr(textmodel, "MAX_WEIGHTS", weights - 1)
    with pytest.raises(InputError, match="coefficient rows"):
        fit_classifier(training(), TIERS, fit_weight=False)
    monkeypatch.setattr(textmodel, "MAX_WEIGHTS", weights)
    fit_classifier(training(), TIERS, fit_weight=False)
