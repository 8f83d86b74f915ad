"""A rate budget shared by every request that leaves one source IP.

The platform allows ``N`` requests in any rolling ``W`` seconds per source IP
and blocks the IP for ``W`` seconds after one too many. A :class:`Budget`
mirrors that rule with a rolling-window log (one entry per granted attempt,
never a token bucket, which would admit a burst on top of the rate):

- :class:`BudgetLimit`: ``N``/``W`` less a safety margin (``N_eff``), with a
  reserve only interactive calls may use (bulk stops at ``N_eff - reserve``)
  and a cap per one-second sub-window that keeps bulk from taking its whole
  window in the first instant after a start or a pause.
- :class:`LocalBudget`: the same rules in one process (and the safe fallback
  share of :class:`~ndax_async.RedisBudget` while Redis is unreachable).
- :class:`BudgetStats` and :class:`BudgetWait`: counters and the ``on_wait`` hook.

Every attempt, retries included, takes a slot before it is signed; a wait that
would outlast the call's deadline fails the call at once instead.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
from collections.abc import Callable
from typing import Literal

import attrs

from .._clock import Clock, SystemClock

__all__ = [
    "BULK",
    "INTERACTIVE",
    "Budget",
    "BudgetLimit",
    "BudgetStats",
    "BudgetWait",
    "LocalBudget",
    "Priority",
    "check_priority",
]

Priority = Literal["interactive", "bulk"]
INTERACTIVE: Priority = "interactive"
BULK: Priority = "bulk"
PRIORITIES: tuple[Priority, ...] = (INTERACTIVE, BULK)

MARGIN_SECONDS = 0.1
"""Default safety margin: the requests of 100 ms at the full rate (20 of 2,000/10 s).

A request granted just before a window starts may arrive inside it: the
margin must cover the rate times the spread of grant-to-arrival delays.
Measured at full rate (``benchmarks/FLEET.md``, 4 backfills and a web process
on one 2-core host): delay p50 1 ms, p99 8-9 ms, p99.9 19 ms, max 45 ms; 100 ms
is twice the worst spread seen, for a busier host or a farther sandbox."""
RESERVE_FRACTION = 0.015
"""Default interactive reserve: 1.5% of N (30 of 2,000), so bulk alone uses 97.5%."""
_MAX_SLEEP = 1.0  # re-check at least this often while waiting (a deadline, a mode change)
_JITTER = 0.001


def check_priority(value: str) -> Priority:
    """``value`` as a :data:`Priority`; ``ValueError`` for anything else."""
    if value == INTERACTIVE:
        return INTERACTIVE
    if value == BULK:
        return BULK
    raise ValueError(f"priority must be 'interactive' or 'bulk', not {value!r}")


@attrs.frozen(kw_only=True)
class BudgetLimit:
    """At most ``requests`` per rolling ``window`` seconds, less a safety margin.

    ``margin`` (default: the requests of :data:`MARGIN_SECONDS` at the full
    rate, 20 of 2,000/10 s) covers requests granted before a window that
    arrive inside it; ``reserve`` (default 1.5%) is the room
    only interactive calls may use. Bulk calls are also capped per rolling
    ``sub_window`` at ``smoothing`` times their share of the rate (1.0: a
    larger factor fills the window early and then leaves a gap in which
    nothing expires, which interactive calls then wait out: measured in
    ``benchmarks/FLEET.md``).
    """

    requests: int = 2000
    window: float = 10.0
    margin: int | None = None
    reserve: int | None = None
    sub_window: float = 1.0
    smoothing: float = 1.0

    def __attrs_post_init__(self) -> None:
        if self.requests < 1 or self.window <= 0:
            raise ValueError("a budget limit needs requests >= 1 and window > 0")
        if self.bulk_ceiling < 1:
            raise ValueError("margin + reserve leave bulk calls no room")
        if not 0 < self.sub_window <= self.window or self.smoothing < 1:
            raise ValueError("sub_window must be in (0, window] and smoothing >= 1")

    @classmethod
    def parse(cls, text: str) -> BudgetLimit:
        """``"2000/10"`` (requests per seconds; seconds default to 10)."""
        requests, _, seconds = text.strip().partition("/")
        try:
            return cls(requests=int(requests), window=float(seconds or 10))
        except ValueError:
            raise ValueError(f"a budget limit looks like 2000/10, not {text!r}") from None

    @property
    def interactive_ceiling(self) -> int:
        """``N_eff``: interactive calls are granted while the window holds fewer."""
        margin = self.margin
        if margin is None:
            margin = math.ceil(self.requests / self.window * MARGIN_SECONDS - 1e-9)
        return self.requests - margin

    @property
    def bulk_ceiling(self) -> int:
        """``N_eff - reserve``: bulk calls are granted while the window holds fewer."""
        reserve = math.ceil(self.requests * RESERVE_FRACTION) if self.reserve is None else self.reserve
        return self.interactive_ceiling - reserve

    @property
    def bulk_per_sub_window(self) -> int:
        """The bulk cap per rolling ``sub_window``."""
        return max(1, math.ceil(self.bulk_ceiling * self.sub_window / self.window * self.smoothing))

    def ceiling(self, priority: Priority) -> int:
        """The window count below which ``priority`` is granted."""
        return self.interactive_ceiling if priority == INTERACTIVE else self.bulk_ceiling

    def share(self, requests: int) -> BudgetLimit:
        """This limit scaled down to ``requests`` per window (a member's fallback share)."""
        requests = max(2, requests)
        reserve = self.interactive_ceiling - self.bulk_ceiling
        return attrs.evolve(
            self,
            requests=requests,
            margin=0,
            reserve=min(requests - 1, math.ceil(reserve * requests / self.interactive_ceiling)),
        )

    def __str__(self) -> str:
        return f"{self.requests}/{self.window:g}s"


@attrs.frozen(kw_only=True)
class BudgetWait:
    """Passed to ``on_wait`` after a call waited for budget (or gave up waiting)."""

    priority: Priority
    seconds: float
    reason: Literal["window", "pause"]
    granted: bool
    """False when the wait would have outlasted the call's deadline."""


@attrs.define
class BudgetStats:
    """What a budget did, for an app to read (``budget.stats``)."""

    mode: Literal["redis", "local"] = "local"
    grants: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(PRIORITIES, 0))
    waits: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(PRIORITIES, 0))
    wait_seconds: dict[str, float] = attrs.Factory(lambda: dict.fromkeys(PRIORITIES, 0.0))
    max_wait: dict[str, float] = attrs.Factory(lambda: dict.fromkeys(PRIORITIES, 0.0))
    deadline_failures: int = 0
    pauses: int = 0
    """Waits for a shared 429 pause."""
    blocks_reported: int = 0
    """429 answers this member reported to the budget."""
    fallbacks: int = 0
    """Times this member lost Redis and fell back to its local share."""


