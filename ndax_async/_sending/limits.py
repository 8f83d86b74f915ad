"""Client-side limits: a request rate limiter and a retry budget.

- :class:`RateLimiter` spaces requests to a rate (with a small burst), so a
  bulk run stays under the platform's 2,000 requests per 10 seconds per IP. It
  hands out time slots, so waiters sleep exactly once and never spin or block
  the event loop.
- :class:`RetryQuota` is a shared budget of retries (botocore's retry quota
  and its refund rule): each retry spends tokens; a call that succeeds after
  retrying gives back everything its retries spent, and a first-try success
  earns one token. When the budget is spent, operations fail fast instead of
  hammering a failing server.
"""

from __future__ import annotations

import threading

from .._clock import Clock, SystemClock

__all__ = ["RateLimiter", "RetryQuota"]


class RateLimiter:
    """At most ``rate`` requests per second on average, bursting up to ``burst``."""

    __slots__ = ("_clock", "_next", "burst", "rate")

    def __init__(self, rate: float, burst: float = 1.0, clock: Clock | None = None) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = rate
        self.burst = burst
        self._clock = clock or SystemClock()
        self._next = float("-inf")

    async def acquire(self) -> None:
        """Wait for this request's slot."""
        now = self._clock.monotonic()
        slot = max(self._next, now - (self.burst - 1) / self.rate)
        self._next = slot + 1 / self.rate
        if slot > now:
            await self._clock.sleep(slot - now)


class RetryQuota:
    """A token bucket of retries shared by every call that uses it.

    A retry costs ``retry_cost`` tokens (``timeout_cost`` after a timeout).
    When the call then succeeds, the whole cost of its retries comes back
    (:meth:`refund` with what :meth:`spend` took); a success at the first try
    earns ``success_refund``. So a sustained fault rate that retries recover
    from never drains the budget; only retries that end in failure do.
    """

    def __init__(
        self, capacity: int = 500, retry_cost: int = 5, timeout_cost: int = 10, success_refund: int = 1
    ) -> None:
        self.capacity = capacity
        self.retry_cost = retry_cost
        self.timeout_cost = timeout_cost
        self.success_refund = success_refund
        self._tokens = capacity
        self._lock = threading.Lock()
        self.exhausted = 0

    @property
    def tokens(self) -> int:
        """Tokens left."""
        return self._tokens

    def spend(self, timeout: bool = False) -> int:
        """Take the cost of one retry and return it; 0 (no retry) when the budget is spent."""
        cost = self.timeout_cost if timeout else self.retry_cost
        with self._lock:
            if self._tokens < cost:
                self.exhausted += 1
                return 0
            self._tokens -= cost
            return cost

    def refund(self, spent: int = 0) -> None:
        """A call succeeded: give back what its retries ``spent``, or earn
        ``success_refund`` if it made none (up to capacity)."""
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + (spent or self.success_refund))
