"""The ``ndax-async`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import interrupt

__all__ = ["main"]


def parse_faults(text: str) -> dict[str, float | int]:
    """``"drop_after=0.1,seed=7"`` as keyword arguments for :class:`~ndax_async.testing.Faults`."""
    settings: dict[str, float | int] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        settings[name.strip()] = int(value) if name.strip() == "seed" else float(value)
    return settings


def parse_rate_limit(text: str) -> tuple[int, float]:
    """``"2000/10"`` as ``(2000, 10.0)``: requests per rolling window of seconds (10 if left out)."""
    requests, _, seconds = text.partition("/")
    try:
        limit = (int(requests), float(seconds or 10))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected REQUESTS/SECONDS, e.g. 2000/10, not {text!r}") from None
    if limit[0] < 1 or limit[1] <= 0:
        raise argparse.ArgumentTypeError(f"requests and seconds must be positive, not {text!r}")
    return limit


def _sandbox(args: argparse.Namespace) -> int:
    from ..testing import Sandbox
    from ..testing.server import serve_forever

    sandbox = Sandbox(
        faults=parse_faults(args.faults), rate_limit=args.rate_limit, signatures=args.signatures
    )
    serve_forever(
        sandbox, args.port, on_ready=lambda line: print(line, flush=True), idle_timeout=args.idle_timeout
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(customers=args.customers, concurrency=args.concurrency)


def _backfill(args: argparse.Namespace) -> int:
    from ..bulk import Shard
    from ..client import AsyncClient
    from .backfill import backfill, dry_run, report

    path = Path(args.file)
    journal = args.journal or path.with_name(path.name + ".journal.sqlite")
    run_name = args.run_name or path.name  # the file's name, not its path: resumable from anywhere
    if args.report:
        return interrupt.run(report(journal, run_name))
    if args.dry_run:
        return interrupt.run(dry_run(path))
    try:
        shard = Shard.parse(args.shard) if args.shard else None
    except ValueError as error:
        print(f"ndax-async backfill: {error}", file=sys.stderr)
        return 2
    part = f".shard-{shard.index}-of-{shard.count}" if shard is not None else ""
    results = Path(args.results) if args.results else path.with_name(f"{path.name}{part}.results.jsonl")

    options: dict[str, Any] = {}
    if args.budget:
        options["budget"] = args.budget
    if args.budget_limit:
        options["budget_limit"] = args.budget_limit
    if args.budget_members:
        options["budget_members"] = args.budget_members
    # With a shared budget (here or NDAX_BUDGET_URL) it paces the run; --rate still caps it.
    shared = bool(args.budget or os.environ.get("NDAX_BUDGET_URL"))
    rate = args.rate if args.rate is not None else (None if shared else 180.0)

    async def run() -> int:
        async with AsyncClient.from_env(
            max_connections=max(args.concurrency, 10), budget_priority="bulk", **options
        ) as client:
            return await backfill(
                path,
                client=client,
                concurrency=args.concurrency,
                rate=rate or None,
                journal=journal,
                results=results,
                run=run_name,
                shard=shard,
                reconcile=args.reconcile,
                custodian_wait=args.custodian_wait,
                lease=args.lease,
            )

    return interrupt.run(run())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="ndax-async", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sandbox = commands.add_parser(
        "sandbox",
        help="serve the fake NDAX API on 127.0.0.1 (counters at GET /_sandbox/stats)",
        description="Serve the fake NDAX API on 127.0.0.1. GET /_sandbox/stats answers its counters "
        "as JSON (no authentication; not counted, not rate limited).",
    )
    sandbox.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    sandbox.add_argument("--faults", default="", help="e.g. drop_after=0.1,err503=0.05,seed=7")
    sandbox.add_argument(
        "--rate-limit",
        type=parse_rate_limit,
        metavar="REQUESTS/SECONDS",
        help="the per-IP limit, e.g. 2000/10 as the platform's: more in any rolling window blocks "
        "the IP for the window, answered 429 (off by default)",
    )
    sandbox.add_argument(
        "--signatures",
        choices=["strict", "raw", "either"],
        default="strict",
        help="strict (default): the signed body must be what JSON.stringify prints, so it passes "
        "every server the spec allows; raw: over the bytes sent; either: raw or JSON.stringify",
    )
    sandbox.add_argument(
        "--idle-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="close a keep-alive connection idle this long (default 5)",
    )
    sandbox.set_defaults(run=_sandbox)
    backfill = commands.add_parser("backfill", help="run a JSON Lines or CSV file of operations, resumably")
    backfill.add_argument("file", help="a .jsonl (or .csv) file, one operation per row")
    backfill.add_argument("--concurrency", type=int, default=16, help="operations in flight (default 16)")
    backfill.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests per second (default 180, or none with a shared budget; 0: no limit)",
    )
    backfill.add_argument(
        "--budget", default="", help="a shared rate budget, redis://host:port/db (default: NDAX_BUDGET_URL)"
    )
    backfill.add_argument(
        "--budget-limit",
        default="",
        help="the budget's REQUESTS/SECONDS (default 2000/10: NDAX_BUDGET_LIMIT)",
    )
    backfill.add_argument(
        "--budget-members",
        type=int,
        default=0,
        help="processes sharing the IP; each uses 1/N while Redis is down (default 4: NDAX_BUDGET_MEMBERS)",
    )
    backfill.add_argument(
        "--journal",
        help="a SQLite path or a postgresql://user@host:port/db URL (default: FILE.journal.sqlite)",
    )
    backfill.add_argument(
        "--run",
        dest="run_name",
        help="the run's name in the journal (default: FILE's name, without its directory)",
    )
    backfill.add_argument(
        "--shard", default="", help="I/N: run only the rows whose key hashes to shard I (0 to N-1) of N"
    )
    backfill.add_argument(
        "--custodian-wait",
        type=float,
        default=600.0,
        help="seconds a minor waits for another shard to create its custodian (default 600)",
    )
    backfill.add_argument(
        "--lease",
        type=float,
        default=30.0,
        help="seconds a claimed row stays this process's unless renewed (default 30)",
    )
    backfill.add_argument(
        "--no-reconcile",
        dest="reconcile",
        action="store_false",
        help="a create already applied under another request_id fails (default: found by email, existing)",
    )
    backfill.add_argument("--results", help="results file, JSON lines (default: FILE.results.jsonl)")
    backfill.add_argument("--dry-run", action="store_true", help="validate every row, send nothing")
    backfill.add_argument(
        "--report", action="store_true", help="print the run's state from its journal alone"
    )
    backfill.set_defaults(run=_backfill)
    demo = commands.add_parser("demo", help="onboard a batch against the embedded sandbox, faults on")
    demo.add_argument("--customers", type=int, default=400)
    demo.add_argument("--concurrency", type=int, default=32)
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
