"""A quick yes for the simplest JSON Schemas.

``jsonschema`` walks every keyword through generic machinery (a generator per keyword, the
draft's type checker per type): for ``{"type": "object", "required": ["answer"]}`` that is
most of what validating an answer costs. :func:`quick_check` compiles a schema made only of
``type`` (not ``integer`` nor ``number``, whose edge cases differ between drafts),
``required``, ``properties`` and a boolean ``additionalProperties`` (and annotations) into
a predicate over decoded JSON. It only ever says yes where the full validator would: a
no (or a schema it cannot compile) means "ask the full validator", which also names what
failed. A ``$schema`` below the root is not compiled: ``jsonschema`` validates that
subschema in the draft it names (draft 3 reads a property's ``required`` as a flag).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["quick_check"]

Check = Callable[[Any], bool]

# JSON types whose test is the same in every draft from 4 on (values from a JSON decoder)
_TYPES: dict[str, Check] = {
    "object": lambda v: type(v) is dict,
    "array": lambda v: type(v) is list,
    "string": lambda v: type(v) is str,
    "boolean": lambda v: type(v) is bool,
    "null": lambda v: v is None,
}
_ANNOTATIONS = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples"}
)
_KEYWORDS = frozenset({"type", "required", "properties", "additionalProperties"}) | _ANNOTATIONS
_MAX_DEPTH = 8  # deeper schemas are left to the full validator


def quick_check(schema: Any, depth: int = 0) -> Check | None:
    """A predicate that is True only for values ``schema`` accepts (None: not a schema it
    compiles). Draft 4 and later only: the caller checks the draft."""
    if schema is True:
        return lambda v: True
    if not isinstance(schema, dict) or depth > _MAX_DEPTH or not schema.keys() <= _KEYWORDS:
        return None
    if depth and "$schema" in schema:  # its own draft for this subschema: not ours to judge
        return None
    checks: list[Check] = []
    kind = schema.get("type")
    if kind is not None:
        kinds = [kind] if isinstance(kind, str) else kind
        if not isinstance(kinds, list) or not kinds or not all(k in _TYPES for k in kinds):
            return None
        tests = tuple(_TYPES[k] for k in kinds)
        checks.append(tests[0] if len(tests) == 1 else lambda v: any(t(v) for t in tests))
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        return None
    names = frozenset(required)
    if names:
        checks.append(lambda v: type(v) is not dict or v.keys() >= names)
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        return None
    inner: dict[str, Check] = {}
    for name, sub in properties.items():
        check = quick_check(sub, depth + 1)
        if check is None:
            return None
        inner[name] = check
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        return None
    if inner or not extra:
        known = frozenset(inner)
        checks.append(
            lambda v: (
                type(v) is not dict
                or (
                    (extra or v.keys() <= known)
                    and all(check(v[k]) for k, check in inner.items() if k in v)
                )
            )
        )
    return _every(checks)


def _every(checks: list[Check]) -> Check:
    if not checks:
        return lambda v: True
    first, *rest = checks
    if not rest:
        return first
    second = _every(rest)
    return lambda v: first(v) and second(v)
