"""The fleet benchmark: 4 backfill processes and a web process behind one IP, one shared budget.

Starts a real ``redis-server`` and a served sandbox enforcing the platform's
rule (2,000 requests per rolling 10 s, one overrun blocks the IP for 10 s),
then 4 ``ndax-async backfill FILE --budget ...`` processes (each its own file
and journal) and one "web" process making 40 interactive creates a second
(deadline 5 s). Runs twice: clean, and with faults (Redis stopped for 3 s and
restarted; one backfill member SIGKILLed and started again, resuming from its
journal). Writes ``benchmarks/FLEET.md``, ``fleet.json`` and ``fleet.png``.

    python -m benchmarks.fleet            # the full run (about 3 minutes)
    python -m benchmarks.fleet --smoke    # a few seconds, tiny N: the harness runs (CI)

The sandbox runs in a child process of this module (``sandbox-host``) so its
counters (429s, duplicates, creations) and each request's arrival time can be
read after the run. Per-member rates come from the Redis log, polled.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PYTHON = sys.executable
KEY = "ndax:budget:default"
STATS_PATH = "/_sandbox/stats"
REQUEST_ID = re.compile(rb'"request_id":"([^"]+)"')


# -- child processes ----------------------------------------------------------------


def sandbox_host(stats_path: str, limit: str) -> None:
    """Serve a rate-limited sandbox until SIGINT; then write each arrival (time, status, request_id)."""
    from ndax_async.testing import Sandbox
    from ndax_async.testing.server import serve_forever

    requests, _, seconds = limit.partition("/")
    arrivals: list[tuple[float, int, str]] = []

    class CountingSandbox(Sandbox):
        def handle(self, method: str, target: str, headers: Any, body: bytes, client: str = "local") -> Any:
            arrived = time.time()  # before the per-IP rule counts it, on this machine's clock
            reply = super().handle(method, target, headers, body, client)
            if target != STATS_PATH:
                found = REQUEST_ID.search(body)
                arrivals.append((arrived, reply.status, found.group(1).decode() if found else ""))
            return reply

    sandbox = CountingSandbox(rate_limit=(int(requests), float(seconds)))
    serve_forever(sandbox, 0, on_ready=lambda line: print(line, flush=True))
    Path(stats_path).write_text(json.dumps({"stats": sandbox.stats, "arrivals": arrivals}))


# Each member logs its grants: (Redis TIME of the grant in s or None when granted
# locally, wall time of the grant, wall time the request was handed to the sender,
# request_id). Patched in from here so the library carries no benchmark hooks.
_GRANT: contextvars.ContextVar[tuple[float | None, float] | None] = contextvars.ContextVar(
    "grant", default=None
)
_REDIS_TIME: contextvars.ContextVar[float | None] = contextvars.ContextVar("redis_time", default=None)
GRANTS: list[tuple[float | None, float, float, str]] = []


def instrument() -> None:
    """Record every grant of this process and when its request was sent."""
    from ndax_async._sending import redis_budget, senders

    budget_class = redis_budget.RedisBudget
    connect, try_ = budget_class._connect, budget_class._try

    async def _connect(self: Any) -> None:
        await connect(self)
        script = self._scripts["acquire"]

        async def acquire(keys: Any, args: Any) -> Any:
            reply = await script(keys=keys, args=args)
            if int(reply[0]) == 1:
                _REDIS_TIME.set(int(reply[1]) / 1e6)
            return reply

        self._scripts["acquire"] = acquire

    async def _try(self: Any, priority: Any) -> tuple[float, bool]:
        _REDIS_TIME.set(None)
        wait, pause = await try_(self, priority)
        if wait <= 0:
            _GRANT.set((_REDIS_TIME.get(), time.time()))
        return wait, pause

    budget_class._connect = _connect  # type: ignore[method-assign]
    budget_class._try = _try  # type: ignore[method-assign]

    def log_grant(body: bytes | None) -> None:
        grant = _GRANT.get()
        if grant is not None:
            found = REQUEST_ID.search(body or b"")
            GRANTS.append((grant[0], grant[1], time.time(), found.group(1).decode() if found else ""))
            _GRANT.set(None)

    send = senders.HttpxSender.send

    async def logged(self: Any, method: str, url: str, headers: Any, body: Any, timeout: Any) -> Any:
        log_grant(body)
        return await send(self, method, url, headers, body, timeout)

    senders.HttpxSender.send = logged  # type: ignore[method-assign]


def member(path: str, grants_path: str) -> int:
    """One backfill member (the CLI), instrumented; writes its grant log on exit."""
    from ndax_async.cli.main import main as cli

    instrument()
    try:
        return cli(["backfill", path, "--concurrency", "16"])
    finally:
        Path(grants_path).write_text(json.dumps(GRANTS))


async def web(out_path: str, rate: float, seconds: float, deadline: float) -> None:
    """Interactive creates at ``rate``/s for ``seconds``; writes latencies and budget waits."""
    from ndax_async import AsyncClient, NDAXError, RedisBudget

    instrument()
    # The web needs 400 requests a window, about a fifth of the limit: while Redis is down it
    # gets a share of 480 (FLEET_SHARE), each backfill 330 (NDAX_BUDGET_MEMBERS=6): 1,800 of 1,980.
    environ = os.environ
    budget = RedisBudget(
        environ["FLEET_BUDGET_URL"], environ["FLEET_BUDGET_LIMIT"], fallback_share=int(environ["FLEET_SHARE"])
    )
    client = AsyncClient.from_env(budget=budget)
    # Per acquire: (wall time, total wait, queue wait before the first try, tries,
    # seconds in tries (Redis round trips), first refusal's reason: "" none, "window", "pause").
    waits: list[tuple[float, float, float, int, float, str]] = []
    tries: contextvars.ContextVar[list[tuple[float, float, float, bool]] | None] = contextvars.ContextVar(
        "tries", default=None
    )
    acquire, try_ = budget.acquire, budget._try

    async def traced_try(priority: Any) -> tuple[float, bool]:
        started = time.perf_counter()
        wait, pause = await try_(priority)
        log = tries.get()
        if log is not None:
            log.append((started, time.perf_counter(), wait, pause))
        return wait, pause

    async def timed(*args: Any, **kwargs: Any) -> bool:
        log: list[tuple[float, float, float, bool]] = []
        tries.set(log)
        started = time.perf_counter()
        granted = await acquire(*args, **kwargs)
        total = time.perf_counter() - started
        queued = (log[0][0] - started) if log else total
        refused = next((("pause" if p else "window") for _, _, w, p in log if w > 0), "")
        waits.append((time.time(), total, queued, len(log), sum(e - b for b, e, _, _ in log), refused))
        return granted

    budget.acquire = timed  # type: ignore[method-assign]
    budget._try = traced_try  # type: ignore[method-assign]
    latencies: list[float] = []
    failures: list[str] = []

    async def signup(n: int) -> None:
        started = time.perf_counter()
        try:
            await client.customers.create(customer(f"web-{n}", n), deadline=deadline)
            latencies.append(time.perf_counter() - started)
        except NDAXError as error:
            failures.append(type(error).__name__)

    async with client:
        tasks = []
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            tasks.append(asyncio.create_task(signup(n)))
            n += 1
            await asyncio.sleep(max(0.0, start + n / rate - time.perf_counter()))
        await asyncio.gather(*tasks)
        stats = budget.stats
    await budget.aclose()  # the client closes only a budget it made
    await asyncio.to_thread(
        Path(out_path).write_text,
        json.dumps(
            {
                "calls": n,
                "failed": len(failures),
                "failures": sorted(set(failures)),
                "latencies": latencies,
                "waits": waits,
                "fallbacks": stats.fallbacks,
                "blocks_reported": stats.blocks_reported,
                "grants": GRANTS,
            }
        ),
    )


def customer(key: str, n: int) -> dict[str, Any]:
    """A valid customer, unique per key."""
    return {
        "first_name": "Fleet",
        "last_name": f"Member{key.replace('-', '')}",
        "email": f"{key}@fleet.example",
        "address_one": f"{n} Main St.",
        "city": "Chicago",
        "state": "IL",
        "zip": "12345",
        "country": "United States",
        "date_of_birth": "1985-09-02",
        "id_number_type": "ssn",
        "id_number": f"{key}-{n}",
        "signed_timestamp": 1603378501286,
    }


# -- the harness ----------------------------------------------------------------------


class Redis:
    """A redis-server on 127.0.0.1 that can be stopped and started on the same port."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        command = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.process = subprocess.Popen(command, cwd=self.folder, stdout=subprocess.DEVNULL)
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.1).close()
                return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.process = None


