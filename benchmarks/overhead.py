"""The SDK's own work per create: ``client.customers.create`` against a hand-written create.

Both send through the same ``httpx.AsyncClient`` over an in-process transport
that answers at once, so no server is measured: the figure is this process's
CPU time per create (``time.process_time``). The hand-written create builds the
wire body (with a random request_id), encodes it with ``json.dumps``, signs it
with ``hmac``, POSTs it and parses the reply with ``response.json()``. The SDK
also derives the request_id, encodes canonically, retries through its
transport and reads a typed record; from a mapping it also validates. A last row
gives the SDK its own client over the same instant transport (``transport=``),
where it builds each ``httpx.Request`` itself instead of calling ``build_request``.
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
HAND_WRITTEN = "hand-written create (encode, sign, POST, parse)"
MODEL_IN = "SDK, NewCustomer in"
DICT_IN = "SDK, dict in (validated per call)"
OWN_CLIENT = "SDK, NewCustomer in, on its own client over the same transport (transport=)"


class InstantTransport(httpx.AsyncBaseTransport):
    """Answers every request at once with a created customer."""

    def __init__(self) -> None:
        record = {**customer(0), "participant_code": "P0000001", "status": "submitted"}
        self.body = json.dumps({"message": record}).encode()
        self.headers = [(b"content-type", b"application/json")]

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=self.headers, content=self.body)


async def _hand_written(http: httpx.AsyncClient, calls: int) -> float:
    started = time.process_time()
    for n in range(calls):
        body = hand_written_body(n, "hand")
        response = await http.post(BASE_URL + CREATE_ROUTE, content=body, headers=sign_headers(body))
        response.raise_for_status()
        response.json()
    return time.process_time() - started


async def _sdk(
    http: httpx.AsyncClient, calls: int, *, from_mapping: bool = False, own: bool = False
) -> float:
    wires = [customer(n, "sdk") for n in range(calls)]
    inputs: list[Any] = wires if from_mapping else [NewCustomer(**wire) for wire in wires]
    credentials = {"api_key": API_KEY, "api_secret": API_SECRET, "passphrase": PASSPHRASE}
    client_options: dict[str, Any] = {"transport": InstantTransport()} if own else {"http_client": http}
    async with AsyncClient(**credentials, **client_options) as client:
        started = time.process_time()
        for item in inputs:
            await client.customers.create(item)
        return time.process_time() - started


CASES = {
    HAND_WRITTEN: lambda http, n: _hand_written(http, n),
    MODEL_IN: lambda http, n: _sdk(http, n),
    DICT_IN: lambda http, n: _sdk(http, n, from_mapping=True),
    OWN_CLIENT: lambda http, n: _sdk(http, n, own=True),
}


async def _run(calls: int, repeats: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in CASES}
    async with httpx.AsyncClient(transport=InstantTransport()) as http:
        for case in CASES.values():  # warm-up: imports, caches
            await case(http, min(calls, 300))
        for repeat in range(repeats):
            order = list(CASES.items()) if repeat % 2 == 0 else list(CASES.items())[::-1]
            for name, case in order:
                samples[name].append(await case(http, calls) / calls * 1e6)
    return samples


def run(calls: int, repeats: int) -> dict[str, Any]:
    """Median CPU microseconds per create for each case, and each SDK case's paired ratio."""
    samples = asyncio.run(_run(calls, repeats))
    base = samples[HAND_WRITTEN]
    return {
        "calls": calls,
        "repeats": repeats,
        "us_per_call": {name: median(values) for name, values in samples.items()},
        "ratio": {
            name: median([value / base[i] for i, value in enumerate(values)])
            for name, values in samples.items()
        },
    }
