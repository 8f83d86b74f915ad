"""The bulk engine: streamed, bounded, rate-limited, resumable, exactly once, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ndax_async import AsyncClient, JournalError, RetryEvent, RetryPolicy, RetryQuota
from ndax_async._sending.limits import RateLimiter
from ndax_async.bulk import Bulk, Operation, RowError
from ndax_async.bulk import engine as bulk
from ndax_async.bulk import journal as _journal
from ndax_async.bulk.journal import Journal, WriterKind
from ndax_async.bulk.rows import read_operations
from ndax_async.testing import FakeClock, Faults, Sandbox, SandboxServer

from .helpers import customer_wire, minor_wire

FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.01, rate_limit_pause=0.01)


def creates(customers: int) -> list[dict[str, Any]]:
    return [row for row in batch(customers) if row["op"] == "create"]


def batch(customers: int, minors_every: int = 3) -> list[dict[str, Any]]:
    """JSON-Lines-shaped rows: creates, minors naming custodians by key, updates."""
    rows: list[dict[str, Any]] = []
    for n in range(customers):
        rows.append(
            {"op": "create", "key": f"c{n}", "data": customer_wire(email=f"c{n}@mail.com", id_number=f"I{n}")}
        )
        if n % minors_every == 0:
            minor = minor_wire(email=f"m{n}@mail.com", id_number=f"M{n}", custodian_participant_code=None)
            rows.append({"op": "create_minor", "key": f"m{n}", "data": {**minor, "custodian_key": f"c{n}"}})
    return rows


def operations(rows: list[dict[str, Any]]) -> Iterator[Operation]:
    for line, row in enumerate(rows, 1):
        data = dict(row["data"])
        yield Operation(
            key=row["key"],
            op=row["op"],
            data=data,
            custodian_key=data.pop("custodian_key", None),
            participant_code=row.get("participant_code"),
            line=line,
        )


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


@pytest.fixture(params=["process", "thread"])
async def journal(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Journal]:
    """An open journal at ``tmp_path / "j.sqlite"``, on each kind of writer."""
    opened = await Journal(tmp_path / "j.sqlite", writer=request.param).open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_journal_resolves_two_claims_of_one_key_in_one_batch(journal: Journal) -> None:
    run = journal.begin_run()
    first, second = await asyncio.gather(
        journal.claim("k", "create", 1, "rid-1", "hash-1"),
        journal.claim("k", "create", 2, "rid-2", "hash-2"),
    )
    assert first is None  # the first claim made the row
    assert second is not None
    assert (second.line, second.request_id, second.state, second.run_id) == (1, "rid-1", "sending", run)
    assert (await journal.get("k")) == second


async def test_journal_gives_a_key_an_earlier_run_left_to_the_first_claim_of_a_batch(
    journal: Journal,
) -> None:
    earlier = journal.begin_run()
    await journal.claim("k", "create", 1, "rid-1", "hash-1")
    journal.finished("k", "create", 1, succeeded=True, participant_code="P1")
    journal.end_run()
    now = journal.begin_run()
    first, second = await asyncio.gather(
        journal.claim("k", "create", 4, "rid-1", "hash-1"),
        journal.claim("k", "create", 6, "rid-1", "hash-1"),
    )
    assert first is not None
    assert second is not None
    assert (first.state, first.run_id) == ("succeeded", earlier)  # the first use: skip it
    assert (second.run_id, second.line) == (now, 4)  # the second: this run's, since line 4
    entry = await journal.get("k")
    assert entry is not None
    assert (entry.state, entry.participant_code, entry.run_id, entry.line) == ("succeeded", "P1", now, 4)


async def test_an_outcome_nobody_waited_for_is_seen_by_a_later_read(journal: Journal) -> None:
    """finished() queues the outcome without waiting; a read queued after it, even in
    the same commit, sees it, and drain() returns once it is on disk."""
    journal.begin_run()
    assert await journal.claim("k", "create", 1, "rid-1", "hash-1") is None
    journal.finished("k", "create", 1, succeeded=True, participant_code="P1", attempts=1)
    entry = await journal.get("k")  # in the same batch as the outcome
    assert entry is not None
    assert (entry.state, entry.participant_code, entry.request_id) == ("succeeded", "P1", "rid-1")
    journal.finished("k", "create", 1, succeeded=False, reason="server", error="boom")
    await journal.drain()
    with contextlib.closing(sqlite3.connect(journal.path)) as db:
        assert db.execute("SELECT state, reason FROM operations").fetchall() == [("failed", "server")]


async def _journal_failing_at(path: Path, commit: int, how: str, patch: pytest.MonkeyPatch) -> Journal:
    """A journal whose ``commit``-th transaction fails: on a full disk (its thread writer's
    SQLite raises), or because its writer process is killed."""
    from ndax_async.bulk import journal_writer as _journal_writer

    journal = await Journal(path, writer="thread" if how == "disk full" else "process").open()
    commits = 0
    if how == "disk full":
        real = _journal_writer.commit

        def commit_or_fail(*args: Any) -> Any:
            nonlocal commits
            commits += 1
            if commits == commit:
                raise sqlite3.OperationalError("database or disk is full")
            return real(*args)

        patch.setattr(_journal_writer, "commit", commit_or_fail)
    else:
        writer = journal._writer
        assert writer is not None
        real_call = writer.call

        def call_or_kill(*request: Any) -> Any:
            nonlocal commits
            commits += request[0] == "commit"
            if commits == commit:
                process = getattr(writer, "_process", None)
                assert process is not None
                process.kill()
            return real_call(*request)

        patch.setattr(writer, "call", call_or_kill)
    return journal


@pytest.mark.parametrize("how", ["disk full", "writer process killed"])
async def test_a_journal_that_cannot_write_stops_the_run_and_a_rerun_is_exactly_once(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = Sandbox()
    rows = creates(300)  # several claim batches (see CLAIM_BATCH), so the 4th commit is mid-run
    path = tmp_path / "j.sqlite"
    journal = await _journal_failing_at(path, 4, how, monkeypatch)
    reported = []
    async with sandbox.client() as client:
        engine = Bulk(client, concurrency=4, rate=None, journal=journal)

        async def consume() -> None:
            async for result in engine.run(operations(rows)):
                reported.append(result)

        task = asyncio.create_task(consume())
        await asyncio.wait([task], timeout=30)  # a hang, not slowness, fails this
        assert task.done(), "the run hung instead of stopping"
        error = task.exception()
        assert isinstance(error, JournalError)
        if how == "disk full":
            assert "disk is full" in str(error)
            assert isinstance(error.__cause__, sqlite3.OperationalError)
        else:
            assert "writer process exited" in str(error)
        with pytest.raises(JournalError):  # stopped for good, not half-working
            await journal.get("c0")
        await journal.close()
        monkeypatch.undo()
        assert 0 < len(reported) < len(rows)
        assert all(r.outcome == "succeeded" for r in reported)

        summary = await Bulk(client, concurrency=4, rate=None, journal=path).run_all(operations(rows))
    assert summary.failed == 0
    assert summary.succeeded + summary.skipped == len(rows)
    assert sandbox.stats["creations"] == len(rows)  # what the first run sent is replayed, not applied again
    assert sandbox.stats["duplicates"] == sandbox.stats["duplicate_payloads"] == 0


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


async def test_journal_falls_back_to_a_thread_where_no_process_can_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def cannot(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("this event loop has no subprocess support")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", cannot)
    journal = await Journal(tmp_path / "j.sqlite").open()
    try:
        journal.begin_run()
        assert await journal.claim("k", "create", 1, "rid", "hash") is None
        assert (await journal.counts()) == {"sending": 1}
        assert type(journal._writer).__name__ == "_ThreadWriter"
    finally:
        await journal.close()
    with pytest.raises(JournalError, match="cannot start the journal's writer process"):
        await Journal(tmp_path / "j.sqlite", writer="process").open()


async def test_the_writer_process_folder_shadows_no_standard_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child imports the writer from its folder, put last on the path: a module there
    named like a standard one (``ndax_async`` has ``_json.py``) must not replace it."""
    from ndax_async.bulk import journal_writer as _journal_writer

    folder = tmp_path / "package"
    folder.mkdir()
    copy = shutil.copy(_journal_writer.__file__, folder / "journal_writer.py")
    (folder / "struct.py").write_text("raise ImportError('the standard struct was shadowed')\n")
    monkeypatch.setattr(_journal_writer, "__file__", str(copy))
    journal = await Journal(tmp_path / "j.sqlite", writer="process").open()
    try:
        journal.begin_run()
        assert await journal.claim("k", "create", 1, "rid", "hash") is None
        assert (await journal.counts()) == {"sending": 1}
    finally:
        await journal.close()


