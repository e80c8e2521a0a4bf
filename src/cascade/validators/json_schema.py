"""``json_schema``: the answer must contain JSON that validates against a JSON Schema."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import msgspec
import referencing.exceptions
from jsonschema.exceptions import best_match

from .._errors import ConfigError
from .._types import Completion, Verdict
from ._registry import ValidationContext, validator

__all__ = ["JsonSchemaValidator", "extract_json"]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON|json5)?[ \t]*\r?\n(.*?)```", re.S)
_decode = msgspec.json.decode
_raw_decode = json.JSONDecoder().raw_decode
_OPENERS = re.compile(r"[{\[]")
_MAX_SCANS = 64
_NOT_FOUND = object()


def extract_json(text: str) -> Any:
    """Find the JSON value in an answer: the whole text, a fenced block, or the outermost
    ``{...}`` / ``[...]`` span. Raises ValueError when there is none.

    >>> extract_json('Sure! ```json\\n{"a": 1}\\n``` done')
    {'a': 1}
    """
    stripped = text.strip()
    if stripped:
        found = _try(stripped)
        if found is not _NOT_FOUND:
            return found
    for m in _FENCE.finditer(text):
        found = _try(m.group(1).strip())
        if found is not _NOT_FOUND:
            return found
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if 0 <= start < end:
            found = _try(text[start : end + 1])
            if found is not _NOT_FOUND:
                return found
    # Prose with braces of its own ("the template {name} gives {...}"): try each opening
    # bracket in turn, and take the first complete JSON value that starts there.
    tried = 0
    for m in _OPENERS.finditer(text):
        tried += 1
        if tried > _MAX_SCANS:
            break
        try:
            value, _ = _raw_decode(text, m.start())
        except ValueError:
            continue
        return value
    raise ValueError("no JSON value found in the answer")


def _refs(node: Any) -> list[str]:
    """Every ``$ref`` string in a schema, depth first."""
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        for value in node.values():
            found.extend(_refs(value))
        return found
    if isinstance(node, list):
        return [ref for item in node for ref in _refs(item)]
    return []


def _try(candidate: str) -> Any:
    if candidate[:1] not in '{["-0123456789tfn':
        return _NOT_FOUND
    try:
        return _decode(candidate)
    except msgspec.DecodeError:
        return _NOT_FOUND


@validator("json_schema")
class JsonSchemaValidator:
    """Accepts an answer whose JSON validates against ``schema`` (Draft 2020-12 unless the
    schema's ``$schema`` names another draft). The parsed value fills ``Result.parsed``; a
    rejection's reason names the failing path.

    A bad schema raises ConfigError when the validator is built.

    ``early_reject = true`` asserts that the answer is JSON from its first character (or a
    ```json fence): a streaming answer that starts otherwise is rejected at once and its
    upstream request cancelled, instead of paying for the rest of it.
    """

    def __init__(
        self, *, schema: dict[str, Any], name: str = "json_schema", early_reject: bool = False
    ) -> None:
        if not isinstance(schema, dict):
            raise ConfigError(
                f"expected a JSON Schema object, got {type(schema).__name__}", path="schema"
            )
        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise ConfigError(
                f"invalid JSON Schema{' at ' + where if where else ''}: {exc.message}",
                path="schema",
            ) from None
        self.name = name
        self.schema = schema
        self.early_reject = early_reject
        self._opener = {"object": "{", "array": "["}.get(str(schema.get("type")), "{[")
        self._validator = cls(schema)
        for ref in _refs(schema):
            try:
                self._validator._resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                raise ConfigError(
                    f"invalid JSON Schema: $ref {ref!r} resolves to nothing "
                    "(remote references are not fetched)",
                    path="schema",
                ) from None

    def __repr__(self) -> str:
        return f"<JsonSchemaValidator {self.name!r}>"

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        try:
            value = extract_json(completion.text)
        except ValueError as exc:
            return Verdict(validator=self.name, passed=False, score=0.0, reason=str(exc))
        if self._validator.is_valid(value):
            return Verdict(validator=self.name, passed=True, parsed=value)
        error = best_match(self._validator.iter_errors(value))
        where = error.json_path if error is not None else "$"
        message = error.message if error is not None else "invalid"
        return Verdict(
            validator=self.name,
            passed=False,
            score=0.0,
            reason=f"at {where}: {message}"[:500],
            parsed=value,
        )

    def check_partial(self, text: str, context: ValidationContext) -> Verdict | None:
        """With ``early_reject``: reject a partial answer that can no longer be JSON-only."""
        head = text.lstrip()
        if not head:
            return None
        if head.startswith("`"):
            if len(head) < 3:
                return None if "```".startswith(head) else self._early("a stray backtick")
            if not head.startswith("```"):
                return self._early("a stray backtick")
            newline = head.find("\n")
            if newline < 0:
                return None  # the fence's language tag is not complete yet
            tag = head[3:newline].strip().lower()
            if tag not in ("", "json", "json5"):
                return self._early(f"a ```{tag} fence")
            head = head[newline + 1 :].lstrip()
            if not head:
                return None
        if head[0] not in self._opener:
            return self._early(f"{head[:20]!r}")
        return None

    def _early(self, what: str) -> Verdict:
        return Verdict(
            validator=self.name,
            passed=False,
            score=0.0,
            reason=f"rejected while streaming: the answer starts with {what}, not JSON",
        )
