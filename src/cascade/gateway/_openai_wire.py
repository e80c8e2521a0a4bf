"""OpenAI's Chat Completions format (``POST /v1/chat/completions``), JSON and SSE.

What a request may ask for, and what is refused: ``_openai_request.py``.

A stream is the usual chunks, then ``data: [DONE]``; the last chunk before it carries the
``cascade`` summary. An error after the stream started is ``data: {"error": {...}}``
(the official SDKs raise it).

Speculative mode (a route's ``mode = "speculative"``): text streams as it arrives. When
that answer is then rejected or its stream breaks, no OpenAI client could tell the
withdrawn text from the next answer glued to it, so by default the stream ends with an
``answer_withdrawn`` error event (502) once text was sent; a withdrawal before any text
was sent is not shown at all. A client that handles withdrawals opts in with
``"stream_options": {"cascade_retractions": true}``: it then gets a chunk with no
choices and ``cascade.retracted = {"chars", "tier", "provider", "reason"}``, which
withdraws the text shown since the last one, and the next answer follows.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import msgspec

from .._types import (
    Result,
)
from ..engine import Delta, Event, Finished, Retracted
from ._errors import WITHDRAWN, GatewayError
from ._openai_request import parse_request
from ._wire import GatewayRequest, RunInfo, summary

__all__ = ["OpenAIWire"]

_UNSET: Any = msgspec.UNSET


_FINISH = {
    "stop": "stop",
    "length": "length",
    "max_tokens": "length",
    "content_filter": "content_filter",
}
_encode = msgspec.json.Encoder().encode


def _finish_reason(reason: str | None) -> str:
    return _FINISH.get(reason or "stop", "stop")


class OpenAIWire:
    """OpenAI Chat Completions, at ``/v1/chat/completions``."""

    path = "/v1/chat/completions"
    request_id_header = "x-request-id"
    text_only = True

    def __repr__(self) -> str:
        return f"<OpenAIWire {self.path}>"

    parse = staticmethod(parse_request)

    # -- responses -------------------------------------------------------------------------

    def render_json(self, result: Result, request: GatewayRequest, info: RunInfo) -> bytes:
        usage = result.usage
        return _encode(
            {
                "id": info.id,
                "object": "chat.completion",
                "created": info.created,
                "model": result.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": result.text,
                            "refusal": result.refusal,
                        },
                        "logprobs": None,
                        "finish_reason": _finish_reason(result.finish_reason),
                    }
                ],
                "usage": {
                    "prompt_tokens": usage.input_tokens,
                    "completion_tokens": usage.output_tokens,
                    "total_tokens": usage.total_tokens,
                },
                "cascade": summary(result, info),
            }
        )

    async def sse(
        self, events: AsyncIterator[Event], request: GatewayRequest, info: RunInfo
    ) -> AsyncGenerator[bytes, None]:
        def chunk(
            delta: dict[str, Any] | None, *, model: str = request.model, **extra: Any
        ) -> bytes:
            body: dict[str, Any] = {
                "id": info.id,
                "object": "chat.completion.chunk",
                "created": info.created,
                "model": model,
                "choices": []
                if delta is None
                else [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": None,
                        "finish_reason": extra.pop("finish_reason", None),
                    }
                ],
                **extra,
            }
            return b"data: " + _encode(body) + b"\n\n"

        # Every chunk names the model its text came from, as OpenAI's do: the SDK's
        # stream helper keeps the first chunk's (``get_final_completion().model``).
        models = info.models
        started = False
        async for event in events:
            kind = type(event)
            if kind is Delta:
                assert isinstance(event, Delta)
                model = models.get(event.provider, request.model)
                piece = chunk({"content": event.text}, model=model)
                if not started:
                    started = True
                    piece = chunk({"role": "assistant", "content": ""}, model=model) + piece
                yield piece
            elif kind is Retracted:
                assert isinstance(event, Retracted)
                if not request.retractions:
                    if not started:
                        continue  # nothing shown yet: nothing to withdraw
                    raise GatewayError(
                        502,
                        f"the answer being streamed was withdrawn ({event.reason[:200]}); "
                        "send stream_options.cascade_retractions = true to receive "
                        "withdrawals and the next answer, or retry the request",
                        code=WITHDRAWN,
                    )
                retracted = {
                    "chars": event.chars,
                    "tier": event.tier,
                    "provider": event.provider,
                    "reason": event.reason,
                }
                model = models.get(event.provider, request.model)
                yield chunk(None, model=model, cascade={"retracted": retracted})
            elif kind is Finished:
                assert isinstance(event, Finished)
                result = event.result
                out = (
                    b""
                    if started
                    else chunk({"role": "assistant", "content": ""}, model=result.model)
                )
                if result.refusal is not None:  # as OpenAI streams one: delta.refusal
                    out += chunk({"refusal": result.refusal}, model=result.model)
                done = summary(result, info)
                finish = _finish_reason(result.finish_reason)
                if request.include_usage:
                    usage = result.usage
                    out += chunk({}, model=result.model, finish_reason=finish)
                    out += chunk(
                        None,
                        model=result.model,
                        usage={
                            "prompt_tokens": usage.input_tokens,
                            "completion_tokens": usage.output_tokens,
                            "total_tokens": usage.total_tokens,
                        },
                        cascade=done,
                    )
                else:
                    out += chunk({}, model=result.model, finish_reason=finish, cascade=done)
                yield out + b"data: [DONE]\n\n"
                return

    def error(self, error: GatewayError) -> bytes:
        return _encode({"error": _error_object(error)})

    def sse_error(self, error: GatewayError) -> bytes:
        return b"data: " + _encode({"error": _error_object(error)}) + b"\n\n"


def _error_object(error: GatewayError) -> dict[str, Any]:
    return {
        "message": error.message,
        "type": error.type,
        "param": error.param,
        "code": error.code,
    }
