"""``confidence``: accept an answer whose confidence reaches a threshold.

The confidence is what the model says of itself (a JSON field, or a phrase in the text), or
what its token log-probabilities say of it.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

import regex

from .._errors import ConfigError
from .._types import Completion, Verdict
from ._json_extract import extract_json
from ._offload import BIG_TEXT, DEFAULT_TIME_LIMIT_S, Overrun, check_time_limit, off_loop
from ._registry import ValidationContext, validator
from ._schema_pool import json_field

__all__ = ["ConfidenceValidator", "parse_confidence"]

Source = Literal["auto", "json", "text", "logprobs"]

# Every repetition below is possessive (``*+``, ``++``) or bounded, and a number starts at
# the start of its digits: no pattern can backtrack over the text, so each is linear in it
# ("confidence" followed by 10,000 spaces, or 20,000 digits, used to take seconds).
_NUM = r"(?P<num>(?<![0-9])[0-9]++(?:\.[0-9]++)?|\.[0-9]++)"
_PER = r"\s*+(?P<pct>%|percent\b)?(?:\s*+(?:/|out\s++of)\s*+(?P<den>[0-9]++)\b)?"
_NOISE = r"[\s*_\"'`]*+"  # markdown emphasis, quotes
# "Confidence: 0.82", "confidence = 82%", "(confidence 0.9)", "**Confidence level:** 8/10"
_STATED = regex.compile(
    rf"\bconfidence(?:\s++(?:level|score|rating))?{_NOISE}(?:[:=]|\bis\b|\bof\b)?{_NOISE}\(?"
    rf"{_NOISE}{_NUM}{_PER}",
    regex.IGNORECASE,
)
# "I am 90% confident", "90% confidence", "95 percent sure"
_CONFIDENT = regex.compile(
    rf"{_NUM}\s*+(?P<pct>%|percent\b)\s*+(?:confident|confidence|sure|certain)\b",
    regex.IGNORECASE,
)
_VALUE = regex.compile(rf"^\s*+{_NUM}{_PER}\s*+$", regex.IGNORECASE)


def _scale(value: float, percent: bool = False, denominator: float | None = None) -> float | None:
    """A stated number as a confidence in [0, 1]; None when it cannot be one.

    ``0.82`` is a fraction; a number above 1 and up to 100 (or any with ``%``) a
    percentage; ``8/10`` or ``8 out of 10`` a ratio.
    """
    if denominator is not None:
        value = value / denominator if denominator > 0 else math.inf
    elif percent or value > 1:
        value /= 100
    return value if 0 <= value <= 1 else None


def _stated(m: Any) -> float | None:  # a regex.Match
    groups: dict[str, str | None] = m.groupdict()
    num = groups["num"]
    assert num is not None
    den = groups.get("den")
    return _scale(float(num), bool(groups["pct"]), float(den) if den else None)


def parse_confidence(text: str) -> float | None:
    """The confidence a text states (its last statement), or None.

    >>> parse_confidence("Paris. Confidence: 82%")
    0.82
    >>> parse_confidence("I am 90% confident it is Paris (confidence 0.9)")
    0.9
    """
    found: list[tuple[int, float]] = []
    for pattern in (_STATED, _CONFIDENT):
        # the regex engine lets go of the GIL while it scans (a big answer, in a thread)
        for m in pattern.finditer(text, concurrent=True):
            value = _stated(m)
            if value is not None:
                found.append((m.start(), value))
    return max(found)[1] if found else None


def _from_json(text: str, path: list[str]) -> float | None:
    try:
        value: Any = extract_json(text)
    except ValueError:
        return None
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return _as_confidence(value)


def _as_confidence(value: Any) -> float | None:
    """The confidence a JSON field states: a number, or a string such as ``"82%"``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return _scale(float(value)) if math.isfinite(value) else None
    if isinstance(value, str) and (m := _VALUE.match(value)) is not None:
        return _stated(m)
    return None


def _from_logprobs(logprobs: tuple[float, ...] | None) -> float | None:
    """exp(mean token logprob): the geometric mean of the tokens' probabilities."""
    if not logprobs:
        return None
    mean = math.fsum(logprobs) / len(logprobs)
    if math.isnan(mean):
        return None
    return min(1.0, math.exp(mean))


