"""Agents the benchmarks run: a no-op and a fixed sleep (simulated I/O)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ..runtime import Context, TaskInfo, agent


@agent(name="noop")
async def noop(task: TaskInfo, ctx: Context) -> None:
    return None


@agent(name="sleep")
async def sleep(task: TaskInfo, ctx: Context) -> dict[str, float]:
    """Sleep the payload's seconds; answer when the handler began (``began``, seconds
    since the epoch, the clock the store's stamps use) and how long the sleep really
    took (``slept``: timers fire late when the event loop is busy). The bench splits
    each task's time with them (see fleetops.bench._queue).

    Never shorter than asked, as the I/O it stands for would not be: an event loop
    whose clock ticks in milliseconds (uvloop's) may fire a timer up to a millisecond
    early, and the rest is then slept again.
    """
    began_at = time.time()
    payload: Any = task.payload
    seconds = float(payload["seconds"]) if payload else 0.01
    began = time.perf_counter()
    left = seconds
    while left > 0:
        await asyncio.sleep(left)
        left = began + seconds - time.perf_counter()
    return {"began": began_at, "slept": time.perf_counter() - began}
