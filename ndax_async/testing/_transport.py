"""An httpx transport over the sandbox core: the whole SDK in-process, no sockets."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = ["SandboxTransport"]


class SandboxTransport(httpx.AsyncBaseTransport):
    """Answers httpx requests from a :class:`~ndax_async.testing.Sandbox`.

    A dropped connection raises ``httpx.RemoteProtocolError``; a reply slower
    than the request's read timeout raises ``httpx.ReadTimeout`` after that
    timeout, as a real connection would.
    """

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        reply = self.sandbox.handle(
            request.method, request.url.raw_path.decode("ascii"), dict(request.headers), body
        )
        if reply.delay:
            read_timeout = (request.extensions.get("timeout") or {}).get("read")
            if read_timeout is not None and reply.delay > read_timeout:
                await asyncio.sleep(read_timeout)
                raise httpx.ReadTimeout("sandbox: the response outlasted the read timeout", request=request)
            await asyncio.sleep(reply.delay)
        if reply.drop:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            )
        return httpx.Response(reply.status, headers=reply.headers, content=reply.body, request=request)
