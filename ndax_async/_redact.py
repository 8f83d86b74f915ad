"""Keeping secrets out of text: a server URL as it may be shown in a message.

A Redis or PostgreSQL URL may carry a password, in its user part
(``redis://:pw@host``) or as a query parameter (``?password=pw``, which both
redis-py and asyncpg accept). :func:`redact_url` hides both before a URL goes
into a log line, a repr or an exception.
"""

from __future__ import annotations

import urllib.parse

__all__ = ["redact_url"]

_SECRET_PARAMETERS = frozenset({"password", "sslpassword", "passfile"})


def redact_url(url: str) -> str:
    """``url`` with any password, in its user part or its query, replaced by ``***``."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            host = netloc.rpartition("@")[2]
            netloc = f"{user}:***@{host}"
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if any(name.lower() in _SECRET_PARAMETERS for name, _ in query):
            hidden = [(name, "***" if name.lower() in _SECRET_PARAMETERS else value) for name, value in query]
            return urllib.parse.urlunsplit(
                parts._replace(netloc=netloc, query=urllib.parse.urlencode(hidden, safe="*"))
            )
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<a URL that could not be parsed>"
