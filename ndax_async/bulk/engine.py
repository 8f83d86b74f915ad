"""Bulk onboarding and backfill: bounded, rate-limited, resumable, exactly once.

``Bulk(client, concurrency=..., rate=..., journal=...)`` runs operations from
any sync or async iterable, streamed (memory stays bounded by the concurrency,
not the input), and yields an :class:`OperationResult` per operation as it
finishes; :attr:`Bulk.summary` totals them.

- Concurrency is a fixed number of workers, each running one operation at a
  time, kept at or below the client's connection pool, so requests never
  queue for a connection.
- Every attempt passes a rate limiter (the platform allows 2,000 requests per
  10 s per IP; the default is 180/s), and a 429 pauses every request.
- A retry budget shared by the run (:class:`~ndax_async.RetryQuota`) stops
  thousands of operations retrying at once against a failing server.
- With a journal (SQLite), each operation is recorded before it is sent and
  its outcome after (with a later commit, within half a second); a run killed
  at any instant and started again skips what succeeded and resends what was
  in flight with the same request_id. A journal that cannot be written stops
  the run with :class:`~ndax_async.errors.JournalError`.
- The input is read ahead of the workers (128 items, or 4 per worker if
  more); with a journal, those operations are validated and recorded as
  ``sending`` ahead of their turn, 64 to a commit. A run stopped early leaves
  them so: the next run sends them, with their recorded request_id.
- Where its operations wait for nothing (a mock, a server that answers at
  once, rows refused before sending), a run starts at most four of them per
  turn of the event loop, so it never holds the loop for long. An operation
  that waited (for the network, say) is followed by the next at once.
- Nothing is dropped: a row that is malformed, invalid or refused becomes a
  ``failed`` result with its line and reason, and the run goes on.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from .._sending.limits import RateLimiter, RetryQuota
from .._sending.retry import RetryEvent
from .._sending.transport import CallScope
from .._wire.writes import PreparedWrite
from ..client import AsyncClient
from ..errors import APIError, JournalError, TransportError, ValidationError
from .journal import Journal, JournalEntry

__all__ = ["Bulk", "BulkSummary", "Journal", "JournalEntry", "Operation", "OperationResult", "RowError"]

OpKind = Literal["create", "create_minor", "update"]
OP_KINDS: tuple[str, ...] = ("create", "create_minor", "update")
DEFAULT_RATE = 180.0  # 90% of the documented 2,000 requests per 10 seconds
READ_AHEAD = 128  # input items read (and, with a journal, claimed) ahead of the workers, at least
READ_PIECE = 16  # items read between turns of the loop
CLAIM_BATCH = 64  # operations read ahead whose claims are queued together
UNWAITING_PER_TURN = 4  # operations that wait for nothing a run starts per turn of the event loop, at most


@attrs.frozen(kw_only=True)
class Operation:
    """One logical operation of a bulk run.

    ``key`` is the caller's unique identifier for it. ``data`` is the wire
    payload (a mapping) or a model. An update names its ``participant_code``;
    a minor may name its custodian by ``custodian_key`` (the key of a create
    in the same run) instead of ``custodian_participant_code``.
    """

    key: str
    op: OpKind
    data: Any
    participant_code: str | None = None
    custodian_key: str | None = None
    line: int | None = None


@attrs.frozen(kw_only=True)
class RowError:
    """An input row that could not be read as an operation (reported, never dropped)."""

    line: int
    reason: str
    key: str | None = None


@attrs.frozen(kw_only=True)
class OperationResult:
    """What happened to one operation.

    ``outcome`` is ``succeeded``, ``skipped`` (already succeeded in an earlier
    run, per the journal) or ``failed``; ``reason`` says why it failed
    (``bad_row``, ``validation``, ``rejected``, ``conflict``, ``server``,
    ``transport``, ``custodian``).
    """

    key: str | None
    op: str | None
    outcome: Literal["succeeded", "skipped", "failed"]
    line: int | None = None
    participant_code: str | None = None
    reason: str | None = None
    error: str | None = None
    attempts: int = 0
    request_id: str | None = None
    resent: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The result as a plain dict (for a results file)."""
        return attrs.asdict(self)


