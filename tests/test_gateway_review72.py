"""Review of the newest gateway changes, attacked as a hostile client would: the whole-JSON
answer of a request's schema, a speculative answer withdrawn before its text was written,
and ``drain_delay_s``.

Regressions found:

- ``whole_json`` stripped the answer with ``str.strip()``: a value between Unicode or
  control "blanks" (``\\u2028``, ``\\x1c``, ``\\xa0``, ``\\x0b``...) passed as the whole
  JSON, which the client's ``json.loads`` (``JSON.parse``) then failed on; and an answer
  with a lone surrogate was read by the json module, which takes ``NaN`` and
  ``Infinity``: not JSON either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai
import pytest

from cascade.testing import FakeAnthropicServer, Reply
from cascade.validators._json_extract import extract_json, whole_json

from .gateway import serving, write_config
from .helpers import provider, tier

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]
GOOD = '{"answer": 42}'

# -- a request schema's answer is the whole JSON ---------------------------------------------

NOT_JSON_BLANKS = ["\u2028", "\u2029", "\x1c", "\x1f", "\x85", "\xa0", "\u3000", "\x0b", "\x0c"]


@pytest.mark.parametrize("blank", NOT_JSON_BLANKS, ids=[hex(ord(b)) for b in NOT_JSON_BLANKS])
def test_whole_json_takes_only_json_blanks_around_the_value(blank: str) -> None:
    for text in (blank + GOOD, GOOD + blank, f" {blank}\n{GOOD}\n"):
        with pytest.raises(ValueError):
            json.loads(text)  # what the client does with the answer
        with pytest.raises(ValueError):
            whole_json(text)
    assert extract_json(blank + GOOD) == {"answer": 42}  # the config's validator: as before


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_whole_json_with_a_lone_surrogate_takes_no_constant_json_lacks(constant: str) -> None:
    text = '{"a": ' + constant + ', "b": "\ud800"}'
    with pytest.raises(ValueError):
        whole_json(text)
    assert whole_json('{"a": 1, "b": "\ud800"}') == {"a": 1, "b": "\ud800"}


@pytest.mark.parametrize(
    "text", [GOOD, f" {GOOD}", f"{GOOD}\n", f"\r\n\t {GOOD} \n\n", "42", '"x"', "[1, 2]", "null"]
)
def test_whole_json_takes_every_json_value_with_json_blanks(text: str) -> None:
    assert whole_json(text) == json.loads(text)


def _claude(url: str) -> dict[str, Any]:
    return {
        "tiers": [
            tier("small", provider("a", url, "c1", kind="anthropic")),
            tier("big", provider("b", url, "c2", kind="anthropic")),
        ]
    }


@pytest.mark.parametrize("size", ["small", "big"])  # big: over 16 KiB, the schema worker's
@pytest.mark.parametrize("blank", ["\u2028", "\xa0"], ids=["u2028", "nbsp"])
async def test_a_json_answer_between_unicode_blanks_escalates(
    anthropic_server: FakeAnthropicServer, tmp_path: Path, blank: str, size: str
) -> None:
    filler = "x" * (20_000 if size == "big" else 1)
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    anthropic_server.script("c1", Reply(text=f'{blank}{{"answer": 41, "f": "{filler}"}}{blank}'))
    anthropic_server.script("c2", Reply(text=GOOD))
    path = write_config(tmp_path / "c.toml", _claude(anthropic_server.url))
    async with (
        serving(path) as gw,
        openai.AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0, timeout=30) as c,
    ):
        completion = await c.chat.completions.create(
            model="cascade",
            messages=HI,  # type: ignore[arg-type]
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "a", "schema": schema},
            },
        )
    assert json.loads(completion.choices[0].message.content or "") == {"answer": 42}
    assert anthropic_server.request_count == 2
