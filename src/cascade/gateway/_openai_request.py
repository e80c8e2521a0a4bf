"""OpenAI's Chat Completions request body (``POST /v1/chat/completions``), parsed and
checked (the responses are ``_openai_wire.py``'s).

Served: ``model`` (the route), ``messages`` (``system``, ``developer`` as system,
``user``, ``assistant``; content a string or text parts), ``stream`` and
``stream_options.include_usage``, ``n`` (1 only: a cascade returns one validated answer),
``max_tokens`` / ``max_completion_tokens`` (at most 1e9), ``temperature``, ``top_p`` (1,
the default, is not sent on), ``stop``, ``seed``, ``response_format`` (sent upstream as
is; ``json_schema`` adds the schema as a validator of every tier, ``json_object`` the
schema ``{"type": "object"}``, so a provider without the field, Anthropic's, is held to it
too).

Accepted and ignored, as they cannot change the answer: ``user``, ``safety_identifier``,
``metadata``, ``prompt_cache_key``, ``prompt_cache_retention``, ``prompt_cache_options``,
``parallel_tool_calls``, and the API's default value of a field not served
(``frequency_penalty`` / ``presence_penalty`` 0, ``logit_bias`` {}, ``top_logprobs`` 0,
``tools`` [], ``tool_choice`` "none", ``store`` false, ``service_tier`` "auto" or
"default", ``stream_options.include_obfuscation`` false). Any other value of those, and
every other field (tools and function calling, audio, ``logprobs``, ``reasoning_effort``,
``verbosity``, ``web_search_options``, a message's ``name``, an unknown field...), is a 400
naming it: a field dropped would give the client an answer to a question it did not ask.
"""

from __future__ import annotations

import operator
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .._errors import InputError
from .._types import MAX_REPORTED_TOKENS, Message, RequestOptions, estimate_prompt_tokens
from ._errors import GatewayError
from ._wire import QUIET_BYTES, GatewayRequest, Limits, check_schema, decode_quietly

__all__ = ["parse_request"]

_UNSET: Any = msgspec.UNSET


class _Part(msgspec.Struct, kw_only=True):
    # Unknown keys (prompt-cache hints) are skipped: only a text part's text is carried.
    type: str
    text: str | None = None


