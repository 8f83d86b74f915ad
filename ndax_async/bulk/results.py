"""What goes into a bulk run and what comes out: operations, row errors, results, totals."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs

from .._wire.writes import ENDPOINTS, PreparedWrite
from ..errors import (
    APIError,
    DuplicatePayloadError,
    IdempotencyConflictError,
    ParticipantExistsError,
    TransportError,
)
from .journal import JournalEntry

__all__ = [
    "OP_KINDS",
    "BulkSummary",
    "OpKind",
    "Operation",
    "OperationResult",
    "RowError",
    "duplicate",
    "duplicate_key",
    "failure_reason",
    "prepare_operation",
    "skipped",
]

OpKind = Literal["create", "create_minor", "update"]
OP_KINDS: tuple[str, ...] = ENDPOINTS


@attrs.frozen(kw_only=True)
class Operation:
    """One logical operation of a bulk run.

    ``key`` is the caller's unique identifier for it. ``data`` is the wire
    payload (a mapping) or a model. An update names its ``participant_code``;
    a minor may name its custodian by ``custodian_key`` (the key of a create
    in the same run) instead of ``custodian_participant_code``.
    """

    key: str
    op: OpKind
    data: Any
    participant_code: str | None = None
    custodian_key: str | None = None
    line: int | None = None


@attrs.frozen(kw_only=True)
class RowError:
    """An input row that could not be read as an operation (reported, never dropped)."""

    line: int
    reason: str
    key: str | None = None


@attrs.frozen(kw_only=True)
class OperationResult:
    """What happened to one operation.

    ``outcome`` is ``succeeded``, ``existing`` (a create found applied earlier
    under a request_id this SDK did not make, when reconciling), ``skipped``
    (already done in an earlier run, per the journal) or ``failed``; ``reason`` says why it failed
    (``bad_row``, ``validation``, ``rejected``, ``conflict``, ``server``,
    ``transport``, ``custodian``, ``internal``).
    """

    key: str | None
    op: str | None
    outcome: Literal["succeeded", "existing", "skipped", "failed"]
    line: int | None = None
    participant_code: str | None = None
    reason: str | None = None
    error: str | None = None
    attempts: int = 0
    request_id: str | None = None
    resent: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The result as a plain dict (for a results file)."""
        return attrs.asdict(self)


@attrs.define
class BulkSummary:
    """Totals of a run."""

    succeeded: int = 0
    existing: int = 0
    skipped: int = 0
    failed: int = 0
    resent: int = 0
    failed_by_reason: Counter[str] = attrs.field(factory=Counter)
    retries_by_reason: Counter[str] = attrs.field(factory=Counter)
    started: float = attrs.field(factory=time.monotonic)
    finished: float | None = None

    @property
    def total(self) -> int:
        """Operations accounted for."""
        return self.succeeded + self.existing + self.skipped + self.failed

    @property
    def retries(self) -> int:
        """Retries made, all reasons."""
        return sum(self.retries_by_reason.values())

    @property
    def elapsed(self) -> float:
        """Seconds from start to finish (or to now)."""
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Operations per second."""
        return self.total / self.elapsed if self.elapsed > 0 else 0.0

    def add(self, result: OperationResult) -> None:
        """Count one result."""
        if result.outcome == "succeeded":
            self.succeeded += 1
        elif result.outcome == "existing":
            self.existing += 1
        elif result.outcome == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
            self.failed_by_reason[result.reason or "unknown"] += 1
        self.resent += result.resent

    def merge(self, other: BulkSummary) -> BulkSummary:
        """This run and ``other`` (a later one) as one summary."""
        merged = BulkSummary(started=self.started, finished=other.finished)
        for summary in (self, other):
            merged.succeeded += summary.succeeded
            merged.existing += summary.existing
            merged.skipped += summary.skipped
            merged.failed += summary.failed
            merged.resent += summary.resent
            merged.failed_by_reason.update(summary.failed_by_reason)
            merged.retries_by_reason.update(summary.retries_by_reason)
        return merged

    def describe(self) -> str:
        """A few human lines."""
        failed = ", ".join(f"{k} {v}" for k, v in self.failed_by_reason.most_common()) or "none"
        retries = ", ".join(f"{k} {v}" for k, v in self.retries_by_reason.most_common()) or "none"
        return (
            f"succeeded {self.succeeded}, existing (reconciled) {self.existing},"
            f" skipped (already done) {self.skipped}, failed {self.failed}"
            f" ({failed})\nresent after an interrupted run {self.resent};"
            f" retries {self.retries} ({retries})\n"
            f"{self.total} operations in {self.elapsed:.1f}s ({self.rate:.0f}/s)"
        )


def prepare_operation(
    prepare: Callable[..., PreparedWrite], op: Operation, custodian_code: str | None = None
) -> PreparedWrite:
    """Validate and encode ``op`` with ``prepare`` (a ``prepare_write``), the minor's
    custodian code filled in: every check a run makes before sending. Raises
    :class:`~ndax_async.errors.ValidationError` naming every problem."""
    data = op.data
    if custodian_code is not None:
        if isinstance(data, Mapping):
            data = {k: v for k, v in data.items() if k != "custodian_key"}
        else:
            data = attrs.asdict(data, recurse=False)
        data["custodian_participant_code"] = custodian_code
    return prepare(op.op, data, participant_code=op.participant_code)


def failure_reason(error: APIError | TransportError) -> str:
    """The ``reason`` of an operation that failed with ``error``."""
    if isinstance(error, TransportError):
        return "transport"
    if isinstance(error, (IdempotencyConflictError, DuplicatePayloadError, ParticipantExistsError)):
        return "conflict"
    if error.status_code >= 500 or error.status_code == 429:
        return "server"
    return "rejected"


def duplicate_key(key: str, first_line: int | None) -> str:
    """Why a key used a second time in one run is refused (never sent)."""
    where = f" (first on line {first_line})" if first_line is not None else ""
    return f"key {key!r} is used more than once in this run{where}; this one was not sent"


def duplicate(key: str, op: str | None, line: int | None, *, first_line: int | None) -> OperationResult:
    """A key used a second time in one run: reported, never sent, never journaled."""
    error = duplicate_key(key, first_line)
    return OperationResult(key=key, op=op, outcome="failed", line=line, reason="bad_row", error=error)


def skipped(key: str, op: str | None, line: int | None, entry: JournalEntry) -> OperationResult:
    """An operation an earlier run completed, per the journal."""
    return OperationResult(
        key=key,
        op=op,
        outcome="skipped",
        line=line,
        participant_code=entry.participant_code,
        request_id=entry.request_id,
    )
