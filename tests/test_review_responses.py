"""Review of the issue #11 response bounds: ``max_response_bytes`` holds what an answer
takes once decoded, not only the bytes received. One emoji makes a CPython string take 4
bytes a character; a token logprob decodes to far more than its bytes on the wire. Real
HTTP against the fake servers; asserted on outcomes and byte counts, never on time."""

from __future__ import annotations

import aiohttp
import pytest

from cascade import Cascade, Chunk, RequestOptions, ResponseTooLarge
from cascade.providers import AnthropicProvider, OpenAIProvider
from cascade.providers._sizes import Held, json_cost, str_width
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .helpers import USER
from .test_response_limits import MSGS, make, server, session  # noqa: F401 (fixtures)

pytestmark = pytest.mark.anyio

EMOJI = "\U0001f600"
CAP = 16 * 1024


async def _collect(
    p: OpenAIProvider | AnthropicProvider, options: RequestOptions | None = None
) -> list[Chunk]:
    return [chunk async for chunk in p.stream(MSGS, options or RequestOptions())]


@pytest.mark.parametrize("stream", [False, True])
async def test_one_emoji_makes_the_text_count_four_bytes_a_character(
    server: FakeOpenAIServer | FakeAnthropicServer,  # noqa: F811
    session: aiohttp.ClientSession,  # noqa: F811
    stream: bool,
) -> None:
    # 6,000 characters: well under the cap on the wire, 24,000 bytes as one str
    server.default = Reply(text=EMOJI + "a" * 6_000, chunk_chars=500)
    with pytest.raises(ResponseTooLarge) as caught:
        await _collect(make(server, session, stream=stream, limit=CAP))
    assert caught.value.limit == CAP
    assert caught.value.received > CAP
    assert "decoded" in str(caught.value)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("extra", ["", "\u00e9", "\u0416"])
async def test_text_that_fits_decoded_is_accepted(
    server: FakeOpenAIServer | FakeAnthropicServer,  # noqa: F811
    session: aiohttp.ClientSession,  # noqa: F811
    stream: bool,
    extra: str,
) -> None:
    # ASCII, Latin-1 (1 byte a character) and Cyrillic (2) within the cap decoded
    text = extra + "a" * 6_000
    server.default = Reply(text=text, chunk_chars=500)
    chunks = await _collect(make(server, session, stream=stream, limit=CAP))
    assert "".join(c.text for c in chunks) == text


async def test_an_emoji_answer_under_a_quarter_of_the_cap_is_accepted(
    server: FakeOpenAIServer | FakeAnthropicServer,  # noqa: F811
    session: aiohttp.ClientSession,  # noqa: F811
) -> None:
    text = EMOJI * 100 + "a" * 3_000  # 3,100 characters, 12,400 bytes as one str
    server.default = Reply(text=text, chunk_chars=500)
    chunks = await _collect(make(server, session, stream=True, limit=CAP))
    assert "".join(c.text for c in chunks) == text


@pytest.mark.parametrize("stream", [False, True])
async def test_a_flood_of_logprobs_counts_what_it_decodes_to(
    session: aiohttp.ClientSession,  # noqa: F811
    stream: bool,
) -> None:
    # 3,000 token entries, ~56 bytes each on the wire (one SSE event when streamed, as the
    # text is empty): ~170 KB received, over 300 KB of Python objects once decoded
    async with FakeOpenAIServer() as fake:
        fake.default = Reply(text="", logprobs=(0.0,) * 3_000)
        limit = 250_000
        with pytest.raises(ResponseTooLarge) as caught:
            await _collect(
                make(fake, session, stream=stream, limit=limit),
                RequestOptions(logprobs=True),
            )
        assert caught.value.received > limit
        assert "decoded" in str(caught.value)
        # the same answer with a cap that holds it decoded is accepted
        chunks = await _collect(
            make(fake, session, stream=stream, limit=400_000), RequestOptions(logprobs=True)
        )
        assert sum(len(c.logprobs or ()) for c in chunks) == 3_000


async def test_an_emoji_answer_over_the_cap_fails_over_to_a_sibling() -> None:
    async with FakeOpenAIServer() as bad, FakeOpenAIServer() as good:
        bad.default = Reply(text="a" * 6_000 + EMOJI)
        good.default = Reply(text="fine")

        def p(name: str, url: str) -> dict[str, object]:
            return {"name": name, "kind": "openai", "base_url": url, "model": "m",
                    "max_response_bytes": CAP}  # fmt: skip

        cfg = {"tiers": [{"name": "a", "providers": [p("bad", bad.url), p("good", good.url)]}]}
        async with Cascade.from_dict(cfg) as c:
            result = await c.run(messages=USER)
        assert result.text == "fine"
        assert result.attempts[0].error_type == "ResponseTooLarge"


# -- the rule itself ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "width"),
    [
        (b'{"t": "abc"}', 1),
        ('{"t": "caf\u00e9"}'.encode(), 1),
        (b'{"t": "caf\\u00e9"}', 1),
        ('{"t": "\u0416"}'.encode(), 2),
        (b'{"t": "\\u0416"}', 2),
        (f'{{"t": "{EMOJI}"}}'.encode(), 4),
        (b'{"t": "\\ud83d\\ude00"}', 4),
    ],
)
def test_json_cost_counts_the_widest_character(data: bytes, width: int) -> None:
    assert json_cost(data) == len(data) * width


def test_json_cost_counts_objects_past_the_frame() -> None:
    data = b"[" + b"{}," * 2_000 + b"{}]"
    assert json_cost(data) == len(data) + (2_001 - 1_024) * 80


def test_held_counts_the_widest_character_seen_so_far() -> None:
    held = Held()
    assert held.add(Chunk(text="a" * 100)) == 100
    assert held.add(Chunk(text=EMOJI)) == 101 * 4
    assert held.add(Chunk(text="b", logprobs=(0.0, -1.0))) == 102 * 4 + 2 * 48
    assert str_width("\u00ff") == 1
    assert str_width("\u0100") == 2
