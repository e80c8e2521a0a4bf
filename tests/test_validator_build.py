"""What is checked when a validator is built, not at every run: a schema's references (never
fetched), the entry's parameters against the factory, and the validator it returns."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
import referencing.exceptions

import cascade
from cascade import Cascade, Completion, ConfigError, Verdict
from cascade.validators import JsonSchemaValidator, ValidationContext
from cascade.validators._registry import _REGISTRY
from cascade.validators._schema_pool import schema_check
from cascade.validators.json_schema import _NO_RETRIEVAL

from .helpers import provider, tier

pytestmark = pytest.mark.anyio


class _CountingServer:
    """A loopback HTTP server (in a thread: a blocking fetch must not hang the test) that
    serves a schema for every GET and counts them."""

    def __init__(self) -> None:
        self.hits = 0
        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                counter.hits += 1
                body = b'{"type": "integer"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/schema+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> _CountingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture
def schema_host() -> Iterator[_CountingServer]:
    with _CountingServer() as server:
        yield server


def _build(validators: list[dict[str, Any]]) -> Cascade:
    return Cascade.from_dict(
        {"tiers": [tier("t", provider("p", "http://127.0.0.1:9/v1", "m"), validators=validators)]}
    )


@pytest.mark.parametrize(
    ("schema", "where"),
    [
        ({"$ref": "{url}/answer.json"}, "schema.$ref"),
        ({"type": "object", "properties": {"a": {"$ref": "{url}/a.json#/x"}}},
         "schema.properties.a.$ref"),
        ({"$id": "{url}/root.json", "items": [{"$ref": "other.json"}],
          "$schema": "http://json-schema.org/draft-07/schema#"}, "schema.items[0].$ref"),
        ({"allOf": [{"$ref": "file:///etc/passwd"}]}, "schema.allOf[0].$ref"),
    ],
)  # fmt: skip
def test_remote_refs_are_never_fetched(
    schema_host: _CountingServer, schema: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError) as info:
        _build([{"name": "json_schema", "schema": {}},
                {"name": "json_schema", "schema": _at(schema, schema_host.url)}])  # fmt: skip
    assert schema_host.hits == 0
    assert info.value.path == f"tiers[0].validators[1].{where}"
    assert "references are never fetched" in info.value.message
    assert "$ref '" in info.value.message


def _at(node: Any, url: str) -> Any:
    if isinstance(node, dict):
        return {k: _at(v, url) for k, v in node.items()}
    if isinstance(node, list):
        return [_at(v, url) for v in node]
    return node.replace("{url}", url) if isinstance(node, str) else node


async def test_validation_never_fetches_either(schema_host: _CountingServer) -> None:
    # past the build-time check (a schema built around it): the registry the validator
    # and the worker process use refuses to fetch, so validating reaches nothing either
    schema = {"$ref": f"{schema_host.url}/late.json"}
    inline = jsonschema.Draft202012Validator(schema, registry=_NO_RETRIEVAL)
    with pytest.raises(referencing.exceptions.Unresolvable):
        inline.is_valid(1)
    with pytest.raises(ValueError, match=r"late\.json"):
        await schema_check(json.dumps(schema), "1", limit_s=10)
    assert schema_host.hits == 0


def test_local_refs_still_resolve() -> None:
    schema = {"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"}}}
    JsonSchemaValidator(schema=schema)
    with pytest.raises(ConfigError, match=r"\$ref '#/\$defs/m' resolves to nothing"):
        JsonSchemaValidator(schema={"$ref": "#/$defs/m"})


# -- parameters and the validator a factory returns ------------------------------------------


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    names = set(_REGISTRY)
    yield
    for name in set(_REGISTRY) - names:
        del _REGISTRY[name]


def test_an_unknown_parameter_is_named_by_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        _build([{"name": "json_schema", "schema": {}},
                {"name": "json_schema", "shema": {"type": "object"}}])  # fmt: skip
    assert info.value.path == "tiers[0].validators[1].shema"
    assert info.value.message == (
        "validator 'json_schema' has no parameter 'shema' "
        "(its parameters: schema, early_reject, time_limit_s)"
    )
    assert "__init__" not in str(info.value)


def test_a_missing_parameter_is_named_by_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        _build([{"name": "confidence", "source": "text"}])
    assert info.value.path == "tiers[0].validators[0].min"
    assert "validator 'confidence' needs 'min' (its parameters: min, source," in info.value.message


class _SyncValidate:
    name = "sync"

    def __init__(self) -> None:
        pass

    def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
        return Verdict(validator=self.name, passed=True)


class _OneArgument:
    name = "one"

    async def validate(self, completion: Completion) -> Verdict:
        return Verdict(validator=self.name, passed=True)


async def _validate_function(completion: Completion, context: ValidationContext) -> Verdict:
    return Verdict(validator="f", passed=True)


def _plain_validate_function(completion: Completion, context: ValidationContext) -> Verdict:
    return Verdict(validator="f", passed=True)


@pytest.mark.parametrize(
    ("factory", "words"),
    [
        (_SyncValidate, "_SyncValidate.validate is not a coroutine function; "
                        "expected `async def validate(self, completion, context) -> Verdict`"),
        (_OneArgument, "_OneArgument.validate cannot be called with (completion, context)"),
        (_validate_function, "registered as an async function (_validate_function): "
                             "@cascade.validator registers a factory"),
        (_plain_validate_function, "registered as a function taking (completion, context), "
                                   "a validate function rather than a factory"),
    ],
)  # fmt: skip
def test_a_wrong_validator_fails_at_build(factory: Any, words: str) -> None:
    cascade.validator("wrong")(factory)
    with pytest.raises(ConfigError) as info:
        _build([{"name": "json_schema", "schema": {}}, {"name": "wrong"}])
    assert info.value.path == "tiers[0].validators[1]"
    assert "validator 'wrong'" in info.value.message
    assert words in info.value.message


def test_factories_with_keyword_catch_alls_take_anything() -> None:
    class Open:
        name = "open"

        def __init__(self, **options: Any) -> None:
            self.options = options

        async def validate(self, completion: Completion, context: ValidationContext) -> Verdict:
            return Verdict(validator=self.name, passed=True)

    cascade.validator("open")(Open)
    _build([{"name": "open", "anything": 1}])
