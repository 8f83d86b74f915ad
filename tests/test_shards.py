"""Shards, run names and leases in the bulk engine: stable hashing, other shards' custodians,
two engines on one journal, a dead holder's rows taken over."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from ndax_async.bulk import Bulk, Shard, SqliteJournal, make_journal, shard_of
from ndax_async.testing import FakeClock, Faults, Sandbox, SandboxServer

from .bulk_helpers import batch, creates, operations
from .helpers import minor_wire


def test_shard_hashing_is_stable() -> None:
    """SHA-256 of the key's UTF-8, first 8 bytes big-endian, mod N: fixed values, so a
    change of hash (or Python's per-process hash()) breaks this test."""
    assert [shard_of(key, 3) for key in ["c0", "c1", "c2", "c3", "c4", "alice@example.com", "é"]] == [
        0, 2, 0, 2, 1, 1, 0,
    ]  # fmt: skip
    assert shard_of("c0", 7) == 0x122C597083BD438B % 7 == 6
    assert shard_of("anything", 1) == 0
    assert Shard.parse("1/3") == Shard(1, 3)
    assert Shard(1, 3).owns("c4")
    assert str(Shard(2, 3)) == "2/3"
    for bad in ("3/3", "1", "a/3", "-1/3", "0/0"):
        with pytest.raises(ValueError, match="I/N"):
            Shard.parse(bad)


async def test_shards_split_a_run_and_share_custodians_through_the_journal(journal_url: str) -> None:
    """Three shards of one run at once on one journal: every row is run by exactly one
    shard, and minors whose custodian is another shard's wait for it in the journal."""
    rows = batch(60, minors_every=2)
    sandbox = Sandbox(faults=Faults(latency=0.001))
    async with sandbox.client() as client:
        engines = [
            Bulk(client, rate=None, journal=journal_url, run="split", shard=Shard(i, 3), concurrency=4)
            for i in range(3)
        ]
        summaries = await asyncio.gather(*(engine.run_all(operations(rows)) for engine in engines))
    assert [s.failed for s in summaries] == [0, 0, 0]
    assert sum(s.succeeded for s in summaries) == len(rows)
    assert all(s.succeeded > 0 for s in summaries)
    assert sandbox.stats["creations"] == len(rows)
    assert sandbox.stats["duplicates"] == sandbox.stats["replays"] == 0
    by_email = {p["email"]: p for p in sandbox.participants.values()}
    for n in range(0, 60, 2):  # each minor under its own custodian
        assert (
            by_email[f"m{n}@mail.com"]["custodian_participant_code"]
            == by_email[f"c{n}@mail.com"]["participant_code"]
        )
    crossing = sum(shard_of(f"m{n}", 3) != shard_of(f"c{n}", 3) for n in range(0, 60, 2))
    assert crossing > 10  # most minors waited on another shard


async def test_a_minor_whose_custodian_never_appears_fails_after_the_wait(tmp_path: Path) -> None:
    """The custodian's key belongs to another shard that never runs: the minor polls the
    journal with backoff for custodian_wait (on the injected clock) and is then reported
    failed with reason custodian, saying the key never appeared."""
    minor = minor_wire(email="m@mail.com", id_number="M", custodian_participant_code=None)
    key = next(k for k in (f"k{n}" for n in range(100)) if shard_of(k, 2) == 1)
    mine = next(k for k in (f"m{n}" for n in range(100)) if shard_of(k, 2) == 0)
    rows = [{"op": "create_minor", "key": mine, "data": {**minor, "custodian_key": key}}]
    clock = FakeClock()
    sandbox = Sandbox()
    async with sandbox.client() as client:
        engine = Bulk(
            client,
            rate=None,
            journal=tmp_path / "j.sqlite",
            shard=Shard(0, 2),
            custodian_wait=300,
            clock=clock,
        )
        (result,) = [r async for r in engine.run(operations(rows))]
    assert (result.outcome, result.reason) == ("failed", "custodian")
    assert f"custodian's key {key!r} never appeared in the journal within 300s" in str(result.error)
    assert 300 <= clock.monotonic() < 310
    assert 5 < len(clock.sleeps) < 200  # polled with backoff, not once and not in a tight loop
    assert sandbox.stats["creations"] == 0


async def test_two_engines_on_one_shard_never_send_a_row_at_once(journal_url: str) -> None:
    """Two processes started on the same shard by mistake (two engines, two journal
    objects): each row is sent by one of them; the other waits while it is held and then
    finds it done."""
    rows = creates(40)
    sandbox = Sandbox(faults=Faults(latency=0.05))  # sends outlast claims: the runs overlap on rows
    journals = [await make_journal(journal_url, run="same").open() for _ in range(2)]  # both ready
    async with sandbox.client() as client:
        engines = [Bulk(client, rate=None, journal=journal, concurrency=8) for journal in journals]
        first, second = await asyncio.gather(*(engine.run_all(operations(rows)) for engine in engines))
    for journal in journals:
        await journal.close()
    assert first.failed == second.failed == 0
    assert first.succeeded + second.succeeded == len(rows)
    assert first.skipped + second.skipped == len(rows)
    assert sandbox.stats["creations"] == len(rows)
    assert sandbox.stats["replays"] == 0  # no row was sent by both


async def test_a_dead_holders_rows_are_taken_over_after_the_lease(tmp_path: Path) -> None:
    """A holder claimed rows and died (never finished, never renews): a new run waits for
    the lease to expire (on the injected clock), then resends them with the recorded ids."""
    clock = FakeClock()
    path = tmp_path / "j.sqlite"
    rows = creates(5)
    dead = await SqliteJournal(path, run="r", lease=60, clock=clock.time).open()
    dead.begin_run()
    recorded = {}
    sandbox = Sandbox()
    async with sandbox.client() as client:
        for op in operations(rows):
            prepared = client.prepare_write("create", op.data)
            recorded[op.key] = prepared.request_id
            await dead.claim(op.key, "create", op.line, prepared.request_id, prepared.payload_hash)
        await dead.close()
        journal = SqliteJournal(path, run="r", lease=60, clock=clock.time)
        engine = Bulk(client, rate=None, journal=journal, clock=clock)
        results = [r async for r in engine.run(operations(rows))]
        await journal.close()
    assert all(r.outcome == "succeeded" and r.resent for r in results)
    assert {r.key: r.request_id for r in results} == recorded
    assert clock.monotonic() >= 60  # it waited out the lease
    assert sandbox.stats["creations"] == 5


def test_a_run_resumes_by_name_from_another_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same input under another directory, with the same journal, is the same run; another
    --run name is another run."""
    from ndax_async.cli import main

    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    source = first / "ops.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in creates(6)))
    shutil.copy(source, second / "ops.jsonl")
    journal = str(tmp_path / "shared.sqlite")
    sandbox = Sandbox()
    with SandboxServer(sandbox) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in sandbox.credentials.items():
            patch.setenv(f"NDAX_{name.upper()}", value)
        patch.setenv("NDAX_BASE_URL", server.base_url)
        assert main(["backfill", str(source), "--journal", journal, "--rate", "0"]) == 0
        assert main(["backfill", str(second / "ops.jsonl"), "--journal", journal, "--rate", "0"]) == 0
        out = capsys.readouterr().out
        assert "skipped (already done) 6" in out
        assert "run: ops.jsonl" in out
        assert main(["backfill", str(source), "--journal", journal, "--rate", "0", "--run", "other"]) == 0
        assert "succeeded 6" in capsys.readouterr().out  # a run of its own (the server replays)
    assert sandbox.stats["creations"] == 6
    assert (
        main(["backfill", str(tmp_path / "elsewhere" / "ops.jsonl"), "--journal", journal, "--report"]) == 0
    )
    assert "run 'ops.jsonl': succeeded 6" in capsys.readouterr().out


async def test_a_journal_object_brings_its_own_run_name(tmp_path: Path) -> None:
    journal = make_journal(tmp_path / "j.sqlite", run="mine")
    sandbox = Sandbox()
    async with sandbox.client() as client:
        with pytest.raises(ValueError, match="differs"):
            Bulk(client, journal=journal, run="other")
        assert Bulk(client, journal=journal).run_name == "mine"
        assert Bulk(client, journal=tmp_path / "x.sqlite").run_name == "default"
