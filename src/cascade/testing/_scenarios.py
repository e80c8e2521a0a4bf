"""Failure scenarios a user runs against their own config, in their own CI.

A :class:`Scenario` scripts two fake providers (the *primary*, and the *fallback* that
should take over) and checks what the cascade does; :func:`run_scenario` points the two
providers of a user's config at fake servers of their kind (every other provider and
tier is left out, so nothing reaches a real API) and plays it. The expected outcome is
worked out from that config (its retry policy, its ``on_error`` table, its breaker), so
a preset checks the config's own behaviour, not a fixed guess.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cascade._clock import FakeClock
from cascade._config import Config, ProviderConfig
from cascade._engine import Cascade
from cascade._errors import CascadeError, RunError
from cascade._types import Result
from cascade.engine import Delta, Failed, Finished, Retracted, StreamMode
from cascade.resilience._policy import Action, classify
from cascade.testing._anthropic import FakeAnthropicServer
from cascade.testing._openai import FakeOpenAIServer
from cascade.testing._reply import Reply
from cascade.testing._server import FakeServer

__all__ = ["Expected", "Scenario", "ScenarioFailed", "Side", "Stage", "Via", "run_scenario"]

Via = Literal["run", "buffered", "speculative"]
"""How a scenario reads each run: ``Cascade.run()``, or ``Cascade.stream()`` in that mode."""

DEFAULT_ANSWER = '{"answer": 42}'
DEFAULT_MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "user", "content": "What is 6 * 7? Answer as JSON."},
)


class ScenarioFailed(AssertionError):
    """The cascade did not do what the scenario expects; the message says what differed."""


@dataclass(frozen=True, kw_only=True)
class Expected:
    """What a run should come to.

    ``answered_by`` names the provider whose answer is returned (None: the run raises
    ``raises``); ``attempts`` lists each attempt as ``(provider, error_type)``, with
    ``None`` for an answer.
    """

    answered_by: str | None
    attempts: tuple[tuple[str, str | None], ...]
    raises: type[RunError] | None = None


@dataclass(frozen=True, kw_only=True)
class Side:
    """One of the scenario's two providers: its name, model, config and fake server."""

    name: str
    model: str
    config: ProviderConfig
    server: FakeServer

    def script(self, *replies: Reply | str) -> None:
        """Queue this provider's answers (the last repeats)."""
        self.server.script(self.model, *replies)

    @property
    def calls(self) -> int:
        """Requests this provider received."""
        return sum(1 for r in self.server.requests if r.model == self.model)

    def action(self, error: BaseException) -> Action:
        """What this provider's config does with ``error``."""
        return classify(error, self.config.retry.on_error)

    def tries(self, error: BaseException) -> int:
        """How many times a call failing with ``error`` every time is made."""
        return self.config.retry.attempts if self.action(error) == "retry" else 1


@dataclass(kw_only=True)
class Stage:
    """What a scenario plays with: the two providers, the open cascade, its fake clock."""

    cascade: Cascade
    primary: Side
    fallback: Side
    clock: FakeClock
    """Jumps over every sleep (backoff, Retry-After) and, once the run goes quiet, to the
    next timer (a timeout); advanced by hand for a breaker."""
    answer: str
    messages: tuple[dict[str, Any], ...]
    via: Via = "run"
    """Read each run with ``run()`` or as a stream in that mode (see :func:`run_scenario`)."""

    async def run(self, messages: Sequence[Mapping[str, Any]] | None = None) -> Result | RunError:
        """One run: its Result, or the RunError it raised (read as :attr:`via` says)."""
        msgs = list(messages or self.messages)
        try:
            if self.via == "run":
                return await self.cascade.run(messages=msgs)
            return await self._read_stream(msgs, self.via)
        except RunError as exc:
            return exc

    async def _read_stream(self, messages: list[Mapping[str, Any]], mode: StreamMode) -> Result:
        """The run read as a stream: what its deltas show, once retractions are applied,
        must be the result's text (no piece of a failed or rejected answer stays shown),
        and buffered mode never retracts."""
        shown: list[str] = []
        async with self.cascade.stream(messages=messages, mode=mode) as events:
            async for event in events:
                if isinstance(event, Delta):
                    shown.append(event.text)
                elif isinstance(event, Retracted):
                    text = "".join(shown)
                    if mode == "buffered" or event.chars > len(text):
                        raise ScenarioFailed(
                            f"{mode} stream retracted {event.chars} characters of {len(text)} shown"
                        )
                    shown = [text[: len(text) - event.chars]]
                elif isinstance(event, Finished):
                    if "".join(shown) != event.result.text:
                        raise ScenarioFailed(
                            f"the stream showed {''.join(shown)!r}, "
                            f"the result is {event.result.text!r}"
                        )
                    return event.result
                elif isinstance(event, Failed):
                    if "".join(shown):
                        raise ScenarioFailed(
                            f"the run failed and the stream still shows {''.join(shown)!r}"
                        )
                    raise event.error
        raise ScenarioFailed("the stream ended without Finished or Failed")

    def check(self, got: Result | RunError, want: Expected) -> None:
        """Raise :class:`ScenarioFailed` unless ``got`` is ``want``."""
        attempts = tuple((a.provider, a.error_type) for a in got.attempts)
        if isinstance(got, RunError):
            seen = f"{type(got).__name__}: {got}"
            if want.raises is None or not isinstance(got, want.raises):
                raise ScenarioFailed(f"expected an answer from {want.answered_by}, got {seen}")
        else:
            if want.answered_by is None:
                raise ScenarioFailed(f"expected {want.raises}, got an answer from {got.provider}")
            if got.provider != want.answered_by:
                raise ScenarioFailed(f"expected {want.answered_by} to answer, got {got.provider}")
        if attempts != want.attempts:
            raise ScenarioFailed(f"expected attempts {want.attempts}, got {attempts}")

    def answered(self, *failed: tuple[str, str]) -> Expected:
        """The outcome: ``failed`` attempts, then the fallback's answer."""
        return Expected(
            answered_by=self.fallback.name, attempts=(*failed, (self.fallback.name, None))
        )


