"""The retry budget (:class:`~ndax_async.RetryQuota`): botocore's refund rule.

A call that succeeds after retrying gives back everything its retries spent,
so a sustained fault rate that retries recover from never drains the budget;
only retries that end in failure do.
"""

from __future__ import annotations

import httpx

from ndax_async import AsyncClient, RetryPolicy, RetryQuota, ServerError
from ndax_async.testing import FakeClock, Sandbox

from .helpers import customer_wire

FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.01, rate_limit_pause=0.01)


class FirstAttemptFails(httpx.AsyncBaseTransport):
    """Answers each request's first attempt with a 503 (nothing applied), then lets it through."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.seen: set[bytes] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        if body not in self.seen:
            self.seen.add(body)
            return httpx.Response(503, json={"error": "try again"})
        forwarded = httpx.Request(request.method, request.url, headers=request.headers, content=body)
        return await self.sandbox.transport().handle_async_request(forwarded)


async def test_retried_successes_refund_their_retries_so_a_steady_fault_rate_never_drains_it() -> None:
    """Every call needs one retry (5 tokens of a 10-token budget). Earning back only 1
    per success, the third call would find the budget spent and fail."""
    clock = FakeClock()
    sandbox = Sandbox(clock=clock.time)
    quota = RetryQuota(capacity=10, retry_cost=5)
    options = {"retry_policy": FAST, "retry_quota": quota, "clock": clock}
    async with AsyncClient(**sandbox.credentials, transport=FirstAttemptFails(sandbox), **options) as client:
        for n in range(20):
            created = await client.customers.create(customer_wire(email=f"c{n}@mail.com", id_number=f"I{n}"))
            assert created.attempts == 2
            assert quota.tokens == quota.capacity
    assert quota.exhausted == 0
    assert sandbox.stats["creations"] == 20


async def test_retries_that_end_in_failure_are_not_refunded() -> None:
    quota = RetryQuota(capacity=12, retry_cost=5)
    always_503 = httpx.MockTransport(lambda request: httpx.Response(503, json={"error": "down"}))
    sandbox = Sandbox()
    options = {"retry_policy": FAST, "retry_quota": quota, "clock": FakeClock(), "max_retries": 5}
    async with AsyncClient(**sandbox.credentials, transport=always_503, **options) as client:
        try:
            await client.customers.create(customer_wire())
        except ServerError as error:
            assert error.attempts == 3  # two retries took 10 tokens, the third found 2 left
        else:
            raise AssertionError("a call answered 503 every time succeeded")
    assert quota.tokens == 2
    assert quota.exhausted == 1


def test_a_first_try_success_earns_one_token_and_a_refund_never_passes_capacity() -> None:
    quota = RetryQuota(capacity=20, retry_cost=5, timeout_cost=10)
    assert quota.spend() == 5
    assert quota.spend(timeout=True) == 10
    assert quota.tokens == 5
    quota.refund()  # a first-try success
    assert quota.tokens == 6
    quota.refund(15)  # a success after those two retries
    assert quota.tokens == 20
    quota.refund(5)
    assert quota.tokens == 20
    assert RetryQuota(capacity=4, retry_cost=5).spend() == 0
