"""Hostile review of the joined read of an OpenAI stream (``_join_plain``'s text events
cut out of a learned frame): it reads as the event by event way, whatever the server."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from cascade import ProviderConfig
from cascade._sse import plain_events
from cascade.providers import OpenAIProvider

from .test_chunk_batches import read_like_complete

pytestmark = pytest.mark.anyio


def _provider(session: aiohttp.ClientSession) -> OpenAIProvider:
    config = ProviderConfig(
        name="p", kind="openai", base_url="http://127.0.0.1:9/v1", model="m", stream=True
    )
    return OpenAIProvider(config, session=session, api_key="sk-test-0123456789abcdef")


def _same(provider: OpenAIProvider, datas: list[bytes]) -> None:
    chunks, end = provider._chunks(plain_events(datas), {}, 1 << 20, scan=False)
    state: dict[str, Any] = {}
    fast = provider._join_plain(list(datas), state)
    if fast is None:
        return  # left to _chunks
    one, fast_end = fast
    assert fast_end is end
    assert one is not None
    assert read_like_complete([one]) == read_like_complete(chunks)


@pytest.mark.parametrize("colon", [b" :", b"\t:", b"  :"])
async def test_a_decoy_content_key_beside_a_spaced_one_is_not_the_text(colon: bytes) -> None:
    """The delta's ``"content" :`` (a space before the colon: the same key) and a
    ``"content":`` in another object: the text is the delta's, not the decoy's."""
    learn = b'{"model":"m","x":{"content":"hi"},"choices":[{"index":0,"delta":{"content%s"hi"}}]}'
    later = b'{"model":"m","x":{"content":"EVIL"},"choices":[{"index":0,"delta":{"content%s"hi"}}]}'
    fix = b'"' + colon
    async with aiohttp.ClientSession() as session:
        provider = _provider(session)
        _same(provider, [learn % fix, later % fix])


async def test_a_duplicate_spaced_content_key_is_not_the_text() -> None:
    """Two ``content`` keys in the delta (the last one decodes), one of them spaced."""
    learn = b'{"model":"m","choices":[{"index":0,"delta":{"content":"a","content" :"a"}}]}'
    later = b'{"model":"m","choices":[{"index":0,"delta":{"content":"EVIL","content" :"a"}}]}'
    async with aiohttp.ClientSession() as session:
        provider = _provider(session)
        _same(provider, [learn, later])
