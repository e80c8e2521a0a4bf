"""The metric instruments, made once per meter provider and shared by every Cascade.

Instruments come from the OpenTelemetry metrics API only. The default meter is the global
one: until an application sets a MeterProvider it is a proxy, and instruments made from it
start recording once one is set (so importing cascade before configuring the SDK works).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, Observation

from . import _semconv as sc

__all__ = ["Instruments", "instruments_for"]


class _HasState(Protocol):
    @property
    def state(self) -> str: ...


BreakerSource = Callable[[], Mapping[str, _HasState]]


class Instruments:
    """The GenAI client histograms and cascade's own counters, gauge and histograms."""

    def __init__(self, meter: Meter) -> None:
        self.duration = meter.create_histogram(
            sc.GEN_AI_CLIENT_OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        self.tokens = meter.create_histogram(
            sc.GEN_AI_CLIENT_TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used",
            explicit_bucket_boundaries_advisory=list(sc.TOKEN_BUCKETS),
        )
        self.ttft = meter.create_histogram(
            sc.GEN_AI_CLIENT_TIME_TO_FIRST_CHUNK,
            unit="s",
            description="Time from the request to the first chunk of the answer (streaming)",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        # Cost is summed here and read by the reader's collection (an observable counter):
        # a synchronous counter would cost an SDK measurement per call for a plain sum.
        self._costs: dict[tuple[str, str, str], list[Any]] = {}
        meter.create_observable_counter(
            sc.METRIC_COST,
            callbacks=[self._observe_costs],
            unit="{USD}",
            description="Money spent on provider calls, by tier, provider and model",
        )
        self.escalations = meter.create_counter(
            sc.METRIC_ESCALATIONS,
            unit="{escalation}",
            description="Runs that left a tier for the next one, by tier and reason",
        )
        self.quality_transitions = meter.create_counter(
            sc.METRIC_QUALITY_TRANSITIONS,
            unit="{transition}",
            description="Quality breaker state changes, by tier, old and new state",
        )
        self.limiter_wait = meter.create_histogram(
            sc.METRIC_LIMITER_WAIT,
            unit="s",
            description="Time a request waited for rate-limit headroom",
            explicit_bucket_boundaries_advisory=list(sc.DURATION_BUCKETS),
        )
        # Breakers are read when a reader collects, never on the request path.
        self._sources: weakref.WeakSet[Any] = weakref.WeakSet()
        meter.create_observable_gauge(
            sc.METRIC_BREAKER_STATE,
            callbacks=[self._observe_breakers],
            unit="1",
            description="Circuit breaker state by provider: 0 closed, 1 half-open, 2 open",
        )

    def add_cost(
        self, key: tuple[str, str, str], attributes: Mapping[str, str], cost: float
    ) -> None:
        """Add ``cost`` (USD) to the ``cascade.cost`` total of ``key`` (its attributes)."""
        entry = self._costs.get(key)
        if entry is None:
            entry = self._costs[key] = [attributes, 0.0]
        entry[1] += cost

    def _observe_costs(self, options: CallbackOptions) -> Iterator[Observation]:
        for attributes, total in list(self._costs.values()):
            yield Observation(total, attributes)

    def watch(self, owner: Any) -> None:
        """Report ``owner.breakers()``'s states while ``owner`` is alive (held weakly)."""
        self._sources.add(owner)

    def _observe_breakers(self, options: CallbackOptions) -> Iterator[Observation]:
        for owner in list(self._sources):
            breakers: Iterable[tuple[str, _HasState]] = owner.breakers().items()
            for name, breaker in breakers:
                value = sc.BREAKER_STATE_VALUES.get(breaker.state, 0)
                yield Observation(value, {sc.CASCADE_PROVIDER: name})


_global: Instruments | None = None
_by_provider: weakref.WeakKeyDictionary[MeterProvider, Instruments] = weakref.WeakKeyDictionary()


def instruments_for(meter_provider: MeterProvider | None, version: str) -> Instruments:
    """The instruments of ``meter_provider`` (None: the global API's), made on first use.

    One set per provider: making an instrument twice under one name would make the SDK
    warn, and two breaker gauges would report the same breakers twice.
    """
    global _global
    if meter_provider is None:
        if _global is None:
            _global = Instruments(metrics.get_meter("cascade", version))
        return _global
    found = _by_provider.get(meter_provider)
    if found is None:
        found = Instruments(meter_provider.get_meter("cascade", version))
        _by_provider[meter_provider] = found
    return found
