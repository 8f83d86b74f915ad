"""Bulk onboarding and backfill: bounded, rate-limited, resumable, exactly once.

``Bulk(client, concurrency=..., rate=..., journal=...)`` runs operations from
any sync or async iterable, streamed (memory stays bounded by the concurrency,
not the input), and yields an :class:`OperationResult` per operation as it
finishes; :attr:`Bulk.summary` totals them.

- Concurrency is a fixed number of workers, each taking the next operation
  from the input when it is done with one; beyond the client's
  ``max_connections`` attempts wait for a slot, unsigned, above the pool.
- Every attempt passes a rate limiter (the platform allows 2,000 requests per
  10 s per IP; the default is 180/s), or the client's shared budget as a
  ``"bulk"`` call, and a 429 pauses every request.
- A retry budget shared by the run (:class:`~ndax_async.RetryQuota`) stops
  thousands of operations retrying at once against a failing server. The
  retries themselves are the client's (its tenacity loop): the engine has none.
- With a journal (SQLite, or PostgreSQL by URL; see :mod:`.journal`), each
  operation is recorded before it is sent and its outcome after, before the
  result is reported; a run killed at any instant and started again skips
  what succeeded and resends what was in flight with the same request_id.
  A journal that cannot be written stops the run with
  :class:`~ndax_async.errors.JournalError`. Rows belong to the run's name.
- Each row is claimed with a lease (renewed while the run lasts): a row
  another live run holds is waited for, never sent at the same time.
- ``shard=Shard(i, n)`` runs only the rows whose key hashes to shard ``i``
  (:mod:`.shards`); a minor whose custodian is another shard's waits for it
  in the shared journal, up to ``custodian_wait`` seconds.
- ``reconcile=True``: a create answering ``DuplicatePayloadError`` (applied
  earlier under another request_id) is looked up by email and reported
  ``existing`` with its participant_code.
- A worker lets the event loop turn after each operation, so a run sharing
  the loop with a web app never holds it for more than one operation per
  worker, even where nothing waits (a mock, a server that answers at once).
- Nothing is dropped: a row that is malformed, invalid or refused becomes a
  ``failed`` result with its line and reason, and the run goes on.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Literal

import attrs

from .._clock import Clock, SystemClock
from .._sending.limits import RateLimiter, RetryQuota
from .._sending.retry import RetryEvent
from .._wire.writes import PreparedWrite
from ..client import AsyncClient, CallScope
from ..errors import APIError, DuplicatePayloadError, JournalError, TransportError, ValidationError
from .claims import claim_when_free, renew_leases
from .custodians import DEFAULT_CUSTODIAN_WAIT, Custodians
from .journal import DEFAULT_LEASE, DEFAULT_RUN, Journal, make_journal
from .results import (
    OP_KINDS,
    BulkSummary,
    Operation,
    OperationResult,
    RowError,
    duplicate,
    failure_reason,
    prepare_operation,
    skipped,
)
from .shards import Shard

__all__ = ["DEFAULT_CUSTODIAN_WAIT", "DEFAULT_RATE", "Bulk", "prepare_operation"]

DEFAULT_RATE = 180.0  # 90% of the documented 2,000 requests per 10 seconds
Input = Iterable[Operation | RowError] | AsyncIterable[Operation | RowError]
_END = object()  # the input is exhausted (a sentinel: None could be an input item)


class Bulk:
    """Runs operations through one :class:`~ndax_async.AsyncClient`, exactly once.

    Its calls are ``"bulk"`` in the client's shared budget, if it has one, and
    the budget paces the run instead of the default ``rate`` (pass another rate
    to cap the run lower). The run's rate limit applies on top of the client's own, and its retry
    budget replaces the client's, for the run's own requests only: other calls
    on the same client, and other runs sharing it, keep their own limits.
    ``clock`` times the run's own rate limit and its waits for held rows and
    other shards' custodians (pass the client's, in tests). ``run`` names the
    run's rows in the journal (default ``"default"``; a :class:`Journal` passed
    in brings its own), and ``lease`` is how long a claim holds a row.
    """

    def __init__(
        self,
        client: AsyncClient,
        *,
        concurrency: int = 16,
        rate: float | None = DEFAULT_RATE,
        journal: str | Path | Journal | None = None,
        retry_quota: RetryQuota | None = None,
        clock: Clock | None = None,
        run: str | None = None,
        shard: Shard | None = None,
        reconcile: bool = False,
        custodian_wait: float = DEFAULT_CUSTODIAN_WAIT,
        lease: float = DEFAULT_LEASE,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if isinstance(journal, Journal) and run is not None and run != journal.run:
            raise ValueError(f"run {run!r} differs from the journal's own run {journal.run!r}")
        self.run_name = journal.run if isinstance(journal, Journal) else (run or DEFAULT_RUN)
        self.shard = shard
        self.reconcile = reconcile
        self.custodian_wait = custodian_wait
        self.lease = lease
        self.client = client
        self.concurrency = concurrency
        self.rate = rate
        self.retry_quota = retry_quota or RetryQuota()
        self.clock = clock or SystemClock()
        self._journal_spec = journal
        self.journal: Journal | None = None
        self.summary = BulkSummary()
        self._custodians = Custodians(self.clock, shard, custodian_wait)
        # Without a journal, every key's first line, to refuse a key used twice.
        self._lines: dict[str, int | None] = {}
        self._scope = CallScope()  # the run's limits, made by run()
        self._running = False

    async def run(self, operations: Input) -> AsyncIterator[OperationResult]:
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
        self._running = True
        self.summary = BulkSummary()
        self._lines = {}
        self._custodians.reset()
        # The run's limits travel with its calls; the shared client is not touched.
        # With a shared budget, it paces the run (as bulk) instead of the default rate.
        rate = None if self.client.budget is not None and self.rate == DEFAULT_RATE else self.rate
        limiter = RateLimiter(rate, burst=max(1.0, rate / 10), clock=self.clock) if rate else None
        observer = self.client.observer  # observe: the run's span; its operations link to it
        run = observer.bulk_started(concurrency=self.concurrency, rate=rate, journal=bool(self._journal_spec))
        stopped: BaseException | None = None  # observe
        self._scope = CallScope(
            limiter=limiter, quota=self.retry_quota, on_retry=self._count_retry, priority="bulk", run=run
        )
        results: asyncio.Queue[OperationResult | None] = asyncio.Queue(maxsize=self.concurrency * 2)
        owned = not isinstance(self._journal_spec, Journal)
        try:
            journal = await self._open_journal()
            if journal is not None:
                journal.begin_run()  # JournalError if another run is using it
            self.journal = journal
            producer = asyncio.create_task(self._produce(operations, results))
            renewer = asyncio.create_task(renew_leases(journal)) if journal is not None else None
            try:
                while (result := await results.get()) is not None:
                    self.summary.add(result)
                    observer.bulk_operation(run, result.outcome)  # observe
                    yield result
                await producer
            finally:
                for task in (producer, renewer):
                    if task is not None and not task.done():
                        task.cancel()
                        await asyncio.gather(task, return_exceptions=True)
        except BaseException as error:  # observe: the run's span says how it ended
            stopped = error
            raise
        finally:
            self.summary.finished = time.monotonic()
            observer.bulk_ended(run, self.summary, stopped)  # observe
            journal, self.journal, self._running = self.journal, None, False
            if journal is not None:
                journal.end_run()
                if owned:
                    await journal.close()

    async def run_all(self, operations: Input) -> BulkSummary:
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
        return await make_journal(spec, run=self.run_name, lease=self.lease).open()

    async def _produce(self, operations: Input, results: asyncio.Queue[OperationResult | None]) -> None:
        deferred: list[Operation] = []
        try:
            await self._work(_aiter(operations), deferred, results)
            # Minors whose custodian came later in the input, now that all is read.
            await self._work(_aiter(list(deferred)), None, results)
        except asyncio.CancelledError:
            raise  # run() stopped it: nobody is waiting for results
        except BaseException:
            await results.put(None)  # wake the consumer; run() then raises this error
            raise
        await results.put(None)

    async def _work(
        self,
        items: AsyncIterator[Any],
        deferred: list[Operation] | None,
        results: asyncio.Queue[OperationResult | None],
    ) -> None:
        """Run ``items`` on ``concurrency`` workers, each taking the next item when it is done.

        ``deferred`` collects minors whose custodian is not created yet (``None``:
        the last pass, when a missing custodian is a failure). An error of the
        input is raised once the operations taken before it are done.
        """
        reading = asyncio.Lock()  # one reader of the input at a time
        input_error: list[Exception] = []

        async def next_item() -> Any:
            async with reading:
                if input_error:
                    return _END
                try:
                    return await anext(items, _END)
                except Exception as error:
                    input_error.append(error)
                    return _END

        async def worker() -> None:
            while (item := await next_item()) is not _END:
                result = await self._guarded(item, deferred)
                if result is not None:
                    await results.put(result)
                await asyncio.sleep(0)  # let the loop turn, whether or not the operation waited

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
        if input_error:
            raise input_error[0]

    async def _guarded(self, item: object, deferred: list[Operation] | None) -> OperationResult | None:
        """Process one item; anything else in the input becomes a ``bad_row`` failure, and a
        bug becomes that row's ``internal`` failure: never a lost row or a stopped run."""
        if isinstance(item, (Operation, RowError)) and not self._mine(item):
            return None  # another shard's row
        if isinstance(item, RowError):
            return await self._fail_unsent(item.key, None, item.line, "bad_row", item.reason)
        if not isinstance(item, Operation):
            error = f"not an Operation or RowError: {type(item).__name__}"
            return await self._record_failure(None, None, None, "bad_row", error)
        try:
            return await self._process(item, deferred)
        except JournalError:
            raise  # the journal cannot record: stop the run, as a crash would
        except Exception as error:
            return await self._record_failure(item.key, item.op, item.line, "internal", repr(error))

    def _mine(self, item: Operation | RowError) -> bool:
        """Whether ``item`` is this run's shard's (a row without a key: by its line)."""
        key = item.key if item.key is not None else f"line {item.line}"
        return self.shard is None or self.shard.owns(key)

    async def _process(self, op: Operation, deferred: list[Operation] | None) -> OperationResult | None:
        # A create with this key in flight: let it finish; this one is then found
        # to be a second use of the key (and is never taken as a custodian).
        if await self._custodians.wait_if_creating(op.key) or op.op != "create":
            return await self._apply(op, deferred)
        create = functools.partial(self._apply, op, deferred)
        return await self._custodians.creating(op.key, create, remember=self.journal is None)

    async def _apply(self, op: Operation, deferred: list[Operation] | None) -> OperationResult | None:
        if op.op not in OP_KINDS:
            return await self._fail_unsent(op.key, op.op, op.line, "bad_row", f"unknown op {op.op!r}")
        custodian: str | None = None
        if op.op == "create_minor" and op.custodian_key:
            found = await self._custodians.code(op.custodian_key, self.journal, final=deferred is None)
            if isinstance(found, str):
                custodian = found
            elif found.later and deferred is not None:
                deferred.append(op)
                return None
            else:
                return await self._fail_unsent(op.key, op.op, op.line, "custodian", found.reason)
        try:
            prepared = prepare_operation(self.client.prepare_write, op, custodian)
        except ValidationError as error:
            problems = "; ".join(str(p) for p in error.problems)
            return await self._fail_unsent(op.key, op.op, op.line, "validation", problems)
        if self.journal is None:
            if (repeated := self._remember(op.key, op.op, op.line)) is not None:
                return repeated
            return await self._send(op, prepared, resent=False)
        # Durably "sending" before the first byte leaves, in one round trip for a new row.
        entry = await claim_when_free(
            self.journal, self.clock, op.key, op.op, op.line, prepared.request_id, prepared.payload_hash
        )
        if entry is None:
            return await self._send(op, prepared, resent=False)
        if entry.run_id == self.journal.run_id:
            return duplicate(op.key, op.op, op.line, first_line=entry.line)
        if entry.state == "succeeded":
            return skipped(op.key, op.op, op.line, entry)
        if entry.request_id and entry.payload_hash == prepared.payload_hash:
            prepared = prepared.with_request_id(entry.request_id)  # the id an earlier run sent it with
        await self.journal.sending(op.key, op.op, op.line, prepared.request_id, prepared.payload_hash)
        return await self._send(op, prepared, resent=entry.state == "sending")

    def _remember(self, key: str, op: str | None, line: int | None) -> OperationResult | None:
        """Without a journal: note ``key``'s first use; a failed result if it was used before."""
        if key in self._lines:
            return duplicate(key, op, line, first_line=self._lines[key])
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
        if key is not None and self.journal is None:
            if (repeated := self._remember(key, op, line)) is not None:
                return repeated
        elif key is not None and self.journal is not None:
            entry = await self.journal.get(key)
            if entry is not None and entry.run_id == self.journal.run_id:
                return duplicate(key, op, line, first_line=entry.line)
            if entry is not None and entry.state == "succeeded":
                return skipped(key, op, line, entry)
        return await self._record_failure(key, op, line, reason, error)

    async def _send(self, op: Operation, prepared: PreparedWrite, *, resent: bool) -> OperationResult:
        # Journal lag: from "sending" (recorded, or claimed, just before) until the outcome is durable.
        journaled = self.journal is not None  # observe
        if journaled:
            self.client.observer.journal_pending(1)  # observe
        try:
            return await self._send_and_record(op, prepared, resent=resent)
        finally:
            if journaled:
                self.client.observer.journal_pending(-1)  # observe

    async def _send_and_record(
        self, op: Operation, prepared: PreparedWrite, *, resent: bool
    ) -> OperationResult:
        """Send the operation; journal its outcome (if there is a journal) before returning it."""
        sent = OperationResult(
            key=op.key,
            op=op.op,
            outcome="failed",
            line=op.line,
            request_id=prepared.request_id,
            resent=resent,
        )
        try:
            try:
                record = await self.client.send_write(prepared, scope=self._scope)
            except DuplicatePayloadError as error:
                if not self.reconcile or op.op not in ("create", "create_minor"):
                    raise
                # Applied earlier under a request_id this SDK did not make: find it by email.
                record = await self.client.customers.reconcile(prepared, error)
        except (APIError, TransportError) as error:
            result = attrs.evolve(
                sent, reason=failure_reason(error), error=str(error), attempts=error.attempts
            )
        else:
            code = record.participant_code or op.participant_code
            outcome: Literal["existing", "succeeded"] = "existing" if record.existing else "succeeded"
            result = attrs.evolve(sent, outcome=outcome, participant_code=code, attempts=record.attempts)
        return await self._journal_result(result)

    async def _record_failure(
        self, key: str | None, op: str | None, line: int | None, reason: str, error: str
    ) -> OperationResult:
        result = OperationResult(key=key, op=op, outcome="failed", line=line, reason=reason, error=error)
        return await self._journal_result(result)

    async def _journal_result(self, result: OperationResult) -> OperationResult:
        """Record a finished operation's outcome, before it is reported (rows without a key
        cannot be journaled). A crash before this leaves the operation ``sending``, and the
        next run resends it with the same request_id, which the API replays."""
        if self.journal is not None and result.key is not None:
            await self.journal.finished(
                result.key,
                result.op or "?",
                result.line,
                succeeded=result.outcome in ("succeeded", "existing"),
                participant_code=result.participant_code,
                reason=result.reason,
                error=result.error,
                attempts=result.attempts,
                existing=result.outcome == "existing",
            )
        return result


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
