"""Per-call overhead: ``client.customers.create`` against a hand-written httpx POST.

Both run over the same in-process transport that answers instantly, so the
figure is pure client CPU: encoding, signing, the HTTP client's own work,
parsing. The hand-written call builds the same wire body (with a random
request_id), encodes it with ``json.dumps``, signs with ``hmac`` and parses
with ``response.json()``; the SDK also validates (for a mapping input), derives
the request_id and reads a typed record.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from ndax_async import AsyncClient, NewCustomer

from ._common import (
    API_KEY,
    API_SECRET,
    CREATE_ROUTE,
    PASSPHRASE,
    customer,
    hand_written_body,
    median,
    sign_headers,
)

BASE_URL = "https://api.ndax.in"


class InstantTransport(httpx.AsyncBaseTransport):
    """Answers every request at once with a created customer."""

    def __init__(self) -> None:
        record = {**customer(0), "participant_code": "P0000001", "status": "submitted"}
        self.body = json.dumps({"message": record}).encode()
        self.headers = [(b"content-type", b"application/json")]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=self.headers, content=self.body)


async def _hand_written(calls: int) -> float:
    async with httpx.AsyncClient(transport=InstantTransport(), base_url=BASE_URL) as http:
        started = time.perf_counter()
        for n in range(calls):
            body = hand_written_body(n, "hand")
            response = await http.post(CREATE_ROUTE, content=body, headers=sign_headers(body))
            response.raise_for_status()
            response.json()
        return time.perf_counter() - started


async def _sdk(calls: int, *, from_mapping: bool) -> float:
    wires = [customer(n, "sdk") for n in range(calls)]
    inputs: list[Any] = wires if from_mapping else [NewCustomer(**wire) for wire in wires]
    credentials = {"api_key": API_KEY, "api_secret": API_SECRET, "passphrase": PASSPHRASE}
    async with AsyncClient(**credentials, transport=InstantTransport()) as client:
        started = time.perf_counter()
        for item in inputs:
            await client.customers.create(item)
        return time.perf_counter() - started


CASES = {
    "hand-written httpx": lambda n: _hand_written(n),
    "SDK, NewCustomer in": lambda n: _sdk(n, from_mapping=False),
    "SDK, dict in (validated per call)": lambda n: _sdk(n, from_mapping=True),
}


def run(calls: int, repeats: int) -> dict[str, Any]:
    """Median microseconds per call for each case, alternating cases each repeat."""
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    for case in CASES.values():  # warm-up: imports, caches
        asyncio.run(case(min(calls, 200)))
    for _ in range(repeats):
        for name, case in CASES.items():
            samples[name].append(asyncio.run(case(calls)) / calls * 1e6)
    result = {name: median(values) for name, values in samples.items()}
    baseline = result["hand-written httpx"]
    return {
        "calls": calls,
        "repeats": repeats,
        "us_per_call": result,
        "ratio": {name: value / baseline for name, value in result.items()},
    }