@attrs.define
class BulkSummary:
    """Totals of a run."""

    succeeded: int = 0
    skipped: int = 0
    failed: int = 0
    resent: int = 0
    failed_by_reason: Counter[str] = attrs.field(factory=Counter)
    retries_by_reason: Counter[str] = attrs.field(factory=Counter)
    started: float = attrs.field(factory=time.monotonic)
    finished: float | None = None

    @property
    def total(self) -> int:
        """Operations accounted for."""
        return self.succeeded + self.skipped + self.failed

    @property
    def retries(self) -> int:
        """Retries made, all reasons."""
        return sum(self.retries_by_reason.values())

    @property
    def elapsed(self) -> float:
        """Seconds from start to finish (or to now)."""
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    def add(self, result: OperationResult) -> None:
        """Count one result."""
        if result.outcome == "succeeded":
            self.succeeded += 1
        elif result.outcome == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
            self.failed_by_reason[result.reason or "unknown"] += 1
        self.resent += result.resent

    def describe(self) -> str:
        """A few human lines."""
        failed = ", ".join(f"{k} {v}" for k, v in self.failed_by_reason.most_common()) or "none"
        retries = ", ".join(f"{k} {v}" for k, v in self.retries_by_reason.most_common()) or "none"
        return (
            f"succeeded {self.succeeded}, skipped (already done) {self.skipped}, failed {self.failed}"
            f" ({failed})\nresent after an interrupted run {self.resent};"
            f" retries {self.retries} ({retries})\n"
            f"{self.total} operations in {self.elapsed:.1f}s ({self.rate:.0f}/s)"
        )


