"""Bulk onboarding and backfill: the engine, its journal and its row readers.

``from ndax_async.bulk import Bulk, Operation`` is the public path; the engine
lives in :mod:`.engine`, what goes in and comes out in :mod:`.results`, the
journal in :mod:`.journal`, row readers in :mod:`.rows`.
"""

from __future__ import annotations

from .engine import Bulk, prepare_operation
from .journal import Journal, JournalEntry
from .results import BulkSummary, Operation, OperationResult, RowError

__all__ = [
    "Bulk",
    "BulkSummary",
    "Journal",
    "JournalEntry",
    "Operation",
    "OperationResult",
    "RowError",
    "prepare_operation",
]