class _Gate:
    """One class's turn in this process: a lock around each try, and the last refusal's wait."""

    __slots__ = ("lock", "not_before", "pause")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.not_before = float("-inf")
        self.pause = False


class Budget:
    """The interface every budget offers; subclasses implement :meth:`_try`.

    ``await acquire(priority, remaining)`` waits for a slot and returns True, or
    returns False at once when the wait would outlast ``remaining`` seconds.
    ``report_block(seconds)`` records a 429: every member waits it out.
    """

    limit: BudgetLimit
    """The rule this budget keeps (set by each subclass)."""

    def __init__(self, *, clock: Clock | None = None, on_wait: Callable[[BudgetWait], None] | None = None):
        self.clock: Clock = clock or SystemClock()
        self.on_wait = on_wait
        self.stats = BudgetStats()
        self._gates: dict[str, _Gate] = {}

    async def acquire(
        self,
        priority: Priority = INTERACTIVE,
        remaining: float | None = None,
        *,
        on_wait: Callable[[BudgetWait], None] | None = None,
    ) -> bool:
        """Take a slot for one attempt; False if the deadline (``remaining`` s) comes first.

        ``on_wait`` is told of this call's wait, if it had to wait (after the
        budget's own ``on_wait``), in the calling task."""
        clock = self.clock
        started = clock.monotonic()
        gate = self._gates.get(priority) or self._gates.setdefault(priority, _Gate())
        reason: Literal["window", "pause"] | None = None  # set once told to wait
        while True:
            sleep = gate.not_before - clock.monotonic()
            if sleep <= 0:
                # One try per class in flight: a refusal moves ``not_before``, and the
                # callers queued here then sleep instead of asking again (no herd).
                async with gate.lock:
                    if gate.not_before <= clock.monotonic():
                        wait, pause = await self._try(priority)
                        if wait <= 0:
                            self.stats.grants[priority] += 1
                            if reason is not None:
                                self._waited(priority, clock.monotonic() - started, reason, on_wait)
                            return True
                        gate.not_before, gate.pause = clock.monotonic() + wait, pause
                continue
            # Sleep outside the lock: a caller arriving later never queues behind a
            # sleeper; it sleeps to the same moment only because no slot is free before.
            reason = "pause" if gate.pause or reason == "pause" else "window"
            waited = clock.monotonic() - started
            if remaining is not None and waited + sleep >= remaining:
                return self._gave_up(priority, waited, reason, on_wait)
            await clock.sleep(min(sleep, _MAX_SLEEP) + random.uniform(0, _JITTER))  # noqa: S311

    def _reopen(self) -> None:
        """Forget every refusal's wait (the rules changed, e.g. Redis is back): try again now."""
        for gate in self._gates.values():
            gate.not_before = float("-inf")

    async def report_block(self, seconds: float) -> None:
        """A 429 arrived: the platform blocks the IP for ``seconds``; pause every member."""
        self.stats.blocks_reported += 1

    async def aclose(self) -> None:
        """Release what the budget holds (connections, tasks). Idempotent."""

    async def _try(self, priority: Priority) -> tuple[float, bool]:
        """Grant a slot (``(0, False)``) or say how long to wait and whether for a pause."""
        raise NotImplementedError

    def _waited(
        self,
        priority: Priority,
        seconds: float,
        reason: Literal["window", "pause"],
        on_wait: Callable[[BudgetWait], None] | None,
    ) -> None:
        stats = self.stats
        stats.waits[priority] += 1
        stats.wait_seconds[priority] += seconds
        stats.max_wait[priority] = max(stats.max_wait[priority], seconds)
        if reason == "pause":
            stats.pauses += 1
        self._tell(BudgetWait(priority=priority, seconds=seconds, reason=reason, granted=True), on_wait)

    def _gave_up(
        self,
        priority: Priority,
        seconds: float,
        reason: Literal["window", "pause"],
        on_wait: Callable[[BudgetWait], None] | None,
    ) -> bool:
        self.stats.deadline_failures += 1
        self._tell(BudgetWait(priority=priority, seconds=seconds, reason=reason, granted=False), on_wait)
        return False

    def _tell(self, wait: BudgetWait, on_wait: Callable[[BudgetWait], None] | None) -> None:
        if self.on_wait is not None:
            self.on_wait(wait)
        if on_wait is not None:
            on_wait(wait)


