"""Every backend sends through a real forward proxy (tinyproxy on 127.0.0.1) when told to.

From the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``ALL_PROXY``, with
``NO_PROXY`` bypassing it), from ``proxy=``, or from ``NDAX_PROXY`` through
``AsyncClient.from_env()``; for an ``http://`` base URL (the proxy forwards the
request) and an ``https://`` one (the proxy tunnels it with CONNECT).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ndax_async import AsyncClient, ConfigurationError
from ndax_async.testing import Sandbox, SandboxServer

from .helpers import customer_wire
from .servers import TinyProxy
from .tls_server import tls_sandbox, trusting

BACKENDS = ["aiohttp", "httpx"]
_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[TinyProxy]:
    with TinyProxy(tmp_path) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def ca() -> Any:
    return pytest.importorskip("trustme").CA()


async def create_and_read(sandbox: Sandbox, base_url: str, **options: Any) -> None:
    async with AsyncClient(**sandbox.credentials, base_url=base_url, **options) as client:
        customer = await client.customers.create(customer_wire())
        assert await client.participants.get_by_email(customer.email) is not None


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variable", ["HTTP_PROXY", "ALL_PROXY"])
async def test_http_goes_through_the_proxy_from_the_environment(
    proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch, backend: str, variable: str
) -> None:
    monkeypatch.setenv(variable, proxy.url)
    sandbox = Sandbox()
    with SandboxServer(sandbox) as server:
        await create_and_read(sandbox, server.base_url, http_backend=backend)
    assert proxy.requests() == [
        f"POST {server.base_url}/participants/customers/new HTTP/1.1",
        f"GET {server.base_url}/participants/email-example@mail.com HTTP/1.1",
    ]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_https_is_tunnelled_through_the_proxy_with_connect(
    proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch, ca: Any, backend: str
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    sandbox = Sandbox()
    with tls_sandbox(sandbox, ca) as base_url:
        await create_and_read(sandbox, base_url, http_backend=backend, verify=trusting(ca))
    port = base_url.rsplit(":", 1)[1]
    assert proxy.requests() == [f"CONNECT localhost:{port} HTTP/1.1"]  # one tunnel, kept alive
    assert sandbox.stats["creations"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_no_proxy_bypasses_it(proxy: TinyProxy, monkeypatch: pytest.MonkeyPatch, backend: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    sandbox = Sandbox()
    with SandboxServer(sandbox) as server:
        await create_and_read(sandbox, server.base_url, http_backend=backend)
    assert proxy.requests() == []
    assert sandbox.stats["creations"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_explicit_proxy_and_ndax_proxy(proxy: TinyProxy, backend: str, ca: Any) -> None:
    sandbox = Sandbox()
    with tls_sandbox(sandbox, ca) as base_url:
        await create_and_read(sandbox, base_url, http_backend=backend, verify=trusting(ca), proxy=proxy.url)
        environ = {
            "NDAX_API_KEY": sandbox.api_key,
            "NDAX_API_SECRET": sandbox.api_secret,
            "NDAX_PASSPHRASE": sandbox.passphrase,
            "NDAX_BASE_URL": base_url,
            "NDAX_PROXY": proxy.url,
        }
        async with AsyncClient.from_env(environ, http_backend=backend, verify=trusting(ca)) as client:
            assert await client.participants.get_by_email("email-example@mail.com") is not None
    assert len(proxy.requests()) == 2
    assert all(line.startswith("CONNECT localhost:") for line in proxy.requests())


def test_proxy_does_not_combine_with_a_client_or_transport_of_your_own() -> None:
    sandbox = Sandbox()
    with pytest.raises(ConfigurationError, match="proxy= does not apply with http_client="):
        AsyncClient(**sandbox.credentials, http_client=httpx.AsyncClient(), proxy="http://127.0.0.1:3128")
    with pytest.raises(ConfigurationError, match="proxy= does not apply with transport="):
        AsyncClient(**sandbox.credentials, transport=sandbox.transport(), proxy="http://127.0.0.1:3128")
    with pytest.raises(ConfigurationError, match="proxy"):
        AsyncClient(**sandbox.credentials, proxy="not a url")