def run_fleet(folder: Path, *, rows: int, web_seconds: float, limit: str, faults: bool) -> dict[str, Any]:
    """One run of the fleet; returns its measurements."""
    folder.mkdir(parents=True, exist_ok=True)
    redis_server = Redis(folder)
    redis_server.start()
    stats_path = folder / "sandbox.json"
    host = subprocess.Popen(
        [PYTHON, "-m", "benchmarks.fleet", "sandbox-host", str(stats_path), "--limit", limit],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    assert host.stdout is not None
    line = host.stdout.readline().split()
    base_url = line[3]
    creds = dict(item.split("=", 1) for item in line[4:])
    env = {
        **os.environ,
        "NDAX_API_KEY": creds["api_key"],
        "NDAX_API_SECRET": creds["api_secret"],
        "NDAX_PASSPHRASE": creds["passphrase"],
        "NDAX_BASE_URL": base_url,
        "NDAX_BUDGET_URL": redis_server.url,
        "NDAX_BUDGET_LIMIT": limit,
    }
    # While Redis is down: the web gets 1.2x its need (40/s) as its share, and the
    # backfills split the rest (2000/10: web 480, backfills 1980 // 6 = 330 each).
    from ndax_async import BudgetLimit

    effective = BudgetLimit.parse(limit).interactive_ceiling
    web_share = math.ceil(1.2 * 40 * BudgetLimit.parse(limit).window)
    env["NDAX_BUDGET_MEMBERS"] = str(math.ceil(4 * effective / (effective - web_share)))
    web_env = {k: v for k, v in env.items() if not k.startswith("NDAX_BUDGET")}
    web_env.update(FLEET_BUDGET_URL=redis_server.url, FLEET_BUDGET_LIMIT=limit, FLEET_SHARE=str(web_share))
    files = []
    for m in range(4):
        path = folder / f"member{m}.jsonl"
        with path.open("w") as handle:
            for n in range(rows):
                key = f"m{m}-{n}"
                handle.write(json.dumps({"op": "create", "key": key, "data": customer(key, n)}) + "\n")
        files.append(path)

    starts: dict[str, int] = {}

    def backfill(path: Path) -> subprocess.Popen[bytes]:
        starts[path.stem] = starts.get(path.stem, 0) + 1
        grants = folder / f"{path.stem}.grants{starts[path.stem]}.json"
        command = [PYTHON, "-m", "benchmarks.fleet", "member", str(path), "--grants", str(grants)]
        log = (folder / f"{path.stem}.log").open("ab")
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=HERE.parent)

    started = time.time()
    web_out = folder / "web.json"
    web_process = subprocess.Popen(
        [PYTHON, "-m", "benchmarks.fleet", "web", str(web_out), "--seconds", str(web_seconds)],
        env=web_env,
        cwd=HERE.parent,
    )
    members = [backfill(path) for path in files]
    events: list[tuple[float, str]] = []
    if faults:
        third = web_seconds / 3
        time.sleep(third)
        events.append((time.time() - started, "Redis stopped"))
        redis_server.stop()
        time.sleep(3.0)
        redis_server.start()
        events.append((time.time() - started, "Redis restarted"))
        time.sleep(third)
        members[1].send_signal(signal.SIGKILL)
        members[1].wait()
        events.append((time.time() - started, "member 1 SIGKILLed"))
        time.sleep(2.0)
        members[1] = backfill(files[1])
        events.append((time.time() - started, "member 1 restarted"))
    codes = [member.wait() for member in members]
    web_process.wait()
    with urllib.request.urlopen(base_url + STATS_PATH, timeout=10) as answer:
        served_stats = json.load(answer)
    host.send_signal(signal.SIGINT)  # uvicorn returns from serve_forever on SIGINT
    host.wait()
    redis_server.stop()
    sandbox = json.loads(stats_path.read_text())
    sandbox["stats"] = served_stats
    web_result = json.loads(web_out.read_text())
    grants = {"web": web_result["grants"]}
    for path in sorted(folder.glob("member*.grants*.json")):
        grants[path.name.split(".")[0] + "." + path.name.split(".")[1][len("grants") :]] = json.loads(
            path.read_text()
        )
    result = summarize(sandbox, web_result, grants, started, rows, codes, events, limit)
    # Kept for analysis in fleet-<scenario>.last.json, not in fleet.json.
    result["raw"] = {"grants": grants, "arrivals": sandbox["arrivals"], "started": started}
    return result


