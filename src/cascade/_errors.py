"""The one error tree of cascade.

Users never need to catch aiohttp, msgspec or jsonschema exceptions: every third-party
failure is translated at the boundary into one of these::

    CascadeError
    ├── ConfigError                 bad configuration; names the path of the bad field
    ├── InputError                  bad request input (messages, options)
    ├── ProviderError               one provider call failed (carries provider, model)
    │   ├── ProviderStatusError     the provider answered with an HTTP error status
    │   │   ├── RateLimited         429 (or 529 overloaded); carries retry_after
    │   │   ├── ContextLengthExceeded  400: the prompt does not fit this model's context
    │   │   └── ContentFiltered     400: the provider's content policy refused the request
    │   ├── ProviderTimeout         connect / first token / idle / total timeout of a call
    │   ├── ProviderConnectionError refused, reset, dropped mid-body
    │   ├── MalformedResponse       the body or stream is not the wire format
    │   │   └── ResponseTooLarge    the body passed max_response_bytes (decoded)
    │   ├── CircuitOpen             (resilience.breaker) the provider's breaker is open
    │   └── LimiterTimeout          (resilience.limiter) no rate-limit headroom in time
    └── RunError                    a whole run failed; carries every attempt made
        ├── CascadeExhausted        every tier ran, no answer passed its validators
        ├── AllProvidersFailed      no provider produced an answer at all
        ├── BudgetExceeded          max_cost_usd left no tier affordable
        ├── DeadlineExceeded        deadline_s ran out
        └── RequestRejected         a provider error the failover policy surfaces
                                    (ContentFiltered by default), not routed around
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._types import Attempt

__all__ = [
    "AllProvidersFailed",
    "BudgetExceeded",
    "CascadeError",
    "CascadeExhausted",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "InputError",
    "MalformedResponse",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderStatusError",
    "ProviderTimeout",
    "RateLimited",
    "RequestRejected",
    "ResponseTooLarge",
    "RunError",
]


class CascadeError(Exception):
    """Base of every error cascade raises."""


class ConfigError(CascadeError):
    """The configuration is invalid.

    ``path`` names the bad field (``tiers[0].providers[1].model``), ``message`` what was
    expected, ``source`` the file it came from (empty for a mapping); shown as
    ``source: path: message``.
    """

    def __init__(self, message: str, *, path: str = "", source: str = "") -> None:
        self.path = path
        self.message = message
        self.source = source
        super().__init__(": ".join(part for part in (source, path, message) if part))


class NestedConfigError(ConfigError, ValueError):
    """A ConfigError from a config Struct's ``__post_init__``, ``path`` relative to it.

    Being a ValueError, msgspec reports it with where the Struct sits in the whole config
    (``tiers[0].providers[0].retry``), and ``Config`` joins the two paths. Not public:
    catch ``ConfigError``."""


class InputError(CascadeError):
    """The request itself is invalid (empty messages, unknown role, bad option)."""

    def __init__(self, message: str, *, path: str = "") -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class ProviderError(CascadeError):
    """One call to one provider failed. The message never contains credentials."""

    def __init__(self, message: str, *, provider: str, model: str) -> None:
        self.provider = provider
        self.model = model
        self.received_chars = 0
        """Characters of answer that had arrived when the call failed (a broken stream)."""
        super().__init__(f"{provider} ({model}): {message}")


class ProviderStatusError(ProviderError):
    """The provider answered with an HTTP error status."""

    def __init__(
        self, message: str, *, provider: str, model: str, status: int, body: str = ""
    ) -> None:
        self.status = status
        self.body = body
        super().__init__(f"HTTP {status}: {message}", provider=provider, model=model)


class RateLimited(ProviderStatusError):
    """The provider refused for capacity (429, or Anthropic's 529 overloaded).

    ``retry_after`` is the provider's hint in seconds, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        model: str,
        status: int = 429,
        body: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, provider=provider, model=model, status=status, body=body)


class ContextLengthExceeded(ProviderStatusError):
    """The prompt (with the room asked for the answer) does not fit the model's context
    window: OpenAI's ``context_length_exceeded``, Anthropic's "prompt is too long". The
    same model would refuse it again, so it is not retried; another provider may fit it."""


class ContentFiltered(ProviderStatusError):
    """The provider's content policy refused the request (OpenAI ``content_filter`` /
    ``content_policy_violation`` / ``invalid_prompt``, Anthropic "blocked by content
    filtering policy").

    ``reason`` is the provider's own message. Routing around a policy is not cascade's
    call to make: by default the run stops with :class:`RequestRejected`.
    """

    def __init__(
        self, message: str, *, provider: str, model: str, status: int = 400, body: str = ""
    ) -> None:
        self.reason = message
        super().__init__(message, provider=provider, model=model, status=status, body=body)


class ProviderTimeout(ProviderError):
    """A call to the provider timed out.

    ``phase`` says which limit: ``connect`` (``connect_timeout_s``), ``first_token``
    (``first_token_timeout_s``), ``idle`` (``idle_timeout_s``, between chunks) or
    ``total`` (``timeout_s``).
    """

    def __init__(self, message: str, *, provider: str, model: str, phase: str = "total") -> None:
        self.phase = phase
        super().__init__(message, provider=provider, model=model)


class ProviderConnectionError(ProviderError):
    """The connection failed: refused, reset, or closed in the middle of the body."""


class MalformedResponse(ProviderError):
    """The provider's body or stream does not follow its wire format."""


class ResponseTooLarge(MalformedResponse):
    """The response body passed the provider's ``max_response_bytes`` (counted decoded,
    after gzip / deflate / br, over every event of a stream); reading stopped there.

    ``limit`` is the configured cap; ``received`` the decoded bytes read when the cap was
    passed (at most ``limit`` plus one read), or what the answer would take in memory once
    decoded when that passed it (see ``ProviderConfig.max_response_bytes``).
    """

    def __init__(
        self, message: str, *, provider: str, model: str, limit: int, received: int
    ) -> None:
        self.limit = limit
        self.received = received
        super().__init__(message, provider=provider, model=model)


class RunError(CascadeError):
    """A whole ``Cascade.run`` failed. ``attempts`` holds every attempt, in order."""

    def __init__(self, message: str, *, attempts: Sequence[Attempt]) -> None:
        self.attempts: tuple[Attempt, ...] = tuple(attempts)
        super().__init__(message)


class CascadeExhausted(RunError):
    """Every tier ran and no answer passed its validators (``on_exhausted = "error"``)."""


class AllProvidersFailed(RunError):
    """No provider returned an answer; the last provider error is the ``__cause__``."""


class BudgetExceeded(RunError):
    """``max_cost_usd`` left no tier whose estimated cost fits."""


class DeadlineExceeded(RunError):
    """``deadline_s`` ran out before an answer was accepted."""


class RequestRejected(RunError):
    """A provider error the failover policy surfaces instead of routing around: by default
    a :class:`ContentFiltered` refusal (see ``RetryPolicy.on_error``).

    ``error`` is that provider error (also the ``__cause__``, and the last of
    ``attempts``); ``reason`` the provider's own message.
    """

    def __init__(self, message: str, *, attempts: Sequence[Attempt], error: ProviderError) -> None:
        self.error = error
        self.reason = error.reason if isinstance(error, ContentFiltered) else str(error)
        super().__init__(message, attempts=attempts)
