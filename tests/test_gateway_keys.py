"""Gateway keys, per-key limits and daily budgets, in memory on a fake clock."""

from __future__ import annotations

import asyncio
import hashlib
import re
from typing import Any

import msgspec
import pytest
from multidict import CIMultiDict
from structlog.testing import capture_logs

from cascade import ConfigError
from cascade._config import _config_error
from cascade.gateway import (
    Admission,
    GatewayDenied,
    GatewayKeys,
    KeyEntry,
    KeyLimits,
    KeysConfig,
    api_key_from_headers,
    hash_key,
)
from cascade.testing import FakeClock

pytestmark = pytest.mark.anyio

KEY = "sk-gw-test-0123456789abcdef"
OTHER = "sk-gw-other-fedcba9876543210"
MIDNIGHT = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86400.0


def keys_for(
    *entries: KeyEntry,
    clock: FakeClock | None = None,
    epoch_s: float = MIDNIGHT + 3600,
    **config: Any,
) -> GatewayKeys:
    return GatewayKeys.from_config(
        KeysConfig(entries=list(entries), **config),
        clock=clock or FakeClock(),
        epoch_s=epoch_s,
        environ={},
    )


def entry(name: str = "team", key: str = KEY, **limits: Any) -> KeyEntry:
    return KeyEntry(name=name, sha256=hash_key(key), **limits)


async def denied(keys: GatewayKeys, api_key: str | None, **kw: Any) -> GatewayDenied:
    kw.setdefault("estimated_tokens", 10)
    with pytest.raises(GatewayDenied) as info:
        await keys.admit(api_key, **kw)
    return info.value


# -- keys ----------------------------------------------------------------------------------


async def test_known_key_is_admitted_and_unknown_or_missing_is_401() -> None:
    keys = keys_for(entry())
    admission = await keys.admit(KEY, estimated_tokens=10)
    assert admission.key_name == "team"
    unknown = await denied(keys, OTHER)
    assert unknown.status == 401
    assert unknown.code == "invalid_api_key"
    missing = await denied(keys, None)
    assert missing.status == 401
    assert missing.code == "missing_api_key"


async def test_env_key_is_hashed_and_its_raw_value_is_not_kept() -> None:
    config = KeysConfig(entries=[KeyEntry(name="ci", env="GW_KEY_CI")])
    keys = GatewayKeys.from_config(config, clock=FakeClock(), environ={"GW_KEY_CI": KEY})
    assert (await keys.admit(KEY, estimated_tokens=1)).key_name == "ci"
    # nothing reachable from the object holds the key (only its hash, HMAC-indexed)
    seen: set[int] = set()

    def walk(obj: object, depth: int = 0) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        assert obj != KEY
        assert obj != KEY.encode()
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(k, depth + 1)
                walk(v, depth + 1)
        elif isinstance(obj, list | tuple | set | frozenset):
            for v in obj:
                walk(v, depth + 1)
        for name in getattr(type(obj), "__slots__", ()):
            walk(getattr(obj, name, None), depth + 1)

    walk(keys)
    assert len(seen) > 10


def test_env_key_missing_or_malformed_is_a_config_error_naming_the_entry() -> None:
    config = KeysConfig(entries=[entry("a"), KeyEntry(name="b", env="GW_KEY_B")])
    with pytest.raises(ConfigError) as info:
        GatewayKeys.from_config(config, clock=FakeClock(), environ={})
    assert info.value.path == "gateway.keys.entries[1].env"
    with pytest.raises(ConfigError) as info:
        GatewayKeys.from_config(config, clock=FakeClock(), environ={"GW_KEY_B": "has space"})
    assert info.value.path == "gateway.keys.entries[1].env"
    assert "has space" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        GatewayKeys.from_config(config, clock=FakeClock(), environ={"GW_KEY_B": KEY})
    assert info.value.path == "gateway.keys.entries[1].env"
    assert "entries[0]" in info.value.message


class _Gateway(msgspec.Struct, forbid_unknown_fields=True):
    keys: KeysConfig | None = None


class _Top(msgspec.Struct, forbid_unknown_fields=True):
    gateway: _Gateway


