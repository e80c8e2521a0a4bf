"""Which error an HTTP error status (or an error event inside a stream) stands for.

Two 400s are not like the others, and both APIs say which they are only in the body:

- the prompt does not fit the model: OpenAI ``"code": "context_length_exceeded"``
  (or ``string_above_max_length``), a message that begins "This model's maximum context
  length is" (vLLM sends it with no such code), Anthropic ``invalid_request_error``
  "prompt is too long: 208310 tokens > 200000 maximum": :class:`~cascade.ContextLengthExceeded`;
- a content policy refused it: OpenAI ``content_policy_violation``, Azure OpenAI
  ``"code": "content_filter"``, OpenAI ``"code": "invalid_prompt"`` with "Invalid prompt:
  your prompt was flagged as potentially violating our usage policy", Anthropic
  ``invalid_request_error`` "Output blocked by content filtering policy" (it has no code):
  :class:`~cascade.ContentFiltered`.

Only a 400 is either, and only from the structured fields or a documented message at the
*start* of the message: a provider's words elsewhere (a 404 or a 500 that mentions a
policy, a 400 that echoes the user's prompt) never stop a run that could fail over.
"""

from __future__ import annotations

from .._errors import ContentFiltered, ContextLengthExceeded, ProviderStatusError, RateLimited

__all__ = ["about_account", "status_class"]

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_OPENINGS = ("prompt is too long", "this model's maximum context length is")
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})
_FILTER_OPENINGS = ("output blocked by content filtering policy",)
_FLAGGED_CODE = "invalid_prompt"  # also for prompts invalid for other reasons: see _FLAGGED
_FLAGGED = "invalid prompt: your prompt was flagged as potentially violating"
_OPENING = 120  # characters of a message looked at: the documented words come first
_ACCOUNT = ("your credit balance is too low", "api key not valid")
_ACCOUNT_OPENING = 200  # characters of a refusal looked at for them


def status_class(
    status: int, *, code: object = None, kind: object = None, message: str = ""
) -> type[ProviderStatusError]:
    """The error class for ``status`` and the body's ``error.code`` / ``error.type`` /
    ``error.message``."""
    if status in (429, 529):
        return RateLimited
    if status != 400:
        return ProviderStatusError
    names = {v for v in (code, kind) if isinstance(v, str)}
    text = _opening(message, kind)
    if names & _FILTER_CODES or text.startswith(_FILTER_OPENINGS):
        return ContentFiltered
    if _FLAGGED_CODE in names and text.startswith(_FLAGGED):
        return ContentFiltered
    if names & _CONTEXT_CODES or text.startswith(_CONTEXT_OPENINGS):
        return ContextLengthExceeded
    return ProviderStatusError


def stream_status(status: int | None, *, code: object = None, kind: object = None) -> int:
    """The status an error event inside a 200 stream stands for: the one it names (a
    ``code`` from 400 to 599), else 400 if its ``code`` / ``type`` names a content filter
    or a prompt too long, else 500. Its message never decides it."""
    if status is not None and 400 <= status < 600:
        return status
    names = {v for v in (code, kind) if isinstance(v, str)}
    if names & (_FILTER_CODES | _CONTEXT_CODES):
        return 400
    return 500


def _opening(message: str, kind: object) -> str:
    """The start of ``message``, lower-cased, after the error type if it leads (as in
    "invalid_request_error: prompt is too long")."""
    text = message.lstrip()[:_OPENING]
    if isinstance(kind, str) and kind and text.startswith(f"{kind}:"):
        text = text[len(kind) + 1 :].lstrip()
    return text.casefold()


def about_account(message: str) -> bool:
    """Whether a 400's ``message`` is about the operator's account, not the request:
    Anthropic's when the credit runs out, Gemini's for a bad key (a 400 each). Such a
    refusal is an outage for whoever sent the request."""
    opening = message[:_ACCOUNT_OPENING].lower()
    return any(words in opening for words in _ACCOUNT)
