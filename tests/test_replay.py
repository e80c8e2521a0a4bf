"""The ``replay`` provider: recorded answers served through the real engine."""

from __future__ import annotations

import gzip
import inspect
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cascade import (
    AllProvidersFailed,
    Cascade,
    ConfigError,
    MalformedResponse,
    Message,
    ProviderConfig,
    ProviderStatusError,
    RequestOptions,
)
from cascade._cli import main
from cascade.providers import ReplayProvider, provider_kinds
from cascade.providers.replay import load_dataset

pytestmark = pytest.mark.anyio

Q1 = "How many legs do 3 ducks have?"
Q2 = "What is 2 + 2?"

RECORDS: list[dict[str, Any]] = [
    {
        "id": "t-0",
        "question": Q1,
        "expected": "6",
        "question_tokens": 10,
        "responses": {
            "small": [
                {"variant": "COT", "text": "2 legs each: 6", "answer": "$6", "output_tokens": 7},
                {"variant": "PoT", "text": "legs = 3 * 2", "answer": 6, "output_tokens": 11},
                {"variant": "plain", "text": "Six. #### 6", "output_tokens": 5,
                 "judged_correct": True},
            ],
            "big": [{"variant": "COT", "text": "6", "answer": "6", "output_tokens": 1}],
        },
    },
    {
        "id": "t-1",
        "question": f"  {Q2}\n",
        "expected": "4",
        "question_tokens": 6,
        "responses": {
            "small": [
                {"variant": "COT", "text": "4", "answer": None, "output_tokens": 2},
                {"variant": "COT", "text": "four", "answer": "4", "output_tokens": 3},
            ]
        },
    },
]  # fmt: skip


def write_dataset(path: Path, records: list[dict[str, Any]] = RECORDS) -> Path:
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def replay(path: Path, model: str = "small", **extra: Any) -> dict[str, Any]:
    return {
        "name": f"{model}-replay",
        "kind": "replay",
        "model": model,
        "dataset": str(path),
        "input_cost_per_mtok": 1.0,
        "output_cost_per_mtok": 2.0,
        **extra,
    }


def one_tier(path: Path, **extra: Any) -> dict[str, Any]:
    return {"tiers": [{"name": "t", "providers": [replay(path, **extra)]}]}


def ask(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}]


@pytest.fixture(params=["data.jsonl", "data.jsonl.gz"])
def dataset(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return write_dataset(tmp_path / request.param)


def test_registered_kind() -> None:
    assert "replay" in provider_kinds()
    assert inspect.isasyncgenfunction(ReplayProvider.stream)


async def test_serves_the_recorded_answer_with_its_tokens_and_cost(dataset: Path) -> None:
    async with Cascade.from_dict(one_tier(dataset, variant="COT", prompt_overhead_tokens=500)) as c:
        result = await c.run(messages=ask(Q1))
    assert (result.text, result.answer, result.model) == ("2 legs each: 6", "$6", "small")
    assert result.finish_reason == "stop"
    # question 10 + overhead 500 tokens in at $1/M, 7 recorded tokens out at $2/M
    assert (result.usage.input_tokens, result.usage.output_tokens) == (510, 7)
    assert result.cost_usd == pytest.approx((510 * 1.0 + 7 * 2.0) / 1e6, rel=1e-12)


async def test_lookup_is_by_last_user_message_stripped(dataset: Path) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Something else entirely"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": f"\n {Q2}  "},  # the record's question has spaces too
    ]
    async with Cascade.from_dict(one_tier(dataset)) as c:
        result = await c.run(messages=messages)
    assert result.text == "4"
    assert result.answer is None  # recorded as null
    assert result.usage.input_tokens == 6  # no overhead configured


async def test_variant_by_request_then_config(dataset: Path) -> None:
    async with Cascade.from_dict(one_tier(dataset, variant="COT")) as c:
        by_config = await c.run(messages=ask(Q1))
        by_request = await c.run(messages=ask(Q1), options=RequestOptions(variant="PoT"))
    assert by_config.text == "2 legs each: 6"
    assert (by_request.text, by_request.answer, by_request.variant) == ("legs = 3 * 2", "6", "PoT")


async def test_tier_variants_name_the_served_variant(dataset: Path) -> None:
    config = one_tier(dataset, variant="COT")
    config["tiers"][0]["variants"] = [{"name": "plain"}]
    async with Cascade.from_dict(config) as c:
        result = await c.run(messages=ask(Q1))
    assert (result.text, result.variant, result.answer) == ("Six. #### 6", "plain", None)


