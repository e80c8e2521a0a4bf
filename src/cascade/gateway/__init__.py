"""``cascade serve``: an OpenAI-compatible gateway in front of the cascade."""

from ._keys import (
    Admission,
    GatewayDenied,
    GatewayKeys,
    KeyEntry,
    KeyLimits,
    KeysConfig,
    api_key_from_headers,
    hash_key,
)

__all__ = [
    "Admission",
    "GatewayDenied",
    "GatewayKeys",
    "KeyEntry",
    "KeyLimits",
    "KeysConfig",
    "api_key_from_headers",
    "hash_key",
]
