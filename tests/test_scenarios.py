"""The scenario presets of cascade.testing, each played over loopback in both wire formats
and under two retry policies, as a user would run them against their own config."""

from __future__ import annotations

from typing import Any

import pytest

from cascade import ConfigError
from cascade.testing import (
    SCENARIOS,
    Expected,
    Reply,
    Scenario,
    ScenarioFailed,
    Stage,
    Via,
    run_scenario,
)

from .helpers import JSON_SCHEMA, provider, tier

pytestmark = pytest.mark.anyio

NOWHERE = "http://127.0.0.1:9/v1"  # replaced by the fake servers' URLs: never called


def user_config(kind: str, fallback_kind: str, attempts: int) -> dict[str, Any]:
    """A config shaped as a user's: a third provider, a second tier, prices, a key."""
    retry = {"attempts": attempts, "base_s": 0.05, "max_s": 5.0}
    return {
        "tiers": [
            tier(
                "small",
                provider("gpt", NOWHERE, "gpt-small", kind=kind, retry=retry, api_key_env="NOPE"),
                provider("claude", NOWHERE, "claude-small", kind=fallback_kind),
                provider("other", NOWHERE, "other", kind=kind),
                validators=[JSON_SCHEMA],
            ),
            tier("big", provider("huge", NOWHERE, "huge", kind=kind)),
        ]
    }


@pytest.mark.parametrize("via", ["run", "buffered", "speculative"])
@pytest.mark.parametrize("attempts", [1, 2])
@pytest.mark.parametrize(
    ("kind", "fallback_kind"),
    [("openai", "openai"), ("anthropic", "anthropic"), ("openai", "anthropic")],
)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_every_preset_holds_for_a_sane_config(
    name: str, kind: str, fallback_kind: str, attempts: int, via: Via
) -> None:
    config = user_config(kind, fallback_kind, attempts)
    await run_scenario(SCENARIOS[name], config, primary="gpt", fallback="claude", via=via)


def test_presets_cover_the_issue_list() -> None:
    assert set(SCENARIOS) >= {
        "rate_limited_retry_after",
        "rate_limited",
        "server_error_once",
        "unavailable",
        "reset_before_headers",
        "silent_provider",
        "slow_first_token",
        "stream_cut",
        "stall",
        "malformed_chunk",
        "no_done",
        "context_length_exceeded",
        "content_filter",
        "prefill_rejected",
        "flapping_primary",
        "failover_accounting",
    }
    assert all(s.description for s in SCENARIOS.values())


async def test_a_config_that_routes_around_the_content_filter_is_checked_for_that() -> None:
    config = user_config("openai", "openai", 1)
    config["tiers"][0]["providers"][0]["retry"]["on_error"] = {"content_filter": "failover"}
    await run_scenario(SCENARIOS["content_filter"], config, primary="gpt", fallback="claude")


async def test_a_config_that_retries_timeouts_is_checked_for_that() -> None:
    config = user_config("anthropic", "openai", 2)
    config["tiers"][0]["providers"][0]["retry"]["on_error"] = {"timeout": "retry"}
    await run_scenario(SCENARIOS["silent_provider"], config, primary="gpt", fallback="claude")


async def test_a_difference_fails_the_scenario() -> None:
    async def expects_the_primary(stage: Stage) -> None:
        stage.primary.script(Reply(status=503))
        stage.fallback.script(stage.answer)
        got = await stage.run()
        stage.check(got, Expected(answered_by="gpt", attempts=(("gpt", None),)))

    wrong = Scenario(
        name="wrong", description="expects what does not happen", play=expects_the_primary
    )
    with pytest.raises(ScenarioFailed, match="expected gpt to answer, got claude"):
        await run_scenario(
            wrong, user_config("openai", "openai", 1), primary="gpt", fallback="claude"
        )


async def test_an_unknown_provider_is_named() -> None:
    with pytest.raises(Exception, match="no provider named 'gemini'"):
        await run_scenario(
            SCENARIOS["unavailable"],
            user_config("openai", "openai", 1),
            primary="gemini",
            fallback="claude",
        )


async def test_a_bad_config_is_a_config_error() -> None:
    config = user_config("openai", "openai", 1)
    config["tiers"][0]["providers"][0]["retry"]["on_error"] = {"timeout": "later"}
    with pytest.raises(ConfigError, match=r"on_error\.timeout"):
        await run_scenario(SCENARIOS["unavailable"], config, primary="gpt", fallback="claude")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", ["silent_provider", "slow_first_token", "stall"])
async def test_a_silent_preset_takes_no_real_timeout_s(name: str) -> None:
    # A long timeout_s runs on the scenario's fake clock: the short first-token and idle
    # timeouts fire when the run goes quiet, not timeout_s of real time later.
    config = user_config("openai", "anthropic", 1)
    config["tiers"][0]["providers"][0]["timeout_s"] = 120
    await run_scenario(SCENARIOS[name], config, primary="gpt", fallback="claude")
