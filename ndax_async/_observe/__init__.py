"""What the SDK tells observers: one method per thing it knows, each a no-op by default.

The request path calls an :class:`Observer` at a handful of marked points
(``# observe`` comments in ``client.py``, ``_sending/transport.py`` and
``bulk/engine.py``). :class:`Observer` does nothing; :class:`~.logs.LogObserver`
(every client's default) writes one structured line per retry and per failure;
:class:`~.otel.OtelObserver` adds OpenTelemetry spans, events and metrics, and is
imported only when telemetry is turned on (:func:`observer_for`), so without
``opentelemetry-api`` nothing of it is imported or paid for.

The observer methods receive no secret: routes, request_ids, statuses, reasons
and seconds only (never headers or bodies).
"""

from __future__ import annotations

import sys
import urllib.parse
from typing import TYPE_CHECKING, Any

from .._sending.senders import AttemptFailed, Failure
from ..errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConflictError,
    ConnectError,
    DuplicatePayloadError,
    IdempotencyConflictError,
    MalformedResponseError,
    NDAXError,
    NotFoundError,
    ParticipantExistsError,
    PermissionDeniedError,
    RateLimitError,
    RequestTimeout,
    ResponseLostError,
    ServerError,
    TLSVerificationError,
    TransportError,
)

if TYPE_CHECKING:
    from .._sending.retry import RetryEvent

__all__ = [
    "OUTCOMES",
    "Observer",
    "attempt_error_type",
    "endpoint_of",
    "observer_for",
    "operation_name",
    "outcome_of",
    "safe_url",
]

MAYBE_APPLIED = frozenset({500, 502, 504})
"""Statuses after which a write may have taken effect (with no response at all)."""

OUTCOMES = ("created", "updated", "replayed", "ok", "not_found", "refused", "failed")
"""How an operation ends. ``replayed``: a write that succeeded on a resend of its
request_id after an attempt that may have taken effect (no response, or a 500,
502 or 504, after which the server may have committed); the server replayed the
original result if that attempt had taken effect: a replayed response looks
like any other. A 429 or 503 is refused before processing (the spec), so a
success after one is ``created``."""

_NAMES = {
    "create": "ndax.customers.create",
    "create_minor": "ndax.customers.create_minor",
    "update": "ndax.customers.update",
    "get_by_email": "ndax.participants.get_by_email",
    "list": "ndax.participants.list",
}


class Observer:
    """The SDK's observation points; this base class ignores every one (it costs a call).

    ``operation_started`` and ``bulk_started`` return a handle passed back to
    the matching ``*_ended``; ``attempt_started`` likewise for ``attempt_ended``.
    Every method is called on the event loop, in the task doing the work.
    """

    __slots__ = ()

    def operation_started(self, method: str, route: str, request_id: str | None, run: Any = None) -> Any:
        """A logical operation (one ``send_json`` call) starts; ``run`` is a bulk run's handle."""
        return None

    def operation_ended(
        self, operation: Any, *, attempts: int, error: BaseException | None = None, found: bool = True
    ) -> None:
        """It ended: with ``error`` raised, or a 2xx (``found=False``: an allowed 404)."""

    def attempt_started(self, method: str, url: str, resend_count: int) -> Any:
        """An HTTP attempt is about to be signed and sent (``resend_count`` 0 for the first)."""
        return None

    def attempt_ended(self, attempt: Any, *, status_code: int | None, error: BaseException | None) -> None:
        """The attempt got a response (``status_code``) or none (``error``)."""

    def retry_wait(self, event: RetryEvent) -> None:
        """The operation waits ``event.wait`` seconds before its next attempt, for ``event.reason``."""

    def rate_limit_pause(self, seconds: float) -> None:
        """The operation waited ``seconds`` for the client's shared 429 pause."""

    def budget_wait(
        self, priority: str, seconds: float, *, reason: str = "window", granted: bool = True
    ) -> None:
        """The operation waited ``seconds`` for a slot in the client's shared budget
        (:class:`~ndax_async.LocalBudget`, :class:`~ndax_async.RedisBudget`), as class
        ``priority`` (``"interactive"`` or ``"bulk"``), for a full ``"window"`` or a
        shared 429 ``"pause"``; ``granted=False``: it gave up (the call's deadline came first)."""

    def journal_pending(self, change: int) -> None:
        """Bulk operations recorded ``sending`` in a journal whose outcome is not yet
        durable changed by ``change`` (+1 before one is sent, -1 once its outcome is
        recorded, or the run stopped without recording it)."""

    def bulk_started(self, *, concurrency: int, rate: float | None, journal: bool) -> Any:
        """A bulk run starts; the handle goes to its operations (``run=``) and :meth:`bulk_ended`."""
        return None

    def bulk_operation(self, run: Any, outcome: str) -> None:
        """An operation of the run finished: ``succeeded``, ``existing``, ``skipped`` or ``failed``."""

    def bulk_ended(self, run: Any, summary: Any, error: BaseException | None = None) -> None:
        """The run ended (``summary`` is its :class:`~ndax_async.bulk.BulkSummary`)."""


