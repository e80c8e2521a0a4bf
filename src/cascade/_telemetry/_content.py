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

Captured text is bounded (:data:`MAX_CAPTURED`): a prompt is whatever a caller (a gateway's
client) sends, and a span waits in the batch processor's queue (2,048 spans by default)
until it is exported. Uncapped, an 8 MB prompt held 8 MB per call span (twice in OTLP
with OpenInference's names too), made the span larger than a collector takes (4 MiB by
default: the whole batch refused) and was encoded on the event loop at every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec

if TYPE_CHECKING:
    from .._types import Attempt, Completion, Message, Verdict

__all__ = [
    "MAX_CAPTURED",
    "captured_text",
    "escalation_detail",
    "input_messages",
    "output_messages",
    "utf8",
    "verdict_reason",
]

MAX_CAPTURED: Final = 32_768
"""Characters of prompts or answers one span attribute carries, counting each message's
role and the JSON around it (escapes included): text past it is cut, the cut marked in
the text itself (:func:`_within`, up to :data:`_MARKER` characters more), later messages
left out."""
_PER_MESSAGE: Final = len('{"role":"","parts":[{"type":"text","content":""}]},')
_PER_FINISH: Final = len(',"finish_reason":""')
_MAX_FINISH: Final = 100
"""Characters of a finish reason (the provider's text) a captured answer carries."""
_MARKER: Final = 100
"""What the cut's marker may add past :data:`MAX_CAPTURED`."""

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


def _within(texts: Iterable[tuple[int, str]], count: int, limit: int) -> list[str]:
    """The contents of ``count`` messages, given as ``(JSON around it, content)``, as
    :data:`MAX_CAPTURED` lets a span carry them: whole while they fit ``limit``; the
    first that does not is cut, and ends with what was left out (``…[N more characters,
    M more messages not captured]``); the messages after it are not listed."""
    kept: list[str] = []
    left = limit
    for around, content in texts:
        cost = around + len(content)
        if cost <= left:
            kept.append(content)
            left -= cost
            continue
        kept.append(_cut(content, max(left - around, 0), count - len(kept) - 1))
        break
    return kept


def _cut(text: str, cut: int, more: int = 0) -> str:
    """``text``'s first ``cut`` characters, and what was left out of it (and after it)."""
    also = f", {more} more message{'s' if more != 1 else ''}" if more else ""
    return f"{text[:cut]}…[{len(text) - cut} more characters{also} not captured]"


def captured_text(text: str) -> str:
    """One captured text (an answer, as OpenInference's ``output.value``): at most
    :data:`MAX_CAPTURED` characters of it, the cut marked as :func:`_within` marks it,
    and as UTF-8 can carry it."""
    return utf8(text if len(text) <= MAX_CAPTURED else _cut(text, MAX_CAPTURED))


def input_messages(messages: Sequence[Message]) -> str:
    """Captured prompts, as the GenAI conventions' ``gen_ai.input.messages`` JSON (at most
    :data:`MAX_CAPTURED` characters of them)."""

    def encoded(budget: int) -> str:
        contents = _within(
            ((_PER_MESSAGE + len(m.role), m.content) for m in messages), len(messages), budget
        )
        try:
            return _encode_input(messages, contents, str)
        except UnicodeEncodeError:  # captured content never fails a run
            return _encode_input(messages, contents, utf8)

    return _bounded(encoded)


def _bounded(encoded: Callable[[int], str]) -> str:
    """``encoded(budget)`` for the largest budget tried whose JSON fits
    :data:`MAX_CAPTURED` (and the marker): JSON escapes (a quote, a control character:
    up to six characters for one) may make it longer than its budget; then again with a
    budget that much smaller (a few times at most, each at most MAX_CAPTURED's work)."""
    budget = MAX_CAPTURED
    found = encoded(budget)
    for _ in range(4):
        if len(found) <= MAX_CAPTURED + _MARKER or budget == 0:
            break
        budget = max(0, budget * MAX_CAPTURED // len(found) - _MARKER)
        found = encoded(budget)
    return found


def _encode_input(
    messages: Sequence[Message], contents: list[str], text: Callable[[str], str]
) -> str:
    return _encode(
        [
            {"role": text(m.role), "parts": [{"type": "text", "content": text(content)}]}
            for m, content in zip(messages, contents, strict=False)
        ]
    ).decode()


def output_messages(completions: Sequence[Completion]) -> str:
    """Captured answers, as ``gen_ai.output.messages`` JSON (at most
    :data:`MAX_CAPTURED` characters of them)."""

    def around(c: Completion) -> int:
        reason = c.finish_reason
        extra = 0 if reason is None else _PER_FINISH + min(len(reason), _MAX_FINISH)
        return _PER_MESSAGE + len("assistant") + extra

    def encoded(budget: int) -> str:
        contents = _within(((around(c), c.text) for c in completions), len(completions), budget)
        try:
            return _encode_output(completions, contents, str)
        except UnicodeEncodeError:
            return _encode_output(completions, contents, utf8)

    return _bounded(encoded)


def _encode_output(
    completions: Sequence[Completion], contents: list[str], text: Callable[[str], str]
) -> str:
    messages = []
    for c, content in zip(completions, contents, strict=False):
        message: dict[str, Any] = {
            "role": "assistant",
            "parts": [{"type": "text", "content": text(content)}],
        }
        if c.finish_reason is not None:
            message["finish_reason"] = text(c.finish_reason[:_MAX_FINISH])
        messages.append(message)
    return _encode(messages).decode()
