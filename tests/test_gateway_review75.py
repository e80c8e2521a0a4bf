"""helper-75's review of the reload's keys, the retired cascades' wait, streamed refusals
and the models named on stream chunks: the official SDKs against ``cascade serve`` on
loopback, and the keys' counters in memory and in a real redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from cascade.gateway import GatewayDenied, GatewayKeys, KeyEntry, KeysConfig, hash_key
from cascade.gateway._keys_config import resolved_keys
from cascade.resilience.shared import SharedState
from cascade.testing import FakeClock, FakeOpenAIServer, Reply

from . import test_shared_redis as _redis
from .gateway import serving, write_config
from .helpers import provider, tier
from .test_shared_redis import _prefix

pytestmark = pytest.mark.anyio

redis_bin = _redis.redis_bin
redis_url = _redis.redis_url
redis_server = _redis.redis_server

HI = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]
GOOD = '{"answer": 42}'
TEAM, OTHER = "sk-h75-team-0123456789", "sk-h75-other-0123456789"
MIDNIGHT = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def keyed(url: str, *entries: tuple[str, str], **limits: Any) -> dict[str, Any]:
    keys = [{"name": n, "sha256": hash_key(raw), **limits} for n, raw in entries]
    return {
        "tiers": [tier("t", provider("a", url, "m1"))],
        "gateway": {"keys": {"entries": keys}},
    }


# -- a key removed, then listed again ----------------------------------------------------


async def test_a_key_removed_then_listed_again_keeps_its_day_and_minute(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A key taken out of the file (a slip, or revoked for a while) and put back by a
    later reload is the same key: its day's budget and its requests per minute go on
    where they were, as a rotation's do (and as they do in a shared Redis, by name). They
    started afresh: two SIGHUPs gave a tenant a new day's budget."""
    from cascade.gateway._reload import reload_config as _reload

    openai_server.default = GOOD
    limits = {"requests_per_minute": 2}
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url, ("team", TEAM), **limits))
    async with (
        serving(path) as g,
        openai.AsyncOpenAI(base_url=g.base_url, api_key=TEAM, max_retries=0) as sdk,
    ):
        for _ in range(2):
            await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError):
            await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        write_config(path, keyed(openai_server.url, ("other", OTHER), **limits))
        await _reload(g.gateway, str(path))
        with pytest.raises(openai.AuthenticationError):
            await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        write_config(path, keyed(openai_server.url, ("team", TEAM), **limits))
        await _reload(g.gateway, str(path))
        with pytest.raises(openai.RateLimitError) as denied:
            await sdk.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        assert denied.value.code == "rate_limit_exceeded"
    assert openai_server.request_count == 2


def _config(*entries: tuple[str, str], **limits: Any) -> KeysConfig:
    return KeysConfig(
        entries=[KeyEntry(name=n, sha256=hash_key(raw), **limits) for n, raw in entries]
    )