async def test_without_a_variant_samples_rotate_per_question(dataset: Path) -> None:
    async with Cascade.from_dict(one_tier(dataset)) as c:
        q1 = [(await c.run(messages=ask(Q1))).text for _ in range(4)]
        q2 = [(await c.run(messages=ask(Q2))).text for _ in range(3)]
    assert q1 == ["2 legs each: 6", "legs = 3 * 2", "Six. #### 6", "2 legs each: 6"]
    assert q2 == ["4", "four", "4"]  # its own counter, not shifted by Q1's calls


async def test_several_samples_of_one_variant_rotate(dataset: Path) -> None:
    async with Cascade.from_dict(one_tier(dataset, variant="COT")) as c:
        texts = [(await c.run(messages=ask(Q2))).text for _ in range(3)]
    assert texts == ["4", "four", "4"]


@pytest.mark.parametrize(
    ("question", "model", "variant", "why"),
    [
        ("What is the capital of Mars?", "small", None, "no recorded question"),
        (Q2, "big", None, "no recorded response of 'big'"),
        (Q1, "small", "ToT", "variant 'ToT' is not recorded"),
    ],
)
async def test_nothing_recorded_is_a_typed_404(
    dataset: Path, question: str, model: str, variant: str | None, why: str
) -> None:
    async with Cascade.from_dict(one_tier(dataset, model=model)) as c:
        with pytest.raises(AllProvidersFailed) as info:
            await c.run(messages=ask(question), options=RequestOptions(variant=variant))
    cause = info.value.__cause__
    assert isinstance(cause, ProviderStatusError)
    assert cause.status == 404 and why in str(cause)
    assert info.value.attempts[0].error_type == "ProviderStatusError"
    assert info.value.attempts[0].cost_usd == 0.0


async def test_a_404_escalates_to_the_next_tier(dataset: Path) -> None:
    config = {
        "tiers": [
            {"name": "cheap", "providers": [replay(dataset, model="big")]},
            {"name": "dear", "providers": [replay(dataset, model="small", variant="COT")]},
        ]
    }
    async with Cascade.from_dict(config) as c:
        result = await c.run(messages=ask(Q2))  # "big" recorded nothing for Q2
    assert result.tier_name == "dear" and result.text == "4"
    assert [a.outcome for a in result.attempts] == ["failed", "accepted"]


async def test_provider_used_directly_loads_off_the_loop(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "direct.jsonl")
    provider = ReplayProvider(ProviderConfig(**replay(path, variant="COT")))
    assert "not loaded" in repr(provider)
    chunks = [
        c async for c in provider.stream((Message(role="user", content=Q1),), RequestOptions())
    ]
    assert [(c.text, c.answer, c.input_tokens, c.output_tokens) for c in chunks] == [
        ("2 legs each: 6", "$6", 10, 7)
    ]
    assert "loaded, served 1" in repr(provider)
    assert load_dataset(path) is load_dataset(path)  # parsed once per path
    await provider.aclose()


async def test_dataset_gone_before_first_use_is_malformed_response(tmp_path: Path) -> None:
    provider = ReplayProvider(ProviderConfig(**replay(tmp_path / "missing.jsonl")))
    with pytest.raises(MalformedResponse, match="cannot read"):
        async for _ in provider.stream((Message(role="user", content=Q1),), RequestOptions()):
            pass


def test_dataset_is_parsed_once_and_again_when_it_changes(tmp_path: Path) -> None:
    path = write_dataset(tmp_path / "d.jsonl")
    first = load_dataset(path)
    assert load_dataset(tmp_path / "." / "d.jsonl") is first
    write_dataset(path, [*RECORDS[:1], {**RECORDS[1], "question": "Another one?"}])
    second = load_dataset(path)
    assert second is not first and "Another one?" in second.questions


@pytest.mark.parametrize(
    ("content", "extra", "path", "message"),
    [
        (None, {}, "dataset", "cannot read"),
        (b"", {}, "dataset", "holds no records"),
        (b'{"question": "q", "question_tokens": 1, "responses": {}}\n{oops\n', {}, "dataset",
         ":2: not a replay record"),
        (b'{"question": "q", "responses": {"m": [{"variant": "v"}]}}\n', {}, "dataset", "text"),
        (b'{"question": "q", "question_tokens": -1, "responses": {}}\n', {}, "dataset", ">= 0"),
        (b'{"question": "q", "question_tokens": 1, "responses": {}}\n' * 2, {}, "dataset",
         ":2: duplicate question"),
        (None, {"dataset": None}, "dataset", "expected the path"),
        ("ok", {"model": "huge"}, "model", "'huge' has no recorded responses"),
        ("ok", {"variant": "ToT"}, "variant", "'ToT' is not recorded for 'small'"),
    ],
)  # fmt: skip
def test_bad_dataset_is_a_config_error_at_build(
    tmp_path: Path, content: bytes | str | None, extra: dict[str, Any], path: str, message: str
) -> None:
    file = tmp_path / "bad.jsonl"
    if content == "ok":
        write_dataset(file)
    elif isinstance(content, bytes):
        file.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(one_tier(file, **extra))
    assert info.value.path == f"tiers[0].providers[0].{path}"
    assert message in info.value.message


