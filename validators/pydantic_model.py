"""``pydantic_model``: the answer's JSON must validate as a Pydantic (v2) model
(``pip install pydantic``, or ``cascade-engine[plugins]``).

The JSON is found as ``json_schema`` finds it (the whole answer, a fenced block, or the
outermost ``{...}``); ``Result.parsed`` is the validated model's ``model_dump()``, so
defaults are filled in and lax values coerced (``"3"`` for an ``int`` field becomes 3).

Config, naming your own model by its import path::

    validator_paths = ["validators"]         # this folder, relative to the config file

    [[tiers]]
    name = "small"
    validators = [{ name = "pydantic_model", model = "myapp.schemas:Invoice" }]

or describing the fields in place::

    validators = [{ name = "pydantic_model",
                    fields = { total = "float", currency = "str", items = "list[str]",
                               note = "str | None" } }]

Field types: ``str``, ``int``, ``float``, ``bool``, ``any``, ``list[T]``, ``dict[str, T]``
and ``T | None`` (optional: may be missing). ``strict = true`` turns off Pydantic's
coercions (``false`` turns them on; unset, the model's own ``strict`` setting holds).
A rejection's reason names the first error's path: ``at $.items[0]: Input should be a
valid string``.
"""

from __future__ import annotations

import importlib
import re
from typing import TYPE_CHECKING, Any

import cascade
from cascade.validators import extract_json

if TYPE_CHECKING:
    import pydantic

__all__ = ["PydanticModelValidator"]

_SCALARS: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool, "any": Any}
_GENERIC = re.compile(r"^(list|dict)\[(.*)\]$")


@cascade.validator("pydantic_model")
class PydanticModelValidator:
    """Accepts an answer whose JSON validates as ``model`` (an import path
    ``"package.module:ClassName"``) or as a model built from ``fields``; score 1 or 0."""

    def __init__(
        self,
        *,
        model: str | None = None,
        fields: dict[str, str] | None = None,
        strict: bool | None = None,
        name: str = "pydantic_model",
    ) -> None:
        try:
            import pydantic
        except ImportError:
            raise ValueError(
                "the pydantic_model validator needs pydantic v2: pip install pydantic "
                "(or cascade-engine[plugins])"
            ) from None
        if (model is None) == (fields is None):
            raise ValueError("give exactly one of `model` (an import path) and `fields`")
        self._pydantic = pydantic
        self.model = _import_model(model) if model is not None else _build_model(fields or {})
        self.name = name
        self.strict = strict

    def __repr__(self) -> str:
        return f"<PydanticModelValidator {self.name!r} model={self.model.__name__}>"

    async def validate(
        self, completion: cascade.Completion, context: cascade.ValidationContext
    ) -> cascade.Verdict:
        try:
            value = extract_json(completion.text)
        except ValueError as exc:
            return self._reject(str(exc))
        try:
            instance = self.model.model_validate(value, strict=self.strict)
        except self._pydantic.ValidationError as exc:
            errors = exc.errors(include_url=False)
            first = errors[0] if errors else None
            where = _json_path(first["loc"]) if first else "$"
            message = first["msg"] if first else str(exc)
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            return self._reject(f"at {where}: {message}{more}", parsed=value)
        return cascade.Verdict(validator=self.name, passed=True, parsed=instance.model_dump())

    def _reject(self, reason: str, *, parsed: Any = None) -> cascade.Verdict:
        return cascade.Verdict(
            validator=self.name, passed=False, score=0.0, reason=reason[:500], parsed=parsed
        )


def _import_model(path: str) -> type[pydantic.BaseModel]:
    import pydantic

    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model: expected 'package.module:ClassName', got {path!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"model: cannot import {path!r}: {exc}") from None
    if not (isinstance(obj, type) and issubclass(obj, pydantic.BaseModel)):
        raise ValueError(f"model: {path!r} is not a pydantic BaseModel subclass")
    return obj


def _build_model(fields: dict[str, str]) -> type[pydantic.BaseModel]:
    import pydantic

    if not isinstance(fields, dict) or not fields:
        raise ValueError("fields: expected a table of field name = type name")
    definitions: dict[str, Any] = {}
    for field, type_name in fields.items():
        if not field.isidentifier() or field.startswith("_"):
            raise ValueError(f"fields: {field!r} is not a field name (an identifier, no leading _)")
        if not isinstance(type_name, str):
            raise ValueError(f"fields.{field}: expected a type name (str)")
        annotation = _parse_type(type_name, field)
        optional = type_name.replace(" ", "").endswith("|None")
        definitions[field] = (annotation, None if optional else ...)
    try:
        model: type[pydantic.BaseModel] = pydantic.create_model("Answer", **definitions)
    except (pydantic.PydanticUserError, NameError, TypeError, ValueError) as exc:
        raise ValueError(f"fields: {exc}") from None
    return model


def _parse_type(text: str, field: str) -> Any:
    """``"list[dict[str, int]] | None"`` -> the annotation; ValueError for anything else."""
    text = text.strip()
    if text.endswith("| None") or text.replace(" ", "").endswith("|None"):
        inner = text[: text.rindex("|")]
        return _parse_type(inner, field) | None
    if text in _SCALARS:
        return _SCALARS[text]
    m = _GENERIC.match(text)
    if m and m.group(1) == "list":
        return list[_parse_type(m.group(2), field)]  # type: ignore[misc]
    if m:
        key, comma, value = m.group(2).partition(",")
        if comma and key.strip() == "str":
            return dict[str, _parse_type(value, field)]  # type: ignore[misc]
    raise ValueError(
        f"fields.{field}: unknown type {text!r} (use str, int, float, bool, any, list[T], "
        "dict[str, T], T | None)"
    )


def _json_path(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as a JSON path: ``('items', 0, 'a')`` -> ``$.items[0].a``."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)
