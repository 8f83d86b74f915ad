"""Test helpers for code that uses ndax_async.

- :class:`FakeClock`: a clock whose ``sleep`` returns at once and moves time
  forward, so retry and rate-limit waits take no real time in tests.
"""

from __future__ import annotations

from ._clock import FakeClock

__all__ = ["FakeClock"]
