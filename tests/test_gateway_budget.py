"""Gateway keys end to end: the official ``openai`` SDK against the gateway on loopback,
a fake provider counting what reaches it; and two ``cascade serve`` processes sharing
one redis-server (gated as ``test_shared_redis.py`` is)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import openai
import pytest
from structlog.testing import capture_logs

from cascade.gateway import hash_key
from cascade.testing import FakeOpenAIServer, Reply

from . import test_shared_redis as _redis
from .gateway import serving, write_config
from .helpers import USER, provider, tier

pytestmark = pytest.mark.anyio

KEY = "sk-gw-e2e-0123456789abcdef"
OTHER = "sk-gw-e2e-fedcba9876543210"

redis_bin = _redis.redis_bin
redis_url = _redis.redis_url


@pytest.fixture
def fleet(openai_server: FakeOpenAIServer) -> FakeOpenAIServer:
    openai_server.default = '{"answer": 42}'
    return openai_server


def config(url: str, *entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    limits = extra.pop("limits", None)
    gateway = {"keys": {"entries": list(entries)}, **extra.pop("gateway", {})}
    return {
        "tiers": [tier("small", provider("p1", url, "small-model", limits=limits))],
        "gateway": gateway,
        **extra,
    }


def key(name: str, raw: str, **limits: Any) -> dict[str, Any]:
    return {"name": name, "sha256": hash_key(raw), **limits}


def client(base_url: str, api_key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)


async def ask(sdk: openai.AsyncOpenAI, **kw: Any) -> Any:
    return await sdk.chat.completions.create(model="cascade", messages=USER, **kw)


async def test_a_key_with_no_budget_left_gets_429_and_the_provider_sees_nothing(
    tmp_path: Path, fleet: FakeOpenAIServer
) -> None:
    cfg = config(fleet.url, key("zero", KEY, usd_per_day=0.0))
    async with serving(write_config(tmp_path / "c.toml", cfg)) as gw:
        sdk = client(gw.base_url, KEY)
        try:
            for stream in (False, True):
                with pytest.raises(openai.RateLimitError) as info:
                    await ask(sdk, stream=stream)
                assert info.value.status_code == 429
                assert info.value.code == "insufficient_quota"
                retry = int(info.value.response.headers["retry-after"])
                assert 1 <= retry <= 86400
                assert info.value.response.headers["x-should-retry"] == "false"
        finally:
            await sdk.close()
        # an SDK left to retry on its own (2 retries by default) asks once: it obeys the header
        with capture_logs() as logs:
            async with openai.AsyncOpenAI(base_url=gw.base_url, api_key=KEY) as retrying:
                with pytest.raises(openai.RateLimitError):
                    await ask(retrying)
        assert [e["status"] for e in logs if e["event"] == "gateway.request"] == [429]
    assert fleet.request_count == 0


async def test_a_key_that_spent_its_budget_is_refused_before_the_provider(
    tmp_path: Path, fleet: FakeOpenAIServer
) -> None:
    # any request costs more than a billionth of a dollar: the first spends the day's budget
    cfg = config(fleet.url, key("team", KEY, usd_per_day=1e-9))
    with capture_logs() as logs:
        async with serving(write_config(tmp_path / "c.toml", cfg)) as gw:
            sdk = client(gw.base_url, KEY)
            try:
                first = await sdk.chat.completions.with_raw_response.create(
                    model="cascade", messages=USER
                )
                assert first.status_code == 200
                assert float(first.headers["x-cascade-cost-usd"]) > 1e-9
                assert fleet.request_count == 1
                for _ in range(3):
                    with pytest.raises(openai.RateLimitError) as info:
                        await ask(sdk)
                    assert info.value.code == "insufficient_quota"
                    assert fleet.request_count == 1
                spent = gw.gateway.gate.keys.spent_today("team")  # type: ignore[attr-defined]
                assert spent > 1e-9
            finally:
                await sdk.close()
    assert KEY not in str(logs)
    assert hash_key(KEY) not in str(logs)


async def test_unknown_key_401_route_403_and_rpm_429_through_the_sdk(
    tmp_path: Path, fleet: FakeOpenAIServer
) -> None:
    cfg = config(
        fleet.url,
        key("team", KEY, requests_per_minute=2),
        key("other", OTHER, routes=["premium"]),
    )
    async with serving(write_config(tmp_path / "c.toml", cfg)) as gw:
        good, other, bad = client(gw.base_url, KEY), client(gw.base_url, OTHER), None
        bad = client(gw.base_url, "sk-not-a-key-we-know")
        try:
            with pytest.raises(openai.AuthenticationError) as auth:
                await ask(bad)
            assert auth.value.status_code == 401
            assert "sk-not-a-key-we-know" not in auth.value.response.text
            with pytest.raises(openai.PermissionDeniedError) as perm:
                await ask(other)
            assert perm.value.code == "route_not_allowed"
            await ask(good)
            await ask(good)
            with pytest.raises(openai.RateLimitError) as rate:
                await ask(good)
            assert rate.value.code == "rate_limit_exceeded"
            assert rate.value.response.headers["retry-after"] in {"30", "31"}
        finally:
            for sdk in (good, other, bad):
                await sdk.close()
        async with aiohttp.ClientSession() as session:
            for headers in (
                {},
                {"Authorization": "Bearer "},
                {"Authorization": "Bearer " + "k" * 5_000},
                {"Authorization": "Bearer sk-\u00e9t\u00e9"},
                {"x-api-key": "sk-unknown"},  # either header carries the key, on every route
                {"Authorization": "Basic abc"},
            ):
                async with session.post(
                    f"{gw.base_url}/chat/completions",
                    json={"model": "cascade", "messages": USER},
                    headers=headers,
                ) as response:
                    assert response.status == 401
                    body = await response.json()
                    assert body["error"]["type"] == "authentication_error"
    assert fleet.request_count == 2


async def test_an_unknown_model_without_a_key_is_401_not_404(
    tmp_path: Path, fleet: FakeOpenAIServer
) -> None:
    cfg = config(
        fleet.url,
        key("team", KEY),
        gateway={"routes": [{"name": "only"}]},
    )
    async with serving(write_config(tmp_path / "c.toml", cfg)) as gw:
        anonymous, good = client(gw.base_url, "sk-wrong-wrong-wrong"), client(gw.base_url, KEY)
        try:
            with pytest.raises(openai.AuthenticationError):
                await anonymous.chat.completions.create(model="secret-route", messages=USER)
            with pytest.raises(openai.NotFoundError):
                await good.chat.completions.create(model="secret-route", messages=USER)
        finally:
            await anonymous.close()
            await good.close()


async def test_models_ask_for_a_valid_key_as_the_other_v1_routes_and_probes_do_not(
    tmp_path: Path, fleet: FakeOpenAIServer
) -> None:
    """With gateway keys, ``GET /v1/models`` (and one model) is a 401 without a valid key,
    as OpenAI's is; ``/healthz`` and ``/readyz`` are probes: no key."""
    cfg = config(fleet.url, key("team", KEY), gateway={"routes": [{"name": "only"}]})
    async with serving(write_config(tmp_path / "c.toml", cfg)) as gw:
        good, bad = client(gw.base_url, KEY), client(gw.base_url, "sk-wrong-wrong-wrong")
        try:
            assert [m.id for m in (await good.models.list()).data] == ["only"]
            assert (await good.models.retrieve("only")).id == "only"
            with pytest.raises(openai.NotFoundError):
                await good.models.retrieve("secret-route")
            with pytest.raises(openai.AuthenticationError) as listed:
                await bad.models.list()
            assert listed.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                await bad.models.retrieve("only")
            with pytest.raises(openai.AuthenticationError):
                await bad.models.retrieve("secret-route")  # 401 first: no route names leak
        finally:
            await good.close()
            await bad.close()
        root = gw.base_url.removesuffix("/v1")
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{gw.base_url}/models") as response:
                assert response.status == 401
                body = await response.json()
                assert body["error"]["code"] == "missing_api_key"
            for probe in ("/healthz", "/readyz"):
                async with session.get(root + probe) as response:
                    assert response.status == 200
    assert fleet.request_count == 0


