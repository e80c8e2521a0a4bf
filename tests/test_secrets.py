"""A canary API key must appear in no output a run produces: errors and their chains,
reprs, attempt records, results, spans, the CLI's output; nor any piece of it that a cut
of an echo leaves (8 characters or more)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from cascade import Cascade, RunError
from cascade.providers._http_errors import MAX_ERROR_BODY as _MAX_ERROR_BODY
from cascade.providers._redact import redact
from cascade.testing import FakeAnthropicServer, FakeOpenAIServer, Reply

pytestmark = pytest.mark.anyio

CANARY = "sk-canary-7f3a9c1e5b2d4f6a8c0e"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def _config(openai_url: str, anthropic_url: str) -> dict[str, object]:
    def prov(name: str, url: str, kind: str, model: str) -> dict[str, object]:
        return {"name": name, "kind": kind, "base_url": url, "model": model,
                "api_key_env": "CANARY_KEY", "timeout_s": 1}  # fmt: skip

    return {
        "tiers": [
            {"name": "a", "providers": [prov("o1", openai_url, "openai", "m1"),
                                        prov("o2", openai_url, "openai", "m2")]},
            {"name": "b", "providers": [prov("c1", anthropic_url, "anthropic", "m3")]},
        ]
    }  # fmt: skip


async def test_no_output_of_a_failing_run_contains_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CANARY_KEY", CANARY)
    echo = f"Incorrect API key provided: {CANARY}"
    async with FakeOpenAIServer() as oai, FakeAnthropicServer() as ant:
        oai.script("m1", Reply(status=401, error_message=echo))
        oai.script("m2", Reply(fault="malformed", text="x" * 50))
        ant.script("m3", Reply(status=529, error_message=echo, retry_after_s=1))
        cfg = _config(oai.url, ant.url)
        outputs: list[str] = []
        async with Cascade.from_dict(cfg) as c:
            outputs += [repr(c), repr(dict(c.breakers))]
            outputs += [repr(p) for t in c._tiers for p in t.providers]
            with pytest.raises(RunError) as info:
                await c.run(messages=[{"role": "user", "content": "hi"}])
        err = info.value
        for exc in _chain(err):
            outputs += [str(exc), repr(exc), repr(vars(exc))]
        outputs.append(msgspec.json.encode(err.attempts).decode())
        outputs.append(repr(err.attempts))
        # the same run through the CLI, as a user would see it
        (tmp_path / "c.toml").write_text(_toml(cfg))
        # anyio.run_process, not subprocess.run: the fake servers answer from this loop
        done = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "cascade._cli",
                "run",
                "--config",
                str(tmp_path / "c.toml"),
                "hi",
            ],
            check=False,
            env=_env(CANARY_KEY=CANARY),
        )
        proc = subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
        )
        outputs += [proc.stdout, proc.stderr]
        # the servers did receive it: the canary is real, and the check is not vacuous
        assert any(r.headers.get("authorization") == f"Bearer {CANARY}" for r in oai.requests)
        assert any(r.headers.get("x-api-key") == CANARY for r in ant.requests)
    assert proc.returncode == 1 and "AllProvidersFailed" in proc.stderr
    assert "HTTP 401" in proc.stderr and "HTTP 529" in proc.stderr  # the scripted failures
    assert "Incorrect API key provided: ***" in "\n".join(outputs)  # redacted, not dropped
    for text in outputs:
        assert CANARY not in text


def _env(**values: str) -> dict[str, str]:
    """A bare environment for the CLI, keeping PYTHONPATH (the code under test)."""
    env = {"PATH": "/usr/bin:/bin", **values}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


def _toml(cfg: dict[str, object]) -> str:
    lines = []
    for tier in cfg["tiers"]:  # type: ignore[attr-defined]
        lines.append(f'[[tiers]]\nname = "{tier["name"]}"')
        for p in tier["providers"]:
            lines.append("[[tiers.providers]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
    return "\n".join(lines) + "\n"


# --- pieces of the key left by a cut, and keys echoed in what a success carries -------------


def _pieces(text: str) -> list[str]:
    """Every piece of the canary of 8 characters or more that ``text`` holds."""
    return [CANARY[i : i + 8] for i in range(len(CANARY) - 7) if CANARY[i : i + 8] in text]


@pytest.mark.parametrize("cut", range(len(CANARY) + 1))
def test_redact_leaves_no_piece_of_the_key_at_a_cut(cut: int) -> None:
    text = "x" * 50 + CANARY + " and again " + CANARY + "y" * 50
    head, tail = text[: 50 + cut], text[50 + cut :]
    for part in (head, tail, text, head + "z" + tail):
        shown = redact(part, CANARY)
        assert _pieces(shown) == []
    assert redact("sk-can and 7f3a9c1", CANARY) == "sk-can and 7f3a9c1"  # 6 and 7: kept
    assert redact(f"a{CANARY}b", CANARY) == "a***b"
    assert redact(f"{CANARY[:20]}|{CANARY[10:]}", CANARY) == "***|***"


@pytest.mark.parametrize("shown_chars", [8, 15, 28])
async def test_an_error_event_cut_after_redaction(
    openai_server: FakeOpenAIServer, shown_chars: int
) -> None:
    """The report's case: an SSE error event cut to 200 characters before redaction showed
    28 of the key's 30 characters."""
    message = "e" * (200 - shown_chars) + CANARY + " tail"
    openai_server.script("m1", Reply(text="x" * 20, fault="error_event",
                                     named_error_event=True, error_message=message))  # fmt: skip
    cfg = {"tiers": [{"name": "t", "providers": [
        {"name": "p", "kind": "openai", "base_url": openai_server.url, "model": "m1",
         "stream": True, "api_key_env": "CANARY_KEY"}]}]}  # fmt: skip
    async with Cascade.from_dict(cfg, environ={"CANARY_KEY": CANARY}) as c:
        with pytest.raises(RunError) as info:
            await c.run(messages=[{"role": "user", "content": "hi"}])
    outputs = [str(e) for e in _chain(info.value)]
    outputs.append(msgspec.json.encode(info.value.attempts).decode())
    assert "error event in stream: eee" in outputs[0]  # the event is reported...
    for text in outputs:
        assert _pieces(text) == []  # ... with no piece of the key


