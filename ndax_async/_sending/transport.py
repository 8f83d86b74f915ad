"""One signed, retried request: body bytes in, a final HTTP response out.

The body bytes and request_id are fixed by the caller before the first attempt;
this module never re-encodes or regenerates them. Each attempt waits out any
shared 429 pause and the rate limiter, then for one of ``max_in_flight`` slots
(above the HTTP client's pool, so no call meets a pool timeout), and only then
signs afresh with the current time and sends: a signature is never older than
its send. tenacity
drives the loop; the response body is read in full before any wait, so no
pooled connection is held while sleeping, and a cancellation propagates at
once (it is never classified as retryable).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import logging
import sys
from collections.abc import Callable

import attrs
from tenacity import AsyncRetrying, RetryCallState

from .._clock import Clock
from .._observe import Observer
from .._wire.signing import EMPTY_BODY, Credentials
from ..errors import (
    ClientClosedError,
    ConnectError,
    RequestTimeout,
    ResponseLostError,
    TLSVerificationError,
    TransportError,
)
from .budget import INTERACTIVE, Budget, BudgetWait, Priority
from .limits import RateLimiter, RetryQuota
from .retry import Outcome, RateLimitPause, RetryEvent, RetryPolicy, backoff, parse_retry_after, retry_reason
from .senders import AttemptFailed, Failure, RawResponse, Sender

if sys.version_info >= (3, 11):
    from asyncio import timeout as attempt_timeout
else:  # Python 3.10
    from async_timeout import timeout as attempt_timeout

__all__ = ["Transport"]

logger = logging.getLogger("ndax_async")

_SKEW_WARNING_SECONDS = 30


class _DeadlineExceeded(AttemptFailed):
    """The call's deadline left no time for another attempt (never retried)."""

    def __init__(self) -> None:
        super().__init__(Failure.TIMEOUT, "the call's deadline ran out")


@attrs.frozen
class CallScope:
    """What a group of calls (one bulk run) adds to the client's own limits.

    ``limiter`` applies on top of the client's (both are passed); ``quota``
    replaces the client's retry budget for these calls; ``on_retry`` is called
    after the client's hook; ``priority`` is the calls' class in the client's
    shared budget (``"bulk"`` for a bulk run). Nothing on the shared client changes, so other
    calls, and other runs, on the same client keep their own limits.
    """

    limiter: RateLimiter | None = None
    quota: RetryQuota | None = None
    on_retry: Callable[[RetryEvent], None] | None = None
    priority: Priority | None = None
    run: object = None  # observe: the bulk run's observer handle, for its operations' spans


