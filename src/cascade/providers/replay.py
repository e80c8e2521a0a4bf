"""``replay``: serves recorded answers from a dataset instead of calling a model.

For offline evaluation (``cascade eval``): the real engine, validators and cost accounting
run over answers that were recorded once, so a cascade's cost and accuracy can be measured
without an API key, and again and again for the same figures.

The dataset is JSONL (gzip-compressed when its name ends in ``.gz``), one question a line::

    {"question": "...", "question_tokens": 61,
     "responses": {"gpt-4": [{"variant": "COT", "text": "...", "answer": "$18",
                              "output_tokens": 80}, ...], ...}}

Other fields (``id``, ``expected``, a response's ``judged_correct``) are ignored here: the
gold answer is read only by the scorer of ``cascade eval``.
"""

from __future__ import annotations

import gzip
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from .._config import Config, ProviderConfig
from .._errors import ConfigError, MalformedResponse, ProviderStatusError
from .._types import (
    Chunk,
    Message,
    ReportedTokens,
    RequestOptions,
    estimate_prompt_tokens,
    estimate_text_tokens,
)

__all__ = ["ReplayDataset", "ReplayProvider", "load_dataset", "resolve_datasets"]


Tokens = ReportedTokens  # a recorded count is bounded like a live one


class _Response(msgspec.Struct):
    variant: str
    text: str
    output_tokens: Tokens | None = None
    answer: str | int | float | None = None


class _Record(msgspec.Struct):
    question: str
    responses: dict[str, list[_Response]]
    question_tokens: Tokens | None = None


_decode_record = msgspec.json.Decoder(_Record).decode


class ReplayDataset:
    """A dataset indexed by question (stripped): every recorded response per model."""

    __slots__ = ("models", "path", "questions")

    def __init__(self, path: str, records: dict[str, _Record]) -> None:
        self.path = path
        self.questions = records
        models: dict[str, set[str]] = {}
        for record in records.values():
            for model, responses in record.responses.items():
                models.setdefault(model, set()).update(r.variant for r in responses)
        self.models: dict[str, frozenset[str]] = {m: frozenset(v) for m, v in models.items()}
        """Recorded variants per model."""

    def __repr__(self) -> str:
        return f"<ReplayDataset {self.path!r}: {len(self.questions)} questions>"


_CACHE: dict[str, tuple[tuple[int, int], ReplayDataset]] = {}
_CACHE_LOCK = threading.Lock()


def read_lines(path: str | os.PathLike[str]) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a JSONL file (gunzipped if its name ends in ``.gz``), numbered
    from 1. Raises OSError (and gzip's BadGzipFile, an OSError) when unreadable."""
    opener: Any = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                yield lineno, line


def load_dataset(path: str | os.PathLike[str]) -> ReplayDataset:
    """The dataset at ``path``, parsed once per path per process (again if the file changes).

    Blocking: call it off the event loop. Raises ConfigError (``path = "dataset"``) when the
    file is missing, unreadable or not in the format.
    """
    resolved = str(Path(path).resolve())
    try:
        st = os.stat(resolved)
    except OSError as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc.strerror}", path="dataset") from None
    stamp = (st.st_mtime_ns, st.st_size)
    with _CACHE_LOCK:  # one parse per file even when several threads ask at once
        cached = _CACHE.get(resolved)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        dataset = _parse(path, resolved)
        _CACHE[resolved] = (stamp, dataset)
        return dataset


def _parse(shown: str | os.PathLike[str], resolved: str) -> ReplayDataset:
    records: dict[str, _Record] = {}
    lineno = 0
    try:
        for lineno, line in read_lines(resolved):
            record = _decode_record(line)
            key = record.question.strip()
            if key in records:
                raise ConfigError(f"{shown}:{lineno}: duplicate question", path="dataset")
            records[key] = record
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigError(f"cannot read {str(shown)!r}: {why}", path="dataset") from None
    except (msgspec.DecodeError, msgspec.ValidationError, EOFError) as exc:
        raise ConfigError(f"{shown}:{lineno}: not a replay record: {exc}", path="dataset") from None
    if not records:
        raise ConfigError(f"{str(shown)!r} holds no records", path="dataset")
    return ReplayDataset(resolved, records)


