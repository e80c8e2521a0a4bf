"""Gateway API keys: who may call, how often, and how much they may spend per day.

Keys are configured in ``[gateway.keys]`` and kept as SHA-256 hashes only: an entry gives
the hash itself, or names an environment variable holding the raw key, which is hashed
when the gateway starts and dropped. Compute a hash with::

    cascade hash-key                 # reads the key from stdin
    printf %s "$KEY" | sha256sum     # the first field

A request presents its key as ``Authorization: Bearer <key>`` (OpenAI clients) or
``x-api-key: <key>`` (Anthropic clients); :func:`api_key_from_headers` reads either.
:meth:`GatewayKeys.admit` runs before the engine, so a denied request never reaches a
provider: 401 for a missing or unknown key, 403 for a route or model the key may not use,
429 when the key is over its requests or tokens per minute (``Retry-After``: when the
budget has refilled enough) or over its USD budget for the day (``Retry-After``: the next
UTC midnight; a second when the budget is only held by the key's requests in flight).
:meth:`GatewayKeys.settle` charges what the request used, also when it failed or its
client went away.

The per-minute limits are :class:`~cascade.resilience.limiter.RateLimiter` buckets (a
minute's worth, refilling continuously), and the daily budget a
:class:`~cascade.gateway._budget.DayBudget`; with a ``SharedState`` both live in Redis for every
replica. Raw keys are never logged, put in a span or a ``repr``: only the key's name is.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

import structlog

from .._clock import Clock
from .._errors import ConfigError
from ..resilience.limiter import Lease, RateLimiter
from ._budget import DayBudget, Reservation, UtcDays
from ._key_headers import GatewayDenied, _unauthorized, api_key_from_headers
from ._keys_config import (
    MAX_KEY_CHARS,
    MAX_KEYS,
    KeyChanges,
    KeyEntry,
    KeyLimits,
    KeysConfig,
    hash_key,
    resolved_keys,
)

if TYPE_CHECKING:
    from ..resilience.shared import SharedState

__all__ = [
    "Admission",
    "GatewayDenied",
    "GatewayKeys",
    "KeyChanges",
    "KeyEntry",
    "KeyLimits",
    "KeysConfig",
    "api_key_from_headers",
    "hash_key",
    "resolved_keys",
]

log = structlog.get_logger("cascade")

_MAX_TOKENS: Final = 10**12
_HELD_RETRY_S: Final = 1.0
"""``Retry-After`` when the day's budget is only held by requests in flight."""
ANONYMOUS: Final = "(anonymous)"
"""The name requests without a key share (no configured name can take it)."""


class _Key:
    """One configured key, resolved: its limits and its state."""

    __slots__ = (
        "budget",
        "digest",
        "in_flight",
        "limiter",
        "limits",
        "max_in_flight",
        "models",
        "name",
        "routes",
    )

    def __init__(
        self,
        name: str,
        digest: bytes,
        limits: KeyLimits,
        *,
        clock: Clock,
        days: UtcDays,
        shared: SharedState | None,
    ) -> None:
        self.name = name
        self.digest = digest
        self.limits = limits
        self.routes = None if limits.routes is None else frozenset(limits.routes)
        self.models = None if limits.models is None else frozenset(limits.models)
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        self.limiter = (
            None
            if rpm is None and tpm is None
            else RateLimiter(
                f"gateway-key:{name}",
                requests_per_minute=rpm,
                tokens_per_minute=tpm,
                clock=clock,
                shared=shared,
            )
        )
        usd = limits.usd_per_day
        self.budget = None if usd is None else DayBudget(name, usd, days=days, shared=shared)
        self.max_in_flight = limits.max_in_flight
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"<gateway key {self.name!r}>"

    def leave(self) -> None:
        """A request :meth:`GatewayKeys.enter` counted is over."""
        self.in_flight -= 1

    def may_use(self, route: str, model: str) -> bool:
        """Whether this key may ask ``route`` for ``model`` (what :meth:`GatewayKeys.admit`
        refuses with 403 otherwise)."""
        if self.routes is not None and route not in self.routes:
            return False
        return self.models is None or model in self.models


