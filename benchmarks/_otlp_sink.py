"""A loopback OTLP/HTTP sink for the tracing benchmark: accepts ``/v1/traces`` and
``/v1/metrics`` and drops them, answering as a Collector does. Run in a child process:

    python benchmarks/_otlp_sink.py      # prints "listening on http://127.0.0.1:PORT"
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from aiohttp import web

_PROTOBUF = "application/x-protobuf"


async def _accept(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b"", content_type=_PROTOBUF)  # an empty Export*ServiceResponse


async def _serve() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", _accept)
    app.router.add_post("/v1/metrics", _accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    await asyncio.Event().wait()


@contextmanager
def otlp_sink() -> Iterator[str]:
    """Run the sink in a child process; yield its base URL (OTEL_EXPORTER_OTLP_ENDPOINT)."""
    proc = subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            raise RuntimeError(f"OTLP sink did not start (exit {proc.poll()}): {line!r}")
        yield line.removeprefix("listening on ")
    finally:
        proc.terminate()
        proc.wait(5)


if __name__ == "__main__":
    with suppress(KeyboardInterrupt):
        asyncio.run(_serve())
