"""Issue #12, review C: a provider's wording cannot stop a run (only the structured fields
make a content filter or a prompt too long), a run left during a retry's backoff records
the broken try once, and a call cut off after its request was sent is billed its prompt."""

from __future__ import annotations

from typing import Any

import aiohttp
import anyio
import pytest

import cascade
from cascade import (
    AttemptStarted,
    Cascade,
    ContentFiltered,
    ContextLengthExceeded,
    ProviderStatusError,
    Retracted,
)
from cascade._sse import SSEEvent
from cascade._types import estimate_prompt_tokens
from cascade.providers._status import status_class
from cascade.providers.openai import OpenAIProvider
from cascade.testing import FakeAnthropicServer, FakeClock, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
PROMPT_TOKENS = estimate_prompt_tokens(tuple(cascade.Message(**m) for m in USER))

# -- D4: the words of an error are not its kind ---------------------------------------------

HOSTILE = {
    "stream error event, code 500, mentions the phrase": (
        "openai",
        Reply(
            text="partial",
            fault="error_event",
            status=500,
            error_message="upstream worker crashed; see our content filtering policy FAQ",
        ),
    ),
    "404 naming content_policy_violation in its text": (
        "openai",
        Reply(status=404, error_message="The model `m1` does not exist. content_policy_violation"),
    ),
    "400 echoing the user's prompt": (
        "openai",
        Reply(
            status=400,
            error_message="Invalid value for 'messages[0].content': 'Please summarise our "
            "content filtering policy' ...",
        ),
    ),
    "413 mentioning the phrase": (
        "openai",
        Reply(status=413, error_message="payload exceeds limits; see content filtering policy"),
    ),
    "400 mentioning a prompt too long mid-sentence": (
        "openai",
        Reply(status=400, error_message="bad field 'x': the prompt is too long to log"),
    ),
    "anthropic stream api_error mentioning the phrase": (
        "anthropic",
        Reply(
            text="partial",
            fault="error_event",
            status=500,
            error_message="Internal error in content filtering policy evaluation",
        ),
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_a_providers_wording_fails_over_to_the_healthy_fallback(case: str) -> None:
    kind, reply = HOSTILE[case]
    async with FakeOpenAIServer() as o, FakeAnthropicServer() as an:
        bad = o if kind == "openai" else an
        a = provider("a", bad.url, "m1", kind=kind, stream=True, retry={"attempts": 1})
        b = provider("b", o.url, "m2", stream=True)
        bad.script("m1", reply)
        o.script("m2", ANSWER)
        # on_error is the default: a real content filter would be surfaced, stopping the run
        async with Cascade.from_dict({"tiers": [tier("t", a, b)]}) as c:
            result = await c.run(messages=USER)
    assert result.provider == "b"
    assert result.attempts[0].error_type == "ProviderStatusError"


@pytest.mark.parametrize(
    ("status", "code", "kind", "message", "expected"),
    [
        # the genuine ones, from structured fields or a documented opening
        (400, "content_filter", None, "filtered", ContentFiltered),
        (400, "content_policy_violation", "invalid_request_error", "no", ContentFiltered),
        (
            400,
            "invalid_prompt",
            "invalid_request_error",
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
            ContentFiltered,
        ),
        (
            400,
            None,
            "invalid_request_error",
            "Output blocked by content filtering policy",
            ContentFiltered,
        ),
        (
            400,
            None,
            "invalid_request_error",
            "invalid_request_error: Output blocked by content filtering policy",
            ContentFiltered,
        ),
        (400, "context_length_exceeded", None, "too long", ContextLengthExceeded),
        (400, None, "invalid_request_error", "prompt is too long: 9 > 8", ContextLengthExceeded),
        (
            400,
            400,
            "BadRequestError",
            "This model's maximum context length is 8192 tokens.",
            ContextLengthExceeded,
        ),
        # the words alone, elsewhere, or with another status
        (400, "invalid_prompt", None, "Invalid prompt: contains a null byte", ProviderStatusError),
        (400, None, None, "'Please summarise our content filtering policy'", ProviderStatusError),
        (400, None, None, "x; Output blocked by content filtering policy", ProviderStatusError),
        (400, None, None, "see content management policy", ProviderStatusError),
        (404, "content_policy_violation", None, "no such model", ProviderStatusError),
        (413, None, None, "prompt is too long", ProviderStatusError),
        (500, None, None, "Output blocked by content filtering policy", ProviderStatusError),
        (500, "context_length_exceeded", None, "crashed", ProviderStatusError),
    ],
)
def test_only_a_400_with_the_structured_fields_is_a_filter_or_too_long(
    status: int, code: object, kind: object, message: str, expected: type[Exception]
) -> None:
    assert status_class(status, code=code, kind=kind, message=message) is expected


async def _event_error(data: bytes) -> ProviderStatusError:
    cfg = cascade.Config.from_dict(
        {"tiers": [tier("t", provider("a", "http://127.0.0.1:1/v1", "m", stream=True))]}
    )
    async with aiohttp.ClientSession() as session:
        p = OpenAIProvider(cfg.tiers[0].providers[0], session=session, api_key=None)
        with pytest.raises(ProviderStatusError) as info:
            p._event(SSEEvent("message", data), {})
    return info.value


async def test_an_error_chunk_without_a_code_is_a_500_whatever_it_says() -> None:
    err = await _event_error(
        b'{"error": {"message": "Output blocked by content filtering policy"}}'
    )
    assert type(err) is ProviderStatusError
    assert err.status == 500


async def test_an_error_chunk_whose_type_says_so_is_still_a_filter() -> None:
    err = await _event_error(b'{"error": {"message": "no", "type": "content_policy_violation"}}')
    assert isinstance(err, ContentFiltered)
    assert err.status == 400


# -- D5: leaving during a retry's backoff ----------------------------------------------------


async def test_leaving_during_a_backoff_records_the_broken_try_once(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock()  # never advanced: the backoff lasts until the caller leaves
    retry = {"attempts": 3, "base_s": 10, "max_s": 10}
    p = provider("a", openai_server.url, "m", stream=True, retry=retry)
    openai_server.script("m", Reply(text="x" * 400, chunk_chars=40, fault="drop"), ANSWER)
    async with Cascade.from_dict({"tiers": [tier("t", p)]}, clock=clock) as c:
        async with c.stream(messages=USER, mode="speculative") as s:
            async for event in s:
                if isinstance(event, Retracted):
                    await eventually(lambda: clock.sleepers == 1, "sleeping before the retry")
                    break  # the broken try was recorded: the run is in its backoff
        attempts = s.attempts
    assert openai_server.request_count == 1
    assert [(a.outcome, a.error_type) for a in attempts] == [("failed", "ProviderConnectionError")]
    broken = attempts[0]
    assert broken.output_tokens == 10  # the 40 characters that came, costed once
    expected = broken.input_tokens * 1.0e-6 + broken.output_tokens * 2.0e-6
    assert broken.cost_usd == pytest.approx(expected)


# -- D8: a call cut off before its first token is billed its prompt ---------------------------


async def _sent(server: FakeOpenAIServer) -> None:
    await eventually(lambda: server.request_count == 1, "the request reached the server")


async def test_a_deadline_before_the_first_token_bills_the_prompt(
    openai_server: FakeOpenAIServer,
) -> None:
    clock = FakeClock()
    openai_server.script("m", Reply(text=ANSWER, latency_s=30))
    p = provider("a", openai_server.url, "m", stream=True, first_token_timeout_s=60)
    cfg: dict[str, Any] = {"on_exhausted": "error", "tiers": [tier("t", p)]}
    async with Cascade.from_dict(cfg, clock=clock) as c, anyio.create_task_group() as tg:
        caught: list[BaseException] = []

        async def go() -> None:
            try:
                await c.run(messages=USER, deadline_s=5)
            except cascade.DeadlineExceeded as exc:
                caught.append(exc)

        tg.start_soon(go)
        await _sent(openai_server)
        clock.advance(5)
    (exc,) = caught
    assert isinstance(exc, cascade.DeadlineExceeded)
    (attempt,) = exc.attempts
    assert attempt.output_tokens == 0
    assert attempt.input_tokens == PROMPT_TOKENS
    assert attempt.cost_usd == pytest.approx(PROMPT_TOKENS * 1.0e-6)


async def test_a_caller_leaving_before_the_first_token_bills_the_prompt(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m", Reply(text=ANSWER, latency_s=30))
    p = provider("a", openai_server.url, "m", stream=True, first_token_timeout_s=60)
    async with Cascade.from_dict({"tiers": [tier("t", p)]}) as c, c.stream(messages=USER) as s:
        async for event in s:
            if isinstance(event, AttemptStarted):
                await _sent(openai_server)
                break
    (attempt,) = s.attempts
    assert attempt.outcome == "cancelled"
    assert attempt.input_tokens == PROMPT_TOKENS
    assert attempt.cost_usd == pytest.approx(PROMPT_TOKENS * 1.0e-6)
