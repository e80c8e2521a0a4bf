"""One provider call's span (``chat {model}``, CLIENT) and metrics.

What every call of a provider carries (attribute sets for spans and metrics) is computed
once per provider and reused (:mod:`._provider_info`), so a call that is not traced
allocates nothing for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextvars import Token
from time import perf_counter
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..resilience.breaker import CircuitOpen
from . import _conventions as conventions
from . import _semconv as sc
from ._attributes import end_span, set_attributes
from ._content import input_messages, output_messages, verdict_reason
from ._context import detach, use_span

if TYPE_CHECKING:
    from .._types import Attempt, Completion, Message, RequestOptions, Verdict
    from ._core import Telemetry
    from ._provider_info import ProviderInfo

__all__ = ["NOOP_ATTEMPT", "AttemptTrace", "error_type", "start_attempt"]

MAX_TEXT = 500  # reasons and error messages on spans are cut here
_CIRCUIT_OPEN = CircuitOpen.__name__
_OK = Status(StatusCode.OK)


def error_type(exc: BaseException) -> str:
    """``error.type`` of an exception: its class name (``cancelled`` for cancellation)."""
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else type(exc).__name__


def start_attempt(
    tel: Telemetry,
    info: ProviderInfo,
    messages: Sequence[Message],
    options: RequestOptions,
    parent: Span | None,
    number: int,
    retry: int,
    sample: int | None,
    *,
    hedge: bool = False,
    choices: int | None = None,
) -> AttemptTrace:
    """Start a call's span under ``parent`` (None: the run is not traced, metrics only)."""
    if parent is None:
        return AttemptTrace(tel, info, None, None)
    attrs = dict(info.span_attrs)
    if number:
        attrs[sc.CASCADE_ATTEMPT_NUMBER] = number
    if retry:
        attrs[sc.CASCADE_RETRY_COUNT] = retry
    if sample is not None:
        attrs[sc.CASCADE_SAMPLE] = sample
    if hedge:
        attrs[sc.CASCADE_HEDGE] = True
    if choices is not None:
        attrs[sc.GEN_AI_REQUEST_CHOICE_COUNT] = choices
    max_tokens = options.max_tokens or info.config.max_tokens
    if max_tokens is not None:
        attrs[sc.GEN_AI_REQUEST_MAX_TOKENS] = max_tokens
    if options.temperature is not None:
        attrs[sc.GEN_AI_REQUEST_TEMPERATURE] = options.temperature
    if options.top_p is not None:
        attrs[sc.GEN_AI_REQUEST_TOP_P] = options.top_p
    if options.seed is not None:
        attrs[sc.GEN_AI_REQUEST_SEED] = options.seed
    if options.stop:
        attrs[sc.GEN_AI_REQUEST_STOP_SEQUENCES] = list(options.stop)
    if options.n is not None and options.n > 1:
        attrs[sc.GEN_AI_REQUEST_CHOICE_COUNT] = options.n
    if options.variant is not None:
        attrs[sc.CASCADE_VARIANT] = options.variant
    if tel.capture_content:
        attrs[sc.GEN_AI_INPUT_MESSAGES] = prompt = input_messages(messages)
        if info.openinference:
            attrs.update(conventions.input_attributes(prompt))
    if not info.gen_ai:
        attrs = conventions.without_gen_ai(attrs)
    span = tel.start_span(info.span_name, SpanKind.CLIENT, attrs)
    # Current while it lasts, so samples drawn during validation (and any instrumented
    # HTTP client) nest under it.
    token = use_span(span)
    return AttemptTrace(tel, info, span, token)


class AttemptTrace:
    """One provider call's ``chat {model}`` span (CLIENT) and its metrics.

    ``completed`` records the answer (and ends nothing: validation follows under the same
    span); ``judged`` adds the verdicts and ends it; ``failed`` records an error and ends
    it; ``end`` ends it as it stands. Every ending after the first is ignored. The span is
    the current one from start to end: end it in the task that started it. Its status:
    ERROR when the call failed; otherwise OK under OpenInference's conventions (unset when
    it lost a hedge race), and unset under GenAI's alone.
    """

    __slots__ = ("_done", "_ending", "_info", "_lost", "_t0", "_tel", "_token", "span")

    def __init__(
        self,
        tel: Telemetry | None,
        info: ProviderInfo | None,
        span: Span | None,
        token: Token[Context] | None,
    ) -> None:
        self._tel = tel
        self._info = info
        self.span = span
        self._token = token
        self._t0 = perf_counter()
        self._done = tel is None
        self._lost = False
        self._ending: dict[str, Any] | None = None  # set on the span in one call, at its end

    def __enter__(self) -> AttemptTrace:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.failed(exc)
        else:
            self.end()

    def sample(
        self, number: int, messages: Sequence[Message], options: RequestOptions
    ) -> AttemptTrace:
        """A span for extra sample ``number`` of this attempt (a child of its span)."""
        tel, info = self._tel, self._info
        if tel is None or info is None:
            return NOOP_ATTEMPT
        return start_attempt(tel, info, messages, options, self.span, 0, 0, number)

    def samples(
        self, first: int, count: int, messages: Sequence[Message], options: RequestOptions
    ) -> AttemptTrace:
        """A span for ``count`` samples drawn in one request (``n``), from ``first`` on."""
        tel, info = self._tel, self._info
        if tel is None or info is None:
            return NOOP_ATTEMPT
        return start_attempt(tel, info, messages, options, self.span, 0, 0, first, choices=count)

    def charged(self, cost: float) -> None:
        """The estimated cost of a call that ended without an answer (a stream that broke
        or was cut off, a hedge that lost): counted in the cost metric. Works after the
        span has ended."""
        tel, info = self._tel, self._info
        if tel is None or info is None or not cost > 0:
            return
        instruments = tel.instruments
        assert instruments is not None
        instruments.add_cost(info.cost_key, info.cost_attrs, cost)

    def completed(self, completion: Completion, *more: Completion) -> None:
        """The call returned ``completion`` (and ``more`` choices of the same request):
        duration, tokens, time to first chunk, cost."""
        tel, info = self._tel, self._info
        if tel is None or info is None or self._done:
            return
        instruments = tel.instruments
        assert instruments is not None
        config = info.config
        in_tokens, out_tokens = completion.input_tokens, completion.output_tokens
        cache_read, cache_write = completion.cache_read_tokens, completion.cache_write_tokens
        # Priced as the run charges it (RunState.charge): cached prompt tokens at the
        # cache prices, so the span, the cost metric and the Result agree.
        cost = config.cost_usd(
            in_tokens, out_tokens, cache_read_tokens=cache_read, cache_write_tokens=cache_write
        )
        for c in more:
            in_tokens += c.input_tokens
            out_tokens += c.output_tokens
            cache_read += c.cache_read_tokens
            cache_write += c.cache_write_tokens
            cost += config.cost_usd(
                c.input_tokens,
                c.output_tokens,
                cache_read_tokens=c.cache_read_tokens,
                cache_write_tokens=c.cache_write_tokens,
            )
        found = info.by_model.get(completion.model)
        op, tokens_in, tokens_out = info.metric_attrs(completion.model) if found is None else found
        instruments.duration.record(completion.latency_s, op)
        instruments.tokens.record(in_tokens, tokens_in)
        instruments.tokens.record(out_tokens, tokens_out)
        # A whole JSON body's "first chunk" is the whole answer: no TTFT without a stream.
        ttft = completion.ttft_s if info.config.stream else None
        if ttft is not None:
            instruments.ttft.record(ttft, op)
        if cost:
            instruments.add_cost(info.cost_key, info.cost_attrs, cost)
        span = self.span
        if span is not None:
            attrs: dict[str, Any] = {
                sc.GEN_AI_RESPONSE_MODEL: completion.model,
                sc.GEN_AI_USAGE_INPUT_TOKENS: in_tokens,
                sc.GEN_AI_USAGE_OUTPUT_TOKENS: out_tokens,
                sc.CASCADE_COST_USD: cost,
            }
            reasons = [c.finish_reason for c in (completion, *more) if c.finish_reason]
            if reasons:
                attrs[sc.GEN_AI_RESPONSE_FINISH_REASONS] = reasons
            if ttft is not None:
                attrs[sc.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK] = ttft
            if tel.capture_content:
                answer = output_messages((completion, *more))
                attrs[sc.GEN_AI_OUTPUT_MESSAGES] = answer
                if info.openinference:
                    attrs.update(conventions.output_attributes((completion, *more), answer))
            if info.openinference:
                attrs.update(
                    conventions.usage_attributes(
                        config,
                        completion.model,
                        in_tokens,
                        out_tokens,
                        cost,
                        cache_read=cache_read,
                        cache_write=cache_write,
                    )
                )
            if not info.gen_ai:
                attrs = conventions.without_gen_ai(attrs)
            self._ending = attrs

    def judged(self, verdicts: Sequence[Verdict], passed: bool) -> None:
        """The validators' verdicts (an event each); ends the span."""
        span = self.span
        if span is not None and not self._done:
            tel = self._tel
            capture = tel is not None and tel.capture_content
            for v in verdicts:
                span.add_event(
                    sc.EVENT_VALIDATION,
                    {
                        sc.CASCADE_VALIDATION_VALIDATOR: v.validator,
                        sc.CASCADE_VALIDATION_PASSED: v.passed,
                        sc.CASCADE_VALIDATION_SCORE: v.score,
                        sc.CASCADE_VALIDATION_REASON: verdict_reason(v, capture=capture)[:MAX_TEXT],
                    },
                )
            ending = self._ending
            if ending is None:
                ending = self._ending = {}
            ending[sc.CASCADE_VALIDATED] = passed
            ending[sc.CASCADE_OUTCOME] = "accepted" if passed else "rejected"
        self.end()

    def finished(self, attempt: Attempt) -> None:
        """The call's attempt record (its AttemptFinished event): an answer's tokens,
        cost and verdicts, or a failure's error; ends the span. A call ended already (a
        cancelled one, ended in its own task) is left as it is."""
        if self._done:
            return
        completion = attempt.completion
        if attempt.outcome == "failed" or completion is None:
            self._failed(attempt.error_type or attempt.outcome, attempt.error or "")
            return
        self.completed(completion)
        self.judged(attempt.verdicts, attempt.outcome == "accepted")

    def failed(self, exc: BaseException) -> None:
        """The call failed with ``exc`` (cancellation included); ends the span. A call
        marked :meth:`lost` ends as cancelled, not as an error."""
        self._failed(error_type(exc), str(exc))

    def _failed(self, kind: str, message: str) -> None:
        tel, info = self._tel, self._info
        if tel is None or info is None or self._done:
            return
        if kind != _CIRCUIT_OPEN:  # an open breaker sent nothing: no duration
            assert tel.instruments is not None
            tel.instruments.duration.record(perf_counter() - self._t0, info.error_attrs(kind))
        span = self.span
        if span is not None and not self._lost:
            ending = self._ending
            if ending is None:
                ending = self._ending = {}
            ending[sc.ERROR_TYPE] = kind
            ending[sc.CASCADE_OUTCOME] = "failed"
            span.set_status(Status(StatusCode.ERROR, message[:MAX_TEXT] or kind))
        self.end()

    def lost(self, winner: str) -> None:
        """This call lost a hedge race to ``winner`` and is about to be cancelled.

        Safe from another task (it ends nothing): the cancelled task's own ``failed``
        ends the span.
        """
        span = self.span
        if self._done:
            return
        self._lost = True
        if span is not None:
            span.add_event(sc.EVENT_HEDGE_LOST, {sc.CASCADE_HEDGE_WINNER: winner})
            span.set_attributes({sc.CASCADE_HEDGE_CANCELLED: True, sc.CASCADE_OUTCOME: "cancelled"})

    def end(self) -> None:
        if self._done:
            return
        self._done = True
        span = self.span
        if span is not None:
            ending = self._ending
            if ending:
                set_attributes(span, ending)
            # ERROR when it failed (set by _failed). Otherwise OK under OpenInference's
            # conventions (its instrumentations set it; a lost hedge stays unset), and
            # unset under GenAI's alone, as OpenTelemetry asks of instrumentation.
            if (
                self._info is not None
                and self._info.openinference
                and not self._lost
                and (ending is None or sc.ERROR_TYPE not in ending)
            ):
                span.set_status(_OK)
            if self._token is not None:
                detach(self._token)
                self._token = None
            end_span(span)


NOOP_ATTEMPT = AttemptTrace(None, None, None, None)
