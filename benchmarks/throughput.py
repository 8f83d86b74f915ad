"""Creates per second over loopback against the sandbox served in its own process.

Six clients at each concurrency, each posting unique, signed creates for a
fixed time: the SDK as a user gets it by default (its built-in HTTP/1.1
sender), the SDK on aiohttp (``http_backend="aiohttp"``), the SDK on httpx's
default transport, the SDK on the ``httpx-aiohttp`` package's transport (the
alternative the issue suggested), hand-written httpx and hand-written aiohttp.

The SDK clients are built with their defaults, so at concurrency 256 tasks
share the SDK's default pool (``DEFAULT_MAX_CONNECTIONS``). The hand-written
clients get the same pool, one connection per task up to that size, and post
the same wire body (request_id included), so the server does the same work for
every client. Client CPU per request (this process's CPU time over requests
done) is reported beside the rate: on a 2-core machine the server shares the
CPU, so the rate alone can hide a client's cost. So is the sandbox's own CPU
per request and how busy it was: a cell where the sandbox is near 100% busy
measures the server, and clients' rates converge there.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from statistics import fmean
from typing import Any

import attrs
import httpx

from ndax_async import AsyncClient, NewCustomer
from ndax_async.client import DEFAULT_MAX_CONNECTIONS

from ._common import (
    API_KEY,
    API_SECRET,
    CREATE_ROUTE,
    PASSPHRASE,
    customer,
    hand_written_body,
    median,
    sign_headers,
)

SDK_DEFAULT = "SDK (default)"
CLIENTS = (
    SDK_DEFAULT,
    "SDK on aiohttp",
    "SDK on httpx transport",
    "SDK on httpx-aiohttp transport",
    "hand-written httpx",
    "hand-written aiohttp",
)
BASELINE = "hand-written aiohttp"
REFERENCE_SERVER = Path(__file__).with_name("reference_server.js")
Send = Callable[[int], Awaitable[None]]


@attrs.frozen
class ServedServer:
    """A server (the sandbox, or the reference server) in a child process: its base URL and CPU time."""

    base_url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server process (Linux ``/proc``), else NaN."""
        try:
            with open(f"/proc/{self.pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def sandbox_process() -> Iterator[ServedServer]:
    """Serve the sandbox (``ndax-async sandbox``) in a child process."""
    with _served([sys.executable, "-m", "ndax_async.cli", "sandbox", "--port", "0"]) as server:
        yield server


@contextlib.contextmanager
def reference_process() -> Iterator[ServedServer]:
    """Serve ``reference_server.js`` (Node.js): a fixed reply to every request, nothing checked."""
    with _served(["node", str(REFERENCE_SERVER)]) as server:
        yield server


@contextlib.contextmanager
def _served(command: list[str]) -> Iterator[ServedServer]:
    """Run a server that prints its ``http://127.0.0.1:<port>`` on its first line; stop it after."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if not found:
            raise RuntimeError(f"server did not start: {line!r}")
        yield ServedServer(found.group(1), process.pid)
    finally:
        process.terminate()
        process.wait(10)


def _sdk_client(base_url: str, backend: str, **options: Any) -> AsyncClient:
    """An SDK client as a user makes it: defaults for everything but the backend."""
    return AsyncClient(
        api_key=API_KEY,
        api_secret=API_SECRET,
        passphrase=PASSPHRASE,
        base_url=base_url,
        http_backend=backend,  # type: ignore[arg-type]
        **options,
    )


def _pool(concurrency: int) -> int:
    """Connections for a hand-written client: one per task, up to the SDK's default pool."""
    return min(concurrency, DEFAULT_MAX_CONNECTIONS)


@contextlib.asynccontextmanager
async def _sender(name: str, base_url: str, concurrency: int, tag: str) -> Any:
    """Yield ``send(n)``: create customer ``n`` (unique per ``tag``) with this client."""
    if name == "SDK on httpx-aiohttp transport":
        from httpx_aiohttp import AiohttpTransport

        pool = DEFAULT_MAX_CONNECTIONS  # what the SDK would give its own transport
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        options: dict[str, Any] = {"transport": AiohttpTransport(limits=limits)}
        async with _sdk_client(base_url, "httpx", **options) as client:

            async def send_sdk_over(n: int) -> None:
                await client.customers.create(NewCustomer(**customer(n, tag)))

            yield send_sdk_over
    elif name.startswith("SDK"):
        backend = {SDK_DEFAULT: "auto", "SDK on aiohttp": "aiohttp"}.get(name, "httpx")
        async with _sdk_client(base_url, backend) as client:

            async def send_sdk(n: int) -> None:
                await client.customers.create(NewCustomer(**customer(n, tag)))

            yield send_sdk
    elif name == "hand-written httpx":
        limits = httpx.Limits(
            max_connections=_pool(concurrency), max_keepalive_connections=_pool(concurrency)
        )
        async with httpx.AsyncClient(base_url=base_url, limits=limits) as http:

            async def send_httpx(n: int) -> None:
                body = hand_written_body(n, tag)
                response = await http.post(CREATE_ROUTE, content=body, headers=sign_headers(body))
                response.raise_for_status()
                response.json()

            yield send_httpx
    else:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=_pool(concurrency))
        async with aiohttp.ClientSession(base_url, connector=connector) as session:

            async def send_aiohttp(n: int) -> None:
                body = hand_written_body(n, tag)
                async with session.post(CREATE_ROUTE, data=body, headers=sign_headers(body)) as response:
                    response.raise_for_status()
                    await response.json()

            yield send_aiohttp