@pytest.mark.parametrize("how", ["listed_again", "rotated"])
@pytest.mark.parametrize("shared", [False, True], ids=["memory", "redis"])
async def test_a_key_listed_again_or_rotated_keeps_its_in_flight_minute_and_day(
    shared: bool, how: str, request: pytest.FixtureRequest
) -> None:
    """Removed and listed again (two reloads), or rotated (one), while one of its
    requests is under way: that request still counts against its ``max_in_flight``, the
    minute's requests and the day's spend and reservation still count (in memory as in
    Redis); the old key of a rotation is refused. Listed again, they started afresh."""
    state = None
    if shared:
        url = request.getfixturevalue("redis_url")
        state = SharedState(redis_url=url, key_prefix=_prefix(), timeout_s=2.0)
        await state.open()
    try:
        limits = {"usd_per_day": 1.0, "max_in_flight": 1, "requests_per_minute": 3}
        start = _config(("team", TEAM), **limits)
        keys = GatewayKeys.from_config(
            start, clock=FakeClock(), shared=state, epoch_s=MIDNIGHT + 3600
        )
        spent = await keys.admit(TEAM, estimated_tokens=1, estimated_cost_usd=0.6)
        await keys.settle(spent, tokens=1, cost_usd=0.6)
        held = keys.enter(TEAM)  # under way, holding the rest of the day
        holding = await keys.admit(TEAM, estimated_tokens=1, estimated_cost_usd=0.4)
        new = TEAM
        if how == "rotated":
            new = "sk-h75-team-rotated-0123456789"
            rotated = _config(("team", new), **limits)
            assert keys.reload(rotated, resolved_keys(rotated)).rotated == ["team"]
            with pytest.raises(GatewayDenied) as old:
                keys.enter(TEAM)
            assert old.value.status == 401
        else:
            removed = _config(("other", OTHER), **limits)
            assert keys.reload(removed, resolved_keys(removed)).revoked == ["team"]
            changes = keys.reload(start, resolved_keys(start))
            assert (changes.added, changes.kept, changes.settings_kept) == (["team"], [], False)
        with pytest.raises(GatewayDenied) as busy:
            keys.enter(new)
        assert busy.value.code == "key_busy"
        with pytest.raises(GatewayDenied) as spent_up:
            await keys.admit(new, estimated_tokens=1, estimated_cost_usd=0.01)
        assert spent_up.value.code == "insufficient_quota"
        held.leave()
        await keys.settle(holding, tokens=1, cost_usd=0.3)
        if state is not None:
            await state.flush()  # (a settlement goes to Redis in the background)
        keys.enter(new).leave()
        third = await keys.admit(new, estimated_tokens=1)  # the minute's third request
        await keys.settle(third, tokens=1, cost_usd=0.0)
        with pytest.raises(GatewayDenied) as minute:
            await keys.admit(new, estimated_tokens=1)
        assert minute.value.code == "rate_limit_exceeded"
        assert keys.spent_today("team") == pytest.approx(0.9)
    finally:
        if state is not None:
            await asyncio.wait_for(state.aclose(), 10)


async def test_a_revoked_keys_settlement_made_while_redis_was_down_still_reaches_it(
    redis_server: Any,
) -> None:
    """A request of a key the reload revoked settles while Redis is down: what it spent
    waits in memory, and goes to Redis with the gate's last ``send_unsent()`` (at
    shutdown) as a listed key's does. It stayed behind: the other replicas, where the key
    may still be listed, never counted that spend, and its reservation stayed held."""
    from .test_gateway_keys_redis import _blip, _until_available, quick_syncing

    prefix = _prefix()
    # (a 0.2 s timeout only for _blip's call to the paused Redis: a loop stall must not
    # take either state down once it is back, nor b's poll while it is paused)
    a, b = (quick_syncing(redis_server.url, prefix) for _ in range(2))
    async with a, b:
        start = _config(("team", TEAM), usd_per_day=1.0)
        one, two = (
            GatewayKeys.from_config(start, clock=FakeClock(), shared=s, epoch_s=MIDNIGHT + 3600)
            for s in (a, b)
        )
        under_way = await one.admit(TEAM, estimated_tokens=1, estimated_cost_usd=0.1)
        removed = _config(("other", OTHER), usd_per_day=1.0)
        one.reload(removed, resolved_keys(removed))  # revoked on this replica only
        await _blip(a, redis_server)
        await one.settle(under_way, tokens=1, cost_usd=1.5)  # kept: Redis is down
        redis_server.resume()
        await _until_available(a)
        await _until_available(b)  # b's own local budget would let the request through
        one.send_unsent()  # (the gate's aclose)
        await a.flush()
        with pytest.raises(GatewayDenied) as info:  # 1.5 spent of 1.0, all told
            await two.admit(TEAM, estimated_tokens=1)
        assert info.value.code == "insufficient_quota"


# -- a key revoked or rotated while a request's body arrives ------------------------------


