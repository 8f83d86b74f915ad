"""Serve a sandbox over real HTTP on 127.0.0.1 with uvicorn, in a thread or in the foreground.

uvicorn serves the sandbox's ASGI app (:class:`~ndax_async.testing._asgi.SandboxApp`)
with the settings a faithful fake needs: no proxy headers (the per-IP rate limit
goes by the peer address), no access log, and a settable keep-alive idle timeout.
uvicorn picks its event loop and HTTP parser itself (uvloop and httptools where
``pip install 'ndax-async[sandbox]'`` installed them).
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING

try:
    import uvicorn
except ImportError as missing:  # pragma: no cover - depends on the install
    raise ImportError("serving the sandbox needs uvicorn: pip install 'ndax-async[sandbox]'") from missing

from ._asgi import ConnectionDropped, SandboxApp

if TYPE_CHECKING:
    from .sandbox import Sandbox

__all__ = ["IDLE_TIMEOUT", "SandboxServer", "serve_forever"]

HOST = "127.0.0.1"
IDLE_TIMEOUT = 5
"""Seconds a keep-alive connection may wait for its next request (uvicorn's default)."""


class _QuietDrops(logging.Filter):
    """Drops uvicorn's traceback for a :class:`ConnectionDropped` fault: it is injected, not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], ConnectionDropped))


_quiet_drops = _QuietDrops()


class _Server(uvicorn.Server):
    """A uvicorn server that calls ``on_started`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], object]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_started()


def _server(sandbox: Sandbox, idle_timeout: float, on_started: Callable[[], object]) -> _Server:
    logging.getLogger("uvicorn.error").addFilter(_quiet_drops)  # a no-op when already there
    config = uvicorn.Config(
        SandboxApp(sandbox),
        log_config=None,  # leave the host application's logging as it is
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        lifespan="off",
        timeout_graceful_shutdown=1,  # then held replies are cut, as dropped ones
        timeout_keep_alive=idle_timeout,  # type: ignore[arg-type]  # uvicorn takes any number of seconds
    )
    return _Server(config, on_started)


def _listen(port: int) -> socket.socket:
    """A socket listening on 127.0.0.1 (``port=0`` picks a free port)."""
    return socket.create_server((HOST, port))


class SandboxServer:
    """A sandbox served on loopback by uvicorn from a background thread.

    ``with SandboxServer(sandbox) as server: server.base_url`` (port 0 picks a
    free port). ``idle_timeout`` is how many seconds a keep-alive connection may
    wait for its next request before the server closes it. Stopping closes the
    server's connections and waits for its thread.
    """

    def __init__(self, sandbox: Sandbox, port: int = 0, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.sandbox = sandbox
        self.port = port
        self.idle_timeout = idle_timeout
        self._started = threading.Event()
        self._server = _server(sandbox, idle_timeout, self._started.set)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://{HOST}:{self.port}"

    @property
    def open_connections(self) -> int:
        """How many client connections the server holds open right now."""
        return len(self._server.server_state.connections)

    def start(self) -> str:
        """Start serving; return the base URL once the server accepts connections."""
        try:
            listener = _listen(self.port)
        except OSError as error:
            raise RuntimeError(f"the sandbox server failed to start on {HOST}:{self.port}") from error
        self.port = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(listener,), name="ndax-sandbox", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise RuntimeError("the sandbox server failed to start") from self._failure
        return self.base_url

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def _run(self, listener: socket.socket) -> None:
        try:
            self._server.run(sockets=[listener])
        except BaseException as failure:  # start() raises it (uvicorn exits with SystemExit)
            self._failure = failure
        finally:
            listener.close()
            self._started.set()

    def __enter__(self) -> SandboxServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_forever(
    sandbox: Sandbox,
    port: int = 0,
    on_ready: Callable[[str], object] = print,
    *,
    idle_timeout: float = IDLE_TIMEOUT,
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM; call ``on_ready(line)`` once listening.

    The line reads ``NDAX sandbox at http://127.0.0.1:<port> api_key=... api_secret=...
    passphrase=...``. uvicorn handles the signals: it shuts down gracefully, then
    lets the signal take its usual course (SIGINT returns from here, SIGTERM ends
    the process).
    """
    listener = _listen(port)
    bound = listener.getsockname()[1]
    credentials = " ".join(f"{k}={v}" for k, v in sandbox.credentials.items())
    server = _server(
        sandbox, idle_timeout, lambda: on_ready(f"NDAX sandbox at http://{HOST}:{bound} {credentials}")
    )
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        listener.close()
