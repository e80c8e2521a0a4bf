"""Redis URLs as :mod:`cascade.resilience.shared` shows and checks them: the password
(userinfo or ``?password=``) hidden from ``repr``, logs and errors, and whether a URL
carries one (then no separate ``password_env`` may be given).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .._urls import hide_userinfo

__all__ = ["_query_password", "redact_url"]


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo or ``?password=``) replaced by ``***``."""
    url = hide_userinfo(url, keep_user=True)
    try:
        parts = urlsplit(url)
        query = parts.query
        if "password" in query.lower():
            pairs = parse_qsl(query, keep_blank_values=True)
            redacted = [(k, "***" if k.lower() == "password" else v) for k, v in pairs]
            query = urlencode(redacted, safe="*")
        if query == parts.query:
            return url
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    except ValueError:
        return "<redis url>"


def _query_password(url: str) -> bool:
    try:
        return any(k.lower() == "password" and v for k, v in parse_qsl(urlsplit(url).query))
    except ValueError:
        return False
