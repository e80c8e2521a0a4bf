"""A canary API key must appear in no output a failing run produces: errors and their
chains, reprs, attempt records, the CLI's output. (Logs and spans come with tracing.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anyio
import msgspec
import pytest

from cascade import Cascade, RunError
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
            env={"CANARY_KEY": CANARY, "PATH": "/usr/bin:/bin"},
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


def _toml(cfg: dict[str, object]) -> str:
    lines = []
    for tier in cfg["tiers"]:  # type: ignore[attr-defined]
        lines.append(f'[[tiers]]\nname = "{tier["name"]}"')
        for p in tier["providers"]:
            lines.append("[[tiers.providers]]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in p.items()]
    return "\n".join(lines) + "\n"
