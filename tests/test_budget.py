"""The rate budget's rules in one process (LocalBudget, fake clock) and its seams in the client."""

from __future__ import annotations

import asyncio
import bisect
import logging

import pytest

from ndax_async import (
    AsyncClient,
    BudgetLimit,
    BudgetWait,
    ConfigurationError,
    LocalBudget,
    RateLimitError,
    RedisBudget,
    RequestTimeout,
)
from ndax_async.bulk import Bulk, Operation
from ndax_async.testing import FakeClock, Faults, Sandbox

from .helpers import customer_wire

# No margin and no smoothing unless a test is about them: the counts are exact.
FLAT = BudgetLimit(requests=100, window=10.0, margin=0, reserve=10, sub_window=10.0, smoothing=2.0)


def max_in_window(times: list[float], window: float) -> int:
    """The most grants in any half-open window ``(t - window, t]``."""
    times = sorted(times)
    return max(i + 1 - bisect.bisect_right(times, t - window) for i, t in enumerate(times))


def test_limit_defaults_parse_and_share() -> None:
    limit = BudgetLimit.parse("2000/10")
    assert (limit.requests, limit.window) == (2000, 10.0)
    assert limit.interactive_ceiling == 1980  # margin: the requests of 100 ms at 200/s
    assert BudgetLimit.parse("200/2").interactive_ceiling == 190  # 100 ms at 100/s, not 1% (2)
    assert limit.bulk_ceiling == 1950  # 1.5% reserve: bulk alone uses 97.5% of the limit
    assert limit.bulk_per_sub_window == 195  # the bulk share of the rate, per second
    share = limit.share(495)
    assert (share.interactive_ceiling, share.bulk_ceiling) == (495, 487)
    with pytest.raises(ValueError, match="2000/10"):
        BudgetLimit.parse("lots")
    with pytest.raises(ValueError, match="no room"):
        BudgetLimit(requests=10, margin=5, reserve=5)


async def test_never_more_than_the_ceiling_in_any_rolling_window() -> None:
    clock = FakeClock()
    budget = LocalBudget(FLAT, clock=clock)
    granted: dict[str, list[float]] = {"bulk": [], "interactive": []}
    for n in range(600):
        priority = "interactive" if n % 3 == 0 else "bulk"
        assert await budget.acquire(priority)
        granted[priority].append(clock.monotonic())
        clock.advance(0.01)
    every = granted["bulk"] + granted["interactive"]
    assert 90 <= max_in_window(every, 10.0) <= 100  # bulk fills its 90, interactive the reserve
    assert budget.stats.grants == {"interactive": 200, "bulk": 400}
    assert budget.stats.waits["bulk"] > 0


class StuckClock(FakeClock):
    """A fake clock whose sleeps never end: a waiter stays asleep while the test moves time."""

    async def sleep(self, seconds: float) -> None:
        await asyncio.Event().wait()


async def test_a_caller_never_queues_behind_a_sleeping_waiter() -> None:
    clock = StuckClock()
    budget = LocalBudget(BudgetLimit(requests=2, window=10.0, margin=0, reserve=1), clock=clock)
    assert await budget.acquire()
    assert await budget.acquire()
    sleeper = asyncio.create_task(budget.acquire())  # the window is full: it sleeps (for good)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not sleeper.done()
    # Not before the sleeper's slot: a caller whose deadline comes first fails at once.
    assert not await asyncio.wait_for(budget.acquire(remaining=5.0), 1.0)  # hang guard, not timing
    clock.advance(10.0)  # the window has moved on: a slot is free, the sleeper still sleeps
    assert await asyncio.wait_for(budget.acquire(remaining=5.0), 1.0)
    sleeper.cancel()


async def test_bulk_stops_at_the_reserve_and_interactive_still_gets_through() -> None:
    budget = LocalBudget(FLAT, clock=FakeClock())
    bulk = [await budget.acquire("bulk", remaining=1.0) for _ in range(95)]
    assert bulk.count(True) == 90
    assert bulk[90:] == [False] * 5
    interactive = [await budget.acquire("interactive", remaining=1.0) for _ in range(12)]
    assert interactive.count(True) == 10
    assert interactive[10:] == [False, False]
    assert budget.stats.deadline_failures == 7


async def test_bulk_is_smoothed_per_sub_window_after_a_start() -> None:
    clock = FakeClock()
    limit = BudgetLimit(requests=100, window=10.0, margin=0, reserve=10, smoothing=1.25)  # 1 s sub-window
    budget = LocalBudget(limit, clock=clock)
    times = []
    for _ in range(90):
        await budget.acquire("bulk")
        times.append(clock.monotonic())
    assert limit.bulk_per_sub_window == 12
    assert max_in_window(times, 1.0) == 12  # not all 90 in the first instant
    assert times[-1] >= 7.0


