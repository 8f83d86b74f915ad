"""The sandbox core as an ASGI application, for serving over real HTTP (uvicorn, or any ASGI server).

Faults map onto ASGI as follows: a reply's ``delay`` holds it (other requests
go on meanwhile); a dropped reply promises a body and then fails, so the server
cuts the connection without a response (:class:`ConnectionDropped`; the server
module keeps uvicorn from logging it as an error). A body over the limit is
answered (413) before it is read whole, and its connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from .sandbox import MAX_BODY_BYTES, Reply

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = ["SandboxApp"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class ConnectionDropped(Exception):
    """Raised mid-response so the server cuts the connection (a dropped-response fault)."""


class SandboxApp:
    """ASGI 3 app answering from a :class:`~ndax_async.testing.Sandbox`."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = bytearray()
        more_body = True
        while more_body and len(body) <= MAX_BODY_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more_body = message.get("more_body", False)
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        client = (scope.get("client") or ("local", 0))[0]
        reply = self.sandbox.handle(scope["method"], target.decode("latin-1"), headers, bytes(body), client)
        if reply.delay:
            try:
                await asyncio.sleep(reply.delay)
            except asyncio.CancelledError:
                # The server is shutting down and gave up waiting: cut the connection,
                # never answer a held write with the server's own 500.
                reply = Reply(0, b"", drop=True)
        if reply.drop:
            # Promise a body, send half of nothing, then fail: the server closes
            # the connection and the client sees it drop without a response.
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"64")]}
            )
            raise ConnectionDropped("sandbox fault: connection dropped")
        raw_headers = [(k.encode(), v.encode()) for k, v in reply.headers.items()]
        raw_headers.append((b"content-length", str(len(reply.body)).encode()))  # not chunked: one piece
        if more_body:  # the rest of the body is never read: close once answered
            raw_headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": reply.status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": reply.body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
