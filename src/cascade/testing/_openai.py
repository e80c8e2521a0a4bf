"""A fake OpenAI-compatible server: ``POST /v1/chat/completions``, JSON and SSE, and
``POST /v1/embeddings``."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from aiohttp import web

from cascade.testing._reply import Reply
from cascade.testing._server import FakeServer
from cascade.testing._wire import Call, SSEEvents, encode_json, extra_output_tokens

__all__ = ["FakeOpenAIServer"]

_DONE = b"data: [DONE]\n\n"

_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
}


def _error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return _ERROR_TYPES.get(status, "invalid_request_error")


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + encode_json(payload) + b"\n\n"


def _logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": entries, "refusal": None}


def _message(reply: Reply) -> dict[str, Any]:
    if reply.refusal is not None:
        return {"role": "assistant", "content": None, "refusal": reply.refusal}
    return {"role": "assistant", "content": reply.text}


def _tokens(call: Call, reply: Reply) -> list[tuple[int, dict[str, Any]]] | None:
    """The reply's logprobs as OpenAI token entries, each with its offset in the text.

    None unless the request asked ``logprobs: true`` and the reply has some. The text is
    cut into as many tokens as there are logprobs, of near-equal length.
    """
    if reply.logprobs is None or call.body.get("logprobs") is not True:
        return None
    text, count = reply.text, len(reply.logprobs)
    bounds = [i * len(text) // count for i in range(count)] + [len(text)]
    tokens: list[tuple[int, dict[str, Any]]] = []
    for i, logprob in enumerate(reply.logprobs):
        token = text[bounds[i] : bounds[i + 1]]
        entry = {
            "token": token,
            "logprob": logprob,
            "bytes": list(token.encode()),
            "top_logprobs": [],
        }
        tokens.append((bounds[i], entry))
    return tokens


class FakeOpenAIServer(FakeServer):
    """A scriptable OpenAI-compatible chat completions server on loopback.

    Serves ``POST /v1/chat/completions`` (JSON, or SSE with ``"stream": true``,
    honouring ``stream_options.include_usage``) and ``GET /v1/models``. A reply's
    ``logprobs`` go out as ``choices[0].logprobs.content`` when the request asks for them.
    `url` ends in ``/v1``, as OpenAI clients expect for ``base_url``.

    Example::

        async with FakeOpenAIServer() as server:
            server.script("tier1", "first answer", Reply(status=503), "then this")
            server.respond("tier2", lambda request: request.messages[-1]["content"])
            client = AsyncOpenAI(base_url=server.url, api_key="sk-test")
            ...
            assert server.request_count == 1
    """

    _url_path: ClassVar[str] = "/v1"
    _chat_path: ClassVar[str] = "/v1/chat/completions"
    _request_id_header: ClassVar[str] = "x-request-id"
    _unknown_model: ClassVar[str] = (
        "The model `{model}` does not exist or you do not have access to it."
    )

    def _parse(
        self, body: Any, headers: Mapping[str, str]
    ) -> tuple[str, list[dict[str, Any]], bool] | str:
        if not isinstance(body, dict):
            return "request body must be a JSON object"
        model = body.get("model")
        if not isinstance(model, str):
            return "'model' is a required property and must be a string"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty array"
        if not all(isinstance(message, dict) for message in messages):
            return "each of 'messages' must be an object"
        return model, messages, body.get("stream") is True

    def _error_body(self, status: int, message: str, *, code: str | None = None) -> bytes:
        return encode_json(
            {
                "error": {
                    "message": message,
                    "type": _error_type(status),
                    "param": None,
                    "code": code,
                }
            }
        )

    def _refusal_body(self, fault: str, model: str) -> bytes:
        if fault == "context_length":
            error: dict[str, Any] = {
                "message": (
                    "This model's maximum context length is 128000 tokens. However, your "
                    "messages resulted in 131072 tokens. Please reduce the length of the "
                    "messages."
                ),
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        else:  # Azure OpenAI's form (OpenAI's own code is content_policy_violation)
            error = {
                "message": (
                    "The response was filtered due to the prompt triggering Azure OpenAI's "
                    "content management policy. Please modify your prompt and retry."
                ),
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": 400,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {
                        "hate": {"filtered": False, "severity": "safe"},
                        "jailbreak": {"filtered": True, "detected": True},
                        "self_harm": {"filtered": False, "severity": "safe"},
                        "sexual": {"filtered": False, "severity": "safe"},
                        "violence": {"filtered": False, "severity": "safe"},
                    },
                },
            }
        return encode_json({"error": error})

    def _error_event(self, status: int, reply: Reply) -> bytes:
        if reply.named_error_event:
            return b"event: error\ndata: " + reply.error_message.encode() + b"\n\n"
        # vLLM's form: an error object as a chunk, then the usual terminator.
        message = reply.error_message
        error = {"message": message, "type": _error_type(status), "param": None, "code": status}
        return b"data: " + encode_json({"error": error}) + b"\n\ndata: [DONE]\n\n"

    def _choices(self, body: dict[str, Any]) -> int:
        n = body.get("n")
        return n if isinstance(n, int) and 1 <= n <= 128 else 1

    def _usage(self, call: Call, reply: Reply) -> dict[str, Any]:
        if reply.usage is not None:
            return reply.usage
        # The prompt is billed once however many choices; completions add up.
        output = call.output_tokens + sum(extra_output_tokens(r) for r in call.extra)
        return {
            "prompt_tokens": call.input_tokens,
            "completion_tokens": output,
            "total_tokens": call.input_tokens + output,
        }

    def _json_body(self, call: Call, reply: Reply) -> bytes:
        tokens = _tokens(call, reply)
        return encode_json(
            {
                "id": f"chatcmpl-{call.n}",
                "object": "chat.completion",
                "created": call.created,
                "model": call.model,
                "choices": [
                    {
                        "index": 0,
                        "message": _message(reply),
                        "logprobs": None if tokens is None else _logprobs([t for _, t in tokens]),
                        "finish_reason": reply.finish_reason,
                    },
                    *(
                        {
                            "index": i,
                            "message": {"role": "assistant", "content": extra.text},
                            "logprobs": None,
                            "finish_reason": extra.finish_reason,
                        }
                        for i, extra in enumerate(call.extra, 1)
                    ),
                ],
                "usage": self._usage(call, reply),
            }
        )

    def _chunk(
        self,
        call: Call,
        delta: dict[str, str | None],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> bytes:
        return _event(
            {
                "id": f"chatcmpl-{call.n}",
                "object": "chat.completion.chunk",
                "created": call.created,
                "model": call.model,
                "choices": [
                    {
                        "index": 0,
                        "delta": delta,
                        "logprobs": logprobs,
                        "finish_reason": finish_reason,
                    }
                ],
            }
        )

    def _sse_events(self, call: Call, reply: Reply) -> SSEEvents:
        text, size = reply.text, reply.chunk_chars
        if reply.refusal is not None:  # OpenAI streams a refusal in place of content
            head = [self._chunk(call, {"role": "assistant", "content": None, "refusal": ""})]
            text, size = reply.refusal, reply.chunk_chars
            deltas = [
                self._chunk(call, {"refusal": text[i : i + size]})
                for i in range(0, len(text), size)
            ]
            return SSEEvents(head, deltas, self._tail(call, reply, None))
        head = [self._chunk(call, {"role": "assistant", "content": ""})]
        tokens = _tokens(call, reply)
        # Each token travels with the delta that holds its first character (with an empty
        # text, on the finish chunk).
        per_delta: list[list[dict[str, Any]]] = [[] for _ in range(0, len(text), size)]
        late: list[dict[str, Any]] = []
        for start, token in tokens or ():
            (per_delta[start // size] if per_delta else late).append(token)
        deltas = [
            self._chunk(
                call,
                {"content": text[i : i + size]},
                logprobs=_logprobs(per_delta[n]) if tokens is not None else None,
            )
            for n, i in enumerate(range(0, len(text), size))
        ]
        return SSEEvents(head, deltas, self._tail(call, reply, _logprobs(late) if late else None))

    def _tail(self, call: Call, reply: Reply, logprobs: dict[str, Any] | None) -> list[bytes]:
        """The finish chunk, the usage chunk when asked for, and the terminator."""
        tail = [self._chunk(call, {}, reply.finish_reason, logprobs=logprobs)]
        options = call.body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage") is True:
            tail.append(
                _event(
                    {
                        "id": f"chatcmpl-{call.n}",
                        "object": "chat.completion.chunk",
                        "created": call.created,
                        "model": call.model,
                        "choices": [],
                        "usage": self._usage(call, reply),
                    }
                )
            )
        tail.append(_DONE)
        return tail

    def _trickle_events(self, call: Call, reply: Reply) -> bytes:
        finish = self._chunk(call, {}, reply.finish_reason)
        usage = {
            "id": f"chatcmpl-{call.n}",
            "object": "chat.completion.chunk",
            "created": call.created,
            "model": call.model,
            "choices": [],
            "usage": self._usage(call, reply),
        }
        return finish + _event(usage)

    def _malformed_event(self, call: Call) -> bytes:
        # An object cut off mid-array: what a proxy that truncates a line sends.
        cut = f'{{"id": "chatcmpl-{call.n}", "object": "chat.completion.chunk", "choices": [{{'
        return b"data: " + cut.encode() + b"\n\n"

    embeddings_status: int | None = None
    """When set, ``/v1/embeddings`` answers every request with this error status."""
    embedding_requests: int = 0
    embedding_dim: int = 64

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/embeddings", self._handle_embeddings)

    async def _handle_embeddings(self, request: web.Request) -> web.Response:
        self.embedding_requests += 1
        if self.embeddings_status is not None:
            status = self.embeddings_status
            return web.Response(
                status=status,
                body=self._error_body(status, "embeddings unavailable"),
                content_type="application/json",
            )
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        texts = body.get("input") if isinstance(body, dict) else None
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return web.Response(
                status=400,
                body=self._error_body(400, "'input' must be a string or an array of strings"),
                content_type="application/json",
            )
        model = body.get("model", "") if isinstance(body, dict) else ""
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": hashed_embedding(t, self.embedding_dim),
            }
            for i, t in enumerate(texts)
        ]
        tokens = sum(len(t.split()) for t in texts)
        payload = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.Response(body=encode_json(payload), content_type="application/json")

    def _models_body(self, models: list[str]) -> bytes:
        return encode_json(
            {
                "object": "list",
                "data": [
                    {"id": model, "object": "model", "created": 0, "owned_by": "cascade-testing"}
                    for model in models
                ],
            }
        )


_WORDS = re.compile(r"\w+")


def hashed_embedding(text: str, dim: int = 64) -> list[float]:
    """A deterministic bag-of-words vector: each lower-cased word adds +-1 at a position
    chosen by its hash; unit length (all zeros for a text without words). Texts sharing
    words are near each other, so similarity-based routing is testable."""
    vector = [0.0] * dim
    for word in _WORDS.findall(text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "big")
        vector[value % dim] += 1.0 if value >> 63 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector
