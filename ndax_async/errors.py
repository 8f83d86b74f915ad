"""The exceptions ``ndax_async`` raises.

Every exception derives from :class:`NDAXError`::

    NDAXError
    ├── ConfigurationError (ValueError)     bad credentials or options, raised at construction
    ├── ValidationError (ValueError)        a payload refused before any request: every problem, by field
    ├── ClientClosedError (RuntimeError)    the client was used after aclose()
    ├── JournalError                        a bulk run's journal could not be written; the run stops
    ├── TransportError                      no HTTP response after every allowed attempt
    │   ├── ConnectError                    no connection could be made: nothing was sent
    │   │   └── TLSVerificationError        the server's certificate was refused (never retried)
    │   ├── ResponseLostError               sent, but no complete response: it may have been applied
    │   └── RequestTimeout (TimeoutError)   a timeout, or the call's deadline ran out
    └── APIError                            the server answered with an error status
        ├── BadRequestError                 400
        │   ├── IdempotencyConflictError    same request_id, different payload
        │   ├── DuplicatePayloadError       same payload already applied under another request_id
        │   └── ParticipantExistsError      a participant with this email already exists
        ├── AuthenticationError             401 (signature, timestamp, key, passphrase)
        ├── PermissionDeniedError           403 (not allowed, IP not on the allow-list)
        ├── NotFoundError                   404
        ├── ConflictError                   409
        ├── RateLimitError                  429 (the source IP is blocked for a while)
        ├── ServerError                     5xx
        └── MalformedResponseError          a 2xx whose body is not the documented shape

Every :class:`APIError` carries ``status_code``, ``body`` (the parsed JSON, or
``None``), ``raw_text`` (the body exactly as received), ``request_id`` and
``errors`` (each message the server gave). None of them ever holds a secret,
a passphrase or a signature. A :class:`TransportError`'s ``__cause__`` says
what happened to the last attempt (its ``failure`` and a short text), without
the request, whose headers hold the signature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

__all__ = [
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "ConfigurationError",
    "ConflictError",
    "ConnectError",
    "DuplicatePayloadError",
    "IdempotencyConflictError",
    "MalformedResponseError",
    "NDAXError",
    "NotFoundError",
    "ParticipantExistsError",
    "PermissionDeniedError",
    "Problem",
    "RateLimitError",
    "RequestTimeout",
    "ResponseLostError",
    "ServerError",
    "TLSVerificationError",
    "TransportError",
    "ValidationError",
    "error_from_response",
]

_MAX_RAW_IN_MESSAGE = 200
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.I | re.S)
_HTML_TAG = re.compile(r"<[^>]*>")

# The platform's wording for the idempotency conflicts (spec, "Idempotency").
# The sandbox answers with these same texts.
DUPLICATE_PAYLOAD_TEXT = "Participant data already used with different requestID"
IDEMPOTENCY_CONFLICT_TEXT = "requestID already used with different participant data"
PARTICIPANT_EXISTS_TEXT = "Participant already exists with this email for this platform"

_DUPLICATE_PAYLOAD = re.compile(r"already used with (a )?different request_?id", re.I)
_IDEMPOTENCY_CONFLICT = re.compile(
    r"request_?id.*(already used|different (payload|participant data|data)|mismatch)", re.I
)
_PARTICIPANT_EXISTS = re.compile(r"already exists with this email", re.I)


class NDAXError(Exception):
    """Base class of every exception this package raises."""


class ConfigurationError(NDAXError, ValueError):
    """The client was configured wrongly (bad secret, insecure URL, bad option)."""


@attrs.frozen
class Problem:
    """One thing wrong with a payload: the field (dotted path) and what is wrong."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class ValidationError(NDAXError, ValueError):
    """A payload was refused before anything was sent; ``problems`` lists every issue."""

    def __init__(self, model: str, problems: Iterable[Problem]) -> None:
        self.model = model
        self.problems: tuple[Problem, ...] = tuple(problems)
        count = len(self.problems)
        listed = "; ".join(str(p) for p in self.problems)
        super().__init__(f"{model} is invalid ({count} problem{'s' * (count != 1)}): {listed}")

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the fields that have a problem, in order, without repeats."""
        return tuple(dict.fromkeys(p.field for p in self.problems))


class ClientClosedError(NDAXError, RuntimeError):
    """The client was used after ``aclose()`` (or after its ``async with`` block)."""


class JournalError(NDAXError):
    """A bulk run's journal could not be written (disk full, file removed, locked too long).

    The run stops, as a crash would: what it reported stands, and the next run
    with the same journal resends what was in flight with the same request_id.
    The SQLite error is the ``__cause__``.
    """


class TransportError(NDAXError):
    """No HTTP response arrived after every allowed attempt."""

    def __init__(self, message: str, *, request_id: str | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.attempts = attempts


class ConnectError(TransportError):
    """No connection could be made (refused, DNS, a proxy that refused): nothing was sent."""


class TLSVerificationError(ConnectError):
    """The server's TLS certificate was refused; nothing was sent, and it is not retried.

    Pass ``verify=`` (an ``ssl.SSLContext`` trusting your CA) if the server is yours.
    """


class ResponseLostError(TransportError):
    """The request was sent, and no complete response came back (dropped, reset, broken).

    It may have been applied. Resending the same operation is safe: its
    request_id is the same, so the server replays the first result instead of
    applying it twice.
    """


class RequestTimeout(TransportError, TimeoutError):
    """An attempt timed out, or the call's overall deadline ran out."""


