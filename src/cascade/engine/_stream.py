"""Where a run's events go: a :class:`Sink`. ``run()`` gives the engine one that keeps
nothing (:data:`NO_SINK`); ``stream()`` gives it a :class:`Stream`, which hands each event
to the caller and holds the engine back until the caller has taken its text."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, Protocol

from .._types import Attempt
from ._events import Delta, Event, Failed, Finished, Retracted, StreamMode

__all__ = ["NO_SINK", "ResultSink", "Sink", "Stream", "TextStream"]

HIGH_WATER_CHARS = 8192
"""Text a reader may leave unread before the run waits for it: enough that a fast reader
takes many deltas per wake-up, little enough that memory per stream stays bounded."""
LOW_WATER_CHARS = 2048
"""The run goes on once the reader has brought the unread text down to this."""
EVENT_CHARS = 64
"""What one unread :class:`Delta` counts for beside its text (the event's own memory), so
that many tiny deltas are bounded like a few big ones."""


class Sink(Protocol):
    """Receives a run's events. ``mode`` None asks for no :class:`Delta` events at all."""

    @property
    def mode(self) -> StreamMode | None: ...

    @property
    def hears_all(self) -> bool:
        """Whether it takes every event (else the run builds only those that always go
        out: text, withdrawals, the router's decision, the last)."""
        ...

    def emit(self, event: Event) -> None:
        """Take an event (never blocks: the engine emits a few per attempt)."""

    def offer(self, event: Delta) -> Awaitable[None] | None:
        """Take answer text. None: taken, go on; else an awaitable that ends once the
        reader has caught up (backpressure: the engine reads no more of the answer until
        then)."""

    def attach(self, attempts: Sequence[Attempt]) -> None:
        """The run's attempts, as they are recorded."""

    def taken(self, end: Finished) -> Awaitable[None]:
        """Awaited once the run emitted ``end``, before it writes its span and routing
        record: the reader takes the result first (a gateway sends its response)."""


class _NoSink:
    """What ``run()`` hands the engine: no deltas, nothing kept."""

    __slots__ = ()
    mode = None
    hears_all = False

    def emit(self, event: Event) -> None:
        pass

    def offer(self, event: Delta) -> Awaitable[None] | None:  # pragma: no cover - no deltas
        return None

    def attach(self, attempts: Sequence[Attempt]) -> None:
        pass

    def taken(self, end: Finished) -> Awaitable[None]:  # pragma: no cover - never asked
        return asyncio.sleep(0)


NO_SINK: Sink = _NoSink()


async def _answered(end: Finished) -> None:
    raise RuntimeError("a ResultSink answers once, during its run")


class ResultSink:
    """The sink of a caller that wants the result alone, the run going on in the caller's
    own task (the gateway's JSON answers): no events are kept and no text is sent
    (``mode`` None). ``answer`` is awaited with the :class:`Finished` event before the
    run writes its span and routing record, so a response goes out first, with no task
    and no loop turn between the run and it. What ``answer`` raises (the client gone,
    the request cancelled meanwhile) is kept in :attr:`error` for the caller to raise
    once the run has returned: the run itself answered, and is recorded as it ended."""

    __slots__ = ("_answer", "attempts", "error")
    mode: StreamMode | None = None
    hears_all = False

    def __init__(self, answer: Callable[[Finished], Awaitable[None]]) -> None:
        self._answer = answer
        self.attempts: Sequence[Attempt] = ()
        """The run's attempts as they are recorded (every one, once it has returned)."""
        self.error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<ResultSink {len(self.attempts)} attempts>"

    def emit(self, event: Event) -> None:
        pass

    def offer(self, event: Delta) -> Awaitable[None] | None:  # pragma: no cover - no deltas
        return None

    def attach(self, attempts: Sequence[Attempt]) -> None:
        self.attempts = attempts

    def done(self) -> None:
        """The run has returned: the answer is let go (a failed run's state can be held
        in a cycle through its errors' tracebacks until a collection; the caller's
        request, in the answer's closure, is not held with it)."""
        self._answer = _answered

    async def taken(self, end: Finished) -> None:
        try:
            await self._answer(end)
        except BaseException as exc:  # raised by the caller once the run has returned
            self.error = exc

    def take_error(self) -> BaseException:
        """:attr:`error`, taken off the sink for the caller to raise (``raise
        sink.take_error()``). Left there, it would hold itself: its traceback holds
        :meth:`taken`'s frame, which holds the sink. That cycle (the response cut off, body
        and all, in its frames) would wait for the garbage collector instead of going with
        the request."""
        error, self.error = self.error, None
        assert error is not None
        return error


class Stream:
    """The events of one run as they happen: ``async for event in stream``.

    Yielded by :meth:`Cascade.stream <cascade.Cascade.stream>`. The run goes on in a task
    of its own and waits for the reader before it reads more of an answer: a reader that
    stops reading stops the socket being read. Leaving the ``async with`` block (or
    :meth:`aclose`) before the last event cancels the run at once: the call under way is
    closed, its connection returned, and it is recorded (``cancelled``, costed for what
    was sent and received) in :attr:`attempts`.
    """

    __slots__ = (
        "_attempts",
        "_closed",
        "_drained",
        "_ended",
        "_ending",
        "_events",
        "_queued",
        "_raised",
        "_ready",
        "_start",
        "_task",
        "mode",
    )
    hears_all = True

    def __init__(
        self,
        mode: StreamMode,
        start: Callable[[Stream], Coroutine[Any, Any, object]],
    ) -> None:
        self.mode: StreamMode = mode
        self._start: Callable[[Stream], Coroutine[Any, Any, object]] | None = start
        self._events: deque[Event] = deque()
        self._queued = 0  # characters of text in the events not yet read
        self._ready: asyncio.Future[None] | None = None  # the reader waits for an event
        self._drained: asyncio.Future[None] | None = None  # the run waits for the reader
        self._ending: asyncio.Future[None] | None = None  # aclose waits for the run
        self._task: asyncio.Task[object] | None = None
        self._attempts: Sequence[Attempt] = ()
        self._raised = False
        self._ended = False  # the last event was emitted: the run is only bookkeeping
        self._closed = False  # its async with block has been left

    def __repr__(self) -> str:
        task = self._task
        if self._closed:
            state = "done"
        else:
            state = "new" if task is None else "done" if task.done() else "running"
        return f"<Stream {self.mode} {state}, {len(self._attempts)} attempts>"

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """The attempts recorded so far (every one, once the stream is closed)."""
        return tuple(self._attempts)

    @property
    def ready(self) -> int:
        """Events the reader can take now without waiting (a relay can then send them
        together, in one write)."""
        return len(self._events)

    def attach(self, attempts: Sequence[Attempt]) -> None:
        """The run's list of attempts (the engine calls this as it starts)."""
        self._attempts = attempts

    def taken(self, end: Finished) -> Awaitable[None]:
        """One loop turn: the reader, woken by ``end``, takes it first."""
        return asyncio.sleep(0)

    # -- the engine's side -----------------------------------------------------------------

    def emit(self, event: Event) -> None:
        self._events.append(event)
        kind = type(event)
        if kind is Finished or kind is Failed:
            self._ended = True
        ready = self._ready
        if ready is not None and not ready.done():
            ready.set_result(None)

    def offer(self, event: Delta) -> Awaitable[None] | None:
        self.emit(event)
        self._queued += len(event.text) + EVENT_CHARS
        if self._queued <= HIGH_WATER_CHARS:
            return None  # no wait, no task switch: most deltas of a fast reader
        return self._catch_up()

    async def _catch_up(self) -> None:
        self._drained = drained = asyncio.get_running_loop().create_future()
        try:
            await drained
        finally:
            self._drained = None

    # -- the reader's side -----------------------------------------------------------------

    async def __aenter__(self) -> Stream:
        start = self._start
        if start is None:
            raise RuntimeError("a Stream is entered once")
        self._start = None
        self._task = task = asyncio.get_running_loop().create_task(start(self))
        task.add_done_callback(self._wake)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
        task = self._task
        # The task, once done: a cancelled task's CancelledError holds through its
        # traceback the run's frames, which hold this stream: kept here, a cycle of them.
        # What the reader left unread stays readable (then StopAsyncIteration).
        self._task = None
        self._closed = True
        if exc is None and task is not None and not task.cancelled():
            error = task.exception()
            if error is not None and not self._raised:
                try:
                    raise error  # a bug in the run the reader never read up to
                finally:
                    del error, task

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Event:
        events = self._events
        while not events:
            task = self._task
            if task is None:
                if self._closed:
                    raise StopAsyncIteration
                raise RuntimeError("use the Stream inside its async with block")
            if self._ready is not None:
                raise RuntimeError("anext(): another task is already reading this Stream")
            if task.done():
                if not task.cancelled():
                    error = task.exception()
                    if error is not None:
                        self._raised = True
                        raise error  # a bug, not a RunError: those end in a Failed event
                raise StopAsyncIteration
            self._ready = ready = asyncio.get_running_loop().create_future()
            try:
                await ready
            finally:
                self._ready = None
        event = events.popleft()
        if type(event) is Delta:
            self._queued -= len(event.text) + EVENT_CHARS
            drained = self._drained
            if drained is not None and self._queued <= LOW_WATER_CHARS and not drained.done():
                drained.set_result(None)
        return event

    async def aclose(self) -> None:
        """Cancel the run if it is still going, and wait until it has recorded its
        attempts and returned its connections. A run that has emitted its last event is
        not cancelled: it is writing its span and routing record."""
        task = self._task
        if task is None:
            return
        if not task.done() and not self._ended:
            task.cancel()
        interrupted: BaseException | None = None
        while not task.done():
            # The run ends within a turn or two of the loop; a cancel scope that cancels
            # the reader again meanwhile is delivered once the run has ended. The task's
            # done callback (``_wake``) ends the wait: a future, not ``asyncio.wait``
            # (its set, its callbacks and a future of its own, each request). A second
            # task closing the stream meanwhile (a caller's watchdog, and the block's
            # exit) waits on the task itself: ``_wake`` sets one future only.
            waiter: asyncio.Future[None] | None = None
            if self._ending is None:
                self._ending = waiter = asyncio.get_running_loop().create_future()
            try:
                if waiter is not None:
                    await waiter
                else:
                    await asyncio.wait((task,))
            except asyncio.CancelledError as exc:
                interrupted = exc
            finally:
                if waiter is not None:
                    self._ending = None
        if not task.cancelled():
            task.exception()  # retrieved: a reader that left early has seen enough
        if interrupted is not None:
            try:
                raise interrupted
            finally:  # its traceback holds this frame: no local may hold it
                del interrupted

    def _wake(self, task: asyncio.Task[object]) -> None:
        for waiter in (self._ready, self._ending):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)


class TextStream(Stream):
    """A :class:`Stream` of the answer's text, its withdrawals and the last event only
    (:class:`Delta`, :class:`Retracted`, :class:`Finished`, :class:`Failed`): for a reader
    that renders text (the gateway's OpenAI SSE). The run builds none of the other events
    for it, and the reader is not woken for those a trace still hears (before the
    provider's request is written, in particular)."""

    __slots__ = ()
    hears_all = False

    def emit(self, event: Event) -> None:
        kind = type(event)
        if kind is Delta or kind is Retracted or kind is Finished or kind is Failed:
            Stream.emit(self, event)
