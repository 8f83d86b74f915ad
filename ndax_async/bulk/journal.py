"""The bulk journal: a durable record of each operation, in SQLite, off the event loop.

Each operation's row is written *before* it is sent (state ``sending``, with
its request_id and payload hash) and *after* (``succeeded`` with the
participant_code, or ``failed`` with the reason). A run killed at any instant
and started again finds: succeeded rows to skip, and in-flight or failed rows
to resend with the *same* request_id, so the server replays instead of
applying twice.

Every call is one SQLite transaction on one thread of the journal's own
(a single-thread executor), so calls are committed in the order they are
made and the event loop never waits on the disk. At the platform's rate
(200 requests/s per IP) that is a few hundred small commits a second, far
below what SQLite in WAL mode does (``benchmarks/bulk.py`` measures it).

If a transaction fails (disk full, file removed, locked for too long), the
journal stops: that call and every later one raise
:class:`~ndax_async.errors.JournalError`.

The interface a bulk run uses, and another store would implement:
:meth:`Journal.open` / :meth:`Journal.close`, :meth:`Journal.begin_run` /
:meth:`Journal.end_run`, :meth:`Journal.claim`, :meth:`Journal.sending`,
:meth:`Journal.finished`, :meth:`Journal.get`, :meth:`Journal.counts` and
:meth:`Journal.failures`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ..errors import JournalError

__all__ = ["Journal", "JournalEntry"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    key TEXT PRIMARY KEY,
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
    run_id TEXT
)
"""
COLUMNS = "key, op, line, request_id, payload_hash, state, participant_code, reason, error, attempts, run_id"
UPSERT = (
    "INSERT INTO operations (key, op, line, request_id, payload_hash, state, participant_code,"
    " reason, error, attempts, updated_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(key) DO UPDATE SET op=excluded.op, line=excluded.line,"
    " request_id=COALESCE(excluded.request_id, request_id),"
    " payload_hash=COALESCE(excluded.payload_hash, payload_hash), state=excluded.state,"
    " participant_code=excluded.participant_code, reason=excluded.reason, error=excluded.error,"
    " attempts=excluded.attempts, updated_at=excluded.updated_at, run_id=excluded.run_id"
)


@attrs.frozen
class JournalEntry:
    """One operation as the journal last recorded it."""

    key: str
    op: str
    line: int | None
    request_id: str | None
    payload_hash: str | None
    state: str
    participant_code: str | None
    reason: str | None
    error: str | None
    attempts: int
    run_id: str | None = None
    """Which run wrote the entry last (see :meth:`Journal.begin_run`)."""