def observer_for(telemetry: bool | None, tracer_provider: Any = None, meter_provider: Any = None) -> Observer:
    """The observer for a client's ``telemetry`` options.

    ``None`` (the default): OpenTelemetry when a provider is passed or the
    application has already imported ``opentelemetry.trace`` (it set it up, or
    runs instrumented), else logs only; nothing is imported to find out.
    ``True``: OpenTelemetry (``ImportError`` without ``opentelemetry-api``).
    ``False``: logs only. Without providers, the global ones are used.
    """
    from .logs import LogObserver

    wanted = tracer_provider is not None or meter_provider is not None or "opentelemetry.trace" in sys.modules
    if telemetry is False or (telemetry is None and not wanted):
        return LogObserver()
    from .otel import OtelObserver

    return OtelObserver(tracer_provider, meter_provider)


def endpoint_of(method: str, route: str) -> str:
    """The endpoint's short name (a bounded set, fit for a metric label) for a request."""
    if method == "GET":
        return "list" if route.startswith("/participants?") or route == "/participants" else "get_by_email"
    if method == "PATCH":
        return "update"
    return "create_minor" if route.endswith("/minor") else "create"


def operation_name(endpoint: str) -> str:
    """The span name for an endpoint: ``ndax.customers.create`` and so on."""
    return _NAMES.get(endpoint, "ndax." + endpoint)


def safe_url(url: str) -> str:
    """``url`` with the participant's email (in a path or an ``email=`` query) replaced by
    ``REDACTED``: a trace holds no personal data. URLs never carry a secret."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    if path.startswith("/participants/") and path.count("/") == 2:  # GET /participants/{email}
        path = "/participants/REDACTED"
    query = "&".join(
        "email=REDACTED" if pair.startswith("email=") else pair for pair in parts.query.split("&") if pair
    )
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, ""))


# Most specific first: the first class the error is an instance of names it.
_REFUSALS: tuple[tuple[type[APIError], str], ...] = (
    (IdempotencyConflictError, "idempotency_conflict"),
    (DuplicatePayloadError, "duplicate_payload"),
    (ParticipantExistsError, "participant_exists"),
    (BadRequestError, "validation"),
    (AuthenticationError, "authentication"),
    (PermissionDeniedError, "permission_denied"),
    (NotFoundError, "not_found"),
    (ConflictError, "conflict"),
)


def outcome_of(
    endpoint: str, error: BaseException | None, *, found: bool, resent_after_unknown: bool
) -> tuple[str, str | None]:
    """``(outcome, reason)`` of an operation (see :data:`OUTCOMES`); the reason is a short,
    bounded string (fit for a metric label), set for ``refused`` and ``failed``."""
    if error is None:
        if not found:
            return "not_found", None
        if endpoint in ("get_by_email", "list"):
            return "ok", None
        if resent_after_unknown:
            return "replayed", None
        return ("updated" if endpoint == "update" else "created"), None
    return _failure(error)


_ATTEMPT_ERRORS = {
    Failure.CONNECT: "connect_error",
    Failure.TLS: "tls_verification",
    Failure.LOST: "response_lost",
    Failure.TIMEOUT: "timeout",
}
NOTHING_SENT = frozenset({Failure.CONNECT, Failure.TLS})
"""Attempt failures after which the request certainly did not reach the server."""


def attempt_error_type(error: BaseException) -> str:
    """The ``error.type`` of an attempt that got no response: its failure kind
    (``connect_error``, ``tls_verification``, ``response_lost``, ``timeout``), or the
    exception's class name (``CancelledError``)."""
    if isinstance(error, AttemptFailed):
        return _ATTEMPT_ERRORS[error.failure]
    return type(error).__name__


def _failure(error: BaseException) -> tuple[str, str]:
    if isinstance(error, APIError) and not isinstance(
        error, (ServerError, RateLimitError, MalformedResponseError)
    ):
        reason = next((name for kind, name in _REFUSALS if isinstance(error, kind)), None)
        return "refused", reason or f"http_{error.status_code}"
    if isinstance(error, ServerError):
        return "failed", f"http_{error.status_code}"
    if isinstance(error, RateLimitError):
        return "failed", "rate_limited"
    if isinstance(error, MalformedResponseError):
        return "failed", "malformed_response"
    if isinstance(error, RequestTimeout):
        return "failed", "timeout"
    if isinstance(error, TLSVerificationError):
        return "failed", "tls_verification"
    if isinstance(error, ConnectError):
        return "failed", "connect_error"
    if isinstance(error, ResponseLostError):
        return "failed", "response_lost"
    if isinstance(error, TransportError):
        return "failed", "transport"
    if isinstance(error, ClientClosedError):
        return "failed", "client_closed"
    if isinstance(error, NDAXError):
        return "failed", type(error).__name__
    if isinstance(error, Exception):
        return "failed", "internal"
    return "failed", "cancelled"  # CancelledError, KeyboardInterrupt: the caller stopped it
