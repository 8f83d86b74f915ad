"""The journal's contract, run against both stores: SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from ndax_async import JournalError
from ndax_async._redact import redact_url
from ndax_async.bulk import Journal, PostgresJournal, SqliteJournal, make_journal
from ndax_async.bulk.journal import SCHEMA_VERSION


def other(journal: Journal, url: str, *, run: str = "test", lease: float = 30.0) -> Journal:
    """Another journal object on the same store (as another process would open it)."""
    return make_journal(url, run=run, lease=lease)


async def test_a_new_row_is_claimed_once_and_its_outcome_kept(journal: Journal) -> None:
    run = journal.begin_run()
    first, second = await asyncio.gather(
        journal.claim("k", "create", 1, "rid-1", "hash-1"),
        journal.claim("k", "create", 2, "rid-2", "hash-2"),
    )
    assert first is None  # the first claim made the row
    assert second is not None
    assert (second.line, second.request_id, second.state, second.run_id) == (1, "rid-1", "sending", run)
    assert not second.held  # this run's own row
    await journal.finished("k", "create", 1, succeeded=True, participant_code="P1", attempts=2)
    entry = await journal.get("k")
    assert entry is not None
    assert (entry.state, entry.participant_code, entry.request_id, entry.attempts) == (
        "succeeded",
        "P1",
        "rid-1",
        2,
    )
    assert await journal.counts() == {"succeeded": 1}
    assert await journal.failures() == []


async def test_failures_counts_and_existing(journal: Journal) -> None:
    journal.begin_run()
    await journal.claim("a", "create", 1, "r", "h")
    await journal.finished("a", "create", 1, succeeded=False, reason="server", error="boom")
    await journal.finished("b", "create", 2, succeeded=True, participant_code="P2", existing=True)
    await journal.finished("c", "update", 3, succeeded=True, participant_code="P3")
    assert await journal.counts() == {"failed": 1, "existing": 1, "succeeded": 1}
    (failure,) = await journal.failures()
    assert (failure.key, failure.reason, failure.error, failure.request_id) == ("a", "server", "boom", "r")
    entry = await journal.get("b")
    assert entry is not None
    assert entry.existing
    assert entry.state == "succeeded"


async def test_rows_belong_to_their_run_name(journal: Journal, journal_url: str) -> None:
    journal.begin_run()
    await journal.finished("k", "create", 1, succeeded=True, participant_code="P1")
    elsewhere = await other(journal, journal_url, run="another").open()
    try:
        elsewhere.begin_run()
        assert await elsewhere.get("k") is None
        assert await elsewhere.counts() == {}
        assert await elsewhere.claim("k", "create", 1, "r2", "h2") is None  # a row of its own
    finally:
        await elsewhere.close()
    same = await other(journal, journal_url, run="test").open()
    try:
        entry = await same.get("k")
        assert entry is not None
        assert entry.participant_code == "P1"
    finally:
        await same.close()


async def test_a_claim_another_run_holds_is_refused_until_it_finishes(
    journal: Journal, journal_url: str
) -> None:
    journal.begin_run()
    assert await journal.claim("k", "create", 1, "rid", "hash") is None
    second = await other(journal, journal_url).open()
    try:
        second.begin_run()
        held = await second.claim("k", "create", 1, "rid", "hash")
        assert held is not None
        assert held.held
        assert held.holder == journal.run_id
        entry = await journal.get("k")
        assert entry is not None
        assert (entry.run_id, entry.holder) == (journal.run_id, journal.run_id)  # left alone
        await journal.finished("k", "create", 1, succeeded=True, participant_code="P1")
        done = await second.claim("k", "create", 1, "rid", "hash")
        assert done is not None
        assert (done.held, done.state, done.participant_code) == (False, "succeeded", "P1")
    finally:
        await second.close()


async def test_a_failed_row_is_taken_by_one_claimer(journal: Journal, journal_url: str) -> None:
    journal.begin_run()
    await journal.claim("k", "create", 1, "rid", "hash")
    await journal.finished("k", "create", 1, succeeded=False, reason="server")
    journal.end_run()
    a, b = other(journal, journal_url), other(journal, journal_url)
    await a.open()
    await b.open()
    try:
        a.begin_run()
        b.begin_run()
        got = await asyncio.gather(
            a.claim("k", "create", 1, "x", "hash"), b.claim("k", "create", 1, "y", "hash")
        )
        assert all(entry is not None for entry in got)
        taken = [entry for entry in got if entry is not None and not entry.held]
        assert len(taken) == 1  # the other one found it held by the taker
        assert taken[0].request_id == "rid"  # resent with the recorded id
        entry = await a.get("k")
        assert entry is not None
        assert entry.state == "sending"
    finally:
        await a.close()
        await b.close()


async def test_a_dead_holders_row_is_claimable_after_its_lease(journal_url: str) -> None:
    """A holder that never renews (killed) loses its rows once the lease expires; one that
    renews keeps them. SQLite runs on an injected clock; PostgreSQL on its server's, with a
    short lease."""
    now = [1000.0]
    if journal_url.startswith("postgresql://"):
        make = lambda: PostgresJournal(journal_url, lease=0.4)  # noqa: E731
    else:
        make = lambda: SqliteJournal(journal_url, lease=10, clock=lambda: now[0])  # noqa: E731
    holder, claimer = await make().open(), await make().open()
    try:
        holder.begin_run()
        claimer.begin_run()
        await holder.claim("k", "create", 1, "rid", "hash")
        await holder.claim("kept", "create", 2, "rid2", "hash2")
        first = await claimer.claim("k", "create", 1, "mine", "hash")
        assert first is not None
        assert first.held
        for _ in range(3):  # the holder renews "kept" only, past three lease lengths
            if isinstance(holder, SqliteJournal):
                now[0] += 6
            else:
                await asyncio.sleep(0.25)
            await holder.renew()
        entry = await claimer.claim("kept", "create", 2, "mine", "hash2")
        assert entry is not None
        assert entry.held  # renewed: still the holder's
        for _ in range(200):  # the holder stops renewing (it died): wait for the lease to lapse
            entry = await claimer.claim("k", "create", 1, "mine", "hash")
            if entry is None or not entry.held:
                break
            now[0] += 1
            await asyncio.sleep(0.05)
        assert entry is not None
        assert (entry.state, entry.request_id) == ("sending", "rid")  # taken: resend with the recorded id
        now_held = await holder.get("k")
        assert now_held is not None
        assert now_held.holder == claimer.run_id
        assert now_held.held  # the old holder now sees it held by the claimer
    finally:
        await holder.close()
        await claimer.close()


async def test_a_newer_schema_is_refused(journal_url: str) -> None:
    first = await make_journal(journal_url).open()
    await first.close()
    if journal_url.startswith("postgresql://"):
        import asyncpg

        connection = await asyncpg.connect(journal_url)
        await connection.execute("UPDATE ndax_journal.schema_version SET version = $1", SCHEMA_VERSION + 1)
        await connection.close()
    else:
        with contextlib.closing(sqlite3.connect(journal_url)) as db:
            db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
            db.commit()
    with pytest.raises(JournalError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
        await make_journal(journal_url).open()


async def test_an_unreachable_postgres_is_a_journal_error_without_the_password() -> None:
    from .servers import free_port

    url = f"postgresql://user:s3cret@127.0.0.1:{free_port()}/db"
    with pytest.raises(JournalError, match="could not be opened") as caught:
        await make_journal(url).open()
    assert "s3cret" not in str(caught.value)
    assert redact_url(url) == url.replace("s3cret", "***")


def test_the_factory_picks_the_store_by_url(tmp_path: Path) -> None:
    assert isinstance(make_journal("postgresql://u@h/db", run="r"), PostgresJournal)
    assert isinstance(make_journal("postgres://u@h/db"), PostgresJournal)
    sqlite = make_journal(tmp_path / "j.sqlite", run="r", lease=5)
    assert isinstance(sqlite, SqliteJournal)
    assert (sqlite.run, sqlite.lease) == ("r", 5)