class Bulk:
    """Runs operations through one :class:`~ndax_async.AsyncClient`, exactly once.

    The run's rate limit applies on top of the client's own, and its retry
    budget replaces the client's, for the run's own requests only: other calls
    on the same client, and other runs sharing it, keep their own limits.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        concurrency: int = 16,
        rate: float | None = DEFAULT_RATE,
        journal: str | Path | Journal | None = None,
        retry_quota: RetryQuota | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.client = client
        self.concurrency = concurrency
        self.rate = rate
        self.retry_quota = retry_quota or RetryQuota()
        self._journal_spec = journal
        self.journal: Journal | None = None
        self.summary = BulkSummary()
        # Creates in flight, so a minor can wait for its custodian's code.
        self._custodians: dict[str, asyncio.Future[str | None]] = {}
        # Without a journal, finished creates' codes are kept here for minors,
        # and every key's first line, to refuse a key used twice.
        self._created: dict[str, str | None] = {}
        self._lines: dict[str, int | None] = {}
        self._scope = CallScope()  # the run's limits, made by run()
        self._running = False

    async def run(
        self, operations: Iterable[Operation | RowError] | AsyncIterable[Operation | RowError]
    ) -> AsyncIterator[OperationResult]:
        """Run every operation; yield each result as it finishes.

        To stop early, close the iterator (``async with
        contextlib.aclosing(engine.run(ops)) as results``): in-flight operations
        are cancelled and the next run with the same journal resends them.
        Raises :class:`~ndax_async.errors.JournalError` if the journal cannot be
        written, and whatever the input raises, after the results before it.
        Runs of one engine take turns: ``RuntimeError`` if another is going.
        """
        if self._running:
            raise RuntimeError(
                "this Bulk engine is running another run: runs of one engine take turns"
                " (make an engine for each run that goes at the same time)"
            )
        self.summary = BulkSummary()
        # The run's limits travel with its calls; the shared client is not touched.
        limiter = None
        if self.rate:
            limiter = RateLimiter(self.rate, burst=max(1.0, self.rate / 10), clock=self.client._clock)
        observer = self.client.observer  # observe: the run's span, its operations linked to it
        run = observer.bulk_started(
            concurrency=self.concurrency, rate=self.rate, journal=bool(self._journal_spec)
        )
        self._scope = CallScope(limiter=limiter, quota=self.retry_quota, on_retry=self._count_retry, run=run)
        results: asyncio.Queue[OperationResult | None] = asyncio.Queue(maxsize=self.concurrency * 2)
        self._lines = {}
        self.journal = None
        self._running = True
        try:
            journal = await self._open_journal()
            if journal is not None:
                journal.begin_run()  # JournalError if another run is using it
            self.journal = journal
            producer = asyncio.create_task(self._produce(operations, results))
            try:
                while (result := await results.get()) is not None:
                    self.summary.add(result)
                    observer.bulk_operation(run, result.outcome)  # observe
                    yield result
                await producer
            finally:
                if not producer.done():
                    producer.cancel()
                    await asyncio.gather(producer, return_exceptions=True)
        except BaseException as error:
            self.summary.finished = time.monotonic()
            observer.bulk_ended(run, self.summary, error)  # observe
            raise
        else:
            self.summary.finished = time.monotonic()
            observer.bulk_ended(run, self.summary)  # observe
        finally:
            try:
                if self.journal is not None:
                    try:
                        await self.journal.drain()  # every outcome committed before the run ends
                    finally:
                        self.journal.end_run()
                        if not isinstance(self._journal_spec, Journal):
                            await self.journal.close()
            finally:
                self._running = False

    async def run_all(
        self, operations: Iterable[Operation | RowError] | AsyncIterable[Operation | RowError]
    ) -> BulkSummary:
        """Run every operation, discarding per-operation results; return the summary."""
        async for _ in self.run(operations):
            pass
        return self.summary

    def _count_retry(self, event: RetryEvent) -> None:
        self.summary.retries_by_reason[event.reason] += 1

    async def _open_journal(self) -> Journal | None:
        spec = self._journal_spec
        if spec is None:
            return None
        if isinstance(spec, Journal):
            return spec if spec.is_open else await spec.open()
        return await Journal(spec).open()

    async def _produce(
        self,
        operations: Iterable[Operation | RowError] | AsyncIterable[Operation | RowError],
        results: asyncio.Queue[OperationResult | None],
    ) -> None:
        deferred: list[Operation] = []
        try:
            await self._work(_aiter(operations), deferred, results)
            # Minors whose custodian came later in the input, now that all is read.
            await self._work(_aiter([_Final(item) for item in deferred]), deferred, results)
        except asyncio.CancelledError:
            raise  # run() stopped it: nobody is waiting for results
        except BaseException:
            await results.put(None)  # wake the consumer; run() then raises this error
            raise
        await results.put(None)

    async def _work(
        self,
        items: AsyncIterator[Operation | RowError | _Final],
        deferred: list[Operation],
        results: asyncio.Queue[OperationResult | None],
    ) -> None:
        """Run ``items`` on ``concurrency`` workers, each taking the next item when it is done.

        The input is read (and, with a journal, claimed) ahead of the workers by
        :class:`_ReadAhead`; :class:`_Pacer` keeps the run from holding the event
        loop where its operations wait for nothing.
        """
        ahead = _ReadAhead(self, items, window=max(READ_AHEAD, 4 * self.concurrency))
        pacer = _Pacer(UNWAITING_PER_TURN)

        async def worker() -> None:
            waited = False  # whether this worker's last operation let the loop turn
            while True:
                item = await ahead.next()
                if item is _END:
                    return
                if not waited:
                    await pacer.wait()
                started = pacer.start()
                result = await self._guarded(item, deferred)
                waited = pacer.turn != started
                if result is not None:
                    await results.put(result)

        workers = [asyncio.create_task(worker()) for _ in range(self.concurrency)]
        try:
            await asyncio.gather(*workers)
        except BaseException:
            # Stopped early (the caller closed the results, or the journal failed):
            # in-flight operations stay "sending" in the journal and are resent by the next run.
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            raise
        finally:
            await ahead.close()

    async def _guarded(self, item: object, deferred: list[Operation]) -> OperationResult | None:
        """Process one item; anything else in the input becomes a ``bad_row`` failure, and a
        bug becomes that row's ``internal`` failure: never a lost row or a stopped run."""
        if not isinstance(item, (Operation, RowError, _Final, _Claimed)):
            error = f"not an Operation or RowError: {type(item).__name__}"
            return self._record_failure(None, None, None, "bad_row", error)
        try:
            return await self._process(item, deferred)
        except JournalError:
            raise  # the journal cannot record: stop the run, as a crash would
        except Exception as error:
            op = item.operation if isinstance(item, (_Final, _Claimed)) else item
            return self._record_failure(op.key, getattr(op, "op", None), op.line, "internal", repr(error))

    async def _process(
        self, item: Operation | RowError | _Final | _Claimed, deferred: list[Operation]
    ) -> OperationResult | None:
        if isinstance(item, RowError):
            return await self._fail_unsent(item.key, None, item.line, "bad_row", item.reason)
        final = isinstance(item, _Final)
        claimed = item if isinstance(item, _Claimed) else None
        op = item.operation if isinstance(item, (_Final, _Claimed)) else item
        in_flight = self._custodians.get(op.key)
        if in_flight is not None:
            # A create with this key is in flight: let it finish; this one is then
            # found to be a second use of the key (and is never taken as a custodian).
            await asyncio.shield(in_flight)
            return await self._apply(op, deferred, final, claimed)
        is_custodian = op.op == "create"
        if is_custodian:
            self._custodians[op.key] = asyncio.get_running_loop().create_future()
        code: str | None = None
        try:
            result = await self._apply(op, deferred, final, claimed)
            code = result.participant_code if result is not None and result.outcome != "failed" else None
            return result
        finally:
            if is_custodian:
                self._custodians.pop(op.key).set_result(code)
                if self.journal is None:
                    self._created[op.key] = code

    async def _apply(
        self, op: Operation, deferred: list[Operation], final: bool, claimed: _Claimed | None = None
    ) -> OperationResult | None:
        if claimed is not None:
            assert claimed.claim is not None
            return await self._after_claim(op, claimed.prepared, await claimed.claim)
        if op.op not in OP_KINDS:
            return await self._fail_unsent(op.key, op.op, op.line, "bad_row", f"unknown op {op.op!r}")
        data = op.data
        if op.op == "create_minor" and op.custodian_key:
            custodian = await self._custodian_code(op.custodian_key, final)
            if custodian is _LATER:
                deferred.append(op)
                return None
            if custodian is None:
                reason = f"custodian {op.custodian_key!r} was not created (see its own row)"
                return await self._fail_unsent(op.key, op.op, op.line, "custodian", reason)
            data = {**_as_mapping(data), "custodian_participant_code": custodian}
        try:
            prepared = self.client.prepare_write(op.op, data, participant_code=op.participant_code)
        except ValidationError as error:
            problems = "; ".join(str(p) for p in error.problems)
            return await self._fail_unsent(op.key, op.op, op.line, "validation", problems)
        if self.journal is None:
            if (duplicate := self._remember(op.key, op.op, op.line)) is not None:
                return duplicate
            return await self._send(op, prepared, resent=False)
        # Durably "sending" before the first byte leaves, in one round trip for a new row.
        entry = await self.journal.claim(op.key, op.op, op.line, prepared.request_id, prepared.payload_hash)
        return await self._after_claim(op, prepared, entry)

    async def _after_claim(
        self, op: Operation, prepared: PreparedWrite, entry: JournalEntry | None
    ) -> OperationResult | None:
        """Send, skip or refuse ``op``, given what its claim found in the journal (``None``: new)."""
        assert self.journal is not None
        if entry is None:
            return await self._send(op, prepared, resent=False)
        if entry.run_id == self.journal.run_id:
            return _duplicate(op.key, op.op, op.line, first_line=entry.line)
        if entry.state == "succeeded":
            return _skipped(op.key, op.op, op.line, entry)
        if entry.request_id and entry.payload_hash == prepared.payload_hash:
            prepared = prepared.with_request_id(entry.request_id)  # the id an earlier run sent it with
        await self.journal.sending(op.key, op.op, op.line, prepared.request_id, prepared.payload_hash)
        return await self._send(op, prepared, resent=entry.state == "sending")

    def _remember(self, key: str, op: str | None, line: int | None) -> OperationResult | None:
        """Without a journal: note ``key``'s first use; a failed result if it was used before."""
        if key in self._lines:
            return _duplicate(key, op, line, first_line=self._lines[key])
        self._lines[key] = line
        return None

    async def _fail_unsent(
        self, key: str | None, op: str | None, line: int | None, reason: str, error: str
    ) -> OperationResult:
        """The result of an operation refused before sending (bad row, invalid, no custodian).

        It is journaled unless that would overwrite what the journal holds for
        the key from this run (the key is used twice) or a success from an
        earlier run (then the operation is ``skipped``, as if it were valid).
        """
        if key is None:
            return self._record_failure(key, op, line, reason, error)
        if self.journal is None:
            if (duplicate := self._remember(key, op, line)) is not None:
                return duplicate
        elif (entry := await self.journal.get(key)) is not None:
            if entry.run_id == self.journal.run_id:
                return _duplicate(key, op, line, first_line=entry.line)
            if entry.state == "succeeded":
                return _skipped(key, op, line, entry)
        return self._record_failure(key, op, line, reason, error)

    async def _send(self, op: Operation, prepared: PreparedWrite, *, resent: bool) -> OperationResult:
        sent = OperationResult(
            key=op.key,
            op=op.op,
            outcome="failed",
            line=op.line,
            request_id=prepared.request_id,
            resent=resent,
        )
        try:
            record = await self.client.send_write(prepared, scope=self._scope)
        except (APIError, TransportError) as error:
            result = attrs.evolve(
                sent, reason=_failure_reason(error), error=str(error), attempts=error.attempts
            )
        else:
            result = attrs.evolve(
                sent,
                outcome="succeeded",
                participant_code=record.participant_code or op.participant_code,
                attempts=record.attempts,
            )
        return self._journal_result(result)

    async def _custodian_code(self, key: str, final: bool) -> str | object | None:
        """The custodian's participant_code, ``None`` if it failed, or ``_LATER``."""
        future = self._custodians.get(key)
        if future is not None:
            return await asyncio.shield(future)
        if self.journal is not None:
            entry: JournalEntry | None = await self.journal.get(key)
            if entry is not None and entry.state == "succeeded":
                return entry.participant_code
        elif self._created.get(key):
            return self._created[key]
        return None if final else _LATER

    def _record_failure(
        self, key: str | None, op: str | None, line: int | None, reason: str, error: str
    ) -> OperationResult:
        result = OperationResult(key=key, op=op, outcome="failed", line=line, reason=reason, error=error)
        return self._journal_result(result)

    def _journal_result(self, result: OperationResult) -> OperationResult:
        """Queue a finished operation's outcome for the journal's next commit (rows without a key
        cannot be journaled).

        Not awaited: the result is reported now, and the row is committed with the
        next batch. A crash in between leaves the operation ``sending``, and the next
        run resends it with the same request_id, which the API replays.
        """
        if self.journal is not None and result.key is not None:
            self.journal.finished(
                result.key,
                result.op or "?",
                result.line,
                succeeded=result.outcome == "succeeded",
                participant_code=result.participant_code,
                reason=result.reason,
                error=result.error,
                attempts=result.attempts,
            )
        return result


