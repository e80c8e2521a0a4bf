"""Attribute, event and metric names: the OpenTelemetry GenAI semantic conventions,
OpenInference's (an option: see :mod:`._conventions`), and cascade's own under
``cascade.*``.

Kept here rather than imported from ``opentelemetry-semantic-conventions``, whose GenAI
names live in a private, incubating module that may move between releases.
"""

from __future__ import annotations

from typing import Final

# -- GenAI semantic conventions (spans and metrics) ----------------------------------------

GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_REQUEST_SEED: Final = "gen_ai.request.seed"
GEN_AI_REQUEST_TOP_P: Final = "gen_ai.request.top_p"
GEN_AI_REQUEST_STOP_SEQUENCES: Final = "gen_ai.request.stop_sequences"
GEN_AI_REQUEST_CHOICE_COUNT: Final = "gen_ai.request.choice.count"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"  # noqa: S105
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
ERROR_TYPE: Final = "error.type"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"

OPERATION_CHAT: Final = "chat"
TOKEN_TYPE_INPUT: Final = "input"  # noqa: S105
TOKEN_TYPE_OUTPUT: Final = "output"  # noqa: S105

GEN_AI_CLIENT_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
GEN_AI_CLIENT_TOKEN_USAGE: Final = "gen_ai.client.token.usage"  # noqa: S105
GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"

# Bucket boundaries the GenAI conventions advise for the two client histograms.
DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip

# -- OpenInference (spec/semantic_conventions.md in github.com/Arize-ai/openinference) ------

OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
LLM_MODEL_NAME: Final = "llm.model_name"
LLM_PROVIDER: Final = "llm.provider"
LLM_SYSTEM: Final = "llm.system"
LLM_TOKEN_COUNT_PROMPT: Final = "llm.token_count.prompt"  # noqa: S105
LLM_TOKEN_COUNT_COMPLETION: Final = "llm.token_count.completion"  # noqa: S105
LLM_TOKEN_COUNT_TOTAL: Final = "llm.token_count.total"  # noqa: S105
LLM_TOKEN_COUNT_CACHE_READ: Final = "llm.token_count.prompt_details.cache_read"  # noqa: S105
LLM_TOKEN_COUNT_CACHE_WRITE: Final = "llm.token_count.prompt_details.cache_write"  # noqa: S105
LLM_COST_PROMPT: Final = "llm.cost.prompt"
LLM_COST_COMPLETION: Final = "llm.cost.completion"
LLM_COST_TOTAL: Final = "llm.cost.total"
LLM_COST_CACHE_READ: Final = "llm.cost.prompt_details.cache_read"
LLM_COST_CACHE_WRITE: Final = "llm.cost.prompt_details.cache_write"
INPUT_VALUE: Final = "input.value"
INPUT_MIME_TYPE: Final = "input.mime_type"
OUTPUT_VALUE: Final = "output.value"
OUTPUT_MIME_TYPE: Final = "output.mime_type"

SPAN_KIND_CHAIN: Final = "CHAIN"
SPAN_KIND_LLM: Final = "LLM"
MIME_JSON: Final = "application/json"
MIME_TEXT: Final = "text/plain"

# -- cascade: spans --------------------------------------------------------------------------

SPAN_RUN: Final = "cascade.run"
SPAN_TIER: Final = "cascade.tier"  # "cascade.tier {name}"

