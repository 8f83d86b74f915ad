"""The SDK's own HTTP/1.1 sender: a keep-alive pool over asyncio protocols.

The API needs little of HTTP: small JSON requests with a Content-Length, and
their responses. This sender does only that, which is why the SDK on it costs
about two thirds of the client CPU per request it costs on aiohttp (see
``benchmarks/``):

- requests are written in one piece from the headers the transport built;
- responses are parsed by ``httptools`` (llhttp, the parser Node.js uses), so
  Content-Length, chunked and read-until-close bodies all work; a gzip or
  deflate body is decompressed although none is asked for;
- responses are read into one buffer the connections share, not a new
  256 KiB bytes object per read (see :data:`READ_BUFFER_BYTES`);
- connections are kept alive and reused, at most ``max_connections`` at once;
  one the server closed, one an attempt was cancelled on, or one that sent
  bytes after its response, is never reused;
- requests beyond ``max_connections`` wait in order; when a response ends, the
  next waiting request is signed (its headers made) and written on that
  connection from the response's own callback, so a waiting call is woken
  once, by its response, and its signature is never older than its send;
- TLS comes from asyncio with the SSL context given (verification on).

No proxies, redirects, cookies or HTTP/2: pass ``http_client=`` (an
``httpx.AsyncClient``) when you need those. Failures are raised as httpx's
exception types, like every sender's.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import ssl
import zlib
from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import quote, urlsplit

import httptools
import httpx

from ..errors import ClientClosedError
from .senders import RawResponse

__all__ = ["BuiltinSender"]

MAX_RESPONSE_BYTES = 16 * 1024 * 1024
"""A response body larger than this is refused (the API's are a few kB)."""

READ_BUFFER_BYTES = 64 * 1024
"""The one buffer a sender's connections read into (asyncio's BufferedProtocol).

A plain asyncio Protocol gets each read as a new bytes object, allocated at
256 KiB and shrunk to what arrived. In a fresh process glibc served each such
allocation by growing its heap and trimmed the heap again after it: two page
faults per request, about a fifth of the client's CPU per create.
"""

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


class _Connection(asyncio.BufferedProtocol):
    """One TCP (or TLS) connection carrying one request at a time.

    When a response is complete (or the exchange failed) the connection calls
    ``on_free(self)``: the pool then writes the next waiting request on it, from
    inside this callback, or parks it.

    Bytes arrive in ``read_buffer``, which the sender's connections share (see
    :data:`READ_BUFFER_BYTES`): each read is parsed before the next can start.
    """

    def __init__(
        self, key: tuple[str, str, int], on_free: Callable[[_Connection], None], read_buffer: memoryview
    ) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self._on_free = on_free
        self._read_buffer = read_buffer
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[RawResponse | None] | None = None
        self._answered = False
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._headers_done = False

    # -- asyncio.Protocol --------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's too, which does not subclass asyncio's classes).
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self._received(self._read_buffer[:nbytes])

    def _received(self, data: memoryview) -> None:
        if self._waiter is None or self._waiter.done():  # bytes after the response, or a caller gone
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as error:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {error}"))
        self._hand_over()  # after the parser: bytes after the response have been seen by now

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._waiter is None or self._waiter.done():
            return  # idle, or its caller gave up (and freed its slot)
        framed = "content-length" in self._headers or "chunked" in self._headers.get("transfer-encoding", "")
        if self._headers_done and not framed:
            self._finish()  # a body delimited by the connection's close
            self._hand_over()
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

    def start(self, head: bytes, body: bytes | None, waiter: asyncio.Future[RawResponse | None]) -> None:
        """Write one request; ``waiter`` gets its complete response (or the failure)."""
        transport = self.transport
        assert transport is not None
        self._waiter = waiter
        transport.write(head + body if body else head)

    def abandon(self, waiter: asyncio.Future[RawResponse | None]) -> None:
        """Its caller stopped waiting for ``waiter`` (cancelled, timed out): retire the connection."""
        if self._waiter is waiter:
            self._waiter = None
            self.close()  # the stream is out of step
            self._on_free(self)

    def can_carry(self) -> bool:
        """Whether another request may be written on this connection."""
        transport = self.transport
        return self.reusable and transport is not None and not transport.is_closing()

    def close(self) -> None:
        """Close the connection; it is never reused."""
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        self._waiter = None
        self._answered = True
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

    def _hand_over(self) -> None:
        if self._answered:
            self._answered = False
            self._on_free(self)

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()
        waiter = self._waiter
        if waiter is None:
            return
        self._waiter = None
        if not waiter.done():
            waiter.set_exception(error)
        self._on_free(self)


class _Queued:
    """A request waiting for a free slot; the pool writes it when one frees."""

    __slots__ = ("answer", "body", "connection", "headers", "key", "method", "origin")

    def __init__(
        self,
        method: str,
        origin: _Origin,
        headers: Callable[[], dict[str, str]],
        body: bytes | None,
        answer: asyncio.Future[RawResponse | None],
    ) -> None:
        self.method = method
        self.origin = origin
        self.key = origin[:3]
        self.headers = headers
        self.body = body
        self.answer = answer  # its response; None when handed a slot but no connection
        self.connection: _Connection | None = None


class BuiltinSender:
    """Sends over a keep-alive pool of at most ``max_connections`` HTTP/1.1 connections.

    At most ``max_connections`` requests are in flight at once; the rest wait
    in order. When a response completes, the next waiting request is written
    on the same connection at once, inside the connection's callback, so a
    waiting call is woken once, by its own response, not twice.

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
        self._busy = 0
        self._queue: collections.deque[_Queued] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))

    async def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float | None
    ) -> RawResponse:
        """Send one request with these headers and read its response in full."""
        return await self.send_signed(method, url, lambda: headers, body, timeout)

    async def send_signed(
        self,
        method: str,
        url: str,
        headers: Callable[[], dict[str, str]],
        body: bytes | None,
        timeout: float | None,
    ) -> RawResponse:
        """Send one request, calling ``headers()`` just before its bytes are written.

        A request beyond ``max_connections`` in flight waits for a free one
        first, so headers made then (a signature with a timestamp) are never
        older than the send. ``timeout`` is enforced around the whole attempt
        by the transport.
        """
        origin = _split(url)
        loop = self._bound_loop()
        if self._busy >= self.max_connections or self._queue:
            queued = _Queued(method, origin, headers, body, loop.create_future())
            self._queue.append(queued)
            try:
                answer = await queued.answer
            except BaseException:
                self._give_up(queued)
                raise
            if answer is not None:
                return answer
            # None: a slot was handed over without a connection; fetch one below.
        else:
            self._busy += 1
        try:
            connection = self._idle_connection(origin[:3]) or await self._connect(origin)
        except BaseException:
            self._on_free(None)
            raise
        try:
            head = _request_head(method, origin, headers(), body)
        except BaseException:
            self._on_free(connection)
            raise
        waiter: asyncio.Future[RawResponse | None] = loop.create_future()
        connection.start(head, body, waiter)
        try:
            response = await waiter
        except BaseException:
            connection.abandon(waiter)
            raise
        assert response is not None
        return response

    async def aclose(self) -> None:
        self._closed = True
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    def _bound_loop(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise ClientClosedError(
                "this AsyncClient is bound to the event loop it first sent from; "
                "create one client per event loop"
            )
        return loop

    def _idle_connection(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be timed out
            if connection.can_carry():
                return connection
            self._open.discard(connection)
        return None

    async def _connect(self, origin: _Origin) -> _Connection:
        if self._closed:
            raise ClientClosedError("the AsyncClient was closed")
        tls = self.ssl_context if origin.scheme == "https" else None
        factory = functools.partial(_Connection, origin[:3], self._on_free, self._read_buffer)
        try:
            _, connection = await asyncio.get_running_loop().create_connection(
                factory, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
            )
        except ssl.SSLError as error:  # before OSError: SSLError is one
            raise httpx.ConnectError(f"TLS handshake with {origin.host} failed: {error}") from error
        except OSError as error:
            raise httpx.ConnectError(f"cannot connect to {origin.host}:{origin.port}: {error}") from error
        self._open.add(connection)
        return connection

    def _on_free(self, connection: _Connection | None) -> None:
        """A request's slot is free: give it, and the connection, to the next waiting request.

        Called from the connection's callbacks, so the next request is written
        at once and its caller is woken only by its own response.
        """
        queue = self._queue
        while queue:
            queued = queue.popleft()
            if queued.answer.done():
                continue  # its caller gave up while waiting
            if (
                connection is None
                or self._closed
                or connection.key != queued.key
                or not connection.can_carry()
            ):
                self._park(connection)
                queued.answer.set_result(None)  # the slot is its: it fetches a connection itself
                return
            try:
                head = _request_head(queued.method, queued.origin, queued.headers(), queued.body)
            except Exception as error:  # as the caller would have met it when sending
                queued.answer.set_exception(error)
                continue
            queued.connection = connection
            connection.start(head, queued.body, queued.answer)
            return
        self._busy -= 1
        self._park(connection)

    def _give_up(self, queued: _Queued) -> None:
        """The caller of a waiting request stopped waiting: free what it held."""
        answer = queued.answer
        if queued.connection is not None:
            queued.connection.abandon(answer)  # written, and not answered yet
        elif answer.done() and not answer.cancelled() and answer.exception() is None:
            self._on_free(None)  # handed a slot (None, not a response: it has no connection) it will not use
        # Still in the queue: skipped when its turn comes.

    def _park(self, connection: _Connection | None) -> None:
        if connection is None:
            return
        if connection.can_carry() and not self._closed:
            self._idle.setdefault(connection.key, []).append(connection)
        else:
            connection.close()
            self._open.discard(connection)
