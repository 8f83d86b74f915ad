"""What the sandbox checks before it reads a request: the per-IP rate limit and the signature.

Signatures (``Sandbox(signatures=...)``):

- ``"strict"`` (the default): the signature must match over the raw body *and*
  over ``JSON.stringify`` of the parsed body, i.e. the bytes sent must already
  be what ``JSON.stringify`` prints. The spec lets a server verify either form,
  so these are the only bytes that pass every server it allows.
- ``"raw"``: over the raw bytes only (a server that verifies what it received).
- ``"either"``: over the raw bytes or ``JSON.stringify`` of the parsed body
  (the loosest; the vendor's own example passes only this way or the second).

A request without a body signs the literal ``{}``. A body that is not JSON is
checked over its raw bytes (no server can re-stringify it); it is refused as
a bad request after.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Literal

from .._wire import canonical_json

__all__ = ["SIGNATURE_MODES", "RateLimit", "SignatureMode", "check_signature"]

SignatureMode = Literal["strict", "raw", "either"]
SIGNATURE_MODES: tuple[SignatureMode, ...] = ("strict", "raw", "either")


def check_signature(key: bytes, prefix: bytes, body: bytes, given: bytes, mode: SignatureMode) -> str | None:
    """``None`` if ``given`` verifies under ``mode``, else why not (an auth-failure kind)."""
    if not body:
        return None if _matches(key, prefix + b"{}", given) else "bad_signature"
    raw = _matches(key, prefix + body, given)
    if mode == "raw" or (mode == "either" and raw):
        return None if raw else "bad_signature"
    stringified = _stringify(body)
    if stringified is None:  # not JSON: only the raw bytes can be checked
        return None if raw else "bad_signature"
    if mode == "strict":
        if raw and stringified != body:
            return "body_not_stringified"  # would fail a server that verifies JSON.stringify
        return None if raw else "bad_signature"
    return None if _matches(key, prefix + stringified, given) else "bad_signature"


def _matches(key: bytes, message: bytes, given: bytes) -> bool:
    return hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), given)


def _stringify(body: bytes) -> bytes | None:
    """What ``JSON.stringify(JSON.parse(body))`` prints, or ``None`` if the body is not JSON."""
    try:
        return canonical_json.dumps(json.loads(body))
    except (ValueError, TypeError, RecursionError):
        return None


class RateLimit:
    """The platform's per-IP rule: more than ``requests`` in any rolling ``seconds``
    from one peer blocks that peer for ``seconds``.

    ``check(peer)`` records one request and answers ``"ok"``, ``"blocked"``
    (refused: the peer is blocked) or ``"overrun"`` (refused: this request
    started a block). Not thread-safe: the sandbox calls it under its lock.
    """

    def __init__(self, requests: int, seconds: float, clock: Callable[[], float]) -> None:
        self.requests = requests
        self.seconds = seconds
        self.clock = clock
        self._hits: defaultdict[str, deque[float]] = defaultdict(deque)
        self._blocked_until: dict[str, float] = {}

    def check(self, peer: str) -> Literal["ok", "blocked", "overrun"]:
        """Count one request from ``peer``; whether it is let through."""
        now = self.clock()
        if self._blocked_until.get(peer, float("-inf")) > now:
            return "blocked"
        hits = self._hits[peer]
        while hits and hits[0] <= now - self.seconds:
            hits.popleft()
        hits.append(now)
        if len(hits) > self.requests:
            self._blocked_until[peer] = now + self.seconds
            hits.clear()
            return "overrun"
        return "ok"
