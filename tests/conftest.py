"""Shared fixtures: real fake servers on loopback, and a config builder."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest
import structlog

from cascade.testing import FakeAnthropicServer, FakeOpenAIServer


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