class _Message(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    role: str
    content: str | list[_Part] | None = None
    # Refused when set: cascade's messages carry a role and text only.
    name: Any = None
    refusal: Any = None
    audio: Any = None
    tool_call_id: Any = None
    tool_calls: Any = None
    function_call: Any = None


class _StreamOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    include_usage: bool = False
    include_obfuscation: bool | None = None
    """The gateway's chunks carry no ``obfuscation`` field: ``true`` is refused."""
    cascade_retractions: bool = False
    """The client handles ``cascade.retracted`` chunks (see the module doc)."""


class _JsonSchema(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    # omit_defaults: sent upstream with the keys the client sent, no nulls added
    name: str | None = None
    schema: Any = _UNSET
    strict: bool | None = None
    description: str | None = None


class _ResponseFormat(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: _JsonSchema | None = None


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: list[_Message]
    stream: bool | None = None
    stream_options: _StreamOptions | None = None
    n: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    response_format: _ResponseFormat | None = None
    logprobs: bool | None = None
    # Bookkeeping for the provider (who asks, caching): cannot change the answer, ignored.
    user: str | None = None
    safety_identifier: str | None = None
    metadata: dict[str, str] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    prompt_cache_options: dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Served by no cascade: refused unless the value is the API's default (_DEFAULTS), as
    # the answer is then the same as without the field.
    tools: Any = None
    tool_choice: Any = None
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: Any = None
    top_logprobs: int | None = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    moderation: Any = None
    store: bool | None = None
    service_tier: Any = None


_DEFAULTS: dict[str, tuple[Any, ...]] = {
    "tools": ([],),
    "tool_choice": ("none",),
    "functions": ([],),
    "function_call": ("none",),
    "audio": (),
    "modalities": (["text"],),
    "prediction": (),
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "top_logprobs": (0,),
    "reasoning_effort": (),
    "verbosity": (),
    "web_search_options": (),
    "moderation": (),
    "store": (False,),
    "service_tier": ("auto", "default"),
}
"""Each field no cascade serves, and the values of it that change nothing."""
_unserved = operator.attrgetter(*_DEFAULTS)  # one C call for the usual answer: all None
_NONE_UNSERVED = (None,) * len(_DEFAULTS)
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_MESSAGE_EXTRAS = ("name", "refusal", "audio", "tool_call_id")
_UNKNOWN = "Object contains unknown field `"
_MAX_NAME_CHARS = 64
_MAX_MESSAGE_CHARS = 200
_MAX_STOPS = 16
_MAX_STOP_CHARS = 1024

_decode = msgspec.json.Decoder(_Request).decode


def parse_request(body: bytes, limits: Limits) -> GatewayRequest:
    """``body`` as a request (a ``GatewayError`` 400 naming the field otherwise)."""
    try:
        req = _decode(body) if len(body) <= QUIET_BYTES else decode_quietly(_decode, body)
    except msgspec.ValidationError as exc:
        # msgspec's "<message> - at `$<path>`": the path names fields and indices only,
        # the message may quote the client's text (a key, an enum value) whole
        message, at, where = str(exc).rpartition(" - at `$")
        if not at:
            message, where = where, ""
        param = where.rstrip("`").lstrip(".") or None
        if message.startswith(_UNKNOWN) and message.endswith("`"):
            # name the field itself, as OpenAI does: the client's own key, clipped
            field = message[len(_UNKNOWN) : -1][:_MAX_NAME_CHARS]
            param = f"{param}.{field}" if param else field
            raise GatewayError(
                400, "unknown field", param=param, code="unknown_parameter"
            ) from None
        if len(message) > _MAX_MESSAGE_CHARS:
            message = message[:_MAX_MESSAGE_CHARS] + "..."
        raise GatewayError(400, message, param=param, code="invalid_value") from None
    except msgspec.DecodeError as exc:
        raise GatewayError(400, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    except RecursionError:
        raise GatewayError(
            400, "the body's JSON is nested too deeply", code="invalid_json"
        ) from None
    unserved = _unserved(req)
    if unserved != _NONE_UNSERVED:
        _refuse_unserved(unserved)
    stream_options = req.stream_options
    if stream_options is not None and not req.stream:
        raise GatewayError(
            400,
            "stream_options is only allowed when stream is true",
            param="stream_options",
            code="invalid_value",
        )
    if stream_options is not None and stream_options.include_obfuscation:
        raise GatewayError(
            400,
            "the cascade gateway's stream chunks carry no obfuscation field",
            param="stream_options",
            code="unsupported_parameter",
        )
    if req.logprobs:
        raise GatewayError(
            400,
            "logprobs is not supported by the cascade gateway",
            param="logprobs",
            code="unsupported_parameter",
        )
    messages = _messages(req.messages, limits)
    options, schema = _options(req, limits)
    max_tokens = options.max_tokens or 0
    return GatewayRequest(
        model=req.model,
        messages=messages,
        options=options,
        stream=bool(req.stream),
        include_usage=req.stream_options is not None and req.stream_options.include_usage,
        retractions=req.stream_options is not None and req.stream_options.cascade_retractions,
        json_schema=schema,
        estimated_tokens=estimate_prompt_tokens(messages) + max_tokens,
    )


def _messages(raw: list[_Message], limits: Limits) -> tuple[Message, ...]:
    if not raw:
        raise InputError("expected at least one message", path="messages")
    if len(raw) > limits.max_messages:
        raise InputError(f"more than {limits.max_messages} messages", path="messages")
    out = []
    for i, m in enumerate(raw):
        role = _ROLES.get(m.role)
        if role is None:
            raise InputError(
                f"role {m.role[:40]!r} is not supported (system, developer, user, assistant)",
                path=f"messages[{i}].role",
            )
        if m.tool_calls or m.function_call:
            raise InputError("tool calls are not supported", path=f"messages[{i}].tool_calls")
        for name in _MESSAGE_EXTRAS if m.name or m.refusal or m.audio or m.tool_call_id else ():
            if getattr(m, name) is not None:
                raise InputError(
                    f"a message's {name} is not supported (a role and text only)",
                    path=f"messages[{i}].{name}",
                )
        content = m.content
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if part.type != "text":
                    raise InputError(
                        f"only text parts are supported, got {part.type[:40]!r}",
                        path=f"messages[{i}].content[{j}]",
                    )
                if part.text is None:
                    raise InputError(
                        "expected the part's text", path=f"messages[{i}].content[{j}].text"
                    )
                texts.append(part.text)
            content = "".join(texts)
        elif content is None:
            raise InputError("expected the message's text", path=f"messages[{i}].content")
        out.append(Message(role=role, content=content))  # type: ignore[arg-type]
    return tuple(out)


def _options(req: _Request, limits: Limits) -> tuple[RequestOptions, dict[str, Any] | None]:
    if req.n is not None and req.n != 1:
        raise InputError("only n = 1: a cascade returns one validated answer", path="n")
    both = req.max_tokens is not None and req.max_completion_tokens is not None
    if both and req.max_tokens != req.max_completion_tokens:
        raise InputError(
            "max_tokens and max_completion_tokens differ: send one of them",
            path="max_tokens",
        )
    field = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    max_tokens = (
        req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    )
    if max_tokens is not None and not 1 <= max_tokens <= MAX_REPORTED_TOKENS:
        # as /v1/messages bounds it: 10**400 would overflow every estimate made of it
        got = str(max_tokens)
        raise InputError(
            f"expected an integer from 1 to {MAX_REPORTED_TOKENS}, got "
            + (got if len(got) <= 24 else f"{got[:12]}... ({len(got)} digits)"),
            path=field,
        )
    t = req.temperature
    if t is not None and not 0 <= t <= 2:
        raise InputError(f"expected 0 <= temperature <= 2, got {t}", path="temperature")
    top_p = req.top_p
    if top_p is not None and not 0 <= top_p <= 1:
        raise InputError(f"expected 0 <= top_p <= 1, got {top_p}", path="top_p")
    if top_p == 1:  # the default: not sent (some models refuse it beside temperature)
        top_p = None
    stop: tuple[str, ...] | None = None
    if req.stop is not None:
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop)
        if len(stop) > _MAX_STOPS or any(len(s) > _MAX_STOP_CHARS for s in stop):
            raise InputError(
                f"at most {_MAX_STOPS} stop sequences of {_MAX_STOP_CHARS} characters",
                path="stop",
            )
        stop = stop or None
    schema = None
    response_format: dict[str, Any] | None = None
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        response_format = {"type": "json_object"}
        # a validator too: a provider without response_format (Anthropic's) ignores it
        schema = {"type": "object"}
    elif fmt is not None and fmt.type == "json_schema":
        spec = fmt.json_schema
        if spec is None or spec.schema is _UNSET:
            raise InputError("expected json_schema.schema", path="response_format.json_schema")
        schema = check_schema(spec.schema, limits, param="response_format.json_schema.schema")
        response_format = {"type": "json_schema", "json_schema": msgspec.to_builtins(spec)}
    options = RequestOptions(
        max_tokens=max_tokens,
        temperature=t,
        top_p=top_p,
        stop=stop,
        seed=req.seed,
        response_format=response_format,
    )
    return options, schema


def _refuse_unserved(values: tuple[Any, ...]) -> None:
    """A 400 for the first field no cascade serves whose value is not its default."""
    for (name, defaults), value in zip(_DEFAULTS.items(), values, strict=True):
        if value is not None and value not in defaults:
            only = " or ".join(msgspec.json.encode(d).decode() for d in defaults)
            raise GatewayError(
                400,
                f"{name} is not supported by the cascade gateway"
                + (f" (only {only}, the API's default, is accepted)" if only else ""),
                param=name,
                code="unsupported_parameter",
            )
