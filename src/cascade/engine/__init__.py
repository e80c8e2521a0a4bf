"""The engine's events, and the stream that hands them to the caller (``Cascade.stream``).

The engine itself (the tier loop) is :mod:`cascade.engine._core`; ``Cascade`` is its
facade.
"""

from ._events import (
    AttemptFinished,
    AttemptStarted,
    Delta,
    Escalated,
    EscalationReason,
    Event,
    Failed,
    Finished,
    Retracted,
    Routed,
    StreamMode,
    TierStarted,
)
from ._stream import Stream

__all__ = [
    "AttemptFinished",
    "AttemptStarted",
    "Delta",
    "Escalated",
    "EscalationReason",
    "Event",
    "Failed",
    "Finished",
    "Retracted",
    "Routed",
    "Stream",
    "StreamMode",
    "TierStarted",
]
