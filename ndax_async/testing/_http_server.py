"""The sandbox's own HTTP/1.1 server: asyncio protocols and httptools, no framework.

:meth:`Sandbox.handle` answers synchronously, so each request is answered from
the parser's callback when its last byte arrives: no task per request and no
ASGI messages. In the benchmark's load test that costs about a quarter less
server CPU per create than the same sandbox as an ASGI app under uvicorn, and
the sandbox, not the client under test, is usually what limits such a test.

What it does:

- keep-alive, with pipelined requests answered in order; Content-Length and
  chunked request bodies; ``Expect: 100-continue``; HEAD replies without a body;
- a reply's ``delay`` holds that reply, and the connection's later requests,
  without holding anything else; a ``drop`` promises a body and closes instead;
- a body over :data:`MAX_BODY_BYTES` is answered at once (the sandbox's 413)
  and the connection closed, so it is never read whole;
- a malformed request is answered 400 and its connection closed; an error in
  the sandbox is logged with its traceback and answered 500;
- a keep-alive connection idle for :data:`IDLE_TIMEOUT` seconds (to a fifth
  more) is closed.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
from typing import NamedTuple

import httptools

from .sandbox import MAX_BODY_BYTES, Reply, Sandbox

__all__ = ["IDLE_TIMEOUT", "SandboxHTTPServer"]

READ_BUFFER_BYTES = 64 * 1024
"""The one buffer this server's connections read into (asyncio's BufferedProtocol)."""

IDLE_TIMEOUT = 5.0
"""Seconds a keep-alive connection may wait for its next request (uvicorn's default)."""
_SWEEPS = 5  # idle connections are looked for five times per IDLE_TIMEOUT

logger = logging.getLogger("ndax_async.testing.server")

_REASONS = {status.value: status.phrase for status in http.HTTPStatus}
_BAD_REQUEST = Reply(400, b'{"error": "Bad Request"}', {"content-type": "application/json"})
_SERVER_ERROR = Reply(500, b'{"error": "Internal Server Error"}', {"content-type": "application/json"})
_DROPPED_HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\n"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Request(NamedTuple):
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    reply: Reply | None = None  # answered with this, not by the sandbox


def _response(reply: Reply, *, with_body: bool, keep_alive: bool) -> bytes:
    """The reply as bytes on the wire: status line, headers, Content-Length, body."""
    lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, '')}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in reply.headers.items())
    lines.append(f"content-length: {len(reply.body)}\r\n")
    if not keep_alive:
        lines.append("connection: close\r\n")
    lines.append("\r\n")
    head = "".join(lines).encode("latin-1")
    return head + reply.body if with_body else head


