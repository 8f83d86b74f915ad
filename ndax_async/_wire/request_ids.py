"""request_id: one per logical operation, fixed before the first attempt.

The server replays a request only when the ``request_id`` *and* the payload
match; the same payload under a new id is a 400 (spec, "Idempotency"). So the
default id is *derived* from the operation itself (method, route, canonical
payload without ``request_id``, and an optional namespace): a retry, a
restarted worker and a second machine all compute the same id for the same
operation. It is formatted as a version-4 UUID because the platform requires
that form.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import os
import re
import uuid

__all__ = [
    "RequestIdMode",
    "derive_request_id",
    "key_to_request_id",
    "normalize_request_id",
    "random_request_id",
]


class RequestIdMode(str, enum.Enum):
    """How the SDK picks a request_id when the caller does not pin one."""

    DERIVED = "derived"
    """From the operation's content: the same operation always gets the same id."""

    RANDOM = "random"
    """A fresh random id per call (still fixed across that call's retries)."""


def derive_request_id(method: str, route: str, payload: bytes, namespace: str = "") -> str:
    """Return the version-4-form UUID for one logical operation.

    ``payload`` is the canonical JSON of the body *without* ``request_id``.
    """
    digest = hashlib.sha256(_head(namespace, method, route))
    digest.update(payload)  # no copy of the payload, unlike hashing head + payload
    return _as_uuid4(digest.digest()[:16])


@functools.lru_cache(maxsize=256)
def _head(namespace: str, method: str, route: str) -> bytes:
    """The length-prefixed namespace, method and route (one per endpoint, so kept)."""
    parts = (namespace.encode(), method.encode(), route.encode())
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def key_to_request_id(key: str, namespace: str = "") -> str:
    """Turn any caller key (an Idempotency-Key header, a row id) into a v4-form UUID."""
    return derive_request_id("KEY", key, b"", namespace)


def random_request_id() -> str:
    """A random version-4 UUID."""
    return _as_uuid4(os.urandom(16))


_CANONICAL_UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
# The variant nibble of a UUID: its top two bits forced to 10 (RFC 4122).
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}


def _as_uuid4(raw: bytes) -> str:
    """What ``str(uuid.UUID(bytes=raw, version=4))`` gives, without building a UUID."""
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def normalize_request_id(value: object) -> str | None:
    """Return a caller's request_id as a canonical lower-case v4 UUID string.

    Returns ``None`` when ``value`` is not a version-4 UUID (or its string).
    """
    if isinstance(value, str) and _CANONICAL_UUID4.fullmatch(value):
        return value  # already what str(uuid.UUID(value)) gives: skip building the UUID
    if isinstance(value, uuid.UUID):
        parsed = value
    elif isinstance(value, str):
        try:
            parsed = uuid.UUID(value)
        except ValueError:
            return None
    else:
        return None
    if parsed.version != 4 or parsed.variant != uuid.RFC_4122:
        return None
    return str(parsed)
