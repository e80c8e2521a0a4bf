"""An escalated run's trace in Arize Phoenix, end to end, checked through Phoenix's REST API.

Starts Phoenix on loopback (free ports, a throw-away working directory), runs
``cascade run`` once against cascade's fake OpenAI server (no API keys: the small tier
answers in prose, its JSON Schema validator rejects it, the large tier answers in JSON) with
its spans exported to Phoenix by the standard ``OTEL_*`` variables and the OpenInference
option on (``[telemetry] semconv``), then reads the trace back from
``GET /v1/projects/{project}/spans`` and prints it as Phoenix returns it. It checks the
tree (``cascade.run`` > ``cascade.tier small`` > ``chat gpt-4o-mini``, ``cascade.run`` >
``cascade.tier large`` > ``chat gpt-4o``), the span kinds (CHAIN, LLM), the statuses (OK)
and the cost on each call. ``--screenshot PATH`` also saves the trace's page in Phoenix's
UI, rendered by headless Chromium. Phoenix is stopped on the way out, whatever happens.

Not run in CI (it needs Phoenix: ``pip install arize-phoenix``, best in a venv of its own)::

    python examples/phoenix/check_trace.py --phoenix /path/to/venv/bin/phoenix \\
        --screenshot docs/phoenix-escalated-trace.png

Exit status: 0 when every check holds, 1 when one does not, 2 when something it needs is
missing (Phoenix, Chromium) or an argument is wrong.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

PROJECT = "cascade-phoenix-check"
SMALL, LARGE = "gpt-4o-mini", "gpt-4o"
EXPECTED = [
    (0, "cascade.run", "CHAIN"),
    (1, "cascade.tier small", "CHAIN"),
    (2, f"chat {SMALL}", "LLM"),
    (1, "cascade.tier large", "CHAIN"),
    (2, f"chat {LARGE}", "LLM"),
]
PROMPT = "What is 6 * 7? Answer as JSON."
CONFIG = Path(__file__).with_name("escalated.toml")  # the walkthrough's, server URL replaced
CONFIG_URL = "http://127.0.0.1:8931/v1"


class Missing(Exception):
    """Something the check needs is not there (exit status 2)."""


class Mismatch(Exception):
    """Phoenix did not show what it should (exit status 1)."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Check an escalated cascade run's trace in Arize Phoenix, end to end."
    )
    parser.add_argument(
        "--phoenix", default="phoenix", help="the phoenix executable (default: phoenix on PATH)"
    )
    parser.add_argument("--screenshot", metavar="PATH", help="save the trace's page as a PNG")
    parser.add_argument(
        "--chromium", default="chromium", help="Chromium, for --screenshot (default: chromium)"
    )
    parser.add_argument(
        "--startup-timeout-s",
        type=float,
        default=180.0,
        help="how long Phoenix may take to start (default 180)",
    )
    args = parser.parse_args(argv)
    if not 0 < args.startup_timeout_s <= 3600:
        parser.error("--startup-timeout-s must be in (0, 3600]")
    return args


