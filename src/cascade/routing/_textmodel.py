"""A text classifier small enough to reason about: TF-IDF features (word n-grams, optionally
character n-grams, a bounded vocabulary) and one logistic-regression head per tier.

scikit-learn fits it (``_train.py``); this module only predicts, with numpy, from the
numbers the model file holds. The file is JSON (never a pickle): vocabulary, idf weights,
coefficients and intercepts, each checked for type, shape and size when it is read, since
a file a config names is still untrusted input.
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import islice, repeat
from typing import Annotated

import msgspec
import numpy as np
from msgspec import Meta

from .._errors import ConfigError

__all__ = [
    "MAX_FILE_BYTES",
    "OUTCOMES",
    "Features",
    "Head",
    "TextModel",
    "analyze",
    "read_model_file",
]

MAX_FILE_BYTES = 64 << 20
"""A router file larger than this is refused before it is parsed."""
MAX_VOCAB = 200_000
MAX_CLASSES = 16
MAX_TIERS = 16
MAX_HEADS = MAX_TIERS + MAX_TIERS * (MAX_TIERS + 1) // 2 + 1
"""A head per tier, one per range of tiers, and the plan table's (the file's size bounds
the numbers they hold)."""
MAX_CHARS_LIMIT = 100_000
MAX_WEIGHTS = 1 << 23
"""Vocabulary terms x (the heads' coefficient rows + 1), at most: a loaded model holds them
as one matrix of float64 (64 MiB). A file of realistic coefficients (~20 characters each)
within ``MAX_FILE_BYTES`` holds under half as many."""
MAX_MAGNITUDE = 1e100
"""The largest idf value, coefficient or intercept a file may hold. Fitted models come
nowhere near (scikit-learn's idf is at most 1 + ln(documents); a regularised fit's
coefficients are tens); the bound keeps every product and sum of a decision finite."""

OUTCOMES = ("accepted_right", "accepted_wrong", "rejected_right", "rejected_wrong")
"""What a tier alone does with a request: its validators accept or reject its answer, and
the answer is right or wrong."""

_WORD = re.compile(r"\w\w+")  # no nested quantifiers: linear in the text
_SPACE = re.compile(r"\s+")
_INTP = np.dtype(np.intp)
_FLOAT = np.dtype(np.float64)
_NOT_WORD = bytes(i if re.match(r"\w", chr(i)) else 32 for i in range(256))
"""For ASCII bytes: a word character (``\\w``: letters, digits, ``_``) as it is, any other
a space."""


def words_of(text: str) -> list[str]:
    """``_WORD.findall(text)``: the runs of two or more word characters. An ASCII text (most
    prompts) is cut without the regex, about twice as fast: its other characters become
    spaces (``\\w`` of an ASCII character is ``[A-Za-z0-9_]``), then it is split and the
    single characters are dropped."""
    if text.isascii():
        spaced = text.encode("ascii").translate(_NOT_WORD).decode("ascii")
        return [word for word in spaced.split() if len(word) > 1]
    return _WORD.findall(text)


Gram = Annotated[int, Meta(ge=1, le=8)]


class Features(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a text becomes a vector: n-grams of the first ``max_chars`` characters, lower
    cased, weighted by (1 + log count) x idf and scaled to unit length."""

    word_ngrams: tuple[Gram, Gram] = (1, 2)
    char_ngrams: tuple[Gram, Gram] | None = None
    max_chars: Annotated[int, Meta(ge=1, le=MAX_CHARS_LIMIT)] = 4000
    vocabulary: list[str] = []
    idf: list[float] = []


class Head(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A multinomial logistic regression: ``softmax(coef @ x + intercept)`` over ``classes``
    (one class: that class, certainly)."""

    classes: list[str]
    coef: list[list[float]]
    intercept: list[float]


def analyze(text: str, features: Features) -> list[str]:
    """The terms of ``text``: ``w:`` word n-grams and ``c:`` character n-grams of words
    (padded with a space on each side), from the first ``max_chars`` characters."""
    text = text[: features.max_chars].lower()
    words = _WORD.findall(text)
    lo, hi = features.word_ngrams
    terms: list[str] = []
    for n in range(lo, hi + 1):
        terms.extend("w:" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    if features.char_ngrams is not None:
        clo, chi = features.char_ngrams
        for word in _SPACE.sub(" ", text).split():
            padded = f" {word} "
            for n in range(clo, chi + 1):
                terms.extend("c:" + padded[i : i + n] for i in range(max(1, len(padded) - n + 1)))
    return terms


class TextModel:
    """Per-tier outcome probabilities from a request's text.

    ``predict(text)`` returns, for each head, the probability of each of its classes.
    Cheap enough to call on the event loop for short texts (a few tens of microseconds for
    a prompt of a hundred words, with word n-grams alone; each size of character n-grams
    adds about ten times that); the caller moves long ones to a thread.
    """

    __slots__ = (
        "_chars",
        "_idf",
        "_intercept",
        "_rows",
        "_shapes",
        "_weights",
        "_words",
        "features",
        "heads",
    )

    def __init__(self, features: Features, heads: Sequence[Head]) -> None:
        self.features = features
        self.heads = tuple(heads)
        # the vocabulary's word and character n-grams by their text, without the "w:" and
        # "c:" of :func:`analyze`, so that a decision looks its words up without building
        # a string per word (a term in neither form comes from no text: it never matches)
        self._words: dict[str, int] = {}
        self._chars: dict[str, int] = {}
        for i, term in enumerate(features.vocabulary):
            if term.startswith("w:"):
                self._words[term[2:]] = i
            elif term.startswith("c:"):
                self._chars[term[2:]] = i
        self._idf = np.asarray(features.idf, dtype=np.float64)
        rows = [r for h in heads if len(h.classes) > 1 for r in h.coef]
        width = len(features.vocabulary)
        # per term: idf x every head row's coefficient, then the idf itself. A text's
        # logits are then one gather of its known terms' rows (each contiguous) and one
        # product with their (1 + log count); its length, from the last column. Filled a
        # row of the heads at a time: no second matrix of that size, even for a moment.
        self._weights = np.empty((width, len(rows) + 1))
        for r, row in enumerate(rows):
            self._weights[:, r] = row
        self._weights[:, : len(rows)] *= self._idf[:, None]
        self._weights[:, len(rows)] = self._idf
        self._intercept: list[float] = [
            float(b) for h in heads if len(h.classes) > 1 for b in h.intercept
        ]
        self._rows: list[tuple[int, int]] = []
        at = 0
        for h in heads:
            k = len(h.coef) if len(h.classes) > 1 else 0
            self._rows.append((at, at + k))
            at += k
        # per head: 0 one class, 1 binary (one row), 2 softmax; and its rows
        self._shapes = [
            (0 if hi == lo else 1 if hi - lo == 1 else 2, lo, hi) for lo, hi in self._rows
        ]

    def __repr__(self) -> str:
        return (
            f"<TextModel {len(self.features.vocabulary)} terms, "
            f"{len(self.heads)} heads of {[len(h.classes) for h in self.heads]} classes>"
        )

    def vector(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(indexes, weights) of ``text``'s known terms: a sparse unit vector, the row the
        fitted ``TfidfVectorizer`` (``analyzer`` :func:`analyze`, ``sublinear_tf``) gives
        ``text``, its known terms in the order :func:`analyze` first yields them."""
        counts = self._counts(text)
        if not counts:
            return np.zeros(0, dtype=np.intp), np.zeros(0)
        n = len(counts)
        idx = np.fromiter(counts.keys(), dtype=np.intp, count=n)
        tf = np.fromiter(counts.values(), dtype=np.float64, count=n)
        w = (1.0 + np.log(tf)) * self._idf[idx]
        norm = math.sqrt(float(w @ w))
        return idx, (w / norm if norm > 0 else w)

    def _counts(self, text: str) -> Counter[int]:
        """How often each known term of ``analyze(text)`` occurs, by vocabulary index, in
        the order of first occurrence: the same terms looked up without building them
        (the loops run in C: ``map``, ``dict.get`` and ``Counter``'s counting)."""
        features = self.features
        text = text[: features.max_chars].lower()
        words = words_of(text)
        lo, hi = features.word_ngrams
        counts: Counter[int] = Counter()
        get = self._words.get
        for n in range(lo, hi + 1):
            # the n-grams as analyze joins them; an unknown one counts as -1, dropped below
            grams: Iterable[str] = words
            if n == 2:
                grams = map(" ".join, zip(words, islice(words, 1, None), strict=False))
            elif n > 2:
                grams = map(" ".join, zip(*(words[k:] for k in range(n)), strict=False))
            counts.update(map(get, grams, repeat(-1)))
        if features.char_ngrams is not None:
            chars = self._chars.get
            clo, chi = features.char_ngrams
            for word in _SPACE.sub(" ", text).split():
                padded = f" {word} "
                for n in range(clo, chi + 1):
                    pieces = (padded[k : k + n] for k in range(max(1, len(padded) - n + 1)))
                    counts.update(map(chars, pieces, repeat(-1)))
        counts.pop(-1, None)
        return counts

    def logits(self, text: str) -> list[float]:
        """Every head row's ``coef @ x + intercept`` for ``text``'s vector ``x``, the rows of
        the heads of two or more classes in order: ``(idf x coef) @ (1 + log count)``
        over its known terms, divided by the vector's length. Equal to the product with
        :meth:`vector` up to rounding (its length is the same to the bit; the products
        are taken in another order)."""
        counts = self._counts(text)
        if not counts:
            return list(self._intercept)
        # numpy's calls cost more than their arithmetic here: the fewest, dtypes prebuilt,
        # take() for a gather (a third of indexing's cost), ndarray.dot for products
        n = len(counts)
        idx = np.fromiter(counts.keys(), _INTP, n)
        tf = np.fromiter(counts.values(), _FLOAT, n)
        np.log(tf, out=tf)
        tf += 1.0
        rows = self._weights.take(idx, 0)
        z: list[float] = tf.dot(rows).tolist()
        u = tf * rows[:, -1]  # the weights before scaling, as vector() has them
        norm = math.sqrt(u.dot(u))
        if norm > 0:
            return [v / norm + b for v, b in zip(z, self._intercept, strict=False)]
        return [v + b for v, b in zip(z, self._intercept, strict=False)]

    def predict(self, text: str) -> list[dict[str, float]]:
        """Per head, each class's probability."""
        return [
            dict(zip(h.classes, p, strict=False))
            for h, p in zip(self.heads, self.class_probabilities(self.logits(text)), strict=True)
        ]

    def class_probabilities(self, zs: Sequence[float]) -> list[list[float]]:
        """Per head, its classes' probabilities in its order, from :meth:`logits`; each
        list ends with an extra 0.0, the chance of a class the head does not have (index
        -1), so that a reader looks a class up without a test."""
        out: list[list[float]] = []
        exp = math.exp
        for kind, lo, hi in self._shapes:
            if kind == 1:  # binary: one row, the second class's log-odds
                x = zs[lo]
                if not x > -500.0:  # as max(-500.0, x): NaN too gives -500
                    x = -500.0
                elif x > 500.0:
                    x = 500.0
                p1 = 1.0 / (1.0 + exp(-x))
                out.append([1.0 - p1, p1, 0.0])
            elif kind == 2:  # small heads: plain floats beat numpy's per-call overhead
                z = zs[lo:hi]
                top = max(z)
                e = [exp(v - top) for v in z]
                total = sum(e)
                p = [v / total for v in e]
                p.append(0.0)
                out.append(p)
            else:  # one class: that class, certainly
                out.append([1.0, 0.0])
        return out

    def likeliest(self, text: str, head: int) -> int:
        """The index of head ``head``'s likeliest class for ``text`` (the first on a tie)."""
        lo, hi = self._rows[head]
        if hi == lo:
            return 0
        z = self.logits(text)[lo:hi]
        if hi - lo == 1:  # binary: the second class's log-odds
            return int(z[0] > 0)
        return max(range(hi - lo), key=z.__getitem__)  # the first of equals, as argmax


# -- checks for a model read from a file -------------------------------------------------


def check_text_model(
    features: Features, heads: Sequence[Head], *, source: str, path: str
) -> TextModel:
    """A TextModel built from parsed file contents, after checking every shape and value;
    ConfigError (naming ``source``, at ``path``) when anything is off."""

    def bad(what: str) -> ConfigError:
        return ConfigError(f"{source}: {what}", path=path)

    vocab = features.vocabulary
    if len(vocab) > MAX_VOCAB:
        raise bad(f"vocabulary of {len(vocab)} terms (at most {MAX_VOCAB})")
    if len(features.idf) != len(vocab):
        raise bad(f"idf has {len(features.idf)} values for {len(vocab)} terms")
    if len(set(vocab)) != len(vocab):
        raise bad("the vocabulary repeats a term")
    if any(not 0 <= v <= MAX_MAGNITUDE for v in features.idf):  # NaN fails it too
        raise bad(f"an idf value is negative, above {MAX_MAGNITUDE:g} or not a number")
    grams = {"word_ngrams": features.word_ngrams, "char_ngrams": features.char_ngrams or (1, 1)}
    for name, (lo, hi) in grams.items():
        if lo > hi:
            raise bad(f"{name} = [{lo}, {hi}]: the first is larger")
    if not heads or len(heads) > MAX_HEADS:
        raise bad(f"{len(heads)} heads (expected 1 to {MAX_HEADS})")
    for i, head in enumerate(heads):
        k = len(head.classes)
        if not 1 <= k <= MAX_CLASSES or len(set(head.classes)) != k:
            raise bad(f"heads[{i}]: {k} classes, or repeated ones (expected 1 to {MAX_CLASSES})")
        rows = 1 if k == 2 and len(head.coef) == 1 else k
        if k == 1:
            rows = len(head.coef)  # a constant head: coefficients unused
        if len(head.coef) != rows or len(head.intercept) != rows:
            raise bad(
                f"heads[{i}]: {len(head.coef)} coefficient rows and {len(head.intercept)} "
                f"intercepts for {k} classes"
            )
        for r, row in enumerate(head.coef):
            if len(row) != len(vocab):
                raise bad(f"heads[{i}].coef[{r}] has {len(row)} values for {len(vocab)} terms")
        flat = [v for row in head.coef for v in row] + list(head.intercept)
        if any(not -MAX_MAGNITUDE <= v <= MAX_MAGNITUDE for v in flat):
            limit = f"{MAX_MAGNITUDE:g}"
            raise bad(f"heads[{i}]: a coefficient of magnitude above {limit} or not a number")
    over = too_many_weights(len(vocab), heads)
    if over:  # before any of it is allocated
        raise bad(over)
    return TextModel(features, heads)


def too_many_weights(terms: int, heads: Sequence[Head]) -> str | None:
    """Why a model of ``terms`` terms and ``heads`` is over ``MAX_WEIGHTS`` (its matrix of
    terms x rows), or None: the loader refuses it, so training never writes it."""
    rows = sum(len(h.coef) for h in heads if len(h.classes) > 1)
    if terms * (rows + 1) <= MAX_WEIGHTS:
        return None
    return (
        f"{terms} terms x {rows + 1} coefficient rows is {terms * (rows + 1):,} weights "
        f"(at most {MAX_WEIGHTS:,})"
    )


def read_model_file(path: str | os.PathLike[str], *, at: str) -> bytes:
    """The bytes of a router file a config names, refusing one that is missing, not a
    regular file or larger than ``MAX_FILE_BYTES``: ConfigError at ``at``."""
    shown = str(path)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise ConfigError(f"{shown}: not a regular file", path=at)
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {shown!r}: {exc.strerror or exc}", path=at) from None
    except ValueError as exc:  # a NUL byte in the path
        raise ConfigError(f"cannot read {shown!r}: {exc}", path=at) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{shown}: larger than {MAX_FILE_BYTES >> 20} MiB", path=at)
    return data