class Transport:
    """Signs, sends and retries requests through one :class:`~ndax_async._sending.senders.Sender`."""

    def __init__(
        self,
        sender: Sender,
        credentials: Credentials,
        base_url: str,
        *,
        clock: Clock,
        pause: RateLimitPause,
        on_retry: Callable[[RetryEvent], None] | None = None,
        limiter: RateLimiter | None = None,
        quota: RetryQuota | None = None,
        user_agent: str = "ndax-async",
        max_in_flight: int | None = None,
        budget: Budget | None = None,
        budget_priority: Priority = INTERACTIVE,
        observer: Observer | None = None,  # observe
    ) -> None:
        # Attempts beyond ``max_in_flight`` wait here, before they are signed.
        self.slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        self.limiter = limiter
        self.quota = quota
        self.sender = sender
        self.closed = False
        self.user_agent = user_agent
        self.credentials = credentials
        self.base_url = base_url
        self.clock = clock
        self.pause = pause
        self.on_retry = on_retry
        self.budget = budget
        self.budget_priority = budget_priority
        self.observer = observer or Observer()  # observe

    async def request(
        self,
        method: str,
        route: str,
        body: bytes | None,
        *,
        request_id: str | None,
        policy: RetryPolicy,
        timeout: float | None,
        scope: CallScope | None = None,
    ) -> tuple[RawResponse, int]:
        """Send until a final answer; return the response and the attempts made.

        Raises :class:`~ndax_async.errors.TransportError` when no response came.
        """
        call = _Call(self, method, route, body, request_id, policy, timeout, scope)
        outcome = await call.attempt()
        if outcome.response is None or outcome.response.status_code >= 400:
            # Not an instant success: tenacity decides on this outcome and drives
            # any retries. (A success skips building the retry machinery at all.)
            call.first_outcome = outcome
            retrying = AsyncRetrying(
                sleep=self.clock.sleep,
                retry=call.should_retry,
                wait=call.wait,
                stop=call.should_stop,
                before_sleep=call.before_sleep,
                retry_error_callback=_last_outcome,
            )
            outcome = await retrying(call.first_then_attempt)
        if outcome.response is not None:
            if call.quota is not None and outcome.response.status_code < 400:
                call.quota.refund(call.spent)  # a retried success gives back all its retries took
            return outcome.response, call.attempts
        # Chained to the AttemptFailed, which holds no request (and so no signature).
        raise _transport_error(outcome.error, request_id, call.attempts, call.sent) from outcome.error

    def clock_skew_hint(self, response: RawResponse) -> str:
        """Explain a 401/403 caused by a local clock off from the server's Date."""
        date = response.headers.get("date")
        if not date:
            return ""
        try:
            server = email.utils.parsedate_to_datetime(date)
        except (TypeError, ValueError, IndexError):
            return ""
        if server.tzinfo is None:
            server = server.replace(tzinfo=dt.timezone.utc)
        skew = self.clock.time() - server.timestamp()
        if abs(skew) < _SKEW_WARNING_SECONDS:
            return ""
        direction = "ahead of" if skew > 0 else "behind"
        return (
            f"local clock is {abs(skew):.0f}s {direction} the server's Date header; "
            "signatures are valid for about 60s, so fix the clock (NTP)"
        )