async def test_a_writer_process_that_answers_garbage_stops_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ndax_async.bulk import journal_writer as _journal_writer

    impostor = tmp_path / "writer.py"
    impostor.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(_journal_writer.__file__).parent)!r})\n"
        "from journal_writer import frame\n"
        "def main():\n"
        "    sys.stdout.buffer.write(frame((True, None)) + b'\\x00\\x00\\x00\\x03???')\n"
        "    sys.stdout.buffer.flush()\n"
        "    sys.stdin.buffer.read()\n"
    )
    monkeypatch.setattr(_journal_writer, "__file__", str(impostor))
    journal = await Journal(tmp_path / "j.sqlite", writer="process").open()
    try:
        journal.begin_run()
        with pytest.raises(JournalError, match="stopped answering"):  # and no hang (the guard below)
            await asyncio.wait_for(journal.claim("k", "create", 1, "rid", "hash"), timeout=30)
    finally:
        await journal.close()


async def test_ctrl_c_is_left_to_the_parent_not_the_writer_process(tmp_path: Path) -> None:
    """SIGINT reaches a terminal's whole process group; the writer ignores it and goes on,
    so an interrupted run can still commit its last outcomes."""
    journal = await Journal(tmp_path / "j.sqlite", writer="process").open()
    try:
        journal.begin_run()
        process = getattr(journal._writer, "_process", None)
        assert process is not None
        process.send_signal(signal.SIGINT)
        assert await journal.claim("k", "create", 1, "rid", "hash") is None
        assert (await journal.counts()) == {"sending": 1}
        assert process.returncode is None
    finally:
        await journal.close()