async def test_a_client_that_leaves_is_settled_at_its_reservation(
    tmp_path: Path, fleet: FakeOpenAIServer
) -> None:
    """The provider (not streaming) goes on generating, and billing, the answer the
    client left: the key pays what it was admitted on, its hold settled (not lingering),
    and its budget is spent, so the next request is refused without reaching the fleet."""
    from cascade.gateway._key_gate import KeyGate

    # a request reserves its route's dearest price (~$0.0005 here), more than the budget
    cfg = config(fleet.url, key("team", KEY, usd_per_day=0.0003))
    fleet.default = Reply(fault="hang")
    async with serving(write_config(tmp_path / "c.toml", cfg)) as gw:
        gate = gw.gateway.gate
        assert isinstance(gate, KeyGate)
        impatient = openai.AsyncOpenAI(
            base_url=gw.base_url, api_key=KEY, max_retries=0, timeout=0.5
        )
        sdk = client(gw.base_url, KEY)
        try:
            hung = asyncio.ensure_future(ask(impatient))
            await _until(lambda: fleet.active_requests == 1)
            with pytest.raises(openai.RateLimitError):  # the hung request holds the budget
                await ask(sdk)
            with pytest.raises(openai.APITimeoutError):
                await hung
            await _until(lambda: fleet.active_requests == 0)
            await _until(lambda: gw.gateway.in_flight == 0)
            spent = gate.keys.spent_today("team")
            assert spent is not None
            assert spent > 0.0003  # the reservation, more than the day's budget
            fleet.default = '{"answer": 42}'
            with pytest.raises(openai.RateLimitError):  # spent: no hold lingers, no call
                await ask(sdk)
        finally:
            await impatient.close()
            await sdk.close()
    assert fleet.request_count == 1


