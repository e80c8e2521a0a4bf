"""cascade-engine: run each LLM request through tiers of models, cheap to expensive, and pay
for a bigger model only when validators reject the cheaper answer.

>>> from cascade import Cascade
>>> async def main():  # doctest: +SKIP
...     async with Cascade.from_config("cascade.toml") as cascade:
...         result = await cascade.run(messages=[{"role": "user", "content": "Hi"}])
...     print(result.text, result.tier, result.cost_usd)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from ._answers import AnswerKey, AnswerType, AnswerTypeError, answer_type
from ._clock import Clock, SystemClock
from ._config import (
    BreakerConfig,
    Config,
    HedgeConfig,
    LimitsConfig,
    ProviderConfig,
    QualityConfig,
    SharedConfig,
    TelemetryConfig,
    TierConfig,
    Variant,
    load_config,
)
from ._engine import Cascade
from ._errors import (
    AllProvidersFailed,
    BudgetExceeded,
    CascadeError,
    CascadeExhausted,
    ConfigError,
    ContentFiltered,
    ContextLengthExceeded,
    DeadlineExceeded,
    InputError,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ProviderTimeout,
    RateLimited,
    RequestRejected,
    ResponseTooLarge,
    RunError,
)
from ._telemetry import add_trace_ids
from ._types import (
    Attempt,
    Chunk,
    Completion,
    Message,
    Outcome,
    RequestOptions,
    Result,
    Usage,
    Verdict,
)
from .engine import (
    AttemptFinished,
    AttemptStarted,
    Delta,
    Escalated,
    Event,
    Failed,
    Finished,
    Retracted,
    Routed,
    Stream,
    StreamMode,
    TierStarted,
)
from .providers import Provider, SupportsN, SupportsWhole, register_provider_kind
from .resilience import AsyncBreaker, CircuitOpen, QualityBreaker, RetryPolicy
from .resilience.limiter import LimiterTimeout, RateLimiter
from .routing import RouteDecision, Router, RouteRequest, TierInfo, router
from .validators import ValidationContext, Validator, validator

try:
    __version__ = version("cascade-engine")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AllProvidersFailed",
    "AnswerKey",
    "AnswerType",
    "AnswerTypeError",
    "AsyncBreaker",
    "Attempt",
    "AttemptFinished",
    "AttemptStarted",
    "BreakerConfig",
    "BudgetExceeded",
    "Cascade",
    "CascadeError",
    "CascadeExhausted",
    "Chunk",
    "CircuitOpen",
    "Clock",
    "Completion",
    "Config",
    "ConfigError",
    "ContentFiltered",
    "ContextLengthExceeded",
    "DeadlineExceeded",
    "Delta",
    "Escalated",
    "Event",
    "Failed",
    "Finished",
    "HedgeConfig",
    "InputError",
    "LimiterTimeout",
    "LimitsConfig",
    "MalformedResponse",
    "Message",
    "Outcome",
    "Provider",
    "ProviderConfig",
    "ProviderConnectionError",
    "ProviderError",
    "ProviderStatusError",
    "ProviderTimeout",
    "QualityBreaker",
    "QualityConfig",
    "RateLimited",
    "RateLimiter",
    "RequestOptions",
    "RequestRejected",
    "ResponseTooLarge",
    "Result",
    "Retracted",
    "RetryPolicy",
    "RouteDecision",
    "RouteRequest",
    "Routed",
    "Router",
    "RunError",
    "SharedConfig",
    "Stream",
    "StreamMode",
    "SupportsN",
    "SupportsWhole",
    "SystemClock",
    "TelemetryConfig",
    "TierConfig",
    "TierInfo",
    "TierStarted",
    "Usage",
    "ValidationContext",
    "Validator",
    "Variant",
    "Verdict",
    "__version__",
    "add_trace_ids",
    "answer_type",
    "load_config",
    "register_provider_kind",
    "router",
    "validator",
]
