"""Rows and operations the bulk tests share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ndax_async import RetryPolicy
from ndax_async.bulk import Operation

from .helpers import customer_wire, minor_wire

FAST = RetryPolicy(backoff_initial=0.001, backoff_max=0.01, rate_limit_pause=0.01)


def creates(customers: int) -> list[dict[str, Any]]:
    return [row for row in batch(customers) if row["op"] == "create"]


def batch(customers: int, minors_every: int = 3) -> list[dict[str, Any]]:
    """JSON-Lines-shaped rows: creates, minors naming custodians by key, updates."""
    rows: list[dict[str, Any]] = []
    for n in range(customers):
        rows.append(
            {"op": "create", "key": f"c{n}", "data": customer_wire(email=f"c{n}@mail.com", id_number=f"I{n}")}
        )
        if n % minors_every == 0:
            minor = minor_wire(email=f"m{n}@mail.com", id_number=f"M{n}", custodian_participant_code=None)
            rows.append({"op": "create_minor", "key": f"m{n}", "data": {**minor, "custodian_key": f"c{n}"}})
    return rows


def operations(rows: list[dict[str, Any]]) -> Iterator[Operation]:
    for line, row in enumerate(rows, 1):
        data = dict(row["data"])
        yield Operation(
            key=row["key"],
            op=row["op"],
            data=data,
            custodian_key=data.pop("custodian_key", None),
            participant_code=row.get("participant_code"),
            line=line,
        )