@pytest.mark.parametrize("shown_chars", [8, 15, 29])
async def test_an_error_body_cut_at_its_limit_shows_no_piece_of_the_key(
    openai_server: FakeOpenAIServer, shown_chars: int
) -> None:
    prefix = len(b'{"error":{"message":"')  # how the fake server's error body starts
    message = "e" * (_MAX_ERROR_BODY - prefix - shown_chars) + CANARY + "tail"
    openai_server.script("m1", Reply(status=500, error_message=message))
    cfg = {"tiers": [{"name": "t", "providers": [
        {"name": "p", "kind": "openai", "base_url": openai_server.url, "model": "m1",
         "api_key_env": "CANARY_KEY"}]}]}  # fmt: skip
    async with Cascade.from_dict(cfg, environ={"CANARY_KEY": CANARY}) as c:
        with pytest.raises(RunError) as info:
            await c.run(messages=[{"role": "user", "content": "hi"}])
    outputs = [f"{e} {vars(e)!r}" for e in _chain(info.value)]
    assert "HTTP 500" in outputs[0]
    for text in outputs:
        assert _pieces(text) == []


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_a_key_echoed_in_the_response_model_is_redacted_everywhere(
    kind: str, stream: bool, tmp_path: Path
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    server = FakeOpenAIServer() if kind == "openai" else FakeAnthropicServer()
    async with server:
        server.default = Reply(text="Paris", model=f"model-{CANARY}-echo")
        prov = {"name": "p", "kind": kind, "base_url": server.url, "model": "m1",
                "stream": stream, "api_key_env": "CANARY_KEY"}  # fmt: skip
        cfg = {"tiers": [{"name": "t", "providers": [prov]}]}
        async with Cascade.from_dict(
            cfg, environ={"CANARY_KEY": CANARY}, tracer_provider=tracer_provider
        ) as c:
            result = await c.run(messages=[{"role": "user", "content": "hi"}])
        (tmp_path / "c.toml").write_text(_toml(cfg))
        done = await anyio.run_process(
            [sys.executable, "-m", "cascade._cli", "run", "--json",
             "--config", str(tmp_path / "c.toml"), "hi"],
            check=False,
            env=_env(CANARY_KEY=CANARY),
        )  # fmt: skip
    tracer_provider.shutdown()
    assert done.returncode == 0, done.stderr.decode()
    completion = result.attempts[0].completion
    assert completion is not None
    assert completion.model == "model-***-echo"  # redacted, not dropped
    attributes = [dict(s.attributes or {}) for s in exporter.get_finished_spans()]
    assert any(a.get("gen_ai.response.model") == "model-***-echo" for a in attributes)
    outputs = [msgspec.json.encode(result).decode(), repr(attributes), done.stdout.decode()]
    outputs.append(done.stderr.decode())
    assert "model-***-echo" in outputs[-2]  # the CLI's --json
    for text in outputs:
        assert _pieces(text) == []


@pytest.mark.parametrize("stream", [False, True])
async def test_a_key_echoed_in_a_refusal_is_redacted(stream: bool) -> None:
    key = CANARY
    async with FakeOpenAIServer() as refuser, FakeOpenAIServer() as other:
        refuser.default = Reply(refusal=f"I can't help; your key {key} is not allowed")
        other.default = Reply(text="ok")
        cfg = {
            "tiers": [
                {"name": "a", "providers": [
                    {"name": "p", "kind": "openai", "base_url": refuser.url, "model": "m",
                     "api_key_env": "K", "stream": stream}]},
                {"name": "b", "providers": [
                    {"name": "q", "kind": "openai", "base_url": other.url, "model": "m"}]},
            ]
        }  # fmt: skip
        async with Cascade.from_dict(cfg, environ={"K": key}) as c:
            result = await c.run(messages=[{"role": "user", "content": "hi"}])
    assert result.text == "ok"
    refused = result.attempts[0]
    assert refused.verdicts[0].validator == "refusal"
    assert "your key" in refused.verdicts[0].reason
    assert _pieces(repr(result)) == []
