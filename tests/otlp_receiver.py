"""An OTLP/HTTP receiver for the tests: an aiohttp server on loopback, in its own thread.

It decodes ``POST /v1/traces`` (``ExportTraceServiceRequest``), ``POST /v1/metrics``
(``ExportMetricsServiceRequest``) and ``POST /v1/logs`` (``ExportLogsServiceRequest``) with
opentelemetry-proto, as a Collector would. It runs
on a thread of its own so that an exporter flushing synchronously (``force_flush`` from
the test's event loop, or the CLI in a subprocess) never waits on the loop it blocks.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

PROTOBUF = "application/x-protobuf"


def any_value(value: AnyValue) -> Any:
    """A protobuf ``AnyValue`` as the Python value it carries."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return None if kind is None else getattr(value, kind)


def attributes(item: Any) -> dict[str, Any]:
    """The attributes of a decoded span, event, resource or data point as a dict."""
    return {kv.key: any_value(kv.value) for kv in item.attributes}


class OTLPReceiver:
    """``with OTLPReceiver() as receiver:`` then export to ``receiver.url``."""

    def __init__(self) -> None:
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.logs: list[ExportLogsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._port = 0
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value of ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
        return f"http://127.0.0.1:{self._port}"

    def spans(self) -> list[tuple[Span, dict[str, Any]]]:
        """Every span received, with its resource's attributes."""
        with self._lock:
            requests = list(self.traces)
        return [
            (span, attributes(rs.resource))
            for request in requests
            for rs in request.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def log_records(self) -> list[LogRecord]:
        """Every log record received."""
        with self._lock:
            requests = list(self.logs)
        return [
            record
            for request in requests
            for rl in request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]

    def metric_names(self) -> set[str]:
        with self._lock:
            requests = list(self.metrics)
        return {
            m.name
            for request in requests
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        }

    def wait_for(self, check: Callable[[], bool], timeout_s: float = 10.0) -> None:
        """Poll ``check`` until it holds (exports arrive from other threads/processes)."""
        stop = time.monotonic() + timeout_s
        while not check():
            if time.monotonic() > stop:
                raise AssertionError("the OTLP receiver did not get the expected data in time")
            time.sleep(0.02)

    async def _traces(self, request: web.Request) -> web.Response:
        message = ExportTraceServiceRequest()
        return await self._decode(request, message, self.traces, ExportTraceServiceResponse())

    async def _metrics(self, request: web.Request) -> web.Response:
        message = ExportMetricsServiceRequest()
        return await self._decode(request, message, self.metrics, ExportMetricsServiceResponse())

    async def _logs(self, request: web.Request) -> web.Response:
        message = ExportLogsServiceRequest()
        return await self._decode(request, message, self.logs, ExportLogsServiceResponse())

    async def _decode(
        self, request: web.Request, message: Any, into: list[Any], reply: Any
    ) -> web.Response:
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        try:
            message.ParseFromString(body)
        except DecodeError as exc:
            return web.Response(status=400, text=str(exc))
        with self._lock:
            into.append(message)
            self.headers.append(dict(request.headers))
        return web.Response(body=reply.SerializeToString(), content_type=PROTOBUF)

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        app.router.add_post("/v1/logs", self._logs)
        runner = web.AppRunner(app)
        self._runner = runner
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._serve, name="otlp-receiver", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the OTLP receiver did not start")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None and self._thread is not None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def span_tree(spans: list[Span]) -> Iterator[tuple[int, Span]]:
    """Spans depth first from their roots, with their depth (children in start order)."""
    ids = {s.span_id for s in spans}
    children: dict[bytes, list[Span]] = {}
    for s in spans:
        children.setdefault(s.parent_span_id, []).append(s)
    for kids in children.values():
        kids.sort(key=lambda s: s.start_time_unix_nano)

    def walk(span: Span, depth: int) -> Iterator[tuple[int, Span]]:
        yield depth, span
        for child in children.get(span.span_id, []):
            yield from walk(child, depth + 1)

    for root in sorted(spans, key=lambda s: s.start_time_unix_nano):
        if root.parent_span_id not in ids:
            yield from walk(root, 0)
