"""What a call that ends without an answer costs, and what it leaves charged in its
provider's token limit: the same figures (``unanswered_tokens``), for a call that failed, a
call the deadline or the caller cut off, streamed or not.

- A request sent is billed its prompt; a streamed call also the text that arrived (the
  provider stops generating when the connection closes).
- A call cut off after it was sent to a provider that does not stream is also billed its
  expected answer (``estimate_output_tokens``, or ``max_tokens`` if smaller): the provider
  generates and bills the whole answer whether or not anyone waits for it.
- A failed call without usage gives back the rest of its token reservation; one huge
  ``max_tokens`` charges at most the whole bucket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import cascade
from cascade import Cascade, Message, RequestOptions
from cascade._types import estimate_prompt_tokens
from cascade.testing import FakeClock, FakeOpenAIServer, Reply

from .helpers import USER, provider, tier
from .leaks import eventually

pytestmark = pytest.mark.anyio

PROMPT = estimate_prompt_tokens([Message(role=m["role"], content=m["content"]) for m in USER])
TPM = 6_000  # 100 tokens a second
DEADLINE_S = 0.01  # on the clock: refills 1 token


def one_tier(url: str, **extra: Any) -> dict[str, Any]:
    limits = {"tokens_per_minute": TPM, "max_wait_s": 1}
    p = provider("a", url, "m", limits=limits, retry={"attempts": 1}, **extra)
    return {"tiers": [tier("t", p)], "on_exhausted": "error"}


def cascade_on(clock: FakeClock, url: str, **extra: Any) -> Cascade:
    """The cascade on a clock that stands still: the bucket refills only when told."""
    return Cascade.from_dict(one_tier(url, **extra), clock=clock)


async def cut_off_by_the_deadline(
    c: Cascade, clock: FakeClock, server: FakeOpenAIServer, **options: Any
) -> cascade.Attempt:
    run = asyncio.create_task(
        c.run(messages=USER, deadline_s=DEADLINE_S, options=RequestOptions(**options))
    )
    await eventually(lambda: server.active_requests == 1, "the upstream call")
    clock.advance(DEADLINE_S)
    with pytest.raises(cascade.DeadlineExceeded) as info:
        await run
    (cut,) = info.value.attempts
    return cut


def tokens_left(c: Cascade) -> float:
    room = c._calls.limiters["a"].headroom.tokens
    assert room is not None
    return room


@pytest.mark.parametrize(("max_tokens", "expected_out"), [(None, 256), (100, 100)])
async def test_a_deadline_cuts_off_an_unstreamed_call_billed_its_expected_answer(
    openai_server: FakeOpenAIServer, max_tokens: int | None, expected_out: int
) -> None:
    openai_server.script("m", Reply(text="late", latency_s=5))
    clock = FakeClock()
    async with cascade_on(clock, openai_server.url) as c:
        cut = await cut_off_by_the_deadline(c, clock, openai_server, max_tokens=max_tokens)
        assert cut.input_tokens == PROMPT
        assert cut.output_tokens == expected_out
        assert cut.cost_usd == pytest.approx(PROMPT * 1e-6 + expected_out * 2e-6)
        # the limit is charged the same figure, the rest of the reservation given back
        assert tokens_left(c) == pytest.approx(TPM - PROMPT - expected_out + 1)


async def test_a_caller_that_leaves_an_unstreamed_call_is_billed_its_expected_answer(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m", Reply(text="late", latency_s=5))
    clock = FakeClock()
    async with cascade_on(clock, openai_server.url) as c:
        stream = c.stream(messages=USER, options=RequestOptions(max_tokens=10**9))
        async with stream:
            await eventually(lambda: openai_server.active_requests == 1, "the upstream call")
        (cut,) = stream.attempts
        assert cut.outcome == "cancelled"
        assert cut.output_tokens == 256  # the estimate, not the caller's max_tokens
        assert tokens_left(c) == pytest.approx(TPM - PROMPT - 256)


async def test_a_streamed_call_cut_off_is_billed_what_arrived_only(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m", Reply(text="late", latency_s=5))
    clock = FakeClock()
    async with cascade_on(clock, openai_server.url, stream=True) as c:
        cut = await cut_off_by_the_deadline(c, clock, openai_server, max_tokens=10**9)
        assert cut.output_tokens == 0
        assert tokens_left(c) == pytest.approx(TPM - PROMPT + 1)


async def test_a_failed_call_gives_back_its_reservation_but_its_prompt(
    openai_server: FakeOpenAIServer,
) -> None:
    too_large = Reply(status=400, error_message="max_tokens is too large")
    openai_server.script("m", too_large, Reply(text="ok"))
    clock = FakeClock()
    async with cascade_on(clock, openai_server.url) as c:
        with pytest.raises(cascade.CascadeError):
            await c.run(messages=USER, options=RequestOptions(max_tokens=10**9))
        assert tokens_left(c) == pytest.approx(TPM - PROMPT)
        result = await c.run(messages=USER, options=RequestOptions(max_tokens=50))
        assert result.text == "ok"  # the next caller is served


async def test_a_stream_that_breaks_is_charged_its_prompt_and_text(
    openai_server: FakeOpenAIServer,
) -> None:
    openai_server.script("m", Reply(text="x" * 400, chunk_chars=40, fault="drop"))
    clock = FakeClock()
    async with cascade_on(clock, openai_server.url, stream=True) as c:
        with pytest.raises(cascade.CascadeError) as info:
            await c.run(messages=USER, options=RequestOptions(max_tokens=10**9))
        (broken,) = info.value.attempts
        assert broken.output_tokens > 0
        assert tokens_left(c) == pytest.approx(TPM - PROMPT - broken.output_tokens)


async def test_a_huge_max_tokens_leaves_the_quota_to_the_next_caller(
    openai_server: FakeOpenAIServer,
) -> None:
    """The estimate (prompt + 1e9) charges a whole bucket, not a debt of 1e9 tokens; the
    answer's usage then settles it."""
    openai_server.script("m", Reply(text="ok"), Reply(text="ok"))
    clock = FakeClock()
    async with cascade_on(clock, openai_server.url) as c:
        await c.run(messages=USER, options=RequestOptions(max_tokens=10**9))
        assert tokens_left(c) > TPM - 100
        result = await c.run(messages=USER, options=RequestOptions(max_tokens=50))
        assert result.text == "ok"
