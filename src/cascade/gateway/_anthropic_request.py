"""An Anthropic Messages API request body (``POST /v1/messages``), parsed and checked.

Carried: ``model`` (the route), ``max_tokens`` (required, as Anthropic requires it),
``system`` (a string or text blocks), ``messages`` (``user`` / ``assistant``, content a
string or text blocks, each message's blocks joined into one string), ``temperature``
(0 to 1), ``top_p`` (1, the default, is not sent on), ``stop_sequences``, ``stream``, and
``output_config.format`` (a ``json_schema`` format: every tier's answer must pass that
schema, and it is sent upstream as an OpenAI-style ``response_format``).

Accepted and ignored, as they cannot change the answer: ``metadata``, ``service_tier``,
``cache_control``, ``container``, ``tools`` of ``[]``, ``tool_choice`` of type ``none``,
``thinking`` of type ``disabled``. Refused with a 400 naming the field: tools, images,
documents and every other non-text block, extended thinking, ``top_k``,
``output_config.effort``, ``inference_geo`` (cascade does not choose where its providers
run), and any unknown field: a field dropped would give the client an answer to a
question it did not ask.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from .._errors import InputError
from .._types import MAX_REPORTED_TOKENS, Message, RequestOptions, estimate_prompt_tokens
from ._wire import QUIET_BYTES, GatewayRequest, Limits, check_schema, decode_quietly

__all__ = ["MAX_BLOCKS", "MAX_MESSAGES", "MAX_STOP_SEQUENCES", "parse_request"]

MAX_MESSAGES: Final = 100_000
"""The most messages the decoder takes at all (``Limits.max_messages`` is the bound a
gateway sets, checked next)."""
MAX_BLOCKS: Final = 1024
"""The most content blocks in one message's ``content``, or in ``system``."""
MAX_STOP_SEQUENCES: Final = 16
"""The most ``stop_sequences``, each of at most 1024 characters."""
_MAX_MODEL_CHARS: Final = 256
_MAX_NAME_CHARS: Final = 64
"""The most characters of an unknown field's name an error echoes."""


class _Block(msgspec.Struct, frozen=True):
    # A content block of any type (unknown keys such as cache_control and citations are
    # skipped): only "text" is carried, and the check that says so names the block.
    type: str
    text: str | None = None


_Content = str | Annotated[list[_Block], Meta(max_length=MAX_BLOCKS)]


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Literal["user", "assistant"]
    content: _Content


class _Metadata(msgspec.Struct, frozen=True):
    user_id: str | None = None


class _Thinking(msgspec.Struct, frozen=True):
    type: str
    budget_tokens: int | None = None


class _ToolChoice(msgspec.Struct, frozen=True):
    type: str


