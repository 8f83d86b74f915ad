"""Ctrl+C in the command line cancels the running command, on every Python (``cli/interrupt.py``).

The backfill end to end (a real SIGINT to a real process, then the resume) is in
``test_bulk_files.py``; here the mechanism, in process.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from ndax_async.cli import interrupt

from .helpers import default_sigint


def test_ctrl_c_cancels_the_command_rather_than_raising_inside_code_that_catches_it() -> None:
    """Python's default handler raises KeyboardInterrupt wherever the main thread is: here in
    a block that catches BaseException, as aiohttp's response parser does (Python 3.10's
    asyncio.run leaves it so). Handled in the event loop, it cancels the command instead."""
    swallowed: list[BaseException] = []
    unwound: list[bool] = []

    async def command() -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(100_000))  # the default handler would raise here
        except BaseException as error:
            swallowed.append(error)
        try:
            await asyncio.wait_for(asyncio.Event().wait(), 20)  # a hang guard, not a timing
        finally:
            unwound.append(True)

    with default_sigint(), pytest.raises(KeyboardInterrupt):
        interrupt.run(command())
    assert swallowed == []
    assert unwound == [True]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored() -> None:
    """A background job (SIGINT ignored, inherited from its shell) is not stopped by it."""

    async def command() -> str:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(20):  # the loop turns: a handler it had installed would have run
            await asyncio.sleep(0)
        return "done"

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert interrupt.run(command()) == "done"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_without_ctrl_c_the_result_and_errors_pass_through() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def answers() -> int:
        return 7

    with default_sigint():
        assert interrupt.run(answers()) == 7
        with pytest.raises(ValueError, match="boom"):
            interrupt.run(fails())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
