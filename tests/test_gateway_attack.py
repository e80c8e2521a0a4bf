"""A hostile review of the gateway: each test is an attack that should fail to hurt it.

Found by attacking ``cascade serve`` as a malicious client, a broken upstream and a
careless operator (see the review report): a test here fails while its defect stands.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cascade.testing import FakeOpenAIServer, FakeRequest, Reply

from . import test_shared_redis as _redis
from .gateway import Running, serving, write_config
from .helpers import provider, tier
from .leaks import eventually, in_use, open_on

pytestmark = pytest.mark.anyio

redis_bin = _redis.redis_bin  # the fixture that finds redis-server

HI = [{"role": "user", "content": "Hi"}]


def one_tier(url: str, *, limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"tiers": [tier("t", provider("a", url, "m1", limits=limits))], **extra}


async def post(gw: Running, body: dict[str, Any], **headers: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{gw.base_url}/chat/completions", json=body, headers=headers) as r,
    ):
        return r.status, await r.read()


def raw_request(body: bytes, *, length: int | None = None, extra: bytes = b"") -> bytes:
    n = len(body) if length is None else length
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n" + extra + b"Content-Length: %d\r\n\r\n" % n + body
    )


# -- a client that does not read ----------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "upstream_streams"), [(True, False), (True, True), (False, False)]
)
async def test_a_client_that_never_reads_its_stream_does_not_hold_a_slot_forever(
    openai_server: FakeOpenAIServer, tmp_path: Path, stream: bool, upstream_streams: bool
) -> None:
    """A streaming client that stops reading (a zero window) blocks the handler in
    ``response.write`` with no timeout: the request keeps its in-flight slot, its
    generation, and the upstream call, long past the route's deadline. A few thousand such
    connections take every ``max_in_flight`` slot (and every provider concurrency slot)."""
    openai_server.default = Reply(text="y" * 6_000_000, chunk_chars=65536)
    route = {"name": "cascade", "default": True, "mode": "speculative", "deadline_s": 1.0}
    # a write stalled for write_timeout_s cuts the client off (the run's deadline bounds
    # the run, not how long a finished answer may wait for its reader)
    gateway = {"routes": [route], "body_timeout_s": 1.0, "write_timeout_s": 1.0}
    config = {
        "tiers": [tier("t", provider("a", openai_server.url, "m1", stream=upstream_streams))],
        "gateway": gateway,
    }
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        body = json.dumps({"model": "cascade", "messages": HI, "stream": stream}).encode()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", gw.port))
        _reader, writer = await asyncio.open_connection(sock=sock)
        writer.transport.pause_reading()  # type: ignore[attr-defined]  # never read a byte
        writer.write(raw_request(body))
        await writer.drain()
        try:
            await eventually(lambda: openai_server.request_count == 1, "the upstream call")
            # the deadline is 1 s: well after it, nothing of the request may be left
            await eventually(lambda: gw.gateway.in_flight == 0, "the slot freed", within_s=6)
            await eventually(lambda: openai_server.active_requests == 0, "upstream call over")
            await eventually(
                lambda: in_use(gw.gateway.generation.cascades[0]) == 0, "connection returned"
            )
            if upstream_streams:  # cut off mid-answer: the upstream connection is closed
                await eventually(lambda: open_on([openai_server]) == 0, "upstream closed")
            # else the answer was whole when the client stalled: its connection is back in
            # the pool, idle (no leak)
        finally:
            writer.close()


# -- one tenant's max_tokens against every tenant's provider quota -----------------------


@pytest.mark.parametrize("how", ["client_leaves", "upstream_400"])
async def test_a_huge_max_tokens_does_not_lock_the_providers_quota_for_everyone(
    openai_server: FakeOpenAIServer, tmp_path: Path, how: str
) -> None:
    """The provider's token limiter is charged ``prompt + max_tokens`` up front, and the
    client sets ``max_tokens`` (unbounded on /v1/chat/completions, up to 1e9 on
    /v1/messages). A call that then fails (a real provider answers 400 to a max_tokens over
    the model's) or whose client leaves releases its lease *without* usage: the whole
    estimate stays charged. One request with ``max_tokens = 10**9`` puts a 60k-TPM bucket
    ~1e6 s in debt: every tenant's request to that provider is refused for days."""

    def answer(request: FakeRequest) -> Reply:
        if (request.body.get("max_tokens") or 0) > 100_000:
            if how == "upstream_400":
                return Reply(status=400, error_message="max_tokens is too large")
            return Reply(text="slow", latency_s=5.0)
        return Reply(text="ok")

    openai_server.respond("m1", answer)
    limits = {"tokens_per_minute": 60_000, "max_wait_s": 1}
    async with serving(
        write_config(tmp_path / "c.toml", one_tier(openai_server.url, limits=limits))
    ) as gw:
        hostile = {"model": "cascade", "messages": HI, "max_tokens": 10**9}
        if how == "client_leaves":
            call = asyncio.create_task(post(gw, hostile))
            await eventually(lambda: openai_server.active_requests == 1, "the upstream call")
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            await eventually(lambda: gw.gateway.in_flight == 0, "the request over")
        else:
            status, _ = await post(gw, hostile)
            assert status in (400, 502)
        # another tenant, a few tokens, a minute's worth of quota left: must be served
        status, body = await post(gw, {"model": "cascade", "messages": HI, "max_tokens": 50})
        assert status == 200, body


# -- clients without a key ----------------------------------------------------------------


async def test_clients_without_a_key_cannot_take_every_in_flight_slot(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The key is checked only after the whole body is read and parsed, while the request
    already holds an in-flight slot: clients with no key at all, trickling their bodies,
    hold every ``max_in_flight`` slot for ``body_timeout_s`` each, again and again, and
    every keyed client gets 429 ``gateway_busy``. The headers carry the key: a request
    without a valid one can be refused before its body is read."""
    from cascade.gateway import hash_key

    openai_server.default = "ok"
    keys = {"entries": [{"name": "good", "sha256": hash_key("sk-good-0123456789")}]}
    gateway = {"keys": keys, "max_in_flight": 2, "body_timeout_s": 5.0}
    async with serving(
        write_config(tmp_path / "c.toml", one_tier(openai_server.url, gateway=gateway))
    ) as gw:
        hogs = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
            writer.write(raw_request(b'{"model": ', length=1000))  # no key, the body never ends
            await writer.drain()
            hogs.append(writer)
            # refused from its headers, its body unread, no slot taken
            assert (await reader.readline()).startswith(b"HTTP/1.1 401 ")
        try:
            assert gw.gateway.in_flight == 0
            status, body = await post(
                gw, {"model": "cascade", "messages": HI}, Authorization="Bearer sk-good-0123456789"
            )
            assert status == 200, body
        finally:
            for writer in hogs:
                writer.close()


async def test_headers_trickled_a_line_at_a_time_do_not_hold_a_connection_forever(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """``body_timeout_s`` bounds the body only: aiohttp has no timeout for the request
    line and headers, so a client sending one header line now and then (slowloris) holds
    its connection (a file descriptor, a protocol object) as long as it likes, and
    thousands of them exhaust the process's descriptors. No handler runs, so neither
    ``max_in_flight`` nor the access log sees them."""
    config = one_tier(openai_server.url, gateway={"body_timeout_s": 0.5, "idle_timeout_s": 0.5})
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
        try:
            writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n")
            closed = False
            for i in range(40):  # 4 s: eight times the body's timeout
                await asyncio.sleep(0.1)
                if reader.at_eof() or writer.is_closing():
                    closed = True
                    break
                try:
                    writer.write(b"X-Slow-%d: 1\r\n" % i)
                    await writer.drain()
                except ConnectionError:
                    closed = True
                    break
            assert closed, "the gateway still holds a connection whose headers never end"
        finally:
            writer.close()


# -- budgets while Redis hangs -------------------------------------------------------------


async def test_a_budget_holds_locally_while_redis_hangs(redis_bin: str) -> None:
    """``DayBudget.reserve`` checks the local headroom, *then* awaits Redis, and adds its
    local reservation only after Redis answered (or timed out). While Redis hangs (a
    failover, a paused primary), every request that arrives within ``timeout_s`` passes
    the local check before any of them is counted: 20 concurrent requests of $0.5 are all
    admitted against a $1 budget (the module doc promises at most one past the budget,
    and that each replica holds the budget on its own spend while Redis is down)."""
    from cascade.gateway import (
        Admission,
        GatewayDenied,
        GatewayKeys,
        KeyEntry,
        KeysConfig,
        hash_key,
    )
    from cascade.resilience.shared import SharedState
    from cascade.testing import FakeClock

    from .test_shared_redis import RedisServer, _prefix

    key = "sk-gw-attack-0123456789"
    server = RedisServer(redis_bin)
    server.start()
    try:
        state = SharedState(redis_url=server.url, key_prefix=_prefix(), timeout_s=0.3)
        async with state:
            config = KeysConfig(entries=[KeyEntry(name="t", sha256=hash_key(key), usd_per_day=1.0)])
            keys = GatewayKeys.from_config(config, clock=FakeClock(), shared=state)
            server.pause()  # Redis hangs: connections stay open, nothing answers
            try:
                outcomes = await asyncio.gather(
                    *(
                        keys.admit(key, estimated_tokens=1, estimated_cost_usd=0.5)
                        for _ in range(20)
                    ),
                    return_exceptions=True,
                )
            finally:
                server.resume()
            for o in outcomes:
                if isinstance(o, BaseException) and not isinstance(o, GatewayDenied):
                    raise o
            admitted = [o for o in outcomes if isinstance(o, Admission)]
            assert len(admitted) <= 2, f"{len(admitted)} requests of $0.5 admitted on a $1 budget"
    finally:
        server.kill()


# -- budgets and clients that leave --------------------------------------------------------


async def test_leaving_before_the_answer_does_not_make_a_budget_endless(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """A call cut off before its answer is charged its prompt only (``_cut_off``: "a
    request sent is billed its prompt, text or not"), and the key is settled with that.
    A provider called without streaming generates (and bills) the whole answer whether or
    not anyone waits for it: a client that asks for long answers and leaves just before
    they arrive spends the operator's money at full rate while its daily budget stays
    untouched. Here each answer costs $0.2 (100k output tokens) on a $0.5 budget; ten such
    requests all get through, and the key has spent ~$0."""
    from cascade.gateway import hash_key

    openai_server.default = Reply(text="long " * 100, output_tokens=100_000, latency_s=2.0)
    keys = {"entries": [{"name": "k", "sha256": hash_key("sk-k-0123456789"), "usd_per_day": 0.5}]}
    config = one_tier(openai_server.url, gateway={"keys": keys})
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        auth = {"Authorization": "Bearer sk-k-0123456789"}
        ask = {"model": "cascade", "messages": HI, "max_tokens": 100_000}
        admitted = 0
        for n in range(10):
            call = asyncio.create_task(post(gw, ask, **auth))
            await eventually(
                lambda n=n, call=call: openai_server.request_count > n or call.done(),
                "the call or a denial",
            )
            if call.done():
                assert (await call)[0] == 429
                break
            admitted += 1
            await asyncio.sleep(0.3)  # the provider is generating (and billing) the answer
            call.cancel()
            await asyncio.gather(call, return_exceptions=True)
            await eventually(lambda: gw.gateway.in_flight == 0, "the request over")
        # 10 answers of $0.2 were generated upstream for a key allowed $0.5 a day
        assert admitted <= 3, f"{admitted} answers of $0.2 on a $0.5 budget"


# -- what a plain OpenAI client makes of a speculative stream ------------------------------


async def test_a_speculative_stream_never_reads_as_a_spliced_success_in_the_openai_sdk(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Speculative on /v1/chat/completions: the primary's text streams, its stream breaks,
    a chunk with no choices and ``cascade.retracted`` withdraws it, the fallback's answer
    follows. No OpenAI client knows ``cascade.retracted``: the official SDK (and every
    accumulator built on it) reads the broken half-answer *and* the whole answer glued
    together, ``finish_reason: "stop"``, as a success. Issue #13: a stream broken
    mid-answer reaches the SDK as the next provider's whole answer or as an SSE error,
    never as a damaged success; /v1/messages keeps to it (an ``error`` event), this does
    not."""
    import openai

    openai_server.script("m-primary", Reply(text="The answer is forty-two", fault="drop"))
    openai_server.script("m-fallback", Reply(text="A whole answer.", chunk_chars=3))
    config = {
        "tiers": [
            tier(
                "t",
                provider("primary", openai_server.url, "m-primary", stream=True),
                provider("fallback", openai_server.url, "m-fallback", stream=True),
            )
        ],
        "gateway": {"routes": [{"name": "cascade", "default": True, "mode": "speculative"}]},
    }
    async with (
        serving(write_config(tmp_path / "c.toml", config)) as gw,
        openai.AsyncOpenAI(base_url=gw.base_url, api_key="k", max_retries=0) as client,
    ):
        try:
            async with client.chat.completions.stream(model="cascade", messages=HI) as stream:  # type: ignore[arg-type]
                final = await stream.get_final_completion()
        except openai.APIError:
            return  # an error the SDK raises: acceptable
        assert final.choices[0].message.content == "A whole answer."


# -- a careless operator -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_control_character_in_a_tier_name_is_refused_or_harmless(
    openai_server: FakeOpenAIServer, tmp_path: Path, stream: bool
) -> None:
    """Tier and provider model names (``Name``: any 1-128 characters) go into the
    ``x-cascade-tier-name`` / ``x-cascade-model`` headers as they are. With a CR or LF in
    one (a TOML ``\\n``, a templated value), aiohttp refuses to write the headers *after*
    the provider was paid: a JSON request's connection is dropped (the SDK retries and
    pays again), and an SSE request gets the 500 of ``handle``'s ``except Exception``
    written as a second response on a connection whose first one had begun: the client
    reads a corrupt HTTP stream. ``cascade check`` / ``serve`` should refuse the name, or
    the header should carry it escaped."""
    from cascade import ConfigError
    from cascade.gateway import load_gateway

    openai_server.default = "ok"
    config = {"tiers": [tier("small\r\nX-Injected: 1", provider("a", openai_server.url, "m1"))]}
    path = write_config(tmp_path / "c.toml", config)
    try:
        load_gateway(path)
    except ConfigError:
        return  # refused at load: fine
    async with serving(path) as gw:
        body = {"model": "cascade", "messages": HI, "stream": stream}
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{gw.base_url}/chat/completions", json=body) as response,
        ):
            await response.read()
            assert response.status == 200
            assert "X-Injected" not in response.headers


async def test_a_route_name_with_a_slash_can_be_retrieved(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Route names may hold ``/`` (``openai/gpt-4o``, as LiteLLM-style clients name models)
    and ``GET /v1/models`` lists them, but ``GET /v1/models/{model}`` matches one path
    segment only: ``client.models.retrieve("org/model")`` is a 404."""
    config = one_tier(openai_server.url, gateway={"routes": [{"name": "org/model"}]})
    async with (
        serving(write_config(tmp_path / "c.toml", config)) as gw,
        aiohttp.ClientSession() as session,
        session.get(f"{gw.base_url}/models/org/model") as response,
    ):
        assert response.status == 200, await response.text()
        assert (await response.json())["id"] == "org/model"


# -- a web page in the operator's browser --------------------------------------------------


async def test_a_cross_site_form_post_does_not_reach_the_provider(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """``cascade serve`` listens on 127.0.0.1 and, without ``[gateway.keys]`` (the default),
    asks for no key. The body is parsed as JSON whatever its ``Content-Type``, so any web
    page the operator visits can make the browser POST a ``text/plain`` "simple request"
    (no CORS preflight) to ``http://127.0.0.1:8000/v1/chat/completions``: the page cannot
    read the answer, but every such request is a paid provider call (a loop of them, the
    operator's bill). A request carrying a foreign ``Origin`` (or a CORS-simple content
    type) should be refused before any provider is called."""
    openai_server.default = "ok"
    async with serving(write_config(tmp_path / "c.toml", one_tier(openai_server.url))) as gw:
        body = json.dumps({"model": "cascade", "messages": HI, "max_tokens": 4000})
        headers = {
            "Origin": "https://evil.example",
            "Content-Type": "text/plain;charset=UTF-8",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "no-cors",
        }
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{gw.base_url}/chat/completions", data=body, headers=headers) as r,
        ):
            await r.read()
        assert openai_server.request_count == 0, f"a cross-site POST was served ({r.status})"
        assert r.status >= 400


# -- status codes --------------------------------------------------------------------------


async def test_a_provider_out_of_local_quota_is_429_with_retry_after_not_502(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """Every provider refused by its own rate limiter (``[tiers.providers.limits]``) is a
    capacity answer like every provider's 429 (which the gateway sends as 429 with
    Retry-After), but ``from_run_error`` only knows ``RateLimited``: ``LimiterTimeout`` is
    a 502 ``all_providers_failed`` without Retry-After (and the SDKs retry a 502 at once,
    into the same empty bucket)."""
    openai_server.default = "ok"
    limits = {"requests_per_minute": 1}
    route = {"name": "cascade", "default": True, "deadline_s": 5.0}  # the next turn: 60 s
    config = one_tier(openai_server.url, limits=limits, gateway={"routes": [route]})
    path = write_config(tmp_path / "c.toml", config)
    async with serving(path) as gw, aiohttp.ClientSession() as session:
        body = {"model": "cascade", "messages": HI}
        async with session.post(f"{gw.base_url}/chat/completions", json=body) as first:
            assert first.status == 200
        async with session.post(f"{gw.base_url}/chat/completions", json=body) as second:
            assert second.status == 429, await second.text()
            assert int(second.headers["Retry-After"]) >= 1


# -- text in the logs ----------------------------------------------------------------------


async def test_an_answers_text_never_reaches_the_log_lines_serve_writes(
    openai_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """``cascade serve`` writes the access line *and* the routing record (``cascade.route``)
    of every run to stdout, "never keys or message text". The routing record's
    ``escalations`` carry each rejected tier's validator reasons, and the json_schema
    validator quotes the offending value: an answer's text (which often repeats the
    user's: names, numbers, secrets from the prompt) lands in the log verbatim whenever
    a request's ``response_format`` rejects it."""
    from structlog.testing import capture_logs

    from .helpers import SCHEMA

    secret = "Jane-Doe-SSN-123-45-6789"
    openai_server.script("m1", Reply(text='{"answer": "' + secret + '"}'))
    openai_server.script("m2", Reply(text='{"answer": 42}'))
    config = {
        "tiers": [
            tier("t1", provider("a", openai_server.url, "m1")),
            tier("t2", provider("b", openai_server.url, "m2")),
        ]
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    async with serving(write_config(tmp_path / "c.toml", config)) as gw:
        with capture_logs() as logs:
            status, _ = await post(gw, {"model": "cascade", "messages": HI, "response_format": fmt})
        assert status == 200
    leaked = [line for line in logs if secret in repr(line)]
    assert not leaked, leaked[0]


async def test_a_client_that_leaves_while_redis_hangs_leaves_no_local_hold(
    redis_bin: str,
) -> None:
    """With the estimate held locally before Redis is awaited, a request cancelled during
    that wait (its client gone) must give the hold back: else the budget shrinks by one
    estimate per such request until the day ends."""
    from cascade.gateway import GatewayKeys, KeyEntry, KeysConfig, hash_key
    from cascade.resilience.shared import SharedState
    from cascade.testing import FakeClock

    from .test_shared_redis import RedisServer, _prefix

    key = "sk-gw-attack-0123456789"
    server = RedisServer(redis_bin)
    server.start()
    try:
        state = SharedState(redis_url=server.url, key_prefix=_prefix(), timeout_s=1.0)
        async with state:
            config = KeysConfig(entries=[KeyEntry(name="t", sha256=hash_key(key), usd_per_day=1.0)])
            keys = GatewayKeys.from_config(config, clock=FakeClock(), shared=state)
            server.pause()
            try:
                admit = asyncio.create_task(
                    keys.admit(key, estimated_tokens=1, estimated_cost_usd=0.9)
                )
                await asyncio.sleep(0.1)
                admit.cancel()
                await asyncio.gather(admit, return_exceptions=True)
            finally:
                server.resume()
            budget = next(iter(keys._by_index.values())).budget
            assert budget is not None
            assert budget._reserved == 0.0
    finally:
        server.kill()
