"""The Provider protocol and the registry of provider kinds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, runtime_checkable

import aiohttp

from .._config import ProviderConfig
from .._types import Chunk, Message, RequestOptions

__all__ = [
    "Provider",
    "ProviderFactory",
    "SupportsBatches",
    "SupportsN",
    "SupportsWhole",
    "batches_of",
    "build_provider",
    "check_provider_config",
    "joined_of",
    "provider_kinds",
    "register_provider_kind",
]


@runtime_checkable
class Provider(Protocol):
    """One deployment of one model.

    ``stream`` sends one request and yields the answer as :class:`~cascade.Chunk` s as
    they arrive (a non-streaming call yields one chunk). It raises only
    :class:`~cascade.ProviderError` subclasses. Closing the iterator early (``aclose``)
    must close the upstream response at once.
    """

    name: str
    model: str
    config: ProviderConfig

    def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class SupportsN(Protocol):
    """A provider that can answer one request with several answers (the API's ``n``).

    ``complete_n`` returns up to ``n`` answers to one prompt as chunks, each a whole
    answer, billed as the provider bills ``n``: the prompt's tokens once (on the first
    chunk; 0 on the others), the output tokens per answer. Fewer than ``n`` answers (a
    server that ignores ``n``) is allowed. The engine uses it to draw a validator's
    samples of one prompt variant (self-consistency) in one request, unless the provider's
    config sets ``batch_samples = false``.
    """

    async def complete_n(
        self, messages: tuple[Message, ...], options: RequestOptions, n: int
    ) -> list[Chunk]: ...


@runtime_checkable
class SupportsWhole(Protocol):
    """A provider that answers a call that does not stream in one awaited call, and
    bounds every such call (``complete_n`` too, if it has it) by its own ``timeout_s``.

    ``complete_whole`` sends one request and returns the whole answer as one
    :class:`~cascade.Chunk`, raising only :class:`~cascade.ProviderError` subclasses (a
    call past ``timeout_s`` included). For a provider that does not stream and has no
    first-token or idle timeout, the engine calls it instead of ``stream`` and keeps no
    second timer of its own: one call, not an iterator of one chunk.
    """

    def complete_whole(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> Awaitable[Chunk]: ...


@runtime_checkable
class SupportsBatches(Protocol):
    """A provider whose stream arrives in reads of several chunks each (an SSE stream:
    one read off the socket holds many events).

    ``stream_batches`` is ``stream`` with the chunks of each read in one list, in order
    (never an empty list); ``stream`` yields the same chunks one by one. When nothing
    looks at an answer chunk by chunk (no partial check, no speculative stream), the
    engine reads a call through it and joins each list into one chunk: one turn of its
    loop per read, not per event.
    """

    def stream_batches(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[list[Chunk]]: ...


ProviderFactory = Callable[..., Provider]
"""``factory(config, *, session, api_key) -> Provider``.

A factory may also have ``check_config(config)``, called when the Cascade is built, which
raises :class:`~cascade.ConfigError` (its ``path`` relative to the provider entry).
"""

_KINDS: dict[str, ProviderFactory] = {}


def register_provider_kind(kind: str, factory: ProviderFactory, *, replace: bool = False) -> None:
    """Make ``kind = "<kind>"`` usable in config."""
    if kind in _KINDS and not replace:
        raise ValueError(f"provider kind {kind!r} is already registered")
    _KINDS[kind] = factory


def provider_kinds() -> tuple[str, ...]:
    return tuple(sorted(_KINDS))


def check_provider_config(config: ProviderConfig) -> None:
    """Run the kind's own config checks (the caller checked the kind exists)."""
    check = getattr(_KINDS[config.kind], "check_config", None)
    if check is not None:
        check(config)


def build_provider(
    config: ProviderConfig, *, session: aiohttp.ClientSession, api_key: str | None
) -> Provider:
    """Instantiate the provider for ``config.kind`` (the caller checked the kind exists)."""
    return _KINDS[config.kind](config, session=session, api_key=api_key)


_WHOLE: dict[type, bool] = {}


def answers_whole(provider: object) -> bool:
    """Whether ``provider`` is :class:`SupportsWhole` (a protocol check is slow: this one
    is made once per provider class)."""
    cls = type(provider)
    found = _WHOLE.get(cls)
    if found is None:
        found = _WHOLE[cls] = isinstance(provider, SupportsWhole)
    return found


_BATCHES: dict[type, int] = {}
_READS = 1  # reads its stream_batches
_JOINS = 2  # and may read its stream_joined


def batches_of(provider: object) -> bool:
    """Whether ``provider`` is :class:`SupportsBatches` with a ``stream`` that yields the
    chunks of its ``stream_batches`` (checked once per class): its class defines
    ``stream_batches`` no further up than ``stream``, and no ``stream`` is set on the
    instance. A subclass or a wrapper that overrides ``stream`` (to look at each chunk,
    to change them) is read through it: a ``stream_batches`` it inherits, or finds on the
    provider it wraps (``__getattr__``), would go around it."""
    return _batches(provider) >= _READS


def joined_of(provider: object) -> bool:
    """Whether ``batches_of(provider)``, and its ``stream_joined`` (the HTTP providers'
    batches of ``stream_batches`` each joined into one chunk, as the engine joins them)
    reads as its ``stream_batches`` does: its class defines ``stream_joined`` no further
    up than ``stream_batches`` (a subclass that overrides ``stream_batches`` is read
    through it)."""
    return _batches(provider) == _JOINS


def _batches(provider: object) -> int:
    cls = type(provider)
    found = _BATCHES.get(cls)
    if found is None:
        found = _BATCHES[cls] = _own_batches(cls)
    return found if "stream" not in getattr(provider, "__dict__", ()) else 0


def _own_batches(cls: type) -> int:
    """Whether ``cls`` (not an attribute lookup it forwards) defines ``stream_batches``,
    in the class that defines its ``stream`` or in one below it (``_READS``), and
    ``stream_joined`` there or below (``_JOINS``)."""
    owners: dict[str, int] = {}
    for depth, klass in enumerate(reversed(cls.__mro__)):  # the most derived one last
        for name in ("stream", "stream_batches", "stream_joined"):
            if name in vars(klass):
                owners[name] = depth
    batches, stream = owners.get("stream_batches"), owners.get("stream")
    if batches is None or stream is None or batches < stream:
        return 0
    joined = owners.get("stream_joined")
    return _JOINS if joined is not None and joined >= batches else _READS
