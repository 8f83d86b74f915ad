"""Reading bulk operations from JSON Lines or CSV files, streamed and off the event loop.

A JSON Lines row is one operation::

    {"op": "create", "key": "row-17", "data": {...wire fields...}}
    {"op": "create_minor", "key": "row-18", "data": {..., "custodian_key": "row-17"}}
    {"op": "update", "key": "row-19", "participant_code": "XYZ456", "data": {"platform_updated_at": ..., ...}}

A CSV file has a header with ``op``, ``key``, ``participant_code``,
``custodian_key`` and any wire fields as further columns; blank cells are
absent, ``metadata`` holds JSON, ``prefunded`` holds true/false.

A row that cannot be read becomes a :class:`~ndax_async.bulk.RowError` with
its line number; it never stops the run.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from .engine import OP_KINDS, Operation, RowError

__all__ = ["count_rows", "read_operations"]

_BATCH = 512
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


def _csv_rows(lines: list[str], header: list[str], first: int) -> Iterator[Operation | RowError]:
    for offset, record in enumerate(csv.reader(io.StringIO("".join(lines)))):
        number = first + offset
        if not record:
            continue
        if len(record) != len(header):
            yield RowError(line=number, reason=f"expected {len(header)} columns, found {len(record)}")
            continue
        cells = {name: value for name, value in zip(header, record, strict=True) if value != ""}
        data: dict[str, Any] = {k: v for k, v in cells.items() if k not in _CSV_SPECIAL}
        try:
            if "metadata" in data:
                data["metadata"] = json.loads(data["metadata"])
        except ValueError:
            yield RowError(line=number, key=cells.get("key"), reason="'metadata' is not valid JSON")
            continue
        if "prefunded" in data:
            data["prefunded"] = {"true": True, "false": False}.get(
                data["prefunded"].lower(), data["prefunded"]
            )
        yield _operation({**{k: cells[k] for k in _CSV_SPECIAL if k in cells}, "data": data}, number)


async def read_operations(path: str | Path) -> AsyncIterator[Operation | RowError]:
    """Stream the operations of a ``.jsonl`` or ``.csv`` file, in batches read on a thread."""
    is_csv = str(path).lower().endswith(".csv")
    handle = await asyncio.to_thread(open, path, encoding="utf-8", errors="replace", newline="")
    try:
        header: list[str] | None = None
        number = 0
        while True:
            lines = await asyncio.to_thread(_read_batch, handle)
            if not lines:
                return
            if is_csv:
                if header is None:
                    header = next(csv.reader([lines.pop(0)]), [])
                    number += 1
                    if not lines:
                        continue
                for item in _csv_rows(lines, header, number + 1):
                    yield item
            else:
                for offset, line in enumerate(lines):
                    parsed = parse_json_line(line, number + offset + 1)
                    if parsed is not None:
                        yield parsed
            number += len(lines)
    finally:
        await asyncio.to_thread(handle.close)


def _read_batch(handle: io.TextIOBase) -> list[str]:
    lines = []
    for _ in range(_BATCH):
        line = handle.readline()
        if not line:
            break
        lines.append(line)
    return lines


def count_rows(path: str | Path) -> int:
    """Count the rows of a file (blocking: call it on a thread)."""
    total = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            total += chunk.count(b"\n")
    return total - (1 if str(path).lower().endswith(".csv") else 0)
