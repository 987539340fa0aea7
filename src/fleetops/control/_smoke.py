"""The smoke agent every cluster runs, for ``integration_validation``.

A smoke task for cluster A with routes [B, C] calls B's and C's smoke agents and
answers which clusters answered, proving that tasks flow through every cluster and
every route between clusters.
"""

from __future__ import annotations

from typing import Any

from ..runtime import Context, TaskInfo, agent

SMOKE_AGENT = "fleetops.smoke"
SMOKE_ENTRYPOINT = "fleetops.control._smoke:smoke"


@agent(name=SMOKE_AGENT)
async def smoke(task: TaskInfo, ctx: Context) -> dict[str, Any]:
    payload: Any = task.payload or {}
    reached = [task.cluster]
    for route in payload.get("routes", []):
        answer = await ctx.call(f"{route}/{SMOKE_AGENT}", {"routes": []})
        reached.extend(answer["reached"])
    return {"reached": reached, "worker_attempt": task.attempt}
