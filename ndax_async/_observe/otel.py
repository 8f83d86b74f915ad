"""OpenTelemetry traces and metrics for the SDK (needs ``opentelemetry-api``; the ``otel`` extra).

Traces:

- a span per logical operation (``ndax.customers.create``, ``..create_minor``,
  ``..update``, ``ndax.participants.get_by_email``, ``..list`` (one per page)),
  INTERNAL, with ``ndax.request_id``, ``ndax.endpoint``, ``ndax.attempts``,
  ``ndax.outcome`` and, when refused or failed, ``error.type`` (the reason);
- under it a CLIENT span per HTTP attempt, after the stable HTTP client
  semantic conventions: ``http.request.method``, ``url.full`` (no secret is
  ever in a URL; a participant's email is replaced by ``REDACTED``),
  ``url.template``, ``server.address``, ``server.port``,
  ``http.response.status_code``, ``http.request.resend_count`` (on resends
  only, as the conventions say), ``error.type``;
- events on the operation span: ``ndax.retry_wait`` (reason, seconds),
  ``ndax.rate_limit_pause`` (seconds: the client's own pause after a 429) and
  ``ndax.budget_wait`` (class, reason, granted, seconds: a wait the shared
  budget reported for this operation);
- a bulk run is a span of its own (``ndax.bulk.run``) with its summary; each of
  its operations is the root of its own trace, *linked* to the run, so a run of
  a million rows makes a million small traces, each sampled on its own, rather
  than one trace no backend can hold or show.

Metrics (meter ``ndax_async``): see :class:`OtelObserver`. The operation span
is the current span while it runs, so spans of other instrumentation (an
instrumented httpx, say) nest under it.
"""

from __future__ import annotations

import time
import urllib.parse
from contextvars import ContextVar
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import INVALID_SPAN, Link, SpanKind, Status, StatusCode

from .._sending.senders import AttemptFailed
from .._version import __version__
from . import (
    MAYBE_APPLIED,
    NOTHING_SENT,
    attempt_error_type,
    endpoint_of,
    operation_name,
    outcome_of,
    safe_url,
)
from .logs import LogObserver, log_failure

if TYPE_CHECKING:
    from .._sending.retry import RetryEvent

__all__ = ["OtelObserver"]

_CURRENT: ContextVar[_Operation | None] = ContextVar("ndax_async_operation", default=None)
_TEMPLATES = {
    "create": "/participants/customers/new",
    "create_minor": "/participants/customers/minor",
    "update": "/participants/customers/{participant_code}",
    "get_by_email": "/participants/{email}",
    "list": "/participants",
}


class _Operation:
    """One operation in flight: its span and what its attempts taught."""

    __slots__ = (
        "endpoint",
        "request_id",
        "resent_after_unknown",
        "span",
        "started",
        "token",
        "traced",
        "unknown",
        "var_token",
    )

    def __init__(self, span: trace.Span, endpoint: str, request_id: str | None) -> None:
        self.span = span
        self.endpoint = endpoint
        self.request_id = request_id
        self.unknown = False  # an attempt so far may have taken effect (no response, 500, 502, 504)
        self.resent_after_unknown = False
        self.started = time.perf_counter()
        self.traced = span.get_span_context().is_valid  # False: the API's no-op (no SDK configured)
        self.token: object = None  # the OpenTelemetry context's, when the span is made current
        self.var_token: Any = None


class _Attempt:
    __slots__ = ("operation", "span")

    def __init__(self, span: trace.Span, operation: _Operation) -> None:
        self.span = span
        self.operation = operation


class _Run:
    __slots__ = ("link", "span")

    def __init__(self, span: trace.Span) -> None:
        self.span = span
        self.link = Link(span.get_span_context())