class _Connection(asyncio.BufferedProtocol):
    """One client connection: parses its requests and writes the sandbox's replies in order.

    Bytes arrive in ``read_buffer``, which all connections share: each read is
    parsed before the next can start (see :data:`READ_BUFFER_BYTES`).
    """

    def __init__(self, sandbox: Sandbox, connections: set[_Connection], read_buffer: memoryview) -> None:
        self._sandbox = sandbox
        self._connections = connections
        self._read_buffer = read_buffer
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = "local"
        self._requests: collections.deque[_Request] = collections.deque()
        self._held: asyncio.TimerHandle | None = None  # a delayed reply, not yet written
        self._closed = False
        self._last_read = False  # no more requests are read; close once the owed replies are out
        self._reading = True
        self._write_paused = False
        self._in_message = False
        self.quiet_sweeps = 0  # idle sweeps since the last bytes arrived
        # The request being parsed.
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._body_size = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self._peer = str(peer[0])
        self._connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        if self._closed or self._last_read:
            return
        self.quiet_sweeps = 0
        try:
            self._parser.feed_data(self._read_buffer[:nbytes])
        except httptools.HttpParserUpgrade:
            # The request was answered as a plain one; the upgraded protocol is not spoken.
            self._stop_reading()
            self._serve()
        except httptools.HttpParserError:
            self._requests.append(_Request("", "", {}, b"", keep_alive=False, reply=_BAD_REQUEST))
            self._stop_reading()
            self._serve()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._held is not None:
            self._held.cancel()
            self._held = None
        self._requests.clear()
        self._connections.discard(self)
        # The parser refers back to this protocol: break the cycle, so a closed
        # connection is freed at once even where survivors are frozen (serve_forever).
        del self._parser
        self._transport = None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    # -- httptools callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._in_message = True
        self._url = b""
        self._headers = {}
        self._body = []
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url  # may arrive in pieces

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if (
            self._headers.get("expect", "").lower() == "100-continue"
            and not self._last_read
            and not self._requests
            and self._held is None
            and self._transport is not None
        ):
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        if self._last_read:
            return  # the rest of a body already answered
        self._body.append(body)
        self._body_size += len(body)
        if self._body_size > MAX_BODY_BYTES:
            # Answer now, from what arrived (the sandbox refuses it by its size),
            # and read no more of it: the connection closes after the reply.
            self._in_message = False
            self._queue(keep_alive=False)

    def on_message_complete(self) -> None:
        if self._last_read:
            return
        self._in_message = False
        self._queue(keep_alive=self._parser.should_keep_alive())

    # -- answering ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No request being read, waiting, or held."""
        return not (self._in_message or self._requests or self._held is not None)

    def close(self) -> None:
        """Close the connection (a reply already written is still flushed)."""
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def _queue(self, *, keep_alive: bool) -> None:
        method = self._parser.get_method().decode("ascii", "replace")
        target = self._url.decode("latin-1")
        self._requests.append(_Request(method, target, self._headers, b"".join(self._body), keep_alive))
        if not keep_alive:
            self._stop_reading()
        self._serve()

    def _serve(self) -> None:
        """Answer waiting requests in order until one is held or the connection closes."""
        while self._requests and self._held is None and not self._closed:
            request = self._requests.popleft()
            reply = self._reply_to(request)
            if reply.delay > 0:
                loop = asyncio.get_running_loop()
                self._held = loop.call_later(reply.delay, self._release, request, reply)
                self._update_reading()
                return
            self._write(request, reply)
        if self._last_read and not self._requests and self._held is None:
            self.close()

    def _reply_to(self, request: _Request) -> Reply:
        if request.reply is not None:
            return request.reply
        try:
            method, target = request.method, request.target
            return self._sandbox.handle(method, target, request.headers, request.body, self._peer)
        except Exception:
            logger.exception("sandbox: error answering %s %s", request.method, request.target)
            return _SERVER_ERROR

    def _release(self, request: _Request, reply: Reply) -> None:
        self._held = None
        self._write(request, reply)
        self._update_reading()
        self._serve()

    def _write(self, request: _Request, reply: Reply) -> None:
        if self._closed or self._transport is None:
            return
        if reply.drop:
            # Promise a body, send none, and close: the client sees the
            # connection drop without a response.
            self._transport.write(_DROPPED_HEAD)
            self.close()
            return
        wire = _response(reply, with_body=request.method != "HEAD", keep_alive=request.keep_alive)
        self._transport.write(wire)

    def _stop_reading(self) -> None:
        """Read no more requests: the connection closes once the replies owed are written."""
        self._last_read = True
        if self._reading and self._transport is not None and not self._closed:
            self._reading = False
            self._transport.pause_reading()

    def _update_reading(self) -> None:
        """Read while nothing is held and the client is reading what is written."""
        if self._closed or self._last_read or self._transport is None:
            return
        want = self._held is None and not self._write_paused
        if want != self._reading:
            self._reading = want
            if want:
                self._transport.resume_reading()
            else:
                self._transport.pause_reading()


class SandboxHTTPServer:
    """A sandbox listening on ``host:port`` in the running event loop.

    ``await server.start()`` returns the bound port (``port=0`` picks a free
    one); ``await server.close()`` stops listening and closes every connection.
    """

    def __init__(self, sandbox: Sandbox, host: str, port: int, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.sandbox = sandbox
        self.host = host
        self.port = port
        self._sweep_every = idle_timeout / _SWEEPS
        self._connections: set[_Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> int:
        """Listen; return the port."""
        loop = asyncio.get_running_loop()
        read_buffer = memoryview(bytearray(READ_BUFFER_BYTES))
        self._server = await loop.create_server(
            lambda: _Connection(self.sandbox, self._connections, read_buffer), self.host, self.port
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)
        return self.port

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.close()
        if self._server is not None:
            await self._server.wait_closed()

    def _sweep(self) -> None:
        """Close the connections that were idle at the last :data:`_SWEEPS` sweeps and this one."""
        for connection in list(self._connections):
            if not connection.idle:
                connection.quiet_sweeps = 0
                continue
            connection.quiet_sweeps += 1
            if connection.quiet_sweeps > _SWEEPS:
                connection.close()
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)
