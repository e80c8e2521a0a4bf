"""helper-74's review: the official SDKs' higher-level helpers against ``cascade serve``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import openai
import pydantic
import pytest

from cascade.testing import FakeOpenAIServer, Reply

from .gateway import Running, serving, write_config
from .helpers import JSON_SCHEMA, provider, tier

pytestmark = pytest.mark.anyio

HI = [{"role": "user", "content": "What is 6 * 7? Answer as JSON."}]
GOOD = '{"answer": 42}'


class Answer(pydantic.BaseModel):
    answer: int


def fleet(url: str, **top: Any) -> dict[str, Any]:
    common = {"stream": True, "retry": {"attempts": 1}}
    return {
        "tiers": [
            tier("small", provider("a", url, "m1", **common), validators=[JSON_SCHEMA]),
            tier("big", provider("b", url, "m2", **common), validators=[JSON_SCHEMA]),
        ],
        **top,
    }


@pytest.fixture
async def gw(openai_server: FakeOpenAIServer, tmp_path: Path) -> AsyncIterator[Running]:
    async with serving(write_config(tmp_path / "c.toml", fleet(openai_server.url))) as g:
        yield g


def oai(gw: Running) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0)


def ant(gw: Running) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=gw.url, api_key="sk-test", max_retries=0)


async def test_stream_helper_final_completion_names_the_answering_model(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    """``chat.completions.stream``'s final completion takes ``model`` from the first chunk
    (the SDK's accumulator never updates it): every chunk names the model that answered,
    as ``create()``'s JSON does, not the route's name the client sent."""
    openai_server.script("m1", Reply(text="not json"), Reply(text="not json"))
    openai_server.script("m2", Reply(text=GOOD, chunk_chars=3), Reply(text=GOOD, chunk_chars=3))
    async with oai(gw) as c:
        done = await c.chat.completions.parse(model="cascade", messages=HI, response_format=Answer)
        async with c.chat.completions.stream(
            model="cascade",
            messages=HI,
            response_format=Answer,
            stream_options={"include_usage": True},
        ) as stream:
            kinds = [event.type async for event in stream]
            final = await stream.get_final_completion()
    assert done.model == "m2"
    assert done.choices[0].message.parsed == Answer(answer=42)
    assert kinds[-2:] == ["content.done", "chunk"]
    assert final.model == done.model
    assert final.id == done.id.replace(done.id[9:], final.id[9:])  # chatcmpl-<hex>
    assert final.choices[0].message.parsed == Answer(answer=42)
    assert final.choices[0].finish_reason == "stop"
    assert final.usage is not None
    assert done.usage is not None
    assert final.usage.total_tokens == done.usage.total_tokens


async def test_anthropic_stream_helper_final_message(
    gw: Running, openai_server: FakeOpenAIServer
) -> None:
    openai_server.script("m1", Reply(text="not json"))
    openai_server.script("m2", Reply(text=GOOD, input_tokens=7, output_tokens=4, chunk_chars=3))
    async with (
        ant(gw) as a,
        a.messages.stream(model="cascade", max_tokens=100, messages=HI) as stream,  # type: ignore[arg-type]
    ):
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
        text = await stream.get_final_text()
    assert "".join(pieces) == text == GOOD
    assert final.model == "m2"
    assert final.stop_reason == "end_turn"
    assert final.id.startswith("msg_")
    assert final.content[0].type == "text"
    assert final.usage.output_tokens > 0
    assert final.usage.input_tokens > 0


async def test_anthropic_count_tokens_is_a_404_in_anthropic_format(gw: Running) -> None:
    """``messages.count_tokens`` (and any path under ``/v1/messages/``) is not served: a
    404 in Anthropic's error format, not OpenAI's."""
    async with ant(gw) as a:
        with pytest.raises(anthropic.NotFoundError) as caught:
            await a.messages.count_tokens(model="cascade", messages=HI)  # type: ignore[arg-type]
        with pytest.raises(anthropic.NotFoundError) as batches:
            await a.messages.batches.list()
    for exc in (caught.value, batches.value):
        body = exc.body
        assert isinstance(body, dict)
        assert body["type"] == "error"
        assert body["error"]["type"] == "not_found_error"
        assert "/v1/messages/" in body["error"]["message"]


async def test_models_list_in_both_sdks(gw: Running) -> None:
    """``models.list()`` through both SDKs: each finds the fields its API's listing has
    (Anthropic's ``type``, ``display_name``, ``created_at``; OpenAI's ``object``,
    ``created``, ``owned_by``), and Anthropic's pager stops after the one page."""
    async with oai(gw) as c:
        ids = [m.id async for m in c.models.list()]
        one = await c.models.retrieve("cascade")
    assert ids == ["cascade"]
    assert (one.object, one.owned_by) == ("model", "cascade")
    async with ant(gw) as a:
        infos = [m async for m in a.models.list()]
        info = await a.models.retrieve("cascade")
    assert [m.id for m in infos] == ["cascade"]
    for m in (*infos, info):
        assert m.type == "model"
        assert m.display_name == "cascade"
        assert m.created_at.year >= 2024


def speculative_fleet(url: str) -> dict[str, Any]:
    return fleet(
        url, gateway={"routes": [{"name": "cascade", "default": True, "mode": "speculative"}]}
    )


async def test_speculative_stream_helper_with_retractions_accumulates_the_withdrawn_text(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """What the README says of the SDK's stream helper on a speculative route with
    ``cascade_retractions``: the helper cannot apply a withdrawal, so its accumulated
    content holds the withdrawn text and the next answer; the last chunk's ``cascade``
    says which answer stands, and each chunk names the model its text came from."""
    openai_server.script("m1", Reply(text='{"answer": "x"}', chunk_chars=2, chunk_delay_s=0.02))
    openai_server.script("m2", Reply(text=GOOD, chunk_chars=3))
    path = write_config(tmp_path / "c.toml", speculative_fleet(openai_server.url))
    async with (
        serving(path) as g,
        oai(g) as c,
        c.chat.completions.stream(
            model="cascade",
            messages=HI,  # type: ignore[arg-type]
            stream_options={"include_usage": True, "cascade_retractions": True},  # type: ignore[typeddict-unknown-key]
        ) as stream,
    ):
        chunks = [e.chunk async for e in stream if e.type == "chunk"]
        final = await stream.get_final_completion()
    withdrawn = [ch for ch in chunks if "retracted" in (ch.model_extra or {}).get("cascade", {})]
    assert len(withdrawn) == 1
    assert withdrawn[0].model == "m1"
    after = chunks[chunks.index(withdrawn[0]) + 1 :]
    assert "".join(ch.choices[0].delta.content or "" for ch in after if ch.choices) == GOOD
    assert {ch.model for ch in after} == {"m2"}
    assert final.choices[0].message.content == '{"answer": "x"}' + GOOD
    assert final.model == "m1"  # the first chunk's: the helper never updates it
    assert (chunks[-1].model_extra or {})["cascade"]["model"] == "m2"


# -- SIGHUP while requests are in flight -------------------------------------------------


async def test_a_request_outliving_drain_timeout_after_a_reload_finishes_on_its_cascade(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A reload closes the old cascades once their last request is done: a request that
    started on them and runs longer than ``drain_timeout_s`` after the reload (a long
    answer, well within its deadline) still finishes there, JSON and SSE."""
    import asyncio

    from cascade.gateway._reload import reload_config as _reload

    from .leaks import eventually

    slow = Reply(text=GOOD, chunk_chars=1, chunk_delay_s=0.12)  # about 1.7 s
    openai_server.script("m1", slow, slow)
    openai_server.script("m3", Reply(text=GOOD))
    old = fleet(openai_server.url, gateway={"drain_timeout_s": 0.5})
    path = write_config(tmp_path / "c.toml", old)
    async with serving(path) as g, oai(g) as c:

        async def stream() -> str:
            chunks = await c.chat.completions.create(model="cascade", messages=HI, stream=True)  # type: ignore[arg-type]
            return "".join([ch.choices[0].delta.content or "" async for ch in chunks if ch.choices])

        as_json = asyncio.create_task(c.chat.completions.create(model="cascade", messages=HI))  # type: ignore[arg-type]
        as_sse = asyncio.create_task(stream())
        await eventually(lambda: openai_server.active_requests == 2, "both calls under way")
        write_config(path, {"tiers": [tier("only", provider("c", openai_server.url, "m3"))]})
        await _reload(g.gateway, str(path))
        fresh = await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        assert fresh.model == "m3"  # the new config, at once
        done, text = await as_json, await as_sse
    assert text == GOOD
    assert done.choices[0].message.content == GOOD
    assert done.model == "m1"


# -- secrecy, traced -------------------------------------------------------------------

KEY = "sk-gw-SECRETSECRET-0123456789"
PROVIDER_KEY = "sk-prov-UPSTREAMSECRET-987654"


async def test_no_key_in_spans_logs_or_error_bodies_on_the_error_paths(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Traced, with gateway keys: an upstream that quotes the provider's Authorization
    back (a 401, and a 400 the gateway quotes as ``upstream_invalid_request``), a wrong
    key, malformed ``Authorization`` headers, a key in the query string, in ``x-api-key``
    on ``/v1/messages``: no gateway key nor provider key in any span, span event, log
    line or error body; the upstream is sent the provider's key, never the client's."""
    import json

    import aiohttp
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from structlog.testing import capture_logs

    from cascade.gateway import hash_key
    from cascade.testing import FakeRequest

    def quoting(status: int) -> Any:
        def reply(request: FakeRequest) -> Reply:
            auth = request.headers.get("authorization", "")
            return Reply(status=status, error_message=f"Incorrect API key provided: {auth}")

        return reply

    openai_server.respond("m1", quoting(401))
    openai_server.respond("m4", quoting(400))
    once = {"api_key_env": "PK", "retry": {"attempts": 1}}
    four = {"tiers": [tier("t", provider("d", openai_server.url, "m4", **once))]}
    write_config(tmp_path / "four.toml", four)
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1", **once))],
        "gateway": {
            "keys": {"entries": [{"name": "team", "sha256": hash_key(KEY)}]},
            "routes": [
                {"name": "cascade", "default": True},
                {"name": "four", "config": "four.toml"},
            ],
        },
    }
    path = write_config(tmp_path / "c.toml", config)
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    chat = {"model": "cascade", "messages": HI}
    bearer = {"Authorization": f"Bearer {KEY}"}
    anthropic_body = {"model": "cascade", "max_tokens": 5, "messages": HI}
    sent: list[tuple[str, dict[str, str], dict[str, Any], int]] = [
        ("/v1/chat/completions", bearer, chat, 502),
        ("/v1/chat/completions", bearer, {**chat, "model": "four"}, 400),
        ("/v1/chat/completions", {"Authorization": f"Bearer {KEY}x"}, chat, 401),
        ("/v1/chat/completions", {"Authorization": f"Basic {KEY}"}, chat, 401),
        ("/v1/chat/completions", {"Authorization": f"Bearer  {KEY} more"}, chat, 401),
        ("/v1/chat/completions", {"Authorization": KEY}, chat, 401),
        (f"/v1/chat/completions?api_key={KEY}", {}, chat, 401),
        (f"/v1/chat/completions?api_key={KEY}", bearer, chat, 502),
        ("/v1/messages", {"x-api-key": KEY + "z"}, anthropic_body, 401),
        ("/v1/messages", {"x-api-key": KEY}, anthropic_body, 502),
    ]
    bodies: list[str] = []
    with capture_logs() as logs:
        async with (
            serving(path, tracer_provider=tracing, environ={"PK": PROVIDER_KEY}) as g,
            aiohttp.ClientSession() as session,
        ):
            for url, headers, body, status in sent:
                async with session.post(g.url + url, headers=headers, data=json.dumps(body)) as r:
                    bodies.append(f"{dict(r.headers)} {await r.text()}")
                    assert r.status == status, (url, headers, bodies[-1])
    tracing.shutdown()
    spans = exporter.get_finished_spans()
    assert len([s for s in spans if s.name.startswith("POST ")]) == len(sent)
    seen = [(s.name, dict(s.attributes or {}), s.status.description) for s in spans] + [
        (e.name, dict(e.attributes or {})) for s in spans for e in s.events
    ]
    everything = repr(seen) + repr(logs) + "\n".join(bodies)
    assert "Incorrect API key provided: Bearer ***" in everything  # quoted, redacted
    assert "SECRETSECRET" not in everything
    assert "UPSTREAMSECRET" not in everything
    upstream = {r.headers["authorization"] for r in openai_server.requests}
    assert upstream == {f"Bearer {PROVIDER_KEY}"}


# -- keys on a reload --------------------------------------------------------------------


def keyed(url: str, *entries: tuple[str, str], **limits: Any) -> dict[str, Any]:
    from cascade.gateway import hash_key

    keys = [{"name": n, "sha256": hash_key(raw), **limits} for n, raw in entries]
    return fleet(url, gateway={"keys": {"entries": keys}})


async def test_a_reload_revokes_removed_keys_adds_new_ones_and_rotates_under_a_name(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A key removed from the file (revoked: leaked) stops working at the SIGHUP, not at
    the next restart; its request under way finishes. A key added works at once; a key
    given a new hash under its name works instead of the old one. A changed limit still
    needs a restart (``gateway.reload_kept``). No key in the logs."""
    import asyncio

    from structlog.testing import capture_logs

    from cascade.gateway._reload import reload_config as _reload

    from .leaks import eventually

    team, gone, new, rotated = (f"sk-h74-{n}-0123456789" for n in ("team", "gone", "new", "rot"))
    openai_server.default = GOOD
    openai_server.script("m1", Reply(text=GOOD, latency_s=1.0))
    path = write_config(
        tmp_path / "c.toml", keyed(openai_server.url, ("team", team), ("gone", gone))
    )
    async with serving(path) as g:

        def sdk(key: str) -> openai.AsyncOpenAI:
            return openai.AsyncOpenAI(base_url=g.base_url, api_key=key, max_retries=0)

        async with sdk(gone) as leaked, sdk(team) as ok, sdk(new) as added:
            under_way = asyncio.create_task(
                leaked.chat.completions.create(model="cascade", messages=HI)
            )  # type: ignore[arg-type]
            await eventually(lambda: openai_server.active_requests == 1, "the slow call")
            write_config(path, keyed(openai_server.url, ("team", team), ("added", new)))
            with capture_logs() as logs:
                await _reload(g.gateway, str(path))
            with pytest.raises(openai.AuthenticationError):
                await leaked.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
            with pytest.raises(openai.AuthenticationError):
                await leaked.models.list()
            assert (await under_way).choices[0].message.content == GOOD  # admitted before
            assert (await ok.chat.completions.create(model="cascade", messages=HI)).model  # type: ignore[arg-type]
            assert (await added.chat.completions.create(model="cascade", messages=HI)).model  # type: ignore[arg-type]
            events = [e for e in logs if e["event"] == "gateway.keys_reloaded"]
            assert [(e["added"], e["revoked"], e["rotated"]) for e in events] == [
                (["added"], ["gone"], [])
            ]
            assert "gateway.reload_kept" not in [e["event"] for e in logs]
            # a new hash under the name "team": the old key stops, the new one works
            write_config(path, keyed(openai_server.url, ("team", rotated), ("added", new)))
            with capture_logs() as logs:
                await _reload(g.gateway, str(path))
            with pytest.raises(openai.AuthenticationError):
                await ok.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
            async with sdk(rotated) as again:
                assert (await again.chat.completions.create(model="cascade", messages=HI)).model  # type: ignore[arg-type]
            assert [e.get("rotated") for e in logs if e["event"] == "gateway.keys_reloaded"] == [
                ["team"]
            ]
            # a changed limit: kept until a restart, and said so
            limited = keyed(openai_server.url, ("team", rotated), ("added", new), usd_per_day=1.0)
            write_config(path, limited)
            with capture_logs() as logs:
                await _reload(g.gateway, str(path))
            kept = [e for e in logs if e["event"] == "gateway.reload_kept"]
            assert [e["fields"] for e in kept] == [["keys"]]
    text = repr(logs)
    for raw in (team, gone, new, rotated):
        assert raw not in text


async def test_a_reload_naming_a_key_variable_not_set_is_refused_and_the_keys_kept(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    from structlog.testing import capture_logs

    from cascade.gateway._reload import reload_config as _reload

    raw = "sk-h74-env-0123456789"
    openai_server.default = GOOD
    entries = [{"name": "ci", "env": "H74_KEY"}]
    start = fleet(openai_server.url, gateway={"keys": {"entries": entries}})
    path = write_config(tmp_path / "c.toml", start)
    async with serving(path, environ={"H74_KEY": raw}) as g:
        entries.append({"name": "more", "env": "H74_NEVER_SET"})
        write_config(path, fleet(openai_server.url, gateway={"keys": {"entries": entries}}))
        with capture_logs() as logs:
            await _reload(g.gateway, str(path))
        assert [e["event"] for e in logs] == ["gateway.reload_failed"]
        assert "gateway.keys.entries[1].env" in logs[0]["error"]
        async with openai.AsyncOpenAI(base_url=g.base_url, api_key=raw, max_retries=0) as c:
            assert (await c.chat.completions.create(model="cascade", messages=HI)).model  # type: ignore[arg-type]


# -- a refusal, streamed ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["buffered", "speculative"])
async def test_a_streamed_refusal_reaches_the_sdk_as_its_json_does(
    openai_server: FakeOpenAIServer, tmp_path: Path, mode: str
) -> None:
    """A model's refusal (OpenAI's ``message.refusal``) is in the JSON answer; streamed,
    it was dropped: an empty answer with ``finish_reason: stop``, as if the model had
    answered nothing. It goes as ``delta.refusal``, as OpenAI streams it, so the stream
    helper's ``refusal.done`` event and final message carry it."""
    refusing = Reply(refusal="I can't help with that.")
    openai_server.script("m1", refusing, refusing, refusing)
    routes = [{"name": "cascade", "default": True, "mode": mode}]
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1", stream=True))],
        "gateway": {"routes": routes},
    }
    path = write_config(tmp_path / "c.toml", config)
    async with serving(path) as g, oai(g) as c:
        done = await c.chat.completions.create(model="cascade", messages=HI)  # type: ignore[arg-type]
        chunks = await c.chat.completions.create(model="cascade", messages=HI, stream=True)  # type: ignore[arg-type]
        refused = "".join([ch.choices[0].delta.refusal or "" async for ch in chunks if ch.choices])
        async with c.chat.completions.stream(model="cascade", messages=HI) as stream:  # type: ignore[arg-type]
            kinds = [event.type async for event in stream]
            final = await stream.get_final_completion()
    assert done.choices[0].message.refusal == "I can't help with that."
    assert refused == done.choices[0].message.refusal
    assert "refusal.done" in kinds
    assert final.choices[0].message.refusal == done.choices[0].message.refusal
    assert final.choices[0].finish_reason == done.choices[0].finish_reason