def test_the_writer_process_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    """No orphan: the child sees its input close when the parent dies, and exits."""
    script = (
        "import asyncio, sys\n"
        "from ndax_async.bulk.journal import Journal\n"
        "async def main():\n"
        "    journal = await Journal(sys.argv[1], writer='process').open()\n"
        "    print(journal._writer._process.pid, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "j.sqlite")], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    with parent.stdout:
        writer_pid = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    for _ in range(200):  # up to 10 s: a hang guard, not a timing assertion
        try:
            os.kill(writer_pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(writer_pid, os.WNOHANG)
        time.sleep(0.05)
    raise AssertionError(f"the writer process {writer_pid} outlived its parent")


@pytest.mark.parametrize("writer", ["process", "thread"])
async def test_a_journal_passed_unopened_is_opened_and_left_open(tmp_path: Path, writer: WriterKind) -> None:
    sandbox = Sandbox()
    journal = Journal(tmp_path / "j.sqlite", writer=writer)
    with pytest.raises(JournalError, match="not open"):
        await journal.get("c0")
    with pytest.raises(JournalError, match="not open"):
        await journal.counts()
    async with sandbox.client() as client:
        summary = await Bulk(client, rate=None, journal=journal).run_all(operations(creates(5)))
    try:
        assert summary.succeeded == 5
        assert journal.is_open
        assert (await journal.counts()) == {"succeeded": 5}
    finally:
        await journal.close()
    assert not journal.is_open


async def test_runs_sharing_a_journal_take_turns(tmp_path: Path) -> None:
    """A second run on a journal another run is using is refused before it sends anything;
    once the first has ended, the journal serves the next run."""
    later = [
        {"op": "create", "key": f"later{n}", "data": customer_wire(email=f"l{n}@mail.com", id_number=f"L{n}")}
        for n in range(20)
    ]
    sandbox = Sandbox()
    journal = await Journal(tmp_path / "j.sqlite").open()
    try:
        async with sandbox.client() as client:
            first = Bulk(client, rate=None, journal=journal).run(operations(creates(20)))
            assert (await anext(first)).outcome == "succeeded"  # the first run is under way
            with pytest.raises(JournalError, match="in use by another run"):
                await Bulk(client, rate=None, journal=journal).run_all(operations(later))
            rest = [result async for result in first]
            assert len(rest) == 19
            assert all(result.outcome == "succeeded" for result in rest)
            again = await Bulk(client, rate=None, journal=journal).run_all(operations(later))
        assert again.succeeded == 20
        assert sandbox.stats["customers"] == 40  # nothing of the refused run was sent
        assert (await journal.counts()) == {"succeeded": 40}
    finally:
        await journal.close()


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


async def test_a_journal_from_before_run_ids_is_migrated_and_resumed(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE operations (key TEXT PRIMARY KEY, op TEXT NOT NULL, line INTEGER, request_id TEXT,"
            " payload_hash TEXT, state TEXT NOT NULL, participant_code TEXT, reason TEXT, error TEXT,"
            " attempts INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL)"
        )
        db.execute(
            "INSERT INTO operations VALUES"
            " ('c0', 'create', 1, 'r', 'h', 'succeeded', 'OLD001', NULL, NULL, 1, 0)"
        )
        db.commit()
    sandbox = Sandbox()
    async with sandbox.client() as client:
        results = [r async for r in Bulk(client, rate=None, journal=path).run(operations(creates(3)))]
    outcomes = {r.key: (r.outcome, r.participant_code) for r in results}
    assert outcomes["c0"] == ("skipped", "OLD001")
    assert outcomes["c1"][0] == outcomes["c2"][0] == "succeeded"
    assert sandbox.stats["creations"] == 2


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
async def test_a_run_lets_the_event_loop_turn_every_few_operations(journaled: bool, tmp_path: Path) -> None:
    """The sandbox answers at once, so nothing in an operation waits; a run still starts
    at most UNWAITING_PER_TURN of them per turn of the loop, and other tasks get theirs."""
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
    assert max(per_turn) <= bulk.UNWAITING_PER_TURN


async def test_operations_that_wait_are_not_held_back() -> None:
    """An operation that let the loop turn (here each request waits one turn, as a real
    one waits for the network) is followed at once by the next: 32 workers finish 640
    operations in a few dozen turns, not the 160 that pacing would take."""
    sandbox = Sandbox()

    class OneTurn(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            await asyncio.sleep(0)
            return await sandbox.transport().handle_async_request(request)

    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    async with AsyncClient(**sandbox.credentials, transport=OneTurn()) as client:
        engine = Bulk(client, concurrency=32, rate=None)
        ticking = asyncio.create_task(ticker())
        summary = await engine.run_all(operations(creates(640)))
        ticking.cancel()
    assert summary.succeeded == 640
    assert turns < 640 // bulk.UNWAITING_PER_TURN // 2


async def test_a_journaled_run_claims_ahead_in_few_commits(tmp_path: Path) -> None:
    """Operations are read and claimed ahead of the workers, CLAIM_BATCH at a time, and
    outcomes ride along: a few large commits, not one per turn of the workers."""
    sandbox = Sandbox()
    journal = await Journal(tmp_path / "j.sqlite").open()
    writer = journal._writer
    assert writer is not None
    commits = []
    real_call = writer.call

    def counting_call(*request: Any) -> Any:
        if request[0] == "commit":
            commits.append(len(request[3]))  # the claims in it
        return real_call(*request)

    writer.call = counting_call  # type: ignore[method-assign]
    try:
        async with sandbox.client() as client:
            summary = await Bulk(client, concurrency=8, rate=None, journal=journal).run_all(
                operations(creates(640))
            )
    finally:
        await journal.close()
    assert summary.succeeded == 640
    assert sum(commits) == 640
    # the first worker's claim (with what was read by then), 64 at a time, the rest, the last outcomes
    assert len(commits) <= 640 // bulk.CLAIM_BATCH + 3


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


async def test_an_outcome_nobody_waits_for_is_committed_soon_and_at_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes need no later commit to reach the disk: they start one of their own after
    OUTCOMES_WAIT, and close() commits what is still queued."""
    monkeypatch.setattr(_journal, "OUTCOMES_WAIT", 0.01)
    path = tmp_path / "j.sqlite"
    journal = await Journal(path).open()
    journal.begin_run()
    journal.finished("k1", "create", 1, succeeded=True, participant_code="P1")

    def states() -> dict[str, str]:
        with contextlib.closing(sqlite3.connect(path)) as db:
            return dict(db.execute("SELECT key, state FROM operations").fetchall())

    for _ in range(500):  # a hang, not slowness, fails this
        if states():
            break
        await asyncio.sleep(0.01)
    assert states() == {"k1": "succeeded"}
    monkeypatch.setattr(_journal, "OUTCOMES_WAIT", 3600.0)
    journal.finished("k2", "create", 2, succeeded=False, reason="server", error="boom")
    await journal.close()
    assert states() == {"k1": "succeeded", "k2": "failed"}


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


async def test_files_stream_jsonl_and_csv_with_line_numbers(tmp_path: Path) -> None:
    jsonl = tmp_path / "ops.jsonl"
    good = {"op": "create", "key": "a", "data": customer_wire()}
    lines = [
        json.dumps(good),
        "",
        "{oops",
        json.dumps({"op": "fly", "key": "b", "data": {}}),
        json.dumps({"op": "create", "data": {}}),
        json.dumps({"op": "update", "key": "c", "data": {}}),
        json.dumps({"op": "create", "key": "d", "data": "x"}),
    ]
    jsonl.write_text("\n".join(lines) + "\n")
    items = [item async for item in read_operations(jsonl)]
    assert isinstance(items[0], Operation)
    assert [(i.line, type(i).__name__) for i in items] == [
        (1, "Operation"),
        (3, "RowError"),
        (4, "RowError"),
        (5, "RowError"),
        (6, "RowError"),
        (7, "RowError"),
    ]
    csv_file = tmp_path / "ops.csv"
    header = (
        "op,key,participant_code,custodian_key,first_name,last_name,platform_updated_at,prefunded,metadata"
    )
    csv_file.write_text(
        header + '\nupdate,u1,XYZ456,,Jo,Smyth,1700000000000,,\ncreate,c1,,,,,,true,"{""a"": 1}"\nbad,row\n'
    )
    items = [item async for item in read_operations(csv_file)]
    assert isinstance(items[0], Operation)
    assert items[0].data == {"first_name": "Jo", "last_name": "Smyth", "platform_updated_at": "1700000000000"}
    assert items[0].participant_code == "XYZ456"
    assert isinstance(items[1], Operation)
    assert items[1].data == {"prefunded": True, "metadata": {"a": 1}}
    assert isinstance(items[2], RowError)
    assert items[2].line == 4


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


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_killed_backfill_resumes_exactly_once(tmp_path: Path) -> None:
    """A backfill process killed with SIGKILL at random points, several times, then finished."""
    rows = batch(150, minors_every=3)
    rows += [
        {
            "op": "update",
            "key": f"u{n}",
            "participant_code": f"P{n + 1:07d}",  # the sandbox's codes for the first creates
            "data": {"platform_updated_at": 1700000000000 + n, "first_name": "New", "last_name": f"Name{n}"},
        }
        for n in range(0, 40)
    ]
    source = tmp_path / "ops.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sandbox = Sandbox(faults=Faults(drop_after=0.05, drop_before=0.05, err503=0.05, seed=9))
    # The update rows name participant codes, so their customers must exist first.
    for n in range(40):
        sandbox.add_participant(
            {**customer_wire(email=f"pre{n}@mail.com"), "participant_code": f"P{n + 1:07d}"}
        )
    sandbox._codes = (f"N{n:07d}" for n in range(1, 10**7))  # new customers get other codes
    rng = random.Random(4)
    with SandboxServer(sandbox) as server:
        env = {
            **os.environ,
            **{f"NDAX_{k.upper()}": v for k, v in sandbox.credentials.items()},
            "NDAX_BASE_URL": server.base_url,
        }
        command = [
            sys.executable,
            "-m",
            "ndax_async.cli",
            "backfill",
            str(source),
            "--concurrency",
            "8",
            "--rate",
            "100",
        ]
        kills = 0
        for _ in range(4):
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                process.wait(timeout=rng.uniform(0.6, 1.6))
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
        results_file = tmp_path / "ops.jsonl.results.jsonl"
        for _ in range(3):
            final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
            # With 15% of requests faulted, a row can still use up its retries (about 1 run
            # in 10); the CLI says to run the same command again, which resends it with its
            # request_id. Only such failures get another run.
            failed = [json.loads(line) for line in results_file.read_text().splitlines()]
            failed = [r for r in failed if r["outcome"] == "failed"]
            if final.returncode != 1 or any(r["reason"] not in ("transport", "server") for r in failed):
                break
    assert kills >= 2, "the runs finished before they could be killed; the test proved nothing"
    assert final.returncode == 0, final.stdout + final.stderr
    stats = sandbox.stats
    creates = sum(1 for row in rows if row["op"] != "update")
    assert stats["creations"] == creates
    assert stats["updates"] == 40
    assert stats["duplicates"] == stats["conflicts"] == stats["duplicate_payloads"] == 0
    results = [json.loads(line) for line in results_file.read_text().splitlines()]
    assert len(results) == len(rows)
    assert all(r["outcome"] in ("succeeded", "skipped") for r in results)


@pytest.mark.skipif(sys.platform == "win32", reason="process groups")
def test_ctrl_c_stops_a_backfill_cleanly_and_it_resumes_exactly_once(tmp_path: Path) -> None:
    """Ctrl+C (SIGINT to the terminal's process group, journal writer included) stops the
    run with KeyboardInterrupt, not a journal error, after committing every outcome it
    reported; the next run finishes exactly once."""
    rows = creates(300)
    source = tmp_path / "ops.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sandbox = Sandbox(faults=Faults(latency=0.002))
    with SandboxServer(sandbox) as server:
        env = {
            **os.environ,
            **{f"NDAX_{k.upper()}": v for k, v in sandbox.credentials.items()},
            "NDAX_BASE_URL": server.base_url,
        }
        command = [sys.executable, "-m", "ndax_async.cli", "backfill", str(source), "--rate", "200"]
        process = subprocess.Popen(
            command, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
        )
        results = tmp_path / "ops.jsonl.results.jsonl"
        for _ in range(600):  # until it is mid-run (a hang guard, not a timing assertion)
            if sandbox.stats["creations"] >= 50:  # the sandbox's count: results are written in batches
                break
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
        assert "KeyboardInterrupt" in stderr
        assert "JournalError" not in stderr
        assert sandbox.stats["creations"] < len(rows), "Ctrl+C came too late; the test proved nothing"
        reported = [json.loads(line) for line in results.read_text().splitlines()]
        with contextlib.closing(sqlite3.connect(tmp_path / "ops.jsonl.journal.sqlite")) as db:
            states = dict(db.execute("SELECT key, state FROM operations").fetchall())
        assert reported
        uncommitted = [
            (r["key"], states.get(r["key"])) for r in reported if states.get(r["key"]) != "succeeded"
        ]
        assert not uncommitted, uncommitted[:5]  # each reported outcome committed
        final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stdout + final.stderr
    assert sandbox.stats["creations"] == len(rows)
    assert sandbox.stats["duplicates"] == sandbox.stats["duplicate_payloads"] == 0


def test_backfill_cli_dry_run_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ndax_async.cli import main

    source = tmp_path / "ops.jsonl"
    rows = creates(3)
    rows[1]["data"]["email"] = "broken"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows) + "{oops\n")
    assert main(["backfill", str(source), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "line 2 key c1: email: not a well-formed email address" in out
    assert "line 4 key None: malformed JSON" in out
    assert "dry run: 4 rows checked, 2 valid, 2 invalid; nothing sent" in out

    sandbox = Sandbox()
    with SandboxServer(sandbox) as server:
        env = {f"NDAX_{k.upper()}": v for k, v in sandbox.credentials.items()}
        env["NDAX_BASE_URL"] = server.base_url
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            assert main(["backfill", str(source), "--rate", "0"]) == 1
    out = capsys.readouterr().out
    assert "succeeded 2, skipped (already done) 0, failed 2 (bad_row 1, validation 1)" in out
    assert main(["backfill", str(source), "--report"]) == 1
    out = capsys.readouterr().out
    assert "failed 1, succeeded 2" in out  # the malformed row has no key to journal under
    assert "line 2 key c1: failed validation" in out
    assert sandbox.stats["creations"] == 2

    unwritable = tmp_path / "no-such-folder" / "j.sqlite"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        assert main(["backfill", str(source), "--journal", str(unwritable)]) == 2
    out = capsys.readouterr().out
    assert "stopped: the journal" in out
    assert "could not be opened" in out
    assert "run the same command again to resume" in out
    assert sandbox.stats["creations"] == 2


async def test_resent_operation_reuses_the_journaled_request_id(tmp_path: Path) -> None:
    """Even in random-id mode, an operation in flight when a run died is resent with its recorded id."""
    from ndax_async.bulk.journal import Journal

    sandbox = Sandbox()
    row = creates(1)[0]
    recorded = "0f3c2a1e-0000-4000-8000-00000000abcd"
    async with sandbox.client(request_ids="random") as client:
        prepared = client.prepare_write("create", row["data"])
        journal = await Journal(tmp_path / "j.sqlite").open()
        await journal.sending(row["key"], "create", 1, recorded, prepared.payload_hash)
        await journal.close()
        engine = Bulk(client, rate=None, journal=tmp_path / "j.sqlite")
        (result,) = [r async for r in engine.run(operations([row]))]
    assert result.outcome == "succeeded"
    assert result.resent
    assert result.request_id == recorded
    assert sandbox.stats["creations"] == 1
