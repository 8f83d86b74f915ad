"""A run's progress on stderr: a one-line bar on a terminal, a plain summary line elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .._sending.budget import Budget
from ..bulk import BulkSummary

__all__ = ["Progress"]


class Progress:
    """Shows done/total, rate, ETA and failures of a bulk run as it goes.

    On a terminal the bar is redrawn at most five times a second; elsewhere (a
    log file, CI) nothing is drawn as the run goes, and the final update prints
    one plain line.
    """

    def __init__(self, total: int, stream: TextIO | None = None, budget: Budget | None = None) -> None:
        self.total = max(total, 1)
        self.stream = stream or sys.stderr  # looked up now: sys.stderr may be replaced
        self.on_terminal = self.stream.isatty()
        self._last = 0.0
        self._budget = budget
        self._grants = (0, time.monotonic())

    def update(self, summary: BulkSummary, final: bool = False) -> None:
        """Show ``summary``; ``final`` once, at the end of the run."""
        if not self.on_terminal:
            if final:
                self._write(
                    f"{summary.total}/{self.total} done, failed {summary.failed}{self._budget_use()}\n"
                )
            return
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        done = summary.total
        fraction = min(1.0, done / self.total)
        eta = (self.total - done) / summary.rate if summary.rate > 0 else 0
        bar = "#" * int(fraction * 30)
        self._write(
            f"\r[{bar:<30}] {done}/{self.total} {fraction:6.1%} {summary.rate:6.0f} ops/s"
            f" ETA {int(eta // 60)}m{int(eta % 60):02d}s failed {summary.failed}{self._budget_use()}"
            + ("\n" if final else "")
        )

    def _budget_use(self) -> str:
        """`` | budget 195/200 req/s, waits 12 (3.1s), pauses 0, redis`` (empty without a budget)."""
        if self._budget is None:
            return ""
        now = time.monotonic()
        stats, limit = self._budget.stats, self._budget.limit
        grants = sum(stats.grants.values())
        (before, then), self._grants = self._grants, (grants, now)
        per_second = (grants - before) / (now - then) if now > then else 0.0
        waits = sum(stats.waits.values())
        return (
            f" | budget {per_second:.0f}/{limit.requests / limit.window:.0f} req/s, waits {waits}"
            f" ({sum(stats.wait_seconds.values()):.1f}s), pauses {stats.pauses}, {stats.mode}"
        )

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
