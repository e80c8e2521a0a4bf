"""Shared HTTP mechanism of the built-in providers.

:class:`HTTPProvider` does one POST per call and turns the response into chunks: a JSON
body parsed whole (``_http_whole.post_whole``), or SSE events parsed as they come off the
socket. Subclasses supply the wire format (URL, headers, body, parsing). Every
third-party failure is translated (by ``_http_errors``) into the CascadeError tree, and
the translated error carries no reference to aiohttp's objects (whose ``request_info``
holds the request headers, and so the API key).
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import aclosing
from operator import attrgetter
from typing import Any, ClassVar

import aiohttp

from .._clock import SupportsTimers
from .._config import ProviderConfig
from .._errors import (
    CascadeError,
    ConfigError,
    MalformedResponse,
    ProviderConnectionError,
    ProviderError,
    ProviderStatusError,
    ResponseTooLarge,
)
from .._headers import retry_after_s
from .._sse import EventTooLarge, SSEDecoder, SSEEvent, plain_events
from .._timeouts import TimeoutLane
from .._types import Chunk, Message, RequestOptions, join_chunks
from .._urls import hide_userinfo
from ._http_errors import status_error, translate
from ._http_whole import encode_body, post_whole
from ._redact import redact, shorten
from ._sizes import Held, json_cost
from ._status import status_class

__all__ = [
    "DONE",
    "HTTPProvider",
    "redact",
    "retry_after_s",
    "status_error",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: a header name
_MAX_DRAIN = 65536
_SCAN_EVENT_BYTES = 65536  # a smaller SSE event cannot decode to much: not worth a scan

DONE = Chunk(finish_reason="__done__")
"""Returned by ``_event`` for the stream's terminal event."""

# Keys of a stream's state that the base class keeps: a finish reason and the usage came.
_FINISHED = "__finished__"
_USAGE = "__usage__"
_ENDING = attrgetter("finish_reason", "output_tokens")


