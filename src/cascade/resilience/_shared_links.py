"""The links a breaker and a limiter hold to their records in a
:class:`~cascade.resilience.shared.SharedState` (see that module for the design)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ._buckets import debt_span_s
from ._redis_scripts import MAX_SPAN_S, MAX_TTL_S

if TYPE_CHECKING:
    from .breaker import AsyncBreaker
    from .shared import SharedState

__all__ = ["SharedBreaker", "SharedLimit", "parse_record"]


_LEASE_MIN_S = 1.0
_LEASE_MAX_S = 300.0


class SharedBreaker:
    """One breaker's link to its shared record ``{prefix}:breaker:{name}``.

    ``epoch`` is the last published transition this replica has applied (or published);
    ``failures`` the shared consecutive count as last seen, so that a success only writes
    to Redis when there is a count to reset.

    The half-open probe is one across replicas: only the holder of the lease
    ``{prefix}:probe:{name}`` probes. The lease lasts the breaker's ``reset_timeout_s``
    (between 1 and 300 seconds) unless a published transition ends it first, so a
    replica that dies while probing holds the others back one window at most.
    """

    __slots__ = (
        "_breaker",
        "_elsewhere_until",
        "_lease_until",
        "_state",
        "_taking",
        "epoch",
        "failures",
        "key",
        "probe_key",
    )

    def __init__(self, state: SharedState, breaker: AsyncBreaker) -> None:
        self._state = state
        self._breaker = breaker
        self.key = state.key("breaker", breaker.name)
        self.probe_key = state.key("probe", breaker.name)
        self.epoch = 0
        self.failures = 0
        # On the breaker's clock: until when this replica holds the probe lease, and
        # until when another replica does (as far as the last attempt to take it said).
        self._lease_until = -math.inf
        self._elsewhere_until = -math.inf
        self._taking = False

    # -- the probe lease -------------------------------------------------------------------

    @property
    def _lease_s(self) -> float:
        return min(max(self._breaker.reset_timeout_s, _LEASE_MIN_S), _LEASE_MAX_S)

    def probe_refused(self) -> float | None:
        """``None`` if this replica may send the half-open probe (it holds the lease, or
        Redis is down and the breaker is on its own); else the seconds to refuse callers
        for, having started to take the lease in the background if nobody holds it."""
        if not self._state.available:
            return None
        now = self._breaker._clock.monotonic()
        if now < self._lease_until:
            return None
        if now < self._elsewhere_until:
            return self._elsewhere_until - now
        if not self._taking:
            self._taking = self._state.spawn(self.take_lease) is not None
        return 0.0

    async def take_lease(self) -> None:
        """Try to take the probe lease (``SET NX PX``); a no-op while a try is under way."""
        self._taking = True
        try:
            lease_s = self._lease_s
            reply = await self._state.script(
                "probe", [self.probe_key], "take", self._state.token, repr(lease_s * 1000)
            )
        finally:
            self._taking = False
        if reply is None:
            return
        now = self._breaker._clock.monotonic()
        held_ms = int(reply)
        if held_ms <= 0:
            self._lease_until = now + lease_s
        else:
            self._elsewhere_until = now + min(held_ms / 1000.0, lease_s)

    def wants_lease(self) -> bool:
        """Whether a call now would need the lease this replica does not hold yet."""
        if not self._state.available or self._taking:
            return False
        now = self._breaker._clock.monotonic()
        return now >= self._lease_until and now >= self._elsewhere_until

    def end_probe(self, *, drop: bool) -> None:
        """This replica's probe is over; ``drop``: give the lease back (a probe whose
        outcome is published needs not: the transition deletes the lease)."""
        held = self._lease_until > -math.inf
        self._lease_until = -math.inf
        if drop and held:
            token, lease_ms = self._state.token, repr(self._lease_s * 1000)
            self._state.spawn(lambda: self._drop(token, lease_ms))

    async def _drop(self, token: str, lease_ms: str) -> None:
        await self._state.script("probe", [self.probe_key], "drop", token, lease_ms)

    def _transition_seen(self) -> None:
        # Any published transition ends a half-open period and deletes the lease.
        self._lease_until = -math.inf
        self._elsewhere_until = -math.inf

    # -- outcomes --------------------------------------------------------------------------

    def outcome(self, *, failed: bool, probe: bool, opened: bool) -> None:
        """Report one call's outcome (the breaker calls this; never waits)."""
        if failed:
            op = "open" if opened else "fail"
        elif probe:
            op = "close"
        elif self.failures > 0:
            op = "ok"
            self.failures = 0
        else:
            return
        self._state.spawn(lambda: self._send(op))

    async def _send(self, op: str) -> None:
        breaker = self._breaker
        window = repr(min(breaker.reset_timeout_s, MAX_SPAN_S))
        reply = await self._state.script(
            "breaker", [self.key, self.probe_key], op, breaker.fail_max, window
        )
        if reply is None:
            return
        state, epoch, retry_in, failures = str(reply[0]), int(reply[1]), float(reply[2]), reply[3]
        if state == "counted":
            self.failures = int(failures)
        elif op in ("open", "close"):  # our own transition, published
            self.epoch = max(self.epoch, epoch)
            self._transition_seen()
        elif state == "open" and epoch > self.epoch:  # open already, or opened by this one
            self.epoch = epoch
            self._transition_seen()
            breaker.force_open(min(retry_in, breaker.reset_timeout_s))

    def apply(self, state: str | None, epoch: int, open_for_s: float, failures: int) -> None:
        """Apply a polled record: a newer "open" opens the breaker until the shared time,
        a newer "closed" closes it."""
        self.failures = failures
        if state is None:  # no record (a fresh or restarted Redis): start again
            self.epoch = 0
            return
        if epoch <= self.epoch:
            return
        self.epoch = epoch
        self._transition_seen()
        if state == "open" and open_for_s > 0:
            # No replica opens for longer than its window: a far-off time is not believed.
            self._breaker.force_open(min(open_for_s, self._breaker.reset_timeout_s))
        elif state == "closed" and self._breaker.state != "closed":
            self._breaker.force_close()

    def __repr__(self) -> str:
        return f"<SharedBreaker {self.key!r} epoch={self.epoch} failures={self.failures}>"


class SharedLimit:
    """One provider's shared requests and tokens budgets, ``{prefix}:limit:{name}``."""

    __slots__ = ("_burst_s", "_requests_t", "_span_s", "_state", "_tokens_t", "key")

    def __init__(
        self,
        state: SharedState,
        name: str,
        *,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        burst_s: float,
        max_wait_s: float,
    ) -> None:
        self._state = state
        self.key = state.key("limit", name)
        # GCRA emission intervals, seconds per unit; 0 for a budget that is not limited
        # The script refuses an interval or burst past MAX_SPAN_S (about 31 years), and a
        # refused call takes the state down: a rarer one is shared as that (the local
        # bucket, checked first, keeps the real one).
        self._requests_t = (
            0.0 if requests_per_minute is None else min(60.0 / requests_per_minute, MAX_SPAN_S)
        )
        self._tokens_t = (
            0.0 if tokens_per_minute is None else min(60.0 / tokens_per_minute, MAX_SPAN_S)
        )
        self._burst_s = min(burst_s, MAX_SPAN_S)
        # no charge leaves more refill than this owed (the script drops a record beyond it)
        self._span_s = min(debt_span_s(burst_s, max_wait_s), MAX_SPAN_S)

    @property
    def available(self) -> bool:
        return self._state.available

    def _args(self, op: str, requests: float, tokens: float) -> tuple[str | float, ...]:
        return (
            op,
            repr(self._requests_t),
            repr(self._burst_s),
            repr(float(requests)),
            repr(self._tokens_t),
            repr(self._burst_s),
            repr(float(tokens)),
            repr(self._span_s),
        )

    async def take(self, tokens: int) -> float | None:
        """Reserve one request and ``tokens``: ``0.0`` if granted (and charged), else the
        seconds until they would fit; ``None`` when Redis is down (local limits only)."""
        reply = await self._state.script("limit", [self.key], *self._args("take", 1, tokens))
        if reply is None:
            return None
        try:
            raw, dropped = reply
            wait = float(raw)
            self._state.limit_record(self.key, _text(dropped))
        except (TypeError, ValueError):
            return None  # not our script's answer: local limits only, this once
        if math.isnan(wait):
            return None
        return max(wait, 0.0)  # the limiter caps a long one at its max_wait_s

    def adjust(self, *, requests: float = 0.0, tokens: float = 0.0) -> None:
        """Charge (or, negative, refund) the shared budgets, in the background."""
        if requests or tokens:
            args = self._args("adjust", requests, tokens)
            self._state.spawn(lambda: self._send(args))

    def block(self, seconds: float) -> None:
        """Admit nobody, in any replica, for ``seconds`` (a 429's retry-after; at most a
        day, whatever the caller says, so no record outlives that)."""
        if seconds > 0 and math.isfinite(seconds):
            span = repr(min(float(seconds), float(MAX_TTL_S)))
            self._state.spawn(lambda: self._send(("block", span)))

    async def _send(self, args: tuple[str | float, ...]) -> None:
        reply = await self._state.script("limit", [self.key], *args)
        if isinstance(reply, list | tuple) and len(reply) == 2 and reply[1]:
            self._state.limit_record(self.key, _text(reply[1]))

    def __repr__(self) -> str:
        return f"<SharedLimit {self.key!r} {'up' if self.available else 'down'}>"


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_MAX_COUNT = 10**13  # the breaker script treats larger counts as garbage too


def parse_record(reply: object, now: float) -> tuple[str | None, int, float, int] | str:
    """A polled breaker record as ``(state, epoch, open_for_s, failures)``, or the name
    of the first field that does not parse."""
    if isinstance(reply, BaseException) or not isinstance(reply, list | tuple):
        return "record"
    if len(reply) != 4:
        return "record"
    state, open_until, epoch, failures = reply
    if state is not None and state not in ("open", "closed"):
        return "state"
    values: list[float] = []
    for name, raw, whole in (
        ("epoch", epoch, True),
        ("open_until", open_until, False),
        ("failures", failures, True),
    ):
        try:
            value = float(raw or 0)
        except (TypeError, ValueError):
            return name
        if not (math.isfinite(value) and 0 <= value < _MAX_COUNT + (0 if whole else now)):
            return name
        if whole and value != int(value):
            return name
        values.append(value)
    return state, int(values[0]), values[1] - now, int(values[2])
