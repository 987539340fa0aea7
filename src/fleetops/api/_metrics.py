"""``/metrics``: the fleet's state in the Prometheus text format.

A custom collector reads the store and the supervisor at scrape time, so every
number is current and nothing is double-counted across worker processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..store import TASK_STATES

if TYPE_CHECKING:
    from ..control import ControlPlane


class FleetCollector(Collector):
    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        plane = self.plane
        client = plane.client
        tasks = GaugeMetricFamily(
            "fleetops_tasks", "Tasks by state.", labels=["cluster", "agent", "state"]
        )
        depth = GaugeMetricFamily("fleetops_queue_depth", "Queued tasks.", labels=["cluster"])
        if client is not None:
            store = client.store
            # read on the caller's thread through a separate short-lived read
            counts = store.count_tasks() if _readable(store) else {}
            per_cluster: dict[str, int] = {}
            for (queue, agent, state), n in counts.items():
                tasks.add_metric([queue, agent, state], n)
                if state == "queued":
                    per_cluster[queue] = per_cluster.get(queue, 0) + n
            for name in plane.spec.clusters:
                depth.add_metric([name], per_cluster.get(name, 0))
        yield tasks
        yield depth
        workers = GaugeMetricFamily(
            "fleetops_workers", "Live worker processes.", labels=["cluster"]
        )
        desired = GaugeMetricFamily(
            "fleetops_workers_desired", "Desired worker processes.", labels=["cluster"]
        )
        supervisor = plane.supervisor
        for name in plane.spec.clusters:
            live = len(supervisor.live_workers(name)) if supervisor else 0
            workers.add_metric([name], live)
            desired.add_metric([name], plane.desired_replicas(name))
        yield workers
        yield desired


def _readable(store: object) -> bool:
    return hasattr(store, "count_tasks")


KNOWN_STATES = TASK_STATES
