"""The bulk journal: its interface, its entries, and the factory that picks a store by URL.

A journal is a durable record of each operation of a named run. Each
operation's row is written *before* it is sent (state ``sending``, with its
request_id and payload hash) and *after* (``succeeded`` with the
participant_code, or ``failed`` with the reason). A run killed at any instant
and started again finds: succeeded rows to skip, and in-flight or failed rows
to resend with the *same* request_id, so the server replays instead of
applying twice.

Two stores implement :class:`Journal`:

- :class:`~ndax_async.bulk.journal_sqlite.SqliteJournal`, a file on one
  machine (the embedded default), written on a thread of its own;
- :class:`~ndax_async.bulk.journal_postgres.PostgresJournal`, one PostgreSQL
  database shared by every machine (``pip install 'ndax-async[postgres]'``).

:func:`make_journal` picks one: a ``postgresql://`` URL is PostgreSQL, anything
else a SQLite path. Rows belong to a **run name** (the CLI's ``--run``, by
default the input file's name), not to a path, so the same input resumes from
any directory on any machine that reaches the journal.

**Claims with a lease**: a claimed row records its holder (the claiming run's
``run_id``) and a lease expiry (the database server's clock for PostgreSQL).
While the lease is live, another holder's claim is refused (the entry comes
back with ``held=True``, and the engine waits). The holder renews its leases
(:meth:`Journal.renew`, every third of the lease) while it runs; when it dies,
its rows become claimable once the lease expires.

The schema is made on first use and versioned (a ``schema_version`` table);
a journal made by a newer ndax-async is refused with :class:`JournalError`.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from ..errors import JournalError

__all__ = [
    "DEFAULT_LEASE",
    "COLUMNS",
    "DEFAULT_RUN",
    "SCHEMA_VERSION",
    "Journal",
    "JournalEntry",
    "check_schema_version",
    "claim_action",
    "entry_from_row",
    "make_journal",
]

SCHEMA_VERSION = 2
"""1: one SQLite table keyed by the operation's key (before run names); 2: rows keyed by
(run, key), with a holder, a lease and the ``existing`` flag."""
DEFAULT_RUN = "default"
DEFAULT_LEASE = 30.0


@attrs.frozen
class JournalEntry:
    """One operation as the journal last recorded it."""

    key: str
    op: str
    line: int | None
    request_id: str | None
    payload_hash: str | None
    state: str
    participant_code: str | None
    reason: str | None
    error: str | None
    attempts: int
    run_id: str | None = None
    """Which run wrote the entry last (see :meth:`Journal.begin_run`)."""
    holder: str | None = None
    """The run that claimed it last (its ``run_id``)."""
    held: bool = False
    """Claimed by another run whose lease is still live: not to be sent now."""
    existing: bool = False
    """A create found applied under a request_id this SDK did not make (reconciled)."""


COLUMNS = (
    "key, op, line, request_id, payload_hash, state, participant_code, reason, error, attempts,"
    " run_id, holder, existing"
)
"""The columns :func:`entry_from_row` reads, in order (the stores select them, then the lease)."""


def entry_from_row(row: Sequence[Any], live: bool, run_id: str | None) -> JournalEntry:
    """An entry from ``COLUMNS``; ``held`` when another run holds it on a ``live`` lease."""
    *fields, writer, holder, existing = row
    state = fields[5]
    held = state == "sending" and holder is not None and holder != run_id and bool(live)
    return JournalEntry(*fields, writer, holder, held, bool(existing))  # type: ignore[call-arg]


def claim_action(found: JournalEntry, run_id: str | None) -> Literal["none", "mark", "take"]:
    """What a claim by ``run_id`` does to an existing entry: leave it (this run's own,
    or held by another), ``mark`` it as this run's (a success to skip), or ``take`` it
    (sending, failed or lease expired: this run sends it, with the recorded request_id)."""
    if found.run_id == run_id or found.held:
        return "none"
    return "mark" if found.state == "succeeded" else "take"


def check_schema_version(found: int, location: str) -> None:
    """Refuse a journal whose schema is newer than this version of ndax-async knows."""
    if found > SCHEMA_VERSION:
        raise JournalError(
            f"the journal {location} has schema version {found}, newer than this ndax-async"
            f" understands ({SCHEMA_VERSION}): upgrade ndax-async to use it"
        )


class Journal(abc.ABC):
    """The interface a bulk run uses: one run's rows in a durable store.

    ``run`` names the rows this object reads and writes; ``lease`` is how long
    a claim holds a row (seconds) unless renewed.
    """

    location: str
    """Where the journal is, for messages (a URL's password hidden)."""

    def __init__(self, *, run: str = DEFAULT_RUN, lease: float = DEFAULT_LEASE) -> None:
        if not run:
            raise ValueError("a run name must not be empty")
        if lease <= 0:
            raise ValueError("lease must be > 0 seconds")
        self.run = run
        self.lease = lease
        self.run_id: str | None = None
        self._in_run = False

    @property
    @abc.abstractmethod
    def is_open(self) -> bool:
        """Whether :meth:`open` has succeeded and :meth:`close` has not been called since."""

    @abc.abstractmethod
    async def open(self) -> Journal:
        """Open (making the schema on first use); :class:`JournalError` if it cannot be."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close (every call made before is committed already)."""

    def begin_run(self) -> str:
        """Start a new run: every row written from now on carries its id, which is also
        the holder of the rows it claims.

        An entry whose ``run_id`` is the current one was written by this run,
        which is how a bulk run tells a key used twice in its input from a key
        an earlier run left behind. Runs of one journal object take turns:
        :class:`JournalError` if another has begun and not yet ended. (Runs on
        other processes or machines use journal objects of their own.)
        """
        if self._in_run:
            raise JournalError(
                f"the journal {self.location} is in use by another run: runs sharing a journal"
                " object must take turns (give concurrent runs a journal object each)"
            )
        self._in_run = True
        self.run_id = uuid.uuid4().hex
        return self.run_id

    def end_run(self) -> None:
        """End the run :meth:`begin_run` started, so that another may begin."""
        self._in_run = False

    @abc.abstractmethod
    async def claim(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> JournalEntry | None:
        """Record ``key`` as about to be sent by this run, unless the journal has it already.

        Returns ``None`` when the row is new (it is now durably ``sending`` with
        ``request_id``, held by this run), else the entry as it was, after
        :func:`claim_action`: one ``held`` by another run is left alone (try
        again later); a success is marked as this run's (at ``line``), so a
        second use of the key is seen as one; anything else is taken (now
        ``sending``, held by this run: resend it with its recorded request_id
        via :meth:`sending`).
        """

    @abc.abstractmethod
    async def sending(
        self, key: str, op: str, line: int | None, request_id: str | None, payload_hash: str
    ) -> None:
        """Record, durably, that ``key`` is about to be sent with ``request_id`` (held by this run)."""

    @abc.abstractmethod
    async def finished(
        self,
        key: str,
        op: str,
        line: int | None,
        *,
        succeeded: bool,
        participant_code: str | None = None,
        reason: str | None = None,
        error: str | None = None,
        attempts: int = 0,
        existing: bool = False,
    ) -> None:
        """Record, durably, the outcome of ``key`` (its request_id and payload hash are kept)."""

    @abc.abstractmethod
    async def renew(self) -> None:
        """Extend the lease of every row this run holds in state ``sending``."""

    @abc.abstractmethod
    async def get(self, key: str) -> JournalEntry | None:
        """The entry for ``key`` in this run, if any."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, int]:
        """How many operations of this run are in each state (``existing`` apart from ``succeeded``)."""

    @abc.abstractmethod
    async def failures(self) -> list[JournalEntry]:
        """Every operation of this run whose last recorded state is not ``succeeded``, by line."""


def make_journal(spec: str | Path, *, run: str = DEFAULT_RUN, lease: float = DEFAULT_LEASE) -> Journal:
    """The journal at ``spec``: a ``postgresql://`` (or ``postgres://``) URL, or a SQLite path."""
    text = str(spec)
    if text.startswith(("postgresql://", "postgres://")):
        from .journal_postgres import PostgresJournal

        return PostgresJournal(text, run=run, lease=lease)
    from .journal_sqlite import SqliteJournal

    return SqliteJournal(text, run=run, lease=lease)
