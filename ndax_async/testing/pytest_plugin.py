"""pytest fixtures for testing code that uses ndax_async (registered automatically).

- ``ndax_sandbox``: a fresh :class:`~ndax_async.testing.Sandbox`.
- ``ndax_client``: an ``AsyncClient`` bound to it in-process (needs pytest-asyncio).
- ``ndax_sandbox_server``: the same sandbox served on 127.0.0.1 by uvicorn;
  its ``base_url`` points a client at it over real HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import pytest

from ..client import AsyncClient
from .sandbox import Sandbox

if TYPE_CHECKING:
    from .server import SandboxServer

try:
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - pytest-asyncio not installed
    _async_fixture = pytest.fixture  # type: ignore[assignment]


@pytest.fixture
def ndax_sandbox() -> Sandbox:
    """A fresh in-memory sandbox with default credentials and no faults."""
    return Sandbox()


@_async_fixture
async def ndax_client(ndax_sandbox: Sandbox) -> AsyncIterator[AsyncClient]:
    """An ``AsyncClient`` talking to ``ndax_sandbox`` in-process."""
    async with ndax_sandbox.client() as client:
        yield client


@pytest.fixture
def ndax_sandbox_server(ndax_sandbox: Sandbox) -> Iterator[SandboxServer]:
    """``ndax_sandbox`` served over loopback HTTP for the test's duration (needs the ``sandbox`` extra)."""
    from .server import SandboxServer

    with SandboxServer(ndax_sandbox) as server:
        yield server
