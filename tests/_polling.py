"""Waiting, in tests, for state that another process or thread changes."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from pathlib import Path


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], within: float = 15.0, every: float = 0.02
) -> None:
    """Poll ``predicate`` until it holds; fail with TimeoutError after ``within`` seconds.

    Polling is the honest way to wait here: the state lives in a store or another
    process, where no in-process event could announce it.
    """
    async with asyncio.timeout(within):
        while True:
            outcome = predicate()
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if outcome:
                return
            await asyncio.sleep(every)


def exited(pid: int) -> bool:
    """The process is gone, or a zombie nobody reaped yet (it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status