@pytest.mark.parametrize("change", ["revoked", "rotated"])
async def test_a_request_whose_key_goes_while_its_body_arrives_is_not_admitted(
    openai_server: FakeOpenAIServer, tmp_path: Path, change: str
) -> None:
    """The key is checked with the headers, the request admitted once its body is in: a
    reload that revokes (or rotates) the key in between leaves the request a 401, not a
    run, and the key's in-flight count where it was."""
    import json

    import aiohttp

    from cascade.gateway._reload import reload_config as _reload

    from .leaks import eventually

    openai_server.default = GOOD
    limits = {"max_in_flight": 1}
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url, ("team", TEAM), **limits))
    body = json.dumps({"model": "cascade", "messages": HI}).encode()
    go_on = asyncio.Event()

    async def trickle() -> Any:
        yield body[:10]
        await go_on.wait()
        yield body[10:]

    after = ("team", OTHER) if change == "rotated" else ("other", OTHER)
    async with serving(path) as g, aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {TEAM}", "Content-Type": "application/json"}
        sent = asyncio.ensure_future(
            session.post(g.base_url + "/chat/completions", data=trickle(), headers=headers)
        )
        await eventually(lambda: g.gateway.in_flight == 1, "the request reading its body")
        write_config(path, keyed(openai_server.url, after, **limits))
        await _reload(g.gateway, str(path))
        go_on.set()
        async with await sent as response:
            assert response.status == 401, await response.text()
        async with openai.AsyncOpenAI(base_url=g.base_url, api_key=OTHER, max_retries=0) as c:
            await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
    assert openai_server.request_count == 1


# -- a retired generation's wait and shutdown --------------------------------------------


async def test_sigterm_after_reloads_is_not_held_by_the_old_cascades_wait(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A retired generation waits up to ``longest_request_s`` (minutes here: a route
    without a deadline, at ``max_deadline_s``) for a request that stalls upstream; three
    SIGHUPs retire three generations under it. SIGTERM still drains within
    ``drain_timeout_s`` (the stalled request cut with its 503) and the process exits: the
    old cascades' wait holds neither the drain nor the exit."""
    import signal

    from .leaks import eventually
    from .test_gateway_serve import cascade_serve, client

    stall = Reply(text="{", fault="stall", chunk_delay_s=0.05)
    openai_server.script("m1", stall)
    openai_server.default = GOOD
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1", stream=True, timeout_s=900))],
        "gateway": {"drain_timeout_s": 0.5, "max_deadline_s": 600},
    }
    path = write_config(tmp_path / "c.toml", config)
    async with cascade_serve(path) as served, client(served) as c:
        under_way = asyncio.ensure_future(
            c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        )
        await eventually(lambda: openai_server.active_requests == 1, "the stalled call")
        for n in range(1, 4):
            served.proc.send_signal(signal.SIGHUP)
            await eventually(
                lambda n=n: served.events().count("gateway.reloaded") == n,  # type: ignore[misc]
                "the reload",
                within_s=30,
            )
        served.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(served.proc.wait(), 60) == 0
        with pytest.raises(openai.APIStatusError) as cut:
            await under_way
        assert cut.value.status_code == 503
    assert "gateway.drain_cut" in served.events()


# -- the model each chunk names, through a failover mid-stream ---------------------------


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_chunks_name_the_model_of_their_text_through_a_failover_mid_stream(
    openai_server: FakeOpenAIServer, tmp_path: Path, mode: str
) -> None:
    """The first provider of a tier drops its stream after some text; the second answers.
    Speculative (with ``cascade_retractions``): the dropped text's chunks and its
    withdrawal name the first model, the answer's chunks the second. Buffered: only the
    answer is streamed, every chunk names its model, and so does the stream helper's final
    completion (it keeps the first chunk's)."""
    openai_server.script("m1", Reply(text='{"answer": 4', chunk_chars=3, fault="drop"))
    openai_server.script("m2", Reply(text=GOOD, chunk_chars=3))
    once = {"stream": True, "retry": {"attempts": 1}}
    config = {
        "tiers": [
            tier(
                "t",
                provider("a", openai_server.url, "m1", **once),
                provider("b", openai_server.url, "m2", **once),
            )
        ],
        "gateway": {"routes": [{"name": "cascade", "default": True, "mode": mode}]},
    }
    path = write_config(tmp_path / "c.toml", config)
    options = {"include_usage": True, "cascade_retractions": True}
    async with (
        serving(path) as g,
        openai.AsyncOpenAI(base_url=g.base_url, api_key="k", max_retries=0) as c,
        c.chat.completions.stream(
            model="cascade",
            messages=HI,  # type: ignore[arg-type]
            stream_options=options,  # type: ignore[arg-type]
        ) as stream,
    ):
        chunks = [e.chunk async for e in stream if e.type == "chunk"]
        final = await stream.get_final_completion()
    models = [ch.model for ch in chunks]
    assert (chunks[-1].model_extra or {})["cascade"]["model"] == "m2"
    if mode == "buffered":
        assert set(models) == {"m2"}
        assert final.model == "m2"
        assert final.choices[0].message.content == GOOD
    else:
        withdrawn = [
            i
            for i, ch in enumerate(chunks)
            if "retracted" in (ch.model_extra or {}).get("cascade", {})
        ]
        assert len(withdrawn) == 1
        assert set(models[: withdrawn[0] + 1]) == {"m1"}
        assert set(models[withdrawn[0] + 1 :]) == {"m2"}


