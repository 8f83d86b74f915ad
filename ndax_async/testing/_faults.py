"""Fault injection for the sandbox: what can go wrong, how often, deterministically.

One random draw per request (in arrival order, from a seeded generator) picks
at most one fault, so a run with the same seed and the same request order sees
the same faults.
"""

from __future__ import annotations

import operator
import random
import threading

import attrs

__all__ = ["FAULT_KINDS", "Faults"]

# Each fault kind, with when it strikes relative to processing.
FAULT_KINDS = (
    "drop_before",  # connection dropped before the request is processed
    "drop_after",  # processed and committed, then the response is lost
    "err503",  # 503 before processing
    "err500_after",  # processed and committed, then a 500
    "err429",  # 429 with Retry-After, before processing
    "err429_bare",  # 429 without any header, before processing
    "slow_after",  # processed and committed, then a response slower than the client's timeout
)
_probabilities = operator.attrgetter(*FAULT_KINDS)


@attrs.define(kw_only=True)
class Faults:
    """Probabilities (0..1) of each fault per request, plus latency.

    ``latency`` (seconds) is added to every response; ``slow_seconds`` is how
    long a ``slow_after`` response takes; ``retry_after`` is the header value a
    ``err429`` carries. Probabilities must sum to at most 1.
    """

    drop_before: float = 0.0
    drop_after: float = 0.0
    err503: float = 0.0
    err500_after: float = 0.0
    err429: float = 0.0
    err429_bare: float = 0.0
    slow_after: float = 0.0
    latency: float = 0.0
    slow_seconds: float = 5.0
    retry_after: float = 0.0
    seed: int | None = None
    _random: random.Random = attrs.field(init=False, repr=False)
    _lock: threading.Lock = attrs.field(init=False, repr=False, factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        total = sum(getattr(self, kind) for kind in FAULT_KINDS)
        if any(getattr(self, kind) < 0 for kind in FAULT_KINDS) or total > 1.0 + 1e-9:
            raise ValueError("fault probabilities must be >= 0 and sum to at most 1")
        self._random = random.Random(self.seed)  # noqa: S311 - not for security

    @property
    def active(self) -> bool:
        """True when any fault or latency is configured."""
        return self.latency > 0 or max(_probabilities(self)) > 0

    def draw(self) -> str | None:
        """The fault for the next request, or ``None``."""
        with self._lock:
            roll = self._random.random()
        for kind in FAULT_KINDS:
            roll -= getattr(self, kind)
            if roll < 0:
                return kind
        return None
