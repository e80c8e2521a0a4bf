"""Breaker state and rate-limit budgets shared by every process that uses one Redis.

One :class:`SharedState` per :class:`~cascade.Cascade` (the ``[shared]`` config table)
holds one ``redis.asyncio`` client. N replicas of a service then respect one provider
quota, and one outage opens every replica's breaker:

- **Rate limits.** A provider's requests-per-minute and tokens-per-minute budgets live in
  the hash ``{prefix}:limit:{provider}`` as GCRA arrival times, checked and charged
  together by one Lua script (see ``_redis_scripts.py``) on Redis's own clock. The
  limiter's local buckets are still charged as well, so they are ready when Redis is not.
  A lease's settlement (``release(used_tokens=...)``) and a 429's ``retry-after`` are
  sent to Redis in the background. The concurrency limit and the limits learned from
  response headers stay per process.
- **Breakers.** ``admit()`` stays synchronous and local. Outcomes are reported to Redis in
  the background: failures count towards ``fail_max`` across every replica (a success
  anywhere starts the count again), and a breaker that opens anywhere publishes "open
  until" there. Every replica polls its breakers' records each ``sync_interval_s`` and
  opens its own breaker until that time; a successful probe anywhere publishes "closed",
  which closes the others. When the open window is over, only the replica holding the
  probe lease ``{prefix}:probe:{provider}`` (``SET NX PX``) sends the half-open probe;
  the others fail over as if the breaker were still open.
- **Spending budgets.** The gateway's USD budget per key per UTC day lives in the hash
  ``{prefix}:spend:{key name}:{day}`` (``SPEND_LUA``): a request reserves its estimate
  while spend plus reservations is under the budget, and settles to its real cost (see
  :mod:`cascade.gateway._budget`).
- **Bad records.** A value in Redis that does not parse (``HSET ... epoch abc``) is
  logged once per key and ignored; the scripts overwrite it at the next transition. The
  sync task logs and survives anything but cancellation. A rate-limit record that does
  not parse or lies further ahead than this code ever writes (``tokens 1e308``) is reset
  by the script, which gives the key a TTL even on a denied take; logged once per key.

Redis is never on a request's critical path for longer than ``timeout_s``. On any Redis
error or timeout the state goes *down*: one warning is logged, every operation returns at
once and the limiters use their local budgets only (so N replicas may then use up to N
times a quota), while a background task retries Redis with a backoff and logs when it is
back. ``redis`` is imported only here, and only when a SharedState is built.
"""

from __future__ import annotations

import asyncio
import math
import os
import secrets
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import structlog

from .._clock import timeout_after
from .._errors import ConfigError
from .._headers import MAX_WAIT_S
from ._redis_scripts import BREAKER_LUA, LIMIT_LUA, PROBE_LUA
from ._redis_url import _query_password, redact_url
from ._shared_links import SharedBreaker, SharedLimit, parse_record
from ._spend_script import SPEND_LUA

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

    from .._config import SharedConfig
    from .breaker import AsyncBreaker

__all__ = ["SharedBreaker", "SharedLimit", "SharedState", "redact_url"]

log = structlog.get_logger("cascade")

_T = TypeVar("_T")


def _reraise_swallowed_cancel(task: asyncio.Task[Any] | None, cancels: int) -> None:
    """Raise the cancellation a Redis call swallowed: on Python 3.11, ``asyncio.wait_for``
    (redis-py waits for its socket writes with it) drops a cancel that arrives as the write
    completes, which would otherwise keep a cancelled request, or a deadline, running."""
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError


