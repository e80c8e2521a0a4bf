"""What telemetry may say of an answer when content capture is off.

Validators' reasons quote the answer they judge (``json_schema`` the rejected value, a
refusal its text, a partial check the answer's first characters), and answers repeat
prompts: names, numbers, secrets. Spans, metrics and the routing record are read by
whoever runs the collector or the log pipeline, so they carry that text only with content
capture on (the Cascade's ``capture_content``, or
``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``), as prompts and answers
themselves. Otherwise a verdict's reason is a fixed word (``rejected``, ``passed``) and an
escalation's detail names the failing validators (``json_schema: rejected``).

``Result.attempts`` and the stream's events keep the full reasons: they go to the caller,
not to telemetry. Errors (a provider's status and message, a timeout) are not answer
text and stay as they are.

Captured text goes out as UTF-8 (:func:`utf8`): a lone surrogate, which a Python str may
hold but no JSON encoder nor OTLP exporter takes, is replaced rather than failing the run
or the export of every span in its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .._types import Attempt, Verdict

__all__ = ["escalation_detail", "utf8", "verdict_reason"]


def verdict_reason(verdict: Verdict, *, capture: bool) -> str:
    """``verdict``'s reason as telemetry may carry it."""
    if capture or not verdict.reason:
        return verdict.reason
    return "passed" if verdict.passed else "rejected"


def escalation_detail(
    reason: str, detail: str, attempts: Sequence[Attempt], tier: int, *, capture: bool
) -> str:
    """An escalation's ``detail`` as telemetry may carry it: for a tier whose answers were
    rejected, the failing validators of its first rejected attempt (the one the engine's
    detail quotes), without their reasons."""
    if capture or reason != "rejected":
        return detail
    for a in attempts:
        if a.tier == tier and a.outcome == "rejected":
            failing = [v.validator for v in a.verdicts if not v.passed]
            return "; ".join(f"{name}: rejected" for name in failing) or "rejected"
    return "rejected"


def utf8(text: str) -> str:
    """``text`` as UTF-8 can carry it: each lone surrogate replaced with ``?``."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
    return text
