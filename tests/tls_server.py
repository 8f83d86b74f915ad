"""The sandbox's ASGI app served over TLS by uvicorn on 127.0.0.1, with a test CA (trustme)."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from ndax_async.testing import Sandbox


@contextmanager
def tls_sandbox(sandbox: Sandbox, ca: Any) -> Iterator[str]:
    """Serve ``sandbox`` over https in a thread; yield its ``https://localhost:<port>`` URL."""
    uvicorn = pytest.importorskip("uvicorn")
    pem = ca.issue_cert("localhost", "127.0.0.1").private_key_and_cert_chain_pem
    with pem.tempfile() as key_and_chain:
        config = uvicorn.Config(
            sandbox.asgi_app(),
            host="127.0.0.1",
            port=0,
            ssl_certfile=key_and_chain,
            ssl_keyfile=key_and_chain,
            log_level="warning",
            lifespan="off",
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:  # a condition, polled: uvicorn offers no event to wait on
            assert thread.is_alive(), "uvicorn stopped"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"https://localhost:{port}"
        finally:
            server.should_exit = True
            thread.join(10)


def trusting(ca: Any) -> ssl.SSLContext:
    """A client context that trusts ``ca`` besides the system's CAs."""
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context
