"""The preset scenarios: each a failure of the primary, and what the config should do."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from cascade._errors import (
    AllProvidersFailed,
    ContentFiltered,
    ContextLengthExceeded,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
    RequestRejected,
    RunError,
)
from cascade._types import Result
from cascade.testing._reply import FakeRequest, Reply
from cascade.testing._scenarios import Expected, Play, Scenario, ScenarioFailed, Side, Stage

__all__ = ["SCENARIOS"]

_LONG = "A long answer that arrives in several deltas before the stream breaks. " * 3
_STREAM = {"stream": True}
_QUICK_FIRST_TOKEN = {"first_token_timeout_s": 0.25}
_QUICK_IDLE = {"stream": True, "idle_timeout_s": 0.25}
PREFILL_REFUSAL = (
    "This model does not support assistant message prefill. "
    "The conversation must end with a user message."
)


def _error(side: Side, cls: type[ProviderError], **fields: Any) -> ProviderError:
    return cls("scenario", provider=side.name, model=side.model, **fields)


def _answer(got: Result | RunError) -> Result:
    if isinstance(got, RunError):
        raise ScenarioFailed(f"expected an answer, got {type(got).__name__}: {got}")
    return got


def _fails_then_answers(
    reply: Reply, cls: type[ProviderError], *, retry_after: float | None = None, **fields: Any
) -> Play:
    """The primary fails once with ``reply``, then answers."""

    async def play(stage: Stage) -> None:
        p = stage.primary
        p.script(reply, stage.answer)
        stage.fallback.script(stage.answer)
        start = stage.clock.monotonic()
        got = await stage.run()
        error = _error(p, cls, **fields)
        name = type(error).__name__
        action, policy = p.action(error), p.config.retry
        wait = retry_after if retry_after is not None and policy.honour_retry_after else 0.0
        if action == "retry" and policy.attempts >= 2 and wait <= policy.max_s:
            stage.check(
                got, Expected(answered_by=p.name, attempts=((p.name, name), (p.name, None)))
            )
            if stage.clock.monotonic() - start < wait:
                raise ScenarioFailed(f"retried before Retry-After ({retry_after}s) passed")
        elif action == "surface":
            failed = ((p.name, name),)
            stage.check(got, Expected(answered_by=None, attempts=failed, raises=RequestRejected))
        else:
            stage.check(got, stage.answered((p.name, name)))

    return play


def _always_fails(
    reply: Reply, cls: type[ProviderError], *, costed: bool = False, **fields: Any
) -> Play:
    """The primary fails with ``reply`` every time: retried as its policy says, then the
    fallback answers (or the run stops, for an error the policy surfaces)."""

    async def play(stage: Stage) -> None:
        p, f = stage.primary, stage.fallback
        p.script(reply)
        f.script(stage.answer)
        got = await stage.run()
        error = _error(p, cls, **fields)
        failed = ((p.name, type(error).__name__),)
        if p.action(error) == "surface":
            stage.check(got, Expected(answered_by=None, attempts=failed, raises=RequestRejected))
            assert isinstance(got, RequestRejected)
            if not got.reason or f.calls:
                raise ScenarioFailed("a surfaced error must carry its reason and stop the run")
            return
        stage.check(got, stage.answered(*failed * p.tries(error)))
        for attempt in got.attempts[:-1]:
            if attempt.completion is not None:
                raise ScenarioFailed("a failed attempt was kept as an answer")
            if costed and not attempt.input_tokens:
                raise ScenarioFailed("a stream broken after text arrived was not costed")

    return play


async def _no_done(stage: Stage) -> None:
    stage.primary.script(Reply(text=stage.answer, fault="no_done"))
    got = await stage.run()
    stage.check(
        got, Expected(answered_by=stage.primary.name, attempts=((stage.primary.name, None),))
    )


async def _prefill(stage: Stage) -> None:
    p, f = stage.primary, stage.fallback
    p.script(Reply(status=503))

    def refuse_prefill(request: FakeRequest) -> Reply | str:
        if request.messages and request.messages[-1].get("role") == "assistant":
            return Reply(status=400, error_message=PREFILL_REFUSAL)
        return stage.answer

    f.server.respond(f.model, refuse_prefill)
    got = await stage.run([*stage.messages, {"role": "assistant", "content": "{"}])
    down = _error(p, ProviderStatusError, status=503)
    refused = _error(f, ProviderStatusError, status=400)
    attempts = ((p.name, "ProviderStatusError"),) * p.tries(down)
    attempts += ((f.name, "ProviderStatusError"),) * f.tries(refused)
    stage.check(got, Expected(answered_by=None, attempts=attempts, raises=AllProvidersFailed))


async def _flapping(stage: Stage) -> None:
    p, f = stage.primary, stage.fallback
    p.script(Reply(status=503))
    f.script(stage.answer)
    breaker = stage.cascade.breakers[p.name]
    for _ in range(p.config.breaker.fail_max):
        if _answer(await stage.run()).provider != f.name:
            raise ScenarioFailed(f"expected {f.name} to answer while {p.name} is down")
        if breaker.state == "open":
            break
    if breaker.state != "open":
        raise ScenarioFailed(f"{p.name}'s breaker did not open: {breaker!r}")
    calls = p.calls
    got = _answer(await stage.run())
    if (got.provider, got.attempts[0].error_type) != (f.name, "CircuitOpen") or p.calls != calls:
        raise ScenarioFailed(f"an open breaker must skip {p.name} without calling it")
    p.server.reset()
    p.script(stage.answer)  # healthy again
    stage.clock.advance(p.config.breaker.reset_timeout_s)
    got = _answer(await stage.run())
    if got.provider != p.name or p.calls != 1:
        raise ScenarioFailed(f"after reset_timeout_s one probe of {p.name} should answer")
    if str(breaker.state) != "closed":  # (mypy narrowed it to "open" above)
        raise ScenarioFailed(f"a successful probe must close the breaker: {breaker!r}")


async def _accounting(stage: Stage) -> None:
    p, f = stage.primary, stage.fallback
    p.script(Reply(text=_LONG, fault="drop"))
    reported = f"{f.model}-reported"
    f.script(Reply(text=stage.answer, input_tokens=11, output_tokens=7, model=reported))
    got = _answer(await stage.run())
    last = got.attempts[-1]
    failed = got.attempts[:-1]
    checks = {
        "the fallback answers": (got.provider, got.model) == (f.name, f.model),
        "with its own text": got.text == stage.answer,
        "and its reported model and usage": last.completion is not None
        and (last.completion.model, last.output_tokens) == (reported, 7),
        "failed attempts are not answers": all(a.completion is None for a in failed),
        "failed attempts are costed": bool(failed) and all(a.input_tokens > 0 for a in failed),
        "the cost covers every attempt": abs(got.cost_usd - sum(a.cost_usd for a in got.attempts))
        < 1e-12,
        "the usage covers every attempt": got.usage.output_tokens
        == sum(a.output_tokens for a in got.attempts),
    }
    wrong = [what for what, ok in checks.items() if not ok]
    if wrong:
        raise ScenarioFailed("fail-over accounting: " + "; ".join(wrong))


def _scenario(name: str, description: str, play: Play, **tune: Any) -> Scenario:
    return Scenario(name=name, description=description, play=play, tune=MappingProxyType(tune))


_ALL = (
    _scenario(
        "rate_limited_retry_after",
        "429 with Retry-After: 1, then an answer: waited out and retried (as configured)",
        _fails_then_answers(
            Reply(status=429, retry_after_s=1), RateLimited, retry_after=1.0, status=429
        ),
    ),
    _scenario(
        "rate_limited",
        "429 without Retry-After, then an answer",
        _fails_then_answers(Reply(status=429), RateLimited, status=429),
    ),
    _scenario(
        "server_error_once",
        "500 once, then an answer: retried (as configured), else failed over",
        _fails_then_answers(Reply(status=500), ProviderStatusError, status=500),
    ),
    _scenario(
        "unavailable",
        "503 on every call: retried as configured, then failed over",
        _always_fails(Reply(status=503), ProviderStatusError, status=503),
    ),
    _scenario(
        "reset_before_headers",
        "the connection is closed before any header, once",
        _fails_then_answers(Reply(fault="reset"), ProviderConnectionError),
    ),
    _scenario(
        "silent_provider",
        "no answer at all: failed over at once on the first-token timeout",
        _always_fails(Reply(fault="hang"), ProviderTimeout),
        **_QUICK_FIRST_TOKEN,
    ),
    _scenario(
        "slow_first_token",
        "the answer would come, but after first_token_timeout_s",
        _always_fails(Reply(text="too late", latency_s=30), ProviderTimeout),
        **_QUICK_FIRST_TOKEN,
    ),
    _scenario(
        "stream_cut",
        "the stream is cut mid-answer: never a truncated answer, the text so far is costed",
        _always_fails(Reply(text=_LONG, fault="drop"), ProviderConnectionError, costed=True),
        **_STREAM,
    ),
    _scenario(
        "stall",
        "the stream stalls after its first delta (keep-alives only) past idle_timeout_s",
        _always_fails(Reply(text=_LONG, fault="stall"), ProviderTimeout, costed=True),
        **_QUICK_IDLE,
    ),
    _scenario(
        "malformed_chunk",
        "a stream event that is not JSON",
        _always_fails(Reply(text=_LONG, fault="malformed"), MalformedResponse, costed=True),
        **_STREAM,
    ),
    _scenario(
        "no_done",
        "a stream that ends cleanly after its finish reason and usage, without [DONE]",
        _no_done,
        **_STREAM,
    ),
    _scenario(
        "context_length_exceeded",
        "400 context length exceeded: not retried, the next provider gets it",
        _always_fails(Reply(fault="context_length"), ContextLengthExceeded, status=400),
    ),
    _scenario(
        "content_filter",
        "400 content policy: surfaced with the provider's reason, not routed around",
        _always_fails(Reply(fault="content_filter"), ContentFiltered),
    ),
    _scenario(
        "prefill_rejected",
        "the primary is down and the fallback rejects an assistant prefill: the run fails",
        _prefill,
    ),
    _scenario(
        "flapping_primary",
        "the primary is down, then healthy: its breaker opens, probes and closes",
        _flapping,
    ),
    _scenario(
        "failover_accounting",
        "the caller sees the answering model and its usage; failed attempts are costed",
        _accounting,
        **_STREAM,
    ),
)

SCENARIOS = MappingProxyType({s.name: s for s in _ALL})
"""Every preset :class:`Scenario`, by name."""
