"""Agents the benchmarks run: a no-op and a fixed sleep (simulated I/O)."""

from __future__ import annotations

import asyncio
from typing import Any

from ..runtime import Context, TaskInfo, agent


@agent(name="noop")
async def noop(task: TaskInfo, ctx: Context) -> None:
    return None


@agent(name="sleep")
async def sleep(task: TaskInfo, ctx: Context) -> None:
    payload: Any = task.payload
    await asyncio.sleep(float(payload["seconds"]) if payload else 0.01)
