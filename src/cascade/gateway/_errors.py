"""What the gateway answers when it gives no answer: one error type carrying the HTTP
status, and the mapping from the library's errors to it.

Every failure a client can see is a :class:`GatewayError`; each wire format renders it in
its own error body (OpenAI ``{"error": {"message", "type", "param", "code"}}``). A
traceback never reaches a client: anything unforeseen is a 500 whose message says only
that, logged on the server side.
"""

from __future__ import annotations

import math

from .._errors import (
    AllProvidersFailed,
    BudgetExceeded,
    CascadeError,
    CascadeExhausted,
    DeadlineExceeded,
    InputError,
    RateLimited,
    RequestRejected,
    RunError,
)
from .._types import Attempt
from ..providers._status import about_account
from ..resilience.limiter import LimiterTimeout

__all__ = ["WITHDRAWN", "GatewayError", "from_run_error", "internal_error"]

WITHDRAWN = "answer_withdrawn"
"""The code of a speculative stream's error once the answer whose text was sent is
withdrawn (the format, or the client, cannot take that text back)."""

_MAX_RETRY_AFTER_S = 86400
"""The longest ``Retry-After``: a key's daily budget refills within a day, and no wait
longer than that is worth telling a client (a limit of one request a year)."""
_CAPACITY = frozenset({"RateLimited", "LimiterTimeout"})

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    413: "invalid_request_error",
    414: "invalid_request_error",
    415: "invalid_request_error",
    417: "invalid_request_error",
    431: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "server_error",
    504: "timeout_error",
}


class GatewayError(CascadeError):
    """A request the gateway answers with an error ``status`` (4xx, 5xx).

    ``type`` and ``code`` are the machine-readable kind (OpenAI's ``error.type`` /
    ``error.code``), ``param`` the request field at fault (``messages[2].role``), and
    ``retry_after_s`` the wait sent as ``Retry-After`` (429, 503); ``should_retry``,
    when set, is sent as ``x-should-retry``, which the official SDKs obey over their own
    retry rules (False for a budget spent for the day: retrying cannot help).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        retry_after_s: float | None = None,
        should_retry: bool | None = None,
    ) -> None:
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "error")
        self.retry_after_s = retry_after_s
        self.should_retry = should_retry
        super().__init__(f"{status}: {message}")

    @property
    def retry_after_header(self) -> str | None:
        """``Retry-After`` in whole seconds (rounded up, from 1 to a day), if any."""
        if self.retry_after_s is None:
            return None
        wait = self.retry_after_s
        if math.isnan(wait):
            return "1"
        return str(max(1, math.ceil(min(wait, _MAX_RETRY_AFTER_S))))


_INVALID = frozenset({400, 422})
"""A provider's statuses for a request it cannot take as written."""


def _refused_as_written(attempt: Attempt) -> bool:
    """``attempt`` failed with a 400 or 422 about the request, not the account."""
    if attempt.status not in _INVALID:
        return False
    return not about_account((attempt.error or "").partition(f"HTTP {attempt.status}: ")[2])


def internal_error() -> GatewayError:
    return GatewayError(500, "internal error in the gateway (logged)", code="internal_error")


def shutting_down() -> GatewayError:
    """What a request still in flight when the drain gives up gets: the gateway is
    stopping, another replica (or this one restarted) will serve it."""
    return GatewayError(
        503,
        "the gateway is shutting down; retry the request",
        code="shutting_down",
        retry_after_s=1.0,
    )


def from_run_error(exc: CascadeError) -> GatewayError:
    """The status a run's error answers with.

    ``InputError`` 400 naming the field; ``RequestRejected`` (a content policy refused
    the prompt) 400 ``content_filter``; ``DeadlineExceeded`` 504; ``AllProvidersFailed``
    where every provider answered 429 or was refused by its own rate limiter (capacity,
    not an outage) 429 with the providers' Retry-After (or the limiter's wait); any
    ``AllProvidersFailed`` where every provider answered 400 or 422 about the request
    (not the operator's account) and no tier was skipped (the request, as the client
    wrote it, is not one they take) 400 ``upstream_invalid_request``; any other
    ``AllProvidersFailed``, ``CascadeExhausted`` (``on_exhausted = "error"``) and
    ``BudgetExceeded`` 502, the last two with ``x-should-retry: false``.
    """
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, InputError):
        return GatewayError(400, exc.message, param=exc.path or None, code="invalid_value")
    if isinstance(exc, RequestRejected):
        return GatewayError(
            400, f"the request was refused upstream: {exc.reason}"[:500], code="content_filter"
        )
    if isinstance(exc, DeadlineExceeded):
        return GatewayError(504, str(exc), code="deadline_exceeded")
    if isinstance(exc, AllProvidersFailed):
        failed = [a for a in exc.attempts if a.outcome == "failed"]
        # a provider's 429 and its own limiter's refusal alike: capacity, not an outage
        if failed and all(a.error_type in _CAPACITY for a in failed):
            cause = exc.__cause__
            wait = None
            if isinstance(cause, RateLimited):
                wait = cause.retry_after
            elif isinstance(cause, LimiterTimeout) and cause.retry_in_s > 0:
                wait = cause.retry_in_s
            return GatewayError(
                429,
                "every provider is rate limited",
                code="upstream_rate_limited",
                retry_after_s=1.0 if wait is None else wait,
            )
        # every provider refused it as malformed (a seed past 64 bits, a field a model
        # does not take): the client's request, not an outage. A tier skipped (its
        # quality breaker open) never saw it: not every provider refused it
        skipped = any(a.outcome == "skipped" for a in exc.attempts)
        if failed and not skipped and all(_refused_as_written(a) for a in failed):
            return GatewayError(
                400,
                f"every provider refused the request: {failed[-1].error}"[:1000],
                code="upstream_invalid_request",
            )
        return GatewayError(502, str(exc)[:1000], code="all_providers_failed")
    # The SDKs retry a 502 twice by default: each retry of these runs the cascade again,
    # at its price, to meet the same validators or the same budget (x-should-retry: false)
    if isinstance(exc, CascadeExhausted):
        return GatewayError(502, str(exc), code="cascade_exhausted", should_retry=False)
    if isinstance(exc, BudgetExceeded):
        return GatewayError(502, str(exc), code="budget_exceeded", should_retry=False)
    if isinstance(exc, RunError):
        return GatewayError(502, str(exc)[:1000], code="run_failed")
    return internal_error()
