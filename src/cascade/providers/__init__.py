"""Providers: the mechanism that sends one request to one deployment and streams chunks back.

A provider is anything with the :class:`Provider` shape. Built-in kinds: ``openai`` (any
OpenAI-compatible ``/v1/chat/completions`` server), ``anthropic`` (the Messages API) and
``replay`` (recorded answers from a dataset, for offline evaluation).
New kinds register with :func:`register_provider_kind`.
"""

from __future__ import annotations

from ._base import (
    Provider,
    ProviderFactory,
    SupportsBatches,
    SupportsN,
    SupportsWhole,
    answers_whole,
    batches_of,
    build_provider,
    check_provider_config,
    provider_kinds,
    register_provider_kind,
)
from .anthropic import AnthropicProvider
from .openai import OpenAIProvider
from .replay import ReplayProvider

register_provider_kind("openai", OpenAIProvider)
register_provider_kind("anthropic", AnthropicProvider)
register_provider_kind("replay", ReplayProvider)

__all__ = [
    "AnthropicProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderFactory",
    "ReplayProvider",
    "SupportsBatches",
    "SupportsN",
    "SupportsWhole",
    "answers_whole",
    "batches_of",
    "build_provider",
    "check_provider_config",
    "provider_kinds",
    "register_provider_kind",
]