class _Format(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    type: Literal["json_schema"]
    schema: dict[str, Any]


class _OutputConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    effort: str | None = None
    format: _Format | None = None


class _Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    model: Annotated[str, Meta(min_length=1, max_length=_MAX_MODEL_CHARS)]
    max_tokens: Annotated[int, Meta(ge=1, le=MAX_REPORTED_TOKENS)]
    messages: Annotated[list[_Message], Meta(min_length=1, max_length=MAX_MESSAGES)]
    system: _Content | None = None
    temperature: Annotated[float, Meta(ge=0, le=1)] | None = None
    stop_sequences: (
        Annotated[
            list[Annotated[str, Meta(min_length=1, max_length=1024)]],
            Meta(max_length=MAX_STOP_SEQUENCES),
        ]
        | None
    ) = None
    stream: bool | None = None
    output_config: _OutputConfig | None = None
    # Accepted, not carried: the provider's bookkeeping, which cannot change the answer.
    metadata: _Metadata | None = None
    service_tier: str | None = None
    cache_control: dict[str, str] | None = None
    container: str | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    # Refused with a reason rather than as unknown fields (see _refuse_unsupported).
    top_k: Annotated[int, Meta(ge=0)] | None = None
    inference_geo: str | None = None
    thinking: _Thinking | None = None
    tools: list[msgspec.Raw] | None = None
    tool_choice: _ToolChoice | None = None


_decode_body = msgspec.json.Decoder(_Body).decode

# msgspec's messages end in " - at `$.messages[0].content`"; the path is the field's.
_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = ("Object missing required field `", "Object contains unknown field `")
_MAX_MESSAGE_CHARS: Final = 200
"""The most characters of msgspec's message an error echoes (it quotes an enum value)."""


def parse_request(raw: bytes, limits: Limits) -> GatewayRequest:
    """Decode a Messages API request body, or raise :class:`~cascade.InputError` whose
    ``path`` names the bad field (``messages[2].content[0].type``).

    Every part is bounded: the number of messages (``limits.max_messages``), blocks and
    stop sequences, the model name, the schema (``limits``), and JSON nesting (a body
    nested deeper than the decoder goes is a 400 too).
    """
    try:
        body = _decode_body(raw) if len(raw) <= QUIET_BYTES else decode_quietly(_decode_body, raw)
    except msgspec.ValidationError as exc:
        raise _input_error(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InputError(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InputError("the body's JSON is nested too deeply") from None
    if len(body.messages) > limits.max_messages:
        raise InputError(f"more than {limits.max_messages} messages", path="messages")
    _refuse_unsupported(body)
    messages: list[Message] = []
    if body.system is not None:
        messages.append(Message(role="system", content=_text(body.system, "system")))
    for i, msg in enumerate(body.messages):
        messages.append(Message(role=msg.role, content=_text(msg.content, f"messages[{i}]")))
    schema = response_format = None
    fmt = body.output_config.format if body.output_config is not None else None
    if fmt is not None:
        schema = check_schema(fmt.schema, limits, param="output_config.format.schema")
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": schema},
        }
    options = RequestOptions(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=None if body.top_p == 1 else body.top_p,  # the default: not sent
        stop=None if not body.stop_sequences else tuple(body.stop_sequences),
        response_format=response_format,
    )
    return GatewayRequest(
        model=body.model,
        messages=tuple(messages),
        options=options,
        stream=body.stream is True,
        json_schema=schema,
        json_schema_param="output_config.format.schema",
        estimated_tokens=estimate_prompt_tokens(messages) + body.max_tokens,
    )


def _input_error(text: str) -> InputError:
    """msgspec's validation message as an InputError naming the field."""
    match = _AT.search(text)
    path = match.group(1) if match else ""
    message = text[: match.start()] if match else text
    prefix = next((p for p in _FIELD if message.startswith(p)), None)
    if prefix is not None and message.endswith("`"):
        # a missing or unknown field: name it (the client's key: clipped), not its parent
        name = message[len(prefix) : -1][:_MAX_NAME_CHARS]
        path = f"{path}.{name}" if path else name
        message = "field required" if prefix is _FIELD[0] else "unknown field"
    elif len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    return InputError(message, path=path)


def _refuse_unsupported(body: _Body) -> None:
    if body.tools:
        raise InputError("tools are not supported by this gateway", path="tools")
    if body.tool_choice is not None and body.tool_choice.type != "none":
        raise InputError("tools are not supported by this gateway", path="tool_choice")
    if body.thinking is not None and body.thinking.type != "disabled":
        raise InputError("extended thinking is not supported by this gateway", path="thinking")
    if body.top_k is not None:
        raise InputError("top_k is not supported by this gateway", path="top_k")
    if body.output_config is not None and body.output_config.effort is not None:
        raise InputError("effort is not supported by this gateway", path="output_config.effort")
    if body.inference_geo is not None:
        raise InputError(
            "inference_geo is not supported by this gateway: it does not choose where "
            "its providers run",
            path="inference_geo",
        )


def _text(content: str | list[_Block], path: str) -> str:
    """A message's (or the system prompt's) text: its text blocks joined."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for j, block in enumerate(content):
        where = f"{path}.content[{j}]" if path != "system" else f"system[{j}]"
        if block.type != "text":
            raise InputError(
                f"only text content blocks are supported, got {block.type[:64]!r}",
                path=f"{where}.type",
            )
        if block.text is None:
            raise InputError("field required", path=f"{where}.text")
        parts.append(block.text)
    return "".join(parts)
