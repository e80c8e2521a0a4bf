"""A seeded responder that breaks a fraction of a fake server's answers at random."""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping, Sequence
from typing import Final, Literal, TypeAlias

import msgspec

from cascade.testing._reply import FakeRequest, Reply, Responder, as_reply

__all__ = ["DEFAULT_FAULTS", "FAULTS", "Chaos", "Fault"]

Fault: TypeAlias = Literal[
    "server_error", "rate_limited", "drop", "malformed", "hang", "error_event"
]
"""What `Chaos` can do to an answer:

- ``server_error``: a 5xx status (one of ``statuses``), with an error body;
- ``rate_limited``: 429 with ``Retry-After`` / ``retry-after-ms`` drawn from ``retry_after_s``;
- ``drop``: the connection is reset mid-body (streaming: after the first delta);
- ``malformed``: a body (or an SSE event) that is not valid JSON;
- ``hang``: no answer at all, until the client gives up or the server closes;
- ``error_event``: streaming, an in-stream error event after the first delta.
"""

FAULTS: Final[tuple[Fault, ...]] = (
    "server_error",
    "rate_limited",
    "drop",
    "malformed",
    "hang",
    "error_event",
)

DEFAULT_FAULTS: Final[Mapping[Fault, float]] = {
    "server_error": 1.0,
    "rate_limited": 1.0,
    "drop": 1.0,
    "malformed": 1.0,
    "hang": 1.0,
}
"""The default mix: the five faults an HTTP API really shows, equally likely."""


class Chaos:
    """A responder that answers ``answer`` but injects a random fault into ``rate`` of calls.

    Deterministic given ``seed``: each model has its own random stream (seeded from
    ``seed`` and the model name), so the ``k``-th request for a model meets the same fate
    in every run, however requests for different models interleave. ``faults`` weighs the
    kinds of fault (see `Fault`); ``counts`` tells how many of each were injected, and
    ``"ok"`` how many calls were answered normally.

    ``answer`` is a `Reply`, a text, or a responder deciding the normal answer per request;
    a fault keeps its text (what a dropped stream had started to say).

    Example::

        chaos = Chaos('{"answer": 42}', rate=0.3, seed=7)
        server.respond("tier1", chaos)
        server.respond("tier2", chaos)   # one mix, one set of counters
        ...
        assert chaos.calls == server.request_count
        print(chaos.counts)   # {'ok': 701, 'server_error': 61, 'rate_limited': 58, ...}
    """

    __slots__ = (
        "_answer",
        "_by_model",
        "_counts",
        "_kinds",
        "_rate",
        "_retry_after_s",
        "_rngs",
        "_seed",
        "_statuses",
        "_weights",
    )

    def __init__(
        self,
        answer: Reply | str | Responder = "ok",
        *,
        rate: float = 0.3,
        seed: int = 0,
        faults: Mapping[Fault, float] = DEFAULT_FAULTS,
        retry_after_s: tuple[float, float] = (0.0, 0.2),
        statuses: Sequence[int] = (500, 502, 503),
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be within 0..1, got {rate}")
        unknown = set(faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {list(FAULTS)}")
        if any(not w >= 0 for w in faults.values()) or (rate > 0 and not sum(faults.values())):
            raise ValueError("fault weights must be >= 0, and not all 0")
        low, high = retry_after_s
        if not 0.0 <= low <= high:
            raise ValueError("retry_after_s must be (low, high) with 0 <= low <= high")
        if not statuses or any(not 500 <= s <= 599 for s in statuses):
            raise ValueError("statuses must be 5xx codes")
        self._answer: Reply | Responder = (
            answer if callable(answer) and not isinstance(answer, Reply) else as_reply(answer)
        )
        self._rate = rate
        self._seed = seed
        self._kinds: tuple[Fault, ...] = tuple(k for k in FAULTS if faults.get(k, 0) > 0)
        self._weights = tuple(faults[k] for k in self._kinds)
        self._retry_after_s = (low, high)
        self._statuses = tuple(statuses)
        self._rngs: dict[str, random.Random] = {}
        self._counts: dict[str, int] = dict.fromkeys(("ok", *FAULTS), 0)
        self._by_model: dict[str, dict[str, int]] = {}

    async def __call__(self, request: FakeRequest) -> Reply:
        rng = self._rngs.get(request.model)
        if rng is None:
            # A str seed is hashed with SHA-512: the same stream in every process.
            rng = self._rngs[request.model] = random.Random(f"{self._seed}:{request.model}")
        # Three draws per call whatever the outcome, so one call's fate never shifts the
        # next one's.
        hit, pick, param = rng.random(), rng.random(), rng.random()
        answer = self._answer
        if isinstance(answer, Reply):
            base = answer
        else:
            value = answer(request)
            if inspect.isawaitable(value):
                value = await value
            base = as_reply(value)
        kind: Fault | str = "ok"
        if hit < self._rate:
            kind = _pick(self._kinds, self._weights, pick)
        self._counts[kind] += 1
        per_model = self._by_model.setdefault(request.model, dict.fromkeys(("ok", *FAULTS), 0))
        per_model[kind] += 1
        return self._break(base, kind, param)

    def _break(self, base: Reply, kind: str, param: float) -> Reply:
        replace = msgspec.structs.replace
        if kind == "ok":
            return base
        if kind == "server_error":
            status = self._statuses[min(int(param * len(self._statuses)), len(self._statuses) - 1)]
            return Reply(status=status, latency_s=base.latency_s)
        if kind == "rate_limited":
            low, high = self._retry_after_s
            return Reply(status=429, retry_after_s=low + param * (high - low),
                         latency_s=base.latency_s)  # fmt: skip
        if kind == "error_event":
            return replace(base, fault="error_event", status=503)
        if kind == "drop":
            return replace(base, fault="drop")
        if kind == "malformed":
            return replace(base, fault="malformed")
        return replace(base, fault="hang")

    @property
    def counts(self) -> dict[str, int]:
        """Calls answered normally (``"ok"``) and faults injected, by kind."""
        return dict(self._counts)

    def counts_for(self, model: str) -> dict[str, int]:
        """`counts` for one model."""
        return dict(self._by_model.get(model, dict.fromkeys(("ok", *FAULTS), 0)))

    @property
    def calls(self) -> int:
        """Every call answered (normally or not)."""
        return sum(self._counts.values())

    @property
    def faults_injected(self) -> int:
        return self.calls - self._counts["ok"]

    def __repr__(self) -> str:
        faults = " ".join(f"{k}={v}" for k, v in self._counts.items() if v and k != "ok")
        return (
            f"<Chaos rate={self._rate:g} seed={self._seed} calls={self.calls} "
            f"ok={self._counts['ok']}{' ' + faults if faults else ''}>"
        )


def _pick(kinds: tuple[Fault, ...], weights: tuple[float, ...], u: float) -> Fault:
    """The kind that ``u`` (uniform in [0, 1)) falls on, by cumulative weight."""
    target = u * sum(weights)
    for kind, weight in zip(kinds, weights, strict=True):
        target -= weight
        if target < 0:
            return kind
    return kinds[-1]
