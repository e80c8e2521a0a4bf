"""``cascade serve`` (the gateway process: its event loop and its access log) and
``cascade hash-key``. Nothing here imports aiohttp.web until the command runs."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from ._config import in_file
from ._errors import InputError
from ._telemetry import add_trace_ids

if TYPE_CHECKING:
    from .gateway._log_writer import LineWriter

__all__ = ["LOOPS", "access_log_to_stdout", "hash_key_command", "serve_command"]

LOOPS = ("auto", "asyncio", "uvloop")
"""``serve --loop``'s choices."""


def access_log_to_stdout() -> LineWriter:
    """``cascade serve`` writes one JSON line per request (``gateway.request``) and per run
    (the routing record) to standard output, with trace ids; never keys or message text.
    The lines are written by a thread: a slow reader of the output drops lines (counted),
    it never holds a request."""
    from ._telemetry._logs import write_directly
    from .gateway._log_writer import DirectLines, LineWriter, UTCStamper, render_json

    writer = LineWriter(sys.stdout)
    processors: list[Any] = [
        structlog.processors.add_log_level,
        UTCStamper(),  # TimeStamper(fmt="iso")'s text, at half its cost
        add_trace_ids,
        structlog.processors.format_exc_info,
        render_json,
    ]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=lambda *args: writer,  # the writer is the logger: a line, queued
        cache_logger_on_first_use=True,
    )
    # cascade's own lines through the same processors, without a bound logger per line
    write_directly(DirectLines(writer, processors))
    return writer


def serve_command(args: argparse.Namespace) -> int:
    from .gateway import serve  # aiohttp.web only for this command

    if not 0 <= args.port <= 65535:
        raise InputError("expected a port from 0 to 65535", path="--port")
    use_uvloop = _use_uvloop(args.loop)
    with in_file(args.config):
        anyio.run(
            lambda: serve(args.config, host=args.host, port=args.port),
            backend_options={"use_uvloop": use_uvloop},
        )
    return 0


def _use_uvloop(choice: str) -> bool:
    """``serve --loop``: uvloop, when asked for or (``auto``) installed. The gateway's own
    time per request is mostly the event loop's and aiohttp's; uvloop runs the loop and
    the sockets' transports in C."""
    if choice == "asyncio":
        return False
    installed = sys.platform != "win32" and importlib.util.find_spec("uvloop") is not None
    if choice == "uvloop" and not installed:
        raise InputError(
            "uvloop is not installed (pip install 'cascade-engine[uvloop]')", path="--loop"
        )
    return installed


def hash_key_command() -> int:
    """The key from stdin (one line; kept off the command line and its history)."""
    from .gateway._keys_config import KEY_CHARS, MAX_KEY_CHARS, hash_key

    key = sys.stdin.readline(MAX_KEY_CHARS + 2).rstrip("\r\n")
    if not KEY_CHARS.fullmatch(key) or len(key) > MAX_KEY_CHARS:
        raise InputError(
            f"expected one key on stdin: printable ASCII, no spaces, {MAX_KEY_CHARS} at most"
        )
    print(hash_key(key))
    return 0
