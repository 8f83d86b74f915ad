"""Bulk onboarding and backfill: the engine, its journal and its row readers.

``from ndax_async.bulk import Bulk, Operation`` is the public path; the engine
lives in :mod:`.engine`, what goes in and comes out in :mod:`.results`, the
journal's interface in :mod:`.journal` (SQLite in :mod:`.journal_sqlite`,
PostgreSQL in :mod:`.journal_postgres`), waiting on it in :mod:`.claims`,
shards in :mod:`.shards`, row readers in :mod:`.rows`.
"""

from __future__ import annotations

from .engine import Bulk
from .journal import Journal, JournalEntry, make_journal
from .journal_postgres import PostgresJournal
from .journal_sqlite import SqliteJournal
from .results import BulkSummary, Operation, OperationResult, RowError, prepare_operation
from .shards import Shard, shard_of

__all__ = [
    "Bulk",
    "BulkSummary",
    "Journal",
    "JournalEntry",
    "Operation",
    "OperationResult",
    "PostgresJournal",
    "RowError",
    "Shard",
    "SqliteJournal",
    "make_journal",
    "prepare_operation",
    "shard_of",
]
