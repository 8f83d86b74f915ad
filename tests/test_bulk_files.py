"""Bulk input files and the backfill command: rows and line numbers, dry run, report, kills and resumes."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ndax_async.bulk import Operation, RowError
from ndax_async.bulk.rows import count_rows, read_operations
from ndax_async.testing import Faults, Sandbox, SandboxServer

from .bulk_helpers import batch, creates
from .helpers import customer_wire, default_sigint, minor_wire


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
            # A short lease: each next run waits for the killed run's leases to expire (3 s, not 30).
            killed = [*command, "--lease", "3"]
            process = subprocess.Popen(killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
        # A short lease: the rerun waits for the stopped run's leases to expire (3 s, not 30).
        # SIGINT at its default, as in a terminal, even when this suite runs as a background job.
        with default_sigint():
            process = subprocess.Popen(
                [*command, "--lease", "3"], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
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
    assert (
        "succeeded 2, existing (reconciled) 0, skipped (already done) 0, failed 2 (bad_row 1, validation 1)"
        in out
    )
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


async def test_csv_rows_may_hold_newlines_anywhere_and_keep_their_file_line_numbers(tmp_path: Path) -> None:
    """One csv reader over the whole file: a quoted cell with newlines is one row wherever it
    falls (here across every 512-line mark, the old reader's batch), and each row's line is
    the file line it starts on."""
    header = "op,key,participant_code,platform_updated_at,address_one,city"
    lines = [header]
    starts: dict[str, int] = {}
    multi_line = '"12 Main Road\nFlat 3\nBlock ""B"""'
    for n in range(1200):
        start = starts[f"u{n}"] = len(lines) + 1
        across = (start - 1) // 512 != (start + 1) // 512  # its 3 lines span a 512-line mark
        address = multi_line if n % 7 == 3 or across else "1 Road"
        lines.extend(f"update,u{n},P{n},1700000000000,{address},Pune".split("\n"))
    path = tmp_path / "ops.csv"
    path.write_text("\n".join(lines) + "\n")
    assert len(lines) > 3 * 512

    items = [item async for item in read_operations(path)]
    assert [(item.line, item.reason) for item in items if isinstance(item, RowError)] == []
    assert len(items) == 1200
    assert {item.key: item.line for item in items} == starts
    multi = [item for item in items if isinstance(item, Operation) and "\n" in item.data["address_one"]]
    assert len(multi) >= 170
    assert multi[0].data["address_one"] == '12 Main Road\nFlat 3\nBlock "B"'
    assert count_rows(path) == 1200


def test_dry_run_makes_the_checks_a_real_run_makes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An update whose participant_code the run refuses (``bad/code``), a key used twice and
    a bad pinned request_id are invalid in the dry run too; a minor naming its custodian by
    key is checked as the run checks it."""
    from ndax_async.cli import main

    update = {"platform_updated_at": 1700000000000, "first_name": "Jo", "last_name": "Smyth"}
    rows = [
        *creates(2),
        {"op": "update", "key": "u1", "participant_code": "bad/code", "data": update},
        {"op": "update", "key": "u2", "participant_code": "GOOD01", "data": update},
        {"op": "create", "key": "c0", "data": customer_wire(email="again@mail.com", id_number="A")},
        {"op": "update", "key": "u3", "participant_code": "GOOD02", "data": {**update, "request_id": "nope"}},
        {
            "op": "create_minor",
            "key": "m1",
            "data": {**minor_wire(custodian_participant_code=None), "custodian_key": "c1"},
        },
    ]
    source = tmp_path / "ops.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert main(["backfill", str(source), "--dry-run"]) == 1
    out = capsys.readouterr().out
    assert "line 3 key u1: participant_code: must be URL-safe" in out
    assert "line 5 key c0: key 'c0' is used more than once" in out
    assert "line 6 key u3: request_id: must be a version-4 UUID" in out
    assert "dry run: 7 rows checked, 4 valid, 3 invalid; nothing sent" in out

    sandbox = Sandbox()  # the real run refuses the very same rows
    with SandboxServer(sandbox) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in sandbox.credentials.items():
            patch.setenv(f"NDAX_{name.upper()}", value)
        patch.setenv("NDAX_BASE_URL", server.base_url)
        main(["backfill", str(source), "--rate", "0"])
    results = [json.loads(line) for line in (tmp_path / "ops.jsonl.results.jsonl").read_text().splitlines()]
    refused = {r["key"] for r in results if r["reason"] in ("validation", "bad_row")}
    assert refused == {"u1", "c0", "u3"}
