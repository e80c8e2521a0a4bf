"""Validators decide whether an answer is good enough or the request escalates.

Built in: ``json_schema``. A user's own validator registers the same way the built-ins do::

    import cascade

    @cascade.validator("min_words")
    class MinWords:
        def __init__(self, *, words: int) -> None:
            self.name = "min_words"
            self.words = words

        async def validate(self, completion, context):
            ok = len(completion.text.split()) >= self.words
            return cascade.Verdict(validator=self.name, passed=ok,
                                   reason="" if ok else f"fewer than {self.words} words")

and is then named in config: ``validators = [{ name = "min_words", words = 5 }]``.
"""

from __future__ import annotations

from ._extract import get_extractor, normalize
from ._json_extract import extract_json
from ._registry import (
    ValidationContext,
    Validator,
    ValidatorFactory,
    build_validator,
    registered_validators,
    validator,
)
from .code import CodeCompilesValidator
from .confidence import ConfidenceValidator, parse_confidence
from .consistency import SelfConsistencyValidator
from .json_schema import JsonSchemaValidator

__all__ = [
    "CodeCompilesValidator",
    "ConfidenceValidator",
    "JsonSchemaValidator",
    "SelfConsistencyValidator",
    "ValidationContext",
    "Validator",
    "ValidatorFactory",
    "build_validator",
    "extract_json",
    "get_extractor",
    "normalize",
    "parse_confidence",
    "registered_validators",
    "validator",
]
