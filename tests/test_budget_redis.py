"""The shared budget against a real ``redis-server`` on 127.0.0.1 (tests/servers.py).

Redis counts on its own clock, so these windows are real time; the tests wait
for conditions (with generous hang guards) and never assert how fast anything ran.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ndax_async import AsyncClient, BudgetLimit, BudgetWait, RedisBudget
from ndax_async.testing import Sandbox, SandboxServer

from .helpers import customer_wire
from .servers import RedisServer

LONG = BudgetLimit(requests=50, window=60.0, margin=0, reserve=10, sub_window=60.0, smoothing=2.0)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with RedisServer(tmp_path) as server:
        yield server


async def zcard(server: RedisServer, key: str = "ndax:budget:default") -> int:
    import redis.asyncio

    connection = redis.asyncio.Redis.from_url(server.url)
    try:
        count: int = await connection.zcard(key)
        return count
    finally:
        await connection.aclose()


async def until(condition: object, what: str, guard: float = 20.0) -> None:
    """Wait for ``condition()`` to hold (a hang guard, not a timing assertion)."""
    for _ in range(int(guard / 0.02)):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{what} did not happen within {guard:g}s")


async def test_two_members_share_one_count(redis_server: RedisServer) -> None:
    a, b = RedisBudget(redis_server.url, LONG), RedisBudget(redis_server.url, LONG)
    try:
        results = await asyncio.gather(
            *(budget.acquire("interactive", remaining=0.3) for budget in (a, b) for _ in range(40))
        )
        assert results.count(True) == 50  # across both members, not 50 each
        assert await zcard(redis_server) == 50
        assert a.stats.mode == b.stats.mode == "redis"
    finally:
        await a.aclose()
        await b.aclose()


async def test_members_never_exceed_the_limit_in_any_rolling_window(redis_server: RedisServer) -> None:
    # Counted by a sandbox that enforces the platform's rule: it answers 429 on one too many.
    # (A margin covers the grant-to-arrival spread; with none, this test saw a 429.)
    limit = BudgetLimit(requests=40, window=0.5, margin=4, reserve=4, sub_window=0.1)
    sandbox = Sandbox(rate_limit=(40, 0.5))
    budgets = [RedisBudget(redis_server.url, limit) for _ in range(2)]
    with SandboxServer(sandbox) as server:
        clients = [sandbox_client(sandbox, server, budget) for budget in budgets]

        async def member(n: int, priority: str) -> None:
            client = clients[n % 2]
            for k in range(30):
                await client.customers.create(
                    customer_wire(email=f"{priority}{n}-{k}@mail.com", id_number=f"{n}-{k}-{priority}"),
                    priority=priority,  # type: ignore[arg-type]
                )

        try:
            await asyncio.gather(*(member(n, p) for n in range(4) for p in ("bulk", "interactive")))
        finally:
            for client in clients:
                await client.aclose()
            for budget in budgets:
                await budget.aclose()
    assert sandbox.stats["rate_limited"] == 0
    assert sandbox.stats["customers"] == 240
    assert sum(budget.stats.grants["bulk"] for budget in budgets) == 120


def sandbox_client(sandbox: Sandbox, server: SandboxServer, budget: RedisBudget) -> AsyncClient:
    return AsyncClient(**sandbox.credentials, base_url=server.base_url, budget=budget, max_retries=0)


async def test_bulk_stops_at_the_reserve_while_interactive_gets_through(redis_server: RedisServer) -> None:
    web, worker = RedisBudget(redis_server.url, LONG), RedisBudget(redis_server.url, LONG)
    try:
        bulk = [await worker.acquire("bulk", remaining=0.2) for _ in range(45)]
        assert bulk.count(True) == 40  # N - reserve
        interactive = [await web.acquire("interactive", remaining=0.2) for _ in range(12)]
        assert interactive.count(True) == 10  # the reserve is interactive's alone
    finally:
        await web.aclose()
        await worker.aclose()


async def test_a_429_seen_by_one_member_pauses_the_other(redis_server: RedisServer) -> None:
    events: list[BudgetWait] = []
    seen, other = (
        RedisBudget(redis_server.url, LONG),
        RedisBudget(redis_server.url, LONG, on_wait=events.append),
    )
    try:
        assert await other.acquire()  # joined
        await seen.report_block(0.5)
        assert not await other.acquire(remaining=0.2)  # the pause outlasts this deadline: fail fast
        assert await other.acquire()  # waits the pause out
        assert [(e.reason, e.granted) for e in events] == [("pause", False), ("pause", True)]
        assert other.stats.pauses == 1
        assert seen.stats.blocks_reported == 1
    finally:
        await seen.aclose()
        await other.aclose()


class ManualClock:
    """Time moves only when the test advances it; sleeps yield for real (Redis answers in real time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(0.01)


async def test_redis_stopped_mid_run_falls_back_once_and_rejoins(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    budget = RedisBudget(redis_server.url, LONG, probe_interval=0.05, expected_members=2, clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="ndax_async"):
            assert all([await budget.acquire() for _ in range(5)])
            redis_server.stop()
            # Both classes find Redis gone at once: one fallback, one warning, no exception.
            # The share is 25 of 50, but for the first window the member holds to the 5
            # it used: it cannot see what the others used, and together they used the log.
            both = await asyncio.gather(*(budget.acquire(p, remaining=5.0) for p in ("interactive", "bulk")))
            assert both == [False, False]
            assert budget.stats.mode == "local"
            assert budget.stats.fallbacks == 1
            clock.advance(61.0)  # a window later (Redis still down): the share applies
            results = [await budget.acquire(remaining=5.0) for _ in range(27)]
            assert results.count(True) == 25
            redis_server.start()
            await until(lambda: budget.stats.mode == "redis", "the rejoin")
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "unreachable" in warnings[0].getMessage()
        # Redis lost the log in the restart: the rejoin put this member's 25 back, and
        # for a whole window (until every member has rejoined) it keeps to its share too.
        assert await zcard(redis_server) == 25
        clock.advance(5.0)
        assert not await budget.acquire(remaining=5.0)  # Redis alone would grant: 25 of 50
        clock.advance(56.5)
        assert await budget.acquire(remaining=5.0)
        assert budget.stats.mode == "redis"
    finally:
        await budget.aclose()


async def test_redis_down_at_start_uses_the_local_share_then_joins(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path)  # not started yet
    budget = RedisBudget(server.url, LONG, probe_interval=0.05, fallback_share=3)
    try:
        with caplog.at_level(logging.WARNING, logger="ndax_async"):
            results = [await budget.acquire(remaining=0.2) for _ in range(5)]
        assert results == [True, True, True, False, False]
        assert budget.stats.mode == "local"
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
        server.start()
        await until(lambda: budget.stats.mode == "redis", "the join")
        assert await zcard(server) == 3
    finally:
        await budget.aclose()
        server.stop()


async def test_a_member_that_dies_holds_nothing(redis_server: RedisServer) -> None:
    limit = BudgetLimit(requests=10, window=1.0, margin=0, reserve=1, sub_window=1.0, smoothing=1.0)
    member = (
        "import asyncio, sys\n"
        "from ndax_async import BudgetLimit, RedisBudget\n"
        "async def main():\n"
        f"    limit = BudgetLimit(requests=10, window=1.0, margin=0, reserve=1)\n"
        f"    budget = RedisBudget({redis_server.url!r}, limit)\n"
        "    for _ in range(10):\n"
        "        assert await budget.acquire()\n"
        "    print('granted', flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", member, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert await asyncio.wait_for(process.stdout.readline(), 30) == b"granted\n"
    process.kill()  # SIGKILL: it releases nothing
    await process.wait()
    alive = RedisBudget(redis_server.url, limit)
    try:
        assert not await alive.acquire(remaining=0.05)  # the dead member's grants still count...
        # ...until they age out of the window: no lease to expire, and then the whole budget is free.
        assert all([await alive.acquire() for _ in range(10)])
        assert await zcard(redis_server) == 10  # only the living member's entries
    finally:
        await alive.aclose()


class PasswordRedis(RedisServer):
    """A redis-server that wants a password."""

    def command(self) -> list[str]:
        return [*super().command(), "--requirepass", "right-pw"]


async def test_the_password_never_appears(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with PasswordRedis(tmp_path) as server:
        wrong = RedisBudget(f"redis://:s3cret-pw@127.0.0.1:{server.port}/0", LONG)
        right = RedisBudget(f"redis://:right-pw@127.0.0.1:{server.port}/0", LONG)
        try:
            with caplog.at_level(logging.DEBUG, logger="ndax_async"):
                assert await wrong.acquire()  # authentication fails: the local share, no exception
                assert await right.acquire()
            assert (wrong.stats.mode, right.stats.mode) == ("local", "redis")
            shown = caplog.text + repr(wrong) + repr(right)
            assert "s3cret-pw" not in shown
            assert "right-pw" not in shown
            assert "redis://:***@127.0.0.1" in caplog.text
        finally:
            await wrong.aclose()
            await right.aclose()


def test_backfill_cli_draws_from_the_shared_budget(redis_server: RedisServer, tmp_path: Path) -> None:
    import json
    import os
    import subprocess

    source = tmp_path / "ops.jsonl"
    rows = [
        {"op": "create", "key": f"c{n}", "data": customer_wire(email=f"c{n}@mail.com", id_number=f"C{n}")}
        for n in range(30)
    ]
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sandbox = Sandbox(rate_limit=(2000, 10.0))
    with SandboxServer(sandbox) as server:
        env = {
            **os.environ,
            **{f"NDAX_{k.upper()}": v for k, v in sandbox.credentials.items()},
            "NDAX_BASE_URL": server.base_url,
        }
        command = [sys.executable, "-m", "ndax_async.cli", "backfill", str(source)]
        command += ["--budget", redis_server.url, "--budget-limit", "2000/10"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "budget: 30 slots" in done.stdout
    assert sandbox.stats["customers"] == 30
    assert asyncio.run(zcard(redis_server)) == 30  # every attempt took its slot in Redis


def test_progress_line_shows_the_budget() -> None:
    import io

    from ndax_async import LocalBudget
    from ndax_async.bulk import BulkSummary
    from ndax_async.cli.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    budget = LocalBudget("2000/10")
    budget.stats.grants["bulk"] = 50
    budget.stats.waits["bulk"] = 3
    budget.stats.pauses = 1
    stream = Terminal()
    Progress(100, stream=stream, budget=budget).update(BulkSummary(), final=True)
    line = stream.getvalue()
    assert "/200 req/s, waits 3" in line
    assert "pauses 1, local" in line
