"""What every benchmark shares: payloads, credentials, the hand-written clients, statistics."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import platform
import statistics
import time
import uuid
from typing import Any

API_KEY = "sandbox-key"
API_SECRET = base64.b64encode(b"ndax-async sandbox secret").decode()  # the sandbox's defaults
PASSPHRASE = "sandbox-passphrase"
CREATE_ROUTE = "/participants/customers/new"


def customer(n: int, tag: str = "bench") -> dict[str, Any]:
    """A valid, unique customer in wire form (unique by email)."""
    return {
        "first_name": "Ada",
        "last_name": f"Lovelace{n}",
        "email": f"{tag}-{n}@example.com",
        "address_one": f"{n} Main St.",
        "address_two": "Suite 1000",
        "city": "Chicago",
        "state": "IL",
        "zip": "60601",
        "country": "United States",
        "date_of_birth": "1985-09-02",
        "id_number_type": "ssn",
        "id_number": f"{100000000 + n}",
        "signed_timestamp": 1603378501286,
        "prefunded": False,
        "metadata": {"source": "benchmark"},
    }


def sign_headers(body: bytes, method: str = "POST", route: str = CREATE_ROUTE) -> dict[str, str]:
    """What a hand-written client does per request: key an HMAC, sign, build headers."""
    timestamp = str(int(time.time()))
    key = base64.b64decode(API_SECRET)
    digest = hmac.new(key, f"{timestamp}{method}{route}".encode() + body, hashlib.sha256).digest()
    return {
        "X-NDAX-API-KEY": API_KEY,
        "X-NDAX-PASSPHRASE": PASSPHRASE,
        "X-NDAX-TIMESTAMP": timestamp,
        "X-NDAX-SIGNED": base64.b64encode(digest).decode(),
        "Content-Type": "application/json",
    }


def encode(payload: dict[str, Any]) -> bytes:
    """The hand-written encoding: compact JSON, as JSON.stringify writes this payload."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def hand_written_body(n: int, tag: str = "bench") -> bytes:
    """What a careful hand-written client posts: the SDK's wire body, with a random request_id.

    The request_id is there because the API only makes a retried create safe
    with one, and so that the server does the same work for every client.
    """
    return encode({"request_id": str(uuid.uuid4()), **customer(n, tag)})


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    """One line naming the machine the figures come from."""
    cpus = os.cpu_count()
    return (
        f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}, {cpus} CPU(s)"
    )


def verdict(ok: bool) -> str:
    return "holds" if ok else "MISSED"
