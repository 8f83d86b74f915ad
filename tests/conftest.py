"""Shared fixtures: a fake clock, a respx router, a client (on its default backend) under it.

``respx.mock(using="httpx")`` intercepts every ``httpx.AsyncClient``, the
default one (over aiohttp's pool) included; plain ``respx.mock`` patches only
httpx's own pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import respx

from ndax_async import AsyncClient
from ndax_async.testing import FakeClock

from .helpers import API_KEY, API_SECRET, BASE_URL, PASSPHRASE
from .pg_fixtures import journal, journal_url, postgres, postgres_url  # noqa: F401 (the journal tests' fixtures)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mock() -> Iterator[respx.MockRouter]:
    with respx.mock(base_url=BASE_URL, assert_all_called=False, using="httpx") as router:
        yield router


@pytest.fixture
async def client(clock: FakeClock, mock: respx.MockRouter) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(
        api_key=API_KEY, api_secret=API_SECRET, passphrase=PASSPHRASE, clock=clock
    ) as instance:
        yield instance


pytest_plugins = ["pytester"]
