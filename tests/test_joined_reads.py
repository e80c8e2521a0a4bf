"""The joined read of an SSE stream (``stream_joined``: what the engine reads when nothing
looks at an answer chunk by chunk) takes a shorter way for the common read, and reads as
the chunks do: ``SSEDecoder.feed_plain`` decodes as ``feed`` does (or leaves the read to
it, nothing consumed), ``OpenAIProvider._join_plain`` joins a read as its chunks join (or
leaves it to ``_chunks``, everywhere that raises), and an answer read joined is the answer
read chunk by chunk, whatever the stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from itertools import pairwise
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from cascade import CascadeError, Chunk, Message, ProviderConfig, RequestOptions
from cascade._attempt import complete
from cascade._sse import EventTooLarge, SSEDecoder, SSEEvent, plain_events
from cascade.providers import AnthropicProvider, OpenAIProvider, batches_of
from cascade.providers._base import joined_of
from cascade.providers.openai import _TEMPLATE

from .test_chunk_batches import read_like_complete

pytestmark = pytest.mark.anyio

MSGS = (Message(role="user", content="Say hi"),)
OPTS = RequestOptions()
KEY = "sk-test-0123456789abcdef"

_TEXT = b'{"model":"%s","choices":[{"index":0,"delta":{"content":"%s"}}]}'
_ROLE = b'{"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
_FINISH = b'{"model":"m","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
_USAGE = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}'


def _data(*payloads: bytes) -> bytes:
    return b"".join(b"data: " + p + b"\n\n" for p in payloads)


# -- SSEDecoder.feed_plain ---------------------------------------------------------------

PLAIN = _data(_ROLE, *[_TEXT % (b"m", b"x%d" % i) for i in range(6)], _FINISH, _USAGE, b"[DONE]")
MIXED = (
    b"\xef\xbb\xbf"
    + _data(_TEXT % (b"m", b"a"), _TEXT % (b"m", b"b"))
    + b": a comment\n\n"
    + _data(_TEXT % (b"m", b"c"))
    + b"event: error\ndata: {}\n\n"
    + b"data: one\r\ndata: two\r\n\r\n"
    + b"data:no-space\n\n"
    + _data(b"", _TEXT % (b"m", b"d"), b"x" * 150, b"[DONE]")
)


def _both_ways(pieces: list[bytes], limit: int | None) -> tuple[object, object]:
    """The events (or EventTooLarge) of ``pieces`` read by ``feed`` alone, and by
    ``feed_plain`` first (``feed`` when it declines); the decoder's state after each read
    alike."""
    out: list[object] = []
    for plain in (False, True):
        decoder = SSEDecoder(max_event_bytes=limit)
        events: list[object] = []
        try:
            for piece in pieces:
                datas = decoder.feed_plain(piece) if plain else None
                if datas is not None:
                    assert datas, "feed_plain completes an event at least"
                    events.append(plain_events(datas))
                else:
                    events.append(decoder.feed(piece))
                events.append((decoder.pending, decoder.pending_bytes))
            events.append(decoder.flush())
        except EventTooLarge as exc:
            events.append(("too large", exc.size))
        out.append(events)
    return out[0], out[1]


@pytest.mark.parametrize(
    "stream",
    [
        PLAIN,
        MIXED,
        PLAIN.replace(b"\n", b"\r\n"),
        PLAIN.replace(b"\n\n", b"\r\n\n", 2),  # a CR in an otherwise plain read
        PLAIN.replace(b"\n\n", b"\r\r", 1),
    ],
)
def test_feed_plain_cut_anywhere_decodes_as_feed(stream: bytes) -> None:
    for limit in (None, 100, 1000):
        for cut in range(len(stream) + 1):
            by_feed, by_plain = _both_ways([stream[:cut], stream[cut:]], limit)
            assert by_plain == by_feed, (limit, cut)


@given(
    st.sampled_from([PLAIN, MIXED]),
    st.lists(st.integers(min_value=0, max_value=len(MIXED)), max_size=12),
    st.sampled_from([None, 120, 400]),
)
def test_feed_plain_any_split_decodes_as_feed(
    stream: bytes, cuts: list[int], limit: int | None
) -> None:
    bounds = [0, *sorted(c for c in cuts if c <= len(stream)), len(stream)]
    by_feed, by_plain = _both_ways([stream[a:b] for a, b in pairwise(bounds)], limit)
    assert by_plain == by_feed


def test_feed_plain_takes_the_common_read() -> None:
    decoder = SSEDecoder()
    assert decoder.feed_plain(PLAIN[:-10]) is not None  # the last event unfinished
    assert decoder.feed_plain(PLAIN[-10:]) is None  # it began in the last read: feed's
    assert decoder.feed(PLAIN[-10:]) == [SSEEvent("message", b"[DONE]")]


# -- OpenAIProvider._join_plain ----------------------------------------------------------

_LONG_MODEL = b"m" * 300
EVENTS = {
    "text": _TEXT % (b"m", b"hello"),
    "text other model": _TEXT % (b"m2", b"\xc3\xa9t\xc3\xa9"),
    "text no model": b'{"choices":[{"index":0,"delta":{"content":"z"}}]}',
    "text empty model": _TEXT % (b"", b"q"),
    "text key in model": _TEXT % (KEY.encode(), b"k"),
    "text long model": _TEXT % (_LONG_MODEL, b"l"),
    "role": _ROLE,
    "empty content, own model": _TEXT % (b"m3", b""),
    "no delta": b'{"model":"m4","choices":[{"index":0}]}',
    "finish": _FINISH,
    "finish no model": b'{"choices":[{"index":0,"delta":{"content":"f"},"finish_reason":"length"}]}',
    "usage": _USAGE,
    "usage cached": b'{"model":"m5","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,'
    b'"prompt_tokens_details":{"cached_tokens":4}}}',
    "refusal": b'{"choices":[{"index":0,"delta":{"refusal":"I will not"}}]}',
    "logprobs": b'{"choices":[{"index":0,"delta":{"content":"p"},"logprobs":{"content":'
    b'[{"logprob":-0.5},{"logprob":-1.0}]}}]}',
    "second choice": b'{"model":"m","choices":[{"index":1,"delta":{"content":"other"}}]}',
    "two choices": b'{"model":"m","choices":[{"index":0,"delta":{"content":"a"}},'
    b'{"index":1,"delta":{"content":"b"}}]}',
    "no choices": b'{"model":"m6","choices":[]}',
    "error": b'{"error":{"message":"overloaded","code":503}}',
    "object error": b'{"object":"error","message":"x","choices":[{"index":0,"delta":{"content":"e"}}]}',
    "bad usage": b'{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":-1}}',
    "malformed": b'{"choices":[',
    "not an object": b"[1, 2]",
    "keep-alive": b"",
    "done": b"[DONE]",
    # the frame of "text" with other texts: cut out of it once a stream learned it
    "text 2": _TEXT % (b"m", b"world"),
    "text non-ascii": _TEXT % (b"m", b"w\xc3\xb6rld \xf0\x9f\x98\x80"),
    "text escapes": _TEXT % (b"m", b'a\\"b\\n\\u00e9\\\\'),
    "text del": _TEXT % (b"m", b"\x7f"),
    "text empty": _TEXT % (b"m", b""),
    "text quotes": _TEXT % (b"m", b'a","model":"z'),  # valid JSON, another text: "a"
    "text control": _TEXT % (b"m", b"a\x01"),
    "text bad utf-8": _TEXT % (b"m", b"\xc3"),
    "text lone surrogate": _TEXT % (b"m", b"\\ud800"),
    "text cut short": b'{"model":"m","choices":[{"index":0,"delta":{"content":"}}]}',
    "text two keys": b'{"model":"m","choices":[{"index":0,"delta":{"content":"x","content":"y"}}]}',
    "text escaped": _TEXT % (b"m", b"\\u0041"),  # not learned from (a backslash)
    # a "content" key elsewhere too: not learned from (its frame would be the wrong one)
    "decoy": b'{"model":"m","x":{"content":"hi"},"choices":[{"index":0,"delta":{"content":"hi"}}]}',
    "decoy 2": b'{"model":"m","x":{"content":"ho"},"choices":[{"index":0,"delta":{"content":"hi"}}]}',
}  # fmt: skip
_MAY_DECLINE = {
    *("error", "object error", "bad usage", "malformed", "not an object", "keep-alive"),
    *("text quotes", "text control", "text bad utf-8", "text lone surrogate", "text cut short"),
    # in the frame of "text" (once learned), what is in the text's place is no string's
    # body alone: the read is decoded event by event
    *("text two keys", "two choices"),
}


def _provider(session: aiohttp.ClientSession) -> OpenAIProvider:
    config = ProviderConfig(
        name="p", kind="openai", base_url="http://127.0.0.1:9/v1", model="m", stream=True
    )
    return OpenAIProvider(config, session=session, api_key=KEY)


@given(
    st.lists(st.sampled_from(sorted(EVENTS)), min_size=1, max_size=4),
    st.lists(st.sampled_from(sorted(EVENTS)), min_size=1, max_size=8),
)
async def test_a_plain_read_joins_as_its_chunks(first: list[str], names: list[str]) -> None:
    """A read joined is its chunks joined: on its own, and after a first read of the
    stream (which may have taught it the stream's text event)."""
    async with aiohttp.ClientSession() as session:
        provider = _provider(session)
        _check_joined(provider, names, {})
        state: dict[str, Any] = {}
        provider._join_plain([EVENTS[name] for name in first], state)
        _check_joined(provider, names, state)


@pytest.mark.parametrize("name", sorted(n for n in EVENTS if n.startswith("text")))
async def test_an_event_in_the_text_events_frame_reads_as_decoded(name: str) -> None:
    """Once a stream learned its text event, an event in its frame (whatever is in the
    text's place: escapes, a quote, bytes that are no UTF-8, nothing) reads as decoded."""
    async with aiohttp.ClientSession() as session:
        provider = _provider(session)
        state: dict[str, Any] = {}
        _check_joined(provider, ["text"], state)
        assert _TEMPLATE in state
        for names in ([name], [name, "text"], ["text 2", name, "finish", "usage"]):
            _check_joined(provider, names, state)
            _check_joined(provider, ["text", *names], {})  # learned in the same read


async def test_a_stream_does_not_learn_a_text_event_with_another_content_key() -> None:
    async with aiohttp.ClientSession() as session:
        provider = _provider(session)
        state: dict[str, Any] = {}
        _check_joined(provider, ["decoy"], state)
        assert _TEMPLATE not in state
        _check_joined(provider, ["decoy 2", "decoy"], state)


def _check_joined(provider: OpenAIProvider, names: list[str], state: dict[str, Any]) -> None:
    datas = [EVENTS[name] for name in names]
    chunks, end = provider._chunks(plain_events(datas), {}, 1 << 20, scan=False)
    fast = provider._join_plain(list(datas), state)
    done_at = names.index("done") if "done" in names else len(names)
    if isinstance(end, Exception) or done_at < len(names) - 1:
        assert fast is None  # left to _chunks: it raises after the chunks before it
        return
    if not _MAY_DECLINE.intersection(names):
        assert fast is not None
    if fast is None:
        return
    one, fast_end = fast
    assert fast_end is end
    if one is None:
        assert chunks == []
    else:
        assert chunks
        assert read_like_complete([one]) == read_like_complete(chunks)
        assert KEY not in repr(one)


# -- which reader reads a provider -------------------------------------------------------


class OwnBatches(OpenAIProvider):
    """A subclass that changes the batches: read through them, not stream_joined."""

    async def stream_batches(  # type: ignore[override]
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[list[Chunk]]:
        async for batch in super().stream_batches(messages, options):
            yield [Chunk(text=c.text.upper()) for c in batch]


async def test_stream_joined_is_read_only_where_it_reads_as_stream_batches() -> None:
    async with aiohttp.ClientSession() as session:
        config = ProviderConfig(
            name="p", kind="openai", base_url="http://127.0.0.1:9/v1", model="m", stream=True
        )
        assert joined_of(OpenAIProvider(config, session=session, api_key=None))
        assert joined_of(AnthropicProvider(config, session=session, api_key=None))
        own = OwnBatches(config, session=session, api_key=None)
        assert batches_of(own)
        assert not joined_of(own)
        plain = OpenAIProvider(config, session=session, api_key=None)
        plain.stream = plain.stream  # type: ignore[method-assign]
        assert not batches_of(plain)
        assert not joined_of(plain)


# -- an answer read joined is the answer read chunk by chunk -----------------------------

_TEXTS = [_TEXT % (b"m", b"x%d" % i) for i in range(20)]
STREAMS = {
    "plain, one read": [_data(_ROLE, *_TEXTS, _FINISH, _USAGE, b"[DONE]")],
    "plain, a read an event": [_data(p) for p in (_ROLE, *_TEXTS, _FINISH, _USAGE, b"[DONE]")],
    "split events": [_data(_ROLE, *_TEXTS)[:-30], _data(_ROLE, *_TEXTS)[-30:], _data(b"[DONE]")],
    "crlf": [_data(*_TEXTS, _FINISH, _USAGE, b"[DONE]").replace(b"\n", b"\r\n")],
    "byte-order mark": [b"\xef\xbb\xbf" + _data(*_TEXTS, _FINISH, _USAGE, b"[DONE]")],
    "keep-alive mid read": [_data(*_TEXTS[:3], b"", *_TEXTS[3:], _FINISH, _USAGE, b"[DONE]")],
    "comment mid read": [_data(*_TEXTS[:3]) + b": ping\n\n" + _data(*_TEXTS[3:], b"[DONE]")],
    "done mid read": [_data(*_TEXTS[:3], b"[DONE]", *_TEXTS[3:])],
    "error mid read": [_data(*_TEXTS[:3], b'{"error":{"message":"x","code":429}}', *_TEXTS)],
    "error event": [_data(*_TEXTS[:3]) + b"event: error\ndata: {}\n\n"],
    "malformed mid read": [_data(*_TEXTS[:3], b'{"choices":[', *_TEXTS[3:])],
    "key in model": [_data(*[_TEXT % (KEY.encode(), b"k")] * 4, _FINISH, _USAGE, b"[DONE]")],
    "texts escaped and not ascii": [
        _data(*[_TEXT % (b"m", t) for t in (b"a", b"\\n", b"\xc3\xa9", b'\\"q\\"', b"\x7f", b"b")]),
        _data(
            *[_TEXT % (b"m", t) for t in (b"c", b"\xf0\x9f\x98\x80", b"\\u00e9", b"d")], b"[DONE]"
        ),
    ],
    "a text that is no string's body": [
        _data(*_TEXTS[:3], _TEXT % (b"m", b'a","model":"z'), *_TEXTS[3:6], b"[DONE]")
    ],
    "a text event cut short": [
        _data(
            *_TEXTS[:3], b'{"model":"m","choices":[{"index":0,"delta":{"content":"}}]}', b"[DONE]"
        )
    ],
    "a text with bad utf-8": [_data(*_TEXTS[:3]), _data(_TEXT % (b"m", b"\xc3"), b"[DONE]")],
    "refusal and logprobs": [
        _data(EVENTS["refusal"], EVENTS["logprobs"], EVENTS["second choice"], _FINISH, _USAGE),
        _data(b"[DONE]"),
    ],
    "usage then finish, no terminator": [_data(*_TEXTS[:2], _USAGE, _FINISH)],
    "no terminator": [_data(*_TEXTS[:5])],
    "past the cap in one read": [_data(*[_TEXT % (b"m", b"\xc4\x80" * 10)] * 30)],
    # under the cap in bytes, past it decoded (an emoji makes every character 4 bytes)
    "past the decoded cap in one read": [
        _data(_TEXT % (b"m", b"a" * 300), _TEXT % (b"m", b"\xf0\x9f\x98\x80"), b"[DONE]")
    ],
    "past the decoded cap in a later read": [
        _data(_TEXT % (b"m", b"a" * 150)),
        _data(_TEXT % (b"m", b"b" * 150), _TEXT % (b"m", b"\\ud83d\\ude00"), _FINISH),
    ],
    "finish, no usage, no terminator": [_data(*_TEXTS[:2], _FINISH)],
    "past the cap across reads": [_data(_TEXT % (b"m", b"w" * 30)) for _ in range(20)],
    "a large event": [_data(_TEXT % (b"m", b"L" * 70_000), _FINISH, _USAGE, b"[DONE]")],
    "a large event past the cap": [_data(_TEXT % (b"m", b"\\u0100" * 20_000), b"[DONE]")],
    "a large event past the decoded cap": [
        _data(_TEXT % (b"m", b"L" * 70_000 + b"\\ud83d\\ude00"), b"[DONE]")
    ],
}


@pytest.mark.parametrize("name", sorted(STREAMS))
async def test_an_answer_read_joined_is_the_answer_read_chunk_by_chunk(name: str) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        for piece in STREAMS[name]:
            await response.write(piece)
            await asyncio.sleep(0.001)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    results: list[object] = []
    limit = 100_000 if "large" in name else 1000 if "decoded" in name else 400
    try:
        async with aiohttp.ClientSession() as session:
            config = ProviderConfig(
                name="p", kind="openai", base_url=url, model="m", stream=True,
                max_response_bytes=limit, timeout_s=5,
            )  # fmt: skip
            provider = OpenAIProvider(config, session=session, api_key=KEY)
            for on_delta in (None, lambda text: None):
                seen: list[int] = []
                try:
                    done, _ = await complete(
                        provider, MSGS, OPTS, 0.0, on_delta=on_delta, on_text=seen.append
                    )
                    fields = ("text", "finish_reason", "input_tokens", "output_tokens", "model")
                    more = ("logprobs", "refusal", "cache_read_tokens")
                    results.append((*(getattr(done, f) for f in fields + more), sum(seen)))
                except CascadeError as exc:
                    received = getattr(exc, "received_chars", None)
                    results.append((type(exc).__name__, str(exc), received, sum(seen)))
    finally:
        await runner.cleanup()
    joined, chunk_by_chunk = results
    assert joined == chunk_by_chunk
    assert KEY not in repr(joined)


async def test_a_plain_read_makes_no_chunk_per_event() -> None:
    """The point of the shorter way: one chunk for a read, none made for its events."""
    made: list[object] = []

    class Watched(OpenAIProvider):
        def _chunk_of(self, chunk: object) -> Chunk | None:
            made.append(chunk)
            return super()._chunk_of(chunk)  # type: ignore[arg-type]

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        await response.write(_data(_ROLE, *_TEXTS, _FINISH, _USAGE, b"[DONE]"))
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        async with aiohttp.ClientSession() as session:
            config = ProviderConfig(name="p", kind="openai", base_url=url, model="m", stream=True)
            provider = Watched(config, session=session, api_key=KEY)
            joined = [c async for c in provider.stream_joined(MSGS, OPTS)]
    finally:
        await runner.cleanup()
    (one,) = joined
    assert one.text == "".join(f"x{i}" for i in range(20))
    assert (one.finish_reason, one.input_tokens, one.output_tokens) == ("stop", 3, 4)
    assert len(made) == 2  # the finish and the usage events only


async def test_a_read_worth_a_scan_is_scanned_before_it_is_decoded() -> None:
    """An event large enough to decode past the cap (an escape that makes every character
    4 bytes) is refused from its bytes, as the event by event way does: never decoded."""
    joined: list[int] = []

    class Watched(OpenAIProvider):
        def _join_plain(
            self, datas: list[bytes], state: dict[str, Any]
        ) -> tuple[Chunk | None, Chunk | None] | None:
            joined.append(len(datas))
            return super()._join_plain(datas, state)

    big = _data(_TEXT % (b"m", b"L" * 70_000 + b"\\ud83d\\ude00"), b"[DONE]")

    async def answer(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse()
        response.content_type = "text/event-stream"
        await response.prepare(request)
        await response.write(big)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        async with aiohttp.ClientSession() as session:
            config = ProviderConfig(
                name="p", kind="openai", base_url=url, model="m", stream=True,
                max_response_bytes=100_000,
            )  # fmt: skip
            provider = Watched(config, session=session, api_key=KEY)
            with pytest.raises(CascadeError, match="decoded would take"):
                await complete(provider, MSGS, OPTS, 0.0)
    finally:
        await runner.cleanup()
    assert joined == []
