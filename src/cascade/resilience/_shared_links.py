"""The links a breaker and a limiter hold to their records in a
:class:`~cascade.resilience.shared.SharedState` (see that module for the design)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .breaker import AsyncBreaker
    from .shared import SharedState

__all__ = ["SharedBreaker", "SharedLimit"]


class SharedBreaker:
    """One breaker's link to its shared record ``{prefix}:breaker:{name}``.

    ``epoch`` is the last published transition this replica has applied (or published);
    ``failures`` the shared consecutive count as last seen, so that a success only writes
    to Redis when there is a count to reset.
    """

    __slots__ = ("_breaker", "_state", "epoch", "failures", "key")

    def __init__(self, state: SharedState, breaker: AsyncBreaker) -> None:
        self._state = state
        self._breaker = breaker
        self.key = state.key("breaker", breaker.name)
        self.epoch = 0
        self.failures = 0

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
        reply = await self._state.script(
            "breaker", self.key, op, breaker.fail_max, breaker.reset_timeout_s
        )
        if reply is None:
            return
        state, epoch, retry_in, failures = str(reply[0]), int(reply[1]), float(reply[2]), reply[3]
        if state == "counted":
            self.failures = int(failures)
        elif op in ("open", "close"):  # our own transition, published
            self.epoch = max(self.epoch, epoch)
        elif state == "open" and epoch > self.epoch:  # open already, or opened by this one
            self.epoch = epoch
            breaker.force_open(retry_in)

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
        if state == "open" and open_for_s > 0:
            self._breaker.force_open(open_for_s)
        elif state == "closed" and self._breaker.state != "closed":
            self._breaker.force_close()

    def __repr__(self) -> str:
        return f"<SharedBreaker {self.key!r} epoch={self.epoch} failures={self.failures}>"


class SharedLimit:
    """One provider's shared requests and tokens budgets, ``{prefix}:limit:{name}``."""

    __slots__ = ("_burst_s", "_requests_t", "_state", "_tokens_t", "key")

    def __init__(
        self,
        state: SharedState,
        name: str,
        *,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        burst_s: float,
    ) -> None:
        self._state = state
        self.key = state.key("limit", name)
        # GCRA emission intervals, seconds per unit; 0 for a budget that is not limited
        self._requests_t = 0.0 if requests_per_minute is None else 60.0 / requests_per_minute
        self._tokens_t = 0.0 if tokens_per_minute is None else 60.0 / tokens_per_minute
        self._burst_s = burst_s

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
        )

    async def take(self, tokens: int) -> float | None:
        """Reserve one request and ``tokens``: ``0.0`` if granted (and charged), else the
        seconds until they would fit; ``None`` when Redis is down (local limits only)."""
        reply = await self._state.script("limit", self.key, *self._args("take", 1, tokens))
        return None if reply is None else float(reply)

    def adjust(self, *, requests: float = 0.0, tokens: float = 0.0) -> None:
        """Charge (or, negative, refund) the shared budgets, in the background."""
        if requests or tokens:
            args = self._args("adjust", requests, tokens)
            self._state.spawn(lambda: self._send(args))

    def block(self, seconds: float) -> None:
        """Admit nobody, in any replica, for ``seconds`` (a 429's retry-after)."""
        if seconds > 0:
            self._state.spawn(lambda: self._send(("block", repr(float(seconds)))))

    async def _send(self, args: tuple[str | float, ...]) -> None:
        await self._state.script("limit", self.key, *args)

    def __repr__(self) -> str:
        return f"<SharedLimit {self.key!r} {'up' if self.available else 'down'}>"