class WindowLog:
    """The rolling-window rule over one process's own grant times (monotonic seconds)."""

    __slots__ = ("blocked_until", "cap", "cap_until", "limit", "times")

    def __init__(self, limit: BudgetLimit) -> None:
        self.limit = limit
        self.times: list[float] = []
        self.blocked_until = float("-inf")
        self.cap = limit.interactive_ceiling
        self.cap_until = float("-inf")

    def wait(self, priority: Priority, now: float) -> tuple[float, bool]:
        """Seconds until ``priority`` may be granted at ``now`` (0: now), and whether for a pause."""
        if self.blocked_until > now:
            return self.blocked_until - now, True
        limit, times = self.limit, self.times
        del times[: bisect.bisect_right(times, now - limit.window)]
        count, ceiling = len(times), limit.ceiling(priority)
        if now < self.cap_until:  # both classes lowered by the same amount: bulk keeps its reserve
            ceiling = max(0, ceiling - max(0, limit.interactive_ceiling - self.cap))
        if ceiling <= 0:
            return self.cap_until - now, False
        wait = times[count - ceiling] + limit.window - now if count >= ceiling else 0.0
        if wait > 0 and now < self.cap_until:
            wait = min(wait, self.cap_until - now)
        if priority == BULK:
            recent = count - bisect.bisect_right(times, now - limit.sub_window)
            cap = limit.bulk_per_sub_window
            if recent >= cap:
                wait = max(wait, times[count - cap] + limit.sub_window - now)
        return wait, False

    def record(self, now: float) -> None:
        """Add a grant at ``now`` (never earlier than the last one)."""
        self.times.append(max(now, self.times[-1]) if self.times else now)

    def recent(self, now: float) -> list[float]:
        """The ages (seconds) of the grants still inside the window."""
        return [now - t for t in self.times if t > now - self.limit.window]

    def hold_to_recent(self, now: float) -> None:
        """Until a window has passed, grant no more than the window held at ``now``.

        A member that loses the shared log cannot see what the others used in
        the last window; if each keeps to what it used itself, the fleet stays
        within what the shared log allowed (the shares alone would not: a member
        below its share could grow while one above it still holds its excess).
        """
        self.cap = len(self.recent(now))
        self.cap_until = now + self.limit.window

    def block(self, until: float) -> None:
        """Pause every grant until ``until`` (only ever extends)."""
        self.blocked_until = max(self.blocked_until, until)


class LocalBudget(Budget):
    """The rolling-window budget within one process (no Redis).

    Use it to share one limit between several clients in a process, or in
    tests (inject ``clock``). :class:`~ndax_async.RedisBudget` uses one as its
    safe share while Redis is unreachable.
    """

    def __init__(
        self,
        limit: BudgetLimit | str | None = None,
        *,
        clock: Clock | None = None,
        on_wait: Callable[[BudgetWait], None] | None = None,
    ) -> None:
        super().__init__(clock=clock, on_wait=on_wait)
        self.limit = BudgetLimit.parse(limit) if isinstance(limit, str) else limit or BudgetLimit()
        self.log = WindowLog(self.limit)

    async def _try(self, priority: Priority) -> tuple[float, bool]:
        now = self.clock.monotonic()
        wait, pause = self.log.wait(priority, now)
        if wait <= 0:
            self.log.record(now)
        return wait, pause

    async def report_block(self, seconds: float) -> None:
        """Pause every call on this budget for ``seconds``."""
        await super().report_block(seconds)
        self.log.block(self.clock.monotonic() + seconds)

    def __repr__(self) -> str:
        return f"<LocalBudget {self.limit}>"