class Admission:
    """An admitted request's hold on its key's limits; pass it to
    :meth:`GatewayKeys.settle` once the request is over (settling twice is a no-op)."""

    __slots__ = ("_key", "_lease", "_reservation", "estimated_tokens", "settled")

    def __init__(
        self,
        key: _Key | None,
        lease: Lease | None,
        reservation: Reservation | None,
        estimated_tokens: int,
    ) -> None:
        self._key = key
        self._lease = lease
        self._reservation = reservation
        self.estimated_tokens = estimated_tokens
        self.settled = False

    @property
    def reserved_usd(self) -> float:
        """What the request holds of its key's daily budget (0.0 without a budget)."""
        return 0.0 if self._reservation is None else self._reservation.amount

    @property
    def key_name(self) -> str | None:
        """The key's configured name (``None``: no key, with ``required = false``)."""
        return None if self._key is None or self._key.name == ANONYMOUS else self._key.name

    def __repr__(self) -> str:
        return f"<Admission key={self.key_name!r} settled={self.settled}>"


class GatewayKeys:
    """The gateway's keys and their limits, built once per gateway from ``KeysConfig``.

    >>> keys = GatewayKeys.from_config(config.gateway.keys, clock=SystemClock())  # doctest: +SKIP
    >>> admission = await keys.admit(api_key_from_headers(request.headers),  # doctest: +SKIP
    ...                              estimated_tokens=1_200, estimated_cost_usd=0.002)
    >>> ...  # run the cascade
    >>> await keys.settle(admission, tokens=used, cost_usd=result.cost_usd)  # doctest: +SKIP
    """

    __slots__ = (
        "_anonymous",
        "_by_index",
        "_clock",
        "_days",
        "_retired",
        "_secret",
        "_shared",
        "defaults",
        "required",
    )

    def __init__(
        self,
        keys: list[tuple[str, bytes, KeyLimits]],
        *,
        required: bool,
        defaults: KeyLimits,
        clock: Clock,
        epoch_s: float | None = None,
        shared: SharedState | None = None,
    ) -> None:
        if len(keys) > MAX_KEYS:
            raise ValueError(f"at most {MAX_KEYS} keys")
        self.required = required
        self.defaults = defaults
        self._shared = shared
        self._clock = clock
        self._days = UtcDays(clock, epoch_s=epoch_s)
        # Keys are found by an HMAC of their hash under a secret of this process's: how
        # long a lookup takes then says nothing about the stored hashes.
        self._secret = secrets.token_bytes(32)
        self._by_index: dict[bytes, _Key] = {}
        for name, digest, limits in keys:
            key = _Key(name, digest, limits, clock=clock, days=self._days, shared=shared)
            self._by_index[self._index(digest)] = key
        self._anonymous = (
            None
            if required
            else _Key(ANONYMOUS, b"", defaults, clock=clock, days=self._days, shared=shared)
        )
        self._retired: dict[str, _Key] = {}
        """Keys a reload revoked, by name (the latest ``MAX_KEYS``): listed again, a name
        goes on with its counters (its day, its minute, its requests in flight) as a
        rotated key does, and their settlements kept while Redis was down still go."""

    @classmethod
    def from_config(
        cls,
        config: KeysConfig,
        *,
        clock: Clock,
        shared: SharedState | None = None,
        environ: Mapping[str, str] | None = None,
        epoch_s: float | None = None,
    ) -> GatewayKeys:
        """The keys of ``config``; an ``env`` entry is read from ``environ``
        (``os.environ`` by default), hashed, and its raw value dropped. A missing or
        malformed variable is a :class:`~cascade.ConfigError` naming the entry."""
        return cls(
            resolved_keys(config, environ),
            required=config.required,
            defaults=config.defaults,
            clock=clock,
            epoch_s=epoch_s,
            shared=shared,
        )

    def reload(self, config: KeysConfig, keys: list[tuple[str, bytes, KeyLimits]]) -> KeyChanges:
        """The keys of a config file read again (SIGHUP; ``keys`` from
        :func:`resolved_keys`): a key no longer listed stops working at once (its requests
        under way finish), a new one works, a key given a new hash under its name (a
        rotation) works instead of the old one with the old one's counters. A name this
        process knew (revoked by an earlier reload) listed again goes on with its counters
        too, as in a shared Redis (where they are kept by name): removing a key and
        listing it again starts no new day. Keys keep the limits they were built with: a
        changed limit (and ``required``, ``defaults``) needs a restart, and is reported in
        ``KeyChanges.kept`` (counters rebuilt by a reload would start the day afresh). A
        key listed under another name than its own is a :class:`~cascade.ConfigError`
        naming the entry, and nothing changes."""
        if len(keys) > MAX_KEYS:
            raise ValueError(f"at most {MAX_KEYS} keys")
        current = {key.digest: key for key in self._by_index.values()}
        for i, (name, digest, _) in enumerate(keys):
            # A key under another name would go on counting (and being logged) as the
            # name it has until a restart; with that name given a new key as well, two
            # keys would count apart under one name. Refused before anything changes.
            found = current.get(digest)
            if found is not None and found.name != name:
                raise ConfigError(
                    f"the key of {found.name!r} is listed under {name!r}: a key takes "
                    "another name only at a restart (give a new tenant a new key)",
                    path=f"gateway.keys.entries[{i}]",
                )
        by_name = {key.name: key for key in current.values()}
        changes = KeyChanges()
        by_index: dict[bytes, _Key] = {}
        for name, digest, limits in keys:
            key = current.get(digest)
            if key is None:
                # (names are unique in a file, and its old hash under another name was
                # refused above: a known name with a new hash is a rotation)
                old = by_name.get(name)
                if old is not None:  # rotated
                    key = old
                    key.digest = digest
                    changes.rotated.append(name)
                else:
                    key = self._retired.pop(name, None)
                    if key is not None:  # listed again: its counters go on
                        key.digest = digest
                    else:
                        key = _Key(
                            name,
                            digest,
                            limits,
                            clock=self._clock,
                            days=self._days,
                            shared=self._shared,
                        )
                    changes.added.append(name)
            if key.limits != limits:  # (a key under another name: refused above)
                changes.kept.append(key.name)
            by_index[self._index(digest)] = key
        kept = set(by_index.values())
        kept_names = {key.name for key in kept}
        changes.revoked = sorted(n for n in by_name if n not in kept_names)
        for key in current.values():
            if key not in kept:
                self._retired.pop(key.name, None)  # (its place: the latest)
                self._retired[key.name] = key
        while len(self._retired) > MAX_KEYS:
            del self._retired[next(iter(self._retired))]
        if config.required != self.required or config.defaults != self.defaults:
            changes.settings_kept = True
        self._by_index = by_index
        return changes

    def _index(self, digest: bytes) -> bytes:
        return hmac.new(self._secret, digest, hashlib.sha256).digest()

    def check(self, api_key: str | None) -> Callable[[str, str], bool]:
        """Raise ``GatewayDenied`` (401) unless ``api_key`` is a known key (or no key is
        needed): a lookup with no I/O that counts nothing; :meth:`admit` checks the rest.
        Returns whether the key may ask a route (its name) for a model name."""
        return self._find(api_key).may_use

    def enter(self, api_key: str | None) -> _Key:
        """:meth:`check`, and a request of the key counted in flight until its
        ``leave()``:
        ``GatewayDenied`` (429 ``key_busy``) when the key has ``max_in_flight`` already."""
        key = self._find(api_key)
        if key.max_in_flight is not None and key.in_flight >= key.max_in_flight:
            self._denied(key, "key_busy")
            raise GatewayDenied(
                status=429,
                code="key_busy",
                message="this key is at its limit of requests in flight",
                retry_after_s=1.0,
                key=key.name,  # (named on the access line, as its other 429s are)
            )
        key.in_flight += 1
        return key

    def _find(self, api_key: str | None) -> _Key:
        if api_key is None:
            if self._anonymous is None:
                raise _unauthorized(
                    "no API key: send 'Authorization: Bearer <key>' or 'x-api-key'",
                    code="missing_api_key",
                )
            return self._anonymous
        if len(api_key) > MAX_KEY_CHARS:
            raise _unauthorized("malformed API key")
        digest = hashlib.sha256(api_key.encode("utf-8", "surrogateescape")).digest()
        key = self._by_index.get(self._index(digest))
        if key is None or not hmac.compare_digest(key.digest, digest):
            raise _unauthorized("invalid API key")
        return key

    async def admit(
        self,
        api_key: str | None,
        *,
        estimated_tokens: int,
        estimated_cost_usd: float = 0.0,
        route: str | None = None,
        model: str | None = None,
    ) -> Admission:
        """Admit a request presenting ``api_key`` (from :func:`api_key_from_headers`) or
        raise :class:`GatewayDenied`. ``estimated_tokens`` (prompt + ``max_tokens``) is
        charged to the tokens per minute and ``estimated_cost_usd`` reserved from the
        day's budget until :meth:`settle`."""
        key = self._find(api_key)
        if key.routes is not None and route is not None and route not in key.routes:
            self._denied(key, "route_not_allowed")
            raise GatewayDenied(
                status=403, code="route_not_allowed", message="this key may not use that route"
            )
        if key.models is not None and model is not None and model not in key.models:
            self._denied(key, "model_not_allowed")
            raise GatewayDenied(
                status=403, code="model_not_allowed", message="this key may not use that model"
            )
        tokens = min(max(int(estimated_tokens), 0), _MAX_TOKENS)
        cost = float(estimated_cost_usd)
        cost = cost if cost > 0 and math.isfinite(cost) else 0.0
        reservation = None
        if key.budget is not None:
            reservation = await key.budget.reserve(cost)
            if reservation is None:
                self._denied(key, "insufficient_quota")
                if key.budget.spent < key.budget.usd_per_day:
                    # Only held by requests in flight, which may cost far less than they
                    # reserved: worth retrying soon, not at midnight.
                    raise GatewayDenied(
                        status=429,
                        code="insufficient_quota",
                        message="this key's budget for the day is held by its requests in flight",
                        retry_after_s=min(_HELD_RETRY_S, self._days.until_next_day()),
                    )
                raise GatewayDenied(
                    status=429,
                    code="insufficient_quota",
                    message="this key has used its budget for the day (UTC)",
                    retry_after_s=self._days.until_next_day(),
                    should_retry=False,  # the SDKs would retry a 429 at once, for nothing
                )
        lease = None
        if key.limiter is not None:
            try:
                lease = await key.limiter.reserve(tokens=tokens)
            except BaseException:
                if reservation is not None and key.budget is not None:
                    key.budget.settle(reservation, 0.0)
                raise
            if lease is None:
                if reservation is not None and key.budget is not None:
                    key.budget.settle(reservation, 0.0)
                self._denied(key, "rate_limit_exceeded")
                raise GatewayDenied(
                    status=429,
                    code="rate_limit_exceeded",
                    message="this key is over its requests or tokens per minute",
                    retry_after_s=max(key.limiter.wait_s(tokens=tokens), 0.001),
                )
        return Admission(key, lease, reservation, tokens)

    async def settle(self, admission: Admission, *, tokens: int | None, cost_usd: float) -> None:
        """Charge what the admitted request used: ``tokens`` (``None``: the estimate
        stands) and ``cost_usd``. Call it once the request is over, however it ended."""
        if admission.settled:
            return
        admission.settled = True
        if admission._lease is not None:
            used = None if tokens is None else min(max(int(tokens), 0), _MAX_TOKENS)
            admission._lease.release(used_tokens=used)
        key = admission._key
        if admission._reservation is not None and key is not None and key.budget is not None:
            key.budget.settle(admission._reservation, cost_usd)

    def send_unsent(self) -> None:
        """Send the budgets' settlements kept while Redis was down, if it is up again
        (in the background: the shared state's ``aclose()`` waits for them)."""
        for key in (*self._by_index.values(), *self._retired.values(), self._anonymous):
            if key is not None and key.budget is not None:
                key.budget.send_unsent()

    def _denied(self, key: _Key, code: str) -> None:
        log.info("gateway request denied", key=key.name, code=code)

    def spent_today(self, name: str) -> float | None:
        """The named key's spend today as this process knows it (``None``: no budget)."""
        for key in (*self._by_index.values(), self._anonymous):
            if key is not None and key.name == name and key.budget is not None:
                return key.budget.spent
        return None

    def __len__(self) -> int:
        return len(self._by_index)

    def __repr__(self) -> str:
        shared = "none" if self._shared is None else ("up" if self._shared.available else "down")
        return f"<GatewayKeys keys={len(self)} required={self.required} shared={shared}>"