@validator("confidence")
class ConfidenceValidator:
    """Accepts an answer whose confidence is at least ``min`` (0..1).

    ``source`` says where the confidence comes from:

    - ``"json"``: the number at ``field`` (default ``"confidence"``; a dotted path such as
      ``"meta.confidence"`` reaches into nested objects) of the answer's JSON;
    - ``"text"``: the last statement of it in the text: ``Confidence: 0.82``,
      ``confidence = 82%``, ``(confidence 0.9)``, ``Confidence: 8/10``,
      ``I am 90% confident``;
    - ``"logprobs"``: exp(mean token log-probability), the geometric mean of the answer's
      token probabilities (the request must ask for them:
      ``RequestOptions(logprobs=True)``, OpenAI-compatible providers only);
    - ``"auto"`` (default): json, then text, then logprobs.

    A stated number above 1 and up to 100 (or any followed by ``%``) is a percentage. With
    no confidence found the answer is rejected, or accepted with ``on_missing = "accept"``.
    An answer over 16 KiB is read off the event loop (its JSON in a worker process, its text
    in a thread); one not read within ``time_limit_s`` (default 2 s) is rejected as having
    overrun it.
    The verdict's ``score`` is the confidence (0 when none was found); its reason states the
    value, where it came from and the threshold.

    Example::

        validators = [{ name = "confidence", min = 0.8, source = "text" }]
    """

    def __init__(
        self,
        *,
        min: float,
        source: Source = "auto",
        field: str = "confidence",
        on_missing: Literal["reject", "accept"] = "reject",
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
        name: str = "confidence",
    ) -> None:
        if type(min) not in (int, float) or not 0 <= min <= 1:
            raise ConfigError(f"expected a number from 0 to 1, got {min!r}", path="min")
        if source not in get_args(Source):
            raise ConfigError(
                f"expected one of {', '.join(get_args(Source))}, got {source!r}", path="source"
            )
        if not isinstance(field, str) or not [k for k in field.split(".") if k]:
            raise ConfigError(f"expected a field name, got {field!r}", path="field")
        if on_missing not in ("reject", "accept"):
            raise ConfigError(
                f"expected 'reject' or 'accept', got {on_missing!r}", path="on_missing"
            )
        self.time_limit_s = check_time_limit(time_limit_s)
        self.name = name
        self.min = float(min)
        self.source = source
        self.field = field
        self.on_missing = on_missing
        self._path = [k for k in field.split(".") if k]
        self._sources = ("json", "text", "logprobs") if source == "auto" else (source,)

    def __repr__(self) -> str:
        return f"<ConfidenceValidator {self.name!r} min={self.min:g} source={self.source}>"

    def confidence(self, completion: Completion) -> tuple[float, str] | None:
        """The confidence of ``completion`` and the source it came from, or None."""
        for source in self._sources:
            if source == "json":
                value = _from_json(completion.text, self._path)
            elif source == "text":
                value = parse_confidence(completion.text)
            else:
                value = _from_logprobs(completion.logprobs)
            if value is not None:
                return value, source
        return None

    async def _big_confidence(self, completion: Completion) -> tuple[float, str] | None:
        """:meth:`confidence` of a big answer, off the loop: its JSON is found by a worker
        process, its text scanned in a thread (each under ``time_limit_s``)."""
        what, limit_s = "reading the confidence", self.time_limit_s
        for source in self._sources:
            if source == "json":
                reply = await json_field(
                    completion.text, self._path, lists=False, what=what, limit_s=limit_s
                )
                value = _as_confidence(reply.get("value"))
            elif source == "text":
                value = await off_loop(
                    parse_confidence, completion.text, what=what, limit_s=limit_s
                )
            else:
                value = _from_logprobs(completion.logprobs)
            if value is not None:
                return value, source
        return None

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        if len(completion.text) <= BIG_TEXT:
            found = self.confidence(completion)
        else:
            try:
                found = await self._big_confidence(completion)
            except (Overrun, ValueError) as exc:  # ValueError: the worker could not run it
                return Verdict(validator=self.name, passed=False, score=0.0, reason=str(exc))
        if found is None:
            where = {"json": f"JSON field {self.field!r}", "text": "text", "logprobs": "logprobs"}
            looked = ", ".join(where[s] for s in self._sources)
            passed = self.on_missing == "accept"
            return Verdict(
                validator=self.name,
                passed=passed,
                score=0.0,
                reason=f"no confidence found (looked in: {looked})"
                + ("; accepted (on_missing = 'accept')" if passed else ""),
            )
        value, source = found
        passed = value >= self.min
        return Verdict(
            validator=self.name,
            passed=passed,
            score=value,
            reason=f"confidence {value:.3g} ({source}) "
            + (f">= min {self.min:g}" if passed else f"is below min {self.min:g}"),
        )
