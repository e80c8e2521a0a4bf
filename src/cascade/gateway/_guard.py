"""What a web browser may not make the gateway do for a page the operator visits.

``cascade serve`` listens on loopback without a key by default, and any page can make a
browser send a "simple" cross-origin ``POST`` (no CORS preflight; the page cannot read
the answer, but the provider call is paid), or reach the port under a host name of its
own that resolves to 127.0.0.1 (DNS rebinding; the page can then read answers too).
So, before any handler runs (:func:`check_request`, from the app's middleware):

- a ``POST`` whose ``Sec-Fetch-Site`` is ``cross-site`` or ``same-site``, or whose
  ``Origin`` is not the gateway's own (the ``Host`` it was reached at), is refused (403,
  ``cross_origin_request``). SDKs and curl send neither header: they are served;
- a request whose ``Host`` is not an IP literal, ``localhost``, or one of
  ``gateway.allowed_hosts`` is refused (403, ``host_not_allowed``) when the gateway was
  reached on a loopback address, or on any address once ``allowed_hosts`` is set.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from aiohttp import web
from yarl import URL

from ._errors import GatewayError

__all__ = ["check_request"]

_CROSS = frozenset({"cross-site", "same-site"})


def _refused(message: str, code: str) -> GatewayError:
    return GatewayError(403, message, code=code, should_retry=False)


# Parsed once per distinct value (a few per deployment; bounded against a client that
# sends a new one each time): yarl and ipaddress cost more than the rest of the checks.
@lru_cache(maxsize=256)
def _authority(scheme: str, host: str) -> tuple[str, int | None] | None:
    """``host`` (a ``Host`` header or an origin's authority) as (name, port), or None
    when it is not one."""
    try:
        url = URL.build(scheme=scheme, authority=host)
        # yarl parses some authorities only when read ("[:x": an unclosed bracket)
        name, port = url.host, url.port
    except (ValueError, TypeError):
        return None
    if not name:
        return None
    return name.lower().rstrip("."), port


@lru_cache(maxsize=256)
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _on_loopback(request: web.Request) -> bool:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple) or not sockname:
        return False
    return _is_loopback(str(sockname[0]))


@lru_cache(maxsize=64)
def _is_loopback(address: str) -> bool:
    """``address`` (the gateway's own end of a connection) is a loopback address."""
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_request(request: web.Request, allowed_hosts: frozenset[str] | None) -> None:
    """Raise ``GatewayError`` (403) for a request a browser made for another site."""
    host = request.headers.get("Host", "")
    own = _authority(request.scheme, host)
    if allowed_hosts is not None or _on_loopback(request):
        name = None if own is None else own[0]
        if name is None or not (
            _is_ip(name) or name == "localhost" or name in (allowed_hosts or ())
        ):
            message = "this gateway is not served under that host name (see allowed_hosts)"
            raise _refused(message, "host_not_allowed")
    if request.method != "POST":
        return
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() in _CROSS:
        raise _refused("cross-site requests are refused", "cross_origin_request")
    origin = request.headers.get("Origin")
    if origin is None:
        return
    scheme, sep, rest = origin.strip().lower().partition("://")
    # "null" (a sandboxed or file:// page) and every other scheme are foreign too.
    theirs = _authority(scheme, rest) if sep and scheme in ("http", "https") else None
    if theirs is None or own is None or _authority(scheme, host) != theirs:
        raise _refused("requests from another origin are refused", "cross_origin_request")