async def test_a_reported_block_pauses_every_call_and_is_reported_to_on_wait() -> None:
    clock = FakeClock()
    events: list[BudgetWait] = []
    budget = LocalBudget(FLAT, clock=clock, on_wait=events.append)
    await budget.report_block(10.0)
    assert not await budget.acquire("interactive", remaining=5.0)  # the pause outlasts the deadline
    assert await budget.acquire("interactive")
    assert clock.monotonic() >= 10.0
    assert budget.stats.pauses == 1
    assert budget.stats.blocks_reported == 1
    assert [(e.reason, e.granted) for e in events] == [("pause", False), ("pause", True)]


async def test_every_attempt_takes_a_slot_before_it_is_sent() -> None:
    clock = FakeClock()
    sandbox = Sandbox(faults=Faults(err503=0.5, seed=3), clock=clock.time)
    budget = LocalBudget(FLAT, clock=clock)
    async with sandbox.client(clock=clock, budget=budget, max_retries=10) as client:
        for n in range(10):
            await client.customers.create(customer_wire(email=f"e{n}@mail.com", id_number=f"I{n}"))
    sent = sum(sandbox.stats["requests"].values())
    assert sent > 10  # retries happened
    assert budget.stats.grants["interactive"] == sent


async def test_a_wait_for_budget_respects_the_call_deadline() -> None:
    clock = FakeClock()
    sandbox = Sandbox(clock=clock.time)
    budget = LocalBudget(BudgetLimit(requests=2, window=10.0, margin=0, reserve=1), clock=clock)
    async with sandbox.client(clock=clock, budget=budget) as client:
        await client.customers.create(customer_wire(email="a@mail.com", id_number="A"))
        await client.customers.create(customer_wire(email="b@mail.com", id_number="B"))
        with pytest.raises(RequestTimeout, match="deadline"):
            await client.customers.create(customer_wire(email="c@mail.com", id_number="C"), deadline=5.0)
    assert sum(sandbox.stats["requests"].values()) == 2  # the third was never sent
    assert clock.monotonic() < 5.0  # failed fast, did not sleep into the deadline


async def test_a_429_reaches_the_budget() -> None:
    clock = FakeClock()
    sandbox = Sandbox(faults=Faults(err429_bare=1.0), clock=clock.time)
    budget = LocalBudget(FLAT, clock=clock)
    async with sandbox.client(clock=clock, budget=budget, max_retries=0) as client:
        with pytest.raises(RateLimitError):
            await client.customers.create(customer_wire())
    assert budget.stats.blocks_reported == 1
    assert budget.log.blocked_until >= clock.monotonic() + 9.0


async def test_priority_per_call_per_client_and_bulk_runs() -> None:
    clock = FakeClock()
    sandbox = Sandbox(clock=clock.time)
    budget = LocalBudget(FLAT, clock=clock)
    async with sandbox.client(clock=clock, budget=budget) as client:
        await client.customers.create(customer_wire(email="a@mail.com", id_number="A"))
        await client.customers.create(customer_wire(email="b@mail.com", id_number="B"), priority="bulk")
        await client.participants.get_by_email("a@mail.com", priority="bulk")
        operations = [
            Operation(key=f"k{n}", op="create", data=customer_wire(email=f"k{n}@mail.com", id_number=f"K{n}"))
            for n in range(5)
        ]
        summary = await Bulk(client, concurrency=2).run_all(operations)
        assert summary.failed == 0
    assert budget.stats.grants == {"interactive": 1, "bulk": 7}
    async with sandbox.client(clock=clock, budget=budget, budget_priority="bulk") as client:
        await client.participants.get_by_email("a@mail.com")
    assert budget.stats.grants["bulk"] == 8
    with pytest.raises(ConfigurationError, match="priority"):
        sandbox.client(budget=budget, budget_priority="urgent")  # type: ignore[arg-type]


async def test_from_env_reads_the_budget_and_never_shows_its_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "NDAX_API_KEY": "k",
        "NDAX_API_SECRET": "c2VjcmV0",
        "NDAX_PASSPHRASE": "p",
        "NDAX_BUDGET_URL": "redis://:hunter2@127.0.0.1:1/0",
        "NDAX_BUDGET_LIMIT": "1000/5",
        "NDAX_BUDGET_MEMBERS": "5",
    }
    client = AsyncClient.from_env(env)
    try:
        budget = client.budget
        assert isinstance(budget, RedisBudget)
        assert (budget.limit.requests, budget.limit.window) == (1000, 5.0)
        assert budget.fallback_limit.requests == (1000 - 20) // 5  # margin: 100 ms at 200/s
        assert "hunter2" not in repr(budget)
        assert "***" in repr(budget)
        with caplog.at_level(logging.DEBUG, logger="ndax_async"):
            assert await budget.acquire()  # nothing listens on port 1: the local share, no exception
        assert budget.stats.mode == "local"
        assert "hunter2" not in caplog.text
        assert "unreachable" in caplog.text
    finally:
        await client.aclose()
    with pytest.raises(ConfigurationError) as info:
        AsyncClient.from_env({**env, "NDAX_BUDGET_URL": "http://:hunter2@example.com"})
    assert "hunter2" not in str(info.value)
