"""The bulk journal in a SQLite file (the embedded default), written off the event loop.

Every call is one SQLite transaction on one thread of the journal's own (a
single-thread executor), so calls are committed in the order they are made
and the event loop never waits on the disk. At the platform's rate (200
requests/s per IP) that is a few hundred small commits a second, far below
what SQLite in WAL mode does (``benchmarks/journal.py`` measures it).

Leases are timed by ``clock`` (``time.time`` unless a test injects another),
so processes sharing the file on one machine agree on them.

If a transaction fails (disk full, file removed, locked for too long), the
journal stops: that call and every later one raise
:class:`~ndax_async.errors.JournalError`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

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

__all__ = ["SqliteJournal"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    run TEXT NOT NULL,
    key TEXT NOT NULL,
    op TEXT NOT NULL,
    line INTEGER,
    request_id TEXT,
    payload_hash TEXT,
    state TEXT NOT NULL,
    participant_code TEXT,
    reason TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    run_id TEXT,
    holder TEXT,
    lease_until REAL,
    existing INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run, key)
)
"""
ALL_COLUMNS = (
    "run, key, op, line, request_id, payload_hash, state, participant_code, reason, error,"
    " attempts, updated_at, run_id, holder, lease_until, existing"
)
UPSERT = (
    f"INSERT INTO operations ({ALL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
    " ON CONFLICT(run, key) DO UPDATE SET op=excluded.op, line=excluded.line,"
    " request_id=COALESCE(excluded.request_id, request_id),"
    " payload_hash=COALESCE(excluded.payload_hash, payload_hash), state=excluded.state,"
    " participant_code=excluded.participant_code, reason=excluded.reason, error=excluded.error,"
    " attempts=excluded.attempts, updated_at=excluded.updated_at, run_id=excluded.run_id,"
    " holder=excluded.holder, lease_until=excluded.lease_until, existing=excluded.existing"
)
SELECT = f"SELECT {COLUMNS}, lease_until FROM operations"  # noqa: S608 (constant columns)


class SqliteJournal(Journal):
    """A SQLite journal at ``path`` (``":memory:"`` for none on disk).

    ``clock`` gives the time leases are measured by (``time.time`` by default).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        run: str = DEFAULT_RUN,
        lease: float = DEFAULT_LEASE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(run=run, lease=lease)
        self.path = str(path)
        self.location = repr(self.path)
        self.clock = clock
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failure: JournalError | None = None

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has succeeded and :meth:`close` has not been called since."""
        return self._db is not None

    async def open(self) -> SqliteJournal:
        """Open (creating the file and tables if needed); :class:`JournalError` if it cannot be."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ndax-journal")
        try:
            loop = asyncio.get_running_loop()
            self._db = await loop.run_in_executor(self._executor, _connect, self.path, self.run)
        except (sqlite3.Error, JournalError) as error:
            self._executor.shutdown(wait=False)
            self._executor = None
            if isinstance(error, JournalError):
                raise
            raise JournalError(f"the journal {self.location} could not be opened: {error}") from error
        self._failure = None
        return self

    async def close(self) -> None:
        """Close the database (every call made before is committed already)."""
        db, executor = self._db, self._executor
        self._db = self._executor = None
        if db is not None and executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, db.close)
        if executor is not None:
            executor.shutdown(wait=False)  # its one thread is idle now, and exits

    async def claim(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> JournalEntry | None:
        """See :meth:`Journal.claim`."""
        row = self._row(key, op, line, request_id, payload_hash, "sending", None, None, None, 0, lease=True)
        return await self._call(_claim, row, self.clock())

    async def sending(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> None:
        """See :meth:`Journal.sending`."""
        row = self._row(key, op, line, request_id, payload_hash, "sending", None, None, None, 0, lease=True)
        await self._call(_write, row)

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
        row = self._row(
            key, op, line, None, None, state, participant_code, reason, error, attempts,
            lease=False, existing=existing,
        )  # fmt: skip
        await self._call(_write, row)

    async def renew(self) -> None:
        """See :meth:`Journal.renew`."""
        await self._call(_renew, self.run, self.run_id, self.clock() + self.lease)

    async def get(self, key: str) -> JournalEntry | None:
        """See :meth:`Journal.get`."""
        return await self._call(_get, self.run, key, self.clock(), self.run_id)

    async def counts(self) -> dict[str, int]:
        """See :meth:`Journal.counts`."""
        return await self._call(_counts, self.run)

    async def failures(self) -> list[JournalEntry]:
        """See :meth:`Journal.failures`."""
        return await self._call(_failures, self.run, self.clock(), self.run_id)

    def _row(self, *columns: Any, lease: bool, existing: bool = False) -> tuple[Any, ...]:
        """A row as written: the run, ``columns`` (key to attempts), the time, the run id,
        the holder, the lease's end (if ``lease``), and the existing flag."""
        now = self.clock()
        until = now + self.lease if lease else None
        return (self.run, *columns, now, self.run_id, self.run_id, until, int(existing))

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(db, *args)`` on the journal's thread; a failure stops the journal."""
        if self._failure is not None:
            raise self._failure
        if self._db is None or self._executor is None:
            raise JournalError(f"the journal {self.location} is not open: await journal.open() first")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, self._db, *args)
        except sqlite3.Error as error:
            self._failure = JournalError(f"the journal {self.location} could not be written: {error}")
            self._failure.__cause__ = error
            raise self._failure from error


