"""Typed usage of the public API, checked by mypy (not run by pytest)."""

from __future__ import annotations

import cascade
from cascade import Cascade, Completion, RequestOptions, Result, ValidationContext, Verdict


@cascade.validator("typing_example")
class Short:
    def __init__(self, *, max_chars: int) -> None:
        self.name = "short"
        self.max_chars = max_chars

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        return Verdict(validator=self.name, passed=len(completion.text) <= self.max_chars)


async def use() -> None:
    async with Cascade.from_config("cascade.toml") as c:
        result: Result = await c.run(
            messages=[{"role": "user", "content": "hi"}],
            options=RequestOptions(max_tokens=10, temperature=0.0),
            start_tier=1,
            max_tier="large",
            max_cost_usd=0.01,
            deadline_s=5.0,
        )
    text: str = result.text
    cost: float = result.cost_usd
    outcomes: list[cascade.Outcome] = [a.outcome for a in result.attempts]
    try:
        await c.run(messages=[cascade.Message(role="user", content="x")])
    except cascade.RunError as exc:
        attempts: tuple[cascade.Attempt, ...] = exc.attempts
        del attempts
    del text, cost, outcomes


def traced(config: cascade.Config) -> Cascade:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    return Cascade(
        config,
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(),
        capture_content=False,
        semconv=("gen_ai", "openinference"),
    )


def telemetry_config() -> cascade.TelemetryConfig:
    return cascade.TelemetryConfig(semconv=("openinference",))


async def shared_state() -> None:
    from cascade.resilience.shared import SharedState

    config = cascade.SharedConfig(redis_url="redis://127.0.0.1:6379/0", timeout_s=0.05)
    async with SharedState.from_config(config) as state:
        breaker = cascade.AsyncBreaker("a", fail_max=3, shared=state)
        limiter = cascade.RateLimiter("a", requests_per_minute=60, shared=state)
        lease: cascade.resilience.limiter.Lease | None = await limiter.reserve(tokens=10)
        up: bool = state.available
        breaker.force_open(5.0)
        breaker.force_close()
        del lease, up


async def failover_policy(config: dict[str, object]) -> None:
    from cascade.resilience import Action, OnError, classify
    from cascade.testing import SCENARIOS, Expected, Scenario, Stage, run_scenario

    table = OnError(timeout="retry", content_filter="failover")
    action: Action = classify(cascade.ContentFiltered("no", provider="p", model="m"), table)
    policy = cascade.RetryPolicy(attempts=3, on_error=table)

    async def play(stage: Stage) -> None:
        stage.primary.script("fine")
        got = await stage.run()
        stage.check(got, Expected(answered_by=stage.primary.name, attempts=(("a", None),)))

    mine = Scenario(name="mine", description="the primary answers", play=play)
    for scenario in (*SCENARIOS.values(), mine):
        await run_scenario(scenario, config, primary="a", fallback="b", answer="42")
    try:
        await run_scenario(mine, config, primary="a", fallback="b")
    except cascade.RequestRejected as exc:
        reason: str = exc.reason
        error: cascade.ProviderError = exc.error
        del reason, error
    del action, policy


async def use_request_validators(c: Cascade) -> None:
    short = Short(max_chars=100)
    result: Result = await c.run(messages=[{"role": "user", "content": "hi"}], validators=[short])
    async with c.stream(messages=[{"role": "user", "content": "hi"}], validators=(short,)) as s:
        async for _ in s:
            pass
    print(result.text)


async def use_gateway() -> None:
    from collections.abc import Mapping
    from typing import Any

    from cascade.gateway import (
        Gate,
        GatewayError,
        GatewayRequest,
        Route,
        build_gateway,
        create_app,
        load_gateway,
        serve,
    )

    class OneKey:
        async def open(self) -> None: ...

        async def aclose(self) -> None: ...

        async def admit(
            self, headers: Mapping[str, str], *, request: GatewayRequest, route: Route | None
        ) -> str:
            if headers.get("Authorization") != "Bearer k":
                raise GatewayError(401, "invalid API key", code="invalid_api_key")
            return "k"

        async def settle(self, admission: Any, *, tokens: int, cost_usd: float) -> None: ...

    gate: Gate = OneKey()
    app = create_app(build_gateway(load_gateway("cascade.toml"), gate=gate))
    print(app)
    await serve("cascade.toml", host="127.0.0.1", port=0, ready=print)


@cascade.router("typed_short_first")
class ShortFirst:
    def __init__(self, *, chars: int = 200) -> None:
        self.name = "typed_short_first"
        self.chars = chars

    async def route(self, request: cascade.RouteRequest) -> cascade.RouteDecision:
        text = request.messages[-1].content
        tiers: tuple[cascade.TierInfo, ...] = request.tiers
        if len(text) < self.chars and tiers:
            return cascade.RouteDecision(max_tier=tiers[0].index, reason="short")
        return cascade.RouteDecision()


async def routing(config: dict[str, object]) -> None:
    from cascade.routing import FirstOf, RulesRouter, build_router, is_no_opinion

    rules = RulesRouter(rules=[{"keywords": ["prove"], "start_tier": 2}])
    both: cascade.Router = FirstOf(routers=[rules, ShortFirst()])
    built: cascade.Router = build_router({"kind": "cost"}, path="router")
    async with cascade.Cascade.from_dict(config, router=both, router_timeout_s=0.5) as c:
        result = await c.run(messages=[{"role": "user", "content": "hi"}])
        route: cascade.RouteDecision | None = result.route
        if route is not None:
            no_opinion: bool = is_no_opinion(route)
            del no_opinion
        async with c.stream(messages=[{"role": "user", "content": "hi"}]) as events:
            async for event in events:
                if isinstance(event, cascade.Routed):
                    start: int = event.start_tier
                    del start
    del built


async def quality_and_repair(c: Cascade) -> None:
    quality = cascade.QualityConfig(window=50, min_pass_rate=0.2, min_samples=20, cooldown_s=60)
    tier = cascade.TierConfig(
        name="t", providers=[], quality=quality, repair=True
    )  # a repairing tier with a quality breaker
    del tier
    for name, qb in c.quality_breakers.items():
        state: cascade.resilience.QualityState = qb.state
        rate: float | None = qb.pass_rate
        wait: float = qb.retry_in_s()
        del name, state, rate, wait
    async with c.stream(messages=[{"role": "user", "content": "hi"}]) as events:
        async for event in events:
            if isinstance(event, cascade.Escalated) and event.reason == "quality_open":
                repaired: bool = event.repair
                del repaired
