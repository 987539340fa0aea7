"""Agents that the supervisor tests run in real worker processes."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from fleetops import Context, TaskInfo, agent


@agent(name="echo")
async def echo(task: TaskInfo, ctx: Context) -> Any:
    await asyncio.sleep(0.01)
    return task.payload


@agent(name="crash")
async def crash(task: TaskInfo, ctx: Context) -> None:
    os._exit(17)  # the whole worker process dies mid-task


@agent(name="slow")
async def slow(task: TaskInfo, ctx: Context) -> str:
    await asyncio.sleep(float(task.payload or 0.5))
    return "slept"


@agent(name="hold_write_lock")
async def hold_write_lock(task: TaskInfo, ctx: Context) -> str:
    """On its first attempt, take the SQLite store's write lock and keep it."""
    if task.attempt == 1:
        import sqlite3

        conn = sqlite3.connect(task.payload["db"], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        await asyncio.sleep(60)
    return "done"


@agent(name="loop_kind")
async def loop_kind(task: TaskInfo, ctx: Context) -> str:
    """The module of the event loop the worker runs on ('uvloop', 'asyncio.unix_events')."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


@agent(name="chatty")
async def chatty(task: TaskInfo, ctx: Context) -> int:
    """Log ``payload["lines"]`` lines tagged ``payload["tag"]``."""
    for n in range(task.payload["lines"]):
        ctx.log.info("chatty.line", extra={"tag": task.payload["tag"], "n": n})
    return int(task.payload["lines"])


@agent(name="block")
async def block(task: TaskInfo, ctx: Context) -> str:
    """Block the worker's event loop for ``payload`` seconds (a CPU-bound step, say)."""
    time.sleep(float(task.payload))  # noqa: ASYNC251  # on purpose
    return "unblocked"


@agent(name="deaf")
async def deaf(task: TaskInfo, ctx: Context) -> str:
    """Ignores every cancellation for a minute (a handler that cannot be stopped)."""
    end = time.monotonic() + 60
    while time.monotonic() < end:
        try:
            await asyncio.sleep(end - time.monotonic())
        except asyncio.CancelledError:
            continue
    return "finally"


HOARD: list[bytes] = []


@agent(name="hoard")
async def hoard(task: TaskInfo, ctx: Context) -> int:
    """Keep ``payload`` MiB for the life of the worker (a cache that only grows)."""
    HOARD.append(b"\x01" * (int(task.payload) << 20))
    return len(HOARD)


@agent(name="slow_effect")
async def slow_effect(task: TaskInfo, ctx: Context) -> str:
    """An effect that takes a while ({"seconds": s, "sink": path}): it writes 'began'
    and 'ended' lines to the sink, so a test counts how often it ran."""
    seconds, sink = task.payload["seconds"], task.payload["sink"]

    def note(line: str) -> None:
        with open(sink, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    async def charge() -> str:
        note("began")
        await asyncio.sleep(seconds)
        note("ended")
        return "charged"

    return str(await ctx.effect("charge", charge))
