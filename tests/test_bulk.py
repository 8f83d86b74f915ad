"""The bulk engine: streamed, bounded, rate-limited, resumable, exactly once, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ndax_async import AsyncClient, RetryEvent, RetryQuota
from ndax_async._sending.limits import RateLimiter
from ndax_async.bulk import Bulk, Operation, RowError
from ndax_async.testing import FakeClock, Faults, Sandbox

from .bulk_helpers import FAST, batch, creates, operations
from .helpers import customer_wire, minor_wire


async def test_mixed_run_resolves_custodians_and_reports_every_failure(tmp_path: Path) -> None:
    sandbox = Sandbox(faults=Faults(drop_after=0.1, err503=0.1, seed=1))
    rows = batch(30)
    late = minor_wire(email="late@mail.com", id_number="L", custodian_participant_code=None)
    rows.insert(
        0, {"op": "create_minor", "key": "early-minor", "data": {**late, "custodian_key": "late-custodian"}}
    )
    rows.append(
        {"op": "create", "key": "late-custodian", "data": customer_wire(email="lc@mail.com", id_number="LC")}
    )
    rows.append({"op": "create", "key": "invalid", "data": customer_wire(email="nope", zip="1")})
    orphan = minor_wire(email="o@mail.com", id_number="O", custodian_participant_code=None)
    rows.append({"op": "create_minor", "key": "orphan", "data": {**orphan, "custodian_key": "no-such-row"}})
    items: list[Operation | RowError] = list(operations(rows))
    items.append(RowError(line=999, reason="malformed JSON"))
    async with sandbox.client(retry_policy=FAST, max_retries=8) as client:
        engine = Bulk(client, concurrency=8, rate=None, journal=tmp_path / "j.sqlite")
        results = [r async for r in engine.run(items)]
    by_key = {r.key: r for r in results}
    assert len(results) == len(items)  # nothing dropped
    assert by_key["early-minor"].outcome == "succeeded"
    assert by_key["invalid"].reason == "validation"
    assert "email" in str(by_key["invalid"].error)
    assert "zip" in str(by_key["invalid"].error)
    assert by_key["orphan"].reason == "custodian"
    assert by_key[None].reason == "bad_row"
    assert by_key[None].line == 999
    summary = engine.summary
    assert (summary.succeeded, summary.failed) == (len(items) - 3, 3)
    assert summary.retries > 0
    stats = sandbox.stats
    assert stats["creations"] == summary.succeeded
    assert stats["duplicates"] == stats["conflicts"] == stats["duplicate_payloads"] == 0
    minors = [p for p in sandbox.participants.values() if p["_kind"] == "minor"]
    custodians = {p["custodian_participant_code"] for p in minors}
    assert custodians <= set(sandbox.participants)


@pytest.mark.parametrize("journaled", [False, True])
async def test_a_key_used_twice_is_refused_not_sent_twice(journaled: bool, tmp_path: Path) -> None:
    """A key is one logical operation: its second use in a run fails as a bad row, is
    never sent, and leaves the first use's journal entry alone."""
    sandbox = Sandbox(faults=Faults(latency=0.002))  # so uses of one key can overlap
    rows = creates(12)
    same = dict(rows[0])  # the very same row again, at once
    changed = {**rows[5], "data": customer_wire(email="other@mail.com", id_number="OTHER")}  # new payload
    invalid = {**rows[7], "data": customer_wire(email="nope")}
    rows[1:1] = [same]
    rows += [changed, invalid, {"op": "update", "key": "c3", "participant_code": "X", "data": {}}]
    journal = tmp_path / "j.sqlite" if journaled else None
    items: list[Operation | RowError] = list(operations(rows))
    items.append(RowError(line=99, reason="malformed JSON", key="c9"))
    async with sandbox.client() as client:
        engine = Bulk(client, concurrency=8, rate=None, journal=journal)
        results = [r async for r in engine.run(items)]
    assert len(results) == len(items)  # nothing dropped
    refused = sorted((r.line or 0, r.key) for r in results if r.outcome == "failed")
    assert [key for _, key in refused] == ["c0", "c5", "c7", "c3", "c9"]  # by line: each second use
    for result in (r for r in results if r.outcome == "failed"):
        assert result.reason == "bad_row"
        assert "more than once" in str(result.error)
    assert engine.summary.succeeded == 12
    assert sandbox.stats["creations"] == 12
    assert sandbox.stats["duplicates"] == sandbox.stats["duplicate_payloads"] == 0
    if journaled:
        with contextlib.closing(sqlite3.connect(tmp_path / "j.sqlite")) as db:
            states = dict(db.execute("SELECT key, state FROM operations").fetchall())
            first_line = db.execute("SELECT line FROM operations WHERE key = 'c5'").fetchone()[0]
        assert set(states.values()) == {"succeeded"}
        assert len(states) == 12
        assert first_line == 7  # c5's first use (line 7, after the inserted copy of c0), not its second
        second_of_c5 = next(r for r in results if r.key == "c5" and r.outcome == "failed")
        assert "first on line 7" in str(second_of_c5.error)


