"""Test data (credentials and valid payloads in wire form) and small helpers."""

from __future__ import annotations

import base64
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

API_KEY = "public_key"
API_SECRET = base64.b64encode(b"an-api-secret-of-32-bytes-long!!").decode()
PASSPHRASE = "correct horse battery staple"
BASE_URL = "https://api.ndax.in"


def customer_wire(**overrides: Any) -> dict[str, Any]:
    """A valid customer in wire form (the seed's US sample)."""
    wire: dict[str, Any] = {
        "first_name": "John",
        "last_name": "Smith",
        "email": "email-example@mail.com",
        "address_one": "1 Main St.",
        "address_two": "Suite 1000",
        "city": "Chicago",
        "state": "IL",
        "zip": "12345",
        "country": "United States",
        "date_of_birth": "1985-09-02",
        "id_number_type": "ssn",
        "id_number": "123456789",
        "signed_timestamp": 1603378501286,
        "prefunded": False,
        "metadata": {},
    }
    wire.update(overrides)
    return {key: value for key, value in wire.items() if value is not None}


def minor_wire(**overrides: Any) -> dict[str, Any]:
    """A valid minor in wire form (the seed's Indian sample, typo fixed)."""
    wire: dict[str, Any] = {
        "first_name": "Gaurav",
        "last_name": "Mehta",
        "email": "gewgawrav@gmail.com",
        "address_one": "1 Near CS",
        "address_two": "Fort Area",
        "city": "Mumbai",
        "state": "MH",
        "zip": "450001",
        "country": "India",
        "date_of_birth": "2012-10-13",
        "id_number_type": "aadhar_card",
        "id_number": "123456789",
        "utma_signed_timestamp": 1603378501286,
        "custodian_participant_code": "CAST01",
        "custodian_relationship": "parent",
        "metadata": {},
    }
    wire.update(overrides)
    return {key: value for key, value in wire.items() if value is not None}


@contextlib.contextmanager
def default_sigint() -> Iterator[None]:
    """SIGINT handled by Python's default handler for the block, so a child process started
    in it gets SIGINT at its default as a terminal's would: a suite run as a background job
    inherits SIGINT ignored, and the children with it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
