"""Drive a workload through a deployed fleet, optionally kill a worker, and report.

Used by ``fleetops load`` and ``make demo``: submit the requests a workload function
generates at a steady rate for a while, ``SIGKILL`` one worker part-way through to
show recovery, wait for everything to finish, and report what happened.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .._exceptions import ConfigError
from ..runtime._context import split_address
from ..store import TERMINAL_STATES, NewTask
from ..telemetry._tracing import TRACEPARENT, new_traceparent
from ._plane import ControlPlane

DRAIN_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class LoadReport:
    target: str
    submitted: int
    succeeded: int
    dead_lettered: int
    unfinished: int
    success_rate: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    throughput_tps: float
    killed_worker: str | None
    #: tasks the killed worker held when it was killed (counted while it was stopped:
    #: each of them is redelivered)
    killed_worker_tasks: int
    worker_failures: int
    tasks_redelivered: int
    readiness_score: int | None
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_workload(entrypoint: str) -> Callable[[int, int], list[Any]]:
    """Import ``module:function``; the function takes (count, seed) and answers payloads."""
    module_name, sep, attr = entrypoint.partition(":")
    if not sep:
        raise ConfigError("--workload", entrypoint, "write it as 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("--workload", entrypoint, f"it does not import: {exc}") from exc
    if not callable(fn):
        raise ConfigError("--workload", entrypoint, "point it at a function (count, seed)")
    return fn  # type: ignore[no-any-return]


async def run_load(
    plane: ControlPlane,
    *,
    target: str,
    payloads: list[Any],
    rate: float,
    kill_at: float | None,
    seed: int = 0,
    progress: Callable[[int, int, str], None] | None = None,
) -> LoadReport:
    """Submit ``payloads`` to ``target`` at ``rate`` per second; kill the busiest worker
    of the target's cluster when the ``kill_at`` fraction of them has been submitted."""
    client = plane.client
    supervisor = plane.supervisor
    if client is None or supervisor is None:
        raise ConfigError("fleet", "not deployed", "deploy the fleet before driving load")
    cluster, agent = split_address(target, "")
    if cluster not in plane.spec.clusters:
        raise ConfigError(
            "--target",
            target,
            f"use 'cluster/agent' with a cluster of the fleet: {', '.join(plane.spec.clusters)}",
        )
    rng = random.Random(seed)
    failures_before = _count(supervisor, "failures")
    began = time.monotonic()
    ids: list[int] = []
    killed: str | None = None
    killed_tasks = 0
    kill_index = None if kill_at is None else int(len(payloads) * kill_at)
    note = ""
    for index, payload in enumerate(payloads):
        due = began + index / rate
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        submitted = await client.submit(
            NewTask(
                queue=cluster,
                agent=agent,
                payload=json.dumps(payload),
                headers=json.dumps({TRACEPARENT: new_traceparent()}),
            )
        )
        ids.append(submitted.id)
        if kill_index is not None and index == kill_index and killed is None:
            killed, killed_tasks = await _kill_busiest(plane, cluster, rng)
            note = (
                f"killed worker {killed} running {killed_tasks} task(s)"
                if killed
                else "no worker to kill"
            )
        if progress is not None and index % 5 == 0:
            progress(await _done(plane, ids), len(payloads), note)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while time.monotonic() < deadline:
        done = await _done(plane, ids)
        if progress is not None:
            progress(done, len(payloads), note)
        if done >= len(ids):
            break
        await asyncio.sleep(0.25)
    elapsed = time.monotonic() - began
    records = await client.run(client.store.get_tasks, ids)
    finished = [r for r in records if r.state == "succeeded" and r.finished_at is not None]
    latencies = sorted(r.finished_at - r.created_at for r in finished)  # type: ignore[operator]
    readiness = await plane.readiness()
    return LoadReport(
        target=target,
        submitted=len(ids),
        succeeded=len(finished),
        dead_lettered=sum(1 for r in records if r.state == "dead"),
        unfinished=sum(1 for r in records if r.state not in TERMINAL_STATES),
        success_rate=round(len(finished) / len(ids), 4) if ids else 0.0,
        latency_p50_s=_pct(latencies, 0.50),
        latency_p95_s=_pct(latencies, 0.95),
        throughput_tps=round(len(finished) / elapsed, 2) if elapsed else 0.0,
        killed_worker=killed,
        killed_worker_tasks=killed_tasks,
        worker_failures=_count(supervisor, "failures") - failures_before,
        tasks_redelivered=sum(1 for r in records if r.redeliveries > 0),
        readiness_score=readiness.score,
        elapsed_s=round(elapsed, 2),
    )


async def _kill_busiest(
    plane: ControlPlane, cluster: str, rng: random.Random
) -> tuple[str | None, int]:
    """SIGKILL the worker of ``cluster`` that holds the most leases (a random one of
    those tied): killing an idle one would show no recovery. Answers its id and how
    many tasks it held when it died: it is stopped (SIGSTOP) before they are counted,
    so that it cannot finish or claim any in between."""
    client, supervisor = plane.client, plane.supervisor
    assert client is not None and supervisor is not None
    candidates = [h for h in supervisor.live_workers(cluster) if h.first_heartbeat_at]
    if not candidates:
        return None, 0
    held = {h.id: len(await client.run(client.store.held_leases, h.id)) for h in candidates}
    most = max(held.values())
    victim = rng.choice([h for h in candidates if held[h.id] == most])
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        holding = len(await client.run(client.store.held_leases, victim.id))
    finally:
        os.kill(victim.pid, signal.SIGKILL)
    return str(victim.id), holding


def _count(supervisor: Any, what: str) -> int:
    return int(getattr(supervisor, what, 0))


async def _done(plane: ControlPlane, ids: list[int]) -> int:
    client = plane.client
    assert client is not None
    records = await client.run(client.store.get_tasks, ids)
    return sum(1 for r in records if r.state in TERMINAL_STATES)


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 4)