class _Call:
    """The state of one logical call across its attempts."""

    __slots__ = (
        "attempts",
        "body",
        "first_outcome",
        "method",
        "policy",
        "priority",
        "quota",
        "request_id",
        "route",
        "scope",
        "sent",
        "spent",
        "started",
        "timeout",
        "transport",
        "url",
    )

    def __init__(
        self,
        transport: Transport,
        method: str,
        route: str,
        body: bytes | None,
        request_id: str | None,
        policy: RetryPolicy,
        timeout: float | None,
        scope: CallScope | None = None,
    ) -> None:
        self.transport = transport
        self.scope = scope
        self.quota = scope.quota if scope is not None and scope.quota is not None else transport.quota
        self.priority = scope.priority if scope is not None and scope.priority else transport.budget_priority
        self.method = method
        self.route = route
        self.url = transport.base_url + route
        self.body = body
        self.request_id = request_id
        self.policy = policy
        self.timeout = timeout
        self.started = transport.clock.monotonic()
        self.attempts = 0
        self.spent = 0  # retry-quota tokens this call's retries took
        self.sent = False  # whether any attempt may have reached the server
        self.first_outcome: Outcome | None = None

    def _remaining(self) -> float | None:
        if self.policy.deadline is None:
            return None
        return self.policy.deadline - (self.transport.clock.monotonic() - self.started)

    async def first_then_attempt(self) -> Outcome:
        """The outcome already in hand on the first call, then real attempts."""
        if self.first_outcome is not None:
            outcome, self.first_outcome = self.first_outcome, None
            return outcome
        return await self.attempt()

    async def attempt(self) -> Outcome:
        transport = self.transport
        if transport.closed:
            raise ClientClosedError("the AsyncClient was closed while this call was retrying")
        remaining = self._remaining()
        if remaining is not None and transport.pause.remaining >= remaining:
            return Outcome(error=_DeadlineExceeded())  # the shared 429 pause outlasts the deadline
        observer, clock = transport.observer, transport.clock  # observe
        if transport.pause.remaining > 0:  # no coroutine when no pause is in force
            waiting = clock.monotonic()  # observe
            await transport.pause.wait()
            observer.rate_limit_pause(clock.monotonic() - waiting)  # observe
        if transport.limiter is not None:
            await transport.limiter.acquire()
        if self.scope is not None and self.scope.limiter is not None:
            await self.scope.limiter.acquire()
        # The attempt's slot in the shared budget, before a connection slot and the signature.
        if transport.budget is not None and not await transport.budget.acquire(
            self.priority,
            self._remaining(),
            on_wait=self._budget_waited,  # observe
        ):
            return Outcome(error=_DeadlineExceeded())  # the budget's wait outlasts the deadline
        timeout = self.timeout
        remaining = self._remaining()
        if remaining is not None:
            if remaining <= 0:
                return Outcome(error=_DeadlineExceeded())
            timeout = remaining if timeout is None else min(timeout, remaining)
        self.attempts += 1
        observed = observer.attempt_started(self.method, self.url, self.attempts - 1)  # observe
        # ``timeout`` bounds each phase of the exchange (httpx's connect, write, read
        # and pool timeouts), not the wait for a slot: a call never times out in the
        # queue. The call's deadline, if any, bounds the whole attempt.
        try:
            async with attempt_timeout(remaining):  # None (no deadline): no timer at all
                if transport.slots is None:
                    response = await self._send(timeout)
                else:
                    async with transport.slots:
                        response = await self._send(timeout)
        except AttemptFailed as error:
            if error.failure is Failure.TIMEOUT and timeout is not None:
                error = AttemptFailed(Failure.TIMEOUT, f"no complete response within {timeout:g}s")
            # Keep the kind and text only: its traceback's frames hold the signed headers,
            # and on Python 3.10 a backend error can still become its __context__.
            error.__context__ = None
            observer.attempt_ended(observed, status_code=None, error=error)  # observe
            return Outcome(error=error.with_traceback(None))
        except asyncio.TimeoutError:
            deadline = _DeadlineExceeded()
            observer.attempt_ended(observed, status_code=None, error=deadline)  # observe
            return Outcome(error=deadline)
        except BaseException as error:
            observer.attempt_ended(observed, status_code=None, error=error)  # observe
            raise
        observer.attempt_ended(observed, status_code=response.status_code, error=None)  # observe
        if response.status_code == 429:
            pause = parse_retry_after(response.headers.get("retry-after"), transport.clock.time())
            limit = self.policy.rate_limit_pause if pause is None else pause
            transport.pause.block(min(limit, self.policy.retry_after_max))
            if transport.budget is not None:
                await transport.budget.report_block(min(limit, self.policy.retry_after_max))
        return Outcome(response=response)

    def _budget_waited(self, wait: BudgetWait) -> None:
        """Report the shared budget's wait for this attempt (called in this call's task)."""
        self.transport.observer.budget_wait(
            wait.priority, wait.seconds, reason=wait.reason, granted=wait.granted
        )  # observe

    def _signed_headers(self) -> dict[str, str]:
        """The attempt's headers, signed with the current time."""
        transport = self.transport
        timestamp = str(int(transport.clock.time()))
        signed = self.body if self.body is not None else EMPTY_BODY
        headers = transport.credentials.headers(timestamp, self.method, self.route, signed)
        if self.body is not None:
            headers["Content-Type"] = "application/json"
        headers["User-Agent"] = transport.user_agent
        return headers

    async def _send(self, timeout: float | None) -> RawResponse:
        """Sign with the current time, then send at once."""
        headers = self._signed_headers()
        sent_before, self.sent = self.sent, True  # from here on it may reach the server...
        unexpected: Exception | None = None
        try:
            return await self.transport.sender.send(self.method, self.url, headers, self.body, timeout)
        except AttemptFailed as error:
            if error.failure is Failure.CONNECT or error.failure is Failure.TLS:
                self.sent = sent_before  # ...unless no connection was made
            raise
        except Exception as error:  # e.g. ClientClosedError, or a caller's closed http_client
            unexpected = error.with_traceback(None)
        # Raised again outside the except block, without the frames below this one
        # (their locals hold the signed headers an error tracker would record).
        del headers
        raise unexpected

    def should_retry(self, state: RetryCallState) -> bool:
        outcome = _outcome_of(state)
        if outcome is None or isinstance(outcome.error, _DeadlineExceeded):
            return False
        if retry_reason(outcome, self.policy) is None:
            return False
        if self.attempts > self.policy.max_retries:
            return False  # out of attempts anyway: spend nothing from the shared budget
        quota = self.quota
        timed_out = outcome.error is not None and outcome.error.failure is Failure.TIMEOUT
        spent = quota.spend(timeout=timed_out) if quota is not None else 0
        if quota is not None and not spent:
            logger.warning(
                "retry budget exhausted: not retrying %s %s (request_id=%s)",
                self.method,
                self.route,
                self.request_id,
            )
            return False
        self.spent += spent
        return True

    def wait(self, state: RetryCallState) -> float:
        outcome = _outcome_of(state)
        assert outcome is not None
        return backoff(self.attempts, outcome, self.policy, self.transport.clock.time())

    def should_stop(self, state: RetryCallState) -> bool:
        if self.attempts > self.policy.max_retries:
            return True
        remaining = self._remaining()
        return remaining is not None and remaining <= state.upcoming_sleep

    def before_sleep(self, state: RetryCallState) -> None:
        outcome = _outcome_of(state)
        assert outcome is not None
        reason = retry_reason(outcome, self.policy) or "retry"
        status = outcome.response.status_code if outcome.response is not None else None
        event = RetryEvent(
            method=self.method,
            route=self.route,
            request_id=self.request_id,
            attempt=self.attempts,
            reason=reason,
            wait=state.upcoming_sleep,
            status_code=status,
        )
        self.transport.observer.retry_wait(event)  # observe: logs the retry line, adds a span event
        if self.transport.on_retry is not None:
            self.transport.on_retry(event)
        if self.scope is not None and self.scope.on_retry is not None:
            self.scope.on_retry(event)