def executable(name: str, what: str, hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise Missing(f"{what} executable not found: {name!r} ({hint})")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def get(url: str, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """GET ``url`` (Phoenix, on loopback): (status, body); status 0 when nothing answered."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
            return response.status, response.read(16 << 20)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, b""
    except OSError:  # refused, reset, timed out (URLError is one)
        return 0, b""


def get_json(url: str) -> Any:
    status, body = get(url)
    if status != 200:
        raise Mismatch(f"GET {url}: status {status}")
    return json.loads(body)


class Phoenix:
    """``phoenix serve`` on loopback in a session of its own, stopped on exit."""

    def __init__(self, exe: str, workdir: Path) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "phoenix.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "PHOENIX_"))}
        env.update(
            PHOENIX_HOST="127.0.0.1",
            PHOENIX_PORT=str(self.port),
            PHOENIX_GRPC_PORT=str(self.grpc_port),
            PHOENIX_WORKING_DIR=str(workdir / "phoenix"),
            PHOENIX_TELEMETRY_ENABLED="false",
            PHOENIX_ALLOW_EXTERNAL_RESOURCES="false",
        )
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603
            [exe, "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped whole, below
        )

    def __enter__(self) -> Phoenix:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def wait_ready(self, timeout_s: float) -> None:
        stop = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise Missing(f"phoenix exited ({self.process.returncode}):\n{self.log_tail()}")
            if get(f"{self.url}/healthz", timeout_s=2)[0] == 200:
                return
            if time.monotonic() > stop:
                raise Missing(f"phoenix not ready after {timeout_s:g} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, lines: int = 20) -> str:
        self._log.flush()
        text = self.log_path.read_bytes()[-(1 << 16) :].decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


async def escalated_run(phoenix_url: str, workdir: Path) -> dict[str, Any]:
    """``cascade run`` against a fake OpenAI server in this process, traced to Phoenix;
    the result as ``--json`` prints it."""
    from cascade.testing import FakeOpenAIServer

    async with FakeOpenAIServer() as server:
        server.script(SMALL, "Sure. The answer is 42.")
        server.script(LARGE, '{"answer": 42}')
        text = CONFIG.read_text()
        if CONFIG_URL not in text:
            raise Missing(f"{CONFIG} no longer names {CONFIG_URL}: update CONFIG_URL")
        config = workdir / "cascade.toml"
        config.write_text(text.replace(CONFIG_URL, server.url))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CASCADE_"))}
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=phoenix_url,  # OTLP/HTTP: Phoenix's /v1/traces
            OTEL_TRACES_EXPORTER="otlp",
            OTEL_METRICS_EXPORTER="none",  # Phoenix takes traces only
            OTEL_LOGS_EXPORTER="none",
            OTEL_SERVICE_NAME="cascade-phoenix-check",
            OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={PROJECT}",
        )
        command = [sys.executable, "-m", "cascade._cli", "run", "--json"]
        process = await asyncio.create_subprocess_exec(
            *command,
            "--config",
            str(config),
            PROMPT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), 60)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise Mismatch("cascade run did not finish within 60 s") from None
    if process.returncode != 0:
        raise Mismatch(f"cascade run failed ({process.returncode}):\n{err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    return result


def trace_spans(base: str, timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """The project's spans once its trace has all of them (Phoenix ingests in batches)."""
    url = f"{base}/v1/projects/{urllib.parse.quote(PROJECT)}/spans?limit=100"
    stop = time.monotonic() + timeout_s
    spans: list[dict[str, Any]] = []
    while True:
        status, body = get(url)
        if status == 200:
            spans = json.loads(body)["data"]
            if len(spans) >= len(EXPECTED):
                return spans
        elif status != 404:  # 404: the project is made with its first span
            raise Mismatch(f"GET {url}: status {status}")
        if time.monotonic() > stop:
            raise Mismatch(f"{len(spans)} spans in Phoenix after {timeout_s:g} s, not 5")
        time.sleep(0.5)


def tree(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """Depth first from the roots by the parent links Phoenix returned, in start order."""
    ids = {s["context"]["span_id"] for s in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for s in spans:
        parent = s["parent_id"] if s["parent_id"] in ids else None
        children.setdefault(parent, []).append(s)
    out: list[tuple[int, dict[str, Any]]] = []

    def walk(parent: str | None, depth: int) -> None:
        for s in sorted(children.get(parent, []), key=lambda s: s["start_time"]):
            out.append((depth, s))
            walk(s["context"]["span_id"], depth + 1)

    walk(None, 0)
    return out


def show(spans: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    names = {s["context"]["span_id"]: s["name"] for s in spans}
    print(f"Phoenix returned {len(spans)} spans (trace {spans[0]['context']['trace_id']}):")
    print(f"  {'span_id':16}  {'parent_id':16}  name  (parent)")
    for s in spans:
        parent = s["parent_id"]
        link = f"(child of {names.get(parent, '?')})" if parent else "(root)"
        print(f"  {s['context']['span_id']:16}  {parent or '-':16}  {s['name']}  {link}")
    ordered = tree(spans)
    print("as a tree:")
    for depth, s in ordered:
        a = s["attributes"]
        extra = ""
        if s["span_kind"] == "LLM":
            extra = (
                f"  model={a.get('llm.model_name')} tokens={a.get('llm.token_count.total')}"
                f" cost=${a.get('llm.cost.total', 0):.8f}"
            )
        elif "cascade.tier.outcome" in a:
            extra = f"  outcome={a['cascade.tier.outcome']}"
        label = f"{'  ' * depth}{s['name']}"
        print(f"  {label:28} {s['span_kind']:6} {s['status_code']:5}{extra}")
    return ordered


def check(ordered: list[tuple[int, dict[str, Any]]], result: dict[str, Any]) -> list[str]:
    problems = []
    got = [(d, s["name"], s["span_kind"]) for d, s in ordered]
    if got != EXPECTED:
        problems.append(f"tree {got} != {EXPECTED}")
    if len({s["context"]["trace_id"] for _, s in ordered}) != 1:
        problems.append("the spans are not one trace")
    for _, s in ordered:
        if s["status_code"] != "OK":
            problems.append(f"{s['name']}: status {s['status_code']}, not OK")
    calls = [s for _, s in ordered if s["span_kind"] == "LLM"]
    for s in calls:
        if not s["attributes"].get("llm.cost.total", 0) > 0:
            problems.append(f"{s['name']}: no llm.cost.total")
    cost = sum(s["attributes"].get("llm.cost.total", 0) for s in calls)
    if abs(cost - result["cost_usd"]) > 1e-12:
        problems.append(
            f"the calls' llm.cost.total add up to {cost}, the run cost {result['cost_usd']}"
        )
    if (result["tier_name"], result["model"]) != ("large", LARGE):
        problems.append(f"the run answered from {result['tier_name']}, not the large tier")
    return problems


def screenshot(chromium: str, url: str, path: Path, workdir: Path) -> None:
    """Render the trace's page headless: check that it shows the spans, then save it."""
    base = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={workdir / 'chromium'}",
        "--window-size=1600,1000",
        "--virtual-time-budget=15000",
    ]
    dom = subprocess.run(  # noqa: S603
        [*base, "--dump-dom", url], capture_output=True, timeout=120, check=False
    ).stdout.decode(errors="replace")
    missing = [name for _, name, _ in EXPECTED if name not in dom]
    if missing:
        raise Mismatch(f"the trace page {url} does not show {missing}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    subprocess.run(  # noqa: S603
        [*base, f"--screenshot={path}", url], capture_output=True, timeout=120, check=False
    )
    if not path.exists() or path.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
        raise Mismatch(f"chromium wrote no PNG to {path}")
    print(f"screenshot of {url}: {path} ({path.stat().st_size} bytes)")


def _terminated(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops Phoenix


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started ignoring it
    try:
        exe = executable(args.phoenix, "phoenix", "pip install arize-phoenix, or --phoenix PATH")
        chromium = None
        if args.screenshot:
            chromium = executable(args.chromium, "chromium", "install it, or --chromium PATH")
        with tempfile.TemporaryDirectory(prefix="cascade-phoenix-") as tmp:
            workdir = Path(tmp)
            with Phoenix(exe, workdir) as phoenix:
                t0 = time.monotonic()
                phoenix.wait_ready(args.startup_timeout_s)
                print(f"Phoenix up on {phoenix.url} after {time.monotonic() - t0:.1f} s")
                result = asyncio.run(escalated_run(phoenix.url, workdir))
                print(
                    f"cascade run: tier {result['tier_name']} ({result['model']}), "
                    f"cost ${result['cost_usd']:.8f}, {len(result['attempts'])} attempts"
                )
                spans = trace_spans(phoenix.url)
                problems = check(show(spans), result)
                if chromium is not None and not problems:
                    projects = get_json(f"{phoenix.url}/v1/projects")
                    project_id = next(p["id"] for p in projects["data"] if p["name"] == PROJECT)
                    trace_id = spans[0]["context"]["trace_id"]
                    url = f"{phoenix.url}/projects/{project_id}/traces/{trace_id}"
                    screenshot(chromium, url, Path(args.screenshot), workdir)
    except Missing as exc:
        print(f"check_trace: {exc}", file=sys.stderr)
        return 2
    except Mismatch as exc:
        print(f"check_trace: FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("check_trace: interrupted (Phoenix stopped)", file=sys.stderr)
        return 130
    if problems:
        for p in problems:
            print(f"check_trace: FAILED: {p}", file=sys.stderr)
        return 1
    print("check_trace: OK (the escalated trace, its kinds, statuses and costs, as Phoenix shows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
