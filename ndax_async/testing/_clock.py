"""A fake clock for tests: sleeping advances time instantly."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Implements :class:`ndax_async.Clock`; ``sleep`` advances time, never waits.

    ``sleeps`` records every requested sleep, in order.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._wall_start = start
        self.elapsed = 0.0
        self.sleeps: list[float] = []

    def time(self) -> float:
        """Unix time: the start plus everything slept so far."""
        return self._wall_start + self.elapsed

    def monotonic(self) -> float:
        """Seconds slept so far."""
        return self.elapsed

    def advance(self, seconds: float) -> None:
        """Move time forward without sleeping."""
        self.elapsed += seconds

    async def sleep(self, seconds: float) -> None:
        """Record the sleep, advance time, and yield to the loop once."""
        self.sleeps.append(seconds)
        self.elapsed += max(0.0, seconds)
        await asyncio.sleep(0)
