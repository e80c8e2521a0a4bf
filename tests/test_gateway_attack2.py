"""A hostile client and a demanding operator against the gateway's latency work: the
log writer, the guard's parse caches, ``GET /v1/models`` under keys."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog

from cascade.gateway import hash_key
from cascade.gateway._log_writer import LineWriter, render_json
from cascade.testing import FakeOpenAIServer

from .gateway import serving, write_config
from .helpers import provider, tier

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "Hi"}]


def config(url: str, **gateway: Any) -> dict[str, Any]:
    return {"tiers": [tier("t", provider("a", url, "m1"))], "gateway": gateway or None}


# -- the guard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "localhost:99999999",  # a port out of range: yarl raises when it is read
        "127.0.0.1:-1",
        "[:t$Evjk",
        "[::1]x",
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/healthz"])
async def test_a_host_header_yarl_cannot_read_is_refused_not_a_500(
    openai_server: FakeOpenAIServer, tmp_path: Path, host: str, path: str
) -> None:
    """A ``Host`` whose port or brackets yarl rejects only once read: 403 in the API's
    error format (never aiohttp's text 500 and its traceback), and no provider call."""
    openai_server.default = "ok"
    body = {"model": "cascade", "messages": HI, "max_tokens": 16}
    async with (
        serving(write_config(tmp_path / "c.toml", config(openai_server.url))) as gw,
        aiohttp.ClientSession() as session,
        session.request(
            "POST" if path != "/healthz" else "GET",
            f"{gw.url}{path}",
            json=body if path != "/healthz" else None,
            headers={"Host": host},
        ) as r,
    ):
        status = r.status
        answer = await r.json(content_type=None)
    assert status == 403
    assert answer["error"]["code"] == "host_not_allowed"
    assert openai_server.request_count == 0


# -- the log writer ------------------------------------------------------------------------


def test_rendered_lines_are_ascii_as_structlogs_renderer_made_them() -> None:
    """``json.dumps`` (structlog's JSONRenderer) escaped every non-ASCII character: a line
    goes to any standard output, whatever its encoding. msgspec does not escape them."""
    line = render_json(None, "info", {"event": "cascade.route", "error": "caf\u00e9 \u2603"})
    assert line.isascii()
    assert json.loads(line)["error"] == "caf\u00e9 \u2603"


def test_a_line_the_output_cannot_encode_loses_no_other_line() -> None:
    """An output that cannot encode a line (a non-UTF-8 standard output): the other lines
    of its batch are written, and the line itself is written escaped or counted as
    dropped, never silently lost with its whole batch."""
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    writer = LineWriter(out, flush_interval_s=60)  # one batch: the three lines
    writer.write("before\n")
    writer.write("caf\u00e9\n")  # not from render_json: any text
    writer.write("after\n")
    writer.close()
    lines = raw.getvalue().decode("ascii").splitlines()
    assert lines[0] == "before"
    assert lines[-1] == "after" or json.loads(lines[-1])["event"] == "gateway.log_dropped"
    assert "after" in lines
    assert len(lines) == 3 or writer.dropped == 1


def test_lines_through_structlog_reach_an_ascii_output() -> None:
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="ascii", write_through=True)
    writer = LineWriter(out, flush_interval_s=60)
    log = structlog.wrap_logger(writer, processors=[render_json])
    log.info("gateway.request", status=200)
    log.warning("cascade.route", error="\u00fcberlastet")  # an upstream's own words
    log.info("gateway.request", status=502)
    writer.close()
    records = [json.loads(line) for line in raw.getvalue().decode("ascii").splitlines()]
    assert [r.get("status") for r in records] == [200, None, 502]
    assert records[1]["error"] == "\u00fcberlastet"
    assert writer.dropped == 0


# -- GET /v1/models under keys -------------------------------------------------------------

KEY = "sk-gw-attack2-0123456789abcdef"
WIDE = "sk-gw-attack2-fedcba9876543210"


async def test_models_lists_only_what_the_key_may_ask_for(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A key limited to some routes or model names sees those in ``GET /v1/models`` (as
    OpenAI lists the models a key has access to), and the others are 404 to it, as an
    unknown model is: a client that picks a listed model is never refused with 403."""
    openai_server.default = "ok"
    cfg = config(
        openai_server.url,
        routes=[
            {"name": "cheap", "models": ["gpt-cheap", "gpt-mini"]},
            {"name": "premium", "models": ["gpt-best"]},
        ],
        keys={
            "entries": [
                {"name": "narrow", "sha256": hash_key(KEY), "routes": ["cheap"]},
                {"name": "named", "sha256": hash_key(WIDE), "models": ["gpt-mini", "gpt-best"]},
            ]
        },
    )
    async with (
        serving(write_config(tmp_path / "c.toml", cfg)) as gw,
        aiohttp.ClientSession() as session,
    ):

        async def get(path: str, key: str) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {key}"}
            async with session.get(f"{gw.base_url}{path}", headers=headers) as r:
                return r.status, await r.json()

        status, listed = await get("/models", KEY)
        assert status == 200
        assert [m["id"] for m in listed["data"]] == ["cheap", "gpt-cheap", "gpt-mini"]
        status, body = await get("/models/gpt-best", KEY)
        assert status == 404
        assert body["error"]["code"] == "model_not_found"
        assert (await get("/models/gpt-cheap", KEY))[0] == 200
        status, listed = await get("/models", WIDE)
        assert [m["id"] for m in listed["data"]] == ["gpt-mini", "gpt-best"]
        assert (await get("/models/cheap", WIDE))[0] == 404
    assert openai_server.request_count == 0
