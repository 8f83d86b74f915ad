"""Creates per second over loopback against the sandbox served in its own process.

Five clients side by side, each posting unique, signed creates for a fixed
time at each concurrency: the SDK as a user gets it (its default: httpx's
client over aiohttp's pool), the SDK with ``http_backend="httpx"`` (httpx's own
pool), hand-written httpx on that same aiohttp pool (``httpx-aiohttp``, what the
SDK's default sends through), hand-written aiohttp and hand-written httpx.

SDK clients are built with their defaults, so at 256 in flight tasks wait for
the default 64 slots (``DEFAULT_MAX_CONNECTIONS``). The hand-written clients get
the same pool of 64 and post the same wire body (request_id included), so the
server does the same work for everyone. Beside each rate: this process's CPU
per create (the client's cost), and the sandbox's CPU per create and how busy
it was (from ``/proc``, Linux only): on two shared cores a cell where the
sandbox is near 100% busy measures the server, not the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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

SDK_DEFAULT = "SDK (default: httpx on aiohttp's pool)"
SDK_HTTPX = 'SDK, http_backend="httpx"'
HAND_HTTPX_AIOHTTP = "hand-written httpx on aiohttp's pool"
HAND_AIOHTTP = "hand-written aiohttp"
HAND_HTTPX = "hand-written httpx"
CLIENTS = (SDK_DEFAULT, SDK_HTTPX, HAND_HTTPX_AIOHTTP, HAND_AIOHTTP, HAND_HTTPX)
Send = Callable[[int], Awaitable[None]]


@attrs.frozen
class ServedServer:
    """The sandbox in a child process: its base URL and its CPU time."""

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
    """Serve the sandbox (``python -m ndax_async.cli sandbox --port 0``) in a child process."""
    command = [sys.executable, "-m", "ndax_async.cli", "sandbox", "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+)", line)
        if not found:
            raise RuntimeError(f"the sandbox did not start: {line!r}")
        yield ServedServer(found.group(1), process.pid)
    finally:
        process.terminate()
        process.wait(10)


@contextlib.asynccontextmanager
async def _sender(name: str, base_url: str, tag: str) -> AsyncIterator[Send]:
    """Yield ``send(n)``: create customer ``n`` (unique per ``tag``) with this client."""
    if name in (SDK_DEFAULT, SDK_HTTPX):
        backend: Any = "httpx" if name == SDK_HTTPX else "aiohttp"
        credentials = {"api_key": API_KEY, "api_secret": API_SECRET, "passphrase": PASSPHRASE}
        async with AsyncClient(**credentials, base_url=base_url, http_backend=backend) as client:

            async def send_sdk(n: int) -> None:
                await client.customers.create(NewCustomer(**customer(n, tag)))

            yield send_sdk
    elif name == HAND_AIOHTTP:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=DEFAULT_MAX_CONNECTIONS)
        async with aiohttp.ClientSession(base_url, connector=connector) as session:

            async def send_aiohttp(n: int) -> None:
                body = hand_written_body(n, tag)
                async with session.post(CREATE_ROUTE, data=body, headers=sign_headers(body)) as response:
                    response.raise_for_status()
                    await response.json()

            yield send_aiohttp
    else:
        from httpx_aiohttp import HttpxAiohttpClient

        pool = httpx.Limits(max_connections=DEFAULT_MAX_CONNECTIONS, max_keepalive_connections=None)
        client_type = HttpxAiohttpClient if name == HAND_HTTPX_AIOHTTP else httpx.AsyncClient
        async with client_type(base_url=base_url, limits=pool) as http:

            async def send_httpx(n: int) -> None:
                body = hand_written_body(n, tag)
                response = await http.post(CREATE_ROUTE, content=body, headers=sign_headers(body))
                response.raise_for_status()
                response.json()

            yield send_httpx


async def _load(
    send: Send, server: ServedServer, concurrency: int, seconds: float, counter: Iterator[int]
) -> dict[str, float]:
    """Creates/s, and the client's and the server's CPU per create, over ``seconds``."""
    done = 0
    until = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < until:
            await send(next(counter))
            done += 1

    server_before = server.cpu_seconds()
    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    server_cpu = server.cpu_seconds() - server_before
    nan = float("nan")
    return {
        "rate": done / wall,
        "cpu_ms": cpu / done * 1e3 if done else nan,
        "server_cpu_ms": server_cpu / done * 1e3 if done else nan,
        "server_busy": server_cpu / wall,
    }


async def _cell(name: str, concurrency: int, seconds: float, tag: str) -> dict[str, float]:
    """One cell on a fresh sandbox: a warm-up that opens the pool, then ``seconds`` timed."""
    with sandbox_process() as server:
        async with _sender(name, server.base_url, tag) as send:
            counter = iter(range(10**9))  # unique customers across the warm-up and the timed run
            await _load(send, server, concurrency, min(0.3, seconds / 4), counter)
            return await _load(send, server, concurrency, seconds, counter)


def run(concurrencies: tuple[int, ...], seconds: float, repeats: int) -> dict[str, Any]:
    """Every client at every concurrency, ``repeats`` times, the order reversed on odd repeats."""
    samples: dict[str, dict[int, list[dict[str, float]]]] = {
        name: {c: [] for c in concurrencies} for name in CLIENTS
    }
    for repeat in range(repeats):
        cells = [(name, c) for c in concurrencies for name in CLIENTS]
        for name, concurrency in cells if repeat % 2 == 0 else cells[::-1]:
            tag = f"r{repeat}-c{concurrency}-{CLIENTS.index(name)}"
            samples[name][concurrency].append(asyncio.run(_cell(name, concurrency, seconds, tag)))
    table = {
        name: {c: {key: median([s[key] for s in runs]) for key in runs[0]} for c, runs in row.items()}
        for name, row in samples.items()
    }
    return {"concurrencies": list(concurrencies), "seconds": seconds, "repeats": repeats, "table": table}
