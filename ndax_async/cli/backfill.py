"""``ndax-async backfill FILE``: run a JSON Lines or CSV file of operations, resumably."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TextIO

from .._sending.budget import Budget
from ..bulk.engine import Bulk, BulkSummary, Operation, OperationResult, RowError
from ..bulk.rows import count_rows, read_operations
from ..client import AsyncClient
from ..errors import JournalError, ValidationError

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


class _Progress:
    """A one-line progress bar on stderr: done/total, rate, ETA, failures."""

    def __init__(self, total: int, stream: TextIO | None = None, budget: Budget | None = None) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may be replaced
        self.enabled = self.stream is not None and self.stream.isatty()
        self._last = 0.0
        self._budget = budget
        self._grants = (0, time.monotonic())

    def update(self, summary: BulkSummary, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self._last < 0.2):
            return
        self._last = now
        done = summary.total
        fraction = min(1.0, done / self.total)
        bar = "#" * int(fraction * 30)
        rate = summary.rate
        eta = (self.total - done) / rate if rate > 0 else 0
        self.stream.write(
            f"\r[{bar:<30}] {done}/{self.total} {fraction:6.1%} {rate:6.0f} ops/s"
            f" ETA {int(eta // 60)}m{int(eta % 60):02d}s failed {summary.failed}{self._budget_use(now)}"
        )
        if final:
            self.stream.write("\n")
        self.stream.flush()

    def _budget_use(self, now: float) -> str:
        """`` budget 195/200 req/s, waits 12 (3.1s), pauses 0, redis`` (empty without a budget)."""
        if self._budget is None:
            return ""
        stats, limit = self._budget.stats, getattr(self._budget, "limit", None)
        grants = sum(stats.grants.values())
        (before, then), self._grants = self._grants, (grants, now)
        per_second = (grants - before) / (now - then) if now > then else 0.0
        allowed = f"/{limit.requests / limit.window:.0f}" if limit is not None else ""
        waits = sum(stats.waits.values())
        return (
            f" | budget {per_second:.0f}{allowed} req/s, waits {waits}"
            f" ({sum(stats.wait_seconds.values()):.1f}s), pauses {stats.pauses}, {stats.mode}"
        )


async def backfill(
    path: Path,
    *,
    client: AsyncClient,
    concurrency: int,
    rate: float | None,
    journal: Path,
    results: Path,
    out: TextIO | None = None,
) -> int:
    """Run the file; exit status 0 only when every row succeeded (or was already done),
    2 when the journal could not be written (the run stopped; run it again to resume)."""
    total = await asyncio.to_thread(count_rows, path)
    progress = _Progress(total, budget=client.budget)
    writer = _ResultsFile(results)
    await writer.open()
    engine = Bulk(client, concurrency=concurrency, rate=rate, journal=journal)
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
    print(f"results: {results}  journal: {journal}", file=out)
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
    """Validate every row, send nothing; exit status 0 when all are valid."""
    from .._wire.convert import structure_payload
    from .._wire.writes import WRITES

    checked = failed = 0
    async for item in read_operations(path):
        checked += 1
        problem = item.reason if isinstance(item, RowError) else _validate(item, structure_payload, WRITES)
        if problem:
            failed += 1
            print(f"line {item.line} key {item.key}: {problem}", file=out)
    print(
        f"dry run: {checked} rows checked, {checked - failed} valid, {failed} invalid; nothing sent", file=out
    )
    return 0 if failed == 0 else 1


def _validate(item: Operation, structure: Any, writes: Any) -> str | None:
    data = dict(item.data)
    if item.op == "create_minor" and item.custodian_key:
        data["custodian_participant_code"] = "DRYRUN"  # resolved at run time
    data.pop("request_id", None)
    try:
        structure(data, writes[item.op].model)
    except ValidationError as error:
        return "; ".join(str(p) for p in error.problems)
    return None


async def report(journal: Path, out: TextIO | None = None) -> int:
    """Print the state of a run from its journal alone."""
    from ..bulk.journal import Journal

    opened = await Journal(journal).open()
    try:
        counts = await opened.counts()
        failures = await opened.failures()
    finally:
        await opened.close()
    print(
        "journal " + str(journal) + ": " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), file=out
    )
    for entry in failures:
        print(
            f"  line {entry.line} key {entry.key}: {entry.state} {entry.reason or ''} {entry.error or ''}",
            file=out,
        )
    return 0 if not failures else 1
