"""The headline: a backfill split into 3 shards at once on one PostgreSQL journal, each shard
SIGKILLed at random moments 3 times and restarted from a fresh directory, under light faults."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ndax_async.bulk import shard_of
from ndax_async.testing import Faults, Sandbox, SandboxServer

from .bulk_helpers import batch
from .helpers import customer_wire
from .pg_fixtures import fresh_database
from .servers import PostgresServer

pytestmark = [pytest.mark.shards, pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")]

CUSTOMERS = 1500
SHARDS = 3


def _rows() -> list[dict[str, Any]]:
    """1,500 creates, 500 minors keyed to custodians (mostly in other shards), 1,500 updates."""
    rows = batch(CUSTOMERS, minors_every=3)
    rows += [
        {
            "op": "update",
            "key": f"u{n}",
            "participant_code": f"P{n + 1:07d}",  # customers that existed before the backfill
            "data": {"platform_updated_at": 1700000000000 + n, "first_name": "New", "last_name": f"Name{n}"},
        }
        for n in range(CUSTOMERS)
    ]
    return rows


def test_three_shards_killed_and_restarted_apply_every_row_exactly_once(
    tmp_path: Path, postgres: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from ndax_async.cli import main

    url = asyncio.run(fresh_database(postgres))
    rows = _rows()
    minors = [row for row in rows if row["op"] == "create_minor"]
    assert (
        sum(shard_of(r["key"], SHARDS) != shard_of(r["data"]["custodian_key"], SHARDS) for r in minors) > 300
    )
    source = tmp_path / "changes.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    sandbox = Sandbox(faults=Faults(drop_after=0.01, drop_before=0.01, err503=0.01, seed=21))
    for n in range(CUSTOMERS):
        sandbox.add_participant(
            {**customer_wire(email=f"pre{n}@mail.com"), "participant_code": f"P{n + 1:07d}"}
        )
    sandbox._codes = (f"N{n:07d}" for n in range(1, 10**7))  # new participants get other codes
    rng = random.Random(21)
    folders = iter(range(10**6))

    def start(shard: int) -> tuple[subprocess.Popen[str], Path]:
        """The shard's command in a fresh working directory with its own copy of the input."""
        folder = tmp_path / f"run{next(folders)}"
        folder.mkdir()
        shutil.copy(source, folder / source.name)
        command = [
            sys.executable, "-m", "ndax_async.cli", "backfill", source.name,
            "--journal", url, "--shard", f"{shard}/{SHARDS}", "--rate", "0",
            "--concurrency", "16", "--lease", "2", "--custodian-wait", "60",
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        return process, folder

    with SandboxServer(sandbox) as server:
        env = {
            **os.environ,
            **{f"NDAX_{k.upper()}": v for k, v in sandbox.credentials.items()},
            "NDAX_BASE_URL": server.base_url,
        }
        kills = 0
        for _ in range(3):  # three rounds: all shards at once, each killed at its own moment
            running = [(start(shard)[0], rng.uniform(0.8, 2.5)) for shard in range(SHARDS)]
            began = time.monotonic()
            for process, at in sorted(running, key=lambda pair: pair[1]):
                try:
                    process.wait(timeout=max(0.0, at - (time.monotonic() - began)))
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    kills += 1
                process.wait()
                assert process.stdout is not None
                process.stdout.close()
        finals: dict[int, subprocess.CompletedProcess[str]] = {}
        pending = list(range(SHARDS))
        for _ in range(3):  # a row can use up its retries under faults: the CLI says to run again
            started = {shard: start(shard) for shard in pending}
            for shard, (process, folder) in started.items():
                out, _ = process.communicate(timeout=120)
                finals[shard] = subprocess.CompletedProcess(process.args, process.returncode, out)
                results = (folder / f"{source.name}.shard-{shard}-of-{SHARDS}.results.jsonl").read_text()
                failed = [r for r in map(json.loads, results.splitlines()) if r["outcome"] == "failed"]
                assert all(r["reason"] in ("transport", "server") for r in failed), failed[:3]
            pending = [shard for shard, done in finals.items() if done.returncode != 0]
            if not pending:
                break
    assert kills >= 6, f"only {kills} of 9 runs were killed before they finished: the test proved little"
    for shard, done in finals.items():
        assert done.returncode == 0, f"shard {shard}: {done.stdout}"
    stats = sandbox.stats
    assert stats["creations"] == CUSTOMERS + len(minors)
    assert stats["updates"] == CUSTOMERS
    assert stats["duplicates"] == stats["conflicts"] == stats["duplicate_payloads"] == 0
    by_email = {p["email"]: p for p in sandbox.participants.values()}
    for minor in minors:
        custodian = by_email[f"{minor['data']['custodian_key']}@mail.com"]
        assert by_email[minor["data"]["email"]]["custodian_participant_code"] == custodian["participant_code"]
    for n in range(CUSTOMERS):
        assert sandbox.participants[f"P{n + 1:07d}"]["last_name"] == f"Name{n}"
    capsys.readouterr()
    assert main(["backfill", str(tmp_path / "anywhere" / source.name), "--journal", url, "--report"]) == 0
    assert f"run 'changes.jsonl': succeeded {len(rows)}\n" in capsys.readouterr().out