def summarize(
    sandbox: dict[str, Any],
    web_result: dict[str, Any],
    grants: dict[str, list[Any]],
    started: float,
    rows: int,
    codes: list[int],
    events: list[tuple[float, str]],
    limit: str,
) -> dict[str, Any]:
    """The figures of one run, and the per-second series for the plot."""
    requests, _, seconds = limit.partition("/")
    allowed = int(requests) / float(seconds)
    stats = sandbox["stats"]
    arrivals = sorted(t - started for t, _, _ in sandbox["arrivals"])
    end = int(arrivals[-1]) + 1 if arrivals else 1
    total = [0] * end
    for t in arrivals:
        total[max(0, int(t))] += 1
    rejected = [0] * end
    for t, status, _ in sandbox["arrivals"]:
        if status == 429:
            rejected[min(end - 1, max(0, int(t - started)))] += 1
    # Steady state: from the first full window to 2 s before the backfills run dry.
    last_bulk = max((g[1] - started for name, log in grants.items() if name != "web" for g in log), default=0)
    steady = total[int(float(seconds)) : max(int(float(seconds)) + 1, int(last_bulk) - 2)]
    per_member: dict[str, list[int]] = {}
    local: dict[str, list[int]] = {}
    for name, log in grants.items():
        series = per_member.setdefault(name.split(".")[0], [0] * end)
        for redis_time, wall, _, _ in log:
            second = int(wall - started)
            if 0 <= second < end:
                series[second] += 1
                if redis_time is None:
                    local.setdefault(name.split(".")[0], [0] * end)[second] += 1
    waits = [w[1] for w in web_result["waits"]]
    windows = max_in_window([t for t, _, _ in sandbox["arrivals"]], float(seconds))
    return {
        "answers_429": stats["rate_limited"],
        "ip_blocks": stats["rate_limit_blocks"],
        "failed_calls": web_result["failed"] + sum(1 for code in codes if code != 0),
        "backfill_exit_codes": codes,
        "web_calls": web_result["calls"],
        "web_failed": web_result["failed"],
        "web_failures": web_result["failures"],
        "customers_created": stats["customers"],
        "rows_and_signups": 4 * rows + web_result["calls"],
        "duplicates": stats["duplicates"] + stats["duplicate_payloads"] + stats["conflicts"],
        "replays": stats["replays"],
        "requests": sum(stats["requests"].values()),
        "max_arrivals_in_any_window": windows,
        "steady_rate": statistics.fmean(steady) if steady else 0.0,
        "steady_fraction": (statistics.fmean(steady) / allowed) if steady else 0.0,
        "interactive_wait_p50_ms": 1000 * percentile(sorted(waits), 0.50),
        "interactive_wait_p99_ms": 1000 * percentile(sorted(waits), 0.99),
        "interactive_wait_max_ms": 1000 * max(waits, default=0.0),
        "interactive_waits": wait_breakdown(web_result["waits"]),
        "signup_latency_p50_ms": 1000 * percentile(sorted(web_result["latencies"]), 0.50),
        "signup_latency_p99_ms": 1000 * percentile(sorted(web_result["latencies"]), 0.99),
        "grant_to_arrival": grant_delays(grants, sandbox["arrivals"]),
        "events": events,
        "series": {"total": total, "rejected": rejected, "members": per_member, "local": local},
        "wait_series": [(t - started, w) for t, w, *_ in web_result["waits"]],
        "allowed_per_second": allowed,
    }


