"""``json_schema``: the answer must contain JSON that validates against a JSON Schema."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextvars import ContextVar
from functools import cache
from typing import Any, Final
from urllib.parse import urldefrag, urljoin, urlsplit

import jsonschema
import referencing
import referencing.exceptions
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

from .._errors import ConfigError
from .._types import Completion, Verdict
from ._json_extract import extract_json
from ._offload import DEFAULT_TIME_LIMIT_S, Overrun, check_time_limit
from ._registry import ValidationContext, validator
from ._schema_fast import quick_check
from ._schema_pool import schema_check

__all__ = ["JsonSchemaValidator", "extract_json"]

_INLINE_CHARS = 16 * 1024  # answers up to this size are checked on the loop (~ms)
_INLINE_ITEMS = 64  # uniqueItems compares every pair: more items than this go elsewhere
_PROBES: tuple[Any, ...] = (None, True, 0, "", [], {})  # a $ref cycle loops on one of these
_PROBE_STEPS: Final = 20_000
"""The most keyword checks the probes of a schema with references may take together (a
check over a list, ``allOf`` or ``enum``, takes one more per item). A schema's own size
bounds the work without references; with them, a kilobyte of definitions that each refer
ten times to the next is ``10 ** depth`` subschemas for any answer, and the probes run
where the validator is built (~16 us a step: 0.3 s at most)."""


# Where a schema holds subschemas (every draft's applicators); anything else (``const``,
# ``enum``, ``default``, ``examples``, unknown keywords) is data, where ``$ref`` is a key.
_ONE = frozenset(
    [
        "additionalItems",
        "additionalProperties",
        "contains",
        "contentSchema",
        "else",
        "if",
        "items",
        "not",
        "propertyNames",
        "then",
        "unevaluatedItems",
        "unevaluatedProperties",
    ]
)
_MANY = frozenset({"allOf", "anyOf", "oneOf", "prefixItems", "items"})
_NAMED = frozenset(
    {"$defs", "definitions", "dependencies", "dependentSchemas", "patternProperties", "properties"}
)
_REFS = ("$ref", "$dynamicRef", "$recursiveRef")
# draft 3 holds subschemas in "extends" (one or a list), "type" and "disallow" (lists of
# names and subschemas): data in later drafts
_DRAFT3_ONE = _ONE | {"extends"}
_DRAFT3_MANY = _MANY | {"extends", "type", "disallow"}


class _Walk:
    """What a schema holds, gathered without recursion (a 10,000-deep schema is fine): every
    keyword of its subschemas, every reference with its config path and the base URI it
    resolves against (the nearest ``$id`` around it), and every subschema's own
    ``$schema`` with its config path."""

    def __init__(self, schema: dict[str, Any], id_key: str, *, draft3: bool = False) -> None:
        one, many = (_DRAFT3_ONE, _DRAFT3_MANY) if draft3 else (_ONE, _MANY)
        self.keywords: set[str] = set()
        self.refs: list[tuple[str, str, str]] = []  # (path, reference, absolute reference)
        self.drafts: list[tuple[str, object]] = []  # (path, $schema) below the root
        stack: list[tuple[Any, str, str]] = [(schema, "schema", "")]
        while stack:
            node, where, base = stack.pop()
            if not isinstance(node, dict):
                continue
            self.keywords.update(node)
            if "$schema" in node and node is not schema:
                self.drafts.append((f"{where}.$schema", node["$schema"]))
            if isinstance(node.get(id_key), str):
                base = urldefrag(_join(base, node[id_key], f"{where}.{id_key}")).url
            for key in _REFS:
                if isinstance(node.get(key), str):
                    at = f"{where}.{key}"
                    self.refs.append((at, node[key], _join(base, node[key], at)))
            for key, value in node.items():
                if key in _NAMED and isinstance(value, dict):
                    stack.extend((v, f"{where}.{key}.{k}", base) for k, v in value.items())
                elif key in many and isinstance(value, list):
                    stack.extend((v, f"{where}.{key}[{n}]", base) for n, v in enumerate(value))
                elif key in one:
                    stack.append((value, f"{where}.{key}", base))


def _join(base: str, reference: str, where: str) -> str:
    """``reference`` resolved against ``base``; ConfigError at ``where`` when either is
    not a URI urllib can read (``http://[``: an unclosed IPv6 literal)."""
    try:
        joined = urljoin(base, reference)
        urlsplit(joined)  # urljoin returns a reference as is against no base: read it
    except ValueError as exc:
        raise ConfigError(
            f"invalid JSON Schema: {reference[:100]!r} is not a URI ({exc})", path=where
        ) from None
    return joined


def _refuse(uri: str) -> Any:
    raise referencing.exceptions.NoSuchResource(ref=uri)  # type: ignore[call-arg]


# A schema's references resolve inside the schema (and the drafts' own meta-schemas), never
# over the network or from a file: every retrieval is refused, at build and at validation.
_NO_RETRIEVAL = referencing.Registry(retrieve=_refuse)  # type: ignore[call-arg]


class _Overspent(Exception):
    """A probe took more than its keyword checks."""


_steps_left: ContextVar[list[int]] = ContextVar("cascade_schema_probe_steps")


@cache
def _counting(cls: Any) -> Any:
    """``cls`` (a jsonschema validator class) whose every keyword check takes one of the
    steps left (:data:`_steps_left`), and one more per item of a list it reads, raising
    :class:`_Overspent` past the last."""

    def counted(check: Callable[..., Any]) -> Callable[..., Any]:
        def step(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
            left = _steps_left.get()
            # a check over a list (allOf of many {}, a long enum) is a check per item
            left[0] -= 1 + len(value) if type(value) is list else 1
            if left[0] < 0:
                raise _Overspent
            return check(validator, value, instance, schema)

        return step

    checks = {name: counted(check) for name, check in cls.VALIDATORS.items()}
    if "pattern" in checks:
        # Python's re holds the GIL, the event loop's too, and a short pattern can be
        # exponential on a probe's "" ("(|)" * 40 + "(?=a)"): the probes take every
        # string as matching (answers meet patterns in a killable worker process)
        checks["pattern"] = counted(_no_pattern)
    return jsonschema.validators.extend(cls, checks)


def _no_pattern(validator: Any, value: Any, instance: Any, schema: Any) -> None:
    return None


@validator("json_schema")
class JsonSchemaValidator:
    """Accepts an answer whose JSON validates against ``schema`` (Draft 2020-12 unless the
    schema's ``$schema`` names another draft). The parsed value fills ``Result.parsed``; a
    rejection's reason names the failing path.

    A bad schema raises ConfigError when the validator is built (a subschema's own
    ``$schema`` must name the schema's draft), and so does a ``$ref`` outside the schema
    (``https://...``, ``other.json``): references are never fetched, from the network or
    from files; put shared definitions under ``$defs``. So does a schema whose references
    fan out (definitions that each refer many times to the next: exponential work for any
    answer), found by checking trivial answers in a bounded number of steps.

    A large answer (over 16 KiB), or any answer under a schema with costly keywords
    (``pattern``, ``patternProperties``, ``$ref``: a recursive schema can be exponential in
    the answer's nesting; ``uniqueItems`` over more than 64 items), is checked in a worker
    process, off the event loop; one not done within ``time_limit_s`` (default 2 s, at most
    3600) is rejected as having overrun it, and its check is stopped. Waiting for a free
    worker is not counted (it is bounded apart, at 10x ``time_limit_s``). (Such an answer's
    rejection carries no ``parsed`` value; an accepted one is parsed on the loop, once, for
    ``Result.parsed``: linear, ~25 ms per MiB of JSON.)

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
        uri = schema.get("$schema", "")
        if not isinstance(uri, str):  # validator_for would raise AttributeError or TypeError
            raise ConfigError(
                f"invalid JSON Schema: $schema must be a string, got {type(uri).__name__}",
                path="schema.$schema",
            )
        cls = validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            self._build(cls, schema)
        except RecursionError:
            raise ConfigError(
                "invalid JSON Schema: nested too deeply to check", path="schema"
            ) from None
        except ConfigError:
            raise
        except Exception as exc:
            # jsonschema and referencing read what their meta-schema let through in ways
            # of their own (a draft 3 "extends" that is a string: AttributeError), and a
            # schema can come from any client of a gateway
            raise ConfigError(
                f"invalid JSON Schema: it cannot be read ({type(exc).__name__}: {exc})"[:300],
                path="schema",
            ) from None
        self.name = name
        self.schema = schema
        self.early_reject = early_reject
        self.time_limit_s = check_time_limit(time_limit_s)
        self._opener = {"object": "{", "array": "["}.get(str(schema.get("type")), "{[")

    def _build(self, cls: Any, schema: dict[str, Any]) -> None:
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            raise ConfigError(
                f"invalid JSON Schema{' at ' + where if where else ''}: {exc.message}",
                path="schema",
            ) from None
        except OverflowError as exc:
            # re.compile("a{4294967296}") raises it, not re.error: the regex format's
            # check in jsonschema lets it through
            raise ConfigError(
                f"invalid JSON Schema: a pattern does not compile ({exc})", path="schema"
            ) from None
        self._validator = cls(schema, registry=_NO_RETRIEVAL)
        # A quick yes for the simplest schemas (draft 4 on), else the full validator's word.
        self._quick = None if cls is jsonschema.Draft3Validator else quick_check(schema)
        old_drafts = (jsonschema.Draft3Validator, jsonschema.Draft4Validator)
        walk = _Walk(
            schema, "id" if cls in old_drafts else "$id", draft3=cls is jsonschema.Draft3Validator
        )
        for where, uri in walk.drafts:
            # jsonschema validates a subschema with a $schema of its own in that draft, and
            # some mixtures crash it (a draft 3 subschema over boolean schemas): one draft
            inner = validator_for({"$schema": uri}, default=cls) if isinstance(uri, str) else None
            if inner is not cls:
                raise ConfigError(
                    "invalid JSON Schema: a subschema's $schema names another draft than the "
                    "schema's (one draft per schema)",
                    path=where,
                )
        for where, ref, absolute in walk.refs:
            try:
                self._validator._resolver.lookup(absolute)
            except referencing.exceptions.Unresolvable:
                why = (
                    "resolves to nothing"
                    if ref.startswith("#")
                    else "is outside the schema, and references are never fetched (from the "
                    "network or from files): put the definition under $defs"
                )
                raise ConfigError(f"invalid JSON Schema: $ref {ref!r} {why}", path=where) from None
        if walk.refs:
            self._probe(cls, schema)
        # a reference makes a schema recursive, and a recursive one can be exponential in
        # the answer's nesting (oneOf over nodes with children): its every check is offloaded
        self._always_offload = bool(walk.refs) or bool(
            walk.keywords & {"pattern", "patternProperties"}
        )
        self._unique_items = "uniqueItems" in walk.keywords
        self._schema_text = json.dumps(schema, sort_keys=True, separators=(",", ":"))

    def _probe(self, cls: Any, schema: dict[str, Any]) -> None:
        """A schema whose references loop (``$ref`` to itself in place), fan out (each
        definition referring many times to the next: exponential work for any answer), or
        that the static check could not follow fails here on a trivial answer, not at
        every run. The probes take at most :data:`_PROBE_STEPS` keyword checks."""
        counted = _counting(cls)(schema, registry=_NO_RETRIEVAL)
        token = _steps_left.set([_PROBE_STEPS])
        try:
            for probe in _PROBES:
                counted.is_valid(probe)
        except _Overspent:
            raise ConfigError(
                "invalid JSON Schema: its $ref references fan out (checking a trivial answer "
                f"takes over {_PROBE_STEPS} steps): refer to each definition from fewer places",
                path="schema",
            ) from None
        except RecursionError:
            raise ConfigError(
                "invalid JSON Schema: its $ref references loop without end", path="schema"
            ) from None
        except referencing.exceptions.Unresolvable as exc:
            raise ConfigError(
                f"invalid JSON Schema: a $ref does not resolve ({exc})"[:300], path="schema"
            ) from None
        finally:
            _steps_left.reset(token)

    find_json: Callable[[str], Any] = staticmethod(extract_json)
    """How the JSON is found in an answer (ValueError when it is not there): anywhere in
    it, a fenced or embedded value too; a subclass may ask for the whole answer
    (:func:`~._json_extract.whole_json`)."""

    def __repr__(self) -> str:
        return f"<JsonSchemaValidator {self.name!r}>"

    def _offloaded(self, text: str) -> bool:
        """Whether checking an answer could hold the loop: a big one, or costly keywords."""
        if self._always_offload or len(text) > _INLINE_CHARS:
            return True
        return self._unique_items and text.count(",") > _INLINE_ITEMS

    async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        text = completion.text
        if self._offloaded(text):
            # the worker finds the JSON too: a big answer is never turned into objects on
            # this side unless it passes (garbage collection of a hostile one's 10,000
            # containers would pause every run)
            try:
                outcome = await schema_check(self._schema_text, text, limit_s=self.time_limit_s)
            except (Overrun, ValueError) as exc:
                return Verdict(validator=self.name, passed=False, score=0.0, reason=str(exc))
            if "no_json" in outcome:
                return Verdict(
                    validator=self.name, passed=False, score=0.0, reason=outcome["no_json"]
                )
            if not outcome["valid"]:
                return self._rejected(None, outcome["where"], outcome["message"])
            try:  # the worker found the JSON anywhere in the answer
                return Verdict(validator=self.name, passed=True, parsed=self.find_json(text))
            except ValueError as exc:
                return Verdict(validator=self.name, passed=False, score=0.0, reason=str(exc))
        try:
            value = self.find_json(text)
        except ValueError as exc:
            return Verdict(validator=self.name, passed=False, score=0.0, reason=str(exc))
        quick = self._quick
        if (quick is not None and quick(value)) or self._validator.is_valid(value):
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
