"""Reading bulk operations from JSON Lines or CSV files, streamed and off the event loop.

A JSON Lines row is one operation::

    {"op": "create", "key": "row-17", "data": {...wire fields...}}
    {"op": "create_minor", "key": "row-18", "data": {..., "custodian_key": "row-17"}}
    {"op": "update", "key": "row-19", "participant_code": "XYZ456", "data": {"platform_updated_at": ..., ...}}

A CSV file has a header with ``op``, ``key``, ``participant_code``,
``custodian_key`` and any wire fields as further columns; blank cells are
absent, ``metadata`` holds JSON, ``prefunded`` holds true/false. One
:mod:`csv` reader reads the whole file, so a quoted cell may hold newlines
anywhere; a row's line is the file line it starts on.

The file is read on a worker thread, a batch of rows at a time, so memory
stays bounded and the event loop never waits on the disk. A row that cannot
be read becomes a :class:`~ndax_async.bulk.RowError` with its line number;
it never stops the run.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from .results import OP_KINDS, Operation, RowError

__all__ = ["count_rows", "parse_json_line", "read_operations"]

BATCH = 512  # rows read per trip to the worker thread
_CSV_SPECIAL = ("op", "key", "participant_code", "custodian_key")


def parse_json_line(line: str, number: int) -> Operation | RowError | None:
    """One JSON Lines row; ``None`` for a blank line."""
    if not line.strip():
        return None
    try:
        row = json.loads(line)
    except ValueError as error:
        return RowError(line=number, reason=f"malformed JSON: {error}")
    if not isinstance(row, dict):
        return RowError(line=number, reason="a row must be a JSON object")
    return _operation(row, number)


def parse_csv_record(header: list[str], record: list[str], number: int) -> Operation | RowError:
    """One CSV record (its cells, after the ``header``) starting on line ``number``."""
    if len(record) != len(header):
        return RowError(line=number, reason=f"expected {len(header)} columns, found {len(record)}")
    cells = {name: value for name, value in zip(header, record, strict=True) if value != ""}
    data: dict[str, Any] = {k: v for k, v in cells.items() if k not in _CSV_SPECIAL}
    if "metadata" in data:
        try:
            data["metadata"] = json.loads(data["metadata"])
        except ValueError:
            return RowError(line=number, key=cells.get("key"), reason="'metadata' is not valid JSON")
    if "prefunded" in data:
        data["prefunded"] = {"true": True, "false": False}.get(data["prefunded"].lower(), data["prefunded"])
    return _operation({**{k: cells[k] for k in _CSV_SPECIAL if k in cells}, "data": data}, number)


def _operation(row: dict[str, Any], number: int) -> Operation | RowError:
    key = row.get("key")
    if not isinstance(key, str) or not key.strip():
        return RowError(line=number, reason="missing field 'key' (a non-empty string)")
    op = row.get("op")
    if op not in OP_KINDS:
        return RowError(line=number, key=key, reason=f"'op' must be one of {', '.join(OP_KINDS)}, not {op!r}")
    data = row.get("data")
    if not isinstance(data, dict):
        return RowError(line=number, key=key, reason="missing field 'data' (an object)")
    data = dict(data)
    custodian_key = data.pop("custodian_key", None) or row.get("custodian_key")
    participant_code = row.get("participant_code")
    if op == "update" and not isinstance(participant_code, str):
        return RowError(line=number, key=key, reason="an update needs 'participant_code' (a string)")
    if custodian_key is not None and not isinstance(custodian_key, str):
        return RowError(line=number, key=key, reason="'custodian_key' must be a string")
    return Operation(
        key=key,
        op=op,
        data=data,
        participant_code=participant_code if isinstance(participant_code, str) else None,
        custodian_key=custodian_key,
        line=number,
    )


def _json_rows(handle: Any) -> Iterator[Operation | RowError]:
    for number, line in enumerate(handle, 1):
        parsed = parse_json_line(line, number)
        if parsed is not None:
            yield parsed


def _csv_rows(handle: Any) -> Iterator[Operation | RowError]:
    reader = csv.reader(handle)
    header: list[str] | None = None
    start = 1  # the line the next record starts on
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as error:  # e.g. a quote never closed: the rest of the file is that cell
            yield RowError(line=start, reason=f"malformed CSV: {error}")
            return
        number, start = start, reader.line_num + 1
        if not record:
            continue  # a blank line
        if header is None:
            header = record
        else:
            yield parse_csv_record(header, record, number)


def _take(rows: Iterator[Operation | RowError], count: int) -> list[Operation | RowError]:
    return list(itertools.islice(rows, count))


async def read_operations(path: str | Path) -> AsyncIterator[Operation | RowError]:
    """Stream the operations of a ``.jsonl`` or ``.csv`` file, :data:`BATCH` rows per
    trip to a worker thread."""
    is_csv = str(path).lower().endswith(".csv")
    handle = await asyncio.to_thread(open, path, encoding="utf-8", errors="replace", newline="")
    try:
        rows = _csv_rows(handle) if is_csv else _json_rows(handle)
        while batch := await asyncio.to_thread(_take, rows, BATCH):
            for row in batch:
                yield row
    finally:
        await asyncio.to_thread(handle.close)


def count_rows(path: str | Path) -> int:
    """Count the rows of a file, blank lines and a CSV header aside (blocking: call it on a thread)."""
    rows = 0
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        if not str(path).lower().endswith(".csv"):
            return sum(1 for line in handle if line.strip())
        try:
            for record in csv.reader(handle):
                rows += bool(record)
        except csv.Error:
            pass  # read_operations reports it as a row error; this is only a progress total
    return max(rows - 1, 0)  # the header
