"""Byte-for-byte agreement with the vendor's Node.js reference signing.

Generates well over a thousand payloads (non-ASCII names, emoji, quotes,
backslashes, control characters, lone surrogates, nested metadata with
integer-like keys, awkward numbers), sends each through the real client over
respx, and has Node's JSON.stringify + HMAC recompute the body and signature
from the *value*. Skips only where ``node`` is missing and ``CI`` is unset.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx

from ndax_async import AsyncClient, NewCustomer
from ndax_async._wire.canonical_json import dumps
from ndax_async._wire.convert import to_wire
from ndax_async._wire.signing import Credentials
from ndax_async.testing import FakeClock

from .helpers import API_KEY, API_SECRET, BASE_URL, PASSPHRASE, customer_wire

NODE = shutil.which("node")
SCRIPT = Path(__file__).parent / "node" / "reference_sign.js"
CASES = 1200

pytestmark = pytest.mark.skipif(
    NODE is None and not os.environ.get("CI"), reason="node is not installed (mandatory when CI is set)"
)

_ALPHABETS = [
    "abcdefghijklmnopqrstuvwxyz ",
    "ÀÉÎÕÜßñçøåæ",
    "मुंबईगौरवमेहता",
    "東京都千代田区",
    "😀🎉👨‍👩‍👧🇮🇳",
    "\"'\\/`{}[]:,",
    "".join(chr(c) for c in range(0x20)) + "\x7f\u2028\u2029",
    "\ud800\udc00\udfff",
]


def _text(rng: random.Random, min_len: int = 0) -> str:
    length = rng.randint(min_len, 24)
    return "".join(rng.choice(rng.choice(_ALPHABETS)) for _ in range(length))


def _name(rng: random.Random) -> str:
    return "N" + _text(rng)


def _number(rng: random.Random) -> float | int:
    kind = rng.randrange(8)
    if kind == 0:
        return rng.randint(-(2**63), 2**63)
    if kind == 1:
        return rng.choice([0.0, -0.0, 1e21, 1e-7, 1e-6, 1e20, 123.0, 2**53 + 1])
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind == 3:
        return rng.random() * 10 ** rng.randint(-30, 30)
    if kind == 4:
        return float(rng.randint(-(10**17), 10**17))
    return rng.randint(-1000, 1000)


def _key(rng: random.Random) -> str:
    return rng.choice([str(rng.randint(0, 20)), "0" + str(rng.randint(0, 9)), str(2**32 - 1), _text(rng)])


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return _text(rng)
    if kind == 1:
        return _number(rng)
    if kind == 2:
        return rng.choice([True, False, None])
    if kind == 3:
        return _text(rng)
    if kind in (4, 5):
        return {_key(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]


def _customer(rng: random.Random) -> NewCustomer:
    wire = customer_wire(
        first_name=_name(rng),
        last_name=_name(rng),
        address_one="1 " + _text(rng),
        city="C" + _text(rng),
        id_number=_text(rng, 1) + "1",
        metadata={_key(rng): _value(rng, 1) for _ in range(rng.randint(0, 6))},
        signed_timestamp=rng.randint(10**12, 2 * 10**12),
    )
    return NewCustomer(**wire)


def _run_node(cases: list[dict[str, Any]]) -> list[dict[str, str]]:
    assert NODE is not None, "CI is set, so the Node cross-check is mandatory: install node"
    stdin = "".join(json.dumps(case, ensure_ascii=True) + "\n" for case in cases)
    done = subprocess.run(
        [NODE, str(SCRIPT)], input=stdin.encode("ascii"), capture_output=True, check=True, timeout=120
    )
    return [json.loads(line) for line in done.stdout.decode().splitlines()]


async def test_client_bodies_and_signatures_match_node() -> None:
    rng = random.Random(20261121)
    clock = FakeClock()
    sent: list[httpx.Request] = []
    customers = [_customer(rng) for _ in range(CASES)]
    with respx.mock(base_url=BASE_URL) as router:

        def answer(request: httpx.Request) -> httpx.Response:
            sent.append(request)
            clock.advance(1)
            return httpx.Response(200, json={"message": {"participant_code": "X"}})

        router.post("/participants/customers/new").mock(side_effect=answer)
        async with AsyncClient(
            api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE, clock=clock, http_backend="httpx"
        ) as c:
            for customer in customers:
                await c.customers.create(customer)

    cases = []
    for customer, request in zip(customers, sent, strict=True):
        request_id = json.loads(request.content)["request_id"]
        cases.append(
            {
                "secret": API_SECRET,
                "timestamp": request.headers["X-NDAX-TIMESTAMP"],
                "method": "POST",
                "path": "/participants/customers/new",
                "value": {"request_id": request_id, **to_wire(customer)},
            }
        )
    results = _run_node(cases)
    assert len(results) == CASES
    for request, result in zip(sent, results, strict=True):
        assert request.content == base64.b64decode(result["body_b64"])
        assert request.headers["X-NDAX-SIGNED"] == result["signature"]


def test_arbitrary_values_encode_like_json_stringify() -> None:
    rng = random.Random(7)
    credentials = Credentials(API_KEY, API_SECRET, PASSPHRASE)
    values = [_value(rng, 0) for _ in range(CASES)]
    cases = [
        {"secret": API_SECRET, "timestamp": "1700000000", "method": "PATCH", "path": "/p/X", "value": v}
        for v in values
    ]
    results = _run_node(cases)
    for value, result in zip(values, results, strict=True):
        body = dumps(value)
        assert body == base64.b64decode(result["body_b64"]), value
        assert credentials.sign("1700000000", "PATCH", "/p/X", body) == result["signature"]


def test_get_signs_empty_object_like_vendor_examples() -> None:
    credentials = Credentials(API_KEY, API_SECRET, PASSPHRASE)
    route = "/participants?email=a%40b.com&page=2"
    (result,) = _run_node(
        [{"secret": API_SECRET, "timestamp": "1700000000", "method": "GET", "path": route, "value": {}}]
    )
    assert credentials.sign("1700000000", "GET", route, b"{}") == result["signature"]
