"""The whole SDK against the sandbox under mixed faults: in-process and over loopback HTTP.

Thousands of creates, minors and updates run concurrently while ~30% of
requests meet a fault (dropped before, dropped after commit, 503, 429, slow
after commit). The sandbox's counters witness exactly-once: creations equal
operations, updates applied once each, zero duplicates, zero conflicts.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
import pytest

from ndax_async import Address, AsyncClient, CustomerUpdate, RetryPolicy
from ndax_async.errors import ResponseLostError
from ndax_async.testing import Faults, Sandbox, SandboxServer

from .helpers import customer_wire, minor_wire

FULL = bool(os.environ.get("NDAX_FULL_TESTS"))
BACKENDS = ["aiohttp", "httpx"]
POLICY = RetryPolicy(backoff_initial=0.005, backoff_max=0.05, rate_limit_pause=0.01)


def mixed_faults(seed: int) -> Faults:
    return Faults(
        drop_before=0.06,
        drop_after=0.08,
        err503=0.06,
        err429=0.04,
        slow_after=0.06,
        slow_seconds=0.3,
        retry_after=0.0,
        seed=seed,
    )


async def onboard(client: AsyncClient, customers: int, concurrency: int) -> dict[str, int]:
    """Create customers, then minors under half of them and an address change for the rest."""
    gate = asyncio.Semaphore(concurrency)

    async def bounded(coro: Any) -> Any:
        async with gate:
            return await coro

    created = await asyncio.gather(
        *(
            bounded(client.customers.create(customer_wire(email=f"c{n}@mail.com", id_number=f"ID{n}")))
            for n in range(customers)
        )
    )
    codes = [str(c.participant_code) for c in created]
    half = customers // 2
    minors = [
        bounded(
            client.customers.create_minor(
                minor_wire(email=f"m{n}@mail.com", id_number=f"MID{n}", custodian_participant_code=code)
            )
        )
        for n, code in enumerate(codes[:half])
    ]
    address = Address(address_one="1 Road", city="Albany", state="NY", zip="12207", country="United States")
    updates = [
        bounded(
            client.customers.update(
                code, CustomerUpdate(platform_updated_at=1700000000000 + n, address=address)
            )
        )
        for n, code in enumerate(codes[half:])
    ]
    results = await asyncio.gather(*minors, *updates)
    return {"customers": customers, "minors": half, "updates": len(results) - half}


def assert_exactly_once(sandbox: Sandbox, expected: dict[str, int]) -> None:
    stats = sandbox.stats
    assert stats["customers"] == expected["customers"]
    assert stats["minors"] == expected["minors"]
    assert stats["creations"] == expected["customers"] + expected["minors"]
    assert stats["updates"] == expected["updates"]
    assert stats["duplicates"] == 0
    assert stats["conflicts"] == 0
    assert stats["duplicate_payloads"] == 0
    faults = sum(stats["faults"].values())
    requests = sum(stats["requests"].values())
    assert faults / requests > 0.2, stats  # the faults really happened
    assert stats["faults"]["drop_after"] > 0
    assert stats["replays"] > 0


async def test_two_thousand_operations_in_process_under_faults() -> None:
    sandbox = Sandbox(faults=mixed_faults(seed=11))
    async with sandbox.client(retry_policy=POLICY, max_retries=12, timeout=0.1) as client:
        expected = await onboard(client, customers=1334 if not FULL else 4000, concurrency=64)
    assert expected["customers"] + expected["minors"] + expected["updates"] >= 2000
    assert_exactly_once(sandbox, expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("customers", [300 if not FULL else 2000])
async def test_operations_over_loopback_http_under_faults(customers: int, backend: str) -> None:
    sandbox = Sandbox(faults=mixed_faults(seed=5))
    with SandboxServer(sandbox) as server:
        async with AsyncClient(
            **sandbox.credentials,
            base_url=server.base_url,
            retry_policy=POLICY,
            max_retries=12,
            timeout=0.2,
            http_backend=backend,  # type: ignore[arg-type]
        ) as client:
            expected = await onboard(client, customers=customers, concurrency=32)
            listed = [p async for p in client.participants.list()]
    assert_exactly_once(sandbox, expected)
    assert len(listed) == expected["customers"] + expected["minors"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_loopback_drop_is_seen_as_a_disconnect_and_retried(backend: Any) -> None:
    sandbox = Sandbox(faults=Faults(drop_after=1.0))
    with SandboxServer(sandbox) as server:
        options: dict[str, Any] = {
            **sandbox.credentials,
            "base_url": server.base_url,
            "http_backend": backend,
        }
        async with AsyncClient(**options, max_retries=0) as client:
            with pytest.raises(ResponseLostError, match=r"response lost .*may have been applied"):
                await client.customers.create(customer_wire())
        sandbox.faults()
        async with AsyncClient(**options) as client:
            await client.customers.create(customer_wire())
            # keep-alive: a second call reuses the pooled connection
            assert await client.participants.get_by_email("email-example@mail.com") is not None
    assert (sandbox.stats["creations"], sandbox.stats["replays"]) == (1, 1)


def test_sandbox_fixtures_are_registered(pytester: pytest.Pytester) -> None:
    pytester.makeconftest("")
    pytester.makepyfile(
        """
        import httpx

        async def test_in_process(ndax_client, ndax_sandbox):
            assert await ndax_client.participants.get_by_email("a@b.co") is None
            assert ndax_sandbox.stats["requests"] == {"get_by_email": 1}

        def test_served(ndax_sandbox_server):
            reply = httpx.get(ndax_sandbox_server.base_url + "/participants")
            assert reply.status_code == 401
        """
    )
    result = pytester.runpytest_subprocess("-p", "asyncio", "--asyncio-mode=auto", "-q")
    result.assert_outcomes(passed=2)


async def test_sandbox_server_from_a_plain_httpx_client() -> None:
    with SandboxServer(Sandbox()) as server:
        async with httpx.AsyncClient(base_url=server.base_url) as http:
            reply = await http.post("/participants/customers/new", content=b"{}")
    assert reply.status_code == 401
    assert reply.json() == {"error": True, "message": "Missing authentication headers"}


def test_demo_applies_everything_exactly_once(capsys: pytest.CaptureFixture[str]) -> None:
    from ndax_async.cli import main

    assert main(["demo", "--customers", "120"]) == 0
    out = capsys.readouterr().out
    assert "created 120 customers and 30 minors, applied 80 updates" in out
    assert "duplicates 0, conflicts 0, duplicate payloads 0, failed operations 0" in out
    assert "every operation applied exactly once" in out
