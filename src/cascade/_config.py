"""Configuration: TOML (or a mapping) into frozen Structs; errors name the bad field's path."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yarl
from msgspec import Meta

from ._errors import ConfigError
from ._provider_config import (
    _FLOAT_MAX,
    BreakerConfig,
    LimitsConfig,
    Name,
    NonNegFloat,
    PosFloat,
    ProviderConfig,
)

__all__ = [
    "BreakerConfig",
    "Config",
    "HedgeConfig",
    "LimitsConfig",
    "ProviderConfig",
    "QualityConfig",
    "SharedConfig",
    "TelemetryConfig",
    "TierConfig",
    "Variant",
    "in_file",
    "load_config",
]

KeyPrefix = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[^\s{}]+$")]


class Variant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One prompt representation of a request (chain of thought, program of thought...).

    ``system`` is added as a system message, ``suffix`` appended to the last user message;
    ``name`` travels with the request (``RequestOptions.variant``).
    """

    name: Name
    system: str | None = None
    suffix: str | None = None
    weight: NonNegFloat = 1.0
    """The weight of this variant's vote in ``self_consistency``."""


class HedgeConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Hedged requests in a tier (off unless the tier has a ``[tiers.hedge]`` table).

    When the provider called has produced no first token after ``after_s`` seconds (or,
    with ``percentile``, after that percentile of its recent times to first token, once
    ``min_samples`` have been seen), the tier's next provider with headroom starts on the
    same request. The first of the two to produce a token is kept; the other is cancelled,
    and costed for its prompt and whatever it had sent.
    """

    after_s: PosFloat = 1.0
    percentile: Annotated[float, Meta(gt=0, lt=100)] | None = None
    min_samples: Annotated[int, Meta(ge=1)] = 20


class QualityConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tier's quality breaker (off unless the tier has a ``[tiers.quality]`` table).

    A circuit breaker on the tier's validator verdicts, not on transport errors (those
    are each provider's :class:`BreakerConfig`): when fewer than ``min_pass_rate`` of the
    tier's last ``window`` judged answers passed (once ``min_samples`` are in), the tier
    is skipped for ``cooldown_s`` seconds (a provider answering garbage with status 200).
    Then one run is let through as a probe: its verdict closes the breaker (the window
    starts afresh) or opens it for another cool-down. Only verdicts count: a tier whose
    providers failed, or that was skipped, leaves the window as it was.

    Example::

        [tiers.quality]
        window = 50
        min_pass_rate = 0.2
        min_samples = 20
        cooldown_s = 60
    """

    window: Annotated[int, Meta(ge=1, le=100_000)] = 50
    min_pass_rate: Annotated[float, Meta(ge=0, le=1)] = 0.2
    min_samples: Annotated[int, Meta(ge=1)] = 20
    cooldown_s: NonNegFloat = 60.0


class TierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tier: providers tried in order on failure, and the validators its answers face.

    Each validator entry is ``{name = "...", <parameters>..., weight = 1.0}``; the
    parameters go to the validator registered under that name. ``mode = "all"``: every
    validator must pass; ``"scored"``: the weighted mean of their scores must reach
    ``threshold``. ``variants``: the tier's first request uses the first variant; further
    samples (``self_consistency``) take the next ones in turn.
    """

    name: Name
    providers: Annotated[list[ProviderConfig], Meta(min_length=1)]
    validators: list[dict[str, Any]] = []
    mode: Literal["all", "scored"] = "all"
    threshold: Annotated[float, Meta(ge=0, le=1)] = 0.5
    variants: list[Variant] = []
    hedge: HedgeConfig | None = None
    accept_refusals: bool = False
    """A refusal (``Completion.refusal``: OpenAI's ``refusal``, Anthropic's ``stop_reason:
    "refusal"``) is an answer, costed and never a provider failure. By default the tier
    rejects it (verdict ``refusal``) and the request escalates; true lets the tier's
    validators judge it like any answer."""
    quality: QualityConfig | None = None
    """The tier's quality breaker (see :class:`QualityConfig`); None: none."""
    repair: bool = False
    """When the run escalates to this tier because the tier before rejected its answer,
    send that rejected draft and the validators' reasons along, so this tier fixes it
    instead of starting over (see :mod:`cascade.engine._repair` for the exact prompt and
    its bounds). Not on the first tier: it has no tier before it."""


class SharedConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Breaker state and rate-limit budgets shared through Redis by every process with the
    same ``redis_url`` and ``key_prefix`` (the ``[shared]`` table; needs the ``redis``
    extra). Redis answers within ``timeout_s`` or is treated as down: the limits are then
    local, loudly, until it is back. Breakers poll the shared state every
    ``sync_interval_s``."""

    redis_url: Annotated[str, Meta(pattern=r"^(redis|rediss|unix)://")]
    """``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` (TLS) or
    ``unix:///path/to/socket``; the password never appears in logs or ``repr``."""
    key_prefix: KeyPrefix = "cascade"
    timeout_s: Annotated[float, Meta(gt=0, le=10)] = 0.1
    sync_interval_s: Annotated[float, Meta(gt=0, le=60)] = 0.5
    password_env: Annotated[str, Meta(min_length=1)] | None = None
    """The environment variable holding the Redis password, read when the cascade is
    built (never logged). A ``redis_url`` with a password of its own is then an error:
    give it in one place."""

    def __repr__(self) -> str:
        from .resilience._redis_url import redact_url

        return (
            f"SharedConfig(redis_url={redact_url(self.redis_url)!r}, "
            f"key_prefix={self.key_prefix!r}, timeout_s={self.timeout_s!r}, "
            f"sync_interval_s={self.sync_interval_s!r}, password_env={self.password_env!r})"
        )


class TelemetryConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[telemetry]`` table: what the spans say. (Where they go is the application's
    OpenTelemetry SDK, or the ``cascade`` command's ``OTEL_*`` variables.)"""

    semconv: Annotated[tuple[Literal["gen_ai", "openinference"], ...], Meta(min_length=1)] = (
        "gen_ai",
    )
    """The semantic conventions the spans follow: ``gen_ai`` (OpenTelemetry's GenAI
    conventions), ``openinference`` (span kinds, model, provider, tokens and cost under
    OpenInference's names, read by Arize Phoenix), or both. The Cascade's ``semconv``
    argument wins over this, and ``CASCADE_SEMCONV`` (comma-separated) in the
    environment too."""


class Config(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole cascade: tiers cheap to expensive, and what to do when all reject."""

    tiers: Annotated[list[TierConfig], Meta(min_length=1)]
    on_exhausted: Literal["best", "error"] = "best"
    on_outage: Literal["next_tier", "error"] = "next_tier"
    """When every provider of a tier fails (errors, open breakers, no headroom in time):
    ``next_tier`` escalates; ``error`` stops there (``AllProvidersFailed``, or the best
    answer so far under ``on_exhausted = "best"``), so a cheap tier's outage never sends
    all its traffic to the expensive tier."""
    deadline_s: PosFloat | None = None
    max_cost_usd: NonNegFloat | None = None
    estimate_output_tokens: Annotated[int, Meta(ge=0)] = 256
    max_connections: Annotated[int, Meta(ge=1)] = 512
    """Connections to every provider together, shared out among them (each provider has
    a pool of its own: see ``ProviderConfig.max_connections``)."""
    validator_paths: list[str] = []
    """Folders whose ``*.py`` files are imported at build, registering their validators."""
    shared: SharedConfig | None = None
    """Share breakers and rate limits across processes through Redis (default: in memory)."""
    gateway: dict[str, Any] | None = None
    """The ``[gateway]`` table of ``cascade serve`` (routes, limits, keys), kept here as
    read so that one file serves both; checked by ``cascade.gateway.GatewayConfig`` when
    the gateway loads the file, ignored by the library."""
    router: dict[str, Any] | None = None
    """The ``[router]`` table: ``kind`` (``rules``, ``cost``, ``llm``, ``first_of``, or one
    registered with ``@cascade.router``) and the kind's parameters; asked once per run
    before the first tier (see :mod:`cascade.routing`). Checked when the Cascade is built."""
    router_timeout_s: PosFloat = 1.0
    """The longest a router may take to decide (its own provider calls included); past
    it the run goes on over every tier, the timeout recorded in ``Result.route``."""
    telemetry: TelemetryConfig = TelemetryConfig()
    """The ``[telemetry]`` table (see :class:`TelemetryConfig`)."""

    def __post_init__(self) -> None:
        seen_tiers: set[str] = set()
        seen_providers: set[str] = set()
        for t, tier in enumerate(self.tiers):
            if tier.name in seen_tiers:
                raise ConfigError(f"duplicate tier name {tier.name!r}", path=f"tiers[{t}].name")
            seen_tiers.add(tier.name)
            if tier.variants and not sum(v.weight for v in tier.variants) > 0:
                raise ConfigError(
                    "the variants' weights add up to 0: no vote could ever count",
                    path=f"tiers[{t}].variants",
                )
            for p, prov in enumerate(tier.providers):
                if prov.name in seen_providers:
                    raise ConfigError(
                        f"duplicate provider name {prov.name!r}",
                        path=f"tiers[{t}].providers[{p}].name",
                    )
                seen_providers.add(prov.name)
                if prov.base_url is not None:
                    _check_url(prov.base_url, path=f"tiers[{t}].providers[{p}].base_url")
            quality = tier.quality
            if quality is not None and quality.min_samples > quality.window:
                raise ConfigError(
                    f"min_samples ({quality.min_samples}) is larger than the window "
                    f"({quality.window}): the breaker could never open",
                    path=f"tiers[{t}].quality.min_samples",
                )
            if t == 0 and tier.repair:
                raise ConfigError(
                    "the first tier has no tier before it whose answer it could repair",
                    path="tiers[0].repair",
                )
            for v, spec in enumerate(tier.validators):
                if not isinstance(spec.get("name"), str) or not spec["name"]:
                    raise ConfigError(
                        "expected a validator name (str)", path=f"tiers[{t}].validators[{v}].name"
                    )
        if self.router is not None and not isinstance(self.router.get("kind"), str):
            raise ConfigError("expected a router kind (str)", path="router.kind")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build a Config from a mapping (parsed TOML, JSON, or Python literals)."""
        try:
            return msgspec.convert(data, type=cls)
        except msgspec.ValidationError as exc:
            raise _config_error(exc) from None

    @classmethod
    def from_toml(cls, text: str | bytes, *, source: str = "<string>") -> Config:
        """Parse TOML text into a Config; errors name ``source`` (the file)."""
        with in_file(source):
            try:
                return msgspec.toml.decode(text, type=cls)
            except msgspec.ValidationError as exc:
                raise _config_error(exc) from None
            except msgspec.DecodeError as exc:
                raise ConfigError(f"not valid TOML: {exc}") from None
            except RecursionError:  # tomllib recurses per level of nesting
                raise ConfigError("not valid TOML: nested too deeply") from None


@contextmanager
def in_file(source: str) -> Iterator[None]:
    """ConfigErrors raised inside name ``source`` (the config file) when they name none."""
    try:
        yield
    except ConfigError as exc:
        if exc.source:
            raise
        raise ConfigError(exc.message, path=exc.path, source=source) from None


_AT_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_NOT_FINITE = f"Expected `float` <= {_FLOAT_MAX!r}"


def _config_error(exc: msgspec.ValidationError) -> ConfigError:
    m = _AT_PATH.match(str(exc))
    assert m is not None  # the pattern matches any string
    path = (m.group("path") or "").lstrip(".")
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ConfigError):  # from a nested Struct's __post_init__
        path = ".".join(p for p in (path, cause.path) if p)
        return ConfigError(cause.message, path=path)
    msg = m.group("msg").replace(_NOT_FINITE, "Expected a finite number")
    unknown = re.search(r"unknown field `([^`]*)`", msg)
    if unknown:  # point at the offending key itself, not only its parent
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    return ConfigError(msg, path=path)


def _check_url(url: str, *, path: str) -> None:
    """A URL aiohttp can send to: yarl (aiohttp's URL type) parses it, and it names a
    host (a DNS name's length at most, without white space). The URL is not echoed: it may
    hold credentials."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        raise ConfigError("not a valid URL: control characters in it", path=path)
    try:
        host = yarl.URL(url).host
    except ValueError as exc:
        raise ConfigError(f"not a valid URL: {exc}", path=path) from None
    if not host:
        raise ConfigError("not a valid URL: no host", path=path)
    if len(host) > 253:
        raise ConfigError("not a valid URL: the host is longer than 253 characters", path=path)
    if any(c.isspace() for c in host):
        raise ConfigError("not a valid URL: white space in the host", path=path)


MAX_CONFIG_BYTES = 4 << 20
"""The largest config file read (4 MiB): far above any real one, and never unbounded."""


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read a TOML config file; raise ConfigError naming the bad field and the file."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", source=str(p)) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file larger than {MAX_CONFIG_BYTES} bytes: not a config", source=str(p)
        )
    return Config.from_toml(data, source=str(p))