def _error(toml: str) -> ConfigError:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.toml.decode(toml, type=_Top)
    return _config_error(info.value)


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        (
            '[[gateway.keys.entries]]\nname = "a"\nenv = "A"\n'
            '[[gateway.keys.entries]]\nname = "b"\nsha256 = "XYZ"\n',
            "gateway.keys.entries[1].sha256",
        ),
        ('[[gateway.keys.entries]]\nname = "a"\n', "gateway.keys.entries[0].sha256"),
        (
            '[[gateway.keys.entries]]\nname = "a"\nenv = "A"\n'
            '[[gateway.keys.entries]]\nname = "a"\nenv = "B"\n',
            "gateway.keys.entries[1].name",
        ),
        ('[[gateway.keys.entries]]\nname = "a b"\nenv = "A"\n', "gateway.keys.entries[0].name"),
        (
            '[[gateway.keys.entries]]\nname = "a"\nenv = "A"\nusd_per_day = -1\n',
            "gateway.keys.entries[0].usd_per_day",
        ),
        (
            "[gateway.keys.defaults]\nrequests_per_minute = inf\n"
            '[[gateway.keys.entries]]\nname = "a"\nenv = "A"\n',
            "gateway.keys.defaults.requests_per_minute",
        ),
        ("[gateway.keys]\nrequired = true\n", "gateway.keys.entries"),
        (
            '[[gateway.keys.entries]]\nname = "a"\nenv = "A"\nkey = "sk-raw"\n',
            "gateway.keys.entries[0].key",
        ),
    ],
)
def test_config_errors_name_the_path(toml: str, path: str) -> None:
    assert _error(toml).path == path


def test_keys_config_from_toml_with_defaults_and_overrides() -> None:
    digest = hash_key(KEY)
    top = msgspec.toml.decode(
        f"""
        [gateway.keys]
        required = false
        [gateway.keys.defaults]
        requests_per_minute = 60
        usd_per_day = 1.5
        [[gateway.keys.entries]]
        name = "team"
        sha256 = "{digest}"
        usd_per_day = 10
        routes = ["default"]
        """,
        type=_Top,
    )
    config = top.gateway.keys
    assert config is not None
    assert config.entries[0].usd_per_day == 10
    assert digest not in repr(config)
    assert repr(config) == "KeysConfig(required=False, keys=['team'])"


# -- headers -------------------------------------------------------------------------------


def test_key_from_bearer_or_x_api_key() -> None:
    assert api_key_from_headers(CIMultiDict({"Authorization": f"Bearer {KEY}"})) == KEY
    assert api_key_from_headers(CIMultiDict({"authorization": f"bearer  {KEY} "})) == KEY
    assert api_key_from_headers(CIMultiDict({"X-Api-Key": KEY})) == KEY
    both = CIMultiDict({"Authorization": f"Bearer {KEY}", "x-api-key": KEY})
    assert api_key_from_headers(both) == KEY
    assert api_key_from_headers(CIMultiDict()) is None


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": "Bearer " + "k" * 100_000},
        {"x-api-key": "k" * 600},
        {"x-api-key": ""},
        {"Authorization": "Bearer sk-\u00e9t\u00e9"},
        {"Authorization": "Bearer sk-\udcff"},
        {"x-api-key": "sk-\x00abc"},
        {"Authorization": f"Bearer {KEY}", "x-api-key": OTHER},
    ],
)
def test_hostile_headers_are_401_without_echoing_the_key(headers: dict[str, str]) -> None:
    with pytest.raises(GatewayDenied) as info:
        api_key_from_headers(CIMultiDict(headers))
    assert info.value.status == 401
    for value in headers.values():
        secret = value.removeprefix("Bearer ").removeprefix("Basic ")
        if len(secret) > 3:
            assert secret not in str(info.value)


async def test_admit_refuses_a_huge_or_non_ascii_key_without_hashing_it_all() -> None:
    keys = keys_for(entry())
    assert (await denied(keys, "k" * 1_000_000)).status == 401
    assert (await denied(keys, "sk-\udcff\u00e9")).status == 401


async def test_no_key_material_in_repr_str_or_logs() -> None:
    keys = keys_for(entry(requests_per_minute=1), entry("two", OTHER, usd_per_day=0.0))
    with capture_logs() as logs:
        admission = await keys.admit(KEY, estimated_tokens=5)
        await denied(keys, KEY)  # over its requests per minute
        await denied(keys, OTHER)  # over its (zero) budget
        await denied(keys, "sk-unknown-key-material")
        await keys.settle(admission, tokens=5, cost_usd=0.001)
    assert any(e.get("code") == "rate_limit_exceeded" for e in logs)
    text = " ".join(
        [repr(keys), str(keys), repr(admission), repr(keys._by_index), str(logs)]
        + [repr(k.limiter) for k in keys._by_index.values()]
        + [repr(k.budget) for k in keys._by_index.values()]
    )
    for secret in (KEY, OTHER, hash_key(KEY), hash_key(OTHER), "sk-unknown-key-material"):
        assert secret not in text
    assert re.search(r"[0-9a-f]{64}", text) is None


# -- routes and models ---------------------------------------------------------------------


