"""A PostgreSQL server for the journal tests: one per test session, a database per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from ndax_async.bulk import Journal, PostgresJournal, SqliteJournal

from .servers import PostgresServer


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A real PostgreSQL on 127.0.0.1 (skipped outside CI if the machine has none)."""
    with PostgresServer(tmp_path_factory.mktemp("postgres")) as server:
        yield server


async def fresh_database(server: PostgresServer) -> str:
    """Create an empty database on ``server``; return its URL."""
    import asyncpg

    name = "j" + uuid.uuid4().hex[:12]
    connection = await asyncpg.connect(server.url)
    try:
        await connection.execute(f"CREATE DATABASE {name}")
    finally:
        await connection.close()
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def postgres_url(postgres: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return await fresh_database(postgres)


@pytest.fixture(params=["sqlite", "postgres"])
def journal_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh journal's location: a SQLite path, or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "j.sqlite")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def journal(journal_url: str) -> AsyncIterator[Journal]:
    """An open journal of each kind."""
    opened: Journal
    if journal_url.startswith("postgresql://"):
        opened = await PostgresJournal(journal_url, run="test").open()
    else:
        opened = await SqliteJournal(journal_url, run="test").open()
    try:
        yield opened
    finally:
        await opened.close()
