"""The agent chaos runs use: some work, then one side effect through the journal."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..runtime import Context, EffectCall, TaskInfo, agent
from ._ledger import Ledger

LEDGER_ENV = "FLEETOPS_CHAOS_LEDGER"
_ledger: Ledger | None = None


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