class _Load:
    """Drives ``send`` from a number of tasks for a while and times what it costs."""

    def __init__(self, send: Send, server: ServedServer) -> None:
        self.send = send
        self.server = server
        self.counter = iter(range(10**9))

    async def run(self, concurrency: int, seconds: float) -> dict[str, float]:
        """Creates/s, and the client's and the server's CPU per create, over ``seconds``."""
        done = 0
        until = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < until:
                await self.send(next(self.counter))
                done += 1

        server_before = self.server.cpu_seconds()
        wall, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        server_cpu = self.server.cpu_seconds() - server_before
        nan = float("nan")
        return {
            "rate": done / wall,
            "cpu_ms": cpu / done * 1e3 if done else nan,
            "server_cpu_ms": server_cpu / done * 1e3 if done else nan,
            "server_busy": server_cpu / wall,
        }


async def _measure(
    name: str, server: ServedServer, concurrency: int, seconds: float, tag: str
) -> dict[str, float]:
    """One cell: a warm-up that opens every pooled connection, then ``seconds`` timed."""
    async with _sender(name, server.base_url, concurrency, tag) as send:
        load = _Load(send, server)
        await load.run(concurrency, min(0.3, seconds / 4))
        return await load.run(concurrency, seconds)


async def _pair(
    name: str, server: ServedServer, low: int, high: int, seconds: float, high_first: bool
) -> dict[str, dict[str, float]]:
    """Timed slices at ``low`` and ``high`` in flight, back to back on one client, in the order A B B A.

    Each concurrency has one slice on either side of the other's two, so a drift
    within the pair weighs on both alike. ``high_first`` makes ``high`` the A.
    Each side's figures are the means of its two slices.
    """
    async with _sender(name, server.base_url, high, "scaling") as send:
        load = _Load(send, server)
        await load.run(high, 0.2)  # warm-up: opens the whole pool
        await load.run(low, 0.1)
        outer, inner = (("high", high), ("low", low)) if high_first else (("low", low), ("high", high))
        slices: dict[str, list[dict[str, float]]] = {"low": [], "high": []}
        for side, concurrency in (outer, inner, inner, outer):
            slices[side].append(await load.run(concurrency, seconds))
        return {side: {key: fmean(s[key] for s in runs) for key in runs[0]} for side, runs in slices.items()}


