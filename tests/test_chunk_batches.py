"""A stream read a socket read at a time: ``stream_batches`` holds the chunks ``stream``
yields, ``join_chunks`` sums a batch up as a reader of the chunks would, ``Held.add_all``
counts a batch as ``add`` counts its chunks, and an answer read in batches is the answer
read chunk by chunk."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade import Chunk, Message, ProviderConfig, RequestOptions
from cascade._attempt import complete
from cascade._sse import SSEEvent
from cascade._types import join_chunks
from cascade.providers import AnthropicProvider, OpenAIProvider, SupportsBatches, batches_of
from cascade.providers._http import DONE
from cascade.providers._sizes import Held
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

pytestmark = pytest.mark.anyio

MSGS = (Message(role="user", content="Say hi"),)
OPTS = RequestOptions()

_maybe_text = st.one_of(st.none(), st.text(max_size=6))
_maybe_int = st.one_of(st.none(), st.integers(min_value=0, max_value=99))
chunks_st = st.lists(
    st.builds(
        Chunk,
        text=st.text(max_size=6),
        finish_reason=_maybe_text,
        input_tokens=_maybe_int,
        output_tokens=_maybe_int,
        model=_maybe_text,
        logprobs=st.one_of(st.none(), st.tuples(st.floats(-5, 0)), st.just(())),
        answer=_maybe_text,
        cache_read_tokens=_maybe_int,
        cache_write_tokens=_maybe_int,
        refusal=_maybe_text,
    ),
    min_size=2,
    max_size=6,
)


def read_like_complete(chunks: list[Chunk]) -> tuple[object, ...]:
    """What ``complete`` keeps of a run of chunks (its own folding, field by field)."""
    text, refusal, logprobs = "", None, None
    last: dict[str, object] = {}
    model = None
    for c in chunks:
        text += c.text
        if c.refusal is not None:
            refusal = (refusal or "") + c.refusal
        if c.logprobs:
            logprobs = (logprobs or ()) + c.logprobs
        if c.model:
            model = c.model
        for name in ("finish_reason", "input_tokens", "output_tokens", "answer"):
            if getattr(c, name) is not None:
                last[name] = getattr(c, name)
        for name in ("cache_read_tokens", "cache_write_tokens"):
            if getattr(c, name) is not None:
                last[name] = getattr(c, name)
    return text, refusal, logprobs or None, model, sorted(last.items())


@given(chunks_st)
def test_a_joined_batch_reads_as_its_chunks(chunks: list[Chunk]) -> None:
    joined = join_chunks(chunks)
    assert read_like_complete([joined]) == read_like_complete(chunks)


def join_by_column(chunks: list[Chunk]) -> Chunk:
    """``join_chunks`` as it was first written (by column): the one it must equal."""
    fields: dict[str, object] = {}
    columns = zip(*(msgspec.structs.astuple(c) for c in chunks), strict=True)
    for name, column in zip(Chunk.__struct_fields__, columns, strict=True):
        if name == "text":
            fields[name] = "".join(column)
        elif column.count(None) == len(column):
            continue
        elif name == "refusal":
            fields[name] = "".join(v for v in column if v is not None)
        elif name == "logprobs":
            fields[name] = tuple(p for v in column if v for p in v)
        elif name == "model":
            fields[name] = next((v for v in reversed(column) if v), None)
        else:
            fields[name] = next(v for v in reversed(column) if v is not None)
    return Chunk(**fields)  # type: ignore[arg-type]


@given(chunks_st)
def test_join_chunks_is_the_join_by_column(chunks: list[Chunk]) -> None:
    assert join_chunks(chunks) == join_by_column(chunks)
    assert join_chunks(chunks[:1]) == join_by_column(chunks[:1])


@given(chunks_st, st.integers(min_value=0, max_value=60))
def test_add_all_counts_as_add_does(chunks: list[Chunk], limit: int) -> None:
    one_by_one, batched = Held(), Held()
    batched.add(Chunk(text="\u00e9" * 3))  # a state carried in from an earlier read
    one_by_one.add(Chunk(text="\u00e9" * 3))
    counted, cost = batched.add_all(chunks, limit)
    expected = len(chunks)
    for i, chunk in enumerate(chunks):
        last = one_by_one.add(chunk)
        if last > limit:
            expected = i
            break
    assert counted == expected
    assert cost == last
    assert (batched.chars, batched.width, batched.logprobs) == (
        one_by_one.chars,
        one_by_one.width,
        one_by_one.logprobs,
    )


@pytest.fixture(params=["openai", "anthropic"])
async def server(
    request: pytest.FixtureRequest,
) -> AsyncIterator[FakeOpenAIServer | FakeAnthropicServer]:
    cls = FakeOpenAIServer if request.param == "openai" else FakeAnthropicServer
    async with cls() as s:
        yield s


def _provider(
    server: FakeOpenAIServer | FakeAnthropicServer, session: aiohttp.ClientSession
) -> OpenAIProvider | AnthropicProvider:
    kind = "openai" if isinstance(server, FakeOpenAIServer) else "anthropic"
    config = ProviderConfig(
        name="p", kind=kind, base_url=server.url, model="m", stream=True, timeout_s=5
    )
    cls = OpenAIProvider if kind == "openai" else AnthropicProvider
    return cls(config, session=session, api_key="sk-test-0123456789")


async def test_batches_hold_the_chunks_of_the_stream(
    server: FakeOpenAIServer | FakeAnthropicServer,
) -> None:
    text = "a longer answer, in pieces of three characters each"
    reply = Reply(text=text, chunk_chars=3, input_tokens=7, output_tokens=11, finish_reason="stop")
    async with aiohttp.ClientSession() as session:
        provider = _provider(server, session)
        assert isinstance(provider, SupportsBatches)
        server.script("m", reply)
        one_by_one = [c async for c in provider.stream(MSGS, OPTS)]
        server.script("m", reply)
        batches = [b async for b in provider.stream_batches(MSGS, OPTS)]
    assert all(batches)
    assert [c for b in batches for c in b] == one_by_one


async def test_an_answer_read_in_batches_is_the_answer_read_chunk_by_chunk(
    server: FakeOpenAIServer | FakeAnthropicServer,
) -> None:
    text = "forty-two, and the reasons for it"
    reply = Reply(text=text, chunk_chars=2, input_tokens=5, output_tokens=9, finish_reason="length")
    seen: list[int] = []
    async with aiohttp.ClientSession() as session:
        provider = _provider(server, session)
        assert batches_of(provider)
        server.script("m", reply)
        batched, _ = await complete(provider, MSGS, OPTS, 0.0, on_text=seen.append)
        provider.stream = provider.stream  # type: ignore[method-assign]  # set on the instance
        assert not batches_of(provider)  # read through the instance's own stream
        server.script("m", reply)
        plain, _ = await complete(provider, MSGS, OPTS, 0.0)
    assert batched.text == plain.text == text
    assert sum(seen) == len(text)
    for field in ("finish_reason", "input_tokens", "output_tokens", "model", "refusal"):
        assert getattr(batched, field) == getattr(plain, field)


def _event(data: str, name: str = "message") -> SSEEvent:
    return SSEEvent(name, data.encode())


_TEXT = '{"model":"m","choices":[{"index":0,"delta":{"content":"%s"}}]}'
_PLAIN_READ = [_event(_TEXT % "a"), _event(_TEXT % "b")]


@pytest.mark.parametrize(
    "events",
    [
        _PLAIN_READ,
        [*_PLAIN_READ, _event("[DONE]")],
        [_event(_TEXT % "a"), _event("[DONE]"), _event(_TEXT % "late")],
        [_event(_TEXT % "a"), _event(""), _event(_TEXT % "b")],  # a keep-alive
        [_event(_TEXT % "a"), _event('{"error":{"message":"overloaded","code":503}}')],
        [_event(_TEXT % "a"), _event('{"choices":[{"index":0,"delta":{"content":"b"}}'), *_PLAIN_READ],
        [_event(_TEXT % "a"), _event("{}", "error")],
        [_event(_TEXT % "a"), _event('{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":-1}}')],
        [
            _event(_TEXT % "a"),
            _event('{"model":"m","choices":[{"index":1,"delta":{"content":"other"}}]}'),
            _event('{"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'),
            _event('{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'),
        ],
    ],
)  # fmt: skip
async def test_a_plain_read_decodes_as_event_by_event(events: list[SSEEvent]) -> None:
    async with aiohttp.ClientSession() as session:
        config = ProviderConfig(
            name="p", kind="openai", base_url="http://127.0.0.1:9/v1", model="m", stream=True
        )
        provider = OpenAIProvider(config, session=session, api_key="sk-test-0123456789")
        chunks, end = provider._chunks(events, {}, 1 << 20, scan=False)
        expected: list[Chunk] = []
        expected_end: object = None
        for event in events:
            try:
                chunk = provider._event(event, {})
            except Exception as exc:
                expected_end = exc
                break
            if chunk is DONE:
                expected_end = DONE
                break
            if chunk is not None:
                expected.append(chunk)
    assert chunks == expected
    if isinstance(expected_end, Exception):
        assert type(end) is type(expected_end)
        assert str(end) == str(expected_end)
    else:
        assert end is expected_end
