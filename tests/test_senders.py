"""The one sender (an ``httpx.AsyncClient`` underneath) and the errors it lets the client tell.

Each backend meets the same faults from a real server on 127.0.0.1, and each
fault reads the same whatever the backend: nothing sent (``ConnectError``), sent
but the response lost (``ResponseLostError``, which says resending is safe), a
refused certificate (``TLSVerificationError``, never retried).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from ndax_async import (
    AsyncClient,
    ConfigurationError,
    ConnectError,
    ResponseLostError,
    RetryEvent,
    ServerError,
    TLSVerificationError,
)
from ndax_async._sending.senders import AttemptFailed, Failure
from ndax_async.testing import FakeClock, Faults, Sandbox, SandboxServer

from .helpers import API_KEY, API_SECRET, PASSPHRASE, customer_wire
from .tls_server import tls_sandbox, trusting

BACKENDS = ["aiohttp", "httpx"]
CREDENTIALS = {"api_key": API_KEY, "api_secret": API_SECRET, "passphrase": PASSPHRASE}


@pytest.fixture(scope="module")
def ca() -> Any:
    return pytest.importorskip("trustme").CA()


def instant_sleeps() -> FakeClock:
    """A clock at the real time (the sandbox checks each signature's timestamp) whose
    sleeps (the retry backoff) return at once."""
    return FakeClock(time.time())


def chain(error: BaseException) -> Iterator[BaseException]:
    link: BaseException | None = error
    while link is not None:
        yield link
        link = link.__cause__ or link.__context__


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_response_lost_after_commit_says_so_and_the_retry_reason_is_the_same(backend: str) -> None:
    sandbox = Sandbox(faults=Faults(drop_after=1.0))  # every create is applied, then the connection dropped
    reasons: list[str] = []

    def on_retry(event: RetryEvent) -> None:
        reasons.append(event.reason)

    with SandboxServer(sandbox) as server:
        options: dict[str, Any] = {**sandbox.credentials, "base_url": server.base_url}
        async with AsyncClient(
            **options, http_backend=backend, max_retries=1, on_retry=on_retry, clock=instant_sleeps()
        ) as client:  # type: ignore[arg-type]
            with pytest.raises(ResponseLostError) as caught:
                await client.customers.create(customer_wire())
    error = caught.value
    assert reasons == ["response lost"]
    assert error.attempts == 2
    assert "may have been applied" in str(error)
    assert f"resending the same operation is safe (same request_id {error.request_id})" in str(error)
    assert sandbox.stats["creations"] == 1  # it was applied
    cause = error.__cause__
    assert isinstance(cause, AttemptFailed)
    assert cause.failure is Failure.LOST
    # Nothing in the chain holds the signed request: no httpx or aiohttp error, no traceback frames.
    assert [type(link) for link in chain(error)] == [ResponseLostError, AttemptFailed]
    assert cause.__traceback__ is None


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_refused_connection_is_a_connect_error_that_sent_nothing(backend: str) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        reasons: list[str] = []
        async with AsyncClient(
            **CREDENTIALS,
            base_url=f"http://127.0.0.1:{port}",
            http_backend=backend,  # type: ignore[arg-type]
            max_retries=2,
            on_retry=lambda event: reasons.append(event.reason),
            clock=instant_sleeps(),
        ) as client:
            with pytest.raises(ConnectError, match="nothing was sent") as caught:
                await client.customers.create(customer_wire())
    assert type(caught.value) is ConnectError
    assert caught.value.attempts == 3
    assert reasons == ["connect error", "connect error"]


async def test_a_connect_error_after_a_lost_response_is_not_reported_as_nothing_sent() -> None:
    failures = iter([httpx.ReadError("reset by peer"), httpx.ConnectError("refused")])

    def answer(request: httpx.Request) -> httpx.Response:
        raise next(failures)

    transport = httpx.MockTransport(answer)
    async with AsyncClient(
        **CREDENTIALS, transport=transport, max_retries=1, clock=instant_sleeps()
    ) as client:
        with pytest.raises(ResponseLostError, match="may have been applied"):
            await client.customers.create(customer_wire())


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_untrusted_certificate_is_not_retried_and_says_so(ca: Any, backend: str) -> None:
    sandbox = Sandbox()
    with tls_sandbox(sandbox, ca) as base_url:
        async with AsyncClient(
            **sandbox.credentials,
            base_url=base_url,
            http_backend=backend,  # type: ignore[arg-type]
            verify=ssl.create_default_context(),  # the system's CAs, which do not know the test CA
            clock=instant_sleeps(),
        ) as client:
            with pytest.raises(TLSVerificationError, match="certificate") as caught:
                await client.customers.create(customer_wire())
        assert caught.value.attempts == 1
        assert isinstance(caught.value, ConnectError)  # nothing was sent
        async with AsyncClient(
            **sandbox.credentials, base_url=base_url, http_backend=backend, verify=trusting(ca)
        ) as client:  # type: ignore[arg-type]
            await client.customers.create(customer_wire())
    assert sandbox.stats["creations"] == 1


async def test_a_proxy_error_page_is_shortened_in_the_message_and_kept_whole(mock: respx.MockRouter) -> None:
    page = (
        "<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
        "<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
        "<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n"
    )
    mock.post("/participants/customers/new").mock(return_value=httpx.Response(503, text=page))
    async with AsyncClient(**CREDENTIALS, max_retries=0) as client:
        with pytest.raises(ServerError) as caught:
            await client.customers.create(customer_wire())
    assert caught.value.message == "503 Service Temporarily Unavailable"
    assert caught.value.raw_text == page


def test_options_that_cannot_apply_together_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="verify= does not apply with http_client="):
        AsyncClient(**CREDENTIALS, http_client=httpx.AsyncClient(), verify=False)
    with pytest.raises(ConfigurationError, match="verify= does not apply with transport="):
        AsyncClient(**CREDENTIALS, transport=httpx.MockTransport(lambda r: httpx.Response(200)), verify=False)
    with pytest.raises(ConfigurationError, match="http_backend"):
        AsyncClient(**CREDENTIALS, http_backend="builtin")  # type: ignore[arg-type]


@pytest.mark.parametrize(("using", "backend"), [("httpx", "aiohttp"), ("httpcore", "httpx")])
async def test_respx_intercepts_and_nothing_reaches_the_network(using: str, backend: str) -> None:
    """``respx.mock(using="httpx")`` intercepts the default client; plain ``respx.mock``
    (``using="httpcore"``) intercepts ``http_backend="httpx"``."""
    accepted: list[object] = []
    listener = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    base_url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    try:
        with respx.mock(base_url=base_url, using=using) as router:
            router.post("/participants/customers/new").mock(
                return_value=httpx.Response(200, json={"message": {"participant_code": "P1"}})
            )
            async with AsyncClient(**CREDENTIALS, base_url=base_url, http_backend=backend) as client:  # type: ignore[arg-type]
                created = await client.customers.create(customer_wire())
                with pytest.raises(AssertionError, match="not mocked"):  # respx refuses the unmocked
                    await client.participants.get_by_email("a@b.co")
    finally:
        listener.close()
    assert created.participant_code == "P1"
    assert accepted == []  # not one connection reached the server


async def test_the_client_closes_what_it_made_and_leaves_yours_open() -> None:
    mine = AsyncClient(**CREDENTIALS)
    await mine.aclose()
    assert mine._sender.client.is_closed
    yours = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    async with AsyncClient(**CREDENTIALS, http_client=yours):
        pass
    assert not yours.is_closed
    await yours.aclose()


@pytest.mark.parametrize("failure", list(Failure))
def test_every_failure_kind_has_a_distinct_reason(failure: Failure) -> None:
    assert [kind.value for kind in Failure].count(failure.value) == 1


def test_aiohttp_errors_are_judged_by_what_happened_not_by_httpx_aiohttp_mapping() -> None:
    """httpx-aiohttp maps a server that disconnected to ``ConnectTimeout``: judged by the cause."""
    aiohttp = pytest.importorskip("aiohttp")
    from ndax_async._sending.senders import attempt_failed

    def mapped(cause: Exception, outer: Exception) -> Failure:
        try:
            raise outer from cause
        except Exception as error:
            return attempt_failed(error).failure

    assert mapped(aiohttp.ServerDisconnectedError(), httpx.ConnectTimeout("x")) is Failure.LOST
    assert mapped(aiohttp.ClientPayloadError("short"), httpx.ReadError("x")) is Failure.LOST
    assert mapped(aiohttp.ClientOSError(104, "reset"), httpx.ConnectTimeout("x")) is Failure.LOST
    assert mapped(aiohttp.SocketTimeoutError(), httpx.ReadTimeout("x")) is Failure.TIMEOUT
    assert attempt_failed(httpx.RemoteProtocolError("gone")).failure is Failure.LOST
    assert attempt_failed(httpx.ProxyError("403")).failure is Failure.CONNECT
    assert attempt_failed(httpx.ConnectError("refused")).failure is Failure.CONNECT


def test_a_proxy_password_never_reaches_a_message() -> None:
    from ndax_async._sending.senders import attempt_failed

    failed = attempt_failed(httpx.ProxyError("cannot reach http://user:hunter2@proxy.local:3128"))
    assert "hunter2" not in failed.detail
    assert "http://proxy.local:3128" in failed.detail


async def test_a_call_waiting_for_a_slot_does_not_time_out_there() -> None:
    """timeout= bounds the exchange, not the queue: the second call waits out the first
    (longer than its timeout) for the only slot, then goes through."""
    release = asyncio.Event()
    answered = 0

    async def answer(request: httpx.Request) -> httpx.Response:
        nonlocal answered
        if answered == 0:
            await release.wait()
        answered += 1
        return httpx.Response(200, json={"message": {"participant_code": f"P{answered}"}})

    options: dict[str, Any] = {"transport": httpx.MockTransport(answer), "max_connections": 1}
    async with AsyncClient(**CREDENTIALS, **options, timeout=0.05, max_retries=0) as client:
        first = asyncio.create_task(client.customers.create(customer_wire(email="a@mail.com")))
        second = asyncio.create_task(client.customers.create(customer_wire(email="b@mail.com")))
        await asyncio.sleep(0.2)  # four times the second call's timeout, spent waiting for the slot
        release.set()
        results = await asyncio.gather(first, second)
    assert [result.participant_code for result in results] == ["P1", "P2"]


async def test_your_clients_defaults_still_apply_and_the_sdk_names_itself() -> None:
    seen: list[httpx.Headers] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers)
        return httpx.Response(200, json={"message": {"participant_code": "P1"}})

    yours = httpx.AsyncClient(transport=httpx.MockTransport(answer), headers={"X-Trace": "t-1"})
    async with yours, AsyncClient(**CREDENTIALS, http_client=yours) as client:
        await client.customers.create(customer_wire())
    async with AsyncClient(**CREDENTIALS, transport=httpx.MockTransport(answer)) as client:
        await client.customers.create(customer_wire())
    assert seen[0]["X-Trace"] == "t-1"
    assert [headers["User-Agent"].split("/")[0] for headers in seen] == ["ndax-async", "ndax-async"]
    assert [headers["Content-Type"] for headers in seen] == ["application/json"] * 2
