"""Waiting on the shared journal: for a row another run holds, for another shard's
create, and keeping this run's leases alive."""

from __future__ import annotations

import asyncio

from .._clock import Clock
from ..errors import JournalError
from .journal import Journal, JournalEntry

__all__ = ["claim_when_free", "renew_leases", "wait_for_entry"]


async def claim_when_free(
    journal: Journal,
    clock: Clock,
    key: str,
    op: str,
    line: int | None,
    request_id: str | None,
    payload_hash: str,
) -> JournalEntry | None:
    """:meth:`Journal.claim` the row; while another live run holds it, wait (backoff from
    50 ms to a quarter of the lease) until that run finishes it or its lease expires."""
    delay = 0.05
    while True:
        entry = await journal.claim(key, op, line, request_id, payload_hash)
        if entry is None or not entry.held:
            return entry
        await clock.sleep(delay)
        delay = min(delay * 2, max(0.05, journal.lease / 4))


async def wait_for_entry(journal: Journal, clock: Clock, key: str, wait: float) -> JournalEntry | None:
    """Poll the journal for ``key`` (backoff from 50 ms to 2 s) until it is finished
    (``succeeded`` or ``failed``), for up to ``wait`` seconds; ``None`` if it never was."""
    deadline = clock.monotonic() + wait
    delay = 0.05
    while (remaining := deadline - clock.monotonic()) > 0:
        await clock.sleep(min(delay, remaining))
        delay = min(delay * 2, 2.0)
        entry = await journal.get(key)
        if entry is not None and entry.state != "sending":
            return entry
    return None


async def renew_leases(journal: Journal) -> None:
    """Renew this run's leases every third of the lease, in real time (leases are timed
    by the journal: the database server's clock), until cancelled."""
    while True:
        await asyncio.sleep(journal.lease / 3)
        try:
            await journal.renew()
        except JournalError:
            return  # the journal has stopped: the run's next write raises the error
