"""The bulk engine: journal on against off, event-loop lateness, and memory as the input grows.

Everything runs in-process, over a transport that answers instantly, as
fast as the engine goes: the figures are the engine's own cost (validation,
encoding, the journal's SQLite writes on its thread, the scheduling between)
and the loop's lateness in that worst case. What a user sees, a run at the
platform's rate beside a web app, is :mod:`benchmarks.loop`.

``python -m benchmarks.bulk --measure N`` prints those figures for N
operations as JSON; ``--rss N`` streams N operations in a fresh process and
prints its peak RSS in KiB (the harness does both for you).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ndax_async import AsyncClient
from ndax_async.bulk import Bulk, Operation

from ._common import API_KEY, API_SECRET, PASSPHRASE, customer, median
from .overhead import InstantTransport

CONCURRENCY = 32


class NetworkTransport(InstantTransport):
    """Answers after a simulated network round trip, 40 to 120 ms, as a remote API does."""

    def __init__(self, seed: int = 1) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.rng.uniform(0.04, 0.12))
        return await super().handle_async_request(request)


def operations(count: int, tag: str) -> Iterator[Operation]:
    """``count`` unique creates, generated lazily (a streamed input)."""
    for n in range(count):
        yield Operation(key=f"{tag}-{n}", op="create", data=customer(n, tag), line=n + 1)


async def ticker(gaps: list[float], interval: float = 0.001) -> None:
    """Ask to run every ``interval``; record how late each run was."""
    while True:
        asked = time.perf_counter()
        await asyncio.sleep(interval)
        gaps.append(time.perf_counter() - asked - interval)


async def bulk_run(
    count: int,
    journal: Path | None,
    tag: str,
    gaps: list[float] | None,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    rate: float | None = None,
    concurrency: int = CONCURRENCY,
) -> float:
    credentials = {"api_key": API_KEY, "api_secret": API_SECRET, "passphrase": PASSPHRASE}
    async with AsyncClient(**credentials, transport=transport or InstantTransport()) as client:
        engine = Bulk(client, concurrency=concurrency, rate=rate, journal=journal)
        ticking = asyncio.create_task(ticker(gaps)) if gaps is not None else None
        started = time.perf_counter()
        summary = await engine.run_all(operations(count, tag))
        elapsed = time.perf_counter() - started
        if ticking is not None:
            ticking.cancel()
    if summary.succeeded != count:
        raise RuntimeError(f"bulk benchmark lost operations: {summary}")
    return elapsed


def run(count: int, repeats: int) -> dict[str, Any]:
    """Median operations/s with the journal on and off (alternating), the median of the on/off
    ratios within each repeat, and the loop's gaps with the journal on (and, for comparison, off).

    The rates come from runs without the ticker; each repeat then makes one
    more journal-on run with it, for the loop's gaps (the ticker costs the
    loop time, and its wake-ups change how a run's work interleaves, so it is
    kept out of the comparison). Its rate is reported beside the others.

    The loop-gap verdict uses the median over repeats of each run's largest
    gap, so one stall of the machine does not decide it; the largest gap of all
    runs and the longest garbage-collector pause are reported beside it.
    """
    rates: dict[str, list[float]] = {"journal off": [], "journal on": [], "journal on, with the ticker": []}
    gaps: dict[str, list[list[float]]] = {"on": [], "off": []}  # each ticked run's gaps
    with tempfile.TemporaryDirectory() as folder, gc_pauses() as pauses:
        asyncio.run(bulk_run(min(count, 200), Path(folder) / "warm.sqlite", "warm", None))
        for repeat in range(repeats):
            runs = [("journal off", None), ("journal on", Path(folder) / f"{repeat}.sqlite")]
            for name, journal in runs if repeat % 2 == 0 else runs[::-1]:  # drift favours neither
                tag = name.split()[-1] + str(repeat)  # "off0", "on0": used in e-mail addresses
                elapsed = asyncio.run(bulk_run(count, journal, tag, None))
                rates[name].append(count / elapsed)
            for side, journal in ("on", Path(folder) / f"ticked{repeat}.sqlite"), ("off", None):
                run_gaps: list[float] = []
                elapsed = asyncio.run(bulk_run(count, journal, f"ticked{side}{repeat}", run_gaps))
                if side == "on":
                    rates["journal on, with the ticker"].append(count / elapsed)
                gaps[side].append(run_gaps)
    result = {name: median(values) for name, values in rates.items()}
    paired = [on / off for on, off in zip(rates["journal on"], rates["journal off"], strict=True)]
    return {
        "operations": count,
        "repeats": repeats,
        "ops_per_second": result,
        "ratio": median(paired),  # as for throughput: the median of the ratios within each repeat
        "ratios": paired,
        "loop_gap_ms": {**gap_summary(gaps["on"]), "longest_gc_pause": max(pauses, default=0.0) * 1e3},
        "loop_gap_ms_journal_off": gap_summary(gaps["off"]),
    }


def gap_summary(runs: list[list[float]]) -> dict[str, float]:
    """The median of each run's largest gap, the largest and the p99 of all, in ms, and the ticks."""
    gaps = sorted(gap for run in runs for gap in run)
    return {
        "median_run_max": median([max(run, default=float("nan")) for run in runs]) * 1e3,
        "max": gaps[-1] * 1e3 if gaps else float("nan"),
        "p99": gaps[int(len(gaps) * 0.99)] * 1e3 if gaps else float("nan"),
        "ticks": len(gaps),
    }


@contextlib.contextmanager
def gc_pauses() -> Iterator[list[float]]:
    """Collect the duration of every garbage collection while inside."""
    pauses: list[float] = []
    started = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(callback)


def peak_rss_kib(count: int) -> int:
    """Peak RSS of a fresh process streaming ``count`` operations, journal on (its thread included)."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.bulk", "--rss", str(count)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return int(done.stdout.strip().splitlines()[-1])


def memory(small: int, large: int) -> dict[str, Any]:
    """Peak RSS for ``small`` and ``large`` streamed operations, and the growth between."""
    small_kib, large_kib = peak_rss_kib(small), peak_rss_kib(large)
    return {
        "small": small,
        "large": large,
        "small_mib": small_kib / 1024,
        "large_mib": large_kib / 1024,
        "growth_mib": (large_kib - small_kib) / 1024,
    }


def _rss_probe(count: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(bulk_run(count, Path(folder) / "rss.sqlite", "rss", None))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    task = parser.add_mutually_exclusive_group(required=True)
    task.add_argument("--rss", type=int, help="peak RSS (KiB) of a fresh process streaming N operations")
    task.add_argument("--measure", type=int, help="rates and loop lateness for N operations, as JSON")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.rss:
        _rss_probe(args.rss)
    else:
        print(json.dumps(run(args.measure, args.repeats), indent=2))