# -- a revocation and SIGTERM --------------------------------------------------------------


async def test_a_reload_revokes_keys_even_when_sigterm_comes_while_its_routes_open(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A SIGHUP that revokes a leaked key, then SIGTERM while the reload opens its routes
    (a ``[shared]`` Redis that does not answer): the routes are not swapped in, but the
    keys are the file's all the same. The key kept working on the draining gateway, which
    still serves (``drain_delay_s``, the requests queued on its connections), and a SIGHUP
    while draining is ignored: the leak could not be stopped there."""
    from cascade.gateway._reload import reload_config as _reload

    from .test_gateway_serve import Silent

    openai_server.default = GOOD
    silent = Silent()
    silent.server = await asyncio.start_server(silent.handle, "127.0.0.1", 0)
    path = write_config(
        tmp_path / "c.toml", keyed(openai_server.url, ("team", TEAM), ("leaked", OTHER))
    )
    try:
        async with (
            serving(path) as g,
            openai.AsyncOpenAI(base_url=g.base_url, api_key=OTHER, max_retries=0) as leaked,
        ):
            fresh = keyed(openai_server.url, ("team", TEAM))
            fresh["shared"] = {"redis_url": f"redis://127.0.0.1:{silent.port}/0", "timeout_s": 0.5}
            write_config(path, fresh)
            reload = asyncio.create_task(_reload(g.gateway, str(path)))
            async with asyncio.timeout(30):
                await silent.asked.wait()  # the swap opens the new routes
            g.gateway.draining = True  # what SIGTERM does first
            async with asyncio.timeout(30):
                await reload
            with pytest.raises(openai.AuthenticationError):
                await leaked.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
            assert [r.name for r in g.gateway.generation.routes] == ["cascade"]
    finally:
        silent.server.close()
        await silent.server.wait_closed()


async def test_many_sighups_in_a_row_leave_the_keys_of_the_last_file(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Twenty reloads asked for at once while the file changes under them (the key
    rotated back and forth, another added and removed): the reloads coalesce, and the
    keys in effect once they are done are those of the file as it was last written."""
    from cascade.gateway._reload import reload_config as _reload

    openai_server.default = GOOD
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url, ("team", TEAM)))
    rotated = "sk-h75-team-rotated-0123456789"
    async with serving(path) as g:
        tasks = []
        for n in range(20):
            entries = [("team", rotated if n % 2 else TEAM)]
            if n % 3 == 0:
                entries.append(("other", OTHER))
            write_config(path, keyed(openai_server.url, *entries))
            tasks.append(asyncio.create_task(_reload(g.gateway, str(path))))
            await asyncio.sleep(0)
        async with asyncio.timeout(60):
            await asyncio.gather(*tasks)
        # the last file: team under the rotated key (n = 19), no "other"
        for raw, works in ((rotated, True), (TEAM, False), (OTHER, False)):
            async with openai.AsyncOpenAI(base_url=g.base_url, api_key=raw, max_retries=0) as c:
                if works:
                    await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
                else:
                    with pytest.raises(openai.AuthenticationError):
                        await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]


