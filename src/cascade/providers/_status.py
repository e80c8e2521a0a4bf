"""Which error an HTTP error status (or an error event inside a stream) stands for.

Two 400s are not like the others, and both APIs say which they are only in the body:

- the prompt does not fit the model: OpenAI ``"code": "context_length_exceeded"``
  ("This model's maximum context length is ..."; vLLM sends the same message),
  Anthropic ``invalid_request_error`` "prompt is too long: 208310 tokens > 200000
  maximum": :class:`~cascade.ContextLengthExceeded`;
- a content policy refused it: OpenAI ``content_policy_violation``, Azure OpenAI
  ``"code": "content_filter"`` ("... content management policy"), OpenAI's
  ``invalid_prompt`` ("flagged as potentially violating our usage policy"), Anthropic
  ``invalid_request_error`` "Output blocked by content filtering policy":
  :class:`~cascade.ContentFiltered`.
"""

from __future__ import annotations

import re

from .._errors import ContentFiltered, ContextLengthExceeded, ProviderStatusError, RateLimited

__all__ = ["status_class"]

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
_CONTEXT_TEXT = re.compile(
    r"maximum context length|context length exceeded|context_length_exceeded"
    r"|prompt is too long|exceeds the context window|input is too long for",
    re.IGNORECASE,
)
_FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})
_FILTER_TEXT = re.compile(
    r"content filtering policy|content management policy|content_policy_violation"
    r"|flagged as potentially violating",
    re.IGNORECASE,
)
_SCANNED = 2000  # characters of a message searched: the phrases come first


def status_class(
    status: int, *, code: object = None, kind: object = None, message: str = ""
) -> type[ProviderStatusError]:
    """The error class for ``status`` and the body's ``error.code`` / ``error.type`` /
    ``error.message``."""
    if status in (429, 529):
        return RateLimited
    if not 400 <= status < 500:
        return ProviderStatusError
    text = message[:_SCANNED]
    names = {str(v) for v in (code, kind) if isinstance(v, str)}
    if names & _FILTER_CODES or _FILTER_TEXT.search(text):
        return ContentFiltered
    if names & _CONTEXT_CODES or _CONTEXT_TEXT.search(text):
        return ContextLengthExceeded
    return ProviderStatusError