class APIError(NDAXError):
    """The server answered with an error status (or an unreadable success)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: Any = None,
        raw_text: str = "",
        request_id: str | None = None,
        errors: Sequence[str] = (),
        attempts: int = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body = body
        self.raw_text = raw_text
        self.request_id = request_id
        self.errors: tuple[str, ...] = tuple(errors)
        self.attempts = attempts
        self.headers: dict[str, str] = headers or {}

    def __str__(self) -> str:
        suffix = f" (request_id={self.request_id})" if self.request_id else ""
        return f"HTTP {self.status_code}: {self.message}{suffix}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, message={self.message!r})"


class BadRequestError(APIError):
    """HTTP 400: the server refused the payload."""


class IdempotencyConflictError(BadRequestError):
    """HTTP 400: this request_id was used before with a different payload."""


class DuplicatePayloadError(BadRequestError):
    """HTTP 400: this exact payload was already applied under another request_id.

    Usually the operation has taken effect; look it up rather than resending.
    """


class ParticipantExistsError(BadRequestError):
    """HTTP 400: a participant with this email already exists on the platform."""


class AuthenticationError(APIError):
    """HTTP 401: bad key, passphrase or signature, or a stale timestamp."""


class PermissionDeniedError(APIError):
    """HTTP 403: not allowed (endpoint not enabled, other platform, IP allow-list)."""


class NotFoundError(APIError):
    """HTTP 404."""


class ConflictError(APIError):
    """HTTP 409."""


class RateLimitError(APIError):
    """HTTP 429: over the per-IP limit; the IP is blocked for a while."""


class ServerError(APIError):
    """HTTP 5xx."""


class MalformedResponseError(APIError):
    """A success status whose body is not JSON of the documented shape."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}


def parse_error_body(raw_text: str) -> tuple[Any, list[str]]:
    """Parse an error body of any documented shape into (json or None, messages).

    Handles ``{"errors": [...]}``, ``{"error": true, "message": ...}``,
    ``{"error": "..."}``, other JSON, and text that is not JSON at all.
    """
    try:
        body = json.loads(raw_text) if raw_text.strip() else None
    except ValueError:
        text = _page_text(raw_text)
        return None, [_shorten(text)] if text else []
    messages: list[str] = []
    if isinstance(body, dict):
        errors = body.get("errors")
        if isinstance(errors, list):
            messages.extend(_as_text(item) for item in errors)
        elif errors is not None:
            messages.append(_as_text(errors))
        error = body.get("error")
        if isinstance(error, str):
            messages.append(error)
        message = body.get("message")
        if isinstance(message, str):
            messages.append(message)
    elif isinstance(body, list):
        messages.extend(_as_text(item) for item in body)
    elif isinstance(body, str):
        messages.append(body)
    return body, [m for m in messages if m]


def error_from_response(
    status_code: int,
    raw_text: str,
    *,
    request_id: str | None,
    attempts: int = 1,
    headers: dict[str, str] | None = None,
    hint: str = "",
) -> APIError:
    """Build the typed :class:`APIError` for an error response."""
    body, messages = parse_error_body(raw_text)
    message = "; ".join(messages) or _default_message(status_code)
    if hint:
        message = f"{message} ({hint})"
    cls = _BY_STATUS.get(status_code)
    if cls is None:
        cls = ServerError if status_code >= 500 else APIError
    if cls is BadRequestError:
        cls = _classify_bad_request(messages)
    return cls(
        message,
        status_code=status_code,
        body=body,
        raw_text=raw_text,
        request_id=request_id,
        errors=messages,
        attempts=attempts,
        headers=headers,
    )


def _classify_bad_request(messages: Sequence[str]) -> type[BadRequestError]:
    for text in messages:
        if _DUPLICATE_PAYLOAD.search(text):
            return DuplicatePayloadError
        if _PARTICIPANT_EXISTS.search(text):
            return ParticipantExistsError
        if _IDEMPOTENCY_CONFLICT.search(text):
            return IdempotencyConflictError
    return BadRequestError


def _default_message(status_code: int) -> str:
    return {
        400: "bad request",
        401: "authentication failed",
        403: "permission denied",
        404: "not found",
        409: "conflict",
        429: "rate limited",
    }.get(status_code, "server error" if status_code >= 500 else "unexpected status")


def _as_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    return _shorten(json.dumps(item, ensure_ascii=False, default=str))


def _page_text(raw_text: str) -> str:
    """The gist of a body that is not JSON: an HTML page's title (a proxy's error page), or its text."""
    text = raw_text.strip()
    if text.startswith("<"):
        title = _HTML_TITLE.search(text)
        text = title.group(1) if title else _HTML_TAG.sub(" ", text)
    return " ".join(text.split())


def _shorten(text: str) -> str:
    if len(text) <= _MAX_RAW_IN_MESSAGE:
        return text
    return text[:_MAX_RAW_IN_MESSAGE] + "…"
