"""The router files ``cascade train-router`` writes and the learned routers read: JSON,
parsed into typed Structs and checked (never unpickled).

Both kinds share a header: ``format``, ``version``, ``kind``, the tier names the router
was trained for, each tier's mean cost alone on the training records, and the policy's
``cost_weight`` (None: cost per right answer). A ``classifier`` file adds the TF-IDF
features and one logistic-regression head per tier; a ``semantic`` file adds labelled
example texts (embedded when the router first needs them).
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .._errors import ConfigError
from ._textmodel import (
    MAX_TIERS,
    OUTCOMES,
    Features,
    Head,
    TextModel,
    check_text_model,
    read_model_file,
)

__all__ = [
    "FORMAT",
    "ClassifierFile",
    "ClusterPlan",
    "Example",
    "SemanticFile",
    "TableEnsemble",
    "TableMember",
    "TierLabel",
    "encode_file",
    "load_classifier",
    "load_semantic",
]

FORMAT = "cascade-router"
MAX_EXAMPLES = 5000
MAX_EXAMPLE_CHARS = 4000

Outcome = Literal["accepted_right", "accepted_wrong", "rejected_right", "rejected_wrong"]
Cost = Annotated[float, Meta(ge=0, le=1e6)]


class _Header(msgspec.Struct, kw_only=True):
    format: str = ""
    version: int = 0
    kind: str = ""


class ClusterPlan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A cluster's range of tiers (1-based, inclusive) and what it did on the training
    records of the cluster."""

    start: Annotated[int, Meta(ge=1)]
    stop: Annotated[int, Meta(ge=1)]
    right: Annotated[float, Meta(ge=0, le=1)]
    """Accuracy of the range over the cluster's training records (after shrinkage)."""
    cost: Annotated[float, Meta(ge=0, le=1e6)]
    """Mean cost of the range per request over the cluster's training records (USD)."""
    records: Annotated[int, Meta(ge=0)]


MAX_MEMBERS = 64
"""Tables in a bagged plan table, at most."""
MAX_MEMBER_CLUSTERS = 64
MIN_REFERENCE_COST = 1e-12
"""The floor of a bagged table's reference cost (the trainer writes it for free tiers)."""
MAX_TABLE_CELLS = 1 << 23
"""Vocabulary terms x clusters of all members, at most: a loaded bagged table holds its
centroids as one dense matrix of that many float64 (64 MiB; a table ``train-router``
fits from a 20,000-term vocabulary has 4.8 million)."""


