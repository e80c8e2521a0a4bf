"""A three-tier cascade against local fake servers: run it with `python examples/quickstart.py`.

Tier 1 answers prose (rejected by the JSON Schema), tier 2's first deployment is down
(failover to its sibling), whose answer is accepted. Swap the base URLs for real
deployments and the same code runs against them.
"""

from __future__ import annotations

import anyio

from cascade import Cascade, CascadeError, RequestOptions
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

SCHEMA = {"type": "object", "required": ["total"], "properties": {"total": {"type": "number"}}}


async def main() -> None:
    async with FakeOpenAIServer() as openai, FakeAnthropicServer() as anthropic:
        openai.script("small", "The total is 12.50.")
        openai.script("medium", Reply(status=503, error_message="overloaded"))
        anthropic.script("medium", Reply(text='{"total": 12.5}', chunk_chars=4))
        validators = [{"name": "json_schema", "schema": SCHEMA}]
        config = {
            "tiers": [
                {
                    "name": "small",
                    "validators": validators,
                    "providers": [
                        {"name": "small-a", "kind": "openai", "base_url": openai.url,
                         "model": "small", "input_cost_per_mtok": 0.15,
                         "output_cost_per_mtok": 0.6},
                    ],
                },
                {
                    "name": "medium",
                    "validators": validators,
                    "providers": [
                        {"name": "medium-a", "kind": "openai", "base_url": openai.url,
                         "model": "medium", "input_cost_per_mtok": 3, "output_cost_per_mtok": 15},
                        {"name": "medium-b", "kind": "anthropic", "base_url": anthropic.url,
                         "model": "medium", "stream": True, "input_cost_per_mtok": 3,
                         "output_cost_per_mtok": 15},
                    ],
                },
            ]
        }  # fmt: skip
        async with Cascade.from_dict(config) as cascade:
            try:
                result = await cascade.run(
                    messages=[{"role": "user", "content": "Total of 10.00 and 2.50, as JSON"}],
                    options=RequestOptions(max_tokens=100),
                    deadline_s=10,
                )
            except CascadeError as exc:
                print("failed:", exc)
                return
    print(f"answer: {result.parsed} from tier {result.tier} ({result.provider})")
    print(f"cost: ${result.cost_usd:.6f}, tokens: {result.usage.total_tokens}")
    for a in result.attempts:
        why = a.error or "; ".join(v.reason for v in a.verdicts if not v.passed)
        print(f"  {a.tier_name:<6} {a.provider:<9} {a.outcome:<8} {why}")


if __name__ == "__main__":
    anyio.run(main)
