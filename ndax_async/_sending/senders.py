"""How one attempt's bytes reach the server: always through an ``httpx.AsyncClient``.

Every backend is an ``httpx.AsyncClient`` underneath, so one sender,
:class:`HttpxSender`, serves them all:

- the default (``http_backend="aiohttp"``): httpx's client over aiohttp's
  connection pool, through the ``httpx-aiohttp`` package's transport (what
  openai-python's ``DefaultAioHttpClient`` is). httpx's own pool costs several
  times more CPU per request at 64 connections (``benchmarks/``);
- ``http_backend="httpx"``: httpx's client on its own transport (HTTP/2 capable,
  and plain ``respx.mock`` intercepts it);
- ``transport=``: any ``httpx.AsyncBaseTransport`` (a mock, an ASGI app);
- ``http_client=``: the caller's ``httpx.AsyncClient``, which the caller closes.

A failure without a response becomes an :class:`AttemptFailed`: what happened
(:class:`Failure`), judged the same way whatever the backend, and a short text.
It never carries the request, whose headers hold the signature.
"""

from __future__ import annotations

import asyncio
import enum
import re
import ssl
from collections.abc import Iterator, Mapping
from typing import Protocol

import aiohttp
import httpx

from ..errors import ClientClosedError

__all__ = ["AttemptFailed", "Failure", "HttpxSender", "RawResponse", "Sender", "attempt_failed"]

_MAX_DETAIL = 200
_USERINFO = re.compile(r"//[^/@\s]*@")  # a proxy URL's user:password


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


class Failure(enum.Enum):
    """What an attempt without a response tells about the request; the value is the retry reason."""

    CONNECT = "connect error"
    """No connection was made (refused, DNS, proxy refused): nothing was sent."""
    TLS = "TLS certificate verification failed"
    """The server's certificate was not trusted: nothing was sent, and retrying will not help."""
    LOST = "response lost"
    """The request may have been written, and no complete response came back."""
    TIMEOUT = "timeout"
    """No complete response within the attempt's time."""


class AttemptFailed(Exception):
    """One attempt got no response: its :class:`Failure` and a short, secret-free text."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(detail)
        self.failure = failure
        self.detail = detail


class Sender(Protocol):
    """Sends one attempt; raises :class:`AttemptFailed` when no response came."""

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> RawResponse: ...

    async def aclose(self) -> None: ...


class HttpxSender:
    """Sends each attempt through one ``httpx.AsyncClient``; closes it only if ``owned``.

    The client belongs to the event loop it first sent from; using it from
    another raises :class:`~ndax_async.errors.ClientClosedError` instead of
    the pool's obscure failures.
    """

    def __init__(self, client: httpx.AsyncClient, *, owned: bool) -> None:
        self.client = client
        self.owned = owned
        self._loop: asyncio.AbstractEventLoop | None = None

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> RawResponse:
        """Send one request and read its response in full."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise ClientClosedError(
                "this AsyncClient is bound to the event loop it first sent from; "
                "create one client per event loop"
            )
        if self.owned:
            # The SDK's own client has nothing to merge in that the API needs (no
            # base URL, params or default headers; cookies are not wanted), so the
            # request is built directly: about 20 us less per request than
            # build_request. A caller's client gets its defaults merged.
            extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
            request = httpx.Request(method, url, headers=headers, content=body, extensions=extensions)
        else:
            request = self.client.build_request(
                method,
                url,
                content=body,
                headers=headers,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
            )
        failure: AttemptFailed | None = None
        try:
            response = await self.client.send(request)
        except (httpx.RequestError, aiohttp.ClientError) as error:
            failure = attempt_failed(error)
        if failure is not None:
            # Raised outside the except block, so the original (which holds the
            # signed request) is not even its __context__.
            raise failure
        return RawResponse(response.status_code, response.headers, response.content)

    async def aclose(self) -> None:
        """Close the client if the SDK made it."""
        if self.owned:
            await self.client.aclose()


def attempt_failed(error: BaseException) -> AttemptFailed:
    """Judge a backend's error: what it means for the request, and a short text.

    ``httpx-aiohttp`` maps aiohttp's errors onto httpx's types coarsely (a
    server that disconnected becomes a ``ConnectTimeout``), so aiohttp's own
    error, the cause, decides where there is one.
    """
    chain = list(_chain(error))
    if any(_is_certificate_failure(link) for link in chain):
        # aiohttp keeps ssl's error on ``certificate_error``; its ``verify_message`` says why.
        found = (getattr(link, "certificate_error", link) for link in chain)
        why = next((text for link in found if (text := getattr(link, "verify_message", None))), "")
        return AttemptFailed(Failure.TLS, _short(f"the server's TLS certificate was refused: {why or error}"))
    source = next((link for link in chain if isinstance(link, aiohttp.ClientError)), None)
    if source is not None:
        return AttemptFailed(_aiohttp_failure(source), _short(f"{type(source).__name__}: {source}"))
    return AttemptFailed(_httpx_failure(error), _short(f"{type(error).__name__}: {error}"))


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _is_certificate_failure(error: BaseException) -> bool:
    return isinstance(
        error,
        ssl.SSLCertVerificationError
        | aiohttp.ClientConnectorCertificateError
        | aiohttp.ServerFingerprintMismatch,
    )


def _aiohttp_failure(error: aiohttp.ClientError) -> Failure:
    if isinstance(error, aiohttp.ServerTimeoutError):
        return Failure.TIMEOUT
    if isinstance(error, aiohttp.ClientConnectorError | aiohttp.ClientHttpProxyError):
        return Failure.CONNECT  # the proxy refused the tunnel: nothing reached the server
    return Failure.LOST  # disconnected, reset, a broken or truncated response


def _httpx_failure(error: BaseException) -> Failure:
    if isinstance(error, httpx.TimeoutException):
        return Failure.TIMEOUT
    if isinstance(error, httpx.ConnectError | httpx.ProxyError | httpx.UnsupportedProtocol):
        return Failure.CONNECT
    return Failure.LOST


def _short(text: str) -> str:
    text = _USERINFO.sub("//", " ".join(text.split()))
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"
