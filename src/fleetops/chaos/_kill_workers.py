"""The ``kill-workers`` experiment: SIGKILL random workers under load, stop one, and
prove that nothing is lost and no effect happens twice.

Steady-state hypothesis: every submitted task reaches a terminal state, every
succeeded task applied its side effect exactly once at the receiver, and recovery
stays within its targets (crash detected p99 ≤ 1 s, redelivered task running again
p99 ≤ 2 s, hung worker detected ≤ 3 s).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._clock import SystemClock
from ..queue import QueueClient
from ..runtime import (
    ClusterPlan,
    RestartPolicy,
    Supervisor,
    SupervisorEvent,
    WorkerHandle,
    WorkerSettings,
)
from ..runtime._supervisor import DEFAULT_SPARES
from ..store._open import redact
from ._run import AGENT_ENTRYPOINT, Tally, drive, new_ledger, tally
from ._stats import percentile, seconds


@dataclass(frozen=True, slots=True)
class KillWorkersConfig:
    tasks: int = 2000
    workers: int = 4
    kill_every: float = 1.0
    stop_one: bool = True
    #: warm spare workers the supervisor keeps (see fleetops.runtime._supervisor)
    spares: int = DEFAULT_SPARES
    work_s: float = 0.5
    #: CPU seconds the agents' module takes to import in each new worker, as a real
    #: agent's SDK imports do (0: the module is light)
    import_s: float = 0.0
    concurrency: int = 25
    store_url: str | None = None
    seed: int | None = None
    timeout: float = 600.0
    #: stop killing after this many kills (None: until the work is done); bounds the
    #: faults per run whatever the machine's speed
    max_kills: int | None = None


@dataclass(slots=True)
class KillWorkersResult(Tally):
    kills: int
    stops: int
    detection_p99_s: float | None
    recovery_p99_s: float | None
    hang_detection_s: float | None
    elapsed_s: float
    store: str
    #: the run ended at config.timeout with tasks still open: they count as lost
    timed_out: bool = False
    detection_samples: list[float] = field(default_factory=list, repr=False)
    recovery_samples: list[float] = field(default_factory=list, repr=False)

    @property
    def faults_injected(self) -> bool:
        """Whether a worker was killed or stopped: a run that ended before the first
        fault proves nothing, whatever its counts say."""
        return bool(self.kills or self.stops)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("detection_samples")
        out.pop("recovery_samples")
        out["faults_injected"] = self.faults_injected
        return out


async def kill_workers(
    config: KillWorkersConfig,
    *,
    progress: Callable[[int, int, int], None] | None = None,
) -> KillWorkersResult:
    """Run the experiment; ``progress(done, total, kills)`` is called as it goes."""
    clock = SystemClock()
    rng = random.Random(config.seed)
    with tempfile.TemporaryDirectory(prefix="fleetops-chaos-") as tmp:
        workdir = Path(tmp)
        store_url = config.store_url or f"sqlite:///{workdir / 'fleet.db'}"
        ledger_path, env = new_ledger(workdir, config.import_s)
        cluster = f"chaos-{uuid.uuid4().hex[:8]}"
        detected: dict[str, float] = {}
        suspected: dict[str, float] = {}

        def on_event(event: SupervisorEvent) -> None:
            if event.worker is None:
                return
            if event.kind == "agent_failure.redistribute_agent_workload":
                detected.setdefault(event.worker, event.at)
            elif event.kind == "worker.suspected":
                suspected.setdefault(event.worker, event.at)

        plan = ClusterPlan(
            name=cluster,
            agents=(AGENT_ENTRYPOINT,),
            replicas=config.workers,
            worker=WorkerSettings(concurrency=config.concurrency, shutdown_grace=2.0),
        )
        supervisor = Supervisor(
            store_url,
            [plan],
            clock=clock,
            restart=RestartPolicy(intensity=10_000),
            rng=rng,
            on_event=on_event,
            env=env,
            log_dir=workdir / "logs",
            spares=config.spares,
        )
        kills: dict[str, float] = {}
        stops: dict[str, float] = {}
        started = clock.monotonic()
        submitted, timed_out = await drive(
            supervisor,
            store_url,
            cluster,
            lambda: _killer(supervisor, cluster, config, rng, clock, kills, stops),
            tasks=config.tasks,
            work_s=config.work_s,
            time_limit=config.timeout,
            clock=clock,
            progress=None if progress is None else lambda d, t: progress(d, t, len(kills)),
        )
        elapsed = clock.monotonic() - started
        async with QueueClient(store_url, clock=clock) as client:
            records = await client.run(client.store.get_tasks, submitted)
            attempts = {}
            for task_id in [r.id for r in records if r.redeliveries > 0]:
                attempts[task_id] = await client.run(client.store.attempts, task_id)
        counted = tally(submitted, records, ledger_path)

    record_by_id = {r.id: r for r in records}
    recovery: list[float] = []
    for task_id, rows in attempts.items():
        for i, row in enumerate(rows):
            if row.outcome != "lease_lost" or row.worker not in kills:
                continue
            if i + 1 < len(rows):
                next_start = rows[i + 1].started_at
            else:
                next_start = record_by_id[task_id].started_at
            if next_start is not None and next_start >= row.ended_at:
                recovery.append(next_start - kills[row.worker])
    detection = [detected[w] - t for w, t in kills.items() if w in detected]
    hang = [suspected[w] - t for w, t in stops.items() if w in suspected]
    return KillWorkersResult(
        **counted.counts(),
        kills=len(kills),
        stops=len(stops),
        detection_p99_s=seconds(percentile(detection, 99)),
        recovery_p99_s=seconds(percentile(recovery, 99)),
        hang_detection_s=seconds(max(hang) if hang else None),
        elapsed_s=round(elapsed, 3),
        store=redact(store_url) if config.store_url else "sqlite (temporary file)",
        timed_out=timed_out,
        detection_samples=detection,
        recovery_samples=recovery,
    )


async def _killer(
    supervisor: Supervisor,
    cluster: str,
    config: KillWorkersConfig,
    rng: random.Random,
    clock: SystemClock,
    kills: dict[str, float],
    stops: dict[str, float],
) -> None:
    rounds = 0
    while config.max_kills is None or len(kills) < config.max_kills:
        await asyncio.sleep(config.kill_every)
        candidates: list[WorkerHandle] = [
            h
            for h in supervisor.live_workers(cluster)
            if h.first_heartbeat_at is not None
            and not h.suspected
            and h.id not in kills
            and h.id not in stops
        ]
        if not candidates:
            continue
        victim = rng.choice(candidates)
        rounds += 1
        if config.stop_one and rounds == 2 and not stops:
            stops[victim.id] = clock.now()
            os.kill(victim.pid, signal.SIGSTOP)
            continue
        kills[victim.id] = clock.now()
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            kills.pop(victim.id)
