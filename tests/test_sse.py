"""SSE framing: any split of a valid stream into reads decodes to the same events."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from cascade._sse import SSEDecoder, SSEEvent

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
    SSEEvent("message_start", '{"a": 1}'),
    SSEEvent("message", "line one\nline two"),
    SSEEvent("message", "no-space"),
    SSEEvent("ping", ""),
    SSEEvent("message", "café €"),
    SSEEvent("message", "[DONE]"),
]


def decode(pieces: list[bytes]) -> list[SSEEvent]:
    decoder = SSEDecoder()
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
    expected = [SSEEvent(name or "message", "\n".join(lines)) for name, lines in events]
    assert decode(pieces) == expected


def test_unfinished_event_is_pending_not_emitted() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: half") == []
    assert decoder.pending
    assert decoder.feed(b"\n") == []
    assert decoder.pending
    assert decoder.feed(b"\n") == [SSEEvent("message", "half")]
    assert not decoder.pending
