"""Wire details real servers show: usage that cannot be trusted, prompt-cache tokens and
their prices, refusals, ``max_completion_tokens``, default API key variables, and a prompt
read from stdin. Against the fake servers on loopback, in both wire formats, JSON and SSE."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from cascade import (
    BudgetExceeded,
    Cascade,
    ConfigError,
    Message,
    ProviderConfig,
    RequestOptions,
)
from cascade.providers.openai import OpenAIProvider
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import JSON_SCHEMA, provider, tier

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "What is the capital of France?"}]
Server = FakeOpenAIServer | FakeAnthropicServer


def _two_tiers(url: str, kind: str, *, stream: bool, **first: Any) -> dict[str, Any]:
    """Tier 1 asks model ``m1``, tier 2 model ``m2``, on the same server."""
    return {
        "tiers": [
            tier("t1", provider("p1", url, "m1", kind=kind, stream=stream, **first)),
            tier("t2", provider("p2", url, "m2", kind=kind, stream=stream)),
        ]
    }


def _server(kind: str) -> Server:
    return FakeOpenAIServer() if kind == "openai" else FakeAnthropicServer()


WIRES = [("openai", False), ("openai", True), ("anthropic", False), ("anthropic", True)]
WIRE_IDS = ["openai-json", "openai-sse", "anthropic-json", "anthropic-sse"]

# --- usage that cannot be trusted ------------------------------------------------------

HUGE = 10**400
BAD_COUNTS = [-10_000_000_000, -1, HUGE, 1_000_000_001, 1.5, "12", True]


def _bad_usage(kind: str, stream: bool, value: object) -> Reply:
    if kind == "openai":
        return Reply(text="Paris", usage={"prompt_tokens": value, "completion_tokens": 3})
    if not stream:
        return Reply(text="Paris", usage={"input_tokens": value, "output_tokens": 3})
    # The prompt's count in message_start, the output's in message_delta: both are read.
    return Reply(text="Paris", start_usage={"input_tokens": 5, "output_tokens": value})


@pytest.mark.parametrize(("kind", "stream"), WIRES, ids=WIRE_IDS)
@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
async def test_a_bogus_usage_is_a_malformed_response_that_fails_over(
    kind: str, stream: bool, value: object
) -> None:
    async with _server(kind) as server:
        server.script("m1", _bad_usage(kind, stream, value))
        server.script("m2", "Paris")
        async with Cascade.from_dict(_two_tiers(server.url, kind, stream=stream)) as c:
            result = await c.run(messages=USER, max_cost_usd=1.0)
    first, second = result.attempts
    assert first.outcome == "failed"
    assert first.error_type == "MalformedResponse"
    assert 0 <= first.cost_usd < 1e-4  # a stream's text that arrived: the estimate
    assert second.outcome == "accepted"
    assert result.tier == 2
    assert result.cost_usd == pytest.approx(first.cost_usd + second.cost_usd)
    assert second.cost_usd > 0


async def test_a_negative_usage_cannot_pay_for_a_later_tier(
    openai_server: FakeOpenAIServer,
) -> None:
    """The report's run: a tier reporting -1e10 prompt tokens made the run's cost negative,
    and so left room under max_cost_usd for a tier that does not fit."""
    # Tier 1's answer fails its schema: the run goes on to tier 2, if it fits the budget.
    bogus = {"prompt_tokens": -(10**10), "completion_tokens": 3}
    openai_server.script("m1", Reply(text='{"answer": "no"}', usage=bogus))
    openai_server.script("m2", '{"answer": 42}')
    cfg = _two_tiers(openai_server.url, "openai", stream=False)
    cfg["tiers"][0]["validators"] = [JSON_SCHEMA]
    cfg["tiers"][1]["providers"][0]["input_cost_per_mtok"] = 1e6  # $1 a prompt token
    async with Cascade.from_dict(cfg) as c:
        with pytest.raises(BudgetExceeded) as info:
            await c.run(messages=USER, max_cost_usd=0.5)
    assert [a.outcome for a in info.value.attempts] == ["failed", "skipped"]
    assert all(a.cost_usd >= 0 for a in info.value.attempts)
    assert openai_server.request_count == 1  # tier 2 was never called


async def test_cascade_run_prints_a_clean_error_for_a_huge_usage(tmp_path: Path) -> None:
    async with FakeOpenAIServer() as server:
        server.script("m1", Reply(text="Paris", usage={"prompt_tokens": HUGE}))
        (tmp_path / "c.toml").write_text(
            f'[[tiers]]\nname = "t"\n[[tiers.providers]]\nname = "p"\nkind = "openai"\n'
            f'base_url = "{server.url}"\nmodel = "m1"\ninput_cost_per_mtok = 1.0\n'
        )
        done = await _cli("run", "--config", str(tmp_path / "c.toml"), "hi")
    err = done.stderr.decode()
    assert done.returncode == 1
    assert "AllProvidersFailed" in err
    assert "$.usage.prompt_tokens" in err
    assert "Traceback" not in err
    assert "OverflowError" not in err


# --- prompt-cache tokens and their prices ------------------------------------------------

OPENAI_CACHED_USAGE = {
    "prompt_tokens": 3000,
    "completion_tokens": 50,
    "total_tokens": 3050,
    "prompt_tokens_details": {"cached_tokens": 2000, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
}


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize(
    ("price", "expected"),
    [(None, 1000 * 1.0 + 2000 * 0.5 + 50 * 2.0), (0.1, 1000 * 1.0 + 2000 * 0.1 + 50 * 2.0)],
    ids=["default-half", "configured"],
)
async def test_openai_cached_prompt_tokens_are_priced_as_cache_reads(
    openai_server: FakeOpenAIServer, stream: bool, price: float | None, expected: float
) -> None:
    # prompt_tokens INCLUDES the cached ones: 1000 uncached + 2000 read from the cache.
    openai_server.script("m1", Reply(text="Paris", usage=OPENAI_CACHED_USAGE))
    extra = {} if price is None else {"cache_read_cost_per_mtok": price}
    cfg = {"tiers": [tier("t", provider("p", openai_server.url, "m1", stream=stream, **extra))]}
    async with Cascade.from_dict(cfg) as c:
        result = await c.run(messages=USER)
    completion = result.attempts[0].completion
    assert completion is not None
    assert completion.input_tokens == 3000
    assert completion.cache_read_tokens == 2000
    assert completion.cache_write_tokens == 0
    assert result.cost_usd == pytest.approx(expected / 1e6)


ANTHROPIC_CACHED_USAGE = {
    "input_tokens": 10,
    "cache_creation_input_tokens": 1000,
    "cache_read_input_tokens": 2000,
    "output_tokens": 50,
    "service_tier": "standard",
}
# input_tokens EXCLUDES the cache: 10 uncached, 2000 read at 0.1x, 1000 written at 1.25x.
ANTHROPIC_CACHED_COST = (10 * 1.0 + 2000 * 0.1 + 1000 * 1.25 + 50 * 2.0) / 1e6


@pytest.mark.parametrize(
    ("reply", "stream"),
    [
        (Reply(text="Paris", usage=ANTHROPIC_CACHED_USAGE), False),
        # The usual stream: the prompt's counts in message_start, the output in message_delta.
        (
            Reply(
                text="Paris",
                start_usage={**ANTHROPIC_CACHED_USAGE, "output_tokens": 1},
                usage={"output_tokens": 50},
            ),
            True,
        ),
        # A stream reporting it all again, cumulatively, in message_delta.
        (
            Reply(
                text="Paris",
                start_usage={**ANTHROPIC_CACHED_USAGE, "output_tokens": 1},
                usage=ANTHROPIC_CACHED_USAGE,
            ),
            True,
        ),
        # A stream reporting the prompt only in message_delta (0 in message_start).
        (
            Reply(
                text="Paris",
                start_usage={"input_tokens": 0, "output_tokens": 0},
                usage=ANTHROPIC_CACHED_USAGE,
            ),
            True,
        ),
    ],
    ids=["json", "sse-start", "sse-both", "sse-delta-only"],
)
async def test_anthropic_cache_tokens_and_late_input_tokens_are_costed(
    anthropic_server: FakeAnthropicServer, reply: Reply, stream: bool
) -> None:
    anthropic_server.script("m1", reply)
    prov = provider("p", anthropic_server.url, "m1", kind="anthropic", stream=stream)
    async with Cascade.from_dict({"tiers": [tier("t", prov)]}) as c:
        result = await c.run(messages=USER)
    completion = result.attempts[0].completion
    assert completion is not None
    assert completion.input_tokens == 3010
    assert completion.cache_read_tokens == 2000
    assert completion.cache_write_tokens == 1000
    assert completion.output_tokens == 50
    assert result.usage.input_tokens == 3010
    assert result.cost_usd == pytest.approx(ANTHROPIC_CACHED_COST)


async def test_anthropic_input_tokens_only_in_message_delta(
    anthropic_server: FakeAnthropicServer,
) -> None:
    """A stream that reports the prompt in message_delta, 0 in message_start, without any
    cache: the prompt is costed, not taken as free."""
    anthropic_server.script(
        "m1",
        Reply(
            text="Paris",
            start_usage={"input_tokens": 0, "output_tokens": 0},
            usage={"input_tokens": 120, "output_tokens": 30},
        ),
    )
    prov = provider("p", anthropic_server.url, "m1", kind="anthropic", stream=True)
    async with Cascade.from_dict({"tiers": [tier("t", prov)]}) as c:
        result = await c.run(messages=USER)
    assert result.usage.input_tokens == 120
    assert result.usage.output_tokens == 30
    assert result.cost_usd == pytest.approx((120 * 1.0 + 30 * 2.0) / 1e6)


@pytest.mark.parametrize(
    ("kind", "extra", "read", "write"),
    [
        ("anthropic", {}, 0.3, 3.75),
        ("openai", {}, 1.5, 3.0),
        ("replay", {}, 3.0, 3.0),
        ("anthropic", {"cache_read_cost_per_mtok": 0.0, "cache_write_cost_per_mtok": 6.0}, 0, 6),
    ],
)
def test_cache_price_defaults(
    kind: str, extra: dict[str, float], read: float, write: float
) -> None:
    cfg = ProviderConfig(
        name="p", kind=kind, model="m", input_cost_per_mtok=3.0, output_cost_per_mtok=15.0, **extra
    )
    assert cfg.cache_prices() == pytest.approx((read, write))
    cost = cfg.cost_usd(1_000_000, 0, cache_read_tokens=500_000, cache_write_tokens=250_000)
    assert cost == pytest.approx(250_000 * 3.0 / 1e6 + 0.5 * read + 0.25 * write)
    assert cfg.cost_usd(1_000_000, 1_000_000) == pytest.approx(18.0)  # no cache: as before


# --- refusals ------------------------------------------------------------------------------

REFUSAL = "I'm sorry, but I can't help with that."


def _refusal(kind: str) -> Reply:
    if kind == "openai":
        return Reply(refusal=REFUSAL, input_tokens=40, output_tokens=9)
    return Reply(text="", refusal="", input_tokens=40, output_tokens=9)


@pytest.mark.parametrize(("kind", "stream"), WIRES, ids=WIRE_IDS)
async def test_a_refusal_is_a_costed_answer_that_escalates_and_spares_the_breaker(
    kind: str, stream: bool
) -> None:
    async with _server(kind) as server:
        server.respond("m1", lambda request: _refusal(kind))
        server.respond("m2", lambda request: "Paris")
        # One failure would open p1's breaker; a refusal is no failure.
        cfg = _two_tiers(server.url, kind, stream=stream, breaker={"fail_max": 1})
        async with Cascade.from_dict(cfg) as c:
            for _ in range(2):
                result = await c.run(messages=USER)
                first = result.attempts[0]
                assert first.outcome == "rejected"
                assert [v.validator for v in first.verdicts] == ["refusal"]
                assert first.verdicts[0].reason.startswith("refused")
                assert first.completion is not None
                assert first.completion.refusal
                assert first.input_tokens == 40
                assert first.output_tokens == 9
                assert first.cost_usd == pytest.approx((40 * 1.0 + 9 * 2.0) / 1e6)
                assert result.text == "Paris"
                assert result.tier == 2
            assert c.breakers["p1"].state == "closed"
            assert c.breakers["p1"].fail_counter == 0
        assert [r.model for r in server.requests] == ["m1", "m2", "m1", "m2"]
    if kind == "openai":
        assert first.completion.refusal == REFUSAL
        assert first.completion.text == ""


@pytest.mark.parametrize(("kind", "stream"), WIRES, ids=WIRE_IDS)
async def test_a_tier_that_accepts_refusals_lets_its_validators_judge_them(
    kind: str, stream: bool
) -> None:
    async with _server(kind) as server:
        server.respond("m1", lambda request: _refusal(kind))
        prov = provider("p1", server.url, "m1", kind=kind, stream=stream)
        cfg = {"tiers": [{**tier("t1", prov), "accept_refusals": True}]}
        async with Cascade.from_dict(cfg) as c:
            result = await c.run(messages=USER)
        assert result.validated
        assert result.refusal is not None
        assert result.attempts[0].outcome == "accepted"
        # ... and a validator can still reject one: the text of a refusal is no JSON.
        cfg["tiers"][0]["validators"] = [JSON_SCHEMA]
        async with Cascade.from_dict(cfg) as c:
            result = await c.run(messages=USER)
        assert not result.validated
        assert result.refusal is not None
        assert result.attempts[0].verdicts[0].validator == "json_schema"


async def test_a_refusal_among_n_choices_is_an_answer(openai_server: FakeOpenAIServer) -> None:
    openai_server.script("m1", Reply(refusal=REFUSAL), "Paris")
    config = ProviderConfig(name="p", kind="openai", base_url=openai_server.url, model="m1")
    async with aiohttp.ClientSession() as session:
        chunks = await OpenAIProvider(config, session=session, api_key=None).complete_n(
            (Message(role="user", content="q"),), RequestOptions(), 2
        )
    assert [(c.text, c.refusal) for c in chunks] == [("", REFUSAL), ("Paris", None)]
    assert openai_server.requests[0].body["n"] == 2


# --- max_completion_tokens, default key variables, the prompt on stdin ---------------------


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_the_output_cap_goes_in_the_configured_field(
    openai_server: FakeOpenAIServer, field: str, stream: bool
) -> None:
    openai_server.script("m1", "Paris")
    prov = provider("p", openai_server.url, "m1", max_tokens=64, max_tokens_field=field)
    prov["stream"] = stream
    async with Cascade.from_dict({"tiers": [tier("t", prov)]}) as c:
        await c.run(messages=USER)
    body = openai_server.requests[-1].body
    other = {"max_tokens", "max_completion_tokens"} - {field}
    assert body[field] == 64
    assert not other & body.keys()


def test_max_tokens_field_is_checked() -> None:
    prov = provider("p", "http://127.0.0.1:1/v1", "m", max_tokens_field="max_new_tokens")
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict({"tiers": [tier("t", prov)]}, environ={})
    assert info.value.path == "tiers[0].providers[0].max_tokens_field"


@pytest.mark.parametrize(
    ("kind", "variable", "header", "sent"),
    [
        ("openai", "OPENAI_API_KEY", "authorization", "Bearer sk-from-default"),
        ("anthropic", "ANTHROPIC_API_KEY", "x-api-key", "sk-from-default"),
    ],
)
async def test_the_kinds_usual_key_variable_is_the_default(
    kind: str, variable: str, header: str, sent: str
) -> None:
    async with _server(kind) as server:
        server.default = Reply(text="Paris")
        prov = provider("p", server.url, "m", kind=kind)
        cfg = {"tiers": [tier("t", prov)]}
        # Set: sent. Unset: nothing sent and no error (a local server needs no key).
        async with Cascade.from_dict(cfg, environ={variable: "sk-from-default"}) as c:
            await c.run(messages=USER)
        async with Cascade.from_dict(cfg, environ={}) as c:
            await c.run(messages=USER)
        # api_key_env = "": no key even when the usual variable holds one.
        none = {"tiers": [tier("t", {**prov, "api_key_env": ""})]}
        async with Cascade.from_dict(none, environ={variable: "sk-from-default"}) as c:
            await c.run(messages=USER)
        assert [r.headers.get(header) for r in server.requests] == [sent, None, None]


def test_a_named_key_variable_must_still_be_set() -> None:
    prov = provider("p", "http://127.0.0.1:1/v1", "m", api_key_env="MY_KEY")
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict({"tiers": [tier("t", prov)]}, environ={"OPENAI_API_KEY": "sk-x"})
    assert info.value.path == "tiers[0].providers[0].api_key_env"
    assert "'MY_KEY' is not set" in info.value.message


def test_a_default_key_with_a_newline_is_a_config_error() -> None:
    prov = provider("p", "http://127.0.0.1:1/v1", "m")
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict({"tiers": [tier("t", prov)]}, environ={"OPENAI_API_KEY": "sk-x\r"})
    assert info.value.path == "tiers[0].providers[0].api_key_env"
    assert "by default for kind 'openai'" in info.value.message


async def _cli(*args: str, stdin: bytes | None = None) -> Any:
    # anyio.run_process, not subprocess.run: the fake servers answer from this loop
    return await anyio.run_process(
        [sys.executable, "-m", "cascade._cli", *args],
        input=stdin,
        check=False,
        env={"PATH": "/usr/bin:/bin", **_pythonpath()},
    )


def _pythonpath() -> dict[str, str]:
    import os

    return {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {}


async def test_cascade_run_reads_the_prompt_from_stdin(tmp_path: Path) -> None:
    async with FakeOpenAIServer() as server:
        server.script("m1", "Paris", "Paris")
        (tmp_path / "c.toml").write_text(
            f'[[tiers]]\nname = "t"\n[[tiers.providers]]\nname = "p"\nkind = "openai"\n'
            f'base_url = "{server.url}"\nmodel = "m1"\n'
        )
        config = str(tmp_path / "c.toml")
        prompt = "What is the capital\nof France? \u00e9\n"
        done = await _cli("run", "--config", config, "-", stdin=prompt.encode())
        assert done.returncode == 0, done.stderr.decode()
        assert done.stdout.decode().startswith("Paris")
        assert server.requests[-1].messages[-1]["content"] == prompt.rstrip("\n")
        too_big = await _cli("run", "--config", config, "-", stdin=b"x" * ((1 << 20) + 1))
        not_utf8 = await _cli("run", "--config", config, "-", stdin=b"caf\xe9")
        assert server.request_count == 1  # neither reached the server
    for bad, what in [(too_big, "over 1048576 bytes"), (not_utf8, "not UTF-8")]:
        err = bad.stderr.decode()
        assert bad.returncode == 2
        assert what in err
        assert "Traceback" not in err


async def test_the_demo_sends_no_key_from_the_environment() -> None:
    from cascade._demo import demo_config

    async with FakeOpenAIServer() as small, FakeAnthropicServer() as medium:
        small.default = Reply(text="{}")
        medium.default = Reply(text="{}")
        config = demo_config(small.url, small.url, medium.url, small.url)
        environ = {"OPENAI_API_KEY": "sk-real-key", "ANTHROPIC_API_KEY": "sk-ant-real"}
        async with Cascade.from_dict(config, environ=environ) as c:
            await c.run(messages=USER)
        sent = [*small.requests, *medium.requests]
        assert sent
        for request in sent:
            assert request.headers.get("authorization") is None
            assert request.headers.get("x-api-key") is None


async def test_a_refusal_cut_mid_stream_is_costed_for_what_arrived() -> None:
    async with FakeOpenAIServer() as refuser, FakeOpenAIServer() as other:
        refuser.default = Reply(
            refusal="I cannot help with that request, sorry." * 4, chunk_chars=40, fault="drop"
        )
        other.default = Reply(text="ok")
        cfg = {
            "tiers": [
                tier("a", provider("p", refuser.url, "m", stream=True,
                                   input_cost_per_mtok=0.0, output_cost_per_mtok=1e6)),
                tier("b", provider("q", other.url, "m")),
            ]
        }  # fmt: skip
        async with Cascade.from_dict(cfg) as c:
            result = await c.run(messages=USER)
    cut = result.attempts[0]
    assert cut.error_type == "ProviderConnectionError"
    assert cut.output_tokens == 10  # the 40 characters that arrived, ~4 a token
    assert cut.cost_usd == pytest.approx(10.0)
