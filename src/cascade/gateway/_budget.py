"""A gateway key's USD budget per UTC day: reserved before a request runs, settled after.

The day is read from the injectable :class:`~cascade._clock.Clock` (:class:`UtcDays`):
wall time is the Unix time at construction plus the clock's progress since, so a
:class:`~cascade.testing.FakeClock` moves the day boundary in tests and nothing sleeps.

**Reserve, then settle.** A request is admitted while the day's settled spend plus the
reservations in flight is below the budget; it then reserves its estimate, and settling
swaps the estimate for what the request cost. The check and the reservation are one step
(one Lua script in Redis, one synchronous step in memory), so two requests never both
take the last headroom: at most one request is admitted past the budget, and the day's
spend stays within ``budget + that request's estimate`` whenever no request costs more
than its estimate. A request that costs more than it reserved (an estimate of 0, say)
adds its excess to that bound.

**Shared.** With a :class:`~cascade.resilience.shared.SharedState` the counters live in
Redis (``{prefix}:spend:{key name}:{day}``, a TTL to the end of that day), so every
replica keeps one budget. The local counters are charged as well: while Redis is down
(or before it answers) each replica holds the budget on its own spend, so N replicas may
spend up to N budgets until it is back. What they spent meanwhile, and the reservations
settled meanwhile, wait in memory (one sum per day) and go to Redis with the next
settlement or reservation of the key once it answers again: a short outage neither hides
that spend from the other replicas nor leaves reservations held in Redis for the rest of
the day. A record in Redis that does not parse is taken as 0, rewritten, and logged
once. Settlements go to Redis in the background (tracked by the state: ``flush()`` /
``aclose()`` wait for them), so a cancelled request still settles.
Each reservation in Redis has an id (a field of the day's record), which its settlement
releases: also when the reserve's reply never came (Redis slow past ``timeout_s``), and
when the settlement arrives before the late reserve runs (it then holds nothing). A
reservation nobody settles (a replica that stopped without settling) is dropped
:data:`HOLD_S` after it was made, when it would otherwise refuse a request; a request
cancelled while its reserve was on its way releases it as one whose reply was lost.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import structlog

from ..resilience._redis_scripts import MAX_TTL_S

if TYPE_CHECKING:
    from .._clock import Clock
    from ..resilience.shared import SharedState

__all__ = ["DayBudget", "Reservation", "UtcDays"]

log = structlog.get_logger("cascade")

DAY_S: Final = 86400
_MAX_USD: Final = 1e15  # the spend script treats larger values as garbage
_TTL_SLACK_S: Final = 60.0  # a day's record outlives its day by this much (within MAX_TTL)
HOLD_S: Final = 3600.0
"""How long Redis keeps a reservation no settlement released (a replica that stopped
without settling, a reply lost): dropped after that when a request would be refused."""


class UtcDays:
    """UTC days on an injectable clock: ``epoch_s`` is the Unix time at the clock's
    current reading (``time.time()`` by default)."""

    __slots__ = ("_clock", "_epoch0", "_mono0")

    def __init__(self, clock: Clock, *, epoch_s: float | None = None) -> None:
        epoch = time.time() if epoch_s is None else epoch_s
        if not math.isfinite(epoch):
            raise ValueError("epoch_s must be a finite number")
        self._clock = clock
        self._mono0 = clock.monotonic()
        self._epoch0 = epoch

    def now(self) -> float:
        """Unix time (seconds, UTC)."""
        return self._epoch0 + (self._clock.monotonic() - self._mono0)

    def day(self) -> int:
        """Days since 1970-01-01 UTC."""
        return math.floor(self.now() / DAY_S)

    def until_next_day(self) -> float:
        """Seconds until the next UTC midnight (never 0: a budget refills *then*)."""
        now = self.now()
        return (math.floor(now / DAY_S) + 1) * DAY_S - now

    def __repr__(self) -> str:
        return f"<UtcDays day={self.day()}>"


class Reservation:
    """What one admitted request holds of a budget: ``amount`` USD on ``day``."""

    __slots__ = ("amount", "day", "id", "shared")

    def __init__(self, day: int, amount: float, *, shared: bool | None, id: str = "") -> None:
        self.day = day
        self.amount = amount
        self.shared = shared
        """True: held in Redis too (its reserve answered); None: nobody knows (its reply
        never came: it may run later); False: not sent (Redis was down)."""
        self.id = id

    def __repr__(self) -> str:
        return f"<Reservation ${self.amount:.6g} day={self.day} shared={self.shared}>"

    def release(self) -> str | None:
        """What a settlement sends Redis to release this reservation, if anything."""
        if self.shared is None:
            return "u:" + self.id
        return "h:" + self.id if self.shared else None


class DayBudget:
    """One key's USD budget per UTC day (see the module docstring for the bound)."""

    __slots__ = (
        "_day",
        "_days",
        "_reserved",
        "_shared",
        "_spent",
        "_unsent",
        "name",
        "usd_per_day",
    )

    def __init__(
        self, name: str, usd_per_day: float, *, days: UtcDays, shared: SharedState | None
    ) -> None:
        if not (0 <= usd_per_day <= _MAX_USD):
            raise ValueError("usd_per_day must be between 0 and 1e15")
        self.name = name
        self.usd_per_day = usd_per_day
        self._days = days
        self._shared = shared
        self._day = days.day()
        self._spent = 0.0
        self._reserved = 0.0
        # settlements Redis has not had yet (it was down): (day, releases, cost)
        self._unsent: tuple[int, tuple[str, ...], float] | None = None

    def _roll(self) -> int:
        day = self._days.day()
        if day != self._day:
            self._day, self._spent, self._reserved = day, 0.0, 0.0
        return day

    def _key(self, day: int) -> str:
        assert self._shared is not None
        return self._shared.key("spend", f"{self.name}:{day}")

    def _ttl_ms(self) -> str:
        ttl = min(self._days.until_next_day() + _TTL_SLACK_S, float(MAX_TTL_S))
        return str(max(1000, math.ceil(ttl * 1000)))

    @property
    def spent(self) -> float:
        """Today's settled spend as this process knows it (its own, or Redis's last word)."""
        self._roll()
        return self._spent

    async def reserve(self, estimate_usd: float) -> Reservation | None:
        """Reserve ``estimate_usd`` of today's budget, or ``None`` when nothing is left."""
        estimate = min(max(float(estimate_usd), 0.0), _MAX_USD)
        day = self._roll()
        if self._unsent is not None:  # Redis has it before this reservation is checked
            sending = self.send_unsent()
            if sending is not None:
                # The key's, not this request's: a client leaving meanwhile does not
                # cancel it (nor could it tell whether Redis had it then).
                await asyncio.wait((sending,))
        if self._spent + self._reserved >= self.usd_per_day:
            return None
        # Held locally before Redis is awaited: a request arriving meanwhile (Redis slow,
        # or hanging until timeout_s) sees it, so the check and the hold stay one step.
        self._reserved += estimate
        shared: bool | None = False
        rid = ""
        if self._shared is not None:
            rid = os.urandom(8).hex()
            sent = self._shared.available
            try:
                reply = await self._shared.script(
                    "spend",
                    [self._key(day)],
                    "reserve",
                    repr(float(self.usd_per_day)),
                    repr(estimate),
                    "0",
                    self._ttl_ms(),
                    rid,
                    str(int(HOLD_S * 1000)),
                )
            except BaseException:
                self._unhold(day, estimate)
                if sent:  # it may have run, or run later: released as a lost reply is
                    self._unsend(day, ("u:" + rid,), 0.0)
                    self.send_unsent()
                raise
            status = self._read(self._key(day), reply)
            if status == "over":
                self._unhold(day, estimate)
                return None
            # no answer from a Redis that was up: the script may have run (or run later)
            shared = True if status == "ok" else None if sent else False
        return Reservation(day, estimate, shared=shared, id=rid)

    def _unhold(self, day: int, amount: float) -> None:
        if self._roll() == day:  # a new day started meanwhile: its holds start at 0
            self._reserved = max(0.0, self._reserved - amount)

    def settle(self, reservation: Reservation, cost_usd: float) -> None:
        """Swap ``reservation`` for what the request cost (Redis in the background)."""
        cost = float(cost_usd)
        cost = min(cost, _MAX_USD) if cost > 0 else 0.0  # NaN and negatives count as 0
        if self._roll() == reservation.day:
            self._reserved = max(0.0, self._reserved - reservation.amount)
            self._spent += cost
        if self._shared is not None:
            # a reservation made while Redis was down is not held there, but its cost counts
            release = reservation.release()
            self._unsend(reservation.day, () if release is None else (release,), cost)
            self.send_unsent()

    def _unsend(self, day: int, releases: tuple[str, ...], cost: float) -> None:
        """Keep a settlement for Redis until it answers (today's only: a day's record
        expires with it)."""
        if day != self._roll():
            return
        if self._unsent is not None and self._unsent[0] == day:
            releases, cost = self._unsent[1] + releases, cost + self._unsent[2]
        self._unsent = (day, releases, min(cost, _MAX_USD))

    def send_unsent(self) -> asyncio.Task[None] | None:
        """Send the settlements Redis has not had, in the background, if it is up (the
        state's ``flush()`` / ``aclose()`` wait for it): what a replica that stops kept
        while Redis was down still reaches it. Returns the sending task, if any."""
        unsent, send = self._unsent, self._take_unsent()
        if send is None or self._shared is None:
            return None
        task = self._shared.spawn(send)
        if task is None:
            self._unsent = unsent  # no event loop to send it from: kept for later
        return task

    def _take_unsent(self) -> Callable[[], Coroutine[Any, Any, None]] | None:
        """What sends the settlements Redis has not had (now taken), or ``None`` when
        there are none or Redis is down."""
        state, unsent = self._shared, self._unsent
        if state is None or unsent is None or not state.available:
            return None
        self._unsent = None
        day, releases, cost = unsent
        if day != self._roll() or not (releases or cost):
            return None
        key = self._key(day)
        hold_ms = str(int(HOLD_S * 1000))
        args = ("settle", hold_ms, "0", repr(cost), self._ttl_ms(), *releases)

        async def send() -> None:
            if not state.available:  # down since: nothing was sent, keep it for later
                self._unsend(day, releases, cost)
                return
            # a call that fails may or may not have run: it is not sent again
            self._read(key, await state.script("spend", [key], *args))

        return send

    def _read(self, key: str, reply: object) -> str | None:
        """The script's status ("ok" / "over"), updating the local view of the spend;
        ``None`` when Redis did not answer (or not as the script does)."""
        if not isinstance(reply, list | tuple) or len(reply) != 4:
            return None
        status, spent, _reserved, dropped = (
            v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in reply
        )
        assert self._shared is not None
        self._shared.limit_record(key, dropped, kind="spend")
        try:
            total = float(spent)
        except ValueError:
            return None
        if status not in ("ok", "over") or not math.isfinite(total):
            return None
        if key == self._key(self._day):
            self._spent = max(self._spent, total)  # every replica's spend, as Redis says
        return status

    def __repr__(self) -> str:
        return (
            f"<DayBudget {self.name!r} spent=${self.spent:.6g}/{self.usd_per_day:g} "
            f"reserved=${self._reserved:.6g}>"
        )