def test_bad_gzip_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "bad.jsonl.gz"
    file.write_bytes(b"not gzip at all")
    with pytest.raises(ConfigError, match="cannot read") as info:
        Cascade.from_dict(one_tier(file))
    assert info.value.path == "tiers[0].providers[0].dataset"


def test_cli_resolves_dataset_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "data").mkdir()
    write_dataset(tmp_path / "data" / "d.jsonl.gz")
    config = tmp_path / "configs" / "c.toml"
    config.write_text(
        '[[tiers]]\nname = "t"\n[[tiers.providers]]\nname = "p"\nkind = "replay"\n'
        'model = "small"\nvariant = "PoT"\ndataset = "../data/d.jsonl.gz"\n'
    )
    monkeypatch.chdir(tmp_path / "data")  # a CWD from which the relative path is wrong
    assert main(["check", str(config)]) == 0
    assert str(tmp_path / "data" / "d.jsonl.gz") in capsys.readouterr().out
    assert main(["run", "--config", str(config), Q1]) == 0
    assert capsys.readouterr().out == "legs = 3 * 2\n"


# -- n: several answers from one request, billed as the API bills them -----------------------


async def test_complete_n_bills_the_prompt_once(dataset: Path) -> None:
    config = msgspec.convert(replay(dataset, prompt_overhead_tokens=100), ProviderConfig)
    provider = ReplayProvider(config)
    messages = (Message(role="user", content=Q1),)
    chunks = await provider.complete_n(messages, RequestOptions(), 3)
    # the three recorded answers in turn; the prompt (10 + 100 tokens) on the first only
    assert [c.text for c in chunks] == ["2 legs each: 6", "legs = 3 * 2", "Six. #### 6"]
    assert [c.input_tokens for c in chunks] == [110, 0, 0]
    assert [c.output_tokens for c in chunks] == [7, 11, 5]
    assert [c.answer for c in chunks] == ["$6", "6", None]
    # the turn goes on where n left it
    (again,) = await provider.complete_n(messages, RequestOptions(), 1)
    assert again.text == "2 legs each: 6" and provider.served == 2 and provider.estimated == 0


@pytest.mark.parametrize("batch", [True, False])
async def test_self_consistency_samples_with_and_without_n(dataset: Path, batch: bool) -> None:
    validator = {"name": "self_consistency", "samples": 3, "min_agreement": 1.0,
                 "extractor": "recorded", "early_stop": False}  # fmt: skip
    cfg = {"tiers": [{"name": "t", "validators": [validator], "providers": [
        replay(dataset, prompt_overhead_tokens=100, batch_samples=batch)]}]}  # fmt: skip
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=ask(Q1))
    # "$6", 6 and an answerless one: two of three agree, not all three
    (attempt,) = result.attempts
    assert attempt.outcome == "rejected" and len(attempt.samples) == 2
    prompts = 2 if batch else 3  # the first call, then one request with n = 2 (or two)
    assert result.usage.input_tokens == prompts * 110
    assert result.usage.output_tokens == 7 + 11 + 5
    assert result.cost_usd == pytest.approx((prompts * 110 + 2 * 23) / 1e6, rel=1e-12)


async def test_a_dataset_without_token_counts_is_priced_on_estimates(tmp_path: Path) -> None:
    record = {"question": Q1, "responses": {"small": [{"variant": "COT", "text": "x" * 40}]}}
    path = write_dataset(tmp_path / "bare.jsonl", [record])
    async with Cascade.from_dict(one_tier(path, prompt_overhead_tokens=100)) as c:
        result = await c.run(messages=ask(Q1))
        (provider,) = c._tiers[0].providers
    # the engine's own estimates: the prompt's characters / 4 + 4 a message; 40 chars / 4
    assert result.usage.input_tokens == len(Q1) // 4 + 4 + 100
    assert result.usage.output_tokens == 10
    assert isinstance(provider, ReplayProvider) and provider.estimated == 1
