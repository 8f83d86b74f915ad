"""The sandbox's state: participants, the request_id ledger, the counters, and the replies.

:class:`SandboxState` holds what the sandbox remembers between requests; the
write endpoints (:mod:`._writes`) and the read endpoints (:mod:`._reads`) work
on it, and :class:`~ndax_async.testing.Sandbox` puts them together.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["NOT_FOUND", "LedgerEntry", "Reply", "SandboxState", "auth_error", "errors", "json_reply"]

_COUNTERS = (
    "creations",
    "customers",
    "minors",
    "updates",
    "replays",
    "conflicts",
    "duplicate_payloads",
    "duplicates",
    "validation_failures",
    "rate_limited",
    "rate_limit_blocks",
)


@attrs.frozen
class Reply:
    """The sandbox's answer; ``drop`` means the connection is cut instead."""

    status: int
    body: bytes
    headers: dict[str, str] = attrs.field(factory=dict)
    drop: bool = False
    delay: float = 0.0


def json_reply(status: int, value: Any, headers: dict[str, str] | None = None) -> Reply:
    """A JSON reply, non-ASCII as UTF-8."""
    return Reply(
        status,
        json.dumps(value, ensure_ascii=False).encode(),
        {"content-type": "application/json", **(headers or {})},
    )


def errors(status: int, *messages: str) -> Reply:
    """The API's ``{"errors": [...]}`` reply."""
    return json_reply(status, {"errors": list(messages)})


def auth_error(status: int, message: str) -> Reply:
    """The API's ``{"error": true, "message": ...}`` reply."""
    return json_reply(status, {"error": True, "message": message})


NOT_FOUND = json_reply(404, {"error": "Not Found"})


@attrs.define
class LedgerEntry:
    """What the request_id ledger remembers of one processed write."""

    route: str
    payload_hash: str
    reply: Reply


class SandboxState:
    """Participants (by code, by email, by person), the request_id ledger, and the counters.

    Guarded by ``_lock`` (re-entrant): the sandbox answers from several threads when served.
    """

    def __init__(self, platform_code: str) -> None:
        self.platform_code = platform_code
        self._lock = threading.RLock()
        self._codes = (f"P{n:07d}" for n in itertools.count(1))
        self.participants: dict[str, dict[str, Any]] = {}
        self._by_email: dict[tuple[str, str], str] = {}
        self._people: set[tuple[str, str, str, str]] = set()
        self._ledger: dict[str, LedgerEntry] = {}
        self._payloads: dict[tuple[str, str], str] = {}
        self._counters: Counter[str] = Counter()
        self._by_kind: dict[str, Counter[str]] = defaultdict(Counter)

    def add_participant(self, record: Mapping[str, Any], *, kind: str = "customer") -> str:
        """Put a participant straight into the state (for tests); returns its code.

        ``record`` may carry ``platform_code`` (another platform's participant)
        and ``participant_code``.
        """
        with self._lock:
            stored = dict(record)
            code = stored.setdefault("participant_code", next(self._codes))
            stored.setdefault("platform_code", self.platform_code)
            stored.setdefault("status", "approved")
            stored["_kind"] = kind
            self.participants[code] = stored
            if stored.get("email"):
                self._by_email[(stored["platform_code"], stored["email"].lower())] = code
            return str(code)

    @property
    def stats(self) -> dict[str, Any]:
        """A snapshot of every counter, as a plain mapping.

        ``requests`` (by endpoint), ``creations``, ``customers``, ``minors``,
        ``updates``, ``replays``, ``conflicts``, ``duplicate_payloads``,
        ``duplicates`` (a second participant for the same person),
        ``validation_failures``, ``rate_limited`` (requests refused 429 by the
        per-IP limit), ``rate_limit_blocks`` (blocks it started), ``auth_failures``
        (by kind; ``body_not_stringified``: signed over raw bytes that are not
        what ``JSON.stringify`` prints), ``faults`` (by kind). Served, the same
        is at ``GET /_sandbox/stats`` (JSON, no authentication, not counted).
        """
        with self._lock:
            snapshot: dict[str, Any] = {name: self._counters[name] for name in _COUNTERS}
            for kind in ("requests", "auth_failures", "faults"):
                snapshot[kind] = dict(self._by_kind[kind])
            return snapshot

    def _count(self, name: str, kind: str | None = None) -> None:
        if kind is None:
            self._counters[name] += 1
        else:
            self._by_kind[name][kind] += 1

    def _invalid(self, messages: list[str]) -> Reply:
        """A 400 for a payload the rules refuse, counted."""
        self._count("validation_failures")
        return errors(400, *messages)
