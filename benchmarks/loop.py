"""Event-loop lateness while a bulk run shares the loop with a web app: the figure that matters.

The setting a user meets: a web app (aiohttp's server on 127.0.0.1, answering
a small JSON document) serves requests from another process, 100 a second,
while a journaled bulk run on the same event loop sends creates at the
platform's rate (the default 180/s, 16 workers) over a simulated network
(each request answered after 40 to 120 ms). A ticker asks to run every 1 ms
and records how late each run was; the web client records each request's
latency. The same web app without the bulk run is measured side by side
(alternating, the order reversed on odd repeats): the difference is what the
bulk run costs the app.

``python -m benchmarks.loop`` prints the figures as JSON;
``python -m benchmarks.loop --web-client URL`` is the web client (run by the
benchmark): it prints one latency in ms per line until it is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ndax_async.bulk.engine import DEFAULT_RATE

from ._common import median
from .bulk import NetworkTransport, bulk_run, gap_summary, gc_pauses, ticker

WEB_RATE = 100.0  # web requests per second
CONCURRENCY = 16  # Bulk's default, as the backfill command runs it
ROOT = Path(__file__).resolve().parent.parent


async def _page(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "items": [{"id": n, "name": f"item {n}"} for n in range(20)]})


async def _with_web_app(bulk_count: int, seconds: float, folder: Path, tag: str) -> dict[str, Any]:
    """Serve the web app, start its client, then make the bulk run (or, with ``bulk_count``
    0, tick for ``seconds``); the ticker's gaps, the client's latencies, the run's length."""
    app = web.Application()
    app.router.add_get("/", _page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.loop", "--web-client", f"http://127.0.0.1:{port}/",
        stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    latencies: list[float] = []
    answered = asyncio.Event()

    async def read_latencies() -> None:
        assert client.stdout is not None
        async for line in client.stdout:
            latencies.append(float(line))
            answered.set()

    reader = asyncio.create_task(read_latencies())
    await answered.wait()  # the client is up and the app has answered once
    gaps: list[float] = []
    try:
        if bulk_count:
            elapsed = await bulk_run(
                bulk_count, folder / f"{tag}.sqlite", tag, gaps,
                transport=NetworkTransport(), rate=DEFAULT_RATE, concurrency=CONCURRENCY,
            )  # fmt: skip
        else:
            ticking = asyncio.create_task(ticker(gaps))
            await asyncio.sleep(seconds)
            ticking.cancel()
            elapsed = seconds
    finally:
        client.terminate()
        await client.wait()
        await reader
        await runner.cleanup()
    return {"elapsed": elapsed, "gaps": gaps, "latencies": latencies}


def run(count: int, repeats: int) -> dict[str, Any]:
    """Per side (the web app with the bulk run, and alone): the ticker's lateness, the web
    requests' latency, and the longest garbage-collector pause, over ``repeats`` alternating runs."""
    sides: dict[str, dict[str, list[Any]]] = {
        name: {"gaps": [], "latencies": [], "rates": []} for name in ("with bulk", "alone")
    }
    with tempfile.TemporaryDirectory() as folder, gc_pauses() as pauses:
        for repeat in range(repeats):
            order = [("with bulk", count), ("alone", 0)]
            for name, bulk_count in order if repeat % 2 == 0 else order[::-1]:
                pauses.clear()
                seconds = count / DEFAULT_RATE  # as long as a bulk run
                got = asyncio.run(_with_web_app(bulk_count, seconds, Path(folder), f"loop{repeat}"))
                side = sides[name]
                side["gaps"].append(got["gaps"])
                side["latencies"].extend(got["latencies"])
                side.setdefault("gc", []).append(max(pauses, default=0.0) * 1e3)
                if bulk_count:
                    side["rates"].append(bulk_count / got["elapsed"])
    result: dict[str, Any] = {
        "operations": count,
        "repeats": repeats,
        "rate_limit": DEFAULT_RATE,
        "concurrency": CONCURRENCY,
        "web_rate": WEB_RATE,
    }
    for name, side in sides.items():
        latencies = sorted(side["latencies"])
        result[name] = {
            "loop_gap_ms": gap_summary(side["gaps"]),
            "web_ms": {
                "p50": latencies[len(latencies) // 2] if latencies else float("nan"),
                "p99": latencies[int(len(latencies) * 0.99)] if latencies else float("nan"),
                "max": latencies[-1] if latencies else float("nan"),
                "requests": len(latencies),
            },
            "longest_gc_pause_ms": max(side["gc"], default=0.0),
        }
    result["with bulk"]["ops_per_second"] = median(sides["with bulk"]["rates"])
    return result


async def _web_client(url: str) -> None:
    """Request ``url`` WEB_RATE times a second, one at a time; print each latency in ms."""
    gc.disable()  # this process measures: its own pauses must not count
    async with aiohttp.ClientSession() as session:
        next_at = time.perf_counter()
        while True:
            started = time.perf_counter()
            async with session.get(url) as response:
                await response.read()
            print(f"{(time.perf_counter() - started) * 1e3:.3f}", flush=True)
            next_at = max(next_at + 1 / WEB_RATE, time.perf_counter())
            await asyncio.sleep(next_at - time.perf_counter())


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--web-client", help="be the web client of URL (used by the benchmark)")
    parser.add_argument("--count", type=int, default=1800)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.web_client:
        asyncio.run(_web_client(args.web_client))
    else:
        print(json.dumps(run(args.count, args.repeats), indent=2))