async def _until(check: Any, *, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- two `cascade serve` processes on one Redis ---------------------------------------------


class Served:
    """A ``cascade serve`` child process on a free loopback port."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self.log_path = log_path
        self.log = log_path.open("wb")
        code = "from cascade._cli import main; raise SystemExit(main())"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--config", str(config_path), "--port", "0"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        )
        self.port = self._wait_listening()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def _wait_listening(self) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for line in self.log_path.read_text(errors="replace").splitlines():
                if '"gateway.listening"' in line:
                    return int(json.loads(line)["port"])
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"cascade serve did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()


@pytest.fixture
def two_gateways(
    tmp_path: Path, redis_url: str, fleet: FakeOpenAIServer
) -> Iterator[tuple[Served, Served]]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    cfg = config(
        fleet.url,
        key("budget", KEY, usd_per_day=1e-9),
        key("quota", OTHER),
        limits={"requests_per_minute": 3},
        deadline_s=2.0,
        shared={"redis_url": redis_url, "key_prefix": prefix, "timeout_s": _redis.UP_TIMEOUT_S},
    )
    path = write_config(tmp_path / "c.toml", cfg)
    one = Served(path, tmp_path / "one.log")
    try:
        two = Served(path, tmp_path / "two.log")
    except BaseException:
        one.stop()
        raise
    try:
        yield one, two
    finally:
        one.stop()
        two.stop()
    for log in (tmp_path / "one.log", tmp_path / "two.log"):
        text = log.read_text(errors="replace")
        assert KEY not in text
        assert OTHER not in text


async def test_two_gateway_processes_keep_one_budget_and_one_provider_quota(
    two_gateways: tuple[Served, Served], fleet: FakeOpenAIServer
) -> None:
    one, two = two_gateways
    started = time.monotonic()
    sdks = [client(g.base_url, api_key) for g in (one, two) for api_key in (KEY, OTHER)]
    budget_one, quota_one, budget_two, quota_two = sdks
    try:
        # one key's daily budget: spent through the first process, refused by the second
        await ask(budget_one)
        assert fleet.request_count == 1
        with pytest.raises(openai.RateLimitError) as info:
            await ask(budget_two)
        assert info.value.code == "insufficient_quota"
        assert fleet.request_count == 1
        # one provider's quota (3 requests a minute, one used): shared by both processes
        statuses = []
        for sdk in (quota_one, quota_two) * 4:
            try:
                await ask(sdk)
                statuses.append(200)
            except openai.APIStatusError as exc:
                statuses.append(exc.status_code)
    finally:
        for sdk in sdks:
            await sdk.close()
    refilled = int((time.monotonic() - started) // 20)  # 3 a minute: one more per 20 s
    assert fleet.request_count <= 3 + refilled
    assert statuses.count(200) == fleet.request_count - 1
    assert statuses.count(200) >= 2  # the quota was there to use
    assert set(statuses) - {200} <= {429, 502}


async def test_a_reload_revokes_a_removed_key_and_keeps_a_changed_limit_for_a_restart(
    tmp_path: Path, fleet: FakeOpenAIServer
) -> None:
    """A SIGHUP after a key was removed from the file (revoked) revokes it at once; a
    key whose limits changed keeps those it was built with, and the reload says the keys
    need a restart, naming no key nor hash."""
    from cascade.gateway._reload import reload_config as _reload

    path = write_config(
        tmp_path / "c.toml", config(fleet.url, key("team", KEY), key("gone", OTHER))
    )
    async with serving(path) as gw:
        write_config(path, config(fleet.url, key("team", KEY)))
        with capture_logs() as logs:
            await _reload(gw.gateway, str(path))
        assert [e["event"] for e in logs] == ["gateway.keys_reloaded", "gateway.reloaded"]
        assert logs[0]["revoked"] == ["gone"]
        assert hash_key(OTHER) not in str(logs)
        sdk = client(gw.base_url, OTHER)
        try:
            with pytest.raises(openai.AuthenticationError):
                await ask(sdk)
        finally:
            await sdk.close()
        with capture_logs() as logs:  # the same file again: nothing changes
            await _reload(gw.gateway, str(path))
        assert [e["event"] for e in logs] == ["gateway.reloaded"]
        with capture_logs() as logs:  # a limit changed: kept until a restart
            write_config(path, config(fleet.url, key("team", KEY, usd_per_day=1.0)))
            await _reload(gw.gateway, str(path))
        warned = [e for e in logs if e["log_level"] == "warning"]
        assert [e["event"] for e in warned] == ["gateway.reload_kept"]
        assert warned[0]["fields"] == ["keys"]
        assert KEY not in str(logs)
        assert hash_key(KEY) not in str(logs)


async def test_a_sampling_tier_keeps_the_day_within_one_reservation_of_the_budget(
    tmp_path: Path, fleet: FakeOpenAIServer
) -> None:
    from cascade.gateway import load_gateway
    from cascade.gateway._key_gate import KeyGate

    class Recording(KeyGate):
        reserved: ClassVar[list[float]] = []

        async def admit(self, *args: Any, **kw: Any) -> Any:
            admission = await super().admit(*args, **kw)
            self.reserved.append(admission.reserved_usd)
            return admission

    sampled = tier(
        "small",
        provider("p1", fleet.url, "small-model", batch_samples=False),
        validators=[{"name": "self_consistency", "samples": 5, "min_agreement": 1.0}],
    )
    budget = 1e-4
    cfg = {
        "tiers": [sampled],
        "gateway": {"keys": {"entries": [key("team", KEY, usd_per_day=budget)]}},
    }
    path = write_config(tmp_path / "c.toml", cfg)
    loaded = load_gateway(path)
    assert loaded.gateway.keys is not None
    gate = Recording.from_config(loaded.gateway.keys, loaded.config)
    assert isinstance(gate, Recording)
    async with serving(path, gate=gate) as gw:
        sdk = client(gw.base_url, KEY)
        try:
            await asyncio.gather(
                *(ask(sdk, max_tokens=4) for _ in range(10)), return_exceptions=True
            )
        finally:
            await sdk.close()
        spent = gate.keys.spent_today("team")
        assert gate.reserved
        assert spent is not None
        assert spent <= budget + max(gate.reserved)


def test_a_reservation_counts_every_call_a_tier_may_pay_for(tmp_path: Path) -> None:
    """One call per tier, times self_consistency's samples, twice when the tier hedges."""
    from types import SimpleNamespace

    from cascade import Message, RequestOptions
    from cascade._types import estimate_prompt_tokens
    from cascade.gateway import load_gateway
    from cascade.gateway._key_gate import max_cost_usd
    from cascade.gateway._routes import build_generation

    url = "http://127.0.0.1:9/v1"
    price = {"input_cost_per_mtok": 1.0, "output_cost_per_mtok": 2.0}
    plain = tier("plain", provider("a", url, "m", **price))
    sampled = tier(
        "sampled",
        provider("b", url, "m", **price),
        validators=[{"name": "self_consistency", "samples": 5, "min_agreement": 0.6}],
    )
    hedged = {
        **tier("hedged", provider("c", url, "m", **price), provider("d", url, "m", **price)),
        "hedge": {"after_s": 1.0},
    }
    # a hedge goes to a sibling: with no sibling, one call
    alone = {**tier("alone", provider("e", url, "m", **price)), "hedge": {"after_s": 1.0}}
    path = write_config(tmp_path / "c.toml", {"tiers": [plain, sampled, hedged, alone]})
    route = build_generation(load_gateway(path)).routes[0]
    request = SimpleNamespace(
        messages=(Message(role="user", content="x" * 400),),
        options=RequestOptions(max_tokens=100),
    )
    prompt = estimate_prompt_tokens(request.messages)
    one = route.cascade.config.tiers[0].providers[0].cost_usd(prompt, 100)
    assert max_cost_usd(route, request) == pytest.approx(one * (1 + 5 + 2 + 1))  # type: ignore[arg-type]


async def test_a_reload_that_changes_the_keys_redis_says_it_needs_a_restart(
    tmp_path: Path, fleet: FakeOpenAIServer, redis_url: str
) -> None:
    """The keys' counters live in the [shared] Redis read at start: a reload that points
    [shared] elsewhere moves the routes' breakers and limits there, but not the keys'
    budgets, and must say so rather than pass for done."""
    from cascade.gateway._reload import reload_config as _reload

    def shared(prefix: str) -> dict[str, Any]:
        return {"redis_url": redis_url, "key_prefix": prefix}

    prefix = f"cascade-test-{uuid.uuid4().hex[:8]}"
    path = write_config(
        tmp_path / "c.toml", config(fleet.url, key("team", KEY), shared=shared(prefix))
    )
    async with serving(path) as gw:
        write_config(path, config(fleet.url, key("team", KEY), shared=shared(prefix + "-b")))
        with capture_logs() as logs:
            await _reload(gw.gateway, str(path))
        warned = [e for e in logs if e["event"] == "gateway.reload_kept"]
        assert [e["fields"] for e in warned] == [["shared"]]
