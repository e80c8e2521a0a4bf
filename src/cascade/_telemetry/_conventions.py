"""Which semantic conventions the spans follow: the OpenTelemetry GenAI conventions
(``gen_ai``, the default), OpenInference's (``openinference``, read by Arize Phoenix and
other OpenInference backends), or both.

The GenAI attributes are written where the spans are made (``_spans.py``,
``_attempts.py``); OpenInference's are built here, each set once per span, and only when
asked for, so the default costs one flag test per span. With ``gen_ai`` left out, the
``gen_ai.*`` span attributes are dropped (metrics keep their GenAI names: OpenInference
has no metric conventions). Prompts and answers (``input.value`` / ``output.value``) go
on a call's span only with content capture on, as the GenAI messages do.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from .._errors import ConfigError
from . import _semconv as sc
from ._content import captured_text

if TYPE_CHECKING:
    from .._config import ProviderConfig
    from .._types import Completion

__all__ = [
    "CHAIN",
    "CONVENTIONS",
    "DEFAULT",
    "GEN_AI",
    "OPENINFERENCE",
    "call_attributes",
    "hosting_provider",
    "input_attributes",
    "output_attributes",
    "parse",
    "resolve",
    "usage_attributes",
    "without_gen_ai",
]

GEN_AI: Final = "gen_ai"
OPENINFERENCE: Final = "openinference"
CONVENTIONS: Final = (GEN_AI, OPENINFERENCE)
DEFAULT: Final = (GEN_AI,)

CHAIN: Final = {sc.OPENINFERENCE_SPAN_KIND: sc.SPAN_KIND_CHAIN}
"""A run's and a tier's span kind."""

_SYSTEMS: Final = {"openai": "openai", "anthropic": "anthropic"}
"""Provider kind (the API it speaks) -> OpenInference's well-known ``llm.system`` value;
another kind (``replay``, a plug-in's) is named as it is."""

_HOSTS: Final = {
    "api.openai.com": "openai",
    "openai.azure.com": "azure",
    "services.ai.azure.com": "azure",
    "cognitiveservices.azure.com": "azure",
    "api.anthropic.com": "anthropic",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
    "api.mistral.ai": "mistralai",
    "generativelanguage.googleapis.com": "google",
    "aiplatform.googleapis.com": "google",
    "amazonaws.com": "aws",
    "api.x.ai": "xai",
    "api.deepseek.com": "deepseek",
    "api.groq.com": "groq",
    "api.fireworks.ai": "fireworks",
    "api.moonshot.cn": "moonshot",
    "api.cerebras.ai": "cerebras",
    "api.perplexity.ai": "perplexity",
    "api.together.ai": "together",
    "api.together.xyz": "together",
    "ollama.com": "ollama",
}
"""Host (or the domain it is under) -> OpenInference's well-known ``llm.provider`` value:
the hosting provider, which an OpenAI-compatible API (Azure, Groq, a vLLM on loopback)
often is not OpenAI. Another host has no ``llm.provider``, as in OpenInference's own
instrumentations."""


def parse(value: object, *, path: str) -> tuple[str, ...]:
    """``value`` as a tuple of known convention names (each once, in order), or
    ConfigError naming ``path``."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(
            f"expected a sequence of convention names ({', '.join(CONVENTIONS)})", path=path
        )
    names: list[str] = []
    for i, name in enumerate(value):
        if name not in CONVENTIONS:
            raise ConfigError(
                f"unknown convention {name!r} (expected {' or '.join(CONVENTIONS)})",
                path=f"{path}[{i}]",
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError(f"expected at least one of {', '.join(CONVENTIONS)}", path=path)
    return tuple(names)


def resolve(
    arg: Sequence[str] | None, environ: Mapping[str, str], configured: Sequence[str] | None
) -> tuple[str, ...]:
    """The conventions a Cascade emits: its ``semconv`` argument, else ``CASCADE_SEMCONV``
    (comma-separated), else the config's ``[telemetry] semconv``, else ``gen_ai``."""
    if arg is not None:
        return parse(arg, path="semconv")
    raw = environ.get(sc.ENV_SEMCONV, "").strip()
    if raw:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
        return parse(names, path=sc.ENV_SEMCONV)
    if configured is not None:
        return parse(configured, path="telemetry.semconv")
    return DEFAULT


def call_attributes(kind: str, model: str, host: str | None) -> dict[str, Any]:
    """What every OpenInference call span of one provider carries: ``host`` is its base
    URL's."""
    attrs: dict[str, Any] = {
        sc.OPENINFERENCE_SPAN_KIND: sc.SPAN_KIND_LLM,
        sc.LLM_MODEL_NAME: model,
        sc.LLM_SYSTEM: _SYSTEMS.get(kind, kind),
    }
    hosting = hosting_provider(host)
    if hosting is not None:
        attrs[sc.LLM_PROVIDER] = hosting
    return attrs


def hosting_provider(host: str | None) -> str | None:
    """``llm.provider`` for a base URL's ``host``: a well-known value, or None."""
    if not host:
        return None
    host = host.lower().rstrip(".")
    found = _HOSTS.get(host)
    while found is None and "." in host:
        host = host.split(".", 1)[1]  # the domain it is under, a label at a time
        found = _HOSTS.get(host)
    return found


def usage_attributes(
    config: ProviderConfig,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cost: float,
    *,
    cache_read: int = 0,
    cache_write: int = 0,
) -> dict[str, Any]:
    """An answered call's model (as the server named it), tokens and cost (USD): ``cost``
    is the call's whole price, cached prompt tokens (``cache_read`` / ``cache_write``, part
    of ``input_tokens``) priced at the cache prices; those are detailed when there are
    any."""
    completion_cost = output_tokens * config.output_cost_per_mtok / 1_000_000
    attrs: dict[str, Any] = {
        sc.LLM_MODEL_NAME: model,
        sc.LLM_TOKEN_COUNT_PROMPT: input_tokens,
        sc.LLM_TOKEN_COUNT_COMPLETION: output_tokens,
        sc.LLM_TOKEN_COUNT_TOTAL: input_tokens + output_tokens,
        sc.LLM_COST_PROMPT: max(0.0, cost - completion_cost),
        sc.LLM_COST_COMPLETION: completion_cost,
        sc.LLM_COST_TOTAL: cost,
    }
    if cache_read or cache_write:
        read_price, write_price = config.cache_prices()
        if cache_read:
            attrs[sc.LLM_TOKEN_COUNT_CACHE_READ] = cache_read
            attrs[sc.LLM_COST_CACHE_READ] = cache_read * read_price / 1_000_000
        if cache_write:
            attrs[sc.LLM_TOKEN_COUNT_CACHE_WRITE] = cache_write
            attrs[sc.LLM_COST_CACHE_WRITE] = cache_write * write_price / 1_000_000
    return attrs


def input_attributes(messages_json: str) -> dict[str, str]:
    """A call's prompt (the GenAI messages' JSON), for content capture."""
    return {sc.INPUT_VALUE: messages_json, sc.INPUT_MIME_TYPE: sc.MIME_JSON}


def output_attributes(completions: Sequence[Completion], messages_json: str) -> dict[str, str]:
    """A call's answer, for content capture: its text, or with several choices the GenAI
    output messages' JSON."""
    if len(completions) == 1:
        text = captured_text(completions[0].text)
        return {sc.OUTPUT_VALUE: text, sc.OUTPUT_MIME_TYPE: sc.MIME_TEXT}
    return {sc.OUTPUT_VALUE: messages_json, sc.OUTPUT_MIME_TYPE: sc.MIME_JSON}


def without_gen_ai(attrs: dict[str, Any]) -> dict[str, Any]:
    """``attrs`` less its ``gen_ai.*`` names (the spans of a Cascade without ``gen_ai``)."""
    return {k: v for k, v in attrs.items() if not k.startswith("gen_ai.")}
