"""``ndax-async demo``: its verdict says what happened, failures apart from duplicates."""

from __future__ import annotations

from collections import Counter

from ndax_async.bulk import BulkSummary
from ndax_async.cli.demo import run_demo, verdict
from ndax_async.testing import Faults


def test_a_run_with_failures_and_no_duplicate_names_the_failures_not_a_violation() -> None:
    """Every create is committed and then answered 500 (not retried): all fail, none twice."""
    printed: list[str] = []
    status = run_demo(customers=8, concurrency=4, print_=printed.append, faults=Faults(err500_after=1.0))
    assert status == 1
    last = printed[-1]
    assert "VIOLATED" not in "\n".join(printed)
    assert last.startswith("10 operations failed (server 8, custodian 2); none was applied twice")
    assert last.endswith("; 8 of them took effect although their call failed")


def test_a_clean_run_says_every_operation_applied_exactly_once() -> None:
    printed: list[str] = []
    assert run_demo(customers=8, concurrency=4, print_=printed.append, faults=Faults()) == 0
    assert printed[-1] == "every operation applied exactly once: 16 succeeded, 0 failed"


def test_an_operation_applied_twice_is_a_violation() -> None:
    stats = {"duplicates": 1, "conflicts": 0, "duplicate_payloads": 0, "creations": 3, "updates": 0}
    ok, line = verdict(stats, BulkSummary(succeeded=3))
    assert not ok
    assert line.startswith("EXACTLY-ONCE VIOLATED: 1 duplicates")
    ok, line = verdict(
        {**stats, "duplicates": 0}, BulkSummary(succeeded=2, failed=1, failed_by_reason=Counter(server=1))
    )
    assert not ok
    assert line.startswith("1 operations failed (server 1); none was applied twice;")
