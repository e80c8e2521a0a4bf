"""Memory ceiling under hostile bodies: what ``max_response_bytes`` holds a process to.

    python benchmarks/response_limits.py [--cap BYTES] [--json]

A fake OpenAI-compatible server (in this process, on loopback) serves one healthy model and
hostile ones: a 1 GiB JSON body, an endless SSE stream, a gzip bomb (1 GiB of spaces inside
a valid JSON answer, about 1 MB on the wire) as a whole body and as one SSE event; an answer
just under the cap on the wire whose one emoji makes its text 4 bytes a character (whole and
streamed); and answers full of token logprobs: streamed with their text (``logprobs_sse``,
under the cap decoded, so it is accepted) and all in one SSE event (``logprobs_event``).
Each case runs in a fresh child process, so its memory is measured alone: the child
warms up (imports, one healthy run), resets its peak RSS (``/proc/self/clear_refs``), runs
one request through two tiers (tier 1 the case's model with ``max_response_bytes = cap``,
tier 2 healthy) and reports its peak RSS (``VmHWM``) less its RSS before the run. The case
``nothing`` (tier 1 healthy too) is the baseline. Every case must grow RSS by under 3x the
cap, and each hostile one (all but ``nothing`` and ``logprobs_sse``) end in a
``ResponseTooLarge`` attempt and the answer from tier 2; the script exits 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CASES: dict[str, tuple[str, bool]] = {
    # case: (model, stream)
    "nothing": ("healthy", False),
    "huge_json": ("huge", False),
    "endless_sse": ("endless", True),
    "gzip_bomb_json": ("bomb", False),
    "gzip_bomb_sse": ("bomb", True),
    "emoji_json": ("emoji", False),
    "emoji_sse": ("emoji", True),
    "logprobs_sse": ("logprobs", True),
    "logprobs_event": ("logprobs_event", True),
}
ACCEPTED = {"nothing", "logprobs_sse"}  # the others must fail over (ResponseTooLarge)
EMOJI = "\U0001f600"
WIRE_TOKEN = 70  # bytes of one logprob entry on the wire (the fake's), a little over
DEFAULT_CAP = 8 * 1024 * 1024
CEILING = 3  # times the cap


def _status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    if match is None:
        raise RuntimeError(f"no {field} in /proc/self/status")
    return int(match.group(1))


def _reset_peak() -> bool:
    """Set the peak RSS to the current RSS (Linux >= 4.0). Without it, the growth reported
    is the peak since start less the RSS before the run: an upper bound."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _config(url: str, model: str, *, stream: bool, cap: int) -> dict[str, Any]:
    def provider(name: str, model: str) -> dict[str, Any]:
        return {"name": name, "kind": "openai", "base_url": url, "model": model,
                "stream": stream, "timeout_s": 60, "max_response_bytes": cap}  # fmt: skip

    return {
        "tiers": [
            {"name": "one", "providers": [provider("first", model)]},
            {"name": "two", "providers": [provider("second", "healthy")]},
        ]
    }


async def _child(case: str, url: str, cap: int) -> dict[str, Any]:
    import cascade

    model, stream = CASES[case]
    options = cascade.RequestOptions(logprobs=True) if "logprobs" in case else None
    async with cascade.Cascade.from_dict(_config(url, "healthy", stream=stream, cap=cap)) as c:
        await c.run(messages=[{"role": "user", "content": "warm up"}])
    async with cascade.Cascade.from_dict(_config(url, model, stream=stream, cap=cap)) as c:
        # pool, parsers (the scripted model answers the first request well)
        await c.run(messages=[{"role": "user", "content": "warm up"}], options=options)
        rss = _status_kib("VmRSS")
        reset = _reset_peak()
        start = time.perf_counter()
        result = await c.run(messages=[{"role": "user", "content": "hi"}], options=options)
        seconds = time.perf_counter() - start
        peak = _status_kib("VmHWM")
    return {
        "case": case,
        "rss_before_kib": rss,
        "growth_kib": max(0, peak - rss),
        "peak_reset": reset,
        "seconds": round(seconds, 3),
        "answered_by": result.provider,
        "first_attempt": result.attempts[0].error_type or "ok",
    }


async def _serve(cap: int) -> list[dict[str, Any]]:
    from cascade.testing import FakeOpenAIServer, Reply

    async with FakeOpenAIServer(record=False) as server:
        server.script("healthy", "42")
        server.script("huge", Reply(text="x", fault="huge"))
        server.script("endless", Reply(text="all work and no play ", fault="endless"))
        server.script("bomb", Reply(text="x", fault="gzip_bomb"))
        # Under the cap on the wire (the stream's events add ~250 bytes each).
        emoji = "a" * (cap - 128 * 1024) + EMOJI
        server.script("emoji", "warm", Reply(text=emoji, chunk_chars=65_000))
        n = cap // WIRE_TOKEN
        many = Reply(text="a" * n, logprobs=(-0.5,) * n, chunk_chars=4_000)
        server.script("logprobs", "warm", many)
        server.script("logprobs_event", "warm", Reply(text="", logprobs=(-0.5,) * n))
        rows = []
        for case in CASES:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, __file__, "--child", case, "--url", server.url,
                "--cap", str(cap), stdout=subprocess.PIPE,
            )  # fmt: skip
            out, _ = await proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"case {case}: child exited {proc.returncode}")
            rows.append(json.loads(out))
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=DEFAULT_CAP, help="max_response_bytes")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(_child(args.child, args.url, args.cap))))
        return 0
    rows = asyncio.run(_serve(args.cap))
    ceiling_kib = CEILING * args.cap // 1024
    baseline = rows[0]["growth_kib"]
    misses = 0
    for row in rows:
        hostile = row["case"] not in ACCEPTED
        ok = row["growth_kib"] < ceiling_kib
        if hostile:
            ok = ok and row["first_attempt"] == "ResponseTooLarge"
            ok = ok and row["answered_by"] == "second"
        row["verdict"] = "PASS" if ok else "MISS"
        misses += not ok
    if args.json:
        print(json.dumps({"cap": args.cap, "ceiling_kib": ceiling_kib, "rows": rows}, indent=2))
    else:
        print(f"max_response_bytes = {args.cap} ({args.cap / 2**20:g} MiB); "
              f"ceiling: RSS growth < {CEILING}x = {ceiling_kib / 1024:g} MiB")  # fmt: skip
        print(f"{'case':<16}{'growth MiB':>11}{'vs nothing':>12}{'x cap':>7}  "
              f"{'tier 1 attempt':<18}{'answer':<8}{'s':>7}  verdict")  # fmt: skip
        for row in rows:
            growth = row["growth_kib"] / 1024
            print(f"{row['case']:<16}{growth:>11.1f}{growth - baseline / 1024:>+12.1f}"
                  f"{row['growth_kib'] * 1024 / args.cap:>7.2f}  {row['first_attempt']:<18}"
                  f"{row['answered_by']:<8}{row['seconds']:>7.2f}  {row['verdict']}")  # fmt: skip
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