async def test_route_and_model_not_allowed_is_403() -> None:
    keys = keys_for(entry(routes=["cheap"], models=["gpt-cheap", "any"]))
    await keys.admit(KEY, estimated_tokens=1, route="cheap", model="gpt-cheap")
    assert (await denied(keys, KEY, route="premium")).code == "route_not_allowed"
    assert (await denied(keys, KEY, route="cheap", model="gpt-5")).status == 403


async def test_defaults_apply_unless_the_key_sets_its_own() -> None:
    keys = keys_for(
        entry("a", KEY),
        entry("b", OTHER, requests_per_minute=3),
        defaults=KeyLimits(requests_per_minute=1),
    )
    await keys.admit(KEY, estimated_tokens=1)
    assert (await denied(keys, KEY)).status == 429
    for _ in range(3):
        await keys.admit(OTHER, estimated_tokens=1)
    assert (await denied(keys, OTHER)).status == 429


async def test_optional_keys_admit_anonymous_under_the_defaults() -> None:
    keys = keys_for(entry(), required=False, defaults=KeyLimits(requests_per_minute=2))
    first = await keys.admit(None, estimated_tokens=1)
    assert first.key_name is None
    await keys.admit(None, estimated_tokens=1)
    assert (await denied(keys, None)).code == "rate_limit_exceeded"
    assert (await denied(keys, OTHER)).status == 401  # a wrong key is still wrong


# -- per-minute limits ---------------------------------------------------------------------


async def test_requests_per_minute_refill_and_retry_after() -> None:
    clock = FakeClock()
    keys = keys_for(entry(requests_per_minute=6), clock=clock)
    for _ in range(6):
        await keys.admit(KEY, estimated_tokens=1)
    over = await denied(keys, KEY)
    assert over.status == 429
    assert over.retry_after_s == pytest.approx(10.0)  # one request refills every 10 s
    clock.advance(9.9)
    await denied(keys, KEY)
    clock.advance(0.1)
    await keys.admit(KEY, estimated_tokens=1)
    await denied(keys, KEY)
    clock.advance(60.0)  # a full minute: a full bucket, no more
    for _ in range(6):
        await keys.admit(KEY, estimated_tokens=1)
    await denied(keys, KEY)


async def test_tokens_per_minute_charges_the_estimate_then_settles_to_the_usage() -> None:
    clock = FakeClock()
    keys = keys_for(entry(tokens_per_minute=1000), clock=clock)
    admission = await keys.admit(KEY, estimated_tokens=900)
    over = await denied(keys, KEY, estimated_tokens=200)
    assert over.code == "rate_limit_exceeded"
    assert over.retry_after_s == pytest.approx(6.0)  # 100 tokens at 1000/min
    await keys.settle(admission, tokens=100, cost_usd=0.0)  # refunds 800
    await keys.admit(KEY, estimated_tokens=800)
    await keys.settle(admission, tokens=10_000, cost_usd=0.0)  # settled once only
    await denied(keys, KEY, estimated_tokens=200)


# -- daily budget --------------------------------------------------------------------------


async def test_budget_denies_once_spent_with_retry_after_to_utc_midnight() -> None:
    clock = FakeClock()
    keys = keys_for(entry(usd_per_day=1.0), clock=clock, epoch_s=MIDNIGHT + DAY - 3600)
    first = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.4)
    await keys.settle(first, tokens=1, cost_usd=0.7)
    second = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.2)
    await keys.settle(second, tokens=1, cost_usd=0.3)  # 1.0 spent: nothing left
    over = await denied(keys, KEY)
    assert over.status == 429
    assert over.code == "insufficient_quota"
    assert over.retry_after_s == pytest.approx(3600.0)
    assert keys.spent_today("team") == pytest.approx(1.0)
    clock.advance(3599.0)
    await denied(keys, KEY)
    clock.advance(1.0)  # the next UTC day
    assert keys.spent_today("team") == 0.0
    await keys.admit(KEY, estimated_tokens=1)


async def test_a_request_whose_client_left_is_settled_at_its_reservation() -> None:
    """The engine's cost of a call it cut off is an estimate the client can beat (a long
    answer, then leave): the key gate settles a cancelled request at what it reserved."""
    from cascade.gateway._key_gate import KeyGate

    gate = KeyGate(keys_for(entry(usd_per_day=1.0)))
    admitted = asyncio.Event()

    async def request(leave: bool) -> None:
        admission = await gate.keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.3)
        try:
            if leave:
                admitted.set()
                await asyncio.Event().wait()  # the client leaves while we wait
        finally:
            await gate.settle(admission, tokens=1, cost_usd=0.01)

    await request(leave=False)
    assert gate.keys.spent_today("team") == pytest.approx(0.01)  # answered: its cost
    task = asyncio.create_task(request(leave=True))
    await admitted.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert gate.keys.spent_today("team") == pytest.approx(0.31)  # left: its reservation


