"""Shared fixtures: real fake servers on loopback, and a config builder."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from hypothesis import HealthCheck, settings

from cascade.testing import FakeAnthropicServer, FakeOpenAIServer

# No wall-clock limits in the property tests either: hypothesis's default 200 ms deadline
# per example (and its too-slow health check) failed a test whose examples make real
# loopback reads on a loop that stalled (a busy CI machine). A test's own @settings wins.
settings.register_profile("cascade", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("cascade")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    # An unclosed aiohttp session warns from __del__; collecting here makes that warning
    # (an error under filterwarnings=error) land on the test that leaked it.
    yield
    gc.collect()
    # What survives a test is long-lived (imported modules, caches): freezing it keeps the
    # next test's collection to the objects that test made. Without this, every collection
    # walks the ~300,000 objects the imports made, about 0.1-0.2 s per test.
    gc.freeze()


@pytest.fixture(autouse=True)
def _structlog_as_found() -> Iterator[None]:
    # structlog.testing.capture_logs restores the processors with configure(), which leaves
    # structlog "configured": later tests would then get a routing record printed per run.
    configured = structlog.is_configured()
    yield
    if not configured:
        structlog.reset_defaults()


@pytest.fixture
async def openai_server() -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
async def anthropic_server() -> AsyncIterator[FakeAnthropicServer]:
    async with FakeAnthropicServer() as server:
        yield server
