"""Secrets stay secret: not in repr, str, logs, exceptions or tracebacks."""

from __future__ import annotations

import logging
import pickle
import traceback
from typing import Any

import httpx
import pytest
import respx

from ndax_async import AsyncClient, BudgetLimit, LocalBudget, NDAXError
from ndax_async._wire.signing import Credentials
from ndax_async.testing import FakeClock

from .helpers import API_KEY, API_SECRET, PASSPHRASE, customer_wire


def _secrets(requests: list[httpx.Request]) -> list[str]:
    return [API_SECRET, PASSPHRASE, *(r.headers["X-NDAX-SIGNED"] for r in requests)]


async def test_nothing_secret_leaks_anywhere(
    mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    sent: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        if len(sent) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(sent) == 2:
            return httpx.Response(503)
        return httpx.Response(401, json={"error": True, "message": "bad signature"})

    mock.post("/participants/customers/new").mock(side_effect=answer)
    texts: list[str] = []
    client = AsyncClient(
        api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE, clock=FakeClock(), http_backend="httpx"
    )
    texts += [repr(client), str(client), repr(client._credentials), str(client._credentials)]
    async with client:
        with pytest.raises(NDAXError) as caught:
            await client.customers.create(customer_wire())
        mock.post("/participants/customers/new").mock(side_effect=httpx.ConnectError("refused"))
        with pytest.raises(NDAXError) as caught_transport:
            await client.customers.create(customer_wire(), max_retries=0)
    for error in (caught.value, caught_transport.value):
        texts += [repr(error), str(error), "".join(traceback.format_exception(error))]
        assert error.__cause__ is None or not isinstance(error.__cause__, httpx.HTTPError)
    texts += [record.getMessage() for record in caplog.records]
    texts.append(caplog.text)
    assert len(sent) == 3
    everything = "\n".join(texts)
    for secret in _secrets(sent):
        assert secret not in everything
    assert "request_id=" in caplog.text  # the logs did say something useful


def test_credentials_cannot_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Credentials(API_KEY, API_SECRET, PASSPHRASE))


@pytest.mark.parametrize("backend", ["aiohttp", "httpx"])
def test_tls_verification_stays_on(backend: str) -> None:
    client = AsyncClient(
        api_key=API_KEY,
        api_secret=API_SECRET,
        passphrase=PASSPHRASE,
        http_backend=backend,  # type: ignore[arg-type]
    )
    transport: Any = client._sender.client._transport
    context = transport._pool._ssl_context if backend == "httpx" else transport.ssl_context
    assert context.verify_mode.name == "CERT_REQUIRED"
    assert context.check_hostname


async def test_no_secret_in_spans_events_metrics_or_logs(
    mock: respx.MockRouter, caplog: pytest.LogCaptureFixture
) -> None:
    from .observability import Otel

    caplog.set_level(logging.DEBUG)
    otel = Otel()
    sent: list[httpx.Request] = []
    replies = iter(
        [
            httpx.ConnectError("refused"),  # a retry (connect error)
            httpx.Response(503),  # a retry (HTTP 503)
            httpx.Response(401, json={"error": True, "message": "bad signature"}),  # refused
            httpx.RemoteProtocolError("Server disconnected"),  # lost: the next success is a replay
            httpx.Response(200, json={"message": customer_wire(participant_code="P1")}),
            httpx.Response(429),  # the shared pause...
            httpx.Response(200, json={"message": customer_wire(participant_code="P2")}),  # ...waited out
        ]
    )

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        reply = next(replies)
        if isinstance(reply, Exception):
            raise reply
        return reply

    mock.post("/participants/customers/new").mock(side_effect=answer)
    clock = FakeClock()
    client = AsyncClient(
        api_key=API_KEY,
        api_secret=API_SECRET,
        passphrase=PASSPHRASE,
        clock=clock,
        http_backend="httpx",
        budget=LocalBudget(BudgetLimit(requests=1, window=1.0, margin=0, reserve=0), clock=clock),  # waits
        **otel.providers,
    )
    async with client:
        with pytest.raises(NDAXError):
            await client.customers.create(customer_wire())
        await client.customers.create(customer_wire(email="second@mail.com"))
        with pytest.raises(NDAXError):
            await client.customers.create(customer_wire(email="third@mail.com"), max_retries=0)
        await client.customers.create(customer_wire(email="fourth@mail.com"))

    texts: list[str] = []
    names = {"ndax.retry_wait", "ndax.rate_limit_pause", "ndax.budget_wait"}
    for span in otel.spans():
        texts += [span.name, repr(dict(span.attributes or {})), repr(span.status.description)]
        texts += [repr((event.name, dict(event.attributes or {}))) for event in span.events]
        names -= {event.name for event in span.events}
    metrics = otel.metrics()
    texts += [repr((name, points)) for name, points in metrics.items()]
    for record in caplog.records:
        texts += [record.getMessage(), repr(record.__dict__)]
    everything = "\n".join(texts)
    assert len(sent) == 7
    assert names == set()  # each kind of event was made, and scanned
    assert {
        "ndax.client.requests",
        "ndax.client.retries",
        "ndax.client.failures",
        "ndax.client.replays",
    } <= set(metrics)
    assert "request_id" in everything  # the scan read something
    for secret in _secrets(sent):
        assert secret not in everything


def test_an_unexpected_send_error_keeps_no_signed_headers_in_its_frames() -> None:
    """Error trackers record each frame's locals: none may hold the passphrase or a signature."""
    import asyncio

    from ndax_async import ClientClosedError

    transport = httpx.MockTransport(lambda request: httpx.Response(404, json={"error": "Not Found"}))
    client = AsyncClient(api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE, transport=transport)
    assert asyncio.run(client.participants.get_by_email("a@example.com")) is None  # binds its loop
    with pytest.raises(ClientClosedError) as raised:  # used from a second event loop
        asyncio.run(client.participants.get_by_email("a@example.com"))
    error: BaseException | None = raised.value
    while error is not None:
        for frame, _ in traceback.walk_tb(error.__traceback__):
            seen = repr(frame.f_locals)
            assert PASSPHRASE not in seen, frame.f_code.co_name
            assert "x-ndax-signed" not in seen.lower(), frame.f_code.co_name
        error = error.__cause__ or error.__context__


@pytest.mark.parametrize(
    "url",
    [
        "redis://:s3cret@budget.internal:6379/0",
        "redis://budget.internal:6379/0?password=s3cret",
        "postgresql://ndax:s3cret@db.internal/ndax",
        "postgresql://ndax@db.internal/ndax?sslmode=require&password=s3cret",
    ],
)
def test_a_server_urls_password_is_hidden_wherever_it_is(url: str) -> None:
    from ndax_async import RedisBudget
    from ndax_async._redact import redact_url

    shown = redact_url(url)
    assert "s3cret" not in shown
    assert "***" in shown
    assert shown.split("://")[0] == url.split("://")[0]
    if url.startswith("redis"):
        assert "s3cret" not in repr(RedisBudget(url))
