"""``/metrics``: the whole fleet in the Prometheus text format.

At scrape time a collector merges the latest metrics snapshot of every worker the
store knows (live ones and dead ones: their counters still count, their gauges no
longer do) with the supervisor's own metrics and the task counts in the store, so
every number is current and nothing is double-counted across worker processes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ..telemetry import MetricSet, catalog

if TYPE_CHECKING:
    from ..control import ControlPlane

#: A worker whose snapshot is older than this no longer contributes gauges.
STALE_AFTER = 15.0


async def fleet_metrics(plane: ControlPlane) -> MetricSet:
    """The merged metrics of the fleet right now (also what the history store ingests)."""
    client = plane.client
    merged = MetricSet()
    if client is None:
        return merged
    rows = await client.run(client.store.get_telemetry)
    counts = await plane.task_counts()
    now = plane.clock.now()
    merged = MetricSet.merge(
        (json.loads(data) for _, _, _, data in rows),
        gauges_from=(now - at < STALE_AFTER for _, _, at, _ in rows),
    )
    if plane.supervisor is not None:
        merged.update(plane.supervisor.metrics)
    per_cluster: dict[str, int] = {}
    for (queue, agent, state), n in counts.items():
        merged.set(catalog.TASKS, (queue, agent, state), n)
        if state == "queued":
            per_cluster[queue] = per_cluster.get(queue, 0) + n
    supervisor = plane.supervisor
    for name in plane.spec.clusters:
        merged.set(catalog.QUEUE_DEPTH, (name,), per_cluster.get(name, 0))
        live = (
            sum(1 for h in supervisor.live_workers(name) if h.first_heartbeat_at)
            if supervisor
            else 0
        )
        merged.set(catalog.WORKERS, (name,), live)
        merged.set(catalog.WORKERS_DESIRED, (name,), plane.desired_replicas(name))
    return merged


async def render(plane: ControlPlane) -> bytes:
    """The Prometheus text exposition of the fleet's metrics."""
    return (await fleet_metrics(plane)).exposition()
