"""``ndax-async backfill FILE``: run a JSON Lines or CSV file of operations, resumably."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from .._wire.writes import prepare_write
from ..bulk import Bulk, Operation, OperationResult, RowError, Shard, make_journal, prepare_operation
from ..bulk.engine import DEFAULT_CUSTODIAN_WAIT
from ..bulk.journal import DEFAULT_LEASE
from ..bulk.results import duplicate_key
from ..bulk.rows import count_rows, read_operations
from ..client import AsyncClient
from ..errors import JournalError, ValidationError
from .progress import Progress

__all__ = ["backfill", "dry_run", "report"]


class _ResultsFile:
    """Appends results as JSON lines, writing on its own thread in batches."""

    def __init__(self, path: Path) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ndax-results")
        self._handle: TextIO | None = None
        self._path = path
        self._pending: list[str] = []

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._handle = await loop.run_in_executor(
            self._executor,
            lambda: open(self._path, "w", encoding="utf-8"),  # noqa: SIM115 - closed in close()
        )

    async def add(self, result: OperationResult) -> None:
        self._pending.append(json.dumps(result.to_dict(), ensure_ascii=False) + "\n")
        if len(self._pending) >= 256:
            await self.flush()

    async def flush(self) -> None:
        lines, self._pending = self._pending, []
        handle = self._handle
        if lines and handle is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, handle.writelines, lines)

    async def close(self) -> None:
        await self.flush()
        if self._handle is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._handle.close)
        self._executor.shutdown(wait=True)


async def backfill(
    path: Path,
    *,
    client: AsyncClient,
    concurrency: int,
    rate: float | None,
    journal: str | Path,
    results: Path,
    out: TextIO | None = None,
    run: str | None = None,
    shard: Shard | None = None,
    reconcile: bool = True,
    custodian_wait: float = DEFAULT_CUSTODIAN_WAIT,
    lease: float = DEFAULT_LEASE,
) -> int:
    """Run the file (only ``shard``'s rows, if given) as the run named ``run`` (default: the
    file's name); exit status 0 only when every row succeeded (or existed, or was already
    done), 2 when the journal could not be written (the run stopped; run it again to resume)."""
    total = await asyncio.to_thread(count_rows, path)
    progress = Progress(total, budget=client.budget)
    writer = _ResultsFile(results)
    await writer.open()
    engine = Bulk(
        client,
        concurrency=concurrency,
        rate=rate,
        journal=journal,
        run=run or path.name,
        shard=shard,
        reconcile=reconcile,
        custodian_wait=custodian_wait,
        lease=lease,
    )
    stopped: JournalError | None = None
    try:
        async for result in engine.run(read_operations(path)):
            await writer.add(result)
            progress.update(engine.summary)
    except JournalError as error:
        stopped = error
    finally:
        await writer.close()
    progress.update(engine.summary, final=True)
    summary = engine.summary
    print(summary.describe(), file=out)
    if client.budget is not None:
        stats = client.budget.stats
        print(
            f"budget: {sum(stats.grants.values())} slots, {sum(stats.waits.values())} waits"
            f" ({sum(stats.wait_seconds.values()):.1f}s), {stats.pauses} pauses,"
            f" {stats.fallbacks} fallbacks, {stats.blocks_reported} 429s reported",
            file=out,
        )
    where = make_journal(journal).location
    print(f"results: {results}  journal: {where}  run: {engine.run_name}", file=out)
    if stopped is not None:
        print(f"stopped: {stopped}; fix that and run the same command again to resume", file=out)
        return 2
    if summary.failed:
        print(f"{summary.failed} row(s) failed; fix them and run the same command again to resume:", file=out)
        async for result in _failed_results(results):
            print(
                f"  line {result['line']} key {result['key']}: {result['reason']}: {result['error']}",
                file=out,
            )
    return 0 if summary.failed == 0 else 1


async def _failed_results(results: Path, limit: int = 20) -> Any:
    def read() -> list[dict[str, Any]]:
        rows = []
        with open(results, encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                if row["outcome"] == "failed":
                    rows.append(row)
                    if len(rows) >= limit:
                        break
        return rows

    for row in await asyncio.to_thread(read):
        yield row


async def dry_run(path: Path, out: TextIO | None = None) -> int:
    """Make every check a run makes before sending, and send nothing; exit status 0 when
    every row passes.

    The checks are the run's own: the row is read as the run reads it, a key used
    twice is refused, and each operation goes through the same preparation
    (:func:`~ndax_async.bulk.prepare_operation` with ``prepare_write``): its
    payload, its participant_code and any pinned request_id. A minor naming its
    custodian by key is checked with a placeholder code (the real one comes from
    the run).
    """
    checked = failed = 0
    first_lines: dict[str, int | None] = {}
    async for item in read_operations(path):
        checked += 1
        if problem := _problem(item, first_lines):
            failed += 1
            print(f"line {item.line} key {item.key}: {problem}", file=out)
    print(
        f"dry run: {checked} rows checked, {checked - failed} valid, {failed} invalid; nothing sent", file=out
    )
    return 0 if failed == 0 else 1


def _problem(item: Operation | RowError, first_lines: dict[str, int | None]) -> str | None:
    """What a run would refuse ``item`` for before sending it, or ``None``."""
    if item.key is not None and item.key in first_lines:
        return duplicate_key(item.key, first_lines[item.key])
    if item.key is not None:
        first_lines[item.key] = item.line
    if isinstance(item, RowError):
        return item.reason
    custodian = "DRY-RUN-CUSTODIAN" if item.op == "create_minor" and item.custodian_key else None
    try:
        prepare_operation(prepare_write, item, custodian)
    except ValidationError as error:
        return "; ".join(str(p) for p in error.problems)
    return None


async def report(journal: str | Path, run: str, out: TextIO | None = None) -> int:
    """Print the state of the run named ``run`` (every shard of it) from its journal alone."""
    opened = await make_journal(journal, run=run).open()
    try:
        counts = await opened.counts()
        failures = await opened.failures()
    finally:
        await opened.close()
    shown = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no rows"
    print(f"journal {opened.location} run {run!r}: {shown}", file=out)
    for entry in failures:
        print(
            f"  line {entry.line} key {entry.key}: {entry.state} {entry.reason or ''} {entry.error or ''}",
            file=out,
        )
    return 0 if not failures else 1
