"""Drive the signup service with bounded concurrent load, abandoning some requests mid-flight.

``python -m examples.loadgen --url http://127.0.0.1:8000 --signups 2000 --concurrency 128``

Each signup carries its own ``Idempotency-Key``. A share (``--abandon``) is
cut off by the client after a few milliseconds, as a browser that navigates
away would, and then retried with the *same* key, as the user pressing the
button again would. 503 answers are retried with the same key after their
``Retry-After`` (capped by ``--max-wait``). Writes a JSON report: every signup's
final status and participant_code, throughput and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp


def signup_payload(n: int, tag: str) -> dict[str, Any]:
    """A valid customer for signup ``n``, a different person for each ``n`` and ``tag``."""
    return {
        "first_name": "Grace",
        "last_name": f"Hopper-{tag}-{n}",
        "email": f"{tag}-{n}@example.com",
        "address_one": f"{n} Navy Way",
        "city": "Arlington",
        "state": "VA",
        "zip": "22201",
        "country": "United States",
        "date_of_birth": "1986-12-09",
        "id_number_type": "ssn",
        "id_number": f"{zlib.crc32(tag.encode()) % 900 + 100}{n:06d}",
        "signed_timestamp": 1603378501286,
    }


async def _one_signup(
    session: aiohttp.ClientSession, url: str, n: int, args: argparse.Namespace, rng: random.Random
) -> dict[str, Any]:
    key = f"{args.tag}-{n}"
    payload = signup_payload(n, args.tag)
    record: dict[str, Any] = {"key": key, "email": payload["email"], "abandoned": False, "attempts": 0}
    abandon = rng.random() < args.abandon
    for _ in range(args.max_attempts):
        record["attempts"] += 1
        started = time.perf_counter()
        try:
            if abandon:  # give up after a few ms, then come back with the same key
                abandon = False
                record["abandoned"] = True
                await asyncio.wait_for(_post(session, url, key, payload), rng.uniform(0.001, 0.03))
            else:
                status, body, retry_after = await _post(session, url, key, payload)
                record.update(status=status, body=body, latency=time.perf_counter() - started)
                if status != 503:
                    return record
                await asyncio.sleep(min(float(retry_after or 1), args.max_wait))
                continue
        except (asyncio.TimeoutError, aiohttp.ClientError):
            pass  # abandoned or dropped: come back with the same key
        record["status"] = None
    return record


async def _post(
    session: aiohttp.ClientSession, url: str, key: str, payload: dict[str, Any]
) -> tuple[int, Any, str | None]:
    async with session.post(url + "/signup", json=payload, headers={"Idempotency-Key": key}) as response:
        text = await response.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return response.status, body, response.headers.get("Retry-After")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run every signup at the given concurrency; return the report."""
    rng = random.Random(args.seed)  # noqa: S311 - load shape, not security
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    records: list[dict[str, Any]] = []
    numbers = iter(range(args.signups))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            for n in numbers:
                records.append(await _one_signup(session, args.url, n, args, rng))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        elapsed = time.perf_counter() - started
    ok = sorted(r["latency"] for r in records if r.get("status") in (200, 201))
    return {
        "signups": args.signups,
        "concurrency": args.concurrency,
        "elapsed": elapsed,
        "per_second": len(records) / elapsed,
        "succeeded": len(ok),
        "abandoned": sum(r["abandoned"] for r in records),
        "latency_ms": {
            "p50": ok[len(ok) // 2] * 1e3 if ok else None,
            "p99": ok[min(len(ok) - 1, int(len(ok) * 0.99))] * 1e3 if ok else None,
        },
        "records": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--signups", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--abandon", type=float, default=0.1, help="share of signups abandoned mid-flight")
    parser.add_argument("--tag", default="load", help="makes emails and keys unique per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a patient request waits")
    parser.add_argument("--max-wait", type=float, default=0.2, help="cap on a 503's Retry-After")
    parser.add_argument("--max-attempts", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the JSON report here (default: stdout summary)")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    if args.out:
        args.out.write_text(json.dumps(report))
    summary = {k: v for k, v in report.items() if k != "records"}
    print(json.dumps(summary), file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
