"""The bulk journal in PostgreSQL, shared by every machine of a run (asyncpg).

``PostgresJournal("postgresql://user@host:5432/db", run="changes.jsonl")``, or
``--journal postgresql://...`` on the command line; ``pip install
'ndax-async[postgres]'``. The tables live in a schema of their own,
``ndax_journal`` (``operations`` and ``schema_version``), made on first use
under an advisory lock, so shards starting at once do not race to make them.

asyncpg talks to the server from the event loop itself (no thread), through a
small pool, so a run's workers claim and record rows concurrently. Leases are
timed by the server's clock (``now()``), so machines whose clocks disagree
still agree on them.

A call that fails (server gone, connection lost) stops the journal: that call
and every later one raise :class:`~ndax_async.errors.JournalError`, and the run
stops as a crash would; run it again to resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .._redact import redact_url
from ..errors import JournalError
from .journal import (
    COLUMNS,
    DEFAULT_LEASE,
    DEFAULT_RUN,
    SCHEMA_VERSION,
    Journal,
    JournalEntry,
    check_schema_version,
    claim_action,
    entry_from_row,
)

__all__ = ["PostgresJournal"]

T = TypeVar("T")

SCHEMA_LOCK = 0x6E646178  # pg_advisory_xact_lock key held while the schema is made ("ndax")
SCHEMA = """
CREATE SCHEMA IF NOT EXISTS ndax_journal;
CREATE TABLE IF NOT EXISTS ndax_journal.schema_version (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS ndax_journal.operations (
    run text NOT NULL,
    key text NOT NULL,
    op text NOT NULL,
    line integer,
    request_id text,
    payload_hash text,
    state text NOT NULL,
    participant_code text,
    reason text,
    error text,
    attempts integer NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    run_id text,
    holder text,
    lease_until timestamptz,
    existing boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run, key)
);
"""
TABLE = "ndax_journal.operations"
SELECT = f"SELECT {COLUMNS}, COALESCE(lease_until > now(), false) FROM {TABLE}"  # noqa: S608
LEASE = "now() + ${n}::float8 * interval '1 second'"
INSERT_NEW = (
    f"INSERT INTO {TABLE} (run, key, op, line, request_id, payload_hash, state, run_id, holder,"  # noqa: S608
    f" lease_until) VALUES ($1, $2, $3, $4, $5, $6, 'sending', $7, $7, {LEASE.format(n=8)})"
    " ON CONFLICT (run, key) DO NOTHING RETURNING 1"
)
UPSERT = (
    f"INSERT INTO {TABLE} (run, key, op, line, request_id, payload_hash, state, participant_code,"  # noqa: S608
    " reason, error, attempts, run_id, holder, lease_until, existing)"
    f" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, {LEASE.format(n=13)}, $14)"
    " ON CONFLICT (run, key) DO UPDATE SET op = excluded.op, line = excluded.line,"
    f" request_id = COALESCE(excluded.request_id, {TABLE}.request_id),"
    f" payload_hash = COALESCE(excluded.payload_hash, {TABLE}.payload_hash), state = excluded.state,"
    " participant_code = excluded.participant_code, reason = excluded.reason, error = excluded.error,"
    " attempts = excluded.attempts, updated_at = now(), run_id = excluded.run_id,"
    " holder = excluded.holder, lease_until = excluded.lease_until, existing = excluded.existing"
)


class PostgresJournal(Journal):
    """A journal in the PostgreSQL database at ``url``; ``pool_size`` connections at most."""

    def __init__(
        self, url: str, *, run: str = DEFAULT_RUN, lease: float = DEFAULT_LEASE, pool_size: int = 10
    ) -> None:
        super().__init__(run=run, lease=lease)
        self.url = url
        self.location = redact_url(url)
        self.pool_size = pool_size
        self._pool: Any = None
        self._failure: JournalError | None = None

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has succeeded and :meth:`close` has not been called since."""
        return self._pool is not None

    async def open(self) -> PostgresJournal:
        """Connect, and make (or check) the schema; :class:`JournalError` if it cannot be."""
        try:
            import asyncpg
        except ImportError as error:
            raise JournalError(
                "a PostgreSQL journal needs asyncpg: pip install 'ndax-async[postgres]'"
            ) from error
        try:
            pool = await asyncpg.create_pool(self.url, min_size=1, max_size=self.pool_size)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            raise JournalError(f"the journal {self.location} could not be opened: {error}") from None
        try:
            async with pool.acquire() as connection, connection.transaction():
                await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                await connection.execute(SCHEMA)
                version = await connection.fetchval("SELECT MAX(version) FROM ndax_journal.schema_version")
                if version is None:
                    await connection.execute(
                        "INSERT INTO ndax_journal.schema_version VALUES ($1)", SCHEMA_VERSION
                    )
                else:
                    check_schema_version(version, self.location)
        except BaseException as error:
            await pool.close()
            if isinstance(error, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                raise JournalError(f"the journal {self.location} could not be opened: {error}") from None
            raise
        self._pool, self._failure = pool, None
        return self

    async def close(self) -> None:
        """Close the pool (every call made before is committed already)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def claim(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> JournalEntry | None:
        """See :meth:`Journal.claim`: one statement for a new row, a locked read and an update else."""

        async def work(connection: Any) -> JournalEntry | None:
            args = (self.run, key, op, line, request_id, payload_hash, self.run_id, self.lease)
            if await connection.fetchval(INSERT_NEW, *args) is not None:
                return None
            async with connection.transaction():
                query = f"{SELECT} WHERE run = $1 AND key = $2 FOR UPDATE"
                row = await connection.fetchrow(query, self.run, key)
                found = entry_from_row(tuple(row)[:-1], row[-1], self.run_id)
                action = claim_action(found, self.run_id)
                if action == "mark":
                    await connection.execute(
                        f"UPDATE {TABLE} SET run_id = $3, line = $4 WHERE run = $1 AND key = $2",  # noqa: S608
                        self.run, key, self.run_id, line,
                    )  # fmt: skip
                elif action == "take":
                    await connection.execute(
                        f"UPDATE {TABLE} SET run_id = $3, line = $4, holder = $3, state = 'sending',"  # noqa: S608
                        f" updated_at = now(), lease_until = {LEASE.format(n=5)} WHERE run = $1 AND key = $2",
                        self.run, key, self.run_id, line, self.lease,
                    )  # fmt: skip
                return found

        return await self._call(work)

    async def sending(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> None:
        """See :meth:`Journal.sending`."""
        args = (key, op, line, request_id, payload_hash, "sending", None, None, None, 0, self.lease, False)
        await self._upsert(*args)

    async def finished(
        self,
        key: str,
        op: str,
        line: int | None,
        *,
        succeeded: bool,
        participant_code: str | None = None,
        reason: str | None = None,
        error: str | None = None,
        attempts: int = 0,
        existing: bool = False,
    ) -> None:
        """See :meth:`Journal.finished`."""
        state = "succeeded" if succeeded else "failed"
        outcome = (state, participant_code, reason, error, attempts)
        await self._upsert(key, op, line, None, None, *outcome, None, existing)

    async def renew(self) -> None:
        """See :meth:`Journal.renew`."""
        query = (
            f"UPDATE {TABLE} SET lease_until = {LEASE.format(n=3)}"  # noqa: S608
            " WHERE run = $1 AND holder = $2 AND state = 'sending'"
        )
        await self._call(lambda connection: connection.execute(query, self.run, self.run_id, self.lease))

    async def get(self, key: str) -> JournalEntry | None:
        """See :meth:`Journal.get`."""

        async def work(connection: Any) -> JournalEntry | None:
            row = await connection.fetchrow(f"{SELECT} WHERE run = $1 AND key = $2", self.run, key)
            return None if row is None else entry_from_row(tuple(row)[:-1], row[-1], self.run_id)

        return await self._call(work)

    async def counts(self) -> dict[str, int]:
        """See :meth:`Journal.counts`."""
        query = (
            "SELECT CASE WHEN existing THEN 'existing' ELSE state END AS shown, COUNT(*)"  # noqa: S608
            f" FROM {TABLE} WHERE run = $1 GROUP BY shown"
        )
        rows = await self._call(lambda connection: connection.fetch(query, self.run))
        return {shown: count for shown, count in rows}

    async def failures(self) -> list[JournalEntry]:
        """See :meth:`Journal.failures`."""
        query = f"{SELECT} WHERE run = $1 AND state <> 'succeeded' ORDER BY line, key"
        rows = await self._call(lambda connection: connection.fetch(query, self.run))
        return [entry_from_row(tuple(row)[:-1], row[-1], self.run_id) for row in rows]

    async def _upsert(self, *columns: Any) -> None:
        """Write a row: ``columns`` from key to attempts, the lease (seconds, or None), existing."""
        *fields, lease, existing = columns
        args = (self.run, *fields, self.run_id, lease, existing)
        await self._call(lambda connection: connection.execute(UPSERT, *args))

    async def _call(self, work: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``work(connection)`` on a pooled connection; a failure stops the journal."""
        if self._failure is not None:
            raise self._failure
        if self._pool is None:
            raise JournalError(f"the journal {self.location} is not open: await journal.open() first")
        import asyncpg

        try:
            async with self._pool.acquire() as connection:
                return await work(connection)
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            self._failure = JournalError(f"the journal {self.location} could not be written: {error}")
            self._failure.__cause__ = error
            raise self._failure from error
