"""The ``semantic`` router: embeddings from the fake OpenAI server's ``/v1/embeddings`` over
real loopback HTTP (deterministic hashed bag-of-words vectors), or from a local model2vec
model built here in model2vec's own format (no PyPI package ships one small enough, and
nothing is downloaded); nearest centroid and k-NN; a failing embedder is no opinion with
its reason, never a failed run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cascade import Cascade, ConfigError, Message, RequestOptions
from cascade.routing import RouteRequest, TierInfo
from cascade.routing._labels import Labelled
from cascade.routing._modelfile import TierLabel, encode_file
from cascade.routing._semantic import SemanticRouter
from cascade.routing._train import fit_semantic
from cascade.testing import FakeOpenAIServer
from cascade.testing._openai import hashed_embedding

from .helpers import provider, tier

pytestmark = pytest.mark.anyio

FAMILY = [
    "How is Anna related to Tom? Anna is the daughter of Tom's uncle.",
    "How is Rosa related to Ivan in this family story?",
    "Mei visited her grandmother; how is Mei related to her grandmother's son?",
]
SPORTS = [
    "Is this sentence plausible? The goalkeeper scored a touchdown.",
    "Is this sentence plausible? The pitcher threw a strike in the match.",
    "Is this sentence plausible? The striker scored a goal in the match.",
]
ROUTES = [
    {"name": "family", "start_tier": 2, "examples": FAMILY},
    {"name": "sports", "max_tier": 1, "examples": SPORTS},
]


def request(text: str, names: tuple[str, ...] = ("small", "large")) -> RouteRequest:
    return RouteRequest(
        messages=(Message(role="user", content=text),),
        options=RequestOptions(),
        tiers=tuple(TierInfo(index=i + 1, name=n, est_cost_usd=0.01) for i, n in enumerate(names)),
        max_cost_usd=None,
    )


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_fake_embeddings_are_deterministic_and_similar_for_shared_words() -> None:
    async with FakeOpenAIServer() as server, aiohttp.ClientSession() as session:
        body = {"model": "e", "input": ["how is anna related to tom", "is this plausible"]}
        async with session.post(server.url + "/embeddings", json=body) as resp:
            first = await resp.json()
        async with session.post(server.url + "/embeddings", json=body) as resp:
            again = await resp.json()
        async with session.post(server.url + "/embeddings", json={"input": 3}) as resp:
            assert resp.status == 400
    vectors = [d["embedding"] for d in first["data"]]
    assert vectors == [d["embedding"] for d in again["data"]]
    assert [d["index"] for d in first["data"]] == [0, 1] and len(vectors[0]) == 64
    assert math.isclose(cosine(vectors[0], vectors[0]), 1.0)
    near = hashed_embedding("how is rosa related to ivan")
    assert cosine(near, vectors[0]) > cosine(near, vectors[1])


async def test_nearest_centroid_over_http() -> None:
    async with FakeOpenAIServer() as server:
        router = SemanticRouter(
            embedder={"kind": "openai", "base_url": server.url, "model": "e"}, routes=ROUTES
        )
        fam = await router.route(request("How is Lena related to Kofi in the story?"))
        spo = await router.route(request("Is this sentence plausible? The pitcher scored."))
        assert (fam.start_tier, fam.max_tier) == (2, None), fam.reason
        assert (spo.start_tier, spo.max_tier) == (None, 1), spo.reason
        assert "family" in fam.reason and fam.score is not None and fam.score > 0
        calls = server.embedding_requests
        await router.route(request("How is Lena related to Kofi in the story?"))
        assert server.embedding_requests == calls  # cached: the examples and this text
        far = SemanticRouter(
            embedder={"kind": "openai", "base_url": server.url, "model": "e"},
            routes=ROUTES,
            threshold=0.99,
        )
        d = await far.route(request("How is Lena related to Kofi in the story?"))
        assert d.start_tier is None and d.max_tier is None and "under 0.99" in d.reason


async def test_the_cache_is_bounded() -> None:
    async with FakeOpenAIServer() as server:
        router = SemanticRouter(
            embedder={"kind": "openai", "base_url": server.url, "model": "e"},
            routes=ROUTES,
            cache_size=2,
        )
        for i in range(10):
            await router.route(request(f"question number {i}"))
        assert len(router.embedder._cache) == 2
        before = server.embedding_requests
        await router.route(request("question number 9"))  # still cached
        await router.route(request("question number 0"))  # evicted: asked again
        assert server.embedding_requests == before + 1


async def test_a_failing_embedder_is_no_opinion_and_the_run_goes_on() -> None:
    async with FakeOpenAIServer() as server:
        server.embeddings_status = 503
        server.respond("m-small", lambda r: "small says")
        server.respond("m-large", lambda r: "large says")
        config = {
            "tiers": [
                tier("small", provider("small", server.url, "m-small")),
                tier("large", provider("large", server.url, "m-large")),
            ],
            "router": {
                "kind": "semantic",
                "embedder": {"kind": "openai", "base_url": server.url, "model": "e"},
                "routes": ROUTES,
            },
        }
        async with Cascade.from_dict(config) as cascade:
            result = await cascade.run(messages=[{"role": "user", "content": FAMILY[0]}])
        assert result.tier_name == "small"  # the cascade's own first tier
        assert result.route is not None and "HTTP 503" in result.route.reason
        # the embedder back: the same router routes
        server.embeddings_status = None
        async with Cascade.from_dict(config) as cascade:
            result = await cascade.run(messages=[{"role": "user", "content": FAMILY[0]}])
        assert result.tier_name == "large"


async def test_an_unreachable_embedder_is_no_opinion() -> None:
    router = SemanticRouter(
        embedder={"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "e"},
        routes=ROUTES,
    )
    d = await router.route(request("anything"))
    assert d.start_tier is None and "no opinion" in d.reason


def labelled() -> list[Labelled]:
    def lab(outcome: str, cost: float) -> TierLabel:
        return TierLabel(outcome=outcome, cost_usd=cost)  # type: ignore[arg-type]

    rows = []
    for i in range(30):
        text = FAMILY[i % 3] + f" case {i}"
        rows.append(
            Labelled(text=text, tiers=(lab("rejected_wrong", 0.001), lab("accepted_right", 0.03)))
        )
        text = SPORTS[i % 3] + f" case {i}"
        rows.append(
            Labelled(text=text, tiers=(lab("accepted_right", 0.001), lab("accepted_right", 0.03)))
        )
    return rows


async def test_knn_over_a_trained_file(tmp_path: Path) -> None:
    path = tmp_path / "semantic.json"
    path.write_bytes(encode_file(fit_semantic(labelled(), ["small", "large"], k=5)))
    async with FakeOpenAIServer() as server:
        server.embedding_dim = 4096  # the examples' vectors arrive in many pieces (~4 MB)
        router = SemanticRouter(
            embedder={"kind": "openai", "base_url": server.url, "model": "e"},
            model=path,
            cost_weight=0.5,
        )
        fam = await router.route(request("How is Paul related to Sara in this family story?"))
        spo = await router.route(request("Is this sentence plausible? The pitcher scored a goal."))
        assert fam.start_tier == 2, fam.reason
        assert (spo.start_tier, spo.max_tier) == (1, 1), spo.reason
        assert fam.tier_scores[1] > fam.tier_scores[0]
        other = await router.route(request("x", ("a", "b")))
        assert other.start_tier is None and "trained for tiers" in other.reason


def write_tiny_model2vec(folder: Path) -> None:
    """A static model in model2vec's format: a word-level tokenizer and one vector a word,
    family words along one axis and sports words along another."""
    np = pytest.importorskip("numpy")
    model2vec = pytest.importorskip("model2vec")
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    words = ["[UNK]", "[PAD]", "related", "daughter", "uncle", "family", "plausible", "goal",
             "match", "scored"]  # fmt: skip
    tokenizer = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    vectors = np.zeros((len(words), 4), dtype=np.float32)
    vectors[0] = [0, 0, 0.01, 0]
    vectors[2:6, 0] = 1.0
    vectors[6:10, 1] = 1.0
    model2vec.StaticModel(vectors=vectors, tokenizer=tokenizer, normalize=True).save_pretrained(
        str(folder)
    )


async def test_a_local_model2vec_model(tmp_path: Path) -> None:
    write_tiny_model2vec(tmp_path / "m2v")
    router = SemanticRouter(
        embedder={"kind": "model2vec", "path": str(tmp_path / "m2v")},
        routes=[
            {"name": "family", "start_tier": 2, "examples": ["related daughter", "uncle family"]},
            {"name": "sports", "max_tier": 1, "examples": ["plausible goal", "match scored"]},
        ],
    )
    fam = await router.route(request("how is she related to her uncle"))
    spo = await router.route(request("is it plausible he scored"))
    assert fam.start_tier == 2 and spo.max_tier == 1


@pytest.mark.parametrize(
    ("params", "where"),
    [
        ({"embedder": {"kind": "model2vec", "path": "/nonexistent/model"}, "routes": ROUTES},
         "router.embedder.path"),
        ({"embedder": {"kind": "model2vec", "path": "minishlab/potion-base-8M"}, "routes": ROUTES},
         "router.embedder.path"),  # a hub name is never fetched
        ({"embedder": {"kind": "openai", "model": "e"}, "routes": ROUTES}, "router.embedder"),
        ({"embedder": {"kind": "onnx"}, "routes": ROUTES}, "router.embedder.kind"),
        ({"embedder": {"kind": "openai", "base_url": "http://x/v1", "model": "e"}},
         "router.model"),
        ({"embedder": {"kind": "openai", "base_url": "http://x/v1", "model": "e"},
          "routes": [{"examples": []}]}, "router.routes[0].examples"),
        ({"embedder": {"kind": "openai", "base_url": "http://x/v1", "model": "e"},
          "routes": ROUTES, "threshold": 3}, "router.threshold"),
    ],
)  # fmt: skip
def test_bad_semantic_config_names_its_path(params: dict[str, Any], where: str) -> None:
    config = {
        "tiers": [tier("small", provider("small", "http://127.0.0.1:9/v1", "m"))],
        "router": {"kind": "semantic", **params},
    }
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(config)
    assert info.value.path == where


def test_a_corrupt_semantic_file_names_it(tmp_path: Path) -> None:
    good = json.loads(encode_file(fit_semantic(labelled(), ["small", "large"])))
    cases = {
        "short labels": lambda d: d["examples"][0]["tiers"].pop(),
        "no examples": lambda d: d.update(examples=[]),
        "classifier kind": lambda d: d.update(kind="classifier"),
        "huge text": lambda d: d["examples"][0].update(text="x" * 5000),
        "bad outcome": lambda d: d["examples"][0]["tiers"][0].update(outcome="maybe"),
    }
    for name, change in cases.items():
        data = json.loads(json.dumps(good))
        change(data)
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(data))
        with pytest.raises(ConfigError) as info:
            SemanticRouter(
                embedder={"kind": "openai", "base_url": "http://x/v1", "model": "e"}, model=path
            )
        assert info.value.path == "model" and str(path) in info.value.message, name
