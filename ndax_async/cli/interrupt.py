"""Ctrl+C for the command line: it cancels the running command, on every Python.

Python's default SIGINT handler raises :class:`KeyboardInterrupt` at whatever
line the main thread is running. Under ``asyncio.run`` on Python 3.10 (no
``asyncio.Runner``) that can be inside a library callback that catches
``BaseException``: aiohttp's response parser turns it into a connection error,
which the retry loop then retries, so the Ctrl+C is lost. :func:`run` handles
SIGINT in the event loop instead, as ``asyncio.Runner`` does from 3.11: the
first Ctrl+C cancels the command's task, which unwinds through its ``finally``
blocks (each reported outcome is committed first), then :class:`KeyboardInterrupt`
is raised; a second Ctrl+C raises it at once.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where Ctrl+C cancels ``main`` and then raises :class:`KeyboardInterrupt`.

    A process whose SIGINT is ignored (a background job started by a shell
    without job control, ``nohup``) keeps ignoring it, as ``asyncio.Runner`` does.
    """
    handled = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    return asyncio.run(_cancelled_by_sigint(main) if handled else main)


async def _cancelled_by_sigint(main: Coroutine[Any, Any, T]) -> T:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        loop.remove_signal_handler(signal.SIGINT)  # back to the default: a second Ctrl+C raises at once
        task.cancel()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        return await main
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if not interrupted:
            loop.remove_signal_handler(signal.SIGINT)
