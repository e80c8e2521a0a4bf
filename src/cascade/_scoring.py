"""The dataset ``cascade eval`` reads and how it scores a result against it: the only code
that reads a record's ``expected``.

Every result is judged twice: typed (the answer and ``expected`` compared under the
record's answer type, see ``_answers.py``) and exact (the answer as returned equals
``expected``, stripped), so a type that is too lenient for the task shows as a gap.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence

import msgspec

from ._answers import ANSWER_TYPES, AnswerType, AnswerTypeError
from ._answers import answer_type as make_type  # `answer_type` names the option here
from ._errors import InputError
from ._types import Completion, Result
from .providers.replay import read_lines
from .validators._extract import Extractor

__all__ = ["Record", "Scoring", "load_records"]


class _Recorded(msgspec.Struct):
    variant: str = ""
    text: str = ""
    answer: str | int | float | None = None
    judged_correct: bool | None = None


class Record(msgspec.Struct):
    """One dataset line as eval reads it (other fields are ignored)."""

    question: str
    id: str | None = None
    expected: str | int | float | None = None
    responses: dict[str, list[_Recorded]] = {}
    answer_type: str | None = None
    """How this record's answer is compared (``number``, ``date``, ...), unless the command
    names one."""
    split: str | None = None


_decode_record = msgspec.json.Decoder(Record).decode


# -- dataset -----------------------------------------------------------------------------


def load_records(
    path: str | os.PathLike[str], *, limit: int | None = None, split: str | None = None
) -> list[Record]:
    """The first ``limit`` records of a JSONL (or .jsonl.gz) dataset, only those whose
    ``split`` field is ``split`` when one is given.

    Raises InputError naming the line of a line that is not a record, or whose
    ``answer_type`` is not one."""
    records: list[Record] = []
    try:
        for lineno, line in read_lines(path):
            if limit is not None and len(records) >= limit:
                break
            try:
                record = _decode_record(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise InputError(
                    f"{path}:{lineno}: not a dataset record: {exc}", path="--dataset"
                ) from None
            if record.answer_type is not None and record.answer_type not in ANSWER_TYPES:
                raise InputError(
                    f"{path}:{lineno}: answer_type: unknown answer type "
                    f"{record.answer_type!r} (known: {', '.join(ANSWER_TYPES)})",
                    path="--dataset",
                )
            if split is None or record.split == split:
                records.append(record)
    except (OSError, EOFError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise InputError(f"cannot read {str(path)!r}: {why}", path="--dataset") from None
    if not records:
        which = f" with split {split!r}" if split is not None else ""
        raise InputError(f"{str(path)!r} holds no records{which}", path="--dataset")
    return records


# -- scoring -----------------------------------------------------------------------------


class Scoring:
    """How ``cascade eval`` scores a result: the only reader of ``expected``.

    The final answer is the one the provider recorded (``Result.answer``), else what
    ``extract`` finds in the text. It is right (typed) when the answer type says it is the
    same answer as ``expected``: ``answer_type`` when given, else the record's own
    ``answer_type`` field, else ``"auto"``. It is right as written (exact) when the answer,
    stripped, equals ``expected``, stripped. A chosen response recorded with a
    ``judged_correct`` label and no answer (GSM8K's ``plain`` variants) is scored by that
    label, both ways. A record without ``expected`` scores only such labels.
    """

    __slots__ = ("_default", "_types", "answer_type", "extract")

    def __init__(
        self,
        *,
        extract: Extractor,
        answer_type: str | AnswerType | None = None,
        date_order: str = "mdy",
    ) -> None:
        self.extract = extract
        self.answer_type = answer_type
        try:
            self._types = {name: make_type(name, date_order=date_order) for name in ANSWER_TYPES}
            self._default = (
                self._types["auto"]
                if answer_type is None
                else make_type(answer_type, date_order=date_order)
            )
        except AnswerTypeError as exc:
            raise InputError(str(exc), path=f"--{exc.field.replace('_', '-')}") from None

    def type_of(self, record: Record) -> AnswerType:
        if self.answer_type is None and record.answer_type is not None:
            return self._types[record.answer_type]
        return self._default

    def describe(self, records: Sequence[Record]) -> str:
        """The answer type(s) used on ``records``: ``"number"`` or ``"boolean 2, text 1"``."""
        counts = Counter(self.type_of(record).name for record in records)
        if len(counts) == 1:
            return next(iter(counts))
        return ", ".join(f"{k} {v}" for k, v in counts.most_common())

    def judge(self, record: Record, result: Result | None) -> tuple[bool, bool]:
        """(typed, exact): whether ``result`` answers ``record`` correctly."""
        if result is None:
            return False, False
        if result.answer is None:
            for recorded in record.responses.get(result.model, ()):
                if recorded.text == result.text and result.variant in (None, recorded.variant):
                    if recorded.answer is None and recorded.judged_correct is not None:
                        return recorded.judged_correct, recorded.judged_correct
                    break
        answer = result.answer
        if answer is None:
            answer = self.extract(
                Completion(
                    text=result.text, provider=result.provider, model=result.model, answer=None
                )
            )
        if answer is None or record.expected is None:
            return False, False
        want = str(record.expected)
        exact = answer.strip() == want.strip()
        return exact or self.type_of(record).same(answer, want), exact
