"""The bulk journal: a durable record of each operation, in SQLite, off the event loop.

Each operation's row is written *before* it is sent (state ``sending``, with
its request_id and payload hash) and *after* (``succeeded`` with the
participant_code, or ``failed`` with the reason). A run killed at any instant
and started again finds: succeeded rows to skip, and in-flight or failed rows
to resend with the *same* request_id, so the server replays instead of
applying twice. Every SQLite call runs on one dedicated thread; the event loop
only awaits.

Reads and writes from concurrent operations are *group-committed*: whatever
arrives while one batch is in the database goes, together, into the next
transaction, and a caller that waits resumes only once its batch is
committed; a busy run pays one commit per batch instead of one per row.
Outcomes (:meth:`Journal.finished`) need not be waited for: they are
committed with the next batch, and a read queued after a write sees it.

If a transaction fails (disk full, file removed, locked for too long), the
journal stops: the failed batch's callers and every later call get
:class:`~ndax_async.errors.JournalError`.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import attrs

from .errors import JournalError

__all__ = ["Journal", "JournalEntry"]

T = TypeVar("T")

_UPSERT = (
    "INSERT INTO operations (key, op, line, request_id, payload_hash, state, participant_code,"
    " reason, error, attempts, updated_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(key) DO UPDATE SET op=excluded.op, line=excluded.line,"
    " request_id=COALESCE(excluded.request_id, request_id),"
    " payload_hash=COALESCE(excluded.payload_hash, payload_hash), state=excluded.state,"
    " participant_code=excluded.participant_code, reason=excluded.reason, error=excluded.error,"
    " attempts=excluded.attempts, updated_at=excluded.updated_at, run_id=excluded.run_id"
)

_INSERT_NEW = (
    "INSERT INTO operations (key, op, line, request_id, payload_hash, state, participant_code,"
    " reason, error, attempts, updated_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(key) DO NOTHING"
)

_SCHEMA = """
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
_ENTRY_COLUMNS = (
    "key, op, line, request_id, payload_hash, state, participant_code, reason, error, attempts, run_id"
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


def _entry(row: tuple[Any, ...]) -> JournalEntry:
    """The entry a written row (see :meth:`Journal._row`) stands for."""
    return attrs.evolve(JournalEntry(*row[:10]), run_id=row[11])


class Journal:
    """An SQLite journal at ``path`` (``":memory:"`` for none on disk)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ndax-journal")
        self._db: sqlite3.Connection | None = None
        self._queued: list[tuple[str, Any, asyncio.Future[Any] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._failure: JournalError | None = None
        self.run_id: str | None = None

    def begin_run(self) -> str:
        """Start a new run: every row written from now on carries its id.

        An entry whose ``run_id`` is the current one was written by this run,
        which is how a bulk run tells a key used twice in its input from a key
        an earlier run left behind.
        """
        self.run_id = uuid.uuid4().hex
        return self.run_id

    async def open(self) -> Journal:
        """Open (creating the file and table if needed); :class:`JournalError` if it cannot be."""
        try:
            await self._run(self._open)
        except sqlite3.Error as error:
            raise JournalError(f"the journal {self.path!r} could not be opened: {error!r}") from error
        return self

    def _open(self) -> None:
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
        self._db.execute(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(operations)")}
        if "run_id" not in columns:  # a journal made before run ids
            self._db.execute("ALTER TABLE operations ADD COLUMN run_id TEXT")

    async def close(self) -> None:
        """Close the database and its thread, after any batch still being written."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._db is not None:
            await self._run(self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def drain(self) -> None:
        """Wait until everything queued is committed; raise :class:`JournalError` if it could not be."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])
        if self._failure is not None:
            raise self._failure

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _batched(self, kind: str, item: Any) -> asyncio.Future[Any]:
        """Queue a read (``kind="get"``, a key), a claim or a write (``"put"``, a row) for
        the next group-committed transaction; the future is done once it is committed.

        A plain function returning the future (not a coroutine): one or two of these
        per bulk operation, so the frames saved are measurable.
        """
        future = asyncio.get_running_loop().create_future()
        self._enqueue(kind, item, future)
        # A caller cancelled now stops waiting, but its row is in the batch and is
        # still committed (a "sending" row is then resent by the next run).
        return future

    def _enqueue(self, kind: str, item: Any, future: asyncio.Future[Any] | None) -> None:
        """Add to the next batch (``future`` None: nobody waits), starting the flusher if idle."""
        if self._failure is not None:
            raise self._failure
        self._queued.append((kind, item, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._queued and self._failure is None:
            batch, self._queued = self._queued, []
            reads: list[str] = []
            writes: list[tuple[Any, ...]] = []
            first_claims: dict[str, tuple[Any, ...]] = {}  # a key claimed twice in one batch: the first
            for kind, item, _ in batch:
                if kind == "put":
                    writes.append(item)
                elif kind == "get":
                    reads.append(item)
                else:
                    reads.append(item[0])
                    first_claims.setdefault(item[0], item)
            claims = list(first_claims.values())
            try:
                found = await self._run(self._transaction, reads, writes, claims)
            except BaseException as error:
                self._failure = JournalError(f"the journal {self.path!r} could not be written: {error!r}")
                self._failure.__cause__ = error
                for _, _, future in batch + self._queued:
                    if future is not None and not future.done():
                        future.set_exception(self._failure)
                self._queued = []
                if isinstance(error, Exception):
                    return
                raise
            for kind, item, future in batch:
                if future is None or future.done():
                    continue
                if kind == "put":
                    future.set_result(None)
                elif kind == "get":
                    future.set_result(found.get(item))
                elif first_claims[item[0]] is item:
                    future.set_result(found.get(item[0]))  # the earlier entry, or None: claimed now
                else:  # a later claim of a key claimed earlier in this batch
                    claimed, entry = first_claims[item[0]], found.get(item[0])
                    if entry is None or entry.run_id != claimed[11]:  # the first claim took it
                        entry = attrs.evolve(entry or _entry(claimed), line=claimed[2], run_id=claimed[11])
                    future.set_result(entry)

    def _transaction(
        self, keys: list[str], rows: list[tuple[Any, ...]], claims: list[tuple[Any, ...]]
    ) -> dict[str, JournalEntry]:
        """One transaction: write ``rows``, read ``keys`` (seeing those writes), insert
        ``claims`` that are new, and mark the claimed keys an earlier run left as this
        run's (so a second use in this run is seen as one). All committed or none."""
        db = self._conn()
        found: dict[str, JournalEntry] = {}
        try:
            db.execute("BEGIN")
            if rows:
                db.executemany(_UPSERT, rows)
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                query = f"SELECT {_ENTRY_COLUMNS} FROM operations WHERE key IN ({marks})"  # noqa: S608
                for row in db.execute(query, chunk):
                    found[row[0]] = JournalEntry(*row)
            if claims:
                db.executemany(_INSERT_NEW, claims)
                # a claim is (key, op, line, ..., updated_at, run_id)
                taken = [(c[-1], c[2], c[0]) for c in claims if c[0] in found and found[c[0]].run_id != c[-1]]
                if taken:
                    db.executemany("UPDATE operations SET run_id = ?, line = ? WHERE key = ?", taken)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.rollback()
            raise
        return found

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the journal is not open")
        return self._db

    def get(self, key: str) -> Awaitable[JournalEntry | None]:
        """The entry for ``key``, if any."""
        return self._batched("get", key)

    def claim(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> Awaitable[JournalEntry | None]:
        """Record ``key`` as about to be sent, unless the journal has it already.

        Returns ``None`` when the row is new (it is now durably ``sending`` with
        ``request_id``), else the existing entry, unchanged: the caller decides
        (skip it, or resend it with its recorded request_id via :meth:`sending`).
        One round trip where :meth:`get` then :meth:`sending` take two.
        """
        row = self._row(key, op, line, request_id, payload_hash, "sending", None, None, None, 0)
        return self._batched("claim", row)

    def sending(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> Awaitable[None]:
        """Record, durably, that ``key`` is about to be sent with ``request_id``."""
        row = self._row(key, op, line, request_id, payload_hash, "sending", None, None, None, 0)
        return self._batched("put", row)

    def finished(
        self,
        key: str,
        op: str,
        line: int | None,
        *,
        succeeded: bool,
        request_id: str | None = None,
        payload_hash: str | None = None,
        participant_code: str | None = None,
        reason: str | None = None,
        error: str | None = None,
        attempts: int = 0,
    ) -> None:
        """Record the outcome of ``key`` with the next commit, without waiting for it.

        Reads queued later see it; :meth:`drain` waits until it is committed.
        Not waiting is safe: until it is committed the key stays ``sending``,
        which a later run resends with the same request_id, and the API replays.
        """
        state = "succeeded" if succeeded else "failed"
        row = self._row(
            key, op, line, request_id, payload_hash, state, participant_code, reason, error, attempts
        )
        self._enqueue("put", row, None)

    def _row(self, *columns: Any) -> tuple[Any, ...]:
        """A row as written: ``columns`` (key to attempts), then the time and the run id now.

        Taken when the row is queued, not when it is committed: an outcome queued
        by one run and committed after the next run began is still the first run's.
        """
        return (*columns, time.time(), self.run_id)

    async def counts(self) -> dict[str, int]:
        """How many operations are in each state."""
        return await self._run(self._counts)

    def _counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT state, COUNT(*) FROM operations GROUP BY state").fetchall()
        return {state: count for state, count in rows}

    async def failures(self) -> list[JournalEntry]:
        """Every operation whose last recorded state is not ``succeeded``."""
        return await self._run(self._failures)

    def _failures(self) -> list[JournalEntry]:
        rows = (
            self._conn()
            .execute(
                f"SELECT {_ENTRY_COLUMNS} FROM operations WHERE state != 'succeeded' ORDER BY line, key"  # noqa: S608
            )
            .fetchall()
        )
        return [JournalEntry(*row) for row in rows]
