"""Run every benchmark and write ``RESULTS.md`` and ``throughput.png``.

``python -m benchmarks`` (or ``bash scripts/bench.sh``) is the full run, a few
minutes on a 2-core machine; ``--smoke`` runs each part with tiny N so CI keeps
the harness working (it never judges speed) and writes to ``--out`` instead.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from . import bulk, loop, overhead, report, throughput

HERE = Path(__file__).resolve().parent

FULL = {
    "overhead": {"calls": 3000, "repeats": 5},
    "throughput": {"concurrencies": (16, 64, 256), "seconds": 2.0, "repeats": 3},
    "bulk": {"count": 5000, "repeats": 9},  # more than elsewhere: a run is short, and this VM noisy
    "memory": {"small": 10_000, "large": 100_000},
    "loop": {"count": 1800, "repeats": 3},  # 10 s per run at the default 180/s
}
SMOKE = {
    "overhead": {"calls": 50, "repeats": 1},
    "throughput": {"concurrencies": (1, 64), "seconds": 0.3, "repeats": 1},
    "bulk": {"count": 100, "repeats": 1},
    "memory": {"small": 100, "large": 300},
    "loop": {"count": 90, "repeats": 1},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny N: check the harness runs, judge nothing")
    parser.add_argument("--out", type=Path, default=HERE, help="folder for RESULTS.md and throughput.png")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    started = time.perf_counter()
    results: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    results["load_average"] = [os.getloadavg()[0]]
    steps = (
        ("overhead", lambda: overhead.run(**plan["overhead"])),
        ("throughput", lambda: throughput.run(**plan["throughput"])),
        ("bulk", lambda: bulk.run(**plan["bulk"])),
        ("memory", lambda: bulk.memory(**plan["memory"])),
        ("loop", lambda: loop.run(**plan["loop"])),
    )
    for name, step in steps:
        print(f"benchmark: {name} ...", file=sys.stderr, flush=True)
        results[name] = step()
    results["elapsed"] = time.perf_counter() - started
    results["load_average"].append(os.getloadavg()[0])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    report.plot(results["throughput"], args.out / "throughput.png")
    text = report.markdown(results, smoke=args.smoke)
    (args.out / "RESULTS.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
