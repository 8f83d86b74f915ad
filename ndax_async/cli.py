"""The ``ndax-async`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parse_faults(text: str) -> dict[str, float | int]:
    settings: dict[str, float | int] = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        settings[name.strip()] = int(value) if name.strip() == "seed" else float(value)
    return settings


def _sandbox(args: argparse.Namespace) -> int:
    from .testing import Sandbox
    from .testing.server import serve_forever

    rate_limit = None
    if args.rate_limit:
        requests, _, seconds = args.rate_limit.partition("/")
        rate_limit = (int(requests), float(seconds or 10))
    sandbox = Sandbox(faults=_parse_faults(args.faults), rate_limit=rate_limit)
    serve_forever(sandbox, args.port, on_ready=lambda line: print(line, flush=True))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo

    return run_demo(customers=args.customers, concurrency=args.concurrency)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="ndax-async", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    sandbox = commands.add_parser("sandbox", help="serve the fake NDAX API on 127.0.0.1")
    sandbox.add_argument("--port", type=int, default=0, help="port (0 picks a free one)")
    sandbox.add_argument("--faults", default="", help="e.g. drop_after=0.1,err503=0.05,seed=7")
    sandbox.add_argument("--rate-limit", default="", help="REQUESTS/SECONDS, e.g. 2000/10 (off by default)")
    sandbox.set_defaults(run=_sandbox)
    demo = commands.add_parser("demo", help="onboard a batch against the embedded sandbox, faults on")
    demo.add_argument("--customers", type=int, default=400)
    demo.add_argument("--concurrency", type=int, default=32)
    demo.set_defaults(run=_demo)
    args = parser.parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
