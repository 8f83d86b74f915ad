"""Structured log lines on the ``ndax_async`` logger, and ``NDAX_LOG`` to see them.

One line per retry (INFO) and one per refused or failed operation (WARNING),
each with stable ``extra`` fields a JSON formatter can pick up: ``request_id``,
``endpoint`` (``create``, ``create_minor``, ``update``, ``get_by_email``,
``list``), ``attempt`` and ``reason``; a retry adds ``wait`` (seconds), a
failure ``outcome`` (``refused`` or ``failed``). Each attempt is a DEBUG line.

``NDAX_LOG=debug`` or ``NDAX_LOG=info`` (read when the first client is built)
adds a readable handler to the ``ndax_async`` logger, as ``OPENAI_LOG`` does in
openai-python; without it the library only emits records, as a library should.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from . import Observer, endpoint_of, outcome_of

if TYPE_CHECKING:
    from .._sending.retry import RetryEvent

__all__ = ["LOGGER_NAME", "LogObserver", "configure_from_env"]

LOGGER_NAME = "ndax_async"
logger = logging.getLogger(LOGGER_NAME)
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_FORMAT = "[%(asctime)s %(levelname)s %(name)s] %(message)s"


class _Operation:
    """What a failure line needs about its operation."""

    __slots__ = ("endpoint", "request_id")

    def __init__(self, endpoint: str, request_id: str | None) -> None:
        self.endpoint = endpoint
        self.request_id = request_id


def fields(
    request_id: str | None, endpoint: str, attempt: int, reason: str | None, **more: Any
) -> dict[str, Any]:
    """The ``extra`` of a line."""
    return {"request_id": request_id, "endpoint": endpoint, "attempt": attempt, "reason": reason, **more}


class LogObserver(Observer):
    """Logs retries and failures (and, at DEBUG, each attempt). Every client's default."""

    __slots__ = ()

    def operation_started(self, method: str, route: str, request_id: str | None, run: Any = None) -> Any:
        """Keep what the failure line needs."""
        return _Operation(endpoint_of(method, route), request_id)

    def operation_ended(
        self, operation: Any, *, attempts: int, error: BaseException | None = None, found: bool = True
    ) -> None:
        """One WARNING line if the operation was refused or failed."""
        if error is None or not isinstance(operation, _Operation):
            return
        outcome, reason = outcome_of(operation.endpoint, error, found=found, resent_after_unknown=False)
        log_failure(operation.endpoint, operation.request_id, attempts, outcome, reason)

    def attempt_started(self, method: str, url: str, resend_count: int) -> Any:
        """A DEBUG line per attempt (the URL holds no secret)."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s attempt %d", method, url, resend_count + 1)
        return None

    def retry_wait(self, event: RetryEvent) -> None:
        """One INFO line per retry."""
        endpoint = endpoint_of(event.method, event.route)
        logger.info(
            "retrying %s %s after %s (attempt %d, waiting %.2fs, request_id=%s)",
            event.method,
            event.route,
            event.reason,
            event.attempt,
            event.wait,
            event.request_id,
            extra=fields(event.request_id, endpoint, event.attempt, event.reason, wait=event.wait),
        )


def log_failure(
    endpoint: str, request_id: str | None, attempts: int, outcome: str, reason: str | None
) -> None:
    """The WARNING line for a refused or failed operation."""
    logger.warning(
        "%s %s: %s after %d attempt(s) (request_id=%s)",
        endpoint,
        outcome,
        reason,
        attempts,
        request_id,
        extra=fields(request_id, endpoint, attempts, reason, outcome=outcome),
    )


def configure_from_env(environ: Any = None) -> logging.Handler | None:
    """Add a readable handler to the ``ndax_async`` logger if ``NDAX_LOG`` asks for one
    (once per process); return it, or ``None``."""
    env = os.environ if environ is None else environ
    level = _LEVELS.get(str(env.get("NDAX_LOG", "")).strip().lower())
    if level is None:
        return None
    for handler in logger.handlers:
        if getattr(handler, "_ndax_log", False):
            return handler
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler._ndax_log = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    return handler
