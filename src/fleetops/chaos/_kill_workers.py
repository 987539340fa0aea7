"""The ``kill-workers`` experiment: SIGKILL random workers under load, stop one, and
prove that nothing is lost and no effect happens twice.

Steady-state hypothesis: every submitted task reaches a terminal state, every
succeeded task applied its side effect exactly once at the receiver, and recovery
stays within its targets (crash detected p99 ≤ 1 s, redelivered task running again
p99 ≤ 2 s, hung worker detected ≤ 3 s).
"""

from __future__ import annotations

import asyncio
import json
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
from ..store import TERMINAL_STATES, NewTask
from ._agents import LEDGER_ENV
from ._ledger import Ledger
from ._stats import percentile

AGENT_ENTRYPOINT = "fleetops.chaos._agents:effectful"


@dataclass(frozen=True, slots=True)
class KillWorkersConfig:
    tasks: int = 2000
    workers: int = 4
    kill_every: float = 1.0
    stop_one: bool = True
    work_s: float = 0.5
    concurrency: int = 25
    store_url: str | None = None
    seed: int | None = None
    timeout: float = 600.0
    #: stop killing after this many kills (None: until the work is done); bounds the
    #: faults per run whatever the machine's speed
    max_kills: int | None = None


@dataclass(slots=True)
class KillWorkersResult:
    submitted: int
    succeeded: int
    dead_lettered: int
    lost: int
    duplicate_effects: int
    missing_effects: int
    effect_reexecutions: int
    kills: int
    stops: int
    redelivered_tasks: int
    detection_p99_s: float | None
    recovery_p99_s: float | None
    hang_detection_s: float | None
    elapsed_s: float
    store: str
    #: the run ended at config.timeout with tasks still open: they count as lost
    timed_out: bool = False
    detection_samples: list[float] = field(default_factory=list, repr=False)
    recovery_samples: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("detection_samples")
        out.pop("recovery_samples")
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
        ledger_path = workdir / "ledger.db"
        Ledger(ledger_path).close()
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

        env = dict(os.environ)
        env[LEDGER_ENV] = str(ledger_path)
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
        )
        stop_supervisor = asyncio.Event()
        kills: dict[str, float] = {}
        stops: dict[str, float] = {}
        started = clock.monotonic()
        async with QueueClient(store_url, clock=clock) as client, asyncio.TaskGroup() as tg:
            tg.create_task(supervisor.run(stop_supervisor), name="supervisor")
            await supervisor.ready.wait()
            payload = json.dumps({"work_s": config.work_s})
            submitted: list[int] = []
            for start in range(0, config.tasks, 500):
                batch = [
                    NewTask(queue=cluster, agent="effectful", payload=payload)
                    for _ in range(min(500, config.tasks - start))
                ]
                submitted.extend(s.id for s in await client.submit_many(batch))
            killer = tg.create_task(
                _killer(supervisor, cluster, config, rng, clock, kills, stops), name="killer"
            )
            timed_out = False
            try:
                async with asyncio.timeout(config.timeout):
                    while True:
                        counts = await client.run(client.store.count_tasks)
                        done = sum(
                            n
                            for (q, _, s), n in counts.items()
                            if q == cluster and s in TERMINAL_STATES
                        )
                        if progress is not None:
                            progress(done, len(submitted), len(kills))
                        if done >= len(submitted):
                            break
                        await asyncio.sleep(0.1)
            except TimeoutError:
                timed_out = True
            killer.cancel()
            stop_supervisor.set()
        elapsed = clock.monotonic() - started
        async with QueueClient(store_url, clock=clock) as client:
            records = await client.run(client.store.get_tasks, submitted)
            attempts = {}
            redelivered = [r.id for r in records if r.redeliveries > 0]
            for task_id in redelivered:
                attempts[task_id] = await client.run(client.store.attempts, task_id)
        ledger = Ledger(ledger_path)
        report = ledger.report()
        applied_ids = ledger.applied_task_ids()
        ledger.close()

    succeeded = [r for r in records if r.state == "succeeded"]
    terminal = [r for r in records if r.state in TERMINAL_STATES]
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
        submitted=len(submitted),
        succeeded=len(succeeded),
        dead_lettered=sum(1 for r in records if r.state == "dead"),
        lost=len(submitted) - len(terminal),
        duplicate_effects=report.duplicate_effects,
        missing_effects=sum(1 for r in succeeded if r.id not in applied_ids),
        effect_reexecutions=report.reexecutions,
        kills=len(kills),
        stops=len(stops),
        redelivered_tasks=len(redelivered),
        detection_p99_s=_round(percentile(detection, 99)),
        recovery_p99_s=_round(percentile(recovery, 99)),
        hang_detection_s=_round(max(hang) if hang else None),
        elapsed_s=round(elapsed, 3),
        store=store_url if config.store_url else "sqlite (temporary file)",
        timed_out=timed_out,
        detection_samples=detection,
        recovery_samples=recovery,
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


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
