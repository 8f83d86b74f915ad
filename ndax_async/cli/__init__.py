"""The ``ndax-async`` command line: ``sandbox``, ``demo`` and ``backfill``.

``python -m ndax_async.cli`` and the ``ndax-async`` script both run :func:`main`.
"""

from __future__ import annotations

from .main import main, parse_faults

__all__ = ["main", "parse_faults"]
