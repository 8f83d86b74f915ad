"""``ndax-async demo``: onboard a realistic batch against the embedded sandbox with faults on.

No credentials and no network: the sandbox runs in-process. The summary shows
every operation applied exactly once although a share of requests were
dropped, refused or answered too late.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ._retry import RetryEvent, RetryPolicy
from .models import Address, CustomerUpdate, Name, NewCustomer, NewMinor
from .testing import Faults, Sandbox

__all__ = ["run_demo"]

T = TypeVar("T")
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


async def _onboard(
    sandbox: Sandbox, customers: int, concurrency: int, progress: Callable[[str], None]
) -> Counter[str]:
    rng = random.Random(2026)  # noqa: S311 - demo data
    retries: Counter[str] = Counter()
    gate = asyncio.Semaphore(concurrency)
    done = Counter[str]()

    def on_retry(event: RetryEvent) -> None:
        retries[event.reason] += 1

    async def bounded(kind: str, call: Awaitable[T]) -> T:
        async with gate:
            result = await call
        done[kind] += 1
        progress(
            f"\r  customers {done['customer']:>4}  minors {done['minor']:>4}  updates {done['update']:>4}"
        )
        return result

    policy = RetryPolicy(backoff_initial=0.01, backoff_max=0.2, rate_limit_pause=0.05)
    async with sandbox.client(retry_policy=policy, max_retries=10, timeout=0.25, on_retry=on_retry) as client:
        people = [_person(rng, n) for n in range(customers)]
        created = await asyncio.gather(
            *(
                bounded(
                    "customer",
                    client.customers.create(
                        NewCustomer(**p, date_of_birth="1985-09-02", signed_timestamp=1_700_000_000_000)
                    ),
                )
                for p in people
            )
        )
        work: list[Awaitable[Any]] = []
        for n, (person, customer) in enumerate(zip(people, created, strict=True)):
            code = str(customer.participant_code)
            if n % 4 == 0:
                child = {**person, "email": f"minor{n}@example.com", "id_number": f"M{person['id_number']}"}
                minor = NewMinor(
                    **child,
                    date_of_birth="2014-03-01",
                    utma_signed_timestamp=1_700_000_000_000,
                    custodian_participant_code=code,
                    custodian_relationship="parent",
                )
                work.append(bounded("minor", client.customers.create_minor(minor)))
            if n % 3 == 0:
                city, state, zip_code = rng.choice(_IN if person["country"] == "India" else _US)
                address = Address(
                    address_one="42 New Street",
                    city=city,
                    state=state,
                    zip=zip_code,
                    country=person["country"],
                )
                update = CustomerUpdate(platform_updated_at=1_710_000_000_000 + n, address=address)
                work.append(bounded("update", client.customers.update(code, update)))
            elif n % 5 == 1:
                update = CustomerUpdate(
                    platform_updated_at=1_710_000_000_000 + n,
                    name=Name(first_name=person["first_name"], last_name="Kapoor"),
                )
                work.append(bounded("update", client.customers.update(code, update)))
        await asyncio.gather(*work)
    progress("\n")
    return retries


def _progress(text: str) -> None:
    if sys.stdout.isatty():
        sys.stdout.write(text)
        sys.stdout.flush()


def run_demo(customers: int = 400, concurrency: int = 32, print_: Callable[[str], None] = print) -> int:
    """Run the demo; returns 0 when every operation applied exactly once."""
    faults = Faults(
        drop_before=0.05, drop_after=0.08, err503=0.05, err429=0.03, slow_after=0.02, slow_seconds=1.0, seed=7
    )
    sandbox = Sandbox(faults=faults)
    print_(f"ndax-async demo: onboarding {customers} customers against the embedded sandbox")
    print_("faults on: 5% dropped before, 8% dropped after commit, 5% 503, 3% 429, 2% too slow after commit")
    started = time.perf_counter()
    retries = asyncio.run(_onboard(sandbox, customers, concurrency, _progress))
    elapsed = time.perf_counter() - started
    stats = sandbox.stats
    operations = stats["creations"] + stats["updates"]
    print_(
        f"created {stats['customers']} customers and {stats['minors']} minors, "
        f"applied {stats['updates']} updates"
    )
    print_(
        f"requests {sum(stats['requests'].values())}, faults {sum(stats['faults'].values())}: "
        + ", ".join(f"{k} {v}" for k, v in sorted(stats["faults"].items()))
    )
    print_(
        f"retries {sum(retries.values())} by reason: "
        + ", ".join(f"{k} {v}" for k, v in retries.most_common())
    )
    print_(f"replays {stats['replays']} (lost responses recovered with the same request_id)")
    print_(
        f"duplicates {stats['duplicates']}, conflicts {stats['conflicts']}, "
        f"duplicate payloads {stats['duplicate_payloads']}"
    )
    print_(f"{operations} operations in {elapsed:.1f}s ({operations / elapsed:.0f}/s)")
    exactly_once = stats["duplicates"] == stats["conflicts"] == stats["duplicate_payloads"] == 0
    print_("every operation applied exactly once" if exactly_once else "EXACTLY-ONCE VIOLATED")
    return 0 if exactly_once else 1