async def test_reservations_bound_concurrent_overshoot_to_one_estimate() -> None:
    keys = keys_for(entry(usd_per_day=1.0))
    outcomes = await asyncio.gather(
        *(keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.3) for _ in range(20)),
        return_exceptions=True,
    )
    admitted = [o for o in outcomes if isinstance(o, Admission)]
    refused = [o for o in outcomes if isinstance(o, GatewayDenied)]
    assert len(admitted) == 4  # 0, 0.3, 0.6, 0.9 < 1.0; the 4th takes it to 1.2
    assert {e.code for e in refused} == {"insufficient_quota"}
    assert len(refused) == 16
    for admission in admitted:  # each costs at most its estimate
        await keys.settle(admission, tokens=1, cost_usd=0.3)
    spent = keys.spent_today("team")
    assert spent == pytest.approx(1.2)
    assert spent is not None
    assert spent <= 1.0 + 0.3
    await denied(keys, KEY)


async def test_a_settled_request_that_cost_less_frees_its_reservation() -> None:
    keys = keys_for(entry(usd_per_day=1.0))
    big = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=5.0)
    await denied(keys, KEY)  # reserved past the budget
    await keys.settle(big, tokens=0, cost_usd=0.0)  # failed before any cost
    await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.5)


async def test_a_request_over_its_rate_limit_gives_back_its_reservation() -> None:
    keys = keys_for(entry(usd_per_day=1.0, requests_per_minute=1))
    await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.1)
    for _ in range(20):
        assert (await denied(keys, KEY, estimated_cost_usd=0.5)).code == "rate_limit_exceeded"
    assert keys._by_index[keys._index(hashlib.sha256(KEY.encode()).digest())].budget is not None
    budget = next(iter(keys._by_index.values())).budget
    assert budget is not None
    assert budget._reserved == pytest.approx(0.1)


async def test_settlement_of_yesterdays_request_does_not_charge_today() -> None:
    clock = FakeClock()
    keys = keys_for(entry(usd_per_day=1.0), clock=clock, epoch_s=MIDNIGHT - 10)
    late = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=0.5)
    clock.advance(20)
    await keys.settle(late, tokens=1, cost_usd=0.9)
    assert keys.spent_today("team") == 0.0


@pytest.mark.parametrize("cost", [float("nan"), float("inf"), -1.0, 1e300])
async def test_hostile_costs_are_bounded(cost: float) -> None:
    keys = keys_for(entry(usd_per_day=1.0))
    admission = await keys.admit(KEY, estimated_tokens=-5, estimated_cost_usd=cost)
    await keys.settle(admission, tokens=-1, cost_usd=cost)
    spent = keys.spent_today("team")
    assert spent is not None
    assert 0.0 <= spent <= 1e15


async def test_a_budget_held_by_requests_in_flight_is_not_spent_for_the_day() -> None:
    """Refused while the day's budget is only *reserved* by requests still running, a
    client is told to retry soon, not at midnight with ``x-should-retry: false``: those
    requests may cost far less than they hold."""
    keys = keys_for(entry(usd_per_day=1.0), epoch_s=MIDNIGHT + 3600)
    big = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=5.0)
    held = await denied(keys, KEY, estimated_cost_usd=0.01)
    assert held.status == 429
    assert held.retry_after_s is not None
    assert 0 < held.retry_after_s <= 60
    assert held.should_retry is not False
    assert "in flight" in held.message
    await keys.settle(big, tokens=1, cost_usd=0.01)
    done = await keys.admit(KEY, estimated_tokens=1, estimated_cost_usd=2.0)
    await keys.settle(done, tokens=1, cost_usd=1.5)  # now spent for the day
    spent = await denied(keys, KEY)
    assert spent.retry_after_s == pytest.approx(DAY - 3600)
    assert spent.should_retry is False


@pytest.mark.parametrize("wait", [1e12, float("inf"), float("nan"), -5.0, 0.0, 1e-9])
def test_retry_after_is_a_whole_number_of_seconds_from_1_to_a_day(wait: float) -> None:
    """Whatever wait a 429 carries (a limit of one request a century, a bug's inf or
    NaN), ``Retry-After`` is an integer from 1 to 86400 and rendering it never raises."""
    header = GatewayDenied(
        status=429, code="rate_limit_exceeded", message="m", retry_after_s=wait
    ).retry_after_header
    assert header is not None
    assert header.isdigit()
    assert 1 <= int(header) <= 86400


async def test_a_tiny_per_minute_limit_gives_a_bounded_retry_after() -> None:
    keys = keys_for(entry(requests_per_minute=1e-9))
    await keys.admit(KEY, estimated_tokens=1)
    over = await denied(keys, KEY)
    assert over.retry_after_header is not None
    assert 1 <= int(over.retry_after_header) <= 86400