CASCADE_TIER_NAME: Final = "cascade.tier.name"
CASCADE_TIER_INDEX: Final = "cascade.tier.index"
CASCADE_TIER_OUTCOME: Final = "cascade.tier.outcome"
CASCADE_TIER_PATH: Final = "cascade.tier.path"
CASCADE_PROVIDER: Final = "cascade.provider"
CASCADE_ATTEMPT_NUMBER: Final = "cascade.attempt.number"
CASCADE_RETRY_COUNT: Final = "cascade.retry.count"
CASCADE_SAMPLE: Final = "cascade.sample"
CASCADE_VARIANT: Final = "cascade.variant"
CASCADE_COST_USD: Final = "cascade.cost_usd"
CASCADE_VALIDATED: Final = "cascade.validated"
CASCADE_OUTCOME: Final = "cascade.outcome"
CASCADE_ATTEMPTS: Final = "cascade.attempts"
CASCADE_ESCALATIONS: Final = "cascade.escalations"
CASCADE_MAX_COST_USD: Final = "cascade.request.max_cost_usd"
CASCADE_DEADLINE_S: Final = "cascade.request.deadline_s"
CASCADE_METADATA_PREFIX: Final = "cascade.metadata."
CASCADE_ROUTE_ROUTER: Final = "cascade.route.router"
CASCADE_ROUTE_START_TIER: Final = "cascade.route.start_tier"
CASCADE_ROUTE_MAX_TIER: Final = "cascade.route.max_tier"
CASCADE_ROUTE_VARIANT: Final = "cascade.route.variant"
CASCADE_ROUTE_REASON: Final = "cascade.route.reason"
CASCADE_ROUTE_SCORE: Final = "cascade.route.score"
CASCADE_HEDGE: Final = "cascade.hedge"
CASCADE_HEDGE_CANCELLED: Final = "cascade.hedge.cancelled"
CASCADE_HEDGE_WINNER: Final = "cascade.hedge.winner"

# -- cascade: span events ------------------------------------------------------------------------

EVENT_VALIDATION: Final = "cascade.validation"
CASCADE_VALIDATION_VALIDATOR: Final = "cascade.validation.validator"
CASCADE_VALIDATION_PASSED: Final = "cascade.validation.passed"
CASCADE_VALIDATION_SCORE: Final = "cascade.validation.score"
CASCADE_VALIDATION_REASON: Final = "cascade.validation.reason"

EVENT_ESCALATION: Final = "cascade.escalation"
CASCADE_ESCALATION_REASON: Final = "cascade.escalation.reason"
CASCADE_ESCALATION_DETAIL: Final = "cascade.escalation.detail"
CASCADE_ESCALATION_FROM: Final = "cascade.escalation.from_tier"
CASCADE_ESCALATION_TO: Final = "cascade.escalation.to_tier"

EVENT_RETRY: Final = "cascade.retry"
CASCADE_RETRY_WAIT_S: Final = "cascade.retry.wait_s"

EVENT_BREAKER: Final = "cascade.breaker.state_change"
CASCADE_BREAKER_FROM: Final = "cascade.breaker.from_state"
CASCADE_BREAKER_TO: Final = "cascade.breaker.to_state"

EVENT_QUALITY_SKIP: Final = "cascade.quality_breaker.skip"
EVENT_QUALITY_CHANGE: Final = "cascade.quality_breaker.state_change"
CASCADE_QUALITY_STATE: Final = "cascade.quality_breaker.state"
CASCADE_QUALITY_RETRY_IN_S: Final = "cascade.quality_breaker.retry_in_s"
CASCADE_QUALITY_FROM: Final = "cascade.quality_breaker.from_state"
CASCADE_QUALITY_TO: Final = "cascade.quality_breaker.to_state"
CASCADE_ESCALATION_REPAIR: Final = "cascade.escalation.repair"

EVENT_LIMITER_BUSY: Final = "cascade.limiter.busy"
EVENT_LIMITER_WAIT: Final = "cascade.limiter.wait"
CASCADE_LIMITER_WAIT_S: Final = "cascade.limiter.wait_s"
CASCADE_LIMITER_OUTCOME: Final = "cascade.limiter.outcome"

EVENT_HEDGE: Final = "cascade.hedge"
EVENT_HEDGE_LOST: Final = "cascade.hedge.lost"
CASCADE_HEDGE_DELAY_S: Final = "cascade.hedge.delay_s"

# -- cascade: metrics ------------------------------------------------------------------------------

METRIC_COST: Final = "cascade.cost"
METRIC_ESCALATIONS: Final = "cascade.escalations"
METRIC_BREAKER_STATE: Final = "cascade.breaker.state"
METRIC_QUALITY_TRANSITIONS: Final = "cascade.quality_breaker.transitions"
METRIC_LIMITER_WAIT: Final = "cascade.limiter.wait.duration"

BREAKER_STATE_VALUES: Final = {"closed": 0, "half_open": 1, "open": 2}
"""``cascade.breaker.state`` gauge values."""

# -- environment -------------------------------------------------------------------------------

ENV_CAPTURE_CONTENT: Final = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
ENV_TELEMETRY: Final = "CASCADE_TELEMETRY"
ENV_SEMCONV: Final = "CASCADE_SEMCONV"