@attrs.frozen
class _Final:
    """A deferred operation on its last chance (its custodian can no longer appear)."""

    operation: Operation


class _Pacer:
    """Keeps a run from holding the event loop where its operations wait for nothing.

    Operations whose requests never wait (a server that answers at once, a
    mock, rows refused before sending) would otherwise run back to back, each
    worker in turn, and hold the loop from every other task for as long. So a
    worker whose last operation did not let the loop turn waits for a later
    turn (:meth:`wait`), and at most ``per_turn`` such workers go on per turn,
    first come first served. An operation that waited (for the network, the
    journal) has let the loop turn already: the next one starts at once.
    """

    def __init__(self, per_turn: int) -> None:
        self._per_turn = per_turn
        self.turn = 0  # counts the turns of the loop in which operations started
        self._counting = False  # a turn's end is counted (see start())
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._releasing = False

    def start(self) -> int:
        """Note an operation starting now; return the turn it starts in."""
        if not self._counting:
            self._counting = True
            asyncio.get_running_loop().call_soon(self._next_turn)
        return self.turn

    def _next_turn(self) -> None:
        self.turn += 1
        self._counting = False

    def wait(self) -> asyncio.Future[None]:
        """A future done when it is this caller's turn (a later turn of the loop)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append(future)
        if not self._releasing:
            self._releasing = True
            loop.call_soon(self._release)
        return future

    def _release(self) -> None:
        released = 0
        while self._waiting and released < self._per_turn:
            future = self._waiting.popleft()
            if not future.done():  # a cancelled worker's turn goes to the next
                future.set_result(None)
                released += 1
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._release)
        else:
            self._releasing = False


@attrs.define
class _Claimed:
    """An operation prepared ahead of its turn, and its journal claim once queued (:class:`_ReadAhead`)."""

    operation: Operation
    prepared: PreparedWrite
    claim: asyncio.Future[JournalEntry | None] | None = None


class _ReadAhead:
    """The input, read ahead of the workers by a task of its own, up to ``window`` items.

    With a journal, each operation is also prepared as it is read, and claims
    are queued ``CLAIM_BATCH`` at a time: one or two large commits instead of
    a small one per turn of the workers, usually done before a worker reaches
    the operation. A worker taking an operation not yet claimed (a slow input
    hands them out one by one) queues the claims of all read so far. An
    operation whose payload waits for another's result (a minor naming its
    ``custodian_key``) or that cannot be prepared goes to the workers as it
    is. An error of the input is raised once the items read before it are
    handed out.
    """

    def __init__(self, engine: Bulk, items: AsyncIterator[Any], *, window: int) -> None:
        self._engine = engine
        self._items = items
        self._window = window
        self._ahead: collections.deque[Any] = collections.deque()
        self._unclaimed: list[_Claimed] = []
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._error: BaseException | None = None
        self._done = False

    async def next(self) -> Any:
        """The next item, or ``_END``; an operation read ahead comes as a :class:`_Claimed`,
        its claim committed."""
        while not self._ahead:
            if self._done:
                if self._error is not None:
                    raise self._error
                return _END
            self._read_more()
            self._arrived.clear()
            await self._arrived.wait()
        item = self._ahead.popleft()
        if len(self._ahead) <= self._window - READ_PIECE:
            self._read_more()
        if isinstance(item, _Claimed):
            if item.claim is None:
                self._claim_unclaimed()
            assert item.claim is not None
            if not item.claim.done():
                await asyncio.wait([item.claim])  # its result (or error) is the worker's to read
        return item

    def _read_more(self) -> None:
        if not self._done and (self._reader is None or self._reader.done()):
            self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while len(self._ahead) < self._window:
                for _ in range(READ_PIECE):  # then a turn of the loop: preparing is CPU work
                    item = await anext(self._items, _END)
                    if item is _END:
                        self._done = True
                        return
                    self._ahead.append(self._prepare(item))
                    self._arrived.set()
                if len(self._unclaimed) >= CLAIM_BATCH:
                    self._claim_unclaimed()
                await asyncio.sleep(0)
        except BaseException as error:  # the input's own: raised after the items it gave before
            self._error, self._done = error, True
            if not isinstance(error, Exception):
                raise  # cancelled (by close()), or the interpreter is stopping
        finally:
            self._arrived.set()

    def _prepare(self, item: Any) -> Any:
        journal, client = self._engine.journal, self._engine.client
        if journal is None or not isinstance(item, Operation) or item.op not in OP_KINDS:
            return item
        if item.op == "create_minor" and item.custodian_key:
            return item  # its payload waits for the custodian's code
        try:
            prepared = client.prepare_write(item.op, item.data, participant_code=item.participant_code)
        except Exception:  # invalid (or worse): the worker prepares it again and reports why
            return item
        ahead = _Claimed(item, prepared)
        self._unclaimed.append(ahead)
        return ahead

    def _claim_unclaimed(self) -> None:
        journal = self._engine.journal
        assert journal is not None
        for ahead in self._unclaimed:
            op, prepared = ahead.operation, ahead.prepared
            ahead.claim = journal.claim(op.key, op.op, op.line, prepared.request_id, prepared.payload_hash)
        self._unclaimed = []

    async def close(self) -> None:
        """Stop reading, and drop what was read and not handed out (the run stopped early).
        Claims queued are committed anyway: the next run resends those operations with
        the same request_id."""
        if self._reader is not None:
            self._reader.cancel()  # if still reading
            await asyncio.gather(self._reader, return_exceptions=True)
        while self._ahead:
            item = self._ahead.popleft()
            if isinstance(item, _Claimed) and item.claim is not None:
                if not item.claim.done():
                    item.claim.cancel()
                elif not item.claim.cancelled():
                    item.claim.exception()  # retrieved: no "never retrieved" warning


_LATER = object()
_END = object()  # the input is exhausted (a sentinel: None could be an input item)


def _skipped(key: str, op: str | None, line: int | None, entry: JournalEntry) -> OperationResult:
    """An operation an earlier run completed, per the journal."""
    return OperationResult(
        key=key,
        op=op,
        outcome="skipped",
        line=line,
        participant_code=entry.participant_code,
        request_id=entry.request_id,
    )


def _duplicate(key: str, op: str | None, line: int | None, *, first_line: int | None) -> OperationResult:
    """A key used a second time in one run: reported, never sent, never journaled."""
    where = f" (first on line {first_line})" if first_line is not None else ""
    return OperationResult(
        key=key,
        op=op,
        outcome="failed",
        line=line,
        reason="bad_row",
        error=f"key {key!r} is used more than once in this run{where}; this one was not sent",
    )


def _failure_reason(error: Exception) -> str:
    if isinstance(error, TransportError):
        return "transport"
    assert isinstance(error, APIError)
    if error.status_code in (400, 409) and type(error).__name__ in (
        "IdempotencyConflictError",
        "DuplicatePayloadError",
        "ParticipantExistsError",
    ):
        return "conflict"
    if error.status_code >= 500 or error.status_code == 429:
        return "server"
    return "rejected"


def _as_mapping(data: Any) -> dict[str, Any]:
    if isinstance(data, Mapping):
        return {k: v for k, v in data.items() if k != "custodian_key"}
    return attrs.asdict(data, recurse=False)


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
