"""Showing a URL without its credentials, for logs, ``repr`` and error messages."""

from __future__ import annotations

__all__ = ["hide_userinfo"]


def hide_userinfo(url: str, *, keep_user: bool = False) -> str:
    """``url`` with its userinfo replaced by ``***`` (``keep_user``: a plain user name is
    kept, ``user:***``). Read off the raw text, not a parser: a password with "/", "?" or
    "#" in it moves the "@" out of what a parser calls the authority, so everything up to
    the last "@" is userinfo here (a query holding an "@" is hidden with it)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, host = rest.rsplit("@", 1)
    user, colon, _ = userinfo.partition(":")
    plain = keep_user and colon and not any(c in user for c in "/?#")
    return f"{scheme}://{user + ':***' if plain else '***'}@{host}"