async def test_a_reload_that_keeps_a_keys_limits_names_that_key(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """One key's limit changed among several: ``gateway.reload_kept`` says ``keys``, and
    which key keeps the limits it was built with (a name, never a key nor its hash). It
    named none: among thousands of keys, the operator could not tell which to check."""
    from structlog.testing import capture_logs

    from cascade.gateway._reload import reload_config as _reload

    path = write_config(
        tmp_path / "c.toml", keyed(openai_server.url, ("team", TEAM), ("other", OTHER))
    )
    async with serving(path) as g:
        changed = keyed(openai_server.url, ("team", TEAM), ("other", OTHER))
        changed["gateway"]["keys"]["entries"][1]["usd_per_day"] = 1.0
        write_config(path, changed)
        with capture_logs() as logs:
            await _reload(g.gateway, str(path))
    [kept] = [e for e in logs if e["event"] == "gateway.reload_kept"]
    assert kept["fields"] == ["keys"]
    assert kept["keys"] == ["other"]
    assert hash_key(OTHER) not in repr(logs)


# -- a key handed to another name (helper-76) ---------------------------------------------


@pytest.mark.parametrize("own_new_key", [True, False], ids=["name_rekeyed", "renamed"])
def test_a_reload_that_lists_a_key_under_another_name_is_refused_whole(
    own_new_key: bool,
) -> None:
    """``team``'s key listed under ``other`` (handed to another tenant, or the entry
    renamed): applied live, the key would go on counting and logging as ``team`` until a
    restart (``other``'s spend on ``team``'s budget), and with ``team`` given a new key
    too, two keys would count apart under one name. The reload is refused, naming the
    entry, and nothing changes; names only in the message, never a key or a hash."""
    from cascade import ConfigError

    NEW = "sk-h76-new-0123456789"
    keys = GatewayKeys.from_config(_config(("team", TEAM)), clock=FakeClock())
    entries = [("other", TEAM)] + ([("team", NEW)] if own_new_key else [])
    fresh = _config(*entries)
    with pytest.raises(ConfigError) as info:
        keys.reload(fresh, resolved_keys(fresh))
    assert info.value.path == "gateway.keys.entries[0]"
    assert "'team'" in str(info.value) and "'other'" in str(info.value)
    assert TEAM not in str(info.value) and hash_key(TEAM) not in str(info.value)
    # nothing applied: team's key works as team, the new one does not
    assert keys.check(TEAM)("cascade", "m")
    assert keys.enter(TEAM).name == "team"
    with pytest.raises(GatewayDenied):
        keys.enter(NEW)


async def test_a_refused_key_table_is_a_failed_reload_and_the_old_config_serves(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Through SIGHUP's path: the refusal is ``gateway.reload_failed`` naming the entry,
    and neither the keys nor the routes of that file apply."""
    from structlog.testing import capture_logs

    from cascade.gateway._reload import reload_config as _reload

    openai_server.default = GOOD
    path = write_config(tmp_path / "c.toml", keyed(openai_server.url, ("team", TEAM)))
    async with (
        serving(path) as g,
        openai.AsyncOpenAI(base_url=g.base_url, api_key=TEAM, max_retries=0) as sdk,
    ):
        routes = [r.name for r in g.gateway.generation.routes]
        fresh = keyed(openai_server.url, ("other", TEAM))
        fresh["gateway"]["routes"] = [{"name": "renamed", "models": ["*"]}]
        write_config(path, fresh)
        with capture_logs() as logs:
            await _reload(g.gateway, str(path))
        failed = [e for e in logs if e["event"] == "gateway.reload_failed"]
        assert len(failed) == 1 and "gateway.keys.entries[0]" in failed[0]["error"]
        assert not any(e["event"] == "gateway.reloaded" for e in logs)
        assert [r.name for r in g.gateway.generation.routes] == routes
        answer = await sdk.chat.completions.with_raw_response.create(
            model="cascade",
            messages=HI,  # type: ignore[arg-type]
        )
        assert answer.headers["x-cascade-route"] == routes[0]
