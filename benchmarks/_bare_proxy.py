"""The least an aiohttp gateway can do, for scale beside ``cascade serve``.

    python benchmarks/_bare_proxy.py UPSTREAM [--loop asyncio|uvloop]

One aiohttp server on a free loopback port: ``POST /v1/chat/completions`` is forwarded to
``UPSTREAM`` (a ``/v1`` URL) with one pooled client session, the request body as it came,
and the answer passed back, a JSON body whole or an SSE stream piece by piece as it arrives. No
parsing, no checks, no log, no headers of its own: what one more loopback hop through
aiohttp's server and client costs on this machine. Prints ``listening on URL`` once bound;
exits when its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

import aiohttp
from aiohttp import web


async def serve(upstream: str) -> None:
    endpoint = upstream + "/chat/completions"
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        headers = {"Content-Type": "application/json"}
        async with session.post(endpoint, data=body, headers=headers) as up:
            if up.content_type != "text/event-stream":
                return web.Response(
                    body=await up.read(), status=up.status, content_type=up.content_type
                )
            response = web.StreamResponse(status=up.status)
            response.content_type = "text/event-stream"
            await response.prepare(request)
            with contextlib.suppress(ConnectionResetError):  # the client left
                async for piece in up.content.iter_any():
                    await response.write(piece)
                await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
    finally:
        await runner.cleanup()
        await session.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upstream")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(serve(args.upstream))
    else:
        asyncio.run(serve(args.upstream))


if __name__ == "__main__":
    main()
