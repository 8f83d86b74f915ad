"""The retry layer: what is retried, how long it waits, and what never changes."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging

import httpx
import pytest
import respx

from ndax_async import (
    AsyncClient,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeout,
    ResponseLostError,
    RetryEvent,
    RetryPolicy,
    ServerError,
)
from ndax_async.testing import FakeClock

from .helpers import API_KEY, API_SECRET, PASSPHRASE, customer_wire

NEW = "/participants/customers/new"


def ok() -> httpx.Response:
    return httpx.Response(200, json={"message": {"participant_code": "P1"}})


def make_client(clock: FakeClock, **options: object) -> AsyncClient:
    return AsyncClient(api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE, clock=clock, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
async def test_retryable_statuses_resend_identical_bytes_with_fresh_signature(
    client: AsyncClient, mock: respx.MockRouter, clock: FakeClock, status: int
) -> None:
    answers = iter([httpx.Response(status), ok()])

    def answer(request: httpx.Request) -> httpx.Response:
        clock.advance(1)  # each round trip takes a second
        return next(answers)

    route = mock.post(NEW).mock(side_effect=answer)
    customer = await client.customers.create(customer_wire())
    assert customer.attempts == 2
    first, second = (call.request for call in route.calls)
    assert first.content == second.content  # byte-identical, same request_id
    assert json.loads(first.content)["request_id"] == customer.request_id
    assert first.headers["X-NDAX-TIMESTAMP"] != second.headers["X-NDAX-TIMESTAMP"]
    assert first.headers["X-NDAX-SIGNED"] != second.headers["X-NDAX-SIGNED"]
    assert len(clock.sleeps) == 1


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (500, ServerError),
        (501, ServerError),
    ],
)
async def test_permanent_statuses_are_not_retried(
    client: AsyncClient, mock: respx.MockRouter, status: int, error: type[Exception]
) -> None:
    route = mock.post(NEW).mock(return_value=httpx.Response(status, json={"error": "nope"}))
    with pytest.raises(error) as caught:
        await client.customers.create(customer_wire())
    assert route.call_count == 1
    assert caught.value.attempts == 1  # type: ignore[attr-defined]


async def test_server_hints_allow_or_forbid_a_retry(client: AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post(NEW).mock(side_effect=[httpx.Response(500, headers={"Retry-After": "1"}), ok()])
    assert (await client.customers.create(customer_wire())).attempts == 2
    route.mock(side_effect=[httpx.Response(500, headers={"x-should-retry": "true"}), ok()])
    assert (await client.customers.create(customer_wire())).attempts == 2
    route.mock(side_effect=[httpx.Response(503, headers={"x-should-retry": "false"}), ok()])
    with pytest.raises(ServerError):
        await client.customers.create(customer_wire())


@pytest.mark.parametrize(
    ("error", "raised"),
    [
        (httpx.ConnectError("refused"), ConnectError),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), ResponseLostError),
        (httpx.ReadError("reset"), ResponseLostError),
        (httpx.WriteError("broken pipe"), ResponseLostError),
        (httpx.ReadTimeout("slow"), RequestTimeout),
        (httpx.ConnectTimeout("slow"), RequestTimeout),
        (httpx.PoolTimeout("pool"), RequestTimeout),
    ],
)
async def test_transport_errors_are_retried_then_raised(
    clock: FakeClock, mock: respx.MockRouter, error: Exception, raised: type[Exception]
) -> None:
    route = mock.post(NEW).mock(side_effect=[error, ok()])
    async with make_client(clock, max_retries=2) as client:
        assert (await client.customers.create(customer_wire())).attempts == 2
        route.mock(side_effect=error)
        with pytest.raises(raised) as caught:
            await client.customers.create(customer_wire())
    assert caught.value.attempts == 3  # type: ignore[attr-defined]
    assert caught.value.request_id is not None  # type: ignore[attr-defined]
    assert route.call_count == 2 + 3


async def test_max_retries_zero_and_per_call_override(clock: FakeClock, mock: respx.MockRouter) -> None:
    route = mock.post(NEW).mock(return_value=httpx.Response(503))
    async with make_client(clock, max_retries=0) as client:
        with pytest.raises(ServerError):
            await client.customers.create(customer_wire())
        assert route.call_count == 1
        with pytest.raises(ServerError):
            await client.customers.create(customer_wire(), max_retries=4)
        assert route.call_count == 1 + 5


async def test_backoff_is_exponential_jittered_and_capped(clock: FakeClock, mock: respx.MockRouter) -> None:
    mock.post(NEW).mock(return_value=httpx.Response(502))
    policy = RetryPolicy(backoff_initial=1.0, backoff_max=4.0)
    async with make_client(clock, retry_policy=policy, max_retries=5) as client:
        with pytest.raises(ServerError):
            await client.customers.create(customer_wire())
    ceilings = [1, 2, 4, 4, 4]
    assert len(clock.sleeps) == 5
    for slept, ceiling in zip(clock.sleeps, ceilings, strict=True):
        assert ceiling / 2 <= slept <= ceiling


async def test_retry_after_seconds_date_and_cap(
    client: AsyncClient, mock: respx.MockRouter, clock: FakeClock
) -> None:
    route = mock.post(NEW)
    route.mock(side_effect=[httpx.Response(503, headers={"Retry-After": "7"}), ok()])
    await client.customers.create(customer_wire())
    assert clock.sleeps[-1] == 7
    when = email.utils.formatdate(clock.time() + 20, usegmt=True)
    route.mock(side_effect=[httpx.Response(503, headers={"Retry-After": when}), ok()])
    await client.customers.create(customer_wire())
    assert 19 <= clock.sleeps[-1] <= 21
    route.mock(side_effect=[httpx.Response(503, headers={"Retry-After": "86400"}), ok()])
    await client.customers.create(customer_wire())
    assert clock.sleeps[-1] == 60  # capped at RetryPolicy.retry_after_max
    route.mock(side_effect=[httpx.Response(503, headers={"Retry-After": "soon"}), ok()])
    await client.customers.create(customer_wire())
    assert clock.sleeps[-1] <= 0.5  # unparseable: ordinary backoff


async def test_429_without_header_waits_the_documented_ten_seconds(
    client: AsyncClient, mock: respx.MockRouter, clock: FakeClock
) -> None:
    mock.post(NEW).mock(side_effect=[httpx.Response(429), ok()])
    await client.customers.create(customer_wire())
    assert clock.sleeps == [10.0]


async def test_a_429_pauses_every_request_of_the_client(clock: FakeClock, mock: respx.MockRouter) -> None:
    sent_at: list[float] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent_at.append(clock.monotonic())
        return httpx.Response(429, headers={"Retry-After": "3"}) if len(sent_at) == 1 else ok()

    mock.post(NEW).mock(side_effect=answer)
    mock.get("/participants/a@b.co").mock(
        side_effect=lambda request: sent_at.append(clock.monotonic()) or ok()
    )
    async with make_client(clock, max_retries=0) as client:
        with pytest.raises(RateLimitError):
            await client.customers.create(customer_wire())
        assert client.rate_limit_pause.remaining == 3
        # A different request, on another endpoint, waits out the block first.
        await client.participants.get_by_email("a@b.co")
    assert sent_at == [0.0, 3.0]


async def test_deadline_bounds_the_whole_call(clock: FakeClock, mock: respx.MockRouter) -> None:
    route = mock.post(NEW).mock(return_value=httpx.Response(503, headers={"Retry-After": "4"}))
    async with make_client(clock, max_retries=100, deadline=10) as client:
        with pytest.raises(ServerError) as caught:
            await client.customers.create(customer_wire())
    assert route.call_count == 3  # t=0, 4, 8; a wait to t=12 would pass the deadline
    assert caught.value.attempts == 3
    assert sum(clock.sleeps) <= 10


async def test_deadline_shrinks_the_attempt_timeout(clock: FakeClock, mock: respx.MockRouter) -> None:
    seen: list[object] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        return ok()

    mock.post(NEW).mock(side_effect=answer)
    async with make_client(clock, timeout=30.0) as client:
        await client.customers.create(customer_wire(), deadline=2.5)
        await client.customers.create(customer_wire(), timeout=1.5)
    assert seen[0] == {"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}
    assert seen[1] == {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}


async def test_a_pause_longer_than_the_deadline_fails_fast(clock: FakeClock, mock: respx.MockRouter) -> None:
    route = mock.post(NEW).mock(return_value=ok())
    async with make_client(clock) as client:
        client.rate_limit_pause.block(10)  # as if another task just met a 429
        with pytest.raises(RequestTimeout, match="deadline") as caught:
            await client.customers.create(customer_wire(), deadline=5)
    assert caught.value.attempts == 0
    assert not route.called
    assert clock.sleeps == []


async def test_cancellation_during_a_wait_propagates_at_once(mock: respx.MockRouter) -> None:
    sleeping = asyncio.Event()

    class BlockingClock(FakeClock):
        async def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            sleeping.set()
            await asyncio.Event().wait()

    clock = BlockingClock()
    route = mock.post(NEW).mock(return_value=httpx.Response(503))
    async with make_client(clock) as client:
        task = asyncio.create_task(client.customers.create(customer_wire()))
        await sleeping.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert route.call_count == 1


async def test_cancellation_during_a_request_is_never_retried(
    clock: FakeClock, mock: respx.MockRouter
) -> None:
    started = asyncio.Event()
    calls: list[httpx.Request] = []

    async def hang(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    mock.post(NEW).mock(side_effect=hang)
    async with make_client(clock) as client:
        task = asyncio.create_task(client.customers.create(customer_wire()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(calls) == 1
    assert clock.sleeps == []


async def test_retry_hook_and_log_line(
    clock: FakeClock, mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[RetryEvent] = []
    mock.post(NEW).mock(side_effect=[httpx.Response(503), httpx.ConnectError("refused"), ok()])
    caplog.set_level(logging.INFO, logger="ndax_async")
    async with make_client(clock, on_retry=events.append) as client:
        customer = await client.customers.create(customer_wire())
    assert [(e.attempt, e.reason, e.status_code) for e in events] == [
        (1, "HTTP 503", 503),
        (2, "connect error", None),
    ]
    assert all(e.request_id == customer.request_id and e.route == NEW for e in events)
    assert [e.wait for e in events] == clock.sleeps
    lines = [r.getMessage() for r in caplog.records if r.name == "ndax_async"]
    assert len(lines) == 2
    assert "after HTTP 503 (attempt 1" in lines[0]
    assert customer.request_id is not None
    assert customer.request_id in lines[0]


async def test_derived_request_id_is_stable_across_clients_and_retries(
    clock: FakeClock, mock: respx.MockRouter
) -> None:
    route = mock.post(NEW).mock(side_effect=[httpx.Response(502), ok(), ok(), ok(), ok()])
    async with make_client(clock) as first, make_client(FakeClock(start=1_800_000_000)) as second:
        a = await first.customers.create(customer_wire())  # two attempts
        b = await second.customers.create(customer_wire())
        c = await first.customers.create(customer_wire(email="other@mail.com"))
    ids = [json.loads(call.request.content)["request_id"] for call in route.calls]
    assert ids[0] == ids[1] == ids[2] == a.request_id == b.request_id
    assert c.request_id != a.request_id
    async with make_client(clock, request_id_namespace="tenant-2") as namespaced:
        d = await namespaced.customers.create(customer_wire())
    assert d.request_id != a.request_id


async def test_random_mode_is_per_call_but_fixed_across_retries(
    clock: FakeClock, mock: respx.MockRouter
) -> None:
    route = mock.post(NEW).mock(side_effect=[httpx.Response(503), ok(), ok()])
    async with make_client(clock, request_ids="random") as client:
        a = await client.customers.create(customer_wire())
        b = await client.customers.create(customer_wire())
    ids = [json.loads(call.request.content)["request_id"] for call in route.calls]
    assert ids[0] == ids[1] == a.request_id
    assert b.request_id != a.request_id


async def test_pinned_request_id_always_wins(client: AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post(NEW).mock(side_effect=[httpx.Response(503), ok()])
    pinned = "7FBAB305-2679-4279-808B-9B7A63A55C85"
    customer = await client.customers.create(customer_wire(), request_id=pinned)
    ids = {json.loads(call.request.content)["request_id"] for call in route.calls}
    assert ids == {pinned.lower()} == {customer.request_id}


async def test_concurrent_calls_share_the_client_safely(client: AsyncClient, mock: respx.MockRouter) -> None:
    attempts: dict[str, int] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        rid = json.loads(request.content)["request_id"]
        attempts[rid] = attempts.get(rid, 0) + 1
        return ok() if attempts[rid] >= 3 else httpx.Response(503)

    mock.post(NEW).mock(side_effect=answer)
    results = await asyncio.gather(
        *(client.customers.create(customer_wire(email=f"user{i}@mail.com")) for i in range(50))
    )
    assert all(r.attempts == 3 for r in results)
    assert len(attempts) == 50
