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
async def sleep(task: TaskInfo, ctx: Context) -> float:
    """Sleep the payload's seconds; answer how long the sleep really took (the event
    loop's timers are late by up to a millisecond, and later when it is busy)."""
    payload: Any = task.payload
    began = time.perf_counter()
    await asyncio.sleep(float(payload["seconds"]) if payload else 0.01)
    return time.perf_counter() - began
