"""Serve a sandbox over real HTTP on 127.0.0.1, in a thread or in the foreground.

The server is the sandbox's own (:mod:`._http_server`), on uvloop where it is
installed (``pip install 'ndax-async[sandbox]'``) and on asyncio's loop otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

from ._http_server import SandboxHTTPServer

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = ["SandboxServer", "serve_forever"]

HOST = "127.0.0.1"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop where uvloop is installed, else asyncio's default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class SandboxServer:
    """A sandbox served on loopback from a background thread.

    ``with SandboxServer(sandbox) as server: server.base_url`` (port 0 picks a
    free port). Stopping closes the server's connections and waits for its thread.
    """

    def __init__(self, sandbox: Sandbox, port: int = 0) -> None:
        self.sandbox = sandbox
        self.port = port
        self._thread = threading.Thread(target=self._run, name="ndax-sandbox", daemon=True)
        self._listening = threading.Event()
        self._failure: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    def start(self) -> str:
        """Start serving; return the base URL once the socket is listening."""
        self._thread.start()
        self._listening.wait()
        if self._failure is not None:
            raise RuntimeError("the sandbox server failed to start") from self._failure
        return self.base_url

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        if self._thread.ident is None:
            return  # never started
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def _run(self) -> None:
        loop = new_event_loop()
        try:
            loop.run_until_complete(self._serve())
        except Exception as failure:  # start() raises it
            self._failure = failure
        finally:
            self._listening.set()
            loop.close()

    async def _serve(self) -> None:
        server = SandboxHTTPServer(self.sandbox, HOST, self.port)
        self.port = await server.start()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._listening.set()
        try:
            await self._stop.wait()
        finally:
            await server.close()

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(sandbox: Sandbox, port: int = 0, on_ready: Callable[[str], object] = print) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; call ``on_ready(line)`` once listening.

    This owns its process, so it also keeps what the sandbox stores out of the
    garbage collector's way (:func:`freeze_after_full_collections`).
    """
    freeze_after_full_collections()

    async def main() -> None:
        server = SandboxHTTPServer(sandbox, HOST, port)
        bound = await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' loop
                loop.add_signal_handler(signum, stop.set)
        credentials = " ".join(f"{k}={v}" for k, v in sandbox.credentials.items())
        on_ready(f"NDAX sandbox at http://{HOST}:{bound} {credentials}")
        try:
            await stop.wait()
        finally:
            await server.close()

    loop = new_event_loop()
    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()


def freeze_after_full_collections() -> None:
    """After each full garbage collection, move the survivors out of later ones (``gc.freeze()``).

    A sandbox keeps every participant and ledger entry it is sent, so a long
    load test fills the oldest generation with objects that never die, and
    each full collection walks them all: a sandbox holding 300,000 objects
    paused 23 to 250 ms per full collection, long enough to time requests
    out. Frozen, they are skipped; later full collections walk only what
    arrived since. Garbage cycles among frozen objects are never collected,
    so this is for a process that does nothing but serve a sandbox.
    """
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def _freeze_survivors(phase: str, info: dict[str, int]) -> None:
    if phase == "stop" and info["generation"] == 2:
        gc.freeze()
