"""Reconcile in bulk: creates applied before under foreign request ids are reported existing,
and the minors and updates keyed to them go on."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from ndax_async.bulk import Bulk, make_journal
from ndax_async.testing import Faults, Sandbox, SandboxServer

from .bulk_helpers import batch, operations


def _already_applied(sandbox: Sandbox, customers: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows for ``customers`` customers (with minors) of which every create was applied
    before, by an older integration under random ids, plus an update of each; the codes."""
    rows = batch(customers, minors_every=2)
    codes = {}
    for row in rows:
        if row["op"] == "create":
            record = sandbox.apply("create", row["data"], request_id=str(uuid.uuid4()))
            codes[row["key"]] = str(record["participant_code"])
    rows += [
        {
            "op": "update",
            "key": f"u{n}",
            "participant_code": codes[f"c{n}"],
            "data": {"platform_updated_at": 1700000000000 + n, "first_name": "New", "last_name": f"N{n}"},
        }
        for n in range(customers)
    ]
    return rows, codes


async def test_a_backfill_over_customers_created_before_reports_them_existing(journal_url: str) -> None:
    sandbox = Sandbox(faults=Faults(drop_after=0.05, seed=5))
    rows, codes = _already_applied(sandbox, 20)
    url = journal_url
    async with sandbox.client(max_retries=8) as client:
        engine = Bulk(client, rate=None, journal=url, run="old", reconcile=True)
        results = {r.key: r async for r in engine.run(operations(rows))}
        lookups = sandbox.stats["requests"]["get_by_email"]
        rerun = Bulk(client, rate=None, journal=url, run="old", reconcile=True)
        again = await rerun.run_all(operations(rows))
    summary = engine.summary
    assert (summary.existing, summary.failed) == (20, 0)
    assert summary.succeeded == 10 + 20  # the minors and the updates
    for key, code in codes.items():
        assert (results[key].outcome, results[key].participant_code) == ("existing", code)
    by_email = {p["email"]: p for p in sandbox.participants.values()}
    for n in range(0, 20, 2):
        assert by_email[f"m{n}@mail.com"]["custodian_participant_code"] == codes[f"c{n}"]
    for n in range(20):
        assert sandbox.participants[codes[f"c{n}"]]["last_name"] == f"N{n}"
    stats = sandbox.stats
    assert (stats["creations"], stats["updates"], stats["duplicates"]) == (30, 20, 0)
    assert (again.skipped, again.failed) == (len(rows), 0)  # recorded: never looked up again
    assert lookups >= 20
    assert stats["requests"]["get_by_email"] == lookups
    journal = await make_journal(url, run="old").open()
    try:
        assert await journal.counts() == {"existing": 20, "succeeded": 30}
    finally:
        await journal.close()


def test_the_backfill_cli_reconciles_by_default(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ndax_async.cli import main

    sandbox = Sandbox()
    rows, _ = _already_applied(sandbox, 4)
    source = tmp_path / "ops.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with SandboxServer(sandbox) as server, pytest.MonkeyPatch.context() as patch:
        for name, value in sandbox.credentials.items():
            patch.setenv(f"NDAX_{name.upper()}", value)
        patch.setenv("NDAX_BASE_URL", server.base_url)
        off = ["backfill", str(source), "--rate", "0", "--run", "off", "--no-reconcile"]
        assert main(off) == 1
        assert "failed 6 (conflict 4, custodian 2)" in capsys.readouterr().out
        assert main(["backfill", str(source), "--rate", "0"]) == 0
        assert "existing (reconciled) 4" in capsys.readouterr().out
    assert main(["backfill", str(source), "--report"]) == 0
    assert "existing 4, succeeded 6" in capsys.readouterr().out