class TableMember(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One plan table of a bagged plan table: per cluster, its centroid (sparse, over the
    features' vocabulary) and what every range of tiers did on its training records."""

    terms: list[list[Annotated[int, Meta(ge=0)]]]
    """Per cluster, the vocabulary indexes of its centroid's non-zero values."""
    values: list[list[Annotated[float, Meta(ge=0)]]]
    """Per cluster, the centroid's values at ``terms`` (a unit vector of TF-IDF weights,
    or none for an empty text's)."""
    right: list[list[Annotated[float, Meta(ge=0, le=1)]]]
    """Per cluster and range, the range's accuracy on the cluster's training records
    (shrunk toward the whole set's)."""
    cost: list[list[Cost]]
    """Per cluster and range, the range's mean cost per request there (USD)."""
    records: list[Annotated[int, Meta(ge=0)]]


class TableEnsemble(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A bagged plan table (policy ``table``): a request's figures per range are the mean
    over the members of its nearest cluster's; it runs the range whose accuracy minus
    ``cost_weight`` x cost / ``reference_cost`` is highest (the cheaper on a tie)."""

    ranges: list[tuple[int, int]]
    """The ranges of tiers (1-based, inclusive) the members' figures are for."""
    cost_weight: Annotated[float, Meta(ge=0, le=1e6)]
    reference_cost: Annotated[float, Meta(ge=MIN_REFERENCE_COST, le=1e6)]
    """The reference tier's mean cost alone on the training records (USD; at least
    ``MIN_REFERENCE_COST``, so that ``cost_weight`` / ``reference_cost`` stays finite)."""
    members: list[TableMember]


class ClassifierFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal["cascade-router"] = "cascade-router"
    version: Literal[1, 2] = 1
    kind: Literal["classifier"] = "classifier"
    tiers: list[str]
    costs: list[Cost]
    cost_weight: Annotated[float, Meta(ge=0, le=1e6)] | None = None
    features: Features
    heads: list[Head]
    """One per tier (the chance of each outcome of the tier alone), then one per plan."""
    plans: list[tuple[int, int]] = []
    """Ranges of tiers (1-based, inclusive) whose chance of a right answer a head of its
    own predicts (``right`` / ``wrong``), after the tiers' heads."""
    clusters: list[ClusterPlan] = []
    """The plan table (policy ``table``): per cluster of training texts, the range of tiers
    to run; the last head then picks a request's cluster (its nearest centroid)."""
    ensemble: TableEnsemble | None = None
    """The bagged plan table (policy ``table``; version 2 files only)."""
    trained_on: dict[str, Any] = {}


class TierLabel(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one tier alone did with a request."""

    outcome: Outcome
    cost_usd: Cost = 0.0
    score: Annotated[float, Meta(ge=0, le=1)] = 0.0
    """The returned answer's validator score (the engine's ``best`` fallback compares it)."""


class Example(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A training text and, per tier, what that tier alone did with it (None: unknown)."""

    text: Annotated[str, Meta(max_length=MAX_EXAMPLE_CHARS)]
    tiers: list[TierLabel | None]


class SemanticFile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    format: Literal["cascade-router"] = "cascade-router"
    version: Literal[1] = 1
    kind: Literal["semantic"] = "semantic"
    tiers: list[str]
    costs: list[Cost]
    cost_weight: Annotated[float, Meta(ge=0, le=1e6)] | None = None
    k: Annotated[int, Meta(ge=1, le=256)] = 16
    examples: list[Example]
    trained_on: dict[str, Any] = {}


_encoder = msgspec.json.Encoder()


def encode_file(data: ClassifierFile | SemanticFile) -> bytes:
    return _encoder.encode(data)


VERSIONS = {"classifier": (1, 2), "semantic": (1,)}


def _decode(path: str | os.PathLike[str], at: str, kind: str, typ: type[Any]) -> Any:
    shown = str(path)
    data = read_model_file(path, at=at)
    try:
        header = msgspec.json.decode(data, type=_Header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{shown}: not a router file: {exc}", path=at) from None
    except RecursionError:  # msgspec recurses per level of nesting, even where it skips
        raise ConfigError(f"{shown}: not a router file: nested too deeply", path=at) from None
    if header.format != FORMAT:
        raise ConfigError(f"{shown}: not a router file (format {header.format!r})", path=at)
    if header.kind != kind:
        raise ConfigError(f"{shown}: a {header.kind!r} router file, not a {kind!r} one", path=at)
    if header.version not in VERSIONS[kind]:
        raise ConfigError(
            f"{shown}: a version {header.version} {kind} router file; this cascade-engine "
            f"reads versions {', '.join(map(str, VERSIONS[kind]))} (retrain it, or upgrade)",
            path=at,
        )
    try:
        parsed = msgspec.json.decode(data, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ConfigError(f"{shown}: a corrupt {kind} router file: {exc}", path=at) from None
    except RecursionError:
        raise ConfigError(
            f"{shown}: a corrupt {kind} router file: nested too deeply", path=at
        ) from None
    _check_header(parsed, shown, at)
    return parsed


def _check_header(parsed: ClassifierFile | SemanticFile, shown: str, at: str) -> None:
    n = len(parsed.tiers)
    if not 1 <= n <= MAX_TIERS:
        raise ConfigError(f"{shown}: {n} tiers (expected 1 to {MAX_TIERS})", path=at)
    if len(parsed.costs) != n:
        raise ConfigError(f"{shown}: {len(parsed.costs)} costs for {n} tiers", path=at)
    if any(not math.isfinite(c) for c in parsed.costs):
        raise ConfigError(f"{shown}: a cost is not finite", path=at)


def load_classifier(path: str | os.PathLike[str], *, at: str) -> tuple[ClassifierFile, TextModel]:
    """A classifier file and its model; ConfigError naming the file (at ``at``) when it is
    missing, too large, corrupt, or its shapes disagree."""
    parsed: ClassifierFile = _decode(path, at, "classifier", ClassifierFile)
    n, k = len(parsed.tiers), len(parsed.clusters)
    if parsed.version >= 2 and k:
        raise ConfigError(
            f"{path}: a version 2 file has a bagged plan table, not a single one (clusters)",
            path=at,
        )
    if parsed.ensemble is not None:
        if parsed.version < 2:
            raise ConfigError(f"{path}: a bagged plan table needs version 2", path=at)
        _check_ensemble(parsed.ensemble, n, len(parsed.features.vocabulary), str(path), at)
    table = 1 if k else 0
    if len(parsed.heads) != n + len(parsed.plans) + table:
        raise ConfigError(
            f"{path}: {len(parsed.heads)} heads for {n} tiers, {len(parsed.plans)} plans "
            f"and {k} clusters",
            path=at,
        )
    ranges = [*parsed.plans, *((c.start, c.stop) for c in parsed.clusters)]
    for start, stop in ranges:
        if not 1 <= start <= stop <= n:
            raise ConfigError(f"{path}: plan [{start}, {stop}] is not a range of tiers", path=at)
    if table and parsed.heads[-1].classes != [str(c) for c in range(k)]:
        raise ConfigError(f"{path}: the cluster head's classes are not 0 to {k - 1}", path=at)
    for i, head in enumerate(parsed.heads[: len(parsed.heads) - table]):
        known = OUTCOMES if i < n else ("right", "wrong")
        unknown = set(head.classes) - set(known)
        if unknown:
            raise ConfigError(f"{path}: heads[{i}]: unknown classes {sorted(unknown)}", path=at)
    model = check_text_model(parsed.features, parsed.heads, source=str(path), path=at)
    return parsed, model


def _check_ensemble(e: TableEnsemble, n: int, width: int, shown: str, at: str) -> None:
    """ConfigError naming the file when the bagged table's shapes are off (the decoder has
    refused numbers out of range: JSON has no NaN, and 1e999 is out of float range)."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{shown}: ensemble: {what}", path=at)

    if not e.ranges or any(not 1 <= s <= m <= n for s, m in e.ranges):
        raise bad(f"ranges {e.ranges!r} are not ranges of {n} tiers"[:300])
    if not 1 <= len(e.members) <= MAX_MEMBERS:
        raise bad(f"{len(e.members)} members (expected 1 to {MAX_MEMBERS})")
    r, total = len(e.ranges), 0
    for i, m in enumerate(e.members):
        k = len(m.records)
        if not 1 <= k <= MAX_MEMBER_CLUSTERS:
            raise bad(f"members[{i}]: {k} clusters (expected 1 to {MAX_MEMBER_CLUSTERS})")
        if not len(m.terms) == len(m.values) == len(m.right) == len(m.cost) == k:
            raise bad(f"members[{i}]: terms, values, right, cost and records differ in length")
        total += k
    if width * total > MAX_TABLE_CELLS:  # checked before any of it is allocated
        raise bad(
            f"{width} terms x {total} clusters is {width * total:,} centroid values "
            f"(at most {MAX_TABLE_CELLS:,})"
        )
    for i, m in enumerate(e.members):
        for c in range(len(m.records)):
            terms, values = m.terms[c], m.values[c]
            if len(terms) != len(values) or len(set(terms)) != len(terms):
                raise bad(f"members[{i}] cluster {c}: terms and values do not pair up")
            if any(t >= width for t in terms):
                raise bad(f"members[{i}] cluster {c}: a term beyond the {width}-term vocabulary")
            if math.fsum(v * v for v in values) > 1 + 1e-6:
                raise bad(f"members[{i}] cluster {c}: the centroid is longer than a unit vector")
            if len(m.right[c]) != r or len(m.cost[c]) != r:
                raise bad(f"members[{i}] cluster {c}: figures for other than {r} ranges")


def load_semantic(path: str | os.PathLike[str], *, at: str) -> SemanticFile:
    """A semantic router file, checked like :func:`load_classifier`."""
    parsed: SemanticFile = _decode(path, at, "semantic", SemanticFile)
    if not 1 <= len(parsed.examples) <= MAX_EXAMPLES:
        raise ConfigError(
            f"{path}: {len(parsed.examples)} examples (expected 1 to {MAX_EXAMPLES})", path=at
        )
    for i, ex in enumerate(parsed.examples):
        if len(ex.tiers) != len(parsed.tiers):
            raise ConfigError(
                f"{path}: examples[{i}] has {len(ex.tiers)} labels for {len(parsed.tiers)} tiers",
                path=at,
            )
    return parsed
