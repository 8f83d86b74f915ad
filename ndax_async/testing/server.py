"""Serve a sandbox over real HTTP on 127.0.0.1 (uvicorn), in a thread or in the foreground."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._asgi import ConnectionDropped

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = ["SandboxServer", "serve_forever"]

HOST = "127.0.0.1"


class _HideInjectedDrops(logging.Filter):
    """Drop uvicorn's traceback for connections the sandbox cut on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


def _server(sandbox: Sandbox, port: int, log_level: str) -> Any:
    import uvicorn

    logging.getLogger("uvicorn.error").addFilter(_HideInjectedDrops())
    config = uvicorn.Config(
        sandbox.asgi_app(),
        host=HOST,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        proxy_headers=False,  # the peer address is the client (its rate limit); no proxy is trusted
    )
    return uvicorn.Server(config)


class SandboxServer:
    """A sandbox served on loopback from a background thread.

    ``with SandboxServer(sandbox) as server: server.base_url`` (port 0 picks a
    free port). Stopping waits for the server to close its connections.
    """

    def __init__(self, sandbox: Sandbox, port: int = 0, log_level: str = "warning") -> None:
        self.sandbox = sandbox
        self._server = _server(sandbox, port, log_level)
        self._thread = threading.Thread(target=self._server.run, name="ndax-sandbox", daemon=True)
        self.port = port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> str:
        """Start serving; return the base URL once the socket is listening."""
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the sandbox server failed to start")
            self._thread.join(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self.base_url

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        self._thread.join(10)

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(sandbox: Sandbox, port: int = 0, on_ready: Any = print) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; call ``on_ready(line)`` once listening.

    Runs on the event loop uvicorn would pick itself (uvloop where installed),
    as :class:`SandboxServer`'s thread does.
    """
    server = _server(sandbox, port, "warning")

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                raise RuntimeError("the sandbox server failed to start")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        credentials = " ".join(f"{k}={v}" for k, v in sandbox.credentials.items())
        on_ready(f"NDAX sandbox at http://{HOST}:{bound} {credentials}")
        await task

    loop_factory = _loop_factory(server)
    if loop_factory is None or sys.version_info < (3, 11):
        asyncio.run(main())
    else:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())


def _loop_factory(server: Any) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop uvicorn itself would run on: uvloop where installed (``loop="auto"``).

    uvicorn before 0.36 has no loop factories; the default asyncio loop is used then.
    """
    get_loop_factory = getattr(server.config, "get_loop_factory", None)
    factory: Callable[[], asyncio.AbstractEventLoop] | None = (
        get_loop_factory() if get_loop_factory is not None else None
    )
    return factory
