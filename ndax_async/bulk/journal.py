"""The bulk journal: a durable record of each operation, in SQLite, off the event loop.

Each operation's row is written *before* it is sent (state ``sending``, with
its request_id and payload hash) and *after* (``succeeded`` with the
participant_code, or ``failed`` with the reason). A run killed at any instant
and started again finds: succeeded rows to skip, and in-flight or failed rows
to resend with the *same* request_id, so the server replays instead of
applying twice.

The SQLite work (:mod:`ndax_async.bulk.journal_writer`) runs in a small child
process that only this journal talks to, over pipes the event loop reads
without blocking. A process, not a thread: a thread shares the GIL with the
loop and can only write while the loop waits, whereas the child commits
while the loop goes on working (a bulk run claims its operations well ahead
of sending them, see :class:`ndax_async.bulk.Bulk`).
Where no child process can be started (a frozen application, an event loop
without subprocess support) the same work runs on one thread instead.

Reads and writes from concurrent operations are *group-committed*: whatever
arrives while a batch is being written goes, together, into the next
transaction, and a caller that waits resumes only once its batch is
committed; a busy run pays one commit per batch instead of one per row.
Outcomes (:meth:`Journal.finished`) need not be waited for: they ride with
the next batch something waits for (or, at the latest, start one of their own
once 256 are queued or the oldest has waited half a second), and a read
queued after a write sees it.

If a transaction fails (disk full, file removed, locked for too long), or the
child process dies, the journal stops: the batch's callers and every later
call get :class:`~ndax_async.errors.JournalError`.
"""

from __future__ import annotations

import asyncio
import collections
import marshal
import os
import sqlite3
import struct
import sys
import time
import uuid
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import attrs

from ..errors import JournalError
from . import journal_writer as writer

__all__ = ["Journal", "JournalEntry"]

Answer = tuple[bool, Any]  # (True, result) or (False, (error class name, message))
WriterKind = Literal["auto", "process", "thread"]


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


class _ProcessWriter:
    """Runs :mod:`~ndax_async.bulk.journal_writer` in a child process; answers come back in order."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._process: asyncio.subprocess.Process | None = None
        self._waiting: collections.deque[asyncio.Future[Answer]] = collections.deque()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> Answer:
        self._process = await asyncio.create_subprocess_exec(
            *writer.launch_command(self.path), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        opened = await self._answer()
        if opened[0]:
            self._reader = asyncio.create_task(self._read_answers())
        return opened

    def call(self, *request: Any) -> asyncio.Future[Answer]:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        stdin = self._process.stdin if self._process is not None else None
        if stdin is None or self._reader is None or self._reader.done():
            future.set_result(_EXITED)
            return future
        self._waiting.append(future)
        stdin.write(writer.frame(request))
        return future

    async def close(self) -> None:
        """Close the child's input (it finishes what it has, then exits) and wait for it."""
        if self._process is None:
            return
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), _EXIT_WAIT)
        except asyncio.TimeoutError:  # stuck: a kill is safe, SQLite commits are atomic
            self._process.kill()
            await self._process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _answer(self) -> Answer:
        stdout = self._process.stdout if self._process is not None else None
        if stdout is None:
            return _EXITED
        try:
            head = await stdout.readexactly(4)
            data = await stdout.readexactly(struct.unpack(">I", head)[0])
            answer: Answer = marshal.loads(data)  # noqa: S302 (from our own child, on a pipe only we hold)
        except (asyncio.IncompleteReadError, EOFError, ValueError, TypeError):
            return _EXITED  # gone, or no longer speaking the protocol: treated alike
        return answer

    async def _read_answers(self) -> None:
        try:
            while (answer := await self._answer()) is not _EXITED:
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(answer)
        finally:
            while self._waiting:  # nothing more will be answered
                future = self._waiting.popleft()
                if not future.done():
                    future.set_result(_EXITED)


# Outcomes nobody waits for ride with the next commit something waits for, or
# start one of their own once this many are queued or the oldest has waited this long.
OUTCOMES_PER_COMMIT = 256
OUTCOMES_WAIT = 0.5  # seconds

