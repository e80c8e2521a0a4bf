"""SSE framing: any split of a valid stream into reads decodes to the same events."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cascade._sse import EventTooLarge, SSEDecoder, SSEEvent

STREAM = (
    b": keep-alive comment\n"
    b'event: message_start\ndata: {"a": 1}\n\n'
    b"data: line one\r\ndata: line two\r\n\r\n"
    b"data:no-space\rid: 7\rretry: 100\r\r"
    b"event: ping\ndata:\n\n"
    b"data: caf\xc3\xa9 \xe2\x82\xac\n\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    SSEEvent("message_start", b'{"a": 1}'),
    SSEEvent("message", b"line one\nline two"),
    SSEEvent("message", b"no-space"),
    # `data:` with an empty value still fills the data buffer: the event is dispatched
    # with empty data (WHATWG: only an event with no data line at all is dropped)
    SSEEvent("ping", b""),
    SSEEvent("message", "café €".encode()),
    SSEEvent("message", b"[DONE]"),
]


def decode(pieces: list[bytes], *, limit: int | None = None) -> list[SSEEvent]:
    decoder = SSEDecoder(max_event_bytes=limit)
    out: list[SSEEvent] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    return out


def test_whole_stream() -> None:
    assert decode([STREAM]) == EXPECTED


def test_byte_by_byte() -> None:
    assert decode([STREAM[i : i + 1] for i in range(len(STREAM))]) == EXPECTED


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=40))
def test_any_split_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    pieces = [STREAM[a:b] for a, b in pairwise(bounds)]
    assert decode(pieces) == EXPECTED
    assert decode(pieces, limit=len(STREAM)) == EXPECTED  # a cap nothing reaches


_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30
)


@given(
    st.lists(st.tuples(st.sampled_from(["", "delta", "x"]), st.lists(_text, min_size=1, max_size=3)),
             max_size=8),
    st.sampled_from([b"\n", b"\r\n", b"\r"]),
    st.data(),
)  # fmt: skip
def test_generated_streams_round_trip(
    events: list[tuple[str, list[str]]], newline: bytes, data: st.DataObject
) -> None:
    raw = b""
    for name, lines in events:
        if name:
            raw += b"event: " + name.encode() + newline
        for line in lines:
            raw += b"data: " + line.encode() + newline
        raw += newline
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=20))
    bounds = [0, *sorted(cuts), len(raw)]
    pieces = [raw[a:b] for a, b in pairwise(bounds)]
    expected = [SSEEvent(name or "message", "\n".join(lines).encode()) for name, lines in events]
    assert decode(pieces) == expected


def test_unfinished_event_is_pending_not_emitted() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: half") == []
    assert decoder.pending
    assert decoder.feed(b"\n") == []
    assert decoder.pending
    assert decoder.feed(b"\n") == [SSEEvent("message", b"half")]
    assert not decoder.pending


def test_event_with_no_data_line_is_not_dispatched() -> None:
    assert SSEDecoder().feed(b"event: ping\n\n: comment\n\n") == []


def test_byte_order_mark_is_skipped_even_when_split() -> None:
    stream = b"\xef\xbb\xbfdata: first\n\n"
    assert decode([stream]) == [SSEEvent("message", b"first")]
    assert decode([stream[:1], stream[1:2], stream[2:]]) == [SSEEvent("message", b"first")]


def test_flush_returns_an_unterminated_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.flush() == SSEEvent("message", b"[DONE]")
    assert decoder.flush() is None


@pytest.mark.timeout(30)
def test_one_long_line_is_decoded_in_linear_time() -> None:
    # 50 MB in one line, fed in 4 KiB reads: re-joining the unfinished line on every read
    # copied ~300 GB (minutes); kept in pieces, it is joined once.
    piece = b"x" * 4096
    count = 50_000_000 // len(piece)
    decoder = SSEDecoder()
    assert decoder.feed(b"data: ") == []
    for _ in range(count):
        assert decoder.feed(piece) == []
    (event,) = decoder.feed(b"\r\n\r\n")
    assert len(event.data) == count * len(piece)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_an_event_past_the_cap_fails_before_it_is_stored(newline: bytes) -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    assert decoder.feed(b"data: " + b"a" * 50 + newline) == []
    assert decoder.feed(b"data: " + b"b" * 40) == []
    with pytest.raises(EventTooLarge) as info:
        decoder.feed(b"b" * 20)  # the unfinished line would take the event past 100 bytes
    assert info.value.limit == 100
    assert info.value.size > 100
    # what was refused was not stored
    assert sum(len(p) for p in decoder._line) == 46


def test_the_cap_is_per_event() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    for _ in range(10):
        assert decoder.feed(b"data: " + b"c" * 90 + b"\n\n") == [SSEEvent("message", b"c" * 90)]


# Pieces of streams: lone data lines (the path that cuts whole events out of a read) mixed
# with everything that sends a read down the line by line path.
_piece = st.sampled_from(
    [b"data: ", b"data:", b"data: x", b"\n", b"\n\n", b"\r", b"\r\n", b": c\n", b"event: e\n",
     b"id: 1\n", b"x", b" ", b"data: [DONE]\n\n", b'data: {"a": 1}\n\n']
)  # fmt: skip


@given(st.lists(_piece, max_size=30), st.data())
def test_whole_reads_decode_as_byte_by_byte(parts: list[bytes], data: st.DataObject) -> None:
    # Fed a byte at a time no read completes an event whole: the line by line path alone.
    raw = b"".join(parts)
    reference = decode([raw[i : i + 1] for i in range(len(raw))])
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(raw)), max_size=6))
    bounds = [0, *sorted(cuts), len(raw)]
    assert decode([raw[a:b] for a, b in pairwise(bounds)]) == reference
    assert decode([raw]) == reference


def test_the_cap_holds_for_events_cut_out_whole() -> None:
    decoder = SSEDecoder(max_event_bytes=10)
    assert decoder.feed(b"data: a\n\ndata: 0123456789\n\n") == [
        SSEEvent("message", b"a"),
        SSEEvent("message", b"0123456789"),
    ]
    with pytest.raises(EventTooLarge) as info:
        decoder.feed(b"data: b\n\ndata: 0123456789a\n\ndata: 0123456789ab\n\n")
    assert info.value.size == 11  # the first event past the cap, as line by line


def test_pending_bytes_bound_the_event_the_next_read_completes() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: 12345\ndata: 678") == []
    pending = decoder.pending_bytes
    (event,) = decoder.feed(b"90\n\n")
    assert len(event.data) <= pending + len(b"90\n\n")
    assert decoder.pending_bytes == 0
