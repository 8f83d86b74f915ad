"""What is retryable and how long to wait: small pieces, each with one job.

- :class:`RetryPolicy`: the knobs (attempts, statuses, backoff, caps, deadline).
- :func:`retry_reason`: why an attempt's outcome may be retried, or ``None``.
- :func:`backoff`: exponential backoff with jitter, or the server's Retry-After.
- :class:`RateLimitPause`: one shared pause for every request of a client after
  a 429 (the platform blocks the whole source IP, not one request).
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Callable

import attrs

from .._clock import Clock
from .senders import AttemptFailed, Failure, RawResponse

__all__ = [
    "Outcome",
    "RateLimitPause",
    "RetryEvent",
    "RetryPolicy",
    "backoff",
    "parse_retry_after",
    "retry_reason",
]

# Attempts without a response worth another one. A response lost after the
# server committed is exactly what a stable request_id makes safe to resend; a
# refused certificate will be refused again.
_RETRYABLE_FAILURES = frozenset({Failure.CONNECT, Failure.LOST, Failure.TIMEOUT})


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When to try again and how long to wait; every knob has a safe default.

    ``max_retries`` counts retries, so a call makes at most ``max_retries + 1``
    attempts. ``deadline`` (seconds) bounds the whole call, waits included.
    """

    max_retries: int = 3
    retry_statuses: frozenset[int] = frozenset({408, 429, 502, 503, 504})
    retry_transport_errors: bool = True
    honour_server_hint: bool = True
    backoff_initial: float = 0.5
    backoff_max: float = 8.0
    retry_after_max: float = 60.0
    rate_limit_pause: float = 10.0
    deadline: float | None = None

    def __attrs_post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.deadline is not None and self.deadline <= 0:
            raise ValueError("deadline must be > 0 seconds")


@attrs.frozen
class Outcome:
    """One attempt's result: a response, or what happened instead of one."""

    response: RawResponse | None = None
    error: AttemptFailed | None = None


@attrs.frozen(kw_only=True)
class RetryEvent:
    """Passed to the ``on_retry`` hook before each wait. Holds no secret."""

    method: str
    route: str
    request_id: str | None
    attempt: int
    """The attempt that just failed (1 for the first)."""
    reason: str
    wait: float
    status_code: int | None = None


def retry_reason(outcome: Outcome, policy: RetryPolicy) -> str | None:
    """Why this outcome may be retried (for logs and hooks), or ``None``."""
    if outcome.error is not None:
        failure = outcome.error.failure
        if not policy.retry_transport_errors or failure not in _RETRYABLE_FAILURES:
            return None
        return failure.value
    response = outcome.response
    assert response is not None
    status = response.status_code
    if status < 400:
        return None
    if policy.honour_server_hint:
        hint = response.headers.get("x-should-retry", "").strip().lower()
        if hint == "false":
            return None
        if hint == "true":
            return f"HTTP {status}, server allows retry"
    if status in policy.retry_statuses:
        return f"HTTP {status}"
    if status >= 500 and policy.honour_server_hint and "retry-after" in response.headers:
        return f"HTTP {status} with Retry-After"
    return None


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After value (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - now
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def backoff(
    attempt: int,
    outcome: Outcome,
    policy: RetryPolicy,
    now: float,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait after failed ``attempt`` (1-based).

    Retry-After wins, capped at ``retry_after_max``; a 429 without it waits the
    platform's documented block (``rate_limit_pause``); otherwise exponential
    backoff with "equal jitter", capped at ``backoff_max``.
    """
    response = outcome.response
    if response is not None:
        hinted = parse_retry_after(response.headers.get("retry-after"), now)
        if hinted is not None:
            return min(hinted, policy.retry_after_max)
        if response.status_code == 429:
            return policy.rate_limit_pause
    ceiling = min(policy.backoff_max, policy.backoff_initial * 2.0 ** (attempt - 1))
    return ceiling / 2 + rand() * ceiling / 2


class RateLimitPause:
    """A pause shared by every request of one client after a 429.

    :meth:`block` extends the pause; :meth:`wait` sleeps (on the injected clock,
    never blocking the loop) until it has passed.
    """

    __slots__ = ("_clock", "_until")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._until = 0.0

    @property
    def remaining(self) -> float:
        """Seconds until requests may flow again (0 when not paused)."""
        return max(0.0, self._until - self._clock.monotonic())

    def block(self, seconds: float) -> None:
        """Pause every request for at least ``seconds`` from now."""
        self._until = max(self._until, self._clock.monotonic() + seconds)

    async def wait(self) -> None:
        """Return once no pause is in force."""
        while (remaining := self.remaining) > 0:
            await self._clock.sleep(remaining)
