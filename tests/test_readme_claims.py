"""The README's claims about ``cascade serve``, checked where the code did otherwise:
through the official SDKs against a gateway in-process over the fake fleet."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

from .gateway import serving, write_config
from .helpers import JSON_SCHEMA, provider, tier

pytestmark = pytest.mark.anyio

ANSWER = '{"answer": 42}'
HI = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]


def speculative(url: str, *, kind: str = "openai") -> dict[str, Any]:
    """Two tiers on one fake server, each held to a JSON schema, a speculative route."""
    return {
        "tiers": [
            tier(
                "small", provider("a", url, "m1", kind=kind, stream=True), validators=[JSON_SCHEMA]
            ),
            tier("big", provider("b", url, "m2", kind=kind, stream=True), validators=[JSON_SCHEMA]),
        ],
        "gateway": {"routes": [{"name": "cascade", "default": True, "mode": "speculative"}]},
    }


async def test_speculative_a_rejection_before_its_text_was_sent_is_not_an_error(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """README: a speculative stream ends with ``answer_withdrawn`` when the answer is
    withdrawn *after its text was sent*. A short first answer (one chunk) is rejected
    before the gateway wrote it: the client saw nothing, so nothing is withdrawn and the
    next tier's answer is the stream (it was a 502 ``answer_withdrawn``)."""
    openai_server.script("m1", Reply(text="not json"))  # one chunk, then rejected
    openai_server.script("m2", Reply(text=ANSWER))
    path = write_config(tmp_path / "c.toml", speculative(openai_server.url))
    async with (
        serving(path) as gw,
        openai.AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as c,
    ):
        stream = await c.chat.completions.create(model="cascade", messages=HI, stream=True)  # type: ignore[arg-type]
        chunks = [chunk async for chunk in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == ANSWER
    summary = (chunks[-1].model_extra or {})["cascade"]
    assert [p["outcome"] for p in summary["path"]] == ["rejected", "accepted"]


async def test_speculative_anthropic_a_rejection_before_its_text_was_sent_is_not_an_error(
    anthropic_server: FakeAnthropicServer, tmp_path: Path
) -> None:
    """The same on ``/v1/messages``: Anthropic's format cannot withdraw text, but none
    was sent."""
    anthropic_server.script("m1", Reply(text="not json"))
    anthropic_server.script("m2", Reply(text=ANSWER))
    path = write_config(tmp_path / "c.toml", speculative(anthropic_server.url, kind="anthropic"))
    async with (
        serving(path) as gw,
        anthropic.AsyncAnthropic(base_url=gw.url, api_key="k", max_retries=0) as c,
        c.messages.stream(model="cascade", max_tokens=64, messages=HI) as stream,  # type: ignore[arg-type]
    ):
        text = "".join([piece async for piece in stream.text_stream])
        message = await stream.get_final_message()
    assert text == ANSWER
    assert message.content[0].type == "text"


def test_check_says_ok_only_for_a_file_whose_gateway_table_is_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: ``cascade check FILE`` checks its ``[gateway]`` table and routes too. A bad
    one is exit 2 naming the field, and nothing says the file is OK (it printed
    ``FILE: OK, 1 tiers`` on stdout, then the error)."""
    from cascade._cli import main

    config = {
        "tiers": [tier("t", provider("a", "http://127.0.0.1:9/v1", "m"))],
        "gateway": {"max_in_flight": 0},
    }
    path = write_config(tmp_path / "c.toml", config)
    assert main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "gateway.max_in_flight" in err
    assert "OK" not in out