async def test_an_input_stopped_by_a_base_exception_stops_the_run_with_it() -> None:
    """Not only an Exception: whatever ends the input (read ahead, in a task of its own)
    reaches the caller, after the items before it."""

    class Stop(BaseException):
        pass

    def stopping() -> Iterator[Operation]:
        yield from operations(creates(3))
        raise Stop

    sandbox = Sandbox()
    reported = []

    async def consume() -> None:
        async with sandbox.client() as client:
            async for result in Bulk(client, concurrency=1, rate=None).run(stopping()):
                reported.append(result)

    task = asyncio.create_task(consume())
    await asyncio.wait([task], timeout=30)  # a hang, not slowness, fails this
    assert task.done(), "the run hung instead of stopping"
    assert isinstance(task.exception(), Stop)
    assert [r.outcome for r in reported] == ["succeeded"] * 3


async def test_items_that_are_not_operations_are_reported_and_the_run_goes_on() -> None:
    sandbox = Sandbox()
    items: list[Any] = [None, *operations(creates(2)), {"op": "create"}, "c9"]
    async with sandbox.client() as client:
        results = [r async for r in Bulk(client, concurrency=2, rate=None).run(items)]
    assert len(results) == len(items)  # None did not end the input early
    refused = sorted(str(r.error) for r in results if r.outcome == "failed")
    assert refused == [f"not an Operation or RowError: {name}" for name in ("NoneType", "dict", "str")]
    assert all(r.reason == "bad_row" for r in results if r.outcome == "failed")
    assert sandbox.stats["creations"] == 2


async def test_an_input_that_raises_stops_the_run_with_its_error() -> None:
    def broken() -> Iterator[Operation]:
        yield from operations(creates(5))
        raise OSError("the input file went away")

    sandbox = Sandbox()
    async with sandbox.client() as client:
        engine = Bulk(client, concurrency=2, rate=None)
        task = asyncio.create_task(engine.run_all(broken()))
        await asyncio.wait([task], timeout=30)  # a hang, not slowness, fails this
        assert task.done(), "the run hung instead of stopping"
        with pytest.raises(OSError, match="went away"):
            task.result()
    assert sandbox.stats["creations"] <= 5


async def test_runs_of_one_engine_take_turns() -> None:
    """A second run of an engine while its first is going is refused before it sends
    anything (it would reset the first one's summary, limits and journal); after the
    first ends, the engine runs again."""
    sandbox = Sandbox()
    rows = creates(6)
    async with sandbox.client() as client:
        engine = Bulk(client, concurrency=2, rate=None)
        async with contextlib.aclosing(engine.run(operations(rows[:3]))) as first:
            assert (await anext(first)).outcome == "succeeded"
            with pytest.raises(RuntimeError, match="running another run"):
                await engine.run_all(operations(rows[3:]))
            assert len([r async for r in first]) == 2  # the first run goes on, untouched
        assert engine.summary.succeeded == 3
        assert (await engine.run_all(operations(rows[3:]))).succeeded == 3
    assert sandbox.stats["creations"] == 6


async def test_a_key_used_twice_in_a_resumed_run_is_skipped_once_then_refused(tmp_path: Path) -> None:
    """A key an earlier run completed is skipped on its first use in the new run and
    refused as a second use after that, as in a fresh run (whether or not both
    uses reach the journal in the same commit)."""
    path = tmp_path / "j.sqlite"
    sandbox = Sandbox()
    rows = creates(3)
    async with sandbox.client() as client:
        await Bulk(client, rate=None, journal=path).run_all(operations(rows))
        resumed = [rows[1], rows[0], rows[0], rows[2], rows[0]]
        engine = Bulk(client, concurrency=4, rate=None, journal=path)
        results = [r async for r in engine.run(operations(resumed))]
    by_line = {r.line: r for r in results}
    assert [by_line[n].outcome for n in (1, 2, 4)] == ["skipped"] * 3
    for line in (3, 5):
        assert (by_line[line].outcome, by_line[line].reason) == ("failed", "bad_row")
        assert "first on line 2" in str(by_line[line].error)
    assert sandbox.stats["creations"] == 3