class OtelObserver(LogObserver):
    """Spans, span events and metrics through the OpenTelemetry API, plus the log lines.

    With no SDK configured every call goes to the API's no-op (cost measured in
    ``benchmarks/OTEL.md``). Metrics:

    - ``ndax.client.requests`` (counter): HTTP attempts, by ``ndax.endpoint`` and
      ``http.response.status_code`` (or ``error.type`` when no response came);
    - ``ndax.client.retries`` (counter): by ``ndax.endpoint`` and ``ndax.retry.reason``;
    - ``ndax.client.replays`` (counter): operations ``replayed``, by ``ndax.endpoint``;
    - ``ndax.client.failures`` (counter): operations refused or failed, by
      ``ndax.endpoint``, ``ndax.outcome`` and ``error.type`` (the reason);
    - ``ndax.client.operation.duration`` (histogram, s): by ``ndax.endpoint`` and ``ndax.outcome``;
    - ``ndax.client.budget.wait`` (histogram, s): waits the shared budget reported, by
      ``ndax.budget.class`` (``interactive``, ``bulk``) and ``ndax.budget.reason`` (``window``, ``pause``);
    - ``ndax.client.rate_limit.pause`` (histogram, s): waits for the shared 429 pause;
    - ``ndax.bulk.journal.pending`` (up-down counter): journal lag, bulk operations recorded
      ``sending`` whose outcome is not yet durable;
    - ``ndax.bulk.operations`` (counter): finished bulk operations by ``ndax.outcome``; its
      rate is the operations per second.
    """

    __slots__ = (
        "budget_waits",
        "bulk_operations",
        "durations",
        "failures",
        "journal",
        "look_again",
        "pauses",
        "replays",
        "requests",
        "retries",
        "sdk",
        "tracer",
    )

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        # Without providers passed, whether an SDK is set up globally is looked up at most once a
        # second (the API's lookup reads the environment each time); once one is, it stays.
        self.sdk = tracer_provider is not None or meter_provider is not None
        self.look_again = 0.0
        self.tracer = trace.get_tracer("ndax_async", __version__, tracer_provider)
        meter = metrics.get_meter("ndax_async", __version__, meter_provider)
        self.requests = meter.create_counter("ndax.client.requests", "{request}", "HTTP attempts sent")
        self.retries = meter.create_counter("ndax.client.retries", "{retry}", "Retries, by reason")
        self.replays = meter.create_counter(
            "ndax.client.replays", "{operation}", "Writes that succeeded on a resend of their request_id"
        )
        self.failures = meter.create_counter(
            "ndax.client.failures", "{operation}", "Operations refused or failed, by reason"
        )
        self.durations = meter.create_histogram(
            "ndax.client.operation.duration", "s", "Logical operations, from start to outcome"
        )
        self.budget_waits = meter.create_histogram(
            "ndax.client.budget.wait", "s", "Time operations waited for the shared rate budget, by class"
        )
        self.pauses = meter.create_histogram(
            "ndax.client.rate_limit.pause", "s", "Time operations waited for the shared 429 pause"
        )
        self.journal = meter.create_up_down_counter(
            "ndax.bulk.journal.pending", "{operation}", "Bulk operations sent, outcome not yet durable"
        )
        self.bulk_operations = meter.create_counter(
            "ndax.bulk.operations", "{operation}", "Finished bulk operations, by outcome"
        )

    def operation_started(self, method: str, route: str, request_id: str | None, run: Any = None) -> Any:
        """Start the operation's span (a new trace linked to the run, in a bulk run) and make it current."""
        if not self.sdk and not self._sdk_set_up():
            return super().operation_started(method, route, request_id, run)  # the log observer's cost
        endpoint = endpoint_of(method, route)
        attributes: dict[str, Any] = {"ndax.endpoint": endpoint}
        if request_id is not None:
            attributes["ndax.request_id"] = request_id
        if isinstance(run, _Run):
            span = self.tracer.start_span(
                operation_name(endpoint), otel_context.Context(), attributes=attributes, links=(run.link,)
            )
        else:
            span = self.tracer.start_span(operation_name(endpoint), attributes=attributes)
        operation = _Operation(span, endpoint, request_id)
        operation.var_token = _CURRENT.set(operation)
        if operation.traced:  # not the API's no-op span: its children nest under it
            operation.token = otel_context.attach(trace.set_span_in_context(span))
        return operation

    def _sdk_set_up(self) -> bool:
        now = time.monotonic()
        if now >= self.look_again:
            self.sdk = not _no_sdk()
            self.look_again = now + 1.0
        return self.sdk

    def operation_ended(
        self, operation: Any, *, attempts: int, error: BaseException | None = None, found: bool = True
    ) -> None:
        """Set the outcome, end the span, count it; log a failure."""
        if not isinstance(operation, _Operation):
            super().operation_ended(operation, attempts=attempts, error=error, found=found)
            return
        _CURRENT.reset(operation.var_token)
        if operation.token is not None:
            otel_context.detach(operation.token)  # type: ignore[arg-type]
        endpoint = operation.endpoint
        outcome, reason = outcome_of(
            endpoint, error, found=found, resent_after_unknown=operation.resent_after_unknown
        )
        span = operation.span
        labels = {"ndax.endpoint": endpoint, "ndax.outcome": outcome}
        self.durations.record(time.perf_counter() - operation.started, labels)
        if outcome == "replayed":
            self.replays.add(1, {"ndax.endpoint": endpoint})
        if reason is not None:
            self.failures.add(1, {**labels, "error.type": reason})
            log_failure(endpoint, operation.request_id, attempts, outcome, reason)
        if span.is_recording():
            if reason is None:
                span.set_attributes({"ndax.attempts": attempts, "ndax.outcome": outcome})
            else:
                span.set_attributes(
                    {"ndax.attempts": attempts, "ndax.outcome": outcome, "error.type": reason}
                )
                span.set_status(Status(StatusCode.ERROR, f"{outcome}: {reason}"))
        span.end()

    def attempt_started(self, method: str, url: str, resend_count: int) -> Any:
        """Start the attempt's CLIENT span under the current operation."""
        super().attempt_started(method, url, resend_count)
        operation = _CURRENT.get()
        if operation is None:
            return None  # outside an operation (or no SDK): nothing to add to
        endpoint = operation.endpoint
        template = _TEMPLATES.get(endpoint)
        if not operation.traced:
            span: trace.Span = INVALID_SPAN  # no SDK: the tracer would make this no-op span anyway
        else:
            host, port = _server("/".join(url.split("/", 3)[:3]))
            attributes: dict[str, Any] = {
                "http.request.method": method,
                "url.full": safe_url(url),
                "server.address": host,
                "server.port": port,
            }
            if template:
                attributes["url.template"] = template
            if resend_count:
                attributes["http.request.resend_count"] = resend_count
            name = f"{method} {template}" if template else method
            span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
        if operation.unknown:
            operation.resent_after_unknown = True
        return _Attempt(span, operation)

    def attempt_ended(self, attempt: Any, *, status_code: int | None, error: BaseException | None) -> None:
        """Record the status or error on the attempt's span; count the request."""
        if not isinstance(attempt, _Attempt):
            return
        operation = attempt.operation
        endpoint = operation.endpoint
        error_type = attempt_error_type(error) if error is not None else None
        if status_code is not None and status_code >= 400:
            error_type = str(status_code)
        if status_code in MAYBE_APPLIED or (
            status_code is None and not (isinstance(error, AttemptFailed) and error.failure in NOTHING_SENT)
        ):
            operation.unknown = True
        if status_code is not None:
            self.requests.add(1, {"ndax.endpoint": endpoint, "http.response.status_code": status_code})
        else:
            self.requests.add(1, {"ndax.endpoint": endpoint, "error.type": error_type or "unknown"})
        span = attempt.span
        if span.is_recording():
            if status_code is not None:
                span.set_attribute("http.response.status_code", status_code)
            if error_type is not None:
                span.set_attribute("error.type", error_type)
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def retry_wait(self, event: RetryEvent) -> None:
        """An event on the operation's span, a count, and the log line."""
        super().retry_wait(event)
        endpoint = endpoint_of(event.method, event.route)
        self.retries.add(1, {"ndax.endpoint": endpoint, "ndax.retry.reason": event.reason})
        _current_span().add_event(
            "ndax.retry_wait",
            {
                "ndax.retry.reason": event.reason,
                "ndax.wait.seconds": event.wait,
                "ndax.attempt": event.attempt,
            },
        )

    def rate_limit_pause(self, seconds: float) -> None:
        """An event on the operation's span, and the time waited."""
        self.pauses.record(seconds)
        _current_span().add_event("ndax.rate_limit_pause", {"ndax.wait.seconds": seconds})

    def budget_wait(
        self, priority: str, seconds: float, *, reason: str = "window", granted: bool = True
    ) -> None:
        """An event on the operation's span, and the time waited by class."""
        self.budget_waits.record(seconds, {"ndax.budget.class": priority, "ndax.budget.reason": reason})
        _current_span().add_event(
            "ndax.budget_wait",
            {
                "ndax.budget.class": priority,
                "ndax.budget.reason": reason,
                "ndax.budget.granted": granted,
                "ndax.wait.seconds": seconds,
            },
        )

    def journal_pending(self, change: int) -> None:
        """Move the journal-lag gauge."""
        self.journal.add(change)

    def bulk_started(self, *, concurrency: int, rate: float | None, journal: bool) -> Any:
        """Start the run's span (under the caller's current span, if any); not made current."""
        attributes: dict[str, Any] = {"ndax.bulk.concurrency": concurrency, "ndax.bulk.journal": journal}
        if rate:
            attributes["ndax.bulk.rate_limit"] = rate
        return _Run(self.tracer.start_span("ndax.bulk.run", attributes=attributes))

    def bulk_operation(self, run: Any, outcome: str) -> None:
        """Count a finished operation of the run."""
        self.bulk_operations.add(1, {"ndax.outcome": outcome})

    def bulk_ended(self, run: Any, summary: Any, error: BaseException | None = None) -> None:
        """Put the run's summary on its span and end it."""
        if not isinstance(run, _Run):
            return
        span = run.span
        if isinstance(error, GeneratorExit):  # the caller closed the results: stopped early, not failed
            span.set_attribute("ndax.bulk.stopped_early", True)
            error = None
        if span.is_recording():
            span.set_attributes(
                {
                    "ndax.bulk.succeeded": summary.succeeded,
                    "ndax.bulk.existing": summary.existing,
                    "ndax.bulk.skipped": summary.skipped,
                    "ndax.bulk.failed": summary.failed,
                    "ndax.bulk.resent": summary.resent,
                    "ndax.bulk.retries": summary.retries,
                    "ndax.bulk.elapsed_seconds": summary.elapsed,
                    "ndax.bulk.operations_per_second": summary.rate,
                }
            )
            for reason, count in summary.failed_by_reason.items():
                span.set_attribute(f"ndax.bulk.failed.{reason}", count)
            if error is not None:
                span.set_attribute("error.type", type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()


def _no_sdk() -> bool:
    """True while the global providers are the API's own no-op ones (no SDK is set up):
    providers the API package itself defines record nothing."""
    return type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.trace") and type(
        metrics.get_meter_provider()
    ).__module__.startswith("opentelemetry.metrics")


def _current_span() -> trace.Span:
    """The operation's span, or (outside any operation) the caller's current span."""
    operation = _CURRENT.get()
    return operation.span if operation is not None else trace.get_current_span()


@lru_cache(maxsize=16)
def _server(base_url: str) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(base_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