# The SQLite side: each function runs on the journal's thread, one transaction each.


def _connect(path: str, run: str) -> sqlite3.Connection:
    """Open the journal at ``path``, trying again while another process or thread
    opening the same new file holds it (SQLite answers "database is locked" at
    once, without waiting, when two connections switch a new file to WAL together)."""
    for pause in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2):
        try:
            return _open(path, run)
        except sqlite3.OperationalError as error:
            if "locked" not in str(error):
                raise
        time.sleep(pause)  # on the journal's own thread, never the event loop's
    return _open(path, run)


def _open(path: str, run: str) -> sqlite3.Connection:
    """Open the journal at ``path``: make the schema, or migrate a version 1 journal
    (its rows become ``run``'s), or refuse a newer one."""
    # Several processes (shards) may share one file: wait up to 30 s for another's write lock.
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        db.execute("BEGIN IMMEDIATE")
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "schema_version" in tables:
            (version,) = db.execute("SELECT MAX(version) FROM schema_version").fetchone()
            check_schema_version(version or 0, repr(path))
        else:
            if "operations" in tables:
                _migrate_from_version_1(db, run)
            db.execute(SCHEMA)
            db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        db.execute("COMMIT")
    except BaseException:
        db.close()
        raise
    return db


def _migrate_from_version_1(db: sqlite3.Connection, run: str) -> None:
    """Move a journal made before run names (one run per file) into ``run``."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(operations)")}
    run_id = "run_id" if "run_id" in columns else "NULL"
    db.execute("ALTER TABLE operations RENAME TO operations_v1")
    db.execute(SCHEMA)
    db.execute(
        f"INSERT INTO operations ({ALL_COLUMNS}) SELECT ?, key, op, line, request_id,"  # noqa: S608
        " payload_hash, state, participant_code, reason, error, attempts, updated_at,"
        f" {run_id}, NULL, NULL, 0 FROM operations_v1",
        (run,),
    )
    db.execute("DROP TABLE operations_v1")


def _entry(row: tuple[Any, ...] | None, now: float, run_id: str | None) -> JournalEntry | None:
    if row is None:
        return None
    *columns, lease_until = row
    return entry_from_row(columns, lease_until is not None and lease_until > now, run_id)


def _get(db: sqlite3.Connection, run: str, key: str, now: float, run_id: str | None) -> JournalEntry | None:
    return _entry(db.execute(f"{SELECT} WHERE run = ? AND key = ?", (run, key)).fetchone(), now, run_id)


def _write(db: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    db.execute(UPSERT, row)


def _claim(db: sqlite3.Connection, row: tuple[Any, ...], now: float) -> JournalEntry | None:
    run, key, line, run_id, until = row[0], row[1], row[3], row[-4], row[-2]
    db.execute("BEGIN IMMEDIATE")  # read and write as one: another process may share the file
    try:
        found = _get(db, run, key, now, run_id)
        action = "new" if found is None else claim_action(found, run_id)
        if action == "new":
            db.execute(UPSERT, row)
        elif action == "mark":
            query = "UPDATE operations SET run_id = ?, line = ? WHERE run = ? AND key = ?"
            db.execute(query, (run_id, line, run, key))
        elif action == "take":
            db.execute(
                "UPDATE operations SET run_id = ?, line = ?, holder = ?, lease_until = ?, state = 'sending',"
                " updated_at = ? WHERE run = ? AND key = ?",
                (run_id, line, run_id, until, now, run, key),
            )
        db.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise
    return found


def _renew(db: sqlite3.Connection, run: str, holder: str | None, until: float) -> None:
    db.execute(
        "UPDATE operations SET lease_until = ? WHERE run = ? AND holder = ? AND state = 'sending'",
        (until, run, holder),
    )


def _counts(db: sqlite3.Connection, run: str) -> dict[str, int]:
    query = (
        "SELECT CASE WHEN existing THEN 'existing' ELSE state END AS shown, COUNT(*) FROM operations"
        " WHERE run = ? GROUP BY shown"
    )
    return dict(db.execute(query, (run,)).fetchall())


def _failures(db: sqlite3.Connection, run: str, now: float, run_id: str | None) -> list[JournalEntry]:
    query = f"{SELECT} WHERE run = ? AND state != 'succeeded' ORDER BY line, key"
    return [entry for row in db.execute(query, (run,)) if (entry := _entry(row, now, run_id)) is not None]
