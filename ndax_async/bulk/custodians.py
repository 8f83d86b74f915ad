"""A minor's custodian in a bulk run: finding the custodian's participant_code.

A ``create_minor`` row may name its custodian by the key of a ``create`` row
(``custodian_key``). Its code comes from, in order: the create, if it is in
flight (the minor waits for it); the journal, if the create finished in this
or an earlier run; without a journal, the creates this run finished. A
custodian later in the input is tried again once the input is read
(:attr:`Unavailable.later`), and one that another shard creates is waited for in the
shared journal, up to ``wait`` seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import attrs

from .._clock import Clock
from .claims import wait_for_entry
from .journal import Journal
from .results import OperationResult
from .shards import Shard

__all__ = ["DEFAULT_CUSTODIAN_WAIT", "Custodians", "Unavailable"]

DEFAULT_CUSTODIAN_WAIT = 600.0  # how long a minor waits for another shard's custodian (seconds)


@attrs.frozen
class Unavailable:
    """No code to be had: the minor fails, for ``reason``, unless ``later``."""

    reason: str
    later: bool = False
    """Not created yet, and its create may come later in the input: try the minor
    again once the input is read (never on the last pass)."""


class Custodians:
    """One run's creates, seen as custodians of its minors."""

    def __init__(self, clock: Clock, shard: Shard | None, wait: float) -> None:
        self.clock = clock
        self.shard = shard
        self.wait = wait
        # Creates in flight, so a minor can wait for its custodian's code.
        self._in_flight: dict[str, asyncio.Future[str | None]] = {}
        # Without a journal, finished creates' codes are kept here for minors.
        self._created: dict[str, str | None] = {}

    def reset(self) -> None:
        """Forget the creates of an earlier run."""
        self._created = {}

    async def wait_if_creating(self, key: str) -> bool:
        """Wait for ``key``'s create if one is in flight; whether there was one."""
        in_flight = self._in_flight.get(key)
        if in_flight is None:
            return False
        await asyncio.shield(in_flight)
        return True

    async def creating(
        self, key: str, create: Callable[[], Awaitable[OperationResult | None]], *, remember: bool
    ) -> OperationResult | None:
        """Run ``key``'s create; minors waiting for it get its participant_code (``None`` if
        it failed). With ``remember`` (no journal), the code is also kept for later minors."""
        self._in_flight[key] = asyncio.get_running_loop().create_future()
        code: str | None = None
        try:
            result = await create()
            if result is not None and result.outcome != "failed":
                code = result.participant_code
            return result
        finally:
            self._in_flight.pop(key).set_result(code)
            if remember:
                self._created.setdefault(key, code)

    async def code(self, key: str, journal: Journal | None, *, final: bool) -> str | Unavailable:
        """The custodian's participant_code, or why there is none (``final``: the last pass,
        when a custodian still missing is a failure, not ``later``)."""
        future = self._in_flight.get(key)
        if future is not None:
            return _found(key, await asyncio.shield(future))
        if journal is not None:
            entry = await journal.get(key)
            if entry is not None and entry.state == "succeeded":
                return _found(key, entry.participant_code)
            elsewhere = self.shard is not None and not self.shard.owns(key)
            if final and elsewhere and (entry is None or entry.state == "sending"):
                # Another shard's create, not done yet: wait for it in the shared journal.
                entry = await wait_for_entry(journal, self.clock, key, self.wait)
                if entry is None:
                    return Unavailable(
                        f"the custodian's key {key!r} never appeared in the journal within"
                        f" {self.wait:g}s (another shard creates it): run this again once it has"
                    )
                return _found(key, entry.participant_code if entry.state == "succeeded" else None)
        elif self._created.get(key):
            return _found(key, self._created[key])
        if final or key in self._created:
            return _found(key, None)
        return Unavailable(f"custodian {key!r} is not created yet", later=True)


def _found(key: str, code: str | None) -> str | Unavailable:
    if code is None:
        return Unavailable(f"custodian {key!r} was not created (see its own row)")
    return code
