"""The bulk journal: recorded before sending and after, resumable, stopped for good when it cannot write."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ndax_async import JournalError
from ndax_async.bulk import Bulk
from ndax_async.bulk import journal_sqlite as journal_module
from ndax_async.bulk.journal_sqlite import SqliteJournal as Journal
from ndax_async.testing import Faults, Sandbox

from .bulk_helpers import FAST, creates, operations
from .helpers import customer_wire


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[Journal]:
    """An open journal at ``tmp_path / "j.sqlite"``."""
    opened = await Journal(tmp_path / "j.sqlite").open()
    try:
        yield opened
    finally:
        await opened.close()


async def test_journal_gives_a_key_an_earlier_run_left_to_the_first_of_two_claims(
    journal: Journal,
) -> None:
    earlier = journal.begin_run()
    await journal.claim("k", "create", 1, "rid-1", "hash-1")
    await journal.finished("k", "create", 1, succeeded=True, participant_code="P1")
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


async def test_an_outcome_is_committed_before_finished_returns(journal: Journal) -> None:
    """finished() returns once the outcome is on disk; a later read sees it, and the
    request_id and payload hash the claim recorded are kept."""
    journal.begin_run()
    assert await journal.claim("k", "create", 1, "rid-1", "hash-1") is None
    await journal.finished("k", "create", 1, succeeded=True, participant_code="P1", attempts=1)
    entry = await journal.get("k")
    assert entry is not None
    assert (entry.state, entry.participant_code, entry.request_id) == ("succeeded", "P1", "rid-1")
    await journal.finished("k", "create", 1, succeeded=False, reason="server", error="boom")
    with contextlib.closing(sqlite3.connect(journal.path)) as db:
        rows = db.execute("SELECT state, reason, request_id, payload_hash FROM operations").fetchall()
    assert rows == [("failed", "server", "rid-1", "hash-1")]


def _fail_from_call(number: int, patch: pytest.MonkeyPatch) -> None:
    """Make the journal's ``number``-th write (a claim or a recorded state) and every later
    one fail as SQLite does on a full disk."""
    calls = 0

    def failing(work: Any) -> Any:
        def run(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls >= number:
                raise sqlite3.OperationalError("database or disk is full")
            return work(*args)

        return run

    patch.setattr(journal_module, "_claim", failing(journal_module._claim))
    patch.setattr(journal_module, "_write", failing(journal_module._write))


async def test_a_journal_that_cannot_write_stops_the_run_and_a_rerun_is_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sandbox = Sandbox()
    rows = creates(300)
    path = tmp_path / "j.sqlite"
    journal = await Journal(path).open()
    _fail_from_call(41, monkeypatch)  # two writes an operation: about 20 operations in
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
        assert "disk is full" in str(error)
        assert isinstance(error.__cause__, sqlite3.OperationalError)
        monkeypatch.undo()
        with pytest.raises(JournalError):  # stopped for good, not half-working
            await journal.get("c0")
        await journal.close()
        assert 0 < len(reported) < len(rows)
        assert all(r.outcome == "succeeded" for r in reported)

        summary = await Bulk(client, concurrency=4, rate=None, journal=path).run_all(operations(rows))
    assert summary.failed == 0
    assert summary.succeeded + summary.skipped == len(rows)
    assert sandbox.stats["creations"] == len(rows)  # what the first run sent is replayed, not applied again
    assert sandbox.stats["duplicates"] == sandbox.stats["duplicate_payloads"] == 0


async def test_every_reported_result_is_committed_when_it_is_reported(tmp_path: Path) -> None:
    """Recorded after: a result reaches the caller only once its outcome is on disk, so a
    run killed right after reporting it never sends it again."""
    sandbox = Sandbox(faults=Faults(err500_after=0.2, seed=3))
    path = tmp_path / "j.sqlite"
    rows = creates(40)
    async with sandbox.client(retry_policy=FAST) as client:
        engine = Bulk(client, concurrency=4, rate=None, journal=path)
        async for result in engine.run(operations(rows)):
            with contextlib.closing(sqlite3.connect(path)) as db:
                query = "SELECT state, participant_code FROM operations WHERE key = ?"
                state, code = db.execute(query, (result.key,)).fetchone()
            assert state == result.outcome
            assert code == result.participant_code
    assert engine.summary.failed > 0  # both outcomes were seen


async def test_a_journal_passed_unopened_is_opened_and_left_open(tmp_path: Path) -> None:
    sandbox = Sandbox()
    journal = Journal(tmp_path / "j.sqlite")
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


async def test_resent_operation_reuses_the_journaled_request_id(tmp_path: Path) -> None:
    """Even in random-id mode, an operation in flight when a run died is resent with its recorded id."""
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