def wait_breakdown(waits: list[list[Any]]) -> dict[str, Any]:
    """Where interactive acquires over 5 ms spent their time: queued, Redis round trips, told to wait."""
    slow = [w for w in waits if w[1] > 0.005]
    by_reason: dict[str, int] = {}
    for _, total, queued, _tries, redis, refused in slow:
        reason = refused or ("queue" if queued > max(redis, total - queued - redis) else "round trip")
        by_reason[reason] = by_reason.get(reason, 0) + 1
    return {
        "over_5ms": len(slow),
        "by_reason": by_reason,
        "queued_p99_ms": 1000 * percentile(sorted(w[2] for w in waits), 0.99),
        "redis_p99_ms": 1000 * percentile(sorted(w[4] / max(1, w[3]) for w in waits), 0.99),
        "slowest": [
            {
                "ms": round(1000 * total, 1),
                "queued_ms": round(1000 * queued, 1),
                "tries": tries,
                "redis_ms": round(1000 * redis, 1),
                "refused": refused,
            }
            for _, total, queued, tries, redis, refused in sorted(slow, key=lambda w: -w[1])[:10]
        ],
    }


def grant_delays(grants: dict[str, list[Any]], arrivals: list[list[Any]]) -> dict[str, Any]:
    """Grant (Redis TIME) -> arrival at the sandbox, per request, paired by request_id."""
    arrived: dict[str, list[float]] = {}
    for t, _, request_id in sorted(arrivals):
        if request_id:
            arrived.setdefault(request_id, []).append(t)
    delays, handed = [], []
    for log in grants.values():
        for redis_time, wall, sent, request_id in log:
            # The first arrival after the grant (a resent request arrives more than once).
            after = [t for t in arrived.get(request_id, []) if t >= redis_time - 0.001] if redis_time else []
            if after:
                delays.append(after[0] - redis_time)
                handed.append(sent - wall)
    delays.sort()
    handed.sort()
    quantiles = {"p0": 0.0, "p50": 0.5, "p99": 0.99, "p999": 0.999}
    result: dict[str, Any] = {"paired": len(delays)}
    result.update({f"{k}_ms": 1000 * percentile(delays, q) for k, q in quantiles.items()})
    result["max_ms"] = 1000 * (delays[-1] if delays else 0.0)
    result["grant_to_send_p99_ms"] = 1000 * percentile(handed, 0.99)
    result["grant_to_send_max_ms"] = 1000 * (handed[-1] if handed else 0.0)
    return result


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of sorted ``values`` (nearest rank)."""
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(q * len(values)))]


def max_in_window(times: list[float], window: float) -> int:
    """The most arrivals in any rolling window (what the platform would count)."""
    import bisect

    times = sorted(times)
    return max((i + 1 - bisect.bisect_right(times, t - window) for i, t in enumerate(times)), default=0)


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Requests per second per member and in total, against the limit; interactive waits below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, len(results), figsize=(7 * len(results), 7), squeeze=False)
    for column, (name, result) in enumerate(results.items()):
        top, bottom = axes[0][column], axes[1][column]
        total = result["series"]["total"]
        top.plot(range(len(total)), total, color="black", linewidth=2, label="total (sandbox arrivals)")
        for member, series in sorted(result["series"]["members"].items()):
            top.plot(range(len(series)), series, linewidth=1, label=member if member == "web" else None)
        top.axhline(result["allowed_per_second"], color="red", linestyle="--", label="limit (2000/10 s)")
        for t, what in result["events"]:
            top.axvline(t, color="grey", linestyle=":")
            top.text(t, result["allowed_per_second"] * 1.05, what, rotation=90, fontsize=7, va="bottom")
        top.set_title(f"{name}: requests/s (thin lines: each member)")
        top.set_ylim(0, result["allowed_per_second"] * 1.4)
        top.legend(loc="lower left", fontsize=7)
        waits = result["wait_series"]
        bottom.scatter([t for t, _ in waits], [1000 * w for _, w in waits], s=2)
        bottom.set_yscale("log")
        bottom.set_title("interactive wait for budget (ms, per attempt)")
        bottom.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    """FLEET.md."""
    lines = [
        "# Fleet benchmark: one budget for 4 backfills and a web process behind one IP",
        "",
        f"`python -m benchmarks.fleet` ({'smoke' if args.smoke else 'full'} run): a real redis-server, the",
        f"served sandbox with `--rate-limit {args.limit}` (429 and a block on one too many), 4 `ndax-async",
        f"backfill FILE --budget ...` processes ({args.rows} rows each, concurrency 16, their own journals)",
        f"and one web process making 40 interactive creates/s (deadline 5 s) for {args.seconds:g} s.",
        "429s and duplicates are read from the sandbox's `/_sandbox/stats`; arrival times are recorded by",
        "the benchmark's sandbox host; each member logs its grants (Redis `TIME`) and request_ids, so every",
        "request's grant -> arrival delay is known. While Redis is down the web's share is 480",
        "(`fallback_share`) and each backfill's 330 (`--budget-members 6`): 1,800 of the effective 1,980.",
        "Interactive waits by cause: `window` (told to wait), `queue` (behind another try in the process),",
        "`round trip` (the Redis call itself, e.g. the first connection).",
        "",
        "| | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
    ]
    rows = [
        ("answers 429 (IP blocks)", None, ""),
        ("failed calls", "failed_calls", "{}"),
        ("customers created / rows + signups", None, ""),
        ("duplicates (second person, payload reuse, conflicts)", "duplicates", "{}"),
        ("replays (a resend answered from the ledger)", "replays", "{}"),
        ("most arrivals in any rolling window", "max_arrivals_in_any_window", "{}"),
        ("steady-state fleet rate, share of 200/s", "steady_fraction", "{:.1%}"),
        ("interactive budget wait p50 / p99 (ms)", None, ""),
        ("signup latency p50 / p99 (ms)", None, ""),
        ("interactive waits over 5 ms, by cause", None, ""),
        ("grant (Redis TIME) -> arrival p50 / p99 / p99.9 / max (ms)", None, ""),
    ]
    for label, key, form in rows:
        cells = []
        for result in results.values():
            if label.startswith("answers 429"):
                cells.append(f"{result['answers_429']} ({result.get('ip_blocks', '?')})")
            elif label.startswith("interactive waits over"):
                waits = result.get("interactive_waits", {})
                causes = ", ".join(f"{k} {v}" for k, v in sorted(waits.get("by_reason", {}).items()))
                cells.append(f"{waits.get('over_5ms', '?')}: {causes or 'none'}")
            elif label.startswith("grant"):
                delay = result.get("grant_to_arrival", {})
                cells.append(
                    " / ".join(f"{delay.get(k, 0):.1f}" for k in ("p50_ms", "p99_ms", "p999_ms", "max_ms"))
                )
            elif label.startswith("customers"):
                cells.append(f"{result['customers_created']} / {result['rows_and_signups']}")
            elif label.startswith("interactive"):
                cells.append(
                    f"{result['interactive_wait_p50_ms']:.2f} / {result['interactive_wait_p99_ms']:.2f}"
                )
            elif label.startswith("signup"):
                cells.append(f"{result['signup_latency_p50_ms']:.1f} / {result['signup_latency_p99_ms']:.1f}")
            else:
                cells.append(form.format(result[key]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "![requests per second per member and in total](fleet.png)", ""]
    for name, result in results.items():
        if result["events"]:
            lines.append(
                f"{name} events (s from start): " + "; ".join(f"{t:.1f} {w}" for t, w in result["events"])
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one of its child processes)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet")
    parser.add_argument(
        "role", nargs="?", default="harness", choices=["harness", "sandbox-host", "web", "member", "report"]
    )
    parser.add_argument("out", nargs="?", default="")
    parser.add_argument("--smoke", action="store_true", help="a few seconds, tiny N (CI: the harness runs)")
    parser.add_argument("--limit", default="2000/10")
    parser.add_argument("--rows", type=int, default=2700)
    parser.add_argument("--seconds", type=float, default=70.0)
    parser.add_argument("--output", default=str(HERE))
    parser.add_argument("--scenario", choices=["both", "clean", "faults"], default="both")
    parser.add_argument("--grants", default="", help="(member) where to write its grant log")
    args = parser.parse_args(argv)
    if args.role == "sandbox-host":
        sandbox_host(args.out, args.limit)
        return 0
    if args.role == "report":  # FLEET.md and fleet.png again from fleet.json
        results = json.loads((Path(args.output) / "fleet.json").read_text())
        (Path(args.output) / "FLEET.md").write_text(report(results, args))
        plot(results, Path(args.output) / "fleet.png")
        return 0
    if args.role == "member":
        return member(args.out, args.grants)
    if args.role == "web":
        asyncio.run(web(args.out, 40.0, args.seconds, 5.0))
        return 0
    if args.smoke:
        args.limit, args.rows, args.seconds = "200/2", 60, 4.0
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="ndax-fleet-") as folder:
        for name, faults in (("clean", False), ("faults", True)):
            if args.scenario not in ("both", name):
                continue
            results[name] = run_fleet(
                Path(folder) / name, rows=args.rows, web_seconds=args.seconds, limit=args.limit, faults=faults
            )
            (output / f"fleet-{name}.last.json").write_text(json.dumps(results[name]))
            results[name].pop("raw")
            brief = {k: v for k, v in results[name].items() if not k.endswith("series")}
            print(name, json.dumps(brief), flush=True)
    if args.smoke:
        return 0
    (output / "fleet.json").write_text(json.dumps(results, indent=1))
    (output / "FLEET.md").write_text(report(results, args))
    plot(results, output / "fleet.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
