"""Shards of a run: which rows a ``--shard I/N`` process runs, the same on every machine.

A row belongs to shard ``int.from_bytes(sha256(key.encode("utf-8")).digest()[:8], "big") % N``:
SHA-256 of the key's UTF-8 bytes, its first 8 bytes read as a big-endian unsigned
integer, modulo the number of shards. It depends on nothing but the key (not
Python's per-process ``hash()`` seed, not the platform), so every machine and
Python version puts a row in the same shard. Shards are numbered from 0
(``0/3``, ``1/3``, ``2/3``), like a Kubernetes indexed Job's completion index.
"""

from __future__ import annotations

import hashlib

import attrs

__all__ = ["Shard", "shard_of"]


def shard_of(key: str, count: int) -> int:
    """The shard (0 to ``count - 1``) that ``key`` belongs to."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % count


@attrs.frozen
class Shard:
    """Shard ``index`` of ``count`` (``Shard.parse("1/3")``)."""

    index: int
    count: int

    def __attrs_post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"a shard is I/N with N >= 1 and I from 0 to N-1, not {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"I/N"`` as a shard; ``ValueError`` if it is not one."""
        index, slash, count = text.partition("/")
        if not slash or not index.strip().isdigit() or not count.strip().isdigit():
            raise ValueError(f"a shard is I/N (e.g. 0/3), not {text!r}")
        return cls(int(index), int(count))

    def owns(self, key: str) -> bool:
        """Whether rows keyed ``key`` are this shard's."""
        return shard_of(key, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
