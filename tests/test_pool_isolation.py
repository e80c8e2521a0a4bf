"""A provider that hangs cannot starve the others: each provider has a connection pool of
its own (``ProviderConfig.max_connections``, by default a share of the cascade's
``max_connections``)."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from cascade import Cascade, Config
from cascade._engine import connection_shares
from cascade.testing import FakeOpenAIServer, Reply

from .helpers import USER, provider, tier
from .leaks import eventually, in_use, nothing_left

pytestmark = pytest.mark.anyio

HUNG_RUNS = 200


async def test_a_hung_provider_cannot_take_the_connections_of_a_healthy_one() -> None:
    async with FakeOpenAIServer() as hung, FakeOpenAIServer() as healthy:
        hung.default = Reply(fault="hang")
        healthy.default = Reply(text="fine")
        cfg = {
            "max_connections": 20,  # 10 for each provider
            "tiers": [
                tier("a", provider("a", hung.url, "m", timeout_s=60)),
                tier("b", provider("b", healthy.url, "m")),
            ],
        }
        baseline = asyncio.all_tasks()
        async with Cascade.from_dict(cfg) as c:
            outcomes: list[str] = []

            async def hung_run() -> None:
                await c.run(messages=USER, max_tier="a", deadline_s=60)

            async with anyio.create_task_group() as tg:
                for _ in range(HUNG_RUNS):
                    tg.start_soon(hung_run)
                # every connection provider a may have is taken, and it has runs queued
                await eventually(lambda: hung.active_requests >= 10, "a's pool in use")
                with anyio.move_on_after(10):
                    result = await c.run(messages=USER, start_tier="b", deadline_s=10)
                    outcomes.append(result.text)
                assert hung.active_requests == 10  # never more than its own share
                tg.cancel_scope.cancel()
            assert outcomes == ["fine"]
            await eventually(lambda: in_use(c) == 0, "connections given back")
            await eventually(lambda: hung.active_requests == 0, "hung requests ended")
        await nothing_left(baseline, hung, healthy)


def _config(max_connections: int, *sizes: int | None) -> Config:
    providers = [
        provider(
            f"p{i}", "http://127.0.0.1:1", "m", **({} if n is None else {"max_connections": n})
        )
        for i, n in enumerate(sizes)
    ]
    return Config.from_dict({"max_connections": max_connections, "tiers": [tier("t", *providers)]})


def test_the_pool_is_shared_out_among_the_providers() -> None:
    assert connection_shares(_config(512, None)) == {"p0": 512}
    assert connection_shares(_config(512, None, None)) == {"p0": 256, "p1": 256}
    assert connection_shares(_config(100, 40, None, None)) == {"p0": 40, "p1": 30, "p2": 30}
    # explicit sizes are kept; the others get at least one connection
    assert connection_shares(_config(10, 50, None)) == {"p0": 50, "p1": 1}


def test_max_connections_of_a_provider_must_be_at_least_one() -> None:
    from cascade import ConfigError

    with pytest.raises(ConfigError) as info:
        _config(10, 0)
    assert info.value.path == "tiers[0].providers[0].max_connections"