async def test_an_interrupted_run_resumes_exactly_once(tmp_path: Path) -> None:
    sandbox = Sandbox(faults=Faults(drop_after=0.15, seed=2))
    journal = tmp_path / "j.sqlite"
    rows = batch(60)
    async with sandbox.client(retry_policy=FAST, max_retries=8) as client:
        engine = Bulk(client, concurrency=8, rate=None, journal=journal)
        seen = 0
        async with contextlib.aclosing(engine.run(operations(rows))) as results:
            async for _ in results:
                seen += 1
                if seen == 25:
                    break  # the worker stops mid-run with operations in flight
        assert sandbox.stats["creations"] < len(rows)
        engine = Bulk(client, concurrency=8, rate=None, journal=journal)
        summary = await engine.run_all(operations(rows))
    assert summary.failed == 0
    assert summary.skipped >= 25
    assert summary.skipped + summary.succeeded == len(rows)
    stats = sandbox.stats
    assert stats["creations"] == len(rows)
    assert stats["duplicates"] == stats["conflicts"] == stats["duplicate_payloads"] == 0


@pytest.mark.parametrize("journaled", [False, True])
async def test_a_run_lets_the_event_loop_turn_after_each_operation(journaled: bool, tmp_path: Path) -> None:
    """The sandbox answers at once, so nothing in an operation need wait; each worker still
    lets the loop turn after each operation, so at most one operation per worker runs
    between two turns of the loop, and other tasks (a web app's) get theirs."""
    sandbox = Sandbox()
    sent_by_turn: list[int] = []

    async def ticker() -> None:
        while True:
            sent_by_turn.append(sandbox.stats["creations"])
            await asyncio.sleep(0)  # once per turn of the loop

    async with sandbox.client() as client:
        engine = Bulk(client, concurrency=32, rate=None, journal=tmp_path / "j.sqlite" if journaled else None)
        ticking = asyncio.create_task(ticker())
        summary = await engine.run_all(operations(creates(400)))
        ticking.cancel()
    assert summary.succeeded == 400
    per_turn = [after - before for before, after in itertools.pairwise(sent_by_turn)]
    assert sum(per_turn) > 300  # the ticker ran throughout
    assert max(per_turn) <= engine.concurrency


async def test_a_slow_input_is_sent_as_it_arrives() -> None:
    """Reading ahead never holds an operation back waiting for the ones after it."""
    sandbox = Sandbox()
    first_done = asyncio.Event()

    async def live() -> AsyncIterator[Operation]:
        rows = list(operations(creates(2)))
        yield rows[0]
        await first_done.wait()  # the next row arrives only once the first is done
        yield rows[1]

    results = []

    async def consume() -> None:
        async with sandbox.client() as client:
            async for result in Bulk(client, rate=None, journal=":memory:").run(live()):
                results.append(result)
                first_done.set()

    task = asyncio.create_task(consume())
    await asyncio.wait([task], timeout=30)  # a hang, not slowness, fails this
    assert task.done(), "the first row waited for the second"
    task.result()
    assert [r.outcome for r in results] == ["succeeded", "succeeded"]


async def test_retry_budget_fails_fast_and_records(tmp_path: Path) -> None:
    sandbox = Sandbox(faults=Faults(err503=1.0))
    async with sandbox.client(retry_policy=FAST, max_retries=50) as client:
        engine = Bulk(client, concurrency=4, rate=None, retry_quota=RetryQuota(capacity=20, retry_cost=5))
        results = [r async for r in engine.run(operations(creates(10)))]
    assert len(results) == 10
    assert all(r.outcome == "failed" and r.reason == "server" for r in results)
    assert engine.summary.retries == 4  # 20 tokens / 5 per retry, then every operation fails fast
    assert engine.retry_quota.exhausted >= 10


async def test_rate_limiter_spaces_requests_without_blocking() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate=10, burst=2, clock=clock)
    starts = []
    for _ in range(6):
        await limiter.acquire()
        starts.append(round(clock.monotonic(), 6))
    assert starts == [0.0, 0.0, 0.1, 0.2, 0.3, 0.4]


