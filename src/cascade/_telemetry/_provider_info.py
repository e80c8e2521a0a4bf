"""What one provider's calls always carry on their spans and metrics (:class:`ProviderInfo`),
computed once per tier and provider (:meth:`._core.Telemetry.provider_info`) and reused by
every call's :class:`~._attempts.AttemptTrace`.

The span's name and fixed attributes, the metrics' attribute sets for each response
model and the cost metric's key are the same for every call of a provider, and some cost
something to make (its URL parsed, the conventions' own attributes): made once, a call
that is not traced allocates nothing for them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from . import _conventions as conventions
from . import _semconv as sc

if TYPE_CHECKING:
    from .._config import ProviderConfig

__all__ = ["ProviderInfo", "ProviderLike", "TierLike"]


class TierLike(Protocol):
    @property
    def index(self) -> int: ...
    @property
    def name(self) -> str: ...


class ProviderLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def config(self) -> ProviderConfig: ...


class ProviderInfo:
    """What one provider's spans and metrics always carry, computed once."""

    __slots__ = (
        "_base",
        "by_model",
        "config",
        "cost_attrs",
        "cost_key",
        "gen_ai",
        "name",
        "openinference",
        "span_attrs",
        "span_name",
    )

    def __init__(
        self,
        tier: TierLike,
        provider: ProviderLike,
        *,
        gen_ai: bool = True,
        openinference: bool = False,
    ) -> None:
        config = provider.config
        self.name = provider.name
        self.config = config
        self.span_name = f"{sc.OPERATION_CHAT} {provider.model}"
        base: dict[str, Any] = {
            sc.GEN_AI_OPERATION_NAME: sc.OPERATION_CHAT,
            sc.GEN_AI_PROVIDER_NAME: config.kind,
            sc.GEN_AI_REQUEST_MODEL: provider.model,
        }
        host = None
        if config.base_url:
            # Host and port only: a URL's user info or query may hold a credential.
            url = urlsplit(config.base_url)
            host = url.hostname
            if host:
                base[sc.SERVER_ADDRESS] = host
                try:
                    port = url.port
                except ValueError:
                    port = None
                base[sc.SERVER_PORT] = port or (443 if url.scheme == "https" else 80)
        # Not the tier's name and index: the call's parent, its tier's span, has them.
        self.span_attrs: dict[str, Any] = {**base, sc.CASCADE_PROVIDER: provider.name}
        self.gen_ai = gen_ai
        self.openinference = openinference
        if not gen_ai:
            self.span_attrs = conventions.without_gen_ai(self.span_attrs)
        if openinference:
            self.span_attrs.update(conventions.call_attributes(config.kind, provider.model, host))
        self.cost_key = (tier.name, provider.name, provider.model)
        self.cost_attrs = {
            sc.CASCADE_TIER_NAME: tier.name,
            sc.CASCADE_PROVIDER: provider.name,
            sc.GEN_AI_REQUEST_MODEL: provider.model,
        }
        self._base = base
        self.by_model: dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = {}

    def metric_attrs(
        self, response_model: str
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """The (operation, input-token, output-token) attribute sets, reused across calls."""
        found = self.by_model.get(response_model)
        if found is None:
            op = {**self._base, sc.GEN_AI_RESPONSE_MODEL: response_model}
            found = (
                op,
                {**op, sc.GEN_AI_TOKEN_TYPE: sc.TOKEN_TYPE_INPUT},
                {**op, sc.GEN_AI_TOKEN_TYPE: sc.TOKEN_TYPE_OUTPUT},
            )
            if len(self.by_model) < 64:  # a server naming every answer differently
                self.by_model[response_model] = found
        return found

    def error_attrs(self, error_type: str) -> dict[str, Any]:
        return {**self._base, sc.ERROR_TYPE: error_type}