class Journal:
    """An SQLite journal at ``path`` (``":memory:"`` for none on disk)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.run_id: str | None = None
        self._db: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._failure: JournalError | None = None
        self._in_run = False

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has succeeded and :meth:`close` has not been called since."""
        return self._db is not None

    async def open(self) -> Journal:
        """Open (creating the file and table if needed); :class:`JournalError` if it cannot be."""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ndax-journal")
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._executor, _connect, self.path)
        except sqlite3.Error as error:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise JournalError(f"the journal {self.path!r} could not be opened: {error}") from error
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

    def begin_run(self) -> str:
        """Start a new run: every row written from now on carries its id.

        An entry whose ``run_id`` is the current one was written by this run,
        which is how a bulk run tells a key used twice in its input from a key
        an earlier run left behind. Runs take turns: :class:`JournalError` if
        another run has begun and not yet ended (:meth:`end_run`).
        """
        if self._in_run:
            raise JournalError(
                f"the journal {self.path!r} is in use by another run: runs sharing a journal"
                " must take turns (give concurrent runs a journal each)"
            )
        self._in_run = True
        self.run_id = uuid.uuid4().hex
        return self.run_id

    def end_run(self) -> None:
        """End the run :meth:`begin_run` started, so that another may begin."""
        self._in_run = False

    async def claim(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> JournalEntry | None:
        """Record ``key`` as about to be sent, unless the journal has it already.

        Returns ``None`` when the row is new (it is now durably ``sending`` with
        ``request_id``), else the existing entry as it was: the caller decides
        (skip it, or resend it with its recorded request_id via :meth:`sending`).
        An entry an earlier run left is marked as this run's (at ``line``), so a
        second use of the key in this run is seen as one.
        """
        row = self._row(key, op, line, request_id, payload_hash, "sending", None, None, None, 0)
        return await self._call(_claim, row)

    async def sending(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> None:
        """Record, durably, that ``key`` is about to be sent with ``request_id``."""
        row = self._row(key, op, line, request_id, payload_hash, "sending", None, None, None, 0)
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
    ) -> None:
        """Record, durably, the outcome of ``key`` (its request_id and payload hash are kept)."""
        state = "succeeded" if succeeded else "failed"
        row = self._row(key, op, line, None, None, state, participant_code, reason, error, attempts)
        await self._call(_write, row)

    async def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key``, if any."""
        return await self._call(_get, key)

    async def counts(self) -> dict[str, int]:
        """How many operations are in each state."""
        return await self._call(_counts)

    async def failures(self) -> list[JournalEntry]:
        """Every operation whose last recorded state is not ``succeeded``, by line."""
        return await self._call(_failures)

    def _row(self, *columns: Any) -> tuple[Any, ...]:
        """A row as written: ``columns`` (key to attempts), then the time and the run id."""
        return (*columns, time.time(), self.run_id)

    async def _call(self, work: Callable[..., T], *args: Any) -> T:
        """Run ``work(db, *args)`` on the journal's thread; a failure stops the journal."""
        if self._failure is not None:
            raise self._failure
        if self._db is None or self._executor is None:
            raise JournalError(f"the journal {self.path!r} is not open: await journal.open() first")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, work, self._db, *args)
        except sqlite3.Error as error:
            self._failure = JournalError(f"the journal {self.path!r} could not be written: {error}")
            self._failure.__cause__ = error
            raise self._failure from error


# The SQLite side: each function runs on the journal's thread, one transaction each.


def _connect(path: str) -> sqlite3.Connection:
    """Open the journal at ``path``, creating the table, and migrating a journal made before run ids."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
    db.execute(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(operations)")}
    if "run_id" not in columns:
        db.execute("ALTER TABLE operations ADD COLUMN run_id TEXT")
    return db


def _entry(row: tuple[Any, ...] | None) -> JournalEntry | None:
    return None if row is None else JournalEntry(*row)


def _get(db: sqlite3.Connection, key: str) -> JournalEntry | None:
    query = f"SELECT {COLUMNS} FROM operations WHERE key = ?"  # noqa: S608 (constant columns)
    return _entry(db.execute(query, (key,)).fetchone())


def _write(db: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    db.execute(UPSERT, row)


def _claim(db: sqlite3.Connection, row: tuple[Any, ...]) -> JournalEntry | None:
    key, line, run_id = row[0], row[2], row[-1]
    db.execute("BEGIN IMMEDIATE")  # read and write as one: another process may share the file
    try:
        found = _get(db, key)
        if found is None:
            db.execute(UPSERT, row)
        elif found.run_id != run_id:
            db.execute("UPDATE operations SET run_id = ?, line = ? WHERE key = ?", (run_id, line, key))
        db.execute("COMMIT")
    except BaseException:
        db.rollback()
        raise
    return found


def _counts(db: sqlite3.Connection) -> dict[str, int]:
    return dict(db.execute("SELECT state, COUNT(*) FROM operations GROUP BY state").fetchall())


def _failures(db: sqlite3.Connection) -> list[JournalEntry]:
    query = f"SELECT {COLUMNS} FROM operations WHERE state != 'succeeded' ORDER BY line, key"  # noqa: S608
    return [JournalEntry(*row) for row in db.execute(query)]
