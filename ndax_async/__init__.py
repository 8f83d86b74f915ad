"""ndax_async: an asynchronous SDK for the NDAX participants API.

Every write is validated before any I/O, encoded once, given a request_id that
is stable for the logical operation, and signed afresh on every retry, so it
takes effect exactly once however often the network or the worker fails.
"""

from __future__ import annotations

from ._clock import Clock, SystemClock
from ._sending.budget import Budget, BudgetLimit, BudgetStats, BudgetWait, LocalBudget, Priority
from ._sending.limits import RateLimiter, RetryQuota
from ._sending.redis_budget import RedisBudget
from ._sending.retry import RetryEvent, RetryPolicy
from ._version import __version__
from ._wire.request_ids import RequestIdMode, key_to_request_id
from .client import PRODUCTION_URL, AsyncClient, ParticipantPage
from .errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConfigurationError,
    ConflictError,
    ConnectError,
    DuplicatePayloadError,
    IdempotencyConflictError,
    JournalError,
    MalformedResponseError,
    NDAXError,
    NotFoundError,
    ParticipantExistsError,
    PermissionDeniedError,
    Problem,
    RateLimitError,
    RequestTimeout,
    ResponseLostError,
    ServerError,
    TLSVerificationError,
    TransportError,
    ValidationError,
)
from .models import (
    Address,
    CustodianRelationship,
    Customer,
    CustomerUpdate,
    Identity,
    IdType,
    Minor,
    Name,
    NewCustomer,
    NewMinor,
    Participant,
)

__all__ = [
    "PRODUCTION_URL",
    "APIError",
    "Address",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Budget",
    "BudgetLimit",
    "BudgetStats",
    "BudgetWait",
    "ClientClosedError",
    "Clock",
    "ConfigurationError",
    "ConflictError",
    "ConnectError",
    "CustodianRelationship",
    "Customer",
    "CustomerUpdate",
    "DuplicatePayloadError",
    "IdType",
    "IdempotencyConflictError",
    "Identity",
    "JournalError",
    "LocalBudget",
    "MalformedResponseError",
    "Minor",
    "NDAXError",
    "Name",
    "NewCustomer",
    "NewMinor",
    "NotFoundError",
    "Participant",
    "ParticipantExistsError",
    "ParticipantPage",
    "PermissionDeniedError",
    "Priority",
    "Problem",
    "RateLimitError",
    "RateLimiter",
    "RedisBudget",
    "RequestIdMode",
    "RequestTimeout",
    "ResponseLostError",
    "RetryEvent",
    "RetryPolicy",
    "RetryQuota",
    "ServerError",
    "TLSVerificationError",
    "SystemClock",
    "TransportError",
    "ValidationError",
    "__version__",
    "key_to_request_id",
]
