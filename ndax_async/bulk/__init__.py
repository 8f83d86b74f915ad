"""Bulk onboarding and backfill: the engine, its journal and its row readers.

``from ndax_async.bulk import Bulk, Operation`` is the public path; the engine
lives in :mod:`.engine`, the journal in :mod:`.journal`, row readers in
:mod:`.rows`.
"""

from __future__ import annotations

from .engine import Bulk, BulkSummary, Operation, OperationResult, RowError
from .journal import Journal, JournalEntry

__all__ = ["Bulk", "BulkSummary", "Journal", "JournalEntry", "Operation", "OperationResult", "RowError"]
