"""Client-side limits: a request rate limiter and a retry budget.

- :class:`RateLimiter` spaces requests to a rate (with a small burst), so a
  bulk run stays under the platform's 2,000 requests per 10 seconds per IP. It
  hands out time slots, so waiters sleep exactly once and never spin or block
  the event loop.
- :class:`RetryQuota` is a shared budget of retries (after botocore's retry
  quota): each retry spends tokens, each success earns one back, and when the
  budget is spent operations fail fast instead of hammering a failing server.
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
    """A token bucket of retries shared by every call that uses it."""

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

    def spend(self, timeout: bool = False) -> bool:
        """Take the cost of one retry; False (and no retry) when the budget is spent."""
        cost = self.timeout_cost if timeout else self.retry_cost
        with self._lock:
            if self._tokens < cost:
                self.exhausted += 1
                return False
            self._tokens -= cost
            return True

    def refund(self) -> None:
        """A call succeeded: earn a token back (up to capacity)."""
        with self._lock:
            self._tokens = min(self.capacity, self._tokens + self.success_refund)
