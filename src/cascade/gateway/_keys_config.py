"""The ``[gateway.keys]`` table: gateway API keys (as SHA-256 hashes) and their limits.

An entry gives its key's hash, or the environment variable holding the raw key (hashed at
start, then dropped); see :mod:`cascade.gateway._keys` for how keys are checked.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Final

import msgspec
from msgspec import Meta

from .._errors import ConfigError, NestedConfigError

__all__ = [
    "KEY_CHARS",
    "MAX_KEYS",
    "MAX_KEY_CHARS",
    "KeyChanges",
    "KeyEntry",
    "KeyLimits",
    "KeysConfig",
    "env_digest",
    "hash_key",
    "merged_limits",
    "resolved_keys",
]

MAX_KEY_CHARS: Final = 512
"""The longest key accepted, in a header or an environment variable."""
MAX_KEYS: Final = 10_000
KEY_CHARS = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no spaces: what a header carries

_PerMinute = Annotated[float, Meta(gt=0, le=1e12)]
_Usd = Annotated[float, Meta(ge=0, le=1e12)]
_Name = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]
_Names = Annotated[list[Annotated[str, Meta(min_length=1, max_length=256)]], Meta(max_length=256)]


class KeyLimits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a key may do; a field left out takes the ``defaults`` table's value, and
    a field unset there too is not limited."""

    requests_per_minute: _PerMinute | None = None
    """Requests per minute (a bucket of a minute's worth, refilling continuously)."""
    tokens_per_minute: _PerMinute | None = None
    """Tokens per minute: a request is charged its estimate (prompt + ``max_tokens``)
    when admitted and settled to the tokens it used."""
    usd_per_day: _Usd | None = None
    """USD per UTC day, at the cascade's prices; 0 denies every request."""
    max_in_flight: Annotated[int, Meta(ge=1, le=1_000_000)] | None = None
    """Requests of this key one gateway process serves at once, counted from the moment
    its key is checked (its body still arriving included); one more gets 429
    ``key_busy`` with ``Retry-After: 1``. Per process, not shared through Redis: one
    tenant cannot take every slot of ``gateway.max_in_flight``."""
    routes: _Names | None = None
    """The route names this key may use (default: every route)."""
    models: _Names | None = None
    """The ``model`` values this key may ask for (default: any the routes answer)."""


class KeyEntry(KeyLimits, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One key: its ``name`` (in logs, metrics and Redis keys, never the key itself) and
    either ``sha256`` or ``env``."""

    name: _Name
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    """The SHA-256 of the key's UTF-8 bytes, 64 lowercase hex digits
    (``cascade hash-key`` reads a key on stdin and prints it)."""
    env: Annotated[str, Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")] | None = None
    """An environment variable holding the raw key, hashed when the gateway starts."""

    def __post_init__(self) -> None:
        if (self.sha256 is None) == (self.env is None):
            raise NestedConfigError("give one of sha256 and env", path="sha256")

    def __repr__(self) -> str:  # the hash is not a secret, but it has no use in a log
        return f"KeyEntry(name={self.name!r})"


class KeysConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The ``[gateway.keys]`` table: the keys that may call the gateway and their limits.

    >>> KeysConfig(entries=[KeyEntry(name="ci", env="CASCADE_KEY_CI", usd_per_day=5.0)])
    KeysConfig(required=True, keys=['ci'])
    """

    required: bool = True
    """Whether a request must present a key. When false, a request without one is
    admitted under the ``defaults`` limits, all such requests sharing one budget; a key
    that is presented must still be known."""
    defaults: KeyLimits = KeyLimits()
    """Limits for every key that does not set its own."""
    entries: Annotated[list[KeyEntry], Meta(max_length=MAX_KEYS)] = []
    """The keys (at most 10,000); names and hashes unique."""

    def __post_init__(self) -> None:
        names: set[str] = set()
        hashes: set[str] = set()
        for i, entry in enumerate(self.entries):
            if entry.name in names:
                raise NestedConfigError(
                    f"duplicate key name {entry.name!r}", path=f"entries[{i}].name"
                )
            names.add(entry.name)
            if entry.sha256 is not None:
                if entry.sha256 in hashes:
                    raise NestedConfigError("the same key twice", path=f"entries[{i}].sha256")
                hashes.add(entry.sha256)
        if self.required and not self.entries:
            raise NestedConfigError("keys are required but none is listed", path="entries")

    def __repr__(self) -> str:
        return f"KeysConfig(required={self.required!r}, keys={[e.name for e in self.entries]!r})"


def hash_key(key: str) -> str:
    """The SHA-256 of ``key`` as KeysConfig stores it (64 lowercase hex digits)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def merged_limits(defaults: KeyLimits, entry: KeyLimits) -> KeyLimits:
    fields = KeyLimits.__struct_fields__
    return KeyLimits(
        **{
            f: getattr(entry, f) if getattr(entry, f) is not None else getattr(defaults, f)
            for f in fields
        }
    )


def env_digest(env: Mapping[str, str], name: str, *, path: str) -> bytes:
    raw = env.get(name)
    if not raw:
        raise ConfigError(f"environment variable {name!r} is not set or empty", path=path)
    if len(raw) > MAX_KEY_CHARS or not KEY_CHARS.fullmatch(raw):
        raise ConfigError(
            f"environment variable {name!r} does not hold a key (printable ASCII, no"
            f" spaces, at most {MAX_KEY_CHARS} characters)",
            path=path,
        )
    return hashlib.sha256(raw.encode("ascii")).digest()


def resolved_keys(
    config: KeysConfig, environ: Mapping[str, str] | None = None
) -> list[tuple[str, bytes, KeyLimits]]:
    """Each key of ``config``: its name, SHA-256 and limits. An ``env`` entry is read from
    ``environ`` (``os.environ`` by default) and hashed, its raw value dropped; a missing
    or malformed variable, or a key listed twice, is a :class:`~cascade.ConfigError`
    naming the entry."""
    env = os.environ if environ is None else environ
    keys: list[tuple[str, bytes, KeyLimits]] = []
    seen: dict[bytes, int] = {}
    for i, entry in enumerate(config.entries):
        path = f"gateway.keys.entries[{i}]"
        if entry.sha256 is not None:
            digest = bytes.fromhex(entry.sha256)
        else:
            assert entry.env is not None
            digest = env_digest(env, entry.env, path=f"{path}.env")
        if digest in seen:
            which = "env" if entry.sha256 is None else "sha256"
            raise ConfigError(f"the same key as entries[{seen[digest]}]", path=f"{path}.{which}")
        seen[digest] = i
        keys.append((entry.name, digest, merged_limits(config.defaults, entry)))
    return keys


@dataclass(eq=False)
class KeyChanges:
    """What a reload did to the keys (their names only): :meth:`GatewayKeys.reload`."""

    added: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    rotated: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    """Keys whose limits the file changed: kept as they were until a restart."""
    settings_kept: bool = False
    """``required`` or ``defaults`` changed: kept until a restart."""
