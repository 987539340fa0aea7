"""The ``cut-store`` experiment: cut the network between a fleet and its PostgreSQL
database again and again under load, and prove that nothing is lost, no effect
happens twice, and no worker falls over.

The fleet (its supervisor and every worker) reaches the database through a relay on
loopback (:class:`~fleetops.chaos._relay.CuttableRelay`); every ``cut_every`` the
relay closes every connection and refuses new ones for ``cut_for``, as a server
restart, a failover or a network outage would. The experiment's own client (which
submits the work and watches it) connects directly.

Steady-state hypothesis: every submitted task reaches a terminal state, every
succeeded task applied its side effect exactly once at the receiver, and, while
each cut is shorter than a worker's lease, no worker fails: workers ride a cut out
(claims, journal writes and outcomes are tried again until the database answers)
instead of crashing and having their tasks redelivered. A worker cut off for
longer than its lease stops by design: by then its leases may be someone else's.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._clock import SystemClock
from .._exceptions import ConfigError
from ..queue import QueueClient
from ..runtime import ClusterPlan, RestartPolicy, Supervisor, SupervisorEvent, WorkerSettings
from ..store._open import redact
from ._relay import CuttableRelay, postgres_target
from ._run import AGENT_ENTRYPOINT, Tally, drive, new_ledger, tally
from ._stats import percentile, seconds


@dataclass(frozen=True, slots=True)
class CutStoreConfig:
    #: the PostgreSQL database the fleet uses (a postgresql:// URL with a TCP host)
    store_url: str
    tasks: int = 1000
    workers: int = 2
    #: a cut begins every this many seconds, and lasts ``cut_for``
    cut_every: float = 3.0
    cut_for: float = 1.0
    work_s: float = 0.2
    concurrency: int = 25
    timeout: float = 600.0
    #: stop cutting after this many cuts (None: until the work is done)
    max_cuts: int | None = None

    def __post_init__(self) -> None:
        postgres_target(self.store_url)
        check_cut_timing(self.cut_every, self.cut_for)


def check_cut_timing(
    cut_every: float, cut_for: float, as_given: tuple[str, str] | None = None
) -> None:
    """Refuse cuts of no length, or so long that the database is never reachable
    between them; ``as_given`` is the two values as the user wrote them."""
    shown_every, shown_for = as_given or (f"{cut_every:g}s", f"{cut_for:g}s")
    if cut_for <= 0:
        raise ConfigError("--cut-for", shown_for, "use a length above 0, e.g. 1s")
    if cut_every <= cut_for:
        raise ConfigError(
            "--cut-every",
            shown_every,
            f"use an interval longer than --cut-for ({shown_for}), so that the database "
            "is reachable between cuts",
        )


@dataclass(slots=True)
class CutStoreResult(Tally):
    cuts: int
    #: connections the cuts closed, and connections refused during them
    connections_cut: int
    connections_refused: int
    #: workers that exited or were killed during the run (0 while cuts are shorter
    #: than a worker's lease: they ride the cuts out)
    worker_failures: int
    #: from the end of each cut to the next task finished, in seconds
    resume_p99_s: float | None
    resume_max_s: float | None
    elapsed_s: float
    store: str
    #: a cut was as long as a worker's lease or longer: workers stop by design then
    cuts_outlast_leases: bool
    #: the run ended at config.timeout with tasks still open: they count as lost
    timed_out: bool = False
    #: where the fleet's logs were kept, when the hypothesis failed (else None)
    logs: str | None = None

    @property
    def faults_injected(self) -> bool:
        """Whether the database was cut off at all: a run that ended before the
        first cut proves nothing, whatever its counts say."""
        return self.cuts > 0

    def summary(self) -> dict[str, Any]:
        return asdict(self) | {"faults_injected": self.faults_injected}

    @property
    def holds(self) -> bool:
        """Whether the steady-state hypothesis held (see the module's doc); with no
        cut (see :attr:`faults_injected`) it was not put to the test."""
        kept = not (self.lost or self.duplicate_effects or self.missing_effects)
        return kept and (self.cuts_outlast_leases or not self.worker_failures)


async def cut_store(
    config: CutStoreConfig,
    *,
    progress: Callable[[int, int, int], None] | None = None,
) -> CutStoreResult:
    """Run the experiment; ``progress(done, total, cuts)`` is called as it goes."""
    clock = SystemClock()
    settings = WorkerSettings(concurrency=config.concurrency, shutdown_grace=2.0)
    failures: list[SupervisorEvent] = []

    def on_event(event: SupervisorEvent) -> None:
        if event.kind == "worker.failed":
            failures.append(event)

    with (
        tempfile.TemporaryDirectory(prefix="fleetops-chaos-") as tmp,
        CuttableRelay(postgres_target(config.store_url)) as relay,
    ):
        workdir = Path(tmp)
        ledger_path, env = new_ledger(workdir)
        cluster = f"chaos-{uuid.uuid4().hex[:8]}"
        supervisor = Supervisor(
            relay.url(config.store_url),
            [
                ClusterPlan(
                    name=cluster,
                    agents=(AGENT_ENTRYPOINT,),
                    replicas=config.workers,
                    worker=settings,
                )
            ],
            clock=clock,
            restart=RestartPolicy(intensity=10_000),
            on_event=on_event,
            env=env,
            log_dir=workdir / "logs",
        )
        cut_ends: list[float] = []
        failed_during_run = 0

        def cuts_over() -> None:
            nonlocal failed_during_run
            relay.heal()  # the workers stop in order, as they would with their database back
            failed_during_run = len(failures)

        started = clock.monotonic()
        submitted, timed_out = await drive(
            supervisor,
            config.store_url,
            cluster,
            lambda: _cutter(relay, config, clock, cut_ends),
            tasks=config.tasks,
            work_s=config.work_s,
            time_limit=config.timeout,
            clock=clock,
            progress=None if progress is None else lambda d, t: progress(d, t, len(cut_ends)),
            fault_over=cuts_over,
        )
        elapsed = clock.monotonic() - started
        async with QueueClient(config.store_url, clock=clock) as client:
            records = await client.run(client.store.get_tasks, submitted)
        counted = tally(submitted, records, ledger_path)
        outlast = config.cut_for >= settings.lease_seconds
        violated = counted.lost or counted.duplicate_effects or counted.missing_effects
        logs = None
        if violated or (failed_during_run and not outlast):
            # the temporary directory goes with the run: keep what says why
            kept = Path.cwd() / workdir.name
            shutil.copytree(workdir / "logs", kept, dirs_exist_ok=True)
            logs = str(kept)

    finished = sorted(r.finished_at for r in records if r.finished_at is not None)
    resumes = []
    for end in cut_ends:
        after = bisect_left(finished, end)
        if after < len(finished):
            resumes.append(finished[after] - end)
    return CutStoreResult(
        **counted.counts(),
        cuts=len(cut_ends),
        connections_cut=relay.dropped,
        connections_refused=relay.refused,
        worker_failures=failed_during_run,
        resume_p99_s=seconds(percentile(resumes, 99)),
        resume_max_s=seconds(max(resumes) if resumes else None),
        elapsed_s=round(elapsed, 3),
        store=redact(config.store_url),
        cuts_outlast_leases=outlast,
        timed_out=timed_out,
        logs=logs,
    )


async def _cutter(
    relay: CuttableRelay, config: CutStoreConfig, clock: SystemClock, cut_ends: list[float]
) -> None:
    """Cut every ``cut_every`` for ``cut_for``; note when each cut ends (wall clock,
    as the tasks' stamps). A cut still on when the work is done is cut short."""
    while config.max_cuts is None or len(cut_ends) < config.max_cuts:
        await asyncio.sleep(config.cut_every - config.cut_for)
        relay.cut(config.cut_for)
        cut_ends.append(clock.now() + config.cut_for)
        await asyncio.sleep(config.cut_for)