@pytest.mark.parametrize("journaled", [False, True])
async def test_engine_limits_rate_and_concurrency(journaled: bool, tmp_path: Path) -> None:
    """``concurrency`` requests in flight, reached and never exceeded, with or without a journal."""
    sandbox = Sandbox()
    in_flight = peak = 0
    transport = sandbox.transport()

    class Counting(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.001)
            try:
                return await transport.handle_async_request(request)
            finally:
                in_flight -= 1

    async with AsyncClient(**sandbox.credentials, transport=Counting()) as client:
        journal = tmp_path / "j.sqlite" if journaled else None
        engine = Bulk(client, concurrency=5, rate=2000, journal=journal)
        summary = await engine.run_all(operations(creates(40)))
    assert summary.succeeded == 40
    assert peak == 5


async def test_two_runs_share_a_client_without_touching_it() -> None:
    """Each run's retry budget and retry counts are its own; the client's hook sees
    every retry, its own budget is untouched, and nothing on it is swapped."""
    sandbox = Sandbox(faults=Faults(err503=0.3, seed=5))
    seen: list[RetryEvent] = []
    client_quota = RetryQuota()
    options: dict[str, Any] = {"retry_policy": FAST, "max_retries": 10, "on_retry": seen.append}
    async with sandbox.client(retry_quota=client_quota, **options) as client:
        transport = client._transport
        before = (transport.limiter, transport.quota, transport.on_retry)
        first, second = (Bulk(client, concurrency=4, rate=None, retry_quota=RetryQuota()) for _ in range(2))
        rows = creates(40)

        async def results(engine: Bulk, part: list[dict[str, Any]]) -> list[Any]:
            collected = []
            async for result in engine.run(operations(part)):
                assert (transport.limiter, transport.quota, transport.on_retry) == before
                collected.append(result)
            return collected

        got = await asyncio.gather(results(first, rows[:20]), results(second, rows[20:]))
    for engine, collected in zip((first, second), got, strict=True):
        ids = {result.request_id for result in collected}
        assert engine.summary.succeeded == 20
        assert engine.summary.retries == sum(event.request_id in ids for event in seen) > 0
    assert len(seen) == first.summary.retries + second.summary.retries
    assert client_quota.tokens == client_quota.capacity


async def test_a_run_adds_its_rate_limit_to_the_clients_own() -> None:
    """The client's ``rate_limit`` still spaces a run's requests (the run's own is off here)."""
    clock = FakeClock()
    sandbox = Sandbox(clock=clock.time)
    async with sandbox.client(rate_limit=10, clock=clock) as client:
        summary = await Bulk(client, concurrency=4, rate=None).run_all(operations(creates(21)))
    assert summary.succeeded == 21
    assert clock.monotonic() == pytest.approx(2.0)  # 21 requests at 10/s, the first one free


MEMORY_PROBE = """
import asyncio, resource, sys, httpx
from ndax_async import AsyncClient
from ndax_async.bulk import Bulk, Operation

class Instant(httpx.AsyncBaseTransport):
    async def handle_async_request(self, request):
        return httpx.Response(200, content=b'{"message":{"participant_code":"P1"}}')

def updates(count):
    for n in range(count):
        yield Operation(key=f"u{n}", op="update", participant_code=f"P{n}", line=n + 1,
                        data={"platform_updated_at": 1700000000000 + n, "email": f"u{n}@mail.com"})

async def main(count, journal):
    async with AsyncClient(api_key="k", api_secret="c2VjcmV0", passphrase="p", transport=Instant()) as client:
        summary = await Bulk(client, concurrency=32, rate=None, journal=journal).run_all(updates(count))
    assert summary.succeeded == count, summary

asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_memory_stays_bounded_for_a_streamed_run(tmp_path: Path) -> None:
    """Peak RSS of a streamed 12,000-operation run (journal on) is that of a 2,000-operation run."""

    def peak_kib(count: int) -> int:
        journal = str(tmp_path / f"{count}.sqlite")
        done = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, str(count), journal],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout.split()[-1])

    small, large = peak_kib(2_000), peak_kib(12_000)
    assert large - small < 3 * 1024, f"peak RSS grew {large - small} KiB for 10,000 more operations"


async def test_a_runs_own_rate_limit_waits_on_the_clock_it_is_given() -> None:
    clock = FakeClock()
    sandbox = Sandbox(clock=clock.time)
    async with sandbox.client(clock=clock) as client:
        engine = Bulk(client, concurrency=4, rate=10, clock=clock)
        summary = await engine.run_all(operations(creates(21)))
    assert summary.succeeded == 21
    assert clock.monotonic() == pytest.approx(2.0)  # 21 requests at 10/s, the first one free
