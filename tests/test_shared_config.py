"""The ``[shared]`` config table: parsing, errors naming paths, the missing redis client."""

from __future__ import annotations

import sys
from typing import Any

import pytest

import cascade
from cascade import Cascade, Config, ConfigError, SharedConfig
from cascade.resilience.shared import redact_url

from .helpers import provider, tier

TOML = """
[[tiers]]
name = "small"
[[tiers.providers]]
name = "a"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "m"

[shared]
redis_url = "rediss://app:s3cret@redis.internal:6380/2"
key_prefix = "svc"
timeout_s = 0.05
"""


def cfg(shared: dict[str, Any]) -> dict[str, Any]:
    return {
        "tiers": [tier("small", provider("a", "http://127.0.0.1:9/v1", "m"))],
        "shared": shared,
    }


def test_the_shared_table_parses_with_defaults_and_keeps_its_password_out_of_repr() -> None:
    config = Config.from_toml(TOML)
    shared = config.shared
    assert isinstance(shared, SharedConfig)
    assert (shared.key_prefix, shared.timeout_s, shared.sync_interval_s) == ("svc", 0.05, 0.5)
    assert shared.redis_url.endswith("@redis.internal:6380/2")
    assert "s3cret" not in repr(shared) and "s3cret" not in repr(config)
    assert "rediss://app:***@redis.internal:6380/2" in repr(shared)


def test_without_a_shared_table_state_stays_in_memory() -> None:
    config = Config.from_dict({"tiers": cfg({})["tiers"]})
    assert config.shared is None
    assert Cascade(config)._calls.shared is None


@pytest.mark.parametrize(
    ("shared", "path"),
    [
        ({"redis_url": "http://127.0.0.1:6379"}, "shared.redis_url"),
        ({"redis_url": "redis://h", "timeout_s": 0}, "shared.timeout_s"),
        ({"redis_url": "redis://h", "sync_interval_s": -1}, "shared.sync_interval_s"),
        ({"redis_url": "redis://h", "key_prefix": ""}, "shared.key_prefix"),
        ({"redis_url": "redis://h", "key_prefix": "a b"}, "shared.key_prefix"),
        ({"redis_url": "redis://h", "pool": 3}, "shared.pool"),
        ({}, "shared"),
    ],
)
def test_shared_config_errors_name_the_path(shared: dict[str, Any], path: str) -> None:
    with pytest.raises(cascade.ConfigError) as info:
        Config.from_dict(cfg(shared))
    assert info.value.path == path


def test_a_shared_table_without_the_redis_client_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio.connection", None)
    with pytest.raises(cascade.ConfigError) as info:
        Cascade.from_dict(cfg({"redis_url": "redis://:s3cret@127.0.0.1:6379/0"}))
    assert info.value.path == "shared.redis_url"
    assert "cascade-engine[redis]" in str(info.value)
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:1/0", "redis://:***@h:1/0"),
        ("redis://user:pw@h/0", "redis://user:***@h/0"),
        ("redis://token@h", "redis://***@h"),
        ("redis://h:6379/0?password=pw&db=1", "redis://h:6379/0?password=***&db=1"),
        ("unix:///run/redis.sock?db=2", "unix:///run/redis.sock?db=2"),
        ("redis://h:6379", "redis://h:6379"),
        ("unix://:pw@/run/redis.sock", "unix://:***@/run/redis.sock"),
        # a password with "/", "?" or "#": urlsplit finds no "@" in the netloc
        ("redis://:s3cr3t/Pa55+w0rd@127.0.0.1:6399/0", "redis://:***@127.0.0.1:6399/0"),
        ("redis://:pw?x@h/0", "redis://:***@h/0"),
        ("redis://:a#b@h/0", "redis://:***@h/0"),
        ("redis://us/er:pw@h/0", "redis://***@h/0"),
        ("redis://:p@h/0?password=abc&x=1", "redis://:***@h/0?password=***&x=1"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url", ["redis://:s3cret@localhost:notaport/0", "redis://localhost:6379/0?socket_timeout=abc"]
)
def test_a_malformed_redis_url_fails_at_build_naming_the_path(url: str) -> None:
    with pytest.raises(cascade.ConfigError) as info:
        Cascade.from_dict(cfg({"redis_url": url}))
    assert info.value.path == "shared.redis_url"
    assert "s3cret" not in str(info.value)


def test_an_unparseable_redis_url_error_shows_no_piece_of_the_password() -> None:
    pytest.importorskip("redis")
    url = "redis://:s3cr3t/Pa55+w0rd@127.0.0.1:6399/0"  # "s3cr3t" read as the port
    with pytest.raises(ConfigError) as info:
        Cascade.from_dict(cfg({"redis_url": url}))
    assert info.value.path == "shared.redis_url"
    for piece in ("s3cr3t", "Pa55", "w0rd"):
        assert piece not in str(info.value)
