"""The bulk engine on each journal: PostgreSQL beside SQLite, over an instant transport.

The transport answers at once (``benchmarks.overhead.InstantTransport``), so the
figures are the engine's own cost with each journal: a claim before each
operation and an outcome after (SQLite on its thread, one transaction each;
PostgreSQL through asyncpg's pool, on the event loop). The issue's bar is
1,000 operations/s on PostgreSQL (5x the platform's per-IP rate).

``python -m benchmarks.journal`` starts a throwaway PostgreSQL on 127.0.0.1
(``initdb`` + ``postgres`` from the machine, as the tests do) unless
``--postgres URL`` names one, runs each journal ``--repeats`` times
alternating, and prints the medians as JSON. ``--smoke`` is a short run for CI,
which checks that the harness runs and never judges its speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ndax_async import AsyncClient
from ndax_async.bulk import Bulk, Operation

from ._common import API_KEY, API_SECRET, PASSPHRASE, customer
from .overhead import InstantTransport

BAR = 1000.0  # operations/s the PostgreSQL journal must sustain


def operations(count: int, tag: str) -> Iterator[Operation]:
    """``count`` unique creates, generated lazily."""
    for n in range(count):
        yield Operation(key=f"{tag}-{n}", op="create", data=customer(n, tag), line=n + 1)


async def one_run(journal: str, count: int, concurrency: int) -> float:
    """Operations/s of one run of ``count`` creates on ``journal`` (a path or URL)."""
    credentials = {"api_key": API_KEY, "api_secret": API_SECRET, "passphrase": PASSPHRASE}
    tag = uuid.uuid4().hex[:8]
    async with AsyncClient(
        **credentials, transport=InstantTransport(), max_connections=concurrency
    ) as client:
        engine = Bulk(client, concurrency=concurrency, rate=None, journal=journal, run=tag)
        started = time.perf_counter()
        summary = await engine.run_all(operations(count, tag))
        elapsed = time.perf_counter() - started
    if summary.succeeded != count:
        raise RuntimeError(f"journal benchmark lost operations: {summary.describe()}")
    return count / elapsed


def measure(postgres_url: str, count: int, repeats: int, concurrency: int) -> dict[str, Any]:
    """Median operations/s for each journal, runs alternating so both see the same machine."""
    rates: dict[str, list[float]] = {"sqlite": [], "postgres": []}
    with tempfile.TemporaryDirectory() as folder:
        for repeat in range(repeats):
            sqlite = str(Path(folder) / f"j{repeat}.sqlite")
            rates["sqlite"].append(asyncio.run(one_run(sqlite, count, concurrency)))
            rates["postgres"].append(asyncio.run(one_run(postgres_url, count, concurrency)))
    return {
        "operations": count,
        "repeats": repeats,
        "concurrency": concurrency,
        "ops_per_s": {name: round(statistics.median(values), 1) for name, values in rates.items()},
        "runs": {name: [round(v, 1) for v in values] for name, values in rates.items()},
        "bar": BAR,
    }


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """A PostgreSQL on 127.0.0.1 for the run (the tests' server), removed afterwards."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.servers import PostgresServer

    with tempfile.TemporaryDirectory() as folder, PostgresServer(Path(folder)) as server:
        yield server.url


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", help="a PostgreSQL URL to use (default: start a throwaway one)")
    parser.add_argument("--operations", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--smoke", action="store_true", help="a short run: CI checks the harness runs, never its speed"
    )
    args = parser.parse_args()
    count, repeats = (1000, 1) if args.smoke else (args.operations, args.repeats)
    with contextlib.nullcontext(args.postgres) if args.postgres else throwaway_postgres() as url:
        result = measure(url, count, repeats, args.concurrency)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
