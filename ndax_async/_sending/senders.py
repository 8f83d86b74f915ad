"""How one attempt's bytes reach the server: a small interface over four senders.

The transport (:mod:`._transport`) needs only "send these bytes, give me the
status, headers and body". :class:`Sender` is that, and the SDK picks one:

- :class:`~ndax_async._sending.http1.BuiltinSender` (the default): the SDK's own small
  HTTP/1.1 client, the least client CPU per request of all (see ``benchmarks/``).
- :class:`AiohttpSender` (``http_backend="aiohttp"``, the ``aiohttp`` extra):
  an ``aiohttp`` session used directly. httpx's client and connection pool
  cost several times more CPU per request than aiohttp's, and more the higher
  the concurrency.
- :class:`HttpxTransportSender` (``transport=``, or ``http_backend="httpx"``
  with httpx's own transport): any ``httpx.AsyncBaseTransport``, called directly. Mock and
  in-process transports work unchanged.
- :class:`HttpxClientSender` (``http_client=``): your ``httpx.AsyncClient``,
  with its hooks, proxies and auth, through its ``request()``.

Every sender reports failures as httpx's exception types, so retry decisions
do not depend on the backend.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import httpx

from ..errors import ClientClosedError

__all__ = [
    "AiohttpSender",
    "HttpxClientSender",
    "HttpxTransportSender",
    "RawResponse",
    "Sender",
    "SignedSend",
]


class RawResponse:
    """A final response, read in full: status, headers (case-insensitive) and body."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        """The body decoded as UTF-8 (undecodable bytes replaced)."""
        return self.content.decode("utf-8", "replace")

    def header_dict(self) -> dict[str, str]:
        """The headers as a plain dict with lower-case names (for errors)."""
        return {name.lower(): value for name, value in self.headers.items()}


class Sender(Protocol):
    """Sends one attempt; raises an ``httpx.TransportError`` when no response came.

    The transport bounds each attempt by its timeout as a whole; a sender may
    also use ``timeout`` for its own phases (httpx's connect, read, write, pool).
    """

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> RawResponse: ...

    async def aclose(self) -> None: ...


SignedSend = Callable[
    [str, str, Callable[[], dict[str, str]], "bytes | None", "float | None"], Awaitable[RawResponse]
]
"""``send_signed(method, url, headers, body, timeout)``: a sender's send that makes the
headers by calling ``headers()`` just before the request is written, after any wait
for a connection. A sender offering it limits its own requests in flight."""


class HttpxClientSender:
    """Sends through a caller's ``httpx.AsyncClient`` (which the caller closes)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> RawResponse:
        response = await self.client.request(
            method,
            url,
            content=body,
            headers=headers,
            timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
        )
        return RawResponse(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        return None  # not ours to close


class HttpxTransportSender:
    """Calls an ``httpx.AsyncBaseTransport`` directly, skipping ``httpx.AsyncClient``'s per-request work."""

    def __init__(self, transport: httpx.AsyncBaseTransport) -> None:
        self.transport = transport

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> RawResponse:
        limits = {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
        request = httpx.Request(method, url, headers=headers, content=body, extensions={"timeout": limits})
        response = await self.transport.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return RawResponse(response.status_code, response.headers, content)

    async def aclose(self) -> None:
        await self.transport.aclose()


class AiohttpSender:
    """Sends over one ``aiohttp.ClientSession``, made on first use in the running loop.

    The session belongs to the event loop it was made in; using the client
    from another loop raises :class:`~ndax_async.errors.ClientClosedError`
    instead of aiohttp's obscure failures.
    """

    def __init__(self, max_connections: int, *, verify: ssl.SSLContext | bool = True) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._max_connections = max_connections
        self.ssl_context = (
            verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        )
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._errors = _aiohttp_error_map(aiohttp)

    def _session_for_this_loop(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._session is None:
            aiohttp = self._aiohttp
            connector = aiohttp.TCPConnector(
                limit=self._max_connections, limit_per_host=0, ssl=self.ssl_context
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None),
                auto_decompress=True,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._loop = loop
        elif loop is not self._loop:
            raise ClientClosedError(
                "this AsyncClient is bound to the event loop it first sent from; "
                "create one client per event loop"
            )
        return self._session

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> RawResponse:
        # ``timeout`` is enforced around the whole attempt by the transport
        # (one timer per attempt); the session itself sets no timers.
        session = self._session_for_this_loop()
        try:
            async with session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as response:
                content = await response.read()
                return RawResponse(response.status, response.headers, content)
        except self._aiohttp.ClientError as error:
            raise self._mapped(error) from error
        except asyncio.TimeoutError as error:
            raise httpx.ReadTimeout(str(error) or "timed out") from error

    def _mapped(self, error: Exception) -> httpx.TransportError:
        for source, target in self._errors:
            if isinstance(error, source):
                return target(str(error) or type(error).__name__)
        return httpx.NetworkError(str(error) or type(error).__name__)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


def _aiohttp_error_map(aiohttp: Any) -> tuple[tuple[type[Exception], type[httpx.TransportError]], ...]:
    """aiohttp's failures as httpx's types, most specific first."""
    return (
        (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
        (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
        (aiohttp.ClientConnectorError, httpx.ConnectError),
        (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
        (aiohttp.ClientPayloadError, httpx.ReadError),
        (aiohttp.ClientResponseError, httpx.RemoteProtocolError),
        (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    )