Play = Callable[[Stage], Awaitable[None]]


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A named failure and what the cascade should make of it.

    ``tune`` sets provider fields on the primary for the scenario (``stream = true`` for
    the stream faults, short ``first_token_timeout_s`` / ``idle_timeout_s`` where the
    config has none shorter); the run's clock jumps to a timer once the run goes quiet, so
    a silent provider costs a fraction of a second of real time whatever the config's
    ``timeout_s``; ``play``
    scripts the fake servers, runs the cascade and raises :class:`ScenarioFailed` on a
    difference.
    """

    name: str
    description: str
    play: Play
    tune: Mapping[str, Any] = field(default_factory=dict)


def _shortened(config: Mapping[str, Any], tune: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(config)
    for key, value in tune.items():
        current = out.get(key)
        if key.endswith("_timeout_s") and isinstance(current, int | float):
            out[key] = min(current, value)  # keep a config's own, shorter timeout
        else:
            out[key] = value
    return out


def _only(
    data: Mapping[str, Any],
    names: tuple[str, str],
    urls: Mapping[str, str],
    tune: Mapping[str, Any],
) -> dict[str, Any]:
    """``data`` with only the tiers and providers named, each pointed at its fake server
    (``urls`` by provider name)."""
    out = copy.deepcopy(dict(data))
    out.pop("shared", None)  # scenarios play on one process's own breakers and limiters
    tiers = []
    for t in out.get("tiers", []):
        providers = []
        for p in t.get("providers", []):
            if p.get("name") not in names:
                continue
            p = {**p, "base_url": urls[p["name"]]}
            p.pop("api_key_env", None)
            if p.get("name") == names[0]:
                p = _shortened(p, tune)
            providers.append(p)
        if providers:
            tiers.append({**t, "providers": providers})
    out["tiers"] = tiers
    return out


async def run_scenario(
    scenario: Scenario,
    config: Mapping[str, Any],
    *,
    primary: str,
    fallback: str,
    answer: str = DEFAULT_ANSWER,
    messages: Sequence[Mapping[str, Any]] = DEFAULT_MESSAGES,
    via: Via = "run",
) -> None:
    """Play ``scenario`` on ``config`` (a mapping, as ``Cascade.from_dict`` takes: load a
    TOML file with ``tomllib``), its providers ``primary`` and ``fallback`` served by fake
    servers. ``answer`` is the text a healthy provider answers (one your validators
    accept). ``via`` reads each run with ``run()`` (the default) or with ``stream()`` in
    mode ``"buffered"`` or ``"speculative"``, checking also that the text the stream shows,
    retractions applied, is the result's. Raises :class:`ScenarioFailed` when the cascade
    does otherwise.

    Example::

        @pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
        async def test_failover(scenario):
            with open("cascade.toml", "rb") as f:
                config = tomllib.load(f)
            await run_scenario(scenario, config, primary="gpt", fallback="claude")
    """
    async with (
        _server(config, primary) as first,
        _server(config, fallback) as second,
    ):
        urls = {primary: first.url, fallback: second.url}
        data = _only(config, (primary, fallback), urls, scenario.tune)
        built = Config.from_dict(data)
        by_name = {p.name: p for t in built.tiers for p in t.providers}
        sides = [
            Side(name=n, model=by_name[n].model, config=by_name[n], server=server)
            for n, server in ((primary, first), (fallback, second))
        ]
        clock = FakeClock(autojump=True)
        async with Cascade.from_dict(data, clock=clock) as cascade:
            stage = Stage(
                cascade=cascade,
                primary=sides[0],
                fallback=sides[1],
                clock=clock,
                answer=answer,
                messages=tuple(dict(m) for m in messages),
                via=via,
            )
            await scenario.play(stage)


def _kind(config: Mapping[str, Any], name: str) -> str:
    for t in config.get("tiers", []):
        for p in t.get("providers", []):
            if p.get("name") == name:
                return str(p.get("kind"))
    raise CascadeError(f"no provider named {name!r} in the config")


def _server(config: Mapping[str, Any], name: str) -> FakeServer:
    """A fake server of the provider's kind (each provider gets one of its own)."""
    kind = _kind(config, name)
    if kind == "openai":
        return FakeOpenAIServer()
    if kind == "anthropic":
        return FakeAnthropicServer()
    raise CascadeError(f"provider {name!r}: kind {kind!r} has no fake server")