def _outcome_of(state: RetryCallState) -> Outcome | None:
    future = state.outcome
    if future is None or future.failed:
        return None  # an exception escaped attempt(): a cancellation or a bug; never retried
    result: Outcome = future.result()
    return result


def _last_outcome(state: RetryCallState) -> Outcome:
    assert state.outcome is not None
    result: Outcome = state.outcome.result()
    return result


def _transport_error(
    error: AttemptFailed | None, request_id: str | None, attempts: int, sent: bool
) -> TransportError:
    """The error for a call that ended without a response; ``sent``: an attempt may have been applied."""
    assert error is not None
    tried = f"after {attempts} attempt(s)"
    resend = (
        f"resending the same operation is safe (same request_id {request_id})"
        if request_id
        else "resending is safe"
    )
    if error.failure is Failure.TLS:
        message = f"{error.detail}; nothing was sent"
        return TLSVerificationError(message, request_id=request_id, attempts=attempts)
    if error.failure is Failure.TIMEOUT:
        if isinstance(error, _DeadlineExceeded):
            message = f"the call's deadline ran out {tried}"
        else:
            message = f"{error.detail} ({tried})"
        if sent:
            message += f"; it may have been applied, and {resend}"
        return RequestTimeout(message, request_id=request_id, attempts=attempts)
    if not sent:
        return ConnectError(
            f"{error.detail} ({tried}); nothing was sent", request_id=request_id, attempts=attempts
        )
    return ResponseLostError(
        f"response lost after {attempts} attempt(s) ({error.detail}); it may have been applied: {resend}",
        request_id=request_id,
        attempts=attempts,
    )
