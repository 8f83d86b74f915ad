"""``ndax-async demo``: onboard a realistic batch against the embedded sandbox with faults on.

No credentials and no network: the sandbox runs in-process. The summary shows
every operation applied exactly once although a share of requests were
dropped, refused or answered too late; its verdict says what went wrong
otherwise: operations that failed (and whether any of them took effect), or
an operation applied twice.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Mapping
from typing import Any

from .._sending.retry import RetryPolicy
from ..bulk import Bulk, BulkSummary, Operation
from ..testing import Faults, Sandbox
from .progress import Progress

__all__ = ["DEMO_FAULTS", "run_demo", "verdict"]

DEMO_FAULTS = Faults(
    drop_before=0.05, drop_after=0.08, err503=0.05, err429=0.03, slow_after=0.02, slow_seconds=1.0, seed=7
)

_FIRST = ["Aarav", "Diya", "Kabir", "Ananya", "John", "Maria", "Wei", "Fatima", "Ishaan", "Sofia"]
_LAST = ["Mehta", "Sharma", "Iyer", "Smith", "Garcia", "Chen", "Khan", "Patel", "Brown", "Singh"]
_US = [("Chicago", "IL", "60601"), ("Austin", "TX", "73301"), ("New York", "NY", "10001")]
_IN = [("Mumbai", "MH", "400001"), ("Bengaluru", "KA", "560001"), ("Delhi", "DL", "110001")]


def _person(rng: random.Random, n: int) -> dict[str, Any]:
    country = "India" if n % 2 else "United States"
    city, state, zip_code = rng.choice(_IN if country == "India" else _US)
    return {
        "first_name": rng.choice(_FIRST),
        "last_name": rng.choice(_LAST),
        "email": f"customer{n}@example.com",
        "address_one": f"{rng.randint(1, 999)} Main Road",
        "city": city,
        "state": state,
        "zip": zip_code,
        "country": country,
        "id_number_type": "aadhar_card" if country == "India" else "ssn",
        "id_number": f"{rng.randint(10**8, 10**9 - 1)}",
    }


async def _onboard(sandbox: Sandbox, customers: int, concurrency: int, rate: float) -> BulkSummary:
    rng = random.Random(2026)  # noqa: S311 - demo data
    policy = RetryPolicy(backoff_initial=0.01, backoff_max=0.2, rate_limit_pause=0.05)
    people = [_person(rng, n) for n in range(customers)]
    async with sandbox.client(retry_policy=policy, max_retries=10, timeout=0.25) as client:
        # Phase 1: customers, and minors naming their custodian by the custodian's key.
        onboarding: list[Operation] = []
        for n, person in enumerate(people):
            customer = {**person, "date_of_birth": "1985-09-02", "signed_timestamp": 1_700_000_000_000}
            onboarding.append(
                Operation(key=f"customer-{n}", op="create", data=customer, line=len(onboarding) + 1)
            )
            if n % 4 == 0:
                minor = {
                    **person,
                    "email": f"minor{n}@example.com",
                    "id_number": f"M{person['id_number']}",
                    "date_of_birth": "2014-03-01",
                    "utma_signed_timestamp": 1_700_000_000_000,
                    "custodian_relationship": "parent",
                }
                onboarding.append(
                    Operation(
                        key=f"minor-{n}",
                        op="create_minor",
                        data=minor,
                        custodian_key=f"customer-{n}",
                        line=len(onboarding) + 1,
                    )
                )
        progress = Progress(len(onboarding))
        engine = Bulk(client, concurrency=concurrency, rate=rate)
        codes: dict[str, str | None] = {}
        async for result in engine.run(onboarding):
            codes[str(result.key)] = result.participant_code
            progress.update(engine.summary)
        progress.update(engine.summary, final=True)
        first = engine.summary
        # Phase 2: verified address and name changes for some of those customers.
        changes: list[Operation] = []
        for n, person in enumerate(people):
            code = codes.get(f"customer-{n}")
            if code is None or n % 3 not in (0, 1):
                continue
            data: dict[str, Any] = {"platform_updated_at": 1_710_000_000_000 + n}
            if n % 3 == 0:
                city, state, zip_code = rng.choice(_IN if person["country"] == "India" else _US)
                data.update(
                    address_one="42 New Street",
                    city=city,
                    state=state,
                    zip=zip_code,
                    country=person["country"],
                )
            else:
                data.update(first_name=person["first_name"], last_name="Kapoor")
            changes.append(Operation(key=f"update-{n}", op="update", participant_code=code, data=data))
        progress = Progress(len(changes))
        engine = Bulk(client, concurrency=concurrency, rate=rate)
        async for _ in engine.run(changes):
            progress.update(engine.summary)
        progress.update(engine.summary, final=True)
    return first.merge(engine.summary)


def verdict(stats: Mapping[str, Any], summary: BulkSummary) -> tuple[bool, str]:
    """Whether every operation took effect exactly once, and a line that says so or
    says what went wrong: an operation applied twice, or operations that failed."""
    twice = stats["duplicates"] + stats["conflicts"] + stats["duplicate_payloads"]
    applied = stats["creations"] + stats["updates"]
    if twice:
        return False, (
            f"EXACTLY-ONCE VIOLATED: {stats['duplicates']} duplicates, {stats['conflicts']} conflicts,"
            f" {stats['duplicate_payloads']} duplicate payloads"
        )
    if summary.failed:
        reasons = ", ".join(f"{reason} {n}" for reason, n in summary.failed_by_reason.most_common())
        line = f"{summary.failed} operations failed ({reasons}); none was applied twice"
        if applied > summary.succeeded:
            line += f"; {applied - summary.succeeded} of them took effect although their call failed"
        return False, line
    if applied != summary.succeeded:
        return False, f"the server applied {applied} operations, but {summary.succeeded} succeeded"
    return True, f"every operation applied exactly once: {summary.succeeded} succeeded, 0 failed"


def run_demo(
    customers: int = 400,
    concurrency: int = 32,
    rate: float = 400.0,
    print_: Callable[[str], None] = print,
    faults: Faults = DEMO_FAULTS,
) -> int:
    """Run the demo; returns 0 when every operation applied exactly once."""
    sandbox = Sandbox(faults=faults)
    print_(f"ndax-async demo: onboarding {customers} customers through the bulk engine, embedded sandbox")
    print_(
        f"faults on: {faults.drop_before:.0%} dropped before, {faults.drop_after:.0%} dropped after commit,"
        f" {faults.err503:.0%} 503, {faults.err429:.0%} 429, {faults.slow_after:.0%} too slow after commit"
    )
    summary = asyncio.run(_onboard(sandbox, customers, concurrency, rate))
    stats = sandbox.stats
    print_(
        f"created {stats['customers']} customers and {stats['minors']} minors, "
        f"applied {stats['updates']} updates"
    )
    faults_seen = ", ".join(f"{k} {v}" for k, v in sorted(stats["faults"].items()))
    print_(
        f"requests {sum(stats['requests'].values())}, faults {sum(stats['faults'].values())}: {faults_seen}"
    )
    retries = ", ".join(f"{k} {v}" for k, v in summary.retries_by_reason.most_common())
    print_(f"retries {summary.retries} by reason: {retries}")
    print_(f"replays {stats['replays']} (lost responses recovered with the same request_id)")
    print_(
        f"duplicates {stats['duplicates']}, conflicts {stats['conflicts']}, "
        f"duplicate payloads {stats['duplicate_payloads']}, failed operations {summary.failed}"
    )
    timing = f"{summary.elapsed:.1f}s ({summary.rate:.0f}/s, rate limit {rate:.0f}/s)"
    print_(f"{summary.total} operations in {timing}")
    exactly_once, line = verdict(stats, summary)
    print_(line)
    return 0 if exactly_once else 1
