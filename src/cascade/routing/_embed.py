"""Embedders for the ``semantic`` router: an OpenAI-compatible ``/v1/embeddings`` endpoint,
or a local static-embedding model (model2vec: numpy only, no PyTorch) loaded from a folder
the config names. Both return unit-length rows; both keep a bounded cache by text.

::

    embedder = { kind = "openai", base_url = "http://localhost:8000/v1",
                 model = "text-embedding-3-small", api_key_env = "OPENAI_API_KEY" }
    embedder = { kind = "model2vec", path = "models/potion-base-8M" }   # a local folder
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Sequence
from typing import Annotated, Any, Literal, Protocol

import aiohttp
import anyio.to_thread
import msgspec
import numpy as np
from msgspec import Meta

from .._errors import CascadeError, ConfigError
from ._params import convert

__all__ = ["EmbedError", "Embedder", "EmbedderConfig", "build_embedder"]

MAX_RESPONSE_BYTES = 64 << 20
MAX_BATCH = 256


class EmbedError(CascadeError):
    """The embedder could not embed (the router then has no opinion, with this reason)."""


class EmbedderConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    kind: Literal["openai", "model2vec"]
    base_url: Annotated[str, Meta(pattern=r"^https?://")] | None = None
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    api_key_env: str | None = None
    timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0
    path: str | None = None
    max_chars: Annotated[int, Meta(ge=1, le=100_000)] = 2000
    """Characters of a text that are embedded (the rest is not sent or read)."""


class Embedder(Protocol):
    """Turns texts into unit-length vectors (one row per text)."""

    max_chars: int

    async def embed(self, texts: Sequence[str]) -> np.ndarray: ...

    async def aclose(self) -> None: ...


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


class _Item(msgspec.Struct):
    embedding: list[float]
    index: int = 0


class _Body(msgspec.Struct):
    data: list[_Item]


_decode_body = msgspec.json.Decoder(_Body).decode


class OpenAIEmbedder:
    """``POST {base_url}/embeddings`` with ``{"model", "input": [...]}``."""

    def __init__(self, config: EmbedderConfig, *, environ: dict[str, str] | None = None) -> None:
        if config.base_url is None or config.model is None:
            raise ConfigError("an openai embedder needs base_url and model", path="embedder")
        env = os.environ if environ is None else environ
        self.url = config.base_url.rstrip("/") + "/embeddings"
        self.model = config.model
        self.max_chars = config.max_chars
        self.timeout_s = config.timeout_s
        self._headers = {"Content-Type": "application/json"}
        if config.api_key_env:
            key = env.get(config.api_key_env)
            if not key:
                raise ConfigError(
                    f"environment variable {config.api_key_env!r} is not set",
                    path="embedder.api_key_env",
                )
            self._headers["Authorization"] = f"Bearer {key}"

    def __repr__(self) -> str:
        return f"<OpenAIEmbedder {self.model!r} at {self.url!r}>"

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        # A session per call: a Router has no close hook in the engine, and a session
        # left open would leak its connector.
        rows: list[list[float]] = []
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for at in range(0, len(texts), MAX_BATCH):
                batch = [t[: self.max_chars] or " " for t in texts[at : at + MAX_BATCH]]
                rows.extend(await self._post(session, batch))
        try:
            return _unit(np.asarray(rows, dtype=np.float64))
        except ValueError as exc:  # ragged rows
            raise EmbedError(f"embeddings of different lengths: {exc}") from None

    async def _post(self, session: aiohttp.ClientSession, batch: list[str]) -> list[list[float]]:
        payload = msgspec.json.encode({"model": self.model, "input": batch})
        try:
            async with session.post(self.url, data=payload, headers=self._headers) as resp:
                if resp.status != 200:
                    raise EmbedError(f"embeddings: HTTP {resp.status}")
                body = bytearray()
                while chunk := await resp.content.read(1 << 16):  # to the end, bounded
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        raise EmbedError("embeddings: response too large")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise EmbedError(f"embeddings: {type(exc).__name__}: {exc}"[:300]) from None
        try:
            items = _decode_body(bytes(body)).data
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EmbedError(f"embeddings: malformed response: {exc}"[:300]) from None
        if sorted(i.index for i in items) != list(range(len(batch))):
            raise EmbedError(f"embeddings: {len(items)} vectors for {len(batch)} texts")
        return [i.embedding for i in sorted(items, key=lambda i: i.index)]

    async def aclose(self) -> None:
        return None


class Model2VecEmbedder:
    """A model2vec static model from a local folder (never fetched: a path that is not an
    existing folder is a ConfigError)."""

    def __init__(self, config: EmbedderConfig) -> None:
        if not config.path or not os.path.isdir(config.path):
            raise ConfigError(
                f"a model2vec embedder needs the path of a local model folder, got {config.path!r}",
                path="embedder.path",
            )
        try:
            from model2vec import StaticModel
        except ImportError:
            raise ConfigError(
                "a model2vec embedder needs model2vec: pip install 'cascade-engine[embeddings]'",
                path="embedder.kind",
            ) from None
        try:
            self._model: Any = StaticModel.from_pretrained(config.path)
        except Exception as exc:  # a corrupt folder: any of the library's errors
            raise ConfigError(
                f"cannot load the model2vec model in {config.path!r}: {type(exc).__name__}: {exc}"[
                    :500
                ],
                path="embedder.path",
            ) from None
        self.path = config.path
        self.max_chars = config.max_chars

    def __repr__(self) -> str:
        return f"<Model2VecEmbedder {self.path!r}>"

    def _encode(self, texts: list[str]) -> np.ndarray:
        return _unit(np.asarray(self._model.encode(texts), dtype=np.float64))

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        batch = [t[: self.max_chars] for t in texts]
        try:
            return await anyio.to_thread.run_sync(self._encode, batch)
        except Exception as exc:
            raise EmbedError(f"model2vec: {type(exc).__name__}: {exc}"[:300]) from None

    async def aclose(self) -> None:
        return None


class Cached:
    """An embedder with a bounded least-recently-used cache by text."""

    def __init__(self, inner: Embedder, size: int) -> None:
        self.inner = inner
        self.size = size
        self.max_chars = inner.max_chars
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def __repr__(self) -> str:
        return f"<Cached {self.inner!r} {len(self._cache)}/{self.size}>"

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        keys = [t[: self.max_chars] for t in texts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        if missing:
            rows = await self.inner.embed(missing)
            if rows.shape[0] != len(missing):
                raise EmbedError(f"{rows.shape[0]} vectors for {len(missing)} texts")
            for k, row in zip(missing, rows, strict=True):
                self._cache[k] = row
        out = np.stack([self._cache[k] for k in keys])
        for k in keys:
            self._cache.move_to_end(k)
        while len(self._cache) > self.size:
            self._cache.popitem(last=False)
        return out

    async def aclose(self) -> None:
        await self.inner.aclose()


def build_embedder(table: object, *, cache_size: int) -> Cached:
    if not isinstance(table, dict):
        raise ConfigError("expected a table with a `kind`", path="embedder")
    try:
        config = convert(table, EmbedderConfig)
    except ConfigError as exc:
        raise ConfigError(exc.message, path=f"embedder.{exc.path}".rstrip(".")) from None
    inner: Embedder = (
        OpenAIEmbedder(config) if config.kind == "openai" else Model2VecEmbedder(config)
    )
    return Cached(inner, cache_size)
