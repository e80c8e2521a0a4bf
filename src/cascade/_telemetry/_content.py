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

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .._types import Attempt, Completion, Message, Verdict

__all__ = ["escalation_detail", "input_messages", "output_messages", "utf8", "verdict_reason"]

_encode = msgspec.json.Encoder().encode


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


def input_messages(messages: Sequence[Message]) -> str:
    """Captured prompts, as the GenAI conventions' ``gen_ai.input.messages`` JSON."""
    try:
        return _encode_input(messages, str)
    except UnicodeEncodeError:  # captured content never fails a run
        return _encode_input(messages, utf8)


def _encode_input(messages: Sequence[Message], text: Callable[[str], str]) -> str:
    return _encode(
        [
            {"role": text(m.role), "parts": [{"type": "text", "content": text(m.content)}]}
            for m in messages
        ]
    ).decode()


def output_messages(completions: Sequence[Completion]) -> str:
    """Captured answers, as ``gen_ai.output.messages`` JSON."""
    try:
        return _encode_output(completions, str)
    except UnicodeEncodeError:
        return _encode_output(completions, utf8)


def _encode_output(completions: Sequence[Completion], text: Callable[[str], str]) -> str:
    messages = []
    for c in completions:
        message: dict[str, Any] = {
            "role": "assistant",
            "parts": [{"type": "text", "content": text(c.text)}],
        }
        if c.finish_reason is not None:
            message["finish_reason"] = text(c.finish_reason)
        messages.append(message)
    return _encode(messages).decode()
