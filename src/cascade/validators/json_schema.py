"""``json_schema``: the answer must contain JSON that validates against a JSON Schema."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import msgspec
import referencing
import referencing.exceptions
from jsonschema.exceptions import best_match

from .._errors import ConfigError
from .._types import Completion, Verdict
from ._offload import DEFAULT_TIME_LIMIT_S, Overrun, check_time_limit, schema_check
from ._registry import ValidationContext, validator

__all__ = ["JsonSchemaValidator", "extract_json"]

# possessive blanks: a fence followed by 20,000 spaces must not backtrack over them
_FENCE = re.compile(r"```[ \t]*+(?:json|JSON|json5)?[ \t]*+\r?\n(.*?)```", re.S)
_decode = msgspec.json.decode
_raw_decode = json.JSONDecoder().raw_decode
_OPENERS = re.compile(r"[{\[]")
_MAX_SCANS = 64
_INLINE_CHARS = 16 * 1024  # answers up to this size are checked on the loop (~ms)
_INLINE_ITEMS = 64  # uniqueItems compares every pair: more items than this go elsewhere
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
        except (ValueError, RecursionError):
            continue
        return value
    raise ValueError("no JSON value found in the answer")


def _refs(node: Any, where: str = "schema") -> list[tuple[str, str]]:
    """Every ``$ref`` / ``$dynamicRef`` string in a schema with its config path, depth
    first."""
    found: list[tuple[str, str]] = []
    if isinstance(node, dict):
        for key in ("$ref", "$dynamicRef"):
            if isinstance(node.get(key), str):
                found.append((f"{where}.{key}", node[key]))
        for key, value in node.items():
            found.extend(_refs(value, f"{where}.{key}"))
    elif isinstance(node, list):
        for i, item in enumerate(node):
            found.extend(_refs(item, f"{where}[{i}]"))
    return found


def _keywords(node: Any) -> set[str]:
    """Every key of every object in a schema."""
    if isinstance(node, dict):
        return set(node).union(*(_keywords(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_keywords(v) for v in node))
    return set()


def _refuse(uri: str) -> Any:
    raise referencing.exceptions.NoSuchResource(ref=uri)


# A schema's references resolve inside the schema (and the drafts' own meta-schemas), never
# over the network or from a file: every retrieval is refused, at build and at validation.
_NO_RETRIEVAL = referencing.Registry(retrieve=_refuse)


def _try(candidate: str) -> Any:
    if candidate[:1] not in '{["-0123456789tfn':
        return _NOT_FOUND
    try:
        return _decode(candidate)
    except (msgspec.DecodeError, RecursionError):  # [[[[...: nested deeper than decoders go
        return _NOT_FOUND


@validator("json_schema")
class JsonSchemaValidator:
    """Accepts an answer whose JSON validates against ``schema`` (Draft 2020-12 unless the
    schema's ``$schema`` names another draft). The parsed value fills ``Result.parsed``; a
    rejection's reason names the failing path.

    A bad schema raises ConfigError when the validator is built, and so does a ``$ref``
    outside the schema (``https://...``, ``other.json``): references are never fetched,
    from the network or from files; put shared definitions under ``$defs``.

    A large answer (over 16 KiB), or any answer under a schema with costly keywords
    (``pattern``, ``patternProperties``; ``uniqueItems`` over more than 64 items), is
    checked in a worker process, off the event loop; one not done within ``time_limit_s``
    (default 2 s) is rejected as having overrun it, and its check is stopped.

    ``early_reject = true`` asserts that the answer is JSON from its first character (or a
    ```json fence): a streaming answer that starts otherwise is rejected at once and its
    upstream request cancelled, instead of paying for the rest of it.
    """

    def __init__(
        self,
        *,
        schema: dict[str, Any],
        name: str = "json_schema",
        early_reject: bool = False,
        time_limit_s: float = DEFAULT_TIME_LIMIT_S,
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
        self.time_limit_s = check_time_limit(time_limit_s)
        self._opener = {"object": "{", "array": "["}.get(str(schema.get("type")), "{[")
        self._validator = cls(schema, registry=_NO_RETRIEVAL)
        for where, ref in _refs(schema):
            try:
                self._validator._resolver.lookup(ref)
            except referencing.exceptions.Unresolvable:
                why = (
                    "resolves to nothing"
                    if ref.startswith("#")
                    else "is outside the schema, and references are never fetched (from the "
                    "network or from files): put the definition under $defs"
                )
                raise ConfigError(f"invalid JSON Schema: $ref {ref!r} {why}", path=where) from None
        keywords = _keywords(schema)
        self._always_offload = bool(keywords & {"pattern", "patternProperties"})
        self._unique_items = "uniqueItems" in keywords
        self._schema_text = json.dumps(schema, sort_keys=True, separators=(",", ":"))

    def __repr__(self) -> str:
        return f"<JsonSchemaValidator {self.name!r}>"

    def _offloaded(self, text: str) -> bool:
        """Whether checking an answer could hold the loop: a big one, or costly keywords."""
        if self._always_offload or len(text) > _INLINE_CHARS:
            return True
        return self._unique_items and text.count(",") > _INLINE_ITEMS

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        try:
            value = extract_json(completion.text)
        except ValueError as exc:
            return Verdict(validator=self.name, passed=False, score=0.0, reason=str(exc))
        if self._offloaded(completion.text):
            try:
                outcome = await schema_check(self._schema_text, value, limit_s=self.time_limit_s)
            except (Overrun, ValueError) as exc:
                return Verdict(validator=self.name, passed=False, score=0.0, reason=str(exc))
            if outcome["valid"]:
                return Verdict(validator=self.name, passed=True, parsed=value)
            return self._rejected(value, outcome["where"], outcome["message"])
        if self._validator.is_valid(value):
            return Verdict(validator=self.name, passed=True, parsed=value)
        error = best_match(self._validator.iter_errors(value))
        where = error.json_path if error is not None else "$"
        message = error.message if error is not None else "invalid"
        return self._rejected(value, where, message)

    def _rejected(self, value: Any, where: str, message: str) -> Verdict:
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
