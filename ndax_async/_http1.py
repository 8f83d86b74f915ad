"""The SDK's own HTTP/1.1 sender: a keep-alive pool over asyncio protocols.

The API needs little of HTTP: small JSON requests with a Content-Length, and
their responses. This sender does only that, which is why the SDK on it costs
about two thirds of the client CPU per request it costs on aiohttp (see
``benchmarks/``):

- requests are written in one piece from the headers the transport built;
- responses are parsed by ``httptools`` (llhttp, the parser Node.js uses), so
  Content-Length, chunked and read-until-close bodies all work; a gzip or
  deflate body is decompressed although none is asked for;
- connections are kept alive and reused, at most ``max_connections`` at once;
  one the server closed, one an attempt was cancelled on, or one that sent
  bytes after its response, is never reused;
- TLS comes from asyncio with the SSL context given (verification on).

No proxies, redirects, cookies or HTTP/2: pass ``http_client=`` (an
``httpx.AsyncClient``) when you need those. Failures are raised as httpx's
exception types, like every sender's.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import zlib
from typing import NamedTuple, cast
from urllib.parse import quote, urlsplit

import httptools
import httpx

from ._http import RawResponse
from .errors import ClientClosedError

__all__ = ["BuiltinSender"]

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""A response body larger than this is refused (the API's are a few kB)."""

_DECOMPRESS_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
# Everything printable in ASCII stays as it is in a path; only other characters are %-encoded.
_PATH_SAFE = "".join(chr(code) for code in range(0x21, 0x7F))


class _Origin(NamedTuple):
    """Where a URL's requests go, and the parts of its request line."""

    scheme: str
    host: str
    port: int
    host_header: str
    target: str


@functools.lru_cache(maxsize=4096)
def _split(url: str) -> _Origin:
    if any(char <= " " or char == "\x7f" for char in url):  # urlsplit would silently drop some
        raise ValueError("the URL contains whitespace or a control character (a line break?)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise httpx.UnsupportedProtocol(f"cannot send to {url!r}: only http:// and https:// URLs")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    if not target.isascii():
        target = quote(target, safe=_PATH_SAFE)
    return _Origin(parts.scheme, parts.hostname, port, parts.netloc.rpartition("@")[2], target)


def _request_head(method: str, origin: _Origin, headers: dict[str, str], body: bytes | None) -> bytes:
    lines = [f"{method} {origin.target} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
    if body is not None:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    head = "".join(lines)
    # One line per header and no stray CR: a value with a line break cannot inject a header.
    expected_lines = len(headers) + (4 if body is not None else 3)
    if head.count("\n") != expected_lines or head.count("\r") != expected_lines:
        raise ValueError("a request header or the URL contains a line break")
    return head.encode("ascii")  # UnicodeEncodeError (a ValueError) for a non-ASCII header


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._headers_done = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's too, which does not subclass asyncio's classes).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():  # bytes after the response: out of step
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {error}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return
        framed = "content-length" in self._headers or "chunked" in self._headers.get("transfer-encoding", "")
        if self._headers_done and not framed:
            self._finish()  # a body delimited by the connection's close
            return
        detail = f": {exc}" if exc else ""
        self._fail(httpx.RemoteProtocolError(f"the server closed the connection mid-response{detail}"))

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._waiter is None or self._waiter.done():
            self.reusable = False  # a second response to one request: the stream is out of step
        self._headers = {}
        self._body = []
        self._size = 0
        self._headers_done = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_RESPONSE_BYTES:
            self._fail(httpx.RemoteProtocolError(f"response body over {MAX_RESPONSE_BYTES} bytes"))
            raise RuntimeError("response too large")  # stops the parser
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200:
            return  # an interim 1xx response; the final one follows
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._finish()

    # -- requests ----------------------------------------------------------------

    async def request(self, head: bytes, body: bytes | None) -> RawResponse:
        """Write one request and wait for its complete response."""
        transport = self.transport
        assert transport is not None
        waiter: asyncio.Future[RawResponse] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        transport.write(head + body if body else head)
        try:
            return await waiter
        except BaseException:
            self.close()  # a cancelled or failed exchange leaves the stream out of step
            raise
        finally:
            self._waiter = None

    def close(self) -> None:
        """Close the connection; it is never reused."""
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        content = b"".join(self._body)
        encoding = self._headers.get("content-encoding", "").strip().lower()
        if content and encoding in _DECOMPRESS_WBITS:
            try:
                content = zlib.decompress(content, _DECOMPRESS_WBITS[encoding])
            except zlib.error as error:
                waiter.set_exception(httpx.DecodingError(f"cannot decode the {encoding} body: {error}"))
                return
        status = self._parser.get_status_code()
        waiter.set_result(RawResponse(status, self._headers, content))

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class BuiltinSender:
    """Sends over a keep-alive pool of at most ``max_connections`` HTTP/1.1 connections.

    The pool belongs to the event loop it was first used in; using the client
    from another loop raises :class:`~ndax_async.errors.ClientClosedError`.
    """

    def __init__(self, max_connections: int, *, verify: ssl.SSLContext | bool = True) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self.max_connections = max_connections
        self.ssl_context = (
            verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        )
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._slots: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> RawResponse:
        # ``timeout`` is enforced around the whole attempt by the transport.
        origin = _split(url)
        head = _request_head(method, origin, headers, body)
        async with self._slots_for_this_loop():
            connection = self._idle_connection(origin) or await self._connect(origin)
            try:
                response = await connection.request(head, body)
            finally:
                self._release(origin, connection)
        return response

    async def aclose(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    def _slots_for_this_loop(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
            self._loop = loop
        elif loop is not self._loop:
            raise ClientClosedError(
                "this AsyncClient is bound to the event loop it first sent from; "
                "create one client per event loop"
            )
        return self._slots

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin[:3])
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be timed out
            transport = connection.transport
            if connection.reusable and transport is not None and not transport.is_closing():
                return connection
            self._open.discard(connection)
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        if self._closed:
            raise ClientClosedError("the AsyncClient was closed")
        tls = self.ssl_context if origin.scheme == "https" else None
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                _Connection, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
            )
        except ssl.SSLError as error:  # before OSError: SSLError is one
            raise httpx.ConnectError(f"TLS handshake with {origin.host} failed: {error}") from error
        except OSError as error:
            raise httpx.ConnectError(f"cannot connect to {origin.host}:{origin.port}: {error}") from error
        self._open.add(connection)
        return connection

    def _release(self, origin: _Origin, connection: _Connection) -> None:
        if connection.reusable and not self._closed:
            self._idle.setdefault(origin[:3], []).append(connection)
        else:
            connection.close()
            self._open.discard(connection)