def _cached(path: str) -> ReplayDataset | None:
    cached = _CACHE.get(str(Path(path).resolve()))
    return None if cached is None else cached[1]


def resolve_datasets(config: Config, base_dir: str | os.PathLike[str]) -> Config:
    """``config`` with each replay provider's relative ``dataset`` path made relative to
    ``base_dir`` (the config file's folder) instead of the current directory."""
    tiers = []
    for tier in config.tiers:
        providers = [
            msgspec.structs.replace(p, dataset=str((Path(base_dir) / p.dataset).resolve()))
            if p.kind == "replay" and p.dataset and not Path(p.dataset).is_absolute()
            else p
            for p in tier.providers
        ]
        tiers.append(msgspec.structs.replace(tier, providers=providers))
    return msgspec.structs.replace(config, tiers=tiers)


class ReplayProvider:
    """A model answering from a recorded dataset: no network, no latency, no randomness.

    Configured like any provider (``dataset`` relative to the config file's folder when the
    ``cascade`` command reads the file, else to the current directory)::

        [[tiers.providers]]
        name = "gpt-4"
        kind = "replay"
        model = "gpt-4"                      # the recorded model
        variant = "NL+SL"                    # optional
        dataset = "gsm8k_replay.jsonl.gz"
        prompt_overhead_tokens = 500
        input_cost_per_mtok = 30.0
        output_cost_per_mtok = 60.0

    Lookup: the content of the request's LAST user message, stripped of surrounding
    whitespace, must equal a record's ``question`` (stripped); ``config.model`` names the
    recorded model. A variant's ``system`` text is ignored, but a ``suffix`` changes the
    question and so misses. Each call serves one recorded response: the variant the request
    names (``options.variant``, set by the engine from the tier's ``variants``), else
    ``config.variant``, else the question's recorded responses in turn (a counter per
    question, kept per provider). Several responses recorded under one variant are served in
    turn too. A question, model or variant with nothing recorded is a
    :class:`~cascade.ProviderStatusError` with ``status = 404`` (so the engine fails over or
    escalates, as for a real deployment that errs).

    Tokens, and so cost: input = the record's ``question_tokens`` +
    ``config.prompt_overhead_tokens`` (the few-shot prompt the recording used, which the
    dataset does not count; any other message text is not counted); output = the recorded
    ``output_tokens``. The engine prices them at the provider's per-million prices. A
    dataset without ``question_tokens`` (or a response without ``output_tokens``) is priced
    on the engine's own estimates (``estimate_prompt_tokens`` of the messages, about four
    characters a token of the text); ``estimated`` counts the calls priced so.

    ``complete_n`` serves ``n`` responses in turn from one request, billed as an
    OpenAI-compatible API bills ``n``: the prompt once (on the first answer), the output
    per answer.

    The recorded final answer, when there is one, travels as ``Chunk.answer`` (the
    ``recorded`` extractor reads it). Other sampling options are ignored. The dataset is
    parsed when the Cascade is built (``check_config``), once per file per process.
    """

    kind = "replay"

    def __init__(
        self,
        config: ProviderConfig,
        *,
        session: aiohttp.ClientSession | None = None,
        api_key: str | None = None,
    ) -> None:
        if not config.dataset:
            raise ConfigError("the replay provider needs a dataset", path="dataset")
        self.name = config.name
        self.model = config.model
        self.config = config
        self._path = config.dataset
        self._dataset = _cached(config.dataset)
        self._lock = anyio.Lock()
        self._turns: dict[tuple[str, str | None], int] = {}
        self.served = 0
        self.estimated = 0
        """Calls priced on estimated tokens (the dataset recorded none for them)."""

    @classmethod
    def check_config(cls, config: ProviderConfig) -> None:
        """Build-time checks: a readable dataset in the format, holding ``model`` (and
        ``variant``, when one is set). Parses the dataset into the per-process cache."""
        if not config.dataset:
            raise ConfigError("expected the path of a recorded dataset", path="dataset")
        dataset = load_dataset(config.dataset)
        variants = dataset.models.get(config.model)
        if variants is None:
            known = ", ".join(sorted(dataset.models))
            raise ConfigError(
                f"model {config.model!r} has no recorded responses (recorded: {known})",
                path="model",
            )
        if config.variant is not None and config.variant not in variants:
            known = ", ".join(sorted(variants))
            raise ConfigError(
                f"variant {config.variant!r} is not recorded for {config.model!r} "
                f"(recorded: {known})",
                path="variant",
            )

    def __repr__(self) -> str:
        state = "loaded" if self._dataset is not None else "not loaded"
        return (
            f"<ReplayProvider {self.name} ({self.model}) {Path(self._path).name} {state}, "
            f"served {self.served}>"
        )

    async def _load(self) -> ReplayDataset:
        # Only a provider built without check_config (directly, not by a Cascade) gets here.
        async with self._lock:
            if self._dataset is None:
                try:
                    self._dataset = await anyio.to_thread.run_sync(load_dataset, self._path)
                except ConfigError as exc:
                    raise MalformedResponse(
                        f"dataset: {exc.message}", provider=self.name, model=self.model
                    ) from None
            return self._dataset

    async def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]:
        dataset = self._dataset or await self._load()
        (chunk,) = self._serve(dataset, messages, options, 1)
        await anyio.lowlevel.checkpoint()  # a real await: cancellable, and fair to others
        yield chunk

    async def complete_n(
        self, messages: tuple[Message, ...], options: RequestOptions, n: int
    ) -> list[Chunk]:
        """``n`` recorded answers from one request: the prompt billed once."""
        dataset = self._dataset or await self._load()
        chunks = self._serve(dataset, messages, options, n)
        await anyio.lowlevel.checkpoint()
        return chunks

    def _serve(
        self, dataset: ReplayDataset, messages: tuple[Message, ...], options: RequestOptions, n: int
    ) -> list[Chunk]:
        question = next((m.content for m in reversed(messages) if m.role == "user"), "")
        record = dataset.questions.get(question.strip())
        if record is None:
            raise self._missing(f"no recorded question matches {question.strip()[:60]!r}")
        responses = record.responses.get(self.model)
        if not responses:
            raise self._missing(f"no recorded response of {self.model!r} to this question")
        variant = options.variant or self.config.variant
        if variant is not None:
            responses = [r for r in responses if r.variant == variant]
            if not responses:
                raise self._missing(f"variant {variant!r} is not recorded for this question")
        key = (record.question, variant)
        turn = self._turns.get(key, 0)
        self._turns[key] = turn + n
        prompt = record.question_tokens
        estimated = prompt is None
        if prompt is None:
            prompt = estimate_prompt_tokens(messages)
        chunks = []
        for i in range(n):
            response = responses[(turn + i) % len(responses)]
            output = response.output_tokens
            if output is None:
                output = estimate_text_tokens(response.text)
                estimated = True
            chunks.append(
                Chunk(
                    text=response.text,
                    answer=None if response.answer is None else str(response.answer),
                    input_tokens=prompt + self.config.prompt_overhead_tokens if i == 0 else 0,
                    output_tokens=output,
                    finish_reason="stop",
                    model=self.model,
                )
            )
        self.served += 1
        self.estimated += estimated
        return chunks

    def _missing(self, message: str) -> ProviderStatusError:
        return ProviderStatusError(message, provider=self.name, model=self.model, status=404)

    async def aclose(self) -> None:
        """Nothing to release: the parsed dataset stays cached for the process."""
