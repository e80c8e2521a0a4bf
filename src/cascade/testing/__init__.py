"""Fake OpenAI-compatible and Anthropic servers for testing code that calls LLMs.

The servers speak the real wire formats (JSON and SSE streaming) over loopback
HTTP, answer per model from a script or a function, record what they receive,
and inject faults: error statuses, latency, dropped connections, malformed
payloads, hangs, and hostile bodies (oversized, endless, gzip bombs, JSON nested
too deep, streams without text); `Chaos` injects some at random into a share of
the calls.

Example::

    from cascade.testing import FakeOpenAIServer, Reply

    async with FakeOpenAIServer() as server:
        server.script("small", Reply(status=429, retry_after_s=1), "42")
        # point your client at server.url, e.g. AsyncOpenAI(base_url=server.url)
        ...
        assert server.request_count == 2

Failure scenarios to run against your own config in CI (`SCENARIOS`,
`run_scenario`): 429s, 5xx, resets, silent and stalled providers, broken
streams, context-length and content-policy refusals, a flapping primary::

    @pytest.mark.parametrize("name", SCENARIOS)
    async def test_failover(name):
        config = tomllib.load(open("cascade.toml", "rb"))
        await run_scenario(SCENARIOS[name], config, primary="gpt", fallback="claude")

From a shell, ``python -m cascade.testing openai --port 8000`` serves one
fixed answer for every model until interrupted.
"""

from cascade._clock import FakeClock
from cascade.testing._anthropic import FakeAnthropicServer
from cascade.testing._chaos import Chaos, Fault
from cascade.testing._openai import FakeOpenAIServer
from cascade.testing._presets import SCENARIOS
from cascade.testing._reply import FakeRequest, Reply, Responder
from cascade.testing._scenarios import (
    Expected,
    Scenario,
    ScenarioFailed,
    Side,
    Stage,
    Via,
    run_scenario,
)

__all__ = [
    "SCENARIOS",
    "Chaos",
    "Expected",
    "FakeAnthropicServer",
    "FakeClock",
    "FakeOpenAIServer",
    "FakeRequest",
    "Fault",
    "Reply",
    "Responder",
    "Scenario",
    "ScenarioFailed",
    "Side",
    "Stage",
    "Via",
    "run_scenario",
]