class HTTPProvider:
    """Base of the HTTP providers: one POST, JSON or SSE, errors translated.

    Subclasses set ``_url`` and ``_headers`` in ``__init__`` and implement ``_body``,
    ``_whole`` (a JSON body into one chunk) and ``_event`` (an SSE event into a chunk,
    None to skip it, or ``DONE``).
    """

    kind: ClassVar[str]

    def __init__(
        self, config: ProviderConfig, *, session: aiohttp.ClientSession, api_key: str | None
    ) -> None:
        self.config = config
        self.name = config.name
        self.model = config.model
        self._session = session
        self._secret = api_key
        self._stream = config.stream
        # aiohttp keeps no total timer (only sock_connect): timeout_s is enforced by the
        # engine's cascade._attempt.complete for a stream (which pauses it while a slow
        # reader downstream holds the stream up; a wall-clock total here would not, and would
        # blame the provider for the reader), and by post_whole for a whole-body call (on
        # ``timeouts``, or the engine's clock): aiohttp's own timer un-cancels its task
        # twice and so can swallow a deadline that fires in the same loop turn. A stream
        # read without the engine (provider.stream directly) is bounded by its caller.
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s)
        self.timeouts = TimeoutLane(config.timeout_s)  # one loop timer for all its calls
        self.timers: SupportsTimers | None = None
        """The clock ``post_whole`` times ``timeout_s`` on (the engine sets it when its clock
        runs timers, as ``FakeClock`` does); None: the loop's clock, through ``timeouts``."""
        self._url = ""
        self._headers: dict[str, str] = {}
        self.observe: Callable[..., None] | None = None
        """Called with each response's headers (and ``status=``): a rate limiter learns."""

    def __repr__(self) -> str:
        url = hide_userinfo(self._url)
        return f"<{type(self).__name__} {self.name!r} model={self.model!r} url={url!r}>"

    @classmethod
    def check_config(cls, config: ProviderConfig) -> None:
        if not config.base_url:
            raise ConfigError(f"kind {config.kind!r} needs a base_url", path="base_url")
        for name, value in config.headers.items():
            if _CONTROL.search(name) or _CONTROL.search(value):
                raise ConfigError("control characters in a header", path=f"headers.{name}")
            if not _TOKEN.fullmatch(name):
                raise ConfigError(
                    "not a header name (letters, digits and !#$%&'*+-.^_`|~ only)",
                    path=f"headers.{name}",
                )

    async def aclose(self) -> None:
        """The session belongs to the Cascade: only the timeouts' timer to release."""
        self.timeouts.close()

    def _body(
        self, messages: tuple[Message, ...], options: RequestOptions, *, stream: bool
    ) -> dict[str, Any]:
        raise NotImplementedError

    def _whole(self, raw: bytes) -> Chunk:
        raise NotImplementedError

    def _event(self, event: SSEEvent, state: dict[str, Any]) -> Chunk | None:
        raise NotImplementedError

    def _post(self, data: bytes) -> Any:
        """The one POST every call makes (an aiohttp request context manager); aiohttp
        bounds only the connect, its caller the call (``complete`` or ``post_whole``)."""
        return self._session.post(
            self._url,
            data=data,
            headers=self._headers,
            timeout=self._timeout,
            allow_redirects=False,  # a redirect must not carry the key to another host
            raise_for_status=False,
        )

    async def _check(self, resp: aiohttp.ClientResponse) -> None:
        """Show the response to the rate limiter, and raise for an error status."""
        if self.observe is not None:
            self.observe(resp.headers, status=resp.status)
        if resp.status >= 300:
            raise await status_error(
                resp, provider=self.name, model=self.model, secret=self._secret
            )

    def _error(self, message: str, cls: type[ProviderError] = MalformedResponse) -> ProviderError:
        return cls(redact(message, self._secret), provider=self.name, model=self.model)

    def _too_large(self, received: int, *, decoded: bool = False) -> ResponseTooLarge:
        limit = self.config.max_response_bytes
        what = "its answer decoded would take" if decoded else "after"
        return ResponseTooLarge(
            f"response body passed max_response_bytes ({limit}): {what} {received} bytes",
            provider=self.name,
            model=self.model,
            limit=limit,
            received=received,
        )

    def _check_event_stream(self, resp: aiohttp.ClientResponse) -> None:
        """A stream request answered with anything but SSE (a JSON body from a server that
        ignored ``stream``, a proxy's HTML page) is malformed, and named as such."""
        raw = resp.headers.get(aiohttp.hdrs.CONTENT_TYPE)
        got = (raw or "").partition(";")[0].strip().lower()
        if got != "text/event-stream":
            shown = shorten(got, self._secret, 100) if got else "no Content-Type"
            raise self._error(f"expected text/event-stream, got {shown}")

    def _whole_at_terminal(self, state: dict[str, Any]) -> None:
        """The terminal event came (``[DONE]``, ``message_stop``): the answer is whole
        only if its finish reason came before it. A proxy that lost its upstream mid-answer
        may still end the stream so: that is a broken stream, as a cut is."""
        if not state.get(_FINISHED):
            raise self._error(
                "stream ended without a finish reason (its terminal event came first)",
                ProviderConnectionError,
            )

    def _status_error(
        self, message: str, status: int, *, code: object = None, kind: object = None
    ) -> ProviderStatusError:
        """An error the provider reported inside a 200 stream, with the status it means
        (and the ``code`` / ``type`` it named, which can make a 400 a context-length or a
        content-policy refusal)."""
        message = redact(message, self._secret)
        cls = status_class(status, code=code, kind=kind, message=message)
        return cls(message, provider=self.name, model=self.model, status=status)

    def complete_whole(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> Coroutine[Any, Any, Chunk]:
        """One call that does not stream (:class:`~cascade.providers.SupportsWhole`):
        its JSON body, within ``timeout_s``. (``post_whole``'s coroutine itself: one
        frame less on every resumption of the call.)"""
        return post_whole(self, self._body(messages, options, stream=False), self._whole)

    def _chunks(
        self, events: list[SSEEvent], state: dict[str, Any], limit: int, *, scan: bool
    ) -> tuple[list[Chunk], Chunk | Exception | None]:
        """The chunks of one read's ``events``, and how the read ended: ``DONE`` (the
        terminal event), an error (raised once the chunks before it are passed on, as
        the text of a stream that broke is still billed), or None. ``scan``: the read
        may hold an event large enough to be worth a scan before it is decoded."""
        chunks: list[Chunk] = []
        parse = self._event
        try:
            for event in events:
                if scan and len(event.data) > _SCAN_EVENT_BYTES:
                    cost = json_cost(event.data)
                    if cost > limit:
                        raise self._too_large(cost, decoded=True)
                chunk = parse(event, state)
                if chunk is not None:
                    if chunk is DONE:
                        return chunks, DONE
                    chunks.append(chunk)
        except Exception as exc:
            return chunks, exc
        return chunks, None

    async def stream(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncIterator[Chunk]:
        if not self._stream:
            yield await self.complete_whole(messages, options)
            return
        async with aclosing(self.stream_batches(messages, options)) as batches:
            async for batch in batches:
                for chunk in batch:
                    yield chunk

    def stream_batches(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncGenerator[list[Chunk], None]:
        """The stream's chunks, those of one read together
        (:class:`~cascade.providers.SupportsBatches`)."""
        return self._read(messages, options, joined=False)

    def stream_joined(
        self, messages: tuple[Message, ...], options: RequestOptions
    ) -> AsyncGenerator[Chunk, None]:
        """The batches of ``stream_batches``, each joined into one chunk (``join_chunks``;
        a batch of one chunk as it is): what the engine's ``complete`` reads when nothing
        looks at an answer chunk by chunk, one chunk a read. A read the provider can join
        without making its chunks (``_join_plain``) is joined so."""
        return self._read(messages, options, joined=True)

    _joins_plain: ClassVar[bool] = False
    """Whether ``_join_plain`` can join a read (a subclass that implements it)."""

    def _join_plain(
        self, datas: list[bytes], state: dict[str, Any]
    ) -> tuple[Chunk | None, Chunk | None] | None:
        """A read whose events are each a lone data line (``SSEDecoder.feed_plain``), as
        ``stream_joined`` yields it: ``(its chunks joined, or None for none; DONE when its
        last event is the terminal one, else None)``, the same for ``complete`` as the
        chunks of ``_chunks``. None when it cannot say (an error, a keep-alive, a body
        that does not decode): the read then goes through ``_chunks``, which raises where
        it should. ``state``: the stream's, as ``_chunks`` gets it."""
        return None

    async def _read(
        self, messages: tuple[Message, ...], options: RequestOptions, *, joined: bool
    ) -> AsyncGenerator[Any, None]:
        """``stream_batches`` (each read's chunks in a list), or ``stream_joined`` (each
        read's chunks joined)."""
        if not self._stream:
            whole = await self.complete_whole(messages, options)
            yield whole if joined else [whole]
            return
        data = encode_body(self._body(messages, options, stream=True))
        try:
            async with self._post(data) as resp:
                await self._check(resp)
                self._check_event_stream(resp)
                limit = self.config.max_response_bytes
                decoder = SSEDecoder(max_event_bytes=limit)
                state: dict[str, Any] = {}
                received = 0
                held = Held()
                join_plain = self._join_plain if joined and self._joins_plain else None
                # resp.content yields decoded bytes (after gzip, deflate, br), each read
                # bounded by aiohttp's flow control: the stream's total is counted as it
                # comes, so no more than the cap and one read is ever held. What the
                # answer takes once decoded is counted too (see _sizes.py): a large event
                # before it is decoded, the answer's text and logprobs as they arrive.
                async for raw in resp.content.iter_any():
                    received += len(raw)
                    if received > limit:
                        raise self._too_large(received)
                    # no event this read completes can be worth a scan: none is checked
                    scan = len(raw) + decoder.pending_bytes > _SCAN_EVENT_BYTES
                    if join_plain is None:
                        events = decoder.feed(raw)
                    else:
                        datas = decoder.feed_plain(raw)
                        if datas is None:
                            events = decoder.feed(raw)
                        else:
                            fast = None
                            if not scan or max(map(len, datas)) <= _SCAN_EVENT_BYTES:
                                fast = join_plain(datas, state)
                            if fast is not None:
                                one, terminal = fast
                                if one is not None:
                                    saved = held.chars, held.width, held.logprobs
                                    if held.add(one) > limit:
                                        held.chars, held.width, held.logprobs = saved
                                        fast = None  # the chunks before the one past it
                                    else:
                                        if one.finish_reason is not None:
                                            state[_FINISHED] = True
                                        if one.output_tokens is not None:
                                            state[_USAGE] = True
                                        yield one
                                if fast is not None:
                                    if terminal is DONE:
                                        self._whole_at_terminal(state)
                                        await _drain(resp)
                                        return
                                    continue
                            events = plain_events(datas)
                    chunks, end = self._chunks(events, state, limit, scan=scan)
                    if chunks:
                        counted, cost = held.add_all(chunks, limit)
                        if counted < len(chunks):
                            if counted:
                                yield _one(chunks[:counted]) if joined else chunks[:counted]
                            raise self._too_large(cost, decoded=True)
                        finishes, outputs = zip(*map(_ENDING, chunks), strict=True)
                        if finishes.count(None) != len(chunks):
                            state[_FINISHED] = True
                        if outputs.count(None) != len(chunks):
                            state[_USAGE] = True
                        yield _one(chunks) if joined else chunks
                    if end is DONE:
                        self._whole_at_terminal(state)
                        await _drain(resp)
                        return
                    if isinstance(end, Exception):
                        try:
                            raise end
                        finally:  # as below: no local may hold the error
                            del end
                last = decoder.flush()
                if last is not None and self._event(last, state) is DONE:
                    self._whole_at_terminal(state)
                    return
                if state.get(_FINISHED) and state.get(_USAGE):
                    # Ended cleanly (the body's own end, not a cut) after the finish reason
                    # and the usage: complete, whatever terminator the server left out.
                    return
                raise self._error("stream ended before its terminal event", ProviderConnectionError)
        except CascadeError:
            raise
        except EventTooLarge as exc:  # not reached while the total is capped first
            error: ProviderError = self._too_large(exc.size)
        except Exception as exc:
            error = translate(exc, provider=self.name, model=self.model, secret=self._secret)
        # Raised outside the except block: no __context__ chains back to aiohttp objects.
        try:
            raise error
        finally:  # the error's traceback holds this frame: no local may hold the error
            del error


def _one(chunks: list[Chunk]) -> Chunk:
    """A batch as ``stream_joined`` yields it."""
    return chunks[0] if len(chunks) == 1 else join_chunks(chunks)


async def _drain(resp: aiohttp.ClientResponse) -> None:
    """Read what follows the terminal event (the chunked terminator, usually) so the
    connection goes back to the pool instead of being closed."""
    seen = 0
    try:
        while seen < _MAX_DRAIN:
            piece = await resp.content.readany()
            if not piece:
                return
            seen += len(piece)
    except (aiohttp.ClientError, TimeoutError):
        pass  # the answer is complete; the connection is simply not reused