_EXITED: Answer = (False, ("WriterExited", "the journal's writer process exited or stopped answering"))
_EXIT_WAIT = 30.0  # seconds a closing writer may take to commit what it has (SQLite waits 5 s for a lock)


class _ThreadWriter:
    """Runs the same :func:`~ndax_async.bulk.journal_writer.handle` on one thread (a fallback)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ndax-journal")
        self._db: sqlite3.Connection | None = None

    async def start(self) -> Answer:
        try:
            self._db = await asyncio.get_running_loop().run_in_executor(
                self._executor, writer.connect, self.path
            )
        except sqlite3.Error as error:
            return False, (type(error).__name__, str(error))
        return True, None

    def call(self, *request: Any) -> asyncio.Future[Answer]:
        assert self._db is not None
        return asyncio.wrap_future(self._executor.submit(writer.handle, self._db, request))

    async def close(self) -> None:
        if self._db is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._db.close)
            self._db = None
        self._executor.shutdown(wait=True)


def _can_start_a_process() -> bool:
    """A child Python can run the writer script: not a frozen app, and the script is a file."""
    return bool(sys.executable) and not getattr(sys, "frozen", False) and os.path.isfile(writer.__file__)


class Journal:
    """An SQLite journal at ``path`` (``":memory:"`` for none on disk).

    ``writer`` picks where the SQLite work runs: ``"process"`` (a child
    process), ``"thread"``, or ``"auto"`` (the default: a process where one
    can be started, else a thread).
    """

    def __init__(self, path: str | Path, *, writer: WriterKind = "auto") -> None:
        if writer not in ("auto", "process", "thread"):
            raise ValueError("writer must be 'auto', 'process' or 'thread'")
        self.path = str(path)
        self.writer_kind = writer
        self._writer: _ProcessWriter | _ThreadWriter | None = None
        self._queued: list[tuple[str, Any, asyncio.Future[Any] | None]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._outcomes_due: asyncio.TimerHandle | None = None
        self._waited = 0  # queued calls someone waits for
        self._everything = False  # commit all that is queued, waited for or not
        self._failure: JournalError | None = None
        self.run_id: str | None = None
        self._in_run = False

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

    @property
    def is_open(self) -> bool:
        """Whether :meth:`open` has succeeded and :meth:`close` has not been called since."""
        return self._writer is not None

    async def open(self) -> Journal:
        """Open (creating the file and table if needed); :class:`JournalError` if it cannot be."""
        kind = self.writer_kind
        if kind == "auto":
            kind = "process" if _can_start_a_process() else "thread"
        opened: Answer | None = None
        if kind == "process":
            self._writer = _ProcessWriter(self.path)
            try:
                opened = await self._writer.start()
            except (NotImplementedError, OSError) as error:  # this loop or platform cannot start one
                if self.writer_kind == "process":
                    raise JournalError(f"cannot start the journal's writer process: {error!r}") from error
                kind = "thread"
        if kind == "thread":
            self._writer = _ThreadWriter(self.path)
            opened = await self._writer.start()
        assert opened is not None
        ok, detail = opened
        if not ok:
            await self.close()
            raise _journal_error(f"the journal {self.path!r} could not be opened", detail)
        return self

    async def close(self) -> None:
        """Close the database (and its process or thread), after committing what is queued."""
        if self._outcomes_due is not None:
            self._outcomes_due.cancel()
            self._outcomes_due = None
        if self._failure is None and self._writer is not None:
            self._start_flushing(everything=True)
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._writer is not None:
            await self._writer.close()
            self._writer = None

    async def drain(self) -> None:
        """Wait until everything queued is committed; raise :class:`JournalError` if it could not be."""
        while self._failure is None and self._writer is not None:
            self._start_flushing(everything=True)
            if self._flusher is None or self._flusher.done():
                break
            await asyncio.wait([self._flusher])
        if self._failure is not None:
            raise self._failure

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
        """Add to the next batch (``future`` None: nobody waits), starting the flusher if it is due."""
        if self._failure is not None:
            raise self._failure
        if self._writer is None:
            raise self._not_open()
        self._queued.append((kind, item, future))
        if future is not None:
            self._waited += 1
        if self._due():
            self._start_flushing()
        elif self._outcomes_due is None:
            self._outcomes_due = asyncio.get_running_loop().call_later(OUTCOMES_WAIT, self._outcomes_waited)

    def _due(self) -> bool:
        """Whether the queue is to be committed now: someone waits for part of it, it is
        long, or it was asked for (:meth:`drain`, :meth:`close`, the outcomes' wait)."""
        return bool(self._queued) and (
            self._waited > 0 or self._everything or len(self._queued) >= OUTCOMES_PER_COMMIT
        )

    def _start_flushing(self, *, everything: bool = False) -> None:
        """Commit what is due, unless a batch is being committed already (it goes on to these)."""
        self._everything = self._everything or everything
        if self._due() and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.create_task(self._flush())

    def _outcomes_waited(self) -> None:
        self._outcomes_due = None
        if self._failure is None and self._writer is not None:
            self._start_flushing(everything=True)

    async def _flush(self) -> None:
        """Commit what is due, one batch at a time, in order: what is queued while a batch
        is being written goes into the next."""
        batch: list[Any] = []
        try:
            while self._due() and self._failure is None:
                batch, self._queued = self._queued, []
                self._waited, self._everything = 0, False
                first_claims, answer = self._send(batch)
                ok, result = await answer
                if not ok:  # the batch stays unanswered, so the failure reaches its callers
                    raise _journal_error(f"the journal {self.path!r} could not be written", result)
                self._settle(batch, first_claims, {row[0]: JournalEntry(*row) for row in result})
                batch = []
        except BaseException as error:
            failure = (
                error if isinstance(error, JournalError) else JournalError(f"the journal stopped: {error!r}")
            )
            if failure is not error:
                failure.__cause__ = error
            self._failure = failure
            unanswered, self._queued = batch + self._queued, []
            for _, _, future in unanswered:
                if future is not None and not future.done():
                    future.set_exception(failure)
            if not isinstance(error, Exception):
                raise

    def _send(self, batch: list[Any]) -> tuple[dict[str, tuple[Any, ...]], asyncio.Future[Answer]]:
        """Hand ``batch`` to the writer as one transaction."""
        assert self._writer is not None
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
        answer = self._writer.call("commit", reads, writes, list(first_claims.values()))
        return first_claims, answer

    @staticmethod
    def _settle(
        batch: list[Any], first_claims: dict[str, tuple[Any, ...]], found: dict[str, JournalEntry]
    ) -> None:
        """Resolve the futures of a committed batch."""
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

    def get(self, key: str) -> Awaitable[JournalEntry | None]:
        """The entry for ``key``, if any."""
        return self._batched("get", key)

    def claim(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> asyncio.Future[JournalEntry | None]:
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
        """Record the outcome of ``key`` with a later commit, without waiting for it.

        It rides with the next commit something waits for, or starts one once
        :data:`OUTCOMES_PER_COMMIT` are queued or it has waited
        :data:`OUTCOMES_WAIT` seconds. Reads queued later see it;
        :meth:`drain` and :meth:`close` commit it.
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
        rows = await self._query("counts")
        return {state: count for state, count in rows}

    async def failures(self) -> list[JournalEntry]:
        """Every operation whose last recorded state is not ``succeeded``."""
        return [JournalEntry(*row) for row in await self._query("failures")]

    def _not_open(self) -> JournalError:
        return JournalError(f"the journal {self.path!r} is not open: await journal.open() first")

    async def _query(self, kind: str) -> Any:
        if self._writer is None:
            raise self._not_open()
        ok, result = await self._writer.call(kind)
        if not ok:
            raise _journal_error(f"the journal {self.path!r} could not be read", result)
        return result


def _journal_error(what: str, detail: tuple[str, str]) -> JournalError:
    """A :class:`JournalError` for a writer's ``(error class name, message)``; the SQLite
    error, rebuilt, is its cause."""
    name, message = detail
    error = JournalError(f"{what}: {name}: {message}")
    cause_type = getattr(sqlite3, name, None)
    if isinstance(cause_type, type) and issubclass(cause_type, sqlite3.Error):
        error.__cause__ = cause_type(message)
    return error
