"""The client's endpoints over respx: routes, bodies, headers, signatures, records."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import respx

from ndax_async import (
    Address,
    AsyncClient,
    ClientClosedError,
    ConfigurationError,
    Customer,
    CustomerUpdate,
    MalformedResponseError,
    Minor,
    NewCustomer,
    NewMinor,
    Participant,
    ValidationError,
)
from ndax_async._wire.canonical_json import dumps
from ndax_async._wire.convert import to_wire
from ndax_async._wire.signing import Credentials
from ndax_async.errors import RequestTimeout, ServerError
from ndax_async.testing import FakeClock

from .helpers import API_KEY, API_SECRET, BASE_URL, PASSPHRASE, customer_wire, minor_wire

CREDENTIALS = Credentials(API_KEY, API_SECRET, PASSPHRASE)
PINNED = "7fbab305-2679-4279-808b-9b7a63a55c85"


def ok(message: Any) -> httpx.Response:
    return httpx.Response(200, json={"message": message})


def assert_signed(request: httpx.Request, route: str, body: bytes) -> None:
    timestamp = request.headers["X-NDAX-TIMESTAMP"]
    assert timestamp.isdigit()
    assert request.headers["X-NDAX-API-KEY"] == API_KEY
    assert request.headers["X-NDAX-PASSPHRASE"] == PASSPHRASE
    assert request.headers["X-NDAX-SIGNED"] == CREDENTIALS.sign(timestamp, request.method, route, body)
    assert request.url.raw_path.decode() == route


async def test_create_customer_sends_signed_canonical_bytes(
    client: AsyncClient, mock: respx.MockRouter
) -> None:
    route = mock.post("/participants/customers/new").mock(
        return_value=ok({**customer_wire(), "participant_code": "XYZ456", "platform_code": "ABC123"})
    )
    customer = await client.customers.create(NewCustomer(**customer_wire()), request_id=PINNED)
    request = route.calls.last.request
    expected = dumps({"request_id": PINNED, **customer_wire()})
    assert request.content == expected
    assert request.headers["Content-Type"] == "application/json"
    assert_signed(request, "/participants/customers/new", expected)
    assert request.headers["X-NDAX-TIMESTAMP"] == "1700000000"  # the fake clock, in seconds
    assert isinstance(customer, Customer)
    assert customer.participant_code == "XYZ456"
    assert customer.attempts == 1
    assert customer.request_id == PINNED
    assert customer.raw["platform_code"] == "ABC123"


async def test_create_accepts_a_mapping_and_a_uuid_object(
    client: AsyncClient, mock: respx.MockRouter
) -> None:
    route = mock.post("/participants/customers/new").mock(return_value=ok({"participant_code": "P1"}))
    await client.customers.create(customer_wire(), request_id=uuid.UUID(PINNED))
    assert json.loads(route.calls.last.request.content)["request_id"] == PINNED
    await client.customers.create({"request_id": PINNED, **customer_wire()})
    assert json.loads(route.calls.last.request.content)["request_id"] == PINNED


async def test_create_minor(client: AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post("/participants/customers/minor").mock(
        return_value=ok({**minor_wire(), "non_in_other_type": "x", "participant_code": "MIN1"})
    )
    minor = await client.customers.create_minor(NewMinor(**minor_wire()))
    body = json.loads(route.calls.last.request.content)
    assert next(iter(body)) == "request_id"
    assert uuid.UUID(body["request_id"]).version == 4
    assert {k: v for k, v in body.items() if k != "request_id"} == minor_wire()
    assert isinstance(minor, Minor)
    assert minor.participant_code == "MIN1"
    assert minor.custodian_participant_code == "CAST01"


async def test_update_patches_the_participant(client: AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.patch("/participants/customers/XYZ456").mock(return_value=ok({"participant_code": "XYZ456"}))
    update = CustomerUpdate(
        platform_updated_at=1603378501286,
        address=Address(
            address_one="1 Road", city="Albany", state="NY", zip="12207", country="United States"
        ),
    )
    result = await client.customers.update("XYZ456", update, request_id=PINNED)
    request = route.calls.last.request
    assert request.method == "PATCH"
    expected = dumps({"request_id": PINNED, **to_wire(update)})
    assert request.content == expected
    assert_signed(request, "/participants/customers/XYZ456", expected)
    assert result.participant_code == "XYZ456"


@pytest.mark.parametrize("code", ["", "AB/CD", "AB?x=1", "AB#frag", None])
async def test_update_refuses_unsafe_participant_codes(client: AsyncClient, code: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        await client.customers.update(code, {"platform_updated_at": 1603378501286, "email": "a@b.co"})
    assert caught.value.fields == ("participant_code",)


async def test_update_reports_code_and_payload_problems_together(client: AsyncClient) -> None:
    with pytest.raises(ValidationError) as caught:
        await client.customers.update("A/B", {"platform_updated_at": 1, "email": "bad"})
    assert set(caught.value.fields) == {"participant_code", "platform_updated_at", "email"}


async def test_invalid_payload_sends_nothing(client: AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.post("/participants/customers/new").mock(return_value=ok({}))
    with pytest.raises(ValidationError):
        await client.customers.create(customer_wire(email="nope"))
    with pytest.raises(ValidationError) as caught:
        await client.customers.create(customer_wire(), request_id="not-a-uuid")
    assert caught.value.fields == ("request_id",)
    with pytest.raises(ValidationError) as caught:
        await client.customers.create(customer_wire(), request_id=uuid.uuid1())
    assert caught.value.fields == ("request_id",)
    assert not route.called


async def test_get_by_email_quotes_and_signs_empty_body(client: AsyncClient, mock: respx.MockRouter) -> None:
    route = mock.get(url__regex=r"/participants/a\+b@example\.com$").mock(
        return_value=ok({"participant_code": "P9", "email": "a+b@example.com"})
    )
    participant = await client.participants.get_by_email("a+b@example.com")
    assert isinstance(participant, Participant)
    assert participant.participant_code == "P9"
    request = route.calls.last.request
    assert request.content == b""
    assert_signed(request, "/participants/a+b@example.com", b"{}")


async def test_get_by_email_returns_none_on_404(client: AsyncClient, mock: respx.MockRouter) -> None:
    mock.get("/participants/nobody@example.com").mock(
        return_value=httpx.Response(404, json={"error": "Not Found"})
    )
    assert await client.participants.get_by_email("nobody@example.com") is None


async def test_list_walks_every_page_and_signs_the_query(client: AsyncClient, mock: respx.MockRouter) -> None:
    pages = {
        "1": {"message": [{"participant_code": "A"}, {"participant_code": "B"}], "page": 1, "total_pages": 2},
        "2": {"message": [{"participant_code": "C"}], "page": 2, "total_pages": 2, "count": 3},
    }

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params["page"]])

    route = mock.get("/participants").mock(side_effect=answer)
    codes = [
        p.participant_code
        async for p in client.participants.list(email="a@b.com", status="approved", minors=False)
    ]
    assert codes == ["A", "B", "C"]
    first, second = (call.request for call in route.calls)
    assert_signed(first, "/participants?email=a%40b.com&page=1&minors=false&status=approved", b"{}")
    assert_signed(second, "/participants?email=a%40b.com&page=2&minors=false&status=approved", b"{}")


async def test_list_stops_on_an_empty_page(client: AsyncClient, mock: respx.MockRouter) -> None:
    mock.get("/participants").mock(return_value=httpx.Response(200, json={"message": [], "total_pages": 9}))
    assert [p async for p in client.participants.list()] == []


@pytest.mark.parametrize(
    "body",
    [b"<html>bad gateway</html>", b'{"message": "just text"}', b"[]", b'{"nomessage": {}}', b'{"message": {'],
)
async def test_malformed_success_raises_typed_error_keeping_raw_text(
    client: AsyncClient, mock: respx.MockRouter, body: bytes
) -> None:
    mock.post("/participants/customers/new").mock(return_value=httpx.Response(200, content=body))
    with pytest.raises(MalformedResponseError) as caught:
        await client.customers.create(customer_wire())
    assert caught.value.raw_text.encode() == body or json.loads(caught.value.raw_text) == json.loads(body)
    assert caught.value.request_id is not None


async def test_any_2xx_is_success(client: AsyncClient, mock: respx.MockRouter) -> None:
    mock.post("/participants/customers/new").mock(return_value=httpx.Response(201, json={"message": {}}))
    assert (await client.customers.create(customer_wire())).participant_code is None


async def test_closed_client_refuses_clearly(mock: respx.MockRouter) -> None:
    client = AsyncClient(api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE)
    async with client:
        pass
    assert client.is_closed
    with pytest.raises(ClientClosedError, match="closed"):
        await client.customers.create(customer_wire())
    with pytest.raises(ClientClosedError):
        async with client:
            pass
    await client.aclose()  # idempotent


async def test_borrowed_http_client_is_not_closed(mock: respx.MockRouter) -> None:
    mock.post("/participants/customers/new").mock(return_value=ok({"participant_code": "P"}))
    async with httpx.AsyncClient() as http:
        async with AsyncClient(
            api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE, http_client=http
        ) as c:
            await c.customers.create(customer_wire())
        assert not http.is_closed


def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="base64"):
        AsyncClient(api_key="k", api_secret="not base64!!", passphrase="p")
    with pytest.raises(ConfigurationError, match="api_key"):
        AsyncClient(api_key="", api_secret=API_SECRET, passphrase="p")
    with pytest.raises(ConfigurationError, match="passphrase must be printable ASCII"):
        AsyncClient(api_key="k", api_secret=API_SECRET, passphrase="p\r\nX-Injected: 1")
    with pytest.raises(ConfigurationError, match="http_backend"):
        AsyncClient(api_key="k", api_secret=API_SECRET, passphrase="p", http_backend="curl")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="plain http"):
        AsyncClient(api_key="k", api_secret=API_SECRET, passphrase="p", base_url="http://api.example.com")
    AsyncClient(api_key="k", api_secret=API_SECRET, passphrase="p", base_url="http://127.0.0.1:8080")
    AsyncClient(
        api_key="k",
        api_secret=API_SECRET,
        passphrase="p",
        base_url="http://cert.local",
        allow_insecure_http=True,
    )
    with pytest.raises(ConfigurationError):
        AsyncClient(api_key="k", api_secret=API_SECRET, passphrase="p", request_ids="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        AsyncClient(api_key="k", api_secret=API_SECRET, passphrase="p", send_request_id={"delete": False})
    with pytest.raises(ConfigurationError):
        AsyncClient(api_key="k", api_secret=API_SECRET, passphrase="p", max_retries=-1)
    with pytest.raises(ConfigurationError, match="max_connections"):
        AsyncClient(api_key="k", api_secret=API_SECRET, passphrase="p", max_connections=0)


def test_from_env() -> None:
    env = {"NDAX_API_KEY": "k", "NDAX_API_SECRET": API_SECRET, "NDAX_PASSPHRASE": "p"}
    client = AsyncClient.from_env(env)
    assert client.base_url == BASE_URL
    client = AsyncClient.from_env({**env, "NDAX_BASE_URL": "https://cert.example.com/"})
    assert client.base_url == "https://cert.example.com"
    with pytest.raises(ConfigurationError, match="NDAX_PASSPHRASE"):
        AsyncClient.from_env({"NDAX_API_KEY": "k", "NDAX_API_SECRET": API_SECRET})
    with pytest.raises(ConfigurationError, match="NDAX_BUDGET_MEMBERS"):
        AsyncClient.from_env({**env, "NDAX_BUDGET_MEMBERS": "four"})


def test_from_env_leaves_the_proxy_to_a_callers_http_layer() -> None:
    env = {"NDAX_API_KEY": "k", "NDAX_API_SECRET": API_SECRET, "NDAX_PASSPHRASE": "p"}
    env["NDAX_PROXY"] = "http://127.0.0.1:9"
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    client = AsyncClient.from_env(env, transport=transport)  # NDAX_PROXY cannot apply: not an error
    assert client.base_url == BASE_URL


async def test_request_id_can_be_turned_off_per_endpoint(clock: FakeClock, mock: respx.MockRouter) -> None:
    route = mock.post("/participants/customers/minor").mock(return_value=ok({}))
    async with AsyncClient(
        api_key=API_KEY,
        api_secret=API_SECRET,
        passphrase=PASSPHRASE,
        send_request_id={"create_minor": False},
        http_backend="httpx",
    ) as client:
        minor = await client.customers.create_minor(minor_wire())
    assert route.calls.last.request.content == dumps(minor_wire())
    assert minor.request_id is None


async def test_a_call_waiting_for_a_connection_is_signed_when_its_turn_comes(clock: FakeClock) -> None:
    """Calls beyond max_connections wait before they are signed, so a signature is
    never older than its send (the API accepts about 60 s of skew)."""
    release = asyncio.Event()
    sent: list[tuple[str, float]] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.headers["X-NDAX-TIMESTAMP"], clock.time()))
        if len(sent) == 1:
            await release.wait()  # the first call holds the only connection
        return ok({"participant_code": f"P{len(sent)}"})

    async with AsyncClient(
        api_key=API_KEY,
        api_secret=API_SECRET,
        passphrase=PASSPHRASE,
        transport=httpx.MockTransport(answer),
        max_connections=1,
        clock=clock,
    ) as client:
        first = asyncio.create_task(client.customers.create(customer_wire(email="a@mail.com")))
        second = asyncio.create_task(client.customers.create(customer_wire(email="b@mail.com")))
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(sent) == 1  # the second call waits for the connection
        clock.advance(45)
        release.set()
        await asyncio.gather(first, second)
    assert [int(stamp) for stamp, _ in sent] == [int(now) for _, now in sent]
    assert int(sent[1][0]) - int(sent[0][0]) == 45


async def test_closing_the_client_stops_a_call_that_is_waiting_to_retry(clock: FakeClock) -> None:
    gate = asyncio.Event()

    async def sleep(seconds: float) -> None:
        gate.set()
        await asyncio.sleep(0)  # yield so the client can be closed during the wait

    clock.sleep = sleep  # type: ignore[method-assign]
    answers = iter([httpx.Response(503), httpx.Response(200, json={"message": {"participant_code": "P1"}})])
    transport = httpx.MockTransport(lambda request: next(answers))
    client = AsyncClient(
        api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE, transport=transport, clock=clock
    )
    call = asyncio.create_task(client.customers.create(customer_wire()))
    await gate.wait()
    await client.aclose()
    with pytest.raises(ClientClosedError, match="closed while this call was retrying"):
        await call


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
async def test_client_is_bound_to_its_event_loop(backend: str) -> None:
    from ndax_async.testing import Sandbox, SandboxServer

    sandbox = Sandbox()
    with SandboxServer(sandbox) as server:
        options: dict[str, Any] = {**sandbox.credentials, "base_url": server.base_url}
        client = AsyncClient(**options, http_backend=backend)
        assert await client.participants.get_by_email("a@b.co") is None

        def elsewhere() -> None:
            asyncio.run(client.participants.get_by_email("a@b.co"))

        with pytest.raises(ClientClosedError, match="bound to the event loop"):
            await asyncio.to_thread(elsewhere)
        await client.aclose()


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
async def test_timeout_bounds_a_whole_attempt_and_a_resend_replays(backend: str) -> None:
    from ndax_async.testing import Faults, Sandbox, SandboxServer

    # Every response is held 1 s after the create is committed: the attempt
    # times out although the create took effect.
    sandbox = Sandbox(faults=Faults(slow_after=1.0, slow_seconds=1.0))
    with SandboxServer(sandbox) as server:
        options: dict[str, Any] = {**sandbox.credentials, "base_url": server.base_url}
        async with AsyncClient(**options, http_backend=backend) as client:  # type: ignore[arg-type]
            with pytest.raises(RequestTimeout, match=r"within 0\.1s") as caught:
                await client.customers.create(customer_wire(), timeout=0.1, max_retries=0)
            assert caught.value.attempts == 1
            sandbox.faults()
            customer = await client.customers.create(customer_wire())  # same operation, same request_id
    assert sandbox.stats["creations"] == 1
    assert sandbox.stats["replays"] == 1
    assert customer.email == customer_wire()["email"]


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
async def test_a_cancelled_call_leaves_the_pool_usable(backend: str) -> None:
    from ndax_async.testing import Faults, Sandbox, SandboxServer

    sandbox = Sandbox(faults=Faults(slow_after=1.0, slow_seconds=0.3))
    with SandboxServer(sandbox) as server:
        options: dict[str, Any] = {**sandbox.credentials, "base_url": server.base_url, "max_connections": 2}
        async with AsyncClient(**options, http_backend=backend) as client:  # type: ignore[arg-type]
            calls = [asyncio.create_task(client.participants.get_by_email(f"{n}@b.co")) for n in range(2)]
            await asyncio.sleep(0.1)  # both connections busy
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            sandbox.faults()
            # Both pooled connections were released: two more calls go through at once.
            found = await asyncio.wait_for(
                asyncio.gather(*(client.participants.get_by_email(f"{n}@b.co") for n in range(2))), 5
            )
    assert found == [None, None]


async def test_per_call_options_do_not_need_a_new_client(clock: FakeClock) -> None:
    seen: list[float | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"]["read"])
        return httpx.Response(503)

    client = AsyncClient(
        api_key=API_KEY,
        api_secret=API_SECRET,
        passphrase=PASSPHRASE,
        transport=httpx.MockTransport(answer),
        clock=clock,
    )
    async with client:
        with pytest.raises(ServerError) as caught:
            await client.customers.create(customer_wire(), timeout=1.5, max_retries=1)
    assert caught.value.attempts == 2
    assert seen == [1.5, 1.5]
