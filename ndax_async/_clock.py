"""Time, injectable: wall time for signatures, monotonic time and sleep for waits.

Tests pass a fake clock so retry and rate-limit waits take no real time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock"]


class Clock(Protocol):
    """What the SDK needs of time."""

    def time(self) -> float:
        """Unix time in seconds (signs the X-NDAX-TIMESTAMP header)."""

    def monotonic(self) -> float:
        """A clock that never goes back (deadlines, pauses)."""

    async def sleep(self, seconds: float) -> None:
        """Wait without blocking the event loop."""


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        """Unix time in seconds."""
        return time.time()

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(seconds)
