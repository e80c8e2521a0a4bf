"""A tier's quality breaker: a circuit breaker on validator verdicts.

A provider that answers garbage with status 200 never trips its transport breaker
(:mod:`.breaker`): every call "succeeds", the tier's validators reject every answer, and
each run pays for the tier before escalating. :class:`QualityBreaker` watches the tier's
pass rate over its last ``window`` judged answers; below ``min_pass_rate`` (with at least
``min_samples`` in) it opens, and the engine skips the tier for ``cooldown_s`` on the
cascade's :class:`~cascade._clock.Clock`. Then the first run to come is the probe
(half-open; every other run still skips): its verdict closes the breaker, with a fresh
window, or opens it again. A probe that ends with no verdict (its providers failed, the
run was cancelled or over budget) hands the probe to the next run.

Everything is synchronous and awaits nothing, so under any concurrency on one event loop
exactly one run becomes the probe.

Example (each transition is also logged, and told to the listeners)::

    clock = FakeClock()
    qb = QualityBreaker("small", QualityConfig(window=4, min_samples=2), clock=clock)
    for _ in range(2):
        qb.record(False, probe=qb.admit() == "probe")
    assert qb.state == "open" and qb.admit() is None
    clock.advance(60.0)
    assert (qb.admit(), qb.admit()) == ("probe", None)
    qb.record(True, probe=True)
    assert qb.state == "closed"
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, Protocol

import structlog

from .._clock import Clock

if TYPE_CHECKING:
    from .._config import QualityConfig  # _config imports this package: no cycle at run time

__all__ = ["QUALITY_OPEN", "Admission", "QualityBreaker", "QualityListener", "QualityState"]

log = structlog.get_logger("cascade")

QualityState = Literal["closed", "open", "half_open"]
Admission = Literal["closed", "probe"]
"""How a run was let into the tier: as one of many (closed), or as the one probe."""

QUALITY_OPEN = "QualityBreakerOpen"
"""The ``error_type`` of a tier skipped because its quality breaker is open."""


class QualityListener(Protocol):
    """Called on every state change of a quality breaker: the tier's name, the old and
    the new state. A listener that raises is logged and otherwise ignored."""

    def __call__(self, tier: str, old: QualityState, new: QualityState) -> None: ...


class QualityBreaker:
    """One tier's quality breaker (see the module docstring)."""

    __slots__ = (
        "_clock",
        "_listeners",
        "_opened_at",
        "_passes",
        "_probing",
        "_window",
        "config",
        "name",
        "state",
        "transitions",
    )

    def __init__(
        self,
        name: str,
        config: QualityConfig,
        *,
        clock: Clock,
        listeners: Sequence[QualityListener] = (),
    ) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._listeners = tuple(listeners)
        self._window: deque[bool] = deque(maxlen=config.window)
        self._passes = 0
        self._opened_at = 0.0
        self._probing = False
        self.state: QualityState = "closed"
        self.transitions = 0

    def __repr__(self) -> str:
        n = len(self._window)
        extra = ""
        if self.state == "open":
            extra = f", next probe in {self.retry_in_s():.3g}s"
        elif self.state == "half_open":
            extra = ", probe out" if self._probing else ", waiting for a probe"
        return (
            f"<QualityBreaker {self.name!r} {self.state}: {self._passes}/{n} passed "
            f"(floor {self.config.min_pass_rate:g} over {self.config.window}){extra}>"
        )

    @property
    def pass_rate(self) -> float | None:
        """The window's pass rate (None while it is empty)."""
        n = len(self._window)
        return self._passes / n if n else None

    @property
    def samples(self) -> int:
        """Verdicts in the window."""
        return len(self._window)

    def retry_in_s(self) -> float:
        """Seconds until an open breaker lets a probe through (0 otherwise)."""
        if self.state != "open":
            return 0.0
        return max(self._opened_at + self.config.cooldown_s - self._clock.monotonic(), 0.0)

    def admit(self) -> Admission | None:
        """Whether a run may try the tier now: ``"closed"`` (as any), ``"probe"`` (the one
        half-open probe), or None (skip the tier)."""
        state = self.state
        if state == "closed":
            return "closed"
        if state == "open":
            if self._clock.monotonic() < self._opened_at + self.config.cooldown_s:
                return None
            self._move("half_open")
        if self._probing:
            return None
        self._probing = True
        return "probe"

    def record(self, passed: bool, *, probe: bool) -> None:
        """A validator verdict on one of the tier's answers, from a run admitted as
        ``probe`` or not. A verdict of a run admitted while closed that ends after the
        breaker opened is stale, and ignored."""
        if probe:
            if self.state == "half_open" and self._probing:
                self._probing = False
                if passed:
                    self._window.clear()
                    self._passes = 0
                    self._move("closed")
                else:
                    self._open()
            return
        if self.state != "closed":
            return
        window = self._window
        if len(window) == window.maxlen and window[0]:
            self._passes -= 1
        window.append(passed)
        self._passes += passed
        n = len(window)
        if n >= self.config.min_samples and self._passes < self.config.min_pass_rate * n:
            self._open()

    def release(self, *, probe: bool) -> None:
        """A run admitted as ``probe`` ended with no verdict: the next run probes."""
        if probe and self.state == "half_open":
            self._probing = False

    def _open(self) -> None:
        self._opened_at = self._clock.monotonic()
        self._move("open")

    def _move(self, new: QualityState) -> None:
        old = self.state
        if old == new:
            return
        self.state = new
        self.transitions += 1
        log.warning(
            "quality breaker state change", tier=self.name, old=old, new=new,
            pass_rate=self.pass_rate, samples=len(self._window),
        )  # fmt: skip
        for listener in self._listeners:
            try:
                listener(self.name, old, new)
            except Exception:
                log.exception("quality breaker listener failed", tier=self.name)
