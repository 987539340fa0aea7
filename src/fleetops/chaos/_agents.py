"""The agent chaos runs use: some work, then one side effect through the journal."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from ..runtime import Context, EffectCall, TaskInfo, agent
from ._ledger import Ledger

LEDGER_ENV = "FLEETOPS_CHAOS_LEDGER"
#: CPU seconds this module spends when it is imported (``kill-workers --import-time``)
IMPORT_SECONDS_ENV = "FLEETOPS_CHAOS_IMPORT_SECONDS"
_ledger: Ledger | None = None


def _import_work(seconds: float) -> None:
    """Keep a CPU busy for ``seconds``, as a real agent's module does while it imports
    a large SDK or model library: what each new worker pays before it can run a task,
    unless a warm spare paid it ahead."""
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


_import_work(float(os.environ.get(IMPORT_SECONDS_ENV) or 0))


def _get_ledger() -> Ledger:
    global _ledger
    if _ledger is None:
        _ledger = Ledger(os.environ[LEDGER_ENV])
    return _ledger


@agent(name="effectful")
async def effectful(task: TaskInfo, ctx: Context) -> dict[str, Any]:
    payload: Any = task.payload or {}
    await asyncio.sleep(float(payload.get("work_s", 0.02)))

    def charge(call: EffectCall) -> str:
        return _get_ledger().apply(call.key, task.id, call.fencing_token)

    outcome = await ctx.effect("charge", charge)
    await asyncio.sleep(float(payload.get("after_s", 0.005)))
    return {"effect": outcome, "attempt": task.attempt}
