"""Secrets stay secret: not in repr, str, logs, exceptions or tracebacks."""

from __future__ import annotations

import logging
import pickle
import traceback
from typing import Any

import httpx
import pytest
import respx

from ndax_async import AsyncClient, NDAXError
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
