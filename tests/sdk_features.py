"""What the installed OpenTelemetry SDK lets cascade do, for tests of those fast paths:
before API/SDK 1.42 there is no random-trace-id flag, so cascade leaves head sampling and
span starts to the SDK (its spans are then the SDK's own, which the other tests check)."""

from __future__ import annotations

import pytest

from cascade._telemetry._light_plan import light_enabled
from cascade._telemetry._sampling import _RANDOM_FLAG

HEAD_SAMPLING = _RANDOM_FLAG is not None
"""Whether cascade decides head sampling itself on this SDK."""

LIGHT_SPANS = pytest.mark.skipif(
    not light_enabled(), reason="this SDK has no light spans (before 1.42, or another layout)"
)

NEEDS_HEAD_SAMPLING = pytest.mark.skipif(
    not HEAD_SAMPLING, reason="this SDK leaves head sampling to the SDK (before 1.42)"
)