class SharedState:
    """A Redis connection sharing breakers and rate limits across processes.

    Pass it to :class:`~cascade.AsyncBreaker` and :class:`~cascade.RateLimiter`
    (``shared=``); a :class:`~cascade.Cascade` with a ``[shared]`` table does so itself.

    >>> state = SharedState(redis_url="redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> limiter = RateLimiter("openai", requests_per_minute=500, shared=state)  # doctest: +SKIP
    >>> async with state:  # doctest: +SKIP
    ...     lease = await limiter.reserve(tokens=1_200)  # charged to the shared budget too

    ``password`` authenticates to Redis (``SharedConfig.password_env`` reads it from the
    environment); a ``redis_url`` carrying a password of its own is then refused. It
    never appears in ``repr`` or logs.
    """

    def __init__(
        self,
        *,
        redis_url: str,
        key_prefix: str = "cascade",
        timeout_s: float = 0.1,
        sync_interval_s: float = 0.5,
        password: str | None = None,
    ) -> None:
        try:
            from redis.asyncio.connection import parse_url
        except ImportError:
            raise ConfigError(
                "shared state needs the redis client: pip install 'cascade-engine[redis]'",
                path="shared.redis_url",
            ) from None
        try:
            parse_url(redis_url)  # fail at build, not at the first run
        except ValueError as exc:
            # The parser's message quotes pieces of the URL (a password read as a port):
            # it is shown only when the URL holds no userinfo at all.
            userinfo = "@" in redis_url.partition("://")[2]
            message = "cannot be parsed" if userinfo else str(exc)
            raise ConfigError(
                f"invalid Redis URL {redact_url(redis_url)!r}: {message}", path="shared.redis_url"
            ) from None
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError("timeout_s must be a positive number")
        if not (sync_interval_s > 0 and math.isfinite(sync_interval_s)):
            raise ValueError("sync_interval_s must be a positive number")
        if password is not None and (urlsplit(redis_url).password or _query_password(redis_url)):
            raise ConfigError(
                "a password is given both in redis_url and separately: give one",
                path="shared.password_env",
            )
        self._url = redis_url
        self._password = password or None
        self.url = redact_url(redis_url)
        self.key_prefix = key_prefix
        self.timeout_s = timeout_s
        self.sync_interval_s = sync_interval_s
        self._client: Redis | None = None
        self._limit_script: AsyncScript | None = None
        self._breaker_script: AsyncScript | None = None
        self._probe_script: AsyncScript | None = None
        self._spend_script: AsyncScript | None = None
        self.token = secrets.token_hex(8)
        """This process's name on the probe leases it holds."""
        self._bad_keys: set[str] = set()  # records logged as unreadable, until they parse
        self._sync_failing = False
        self._errors: tuple[type[BaseException], ...] = (OSError, TimeoutError)
        self._up = True  # until Redis says otherwise; the first failure is logged
        self._closed = False
        self._sync_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._breakers: list[SharedBreaker] = []
        self._limits: list[SharedLimit] = []

    @classmethod
    def from_config(
        cls, config: SharedConfig, *, environ: Mapping[str, str] | None = None
    ) -> SharedState:
        """The state for a ``[shared]`` config table; ``password_env`` is read from
        ``environ`` (``os.environ`` by default)."""
        password = None
        if config.password_env is not None:
            env = os.environ if environ is None else environ
            password = env.get(config.password_env)
            if not password:
                raise ConfigError(
                    f"environment variable {config.password_env!r} is not set or empty",
                    path="shared.password_env",
                )
        return cls(
            redis_url=config.redis_url,
            key_prefix=config.key_prefix,
            timeout_s=config.timeout_s,
            sync_interval_s=config.sync_interval_s,
            password=password,
        )

    @property
    def available(self) -> bool:
        """Whether Redis answered last time (``False`` before ``open``: local limits only)."""
        return self._client is not None and self._up and not self._closed

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, and start syncing breakers. An unreachable Redis is logged, not raised:
        the limits stay local until it answers."""
        if self._closed:
            raise RuntimeError("this SharedState is closed")
        if self._client is not None:
            return
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError, TimeoutError)
        self._client = aioredis.Redis.from_url(
            self._url,
            password=self._password,
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=Retry(NoBackoff(), 0),  # our own fallback replaces redis-py's retries
            decode_responses=True,
        )
        self._limit_script = self._client.register_script(LIMIT_LUA)
        self._breaker_script = self._client.register_script(BREAKER_LUA)
        self._probe_script = self._client.register_script(PROBE_LUA)
        self._spend_script = self._client.register_script(SPEND_LUA)
        await self._reconnect()
        self._sync_task = asyncio.get_running_loop().create_task(
            self._sync_loop(), name="cascade-shared-sync"
        )

    async def aclose(self) -> None:
        """Stop syncing, let background writes finish (within ``timeout_s``), disconnect."""
        if self._closed:
            return
        self._closed = True
        if self._sync_task is not None:
            self._sync_task.cancel()
            await asyncio.gather(self._sync_task, return_exceptions=True)
        await self.flush()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            try:
                await self._client.aclose()
            except self._errors as exc:
                # redis-py bounds each socket's close by the connect timeout: a loop that
                # stalls past it (a busy process shutting down) must not fail the close,
                # nor whatever was to close after it. The socket is closed either way.
                log.debug("shared state close cut short", redis=self.url, error=repr(exc))

    async def flush(self) -> None:
        """Wait for the background writes under way (each is bounded by ``timeout_s``)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=2 * self.timeout_s + 0.05)

    async def __aenter__(self) -> SharedState:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- links: what breakers and limiters hold ----------------------------------------

    def breaker_link(self, breaker: AsyncBreaker) -> SharedBreaker:
        """Share ``breaker`` under its name (``AsyncBreaker(shared=...)`` calls this)."""
        link = SharedBreaker(self, breaker)
        self._breakers.append(link)
        return link

    def limit_link(
        self,
        name: str,
        *,
        requests_per_minute: float | None,
        tokens_per_minute: float | None,
        burst_s: float,
        max_wait_s: float = MAX_WAIT_S,
    ) -> SharedLimit:
        """The shared budgets of provider ``name`` (``RateLimiter(shared=...)`` calls this)."""
        link = SharedLimit(
            self,
            name,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            burst_s=burst_s,
            max_wait_s=max_wait_s,
        )
        self._limits.append(link)
        return link

    def key(self, kind: str, name: str) -> str:
        return f"{self.key_prefix}:{kind}:{name}"

    # -- running operations ----------------------------------------------------------------

    async def run(self, op: Callable[[Redis], Awaitable[_T]]) -> _T | None:
        """``op``'s result, or ``None`` at once when Redis is down, or within ``timeout_s``
        when it fails now (the state then goes down)."""
        client = self._client
        if client is None or not self._up or self._closed:
            return None
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()
        try:
            async with timeout_after(None, self.timeout_s):
                result = await op(client)
        except self._errors as exc:
            _reraise_swallowed_cancel(task, cancels)
            self._mark_down(exc)
            return None
        _reraise_swallowed_cancel(task, cancels)
        return result

    async def script(self, which: str, keys: list[str], *args: str | float) -> Any:
        """Run one of the Lua scripts (EVALSHA, loading it on NOSCRIPT); ``None`` if down."""
        script = {
            "limit": self._limit_script,
            "breaker": self._breaker_script,
            "probe": self._probe_script,
            "spend": self._spend_script,
        }[which]
        if script is None:
            return None
        return await self.run(lambda client: script(keys=keys, args=list(args), client=client))

    def spawn(self, make: Callable[[], Coroutine[Any, Any, None]]) -> asyncio.Task[None] | None:
        """Run ``make()`` in the background, tracked (``aclose`` waits for it): its task;
        skipped (``None``) when Redis is down or there is no running loop."""
        if not self.available:
            return None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        task = loop.create_task(make())
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("shared state update failed", exc_info=task.exception())

    def _mark_down(self, exc: BaseException) -> None:
        if self._up and not self._closed:
            self._up = False
            log.warning(
                "shared state unavailable, using local limits",
                redis=self.url,
                error=f"{type(exc).__name__}: {exc}",
            )

    def _mark_up(self) -> None:
        if not self._up:
            self._up = True
            log.info("shared state available again", redis=self.url)

    async def _reconnect(self) -> None:
        client = self._client
        assert client is not None
        task = asyncio.current_task()
        cancels = 0 if task is None else task.cancelling()
        try:
            async with timeout_after(None, self.timeout_s):
                if not self._up:
                    # Sockets to a Redis that went away are dead even if it is back: a
                    # pooled one would fail the first call after the recovery.
                    await client.connection_pool.disconnect()
                await client.ping()
        except self._errors as exc:
            _reraise_swallowed_cancel(task, cancels)
            self._mark_down(exc)
        else:
            _reraise_swallowed_cancel(task, cancels)
            self._mark_up()

    async def _sync_loop(self) -> None:
        misses = 0
        while not self._closed:
            try:
                if not self._up:
                    await self._reconnect()
                if self._up:
                    await self._poll()
            except Exception as exc:  # a bug or a reply we did not foresee: keep syncing
                if not self._sync_failing:
                    self._sync_failing = True
                    log.exception(
                        "shared state sync failed, retrying",
                        redis=self.url,
                        error=f"{type(exc).__name__}: {exc}",
                    )
            else:
                if self._sync_failing and self._up:
                    self._sync_failing = False
                    log.info("shared state sync recovered", redis=self.url)
            if self._up:
                misses = 0
                delay = self.sync_interval_s
            else:
                misses += 1
                delay = min(self.sync_interval_s * 2 ** (misses - 1), 10 * self.sync_interval_s)
            await asyncio.sleep(delay)

    async def _poll(self) -> None:
        """Read every shared breaker's record in one round trip and apply what changed."""
        links = list(self._breakers)

        async def op(client: Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.time()
            for link in links:
                pipe.hmget(link.key, ["state", "open_until", "epoch", "failures"])
            # A key of the wrong type fails its own command only, not the poll.
            return list(await pipe.execute(raise_on_error=False))

        replies = await self.run(op)
        if replies is None:
            return
        seconds, micros = replies[0]
        now = float(seconds) + float(micros) / 1e6
        for link, reply in zip(links, replies[1:], strict=True):
            record = parse_record(reply, now)
            if isinstance(record, str):
                self._bad_record(link, reply, record)
                continue
            self._bad_keys.discard(link.key)
            link.apply(*record)

    def _bad_record(self, link: SharedBreaker, reply: object, why: str) -> None:
        """Ignore an unreadable record, logging it once (until it reads well again). An
        unreadable epoch is a lost history, like a missing record: start counting again."""
        if why == "epoch":
            link.epoch = 0
        if link.key in self._bad_keys:
            return
        self._bad_keys.add(link.key)
        log.warning(
            "ignoring a malformed shared breaker record",
            key=link.key,
            field=why,
            value=repr(reply)[:200],
        )

    def limit_record(self, key: str, dropped: str, *, kind: str = "rate-limit") -> None:
        """What the limit (or spend) script said of ``key``'s record: ``dropped`` names
        the fields it found unusable (``""``: none). Logged once per key, until it reads
        well again."""
        if not dropped:
            self._bad_keys.discard(key)
            return
        if key in self._bad_keys:
            return
        self._bad_keys.add(key)
        log.warning(f"reset a malformed shared {kind} record", key=key, fields=dropped)

    def __repr__(self) -> str:
        if self._closed:
            status = "closed"
        elif self._client is None:
            status = "idle"
        else:
            status = "up" if self._up else "down (local limits)"
        return (
            f"<SharedState {self.url} {status} breakers={len(self._breakers)} "
            f"limits={len(self._limits)} pending={len(self._tasks)}>"
        )