def scaling(
    names: tuple[str, ...] = (SDK_DEFAULT, BASELINE),
    low: int = 16,
    high: int = 256,
    slices: int = 16,
    seconds: float = 0.3,
    server: str = "sandbox",
) -> dict[str, Any]:
    """Each client's rate at ``high`` in flight over its rate at ``low``, measured back to back.

    The cells of :func:`run` put a client's two concurrencies tens of seconds
    apart, and this VM's speed drifts by 10 to 20% over seconds, so their ratio
    flips with the noise. Here a client makes ``slices`` pairs of short slices
    at the two concurrencies, each pair in the order A B B A (alternating which
    is A); the ratio is the median of the ratios within each pair. The client
    and server CPU per create are compared the same way, which shows where a
    difference comes from.

    Each pair gets a fresh server and client. The sandbox keeps every customer
    it creates: one sandbox for all the pairs grew to about 300,000 objects, and
    its full garbage collections (50 to 250 ms) landed inside the slices. With
    one slice per side, the second slice of a pair ran about 5% slower than the
    first whichever it was, which split the ratios into two groups by order;
    A B B A puts that drift on both sides.

    ``server`` is ``"sandbox"``, or ``"reference"``: the Node.js server of
    ``reference_server.js``, which checks nothing and costs far less per
    request, so the client's own scaling shows (skipped without ``node``).
    """
    result: dict[str, Any] = {
        "server": server,
        "low": low,
        "high": high,
        "slices": slices,
        "seconds": seconds,
        "clients": {},
    }
    if server == "reference" and shutil.which("node") is None:
        result["skipped"] = "node (Node.js) is not on PATH"
        return result
    serve = reference_process if server == "reference" else sandbox_process
    for name in names:
        figures: dict[str, list[dict[str, float]]] = {"low": [], "high": []}
        for pair in range(slices):
            with serve() as served:
                sides = asyncio.run(_pair(name, served, low, high, seconds, high_first=pair % 2 == 1))
            for side, figure in sides.items():
                figures[side].append(figure)
        result["clients"][name] = _compare(figures["low"], figures["high"])
    return result


def _compare(low: list[dict[str, float]], high: list[dict[str, float]]) -> dict[str, Any]:
    """Medians of each side, and the median of the ratios within each pair."""

    def paired(key: str) -> list[float]:
        return [h[key] / lo[key] for lo, h in zip(low, high, strict=True)]

    return {
        "low": {key: median([figure[key] for figure in low]) for key in low[0]},
        "high": {key: median([figure[key] for figure in high]) for key in high[0]},
        "ratio": median(paired("rate")),
        "ratios": paired("rate"),
        "cpu_ratio": median(paired("cpu_ms")),
        "server_cpu_ratio": median(paired("server_cpu_ms")),
    }


def run(concurrencies: tuple[int, ...], seconds: float, repeats: int) -> dict[str, Any]:
    """Creates/s and client CPU ms per create, per client and concurrency, with paired ratios.

    Every cell gets a fresh sandbox process, so no client meets a server
    holding more records than another did. ``ratio`` is each client's rate over
    hand-written aiohttp's in the same repeat (medians of those). How a
    client's rate changes with concurrency is measured by :func:`scaling`.
    """
    rates: dict[tuple[str, int], list[float]] = {}
    cpus: dict[tuple[str, int], list[float]] = {}
    server_cpus: dict[tuple[str, int], list[float]] = {}
    server_busy: dict[tuple[str, int], list[float]] = {}
    for repeat in range(repeats):
        # Odd repeats run in reverse order, so a machine slowing down (or
        # speeding up) during a repeat favours no client and no concurrency.
        forward = repeat % 2 == 0
        for concurrency in concurrencies if forward else concurrencies[::-1]:
            for name in CLIENTS if forward else CLIENTS[::-1]:
                tag = f"r{repeat}-c{concurrency}-{CLIENTS.index(name)}"
                with sandbox_process() as server:
                    figure = asyncio.run(_measure(name, server, concurrency, seconds, tag))
                rates.setdefault((name, concurrency), []).append(figure["rate"])
                cpus.setdefault((name, concurrency), []).append(figure["cpu_ms"])
                server_cpus.setdefault((name, concurrency), []).append(figure["server_cpu_ms"])
                server_busy.setdefault((name, concurrency), []).append(figure["server_busy"])

    def paired(name: str, concurrency: int) -> float:
        pairs = zip(rates[(name, concurrency)], rates[(BASELINE, concurrency)], strict=True)
        return median([value / baseline for value, baseline in pairs])

    table = {
        name: {
            c: {
                "rate": median(rates[(name, c)]),
                "cpu_ms": median(cpus[(name, c)]),
                "server_cpu_ms": median(server_cpus[(name, c)]),
                "server_busy": median(server_busy[(name, c)]),
            }
            for c in concurrencies
        }
        for name in CLIENTS
    }
    ratio = {name: {c: paired(name, c) for c in concurrencies} for name in CLIENTS}
    return {
        "seconds": seconds,
        "repeats": repeats,
        "concurrencies": list(concurrencies),
        "table": table,
        "ratio": ratio,
        "samples": {f"{name} @ {c}": rates[(name, c)] for name, c in rates},
    }
