"""A provider's configuration: its API, model, prices, timeouts, breaker and limits."""

from __future__ import annotations

import sys
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .resilience.retry import RetryPolicy

__all__ = ["BreakerConfig", "LimitsConfig", "ProviderConfig"]

# Every float of the config is finite: msgspec has no such constraint, but an upper bound
# of the largest float rejects inf (and a lower bound NaN); the message is rewritten below.
_FLOAT_MAX = sys.float_info.max
NonNegFloat = Annotated[float, Meta(ge=0, le=_FLOAT_MAX)]
PosFloat = Annotated[float, Meta(gt=0, le=_FLOAT_MAX)]
Price = Annotated[float, Meta(ge=0, le=1e6)]
"""USD per million tokens: at most $1 a token, far above any real price, so that no count
of tokens a server may report overflows a cost."""
Name = Annotated[
    str, Meta(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]+$")
]
"""A tier, provider or model name: no control character nor line break (names go in
log lines and response headers)."""


class BreakerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A provider's circuit breaker: opens after ``fail_max`` consecutive outages
    (connection errors, timeouts, 5xx, malformed bodies; 429 only with
    ``count_rate_limits``), fails over at once while open, and lets one probe through
    after ``reset_timeout_s``."""

    fail_max: Annotated[int, Meta(ge=1)] = 5
    reset_timeout_s: NonNegFloat = 30.0
    count_rate_limits: bool = False


class LimitsConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A provider's capacity: requests and tokens per minute (token buckets holding
    ``burst_s`` seconds of refill) and concurrent calls. A provider with no headroom is
    passed over for a sibling that has some; only when none has does a request wait, in
    fair order and never past its deadline. The limits also learn from the provider's
    rate-limit headers (OpenAI ``x-ratelimit-*``, Anthropic ``anthropic-ratelimit-*``,
    ``retry-after`` on 429). No limit set: no limiter."""

    requests_per_minute: PosFloat | None = None
    tokens_per_minute: PosFloat | None = None
    max_concurrency: Annotated[int, Meta(ge=1)] | None = None
    burst_s: NonNegFloat = 60.0
    max_wait_s: Annotated[float, Meta(gt=0, le=86400)] = 300.0
    """The longest wait a server's headers may impose (``retry-after``, rate-limit reset
    times and durations, a 429's block, shared through Redis too): a longer one counts as
    this long. Dates in those headers are measured from the response's ``Date`` only when
    it is within a day of this machine's clock."""

    @property
    def configured(self) -> bool:
        return (
            self.requests_per_minute is not None
            or self.tokens_per_minute is not None
            or self.max_concurrency is not None
        )


_CACHE_SHARES = {"anthropic": (0.1, 1.25), "openai": (0.5, 1.0)}
"""Default cache (read, write) prices as shares of the input price, per provider kind."""


class ProviderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One deployment of one model behind one API.

    ``kind`` picks the wire format (``openai`` for any OpenAI-compatible server,
    ``anthropic`` for the Messages API); both need ``base_url``. The API key is read from the
    environment variable named by ``api_key_env`` when the cascade is built; it is never
    stored in config.
    """

    name: Name
    kind: Name
    base_url: Annotated[str, Meta(pattern=r"^https?://")] | None = None
    model: Name
    api_key_env: str | None = None
    input_cost_per_mtok: Price = 0.0
    output_cost_per_mtok: Price = 0.0
    cache_read_cost_per_mtok: Price | None = None
    """Price of prompt tokens read from the provider's prompt cache (OpenAI
    ``prompt_tokens_details.cached_tokens``, Anthropic ``cache_read_input_tokens``).
    Default: a share of ``input_cost_per_mtok`` from the provider's published pricing:
    0.1x for ``anthropic``; 0.5x for ``openai`` (GPT-4o and o-series; GPT-4.1 bills
    0.25x and GPT-5 0.1x, so set it for those); 1x for other kinds."""
    cache_write_cost_per_mtok: Price | None = None
    """Price of prompt tokens written to the prompt cache (Anthropic
    ``cache_creation_input_tokens``). Default: 1.25x ``input_cost_per_mtok`` for
    ``anthropic`` (its 5-minute cache; 1-hour writes bill 2x, set it if you use them);
    1x for other kinds (OpenAI writes its cache at no extra charge)."""
    max_tokens_field: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    """``openai`` only: the request field that carries the output cap. OpenAI's o-series
    and GPT-5 models reject ``max_tokens`` and need ``max_completion_tokens``; most other
    OpenAI-compatible servers know only ``max_tokens``."""
    timeout_s: PosFloat = 60.0
    """The whole call, from connecting to the last byte."""
    connect_timeout_s: PosFloat = 10.0
    first_token_timeout_s: PosFloat | None = None
    """From the call's start to the first text of the answer (for a call that does not
    stream, the whole answer); a slow queue or a cold model fails over instead of waiting
    for ``timeout_s``."""
    idle_timeout_s: PosFloat | None = None
    """Longest wait for answer text in a stream, once its first chunk has arrived: the
    timer starts at the first chunk and only chunks that carry text reset it. Keep-alive
    comments, and events with only usage or a finish reason, are not progress: a server
    trickling them fails here instead of holding the call until ``timeout_s``."""
    stream: bool = False
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    headers: dict[str, str] = {}
    dataset: str | None = None
    """``replay`` only: the JSONL (or .jsonl.gz) file of recorded answers."""
    variant: str | None = None
    """``replay`` only: the recorded variant served when a request names none."""
    prompt_overhead_tokens: Annotated[int, Meta(ge=0)] = 0
    """``replay`` only: prompt tokens added to each recorded question (few-shot examples)."""
    batch_samples: bool = True
    """Draw a validator's further samples of one prompt in one request with ``n`` (the
    prompt billed once) where the kind supports it (``openai``, ``replay``); false for a
    server that ignores ``n``."""
    breaker: BreakerConfig = BreakerConfig()
    limits: LimitsConfig = LimitsConfig()
    retry: RetryPolicy = RetryPolicy(attempts=1)
    """Retries of this provider before failing over (1 attempt: none)."""
    max_response_bytes: Annotated[int, Meta(ge=1)] = 8_388_608
    """Most bytes of one response body read before the call fails with
    ``ResponseTooLarge`` (which fails over like any provider failure). Counted decoded
    (after gzip, deflate or br) and while reading, over every event of a stream: a longer
    body is never held in memory. The answer's size once decoded into Python is held to it
    as well, before it is built: text counts its characters times the width of its widest
    one (1 byte up to U+00FF, 2 up to U+FFFF, 4 beyond: one emoji makes every character
    count 4), each token logprob of a stream 48 bytes, and a whole body (or an SSE event
    over 64 KiB) counts its length times the widest character it holds plus 80 bytes per
    JSON object past the first 1,024. So a call's memory stays under about 3x this cap.
    The default, 8 MiB, is far above any real answer. An error body has its own small
    cap (16 KiB)."""
    max_connections: Annotated[int, Meta(ge=1)] | None = None
    """Connections this provider may hold open at once, in a pool of its own (so a
    provider that hangs cannot starve the others). Default: an equal share of the
    cascade's ``max_connections`` among the providers that set none (what the ones that
    do set leave over, at least 1 each)."""

    def cost_usd(
        self,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
    ) -> float:
        """Price of one call, from the per-million-token prices.

        ``input_tokens`` is the whole prompt; the cache reads and writes in it are priced
        at the cache prices, the rest at ``input_cost_per_mtok``.
        """
        if cache_read_tokens or cache_write_tokens:
            read, write = self.cache_prices()
            uncached = max(0, input_tokens - cache_read_tokens - cache_write_tokens)
            prompt = uncached * self.input_cost_per_mtok
            prompt += cache_read_tokens * read + cache_write_tokens * write
        else:
            prompt = input_tokens * self.input_cost_per_mtok
        return (prompt + output_tokens * self.output_cost_per_mtok) / 1_000_000

    def cache_prices(self) -> tuple[float, float]:
        """The (read, write) prices per million cached prompt tokens, defaults applied."""
        read_share, write_share = _CACHE_SHARES.get(self.kind, (1.0, 1.0))
        read = self.cache_read_cost_per_mtok
        write = self.cache_write_cost_per_mtok
        return (
            self.input_cost_per_mtok * read_share if read is None else read,
            self.input_cost_per_mtok * write_share if write is None else write,
        )

    def __repr__(self) -> str:
        return f"ProviderConfig(name={self.name!r}, kind={self.kind!r}, model={self.model!r})"
