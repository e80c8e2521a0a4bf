"""Run a fake provider server: ``python -m cascade.testing {openai,anthropic}``.

Prints one line, ``listening on <url>``, once bound, then serves the same
answer for every model until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
from collections.abc import Sequence

from cascade.testing._anthropic import FakeAnthropicServer
from cascade.testing._openai import FakeOpenAIServer
from cascade.testing._reply import Reply
from cascade.testing._server import FakeServer

_SERVERS: dict[str, type[FakeServer]] = {
    "openai": FakeOpenAIServer,
    "anthropic": FakeAnthropicServer,
}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cascade.testing",
        description="Serve a fake LLM provider API on loopback until interrupted.",
    )
    parser.add_argument("api", choices=sorted(_SERVERS), help="wire format to speak")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    parser.add_argument("--text", default="Hello from cascade.testing.", help="answer text")
    parser.add_argument(
        "--latency-s", type=float, default=0.0, help="delay before each response, seconds"
    )
    return parser


async def _serve(server: FakeServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        print(f"listening on {server.url}", flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m cascade.testing``; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not _is_loopback(args.host):
        parser.error(
            f"--host {args.host!r} is not a loopback address; the fake servers "
            "only bind 127.0.0.0/8, ::1 or localhost"
        )
    if args.latency_s < 0:
        parser.error("--latency-s must be >= 0")
    server = _SERVERS[args.api](
        host=args.host,
        port=args.port,
        default=Reply(text=args.text, latency_s=args.latency_s),
        record=False,
    )
    asyncio.run(_serve(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
