"""Test against a faithful fake NDAX, in-process or over real HTTP.

- :class:`Sandbox`: the fake API (state, rules, idempotency, faults, counters).
  ``sandbox.client()`` gives an ``AsyncClient`` bound to it in-process;
  ``sandbox.transport()`` an httpx transport; ``sandbox.asgi_app()`` an ASGI app.
- :class:`SandboxServer`: the sandbox served on 127.0.0.1 by uvicorn.
- :class:`Faults`: what to inject and how often, deterministic under a seed.
- :class:`FakeClock`: a clock whose ``sleep`` returns at once and moves time
  forward, so retry and rate-limit waits take no real time in tests.
- pytest fixtures ``ndax_sandbox``, ``ndax_client``, ``ndax_sandbox_server``
  (registered as a pytest plugin when the package is installed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._clock import FakeClock
from ._faults import Faults
from .sandbox import Reply, Sandbox

if TYPE_CHECKING:
    from .server import SandboxServer

__all__ = ["FakeClock", "Faults", "Reply", "Sandbox", "SandboxServer"]


def __getattr__(name: str) -> Any:
    # SandboxServer needs uvicorn (the ``sandbox`` extra): imported on first use only,
    # so the in-process sandbox and the pytest plugin work without it.
    if name == "SandboxServer":
        from .server import SandboxServer

        return SandboxServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
