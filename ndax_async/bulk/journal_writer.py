"""The journal's SQLite side: the schema, one transaction per batch, and a loop serving them.

It imports only the standard library, so it also runs in a small child
process (:func:`main`, see :func:`launch_command`): requests arrive framed on
stdin and answers leave framed on stdout, each a ``marshal``-ed tuple of plain
values after a 4-byte big-endian length, on pipes only the parent holds. The
parent is :class:`ndax_async.bulk.journal.Journal`; where a child process cannot
be started it runs the same :func:`handle` on a thread instead.

Every answer is ``(True, result)`` or ``(False, (error class name, message))``.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
import struct
import sys

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the child ~5 ms
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    Row = tuple[Any, ...]

UPSERT = (
    "INSERT INTO operations (key, op, line, request_id, payload_hash, state, participant_code,"
    " reason, error, attempts, updated_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(key) DO UPDATE SET op=excluded.op, line=excluded.line,"
    " request_id=COALESCE(excluded.request_id, request_id),"
    " payload_hash=COALESCE(excluded.payload_hash, payload_hash), state=excluded.state,"
    " participant_code=excluded.participant_code, reason=excluded.reason, error=excluded.error,"
    " attempts=excluded.attempts, updated_at=excluded.updated_at, run_id=excluded.run_id"
)

INSERT_NEW = (
    "INSERT INTO operations (key, op, line, request_id, payload_hash, state, participant_code,"
    " reason, error, attempts, updated_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT(key) DO NOTHING"
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    key TEXT PRIMARY KEY,
    op TEXT NOT NULL,
    line INTEGER,
    request_id TEXT,
    payload_hash TEXT,
    state TEXT NOT NULL,
    participant_code TEXT,
    reason TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    run_id TEXT
)
"""

ENTRY_COLUMNS = (
    "key, op, line, request_id, payload_hash, state, participant_code, reason, error, attempts, run_id"
)


def connect(path: str) -> sqlite3.Connection:
    """Open the journal at ``path``, creating the table, and migrating a journal made before run ids."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a killed process
    db.execute(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(operations)")}
    if "run_id" not in columns:
        db.execute("ALTER TABLE operations ADD COLUMN run_id TEXT")
    return db


def commit(db: sqlite3.Connection, keys: list[str], rows: list[Row], claims: list[Row]) -> list[Row]:
    """One transaction: write ``rows``, read ``keys`` (seeing those writes), insert the
    ``claims`` that are new, and mark the claimed keys an earlier run left as this
    run's (so a second use in this run is seen as one). All committed or none.

    Returns the rows read (:data:`ENTRY_COLUMNS`), as they were before the claims.
    """
    found: dict[str, Row] = {}
    try:
        db.execute("BEGIN")
        if rows:
            db.executemany(UPSERT, rows)
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            marks = ",".join("?" * len(chunk))
            query = f"SELECT {ENTRY_COLUMNS} FROM operations WHERE key IN ({marks})"  # noqa: S608
            for row in db.execute(query, chunk):
                found[row[0]] = row
        if claims:
            db.executemany(INSERT_NEW, claims)
            # a claim is (key, op, line, ..., updated_at, run_id); an entry ends with its run_id
            taken = [(c[-1], c[2], c[0]) for c in claims if c[0] in found and found[c[0]][-1] != c[-1]]
            if taken:
                db.executemany("UPDATE operations SET run_id = ?, line = ? WHERE key = ?", taken)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.rollback()
        raise
    return list(found.values())


def counts(db: sqlite3.Connection) -> list[Row]:
    """``(state, count)`` for each state."""
    return db.execute("SELECT state, COUNT(*) FROM operations GROUP BY state").fetchall()


def failures(db: sqlite3.Connection) -> list[Row]:
    """Every entry whose last recorded state is not ``succeeded``, by line."""
    query = f"SELECT {ENTRY_COLUMNS} FROM operations WHERE state != 'succeeded' ORDER BY line, key"  # noqa: S608
    return db.execute(query).fetchall()


def handle(db: sqlite3.Connection, request: tuple[Any, ...]) -> tuple[bool, Any]:
    """Answer one request: ``("commit", keys, rows, claims)``, ``("counts",)`` or ``("failures",)``."""
    kind, *args = request
    try:
        if kind == "commit":
            return True, commit(db, *args)
        if kind == "counts":
            return True, counts(db)
        if kind == "failures":
            return True, failures(db)
        return False, ("ValueError", f"unknown request {kind!r}")
    except sqlite3.Error as error:
        return False, (type(error).__name__, str(error))


def launch_command(path: str) -> list[str]:
    """The command that serves the journal at ``path`` from a child Python.

    ``-I -S``: isolated, and without site-packages (only the standard library is
    needed). The module is imported from its folder, put last on the path so
    it shadows nothing, rather than run as a script: an import uses the cached
    bytecode, a script is compiled on every start (up to 3 ms of each run).
    """
    folder, module = os.path.split(os.path.splitext(__file__)[0])
    code = f"import sys; sys.path.append(sys.argv[1]); import {module}; {module}.main()"
    return [sys.executable, "-I", "-S", "-c", code, folder, path]


def frame(value: Any) -> bytes:
    """``value`` as one frame: its length, then its ``marshal`` bytes."""
    data = marshal.dumps(value)
    return struct.pack(">I", len(data)) + data


def serve(path: str, requests: BinaryIO, answers: BinaryIO) -> None:
    """Open the journal, say whether that worked, then answer each request until end of input.

    A request cut short (the parent died while writing it) was never
    acknowledged, so nothing of it is committed.
    """
    try:
        db = connect(path)
    except sqlite3.Error as error:
        answers.write(frame((False, (type(error).__name__, str(error)))))
        answers.flush()
        return
    answers.write(frame((True, None)))
    answers.flush()
    try:
        while len(head := requests.read(4)) == 4:
            size = struct.unpack(">I", head)[0]
            body = requests.read(size)
            if len(body) < size:
                break
            request = marshal.loads(body)  # noqa: S302 (from the parent, on a pipe only it holds)
            answers.write(frame(handle(db, request)))
            answers.flush()
    except BrokenPipeError:
        pass  # the parent is gone: what it sent is committed, and nobody is left to tell
    finally:
        db.close()


def main() -> None:
    """The child process: serve the journal named on the command line over stdin and stdout."""
    import signal

    # Ctrl+C reaches the whole process group: the parent decides, and this process
    # ends when the parent closes its input (after the last batch is committed).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve(sys.argv[-1], sys.stdin.buffer, sys.stdout.buffer)
    # The database is closed and every answer flushed: skip the interpreter's
    # teardown, a few ms the parent would wait for at the end of every run.
    os._exit(0)


if __name__ == "__main__":
    main()
