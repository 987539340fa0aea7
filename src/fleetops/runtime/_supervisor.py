"""The supervisor: keeps N worker processes per cluster alive.

For every worker slot it starts a process, waits for it, and when it dies runs the
seed's ``agent_failure`` recovery strategy, each step recorded as an event:

1. ``redistribute_agent_workload`` — the dead worker's leases are revoked at once
   (epoch bump), so its tasks go back to the queue for the other workers;
2. ``restart_failed_agent`` — the slot is restarted after a jittered backoff;
3. ``spawn_replacement_agent`` — the new worker process is up and heartbeating;
4. ``notify_operations_team`` — the failure is logged and handed to the notifier.

A phi-accrual detector watches every worker's heartbeats; a worker that is alive but
silent (hung, stopped, its event loop blocked) is suspected, its leases revoked, and
the process killed so that the same recovery runs. Restart intensity bounds the
churn: more than ``intensity`` restarts of a cluster within ``period`` seconds marks
the cluster degraded, raises an event, and slows restarts to ``backoff_max``.

A new worker is a warm spare where one is ready: a process started ahead that has
imported what a worker needs, its cluster's agents included, and waits for its
config on stdin (see fleetops.runtime.__main__). A cold start spends a third of a
second and more on fleetops' imports (longer on a busy machine), and then as long as
the agents' own imports take (seconds, for a large SDK or a model library); a spare
starts claiming within milliseconds, so a cluster whose only worker died runs its
tasks again that much sooner. The supervisor keeps ``spares`` of them for each
cluster that has workers (one by default), and starts a new one whenever one is
taken. A spare serves its own cluster only: it has that cluster's ``python_path`` on
``sys.path`` and its modules imported, as a cold start of the cluster's worker
would, and nothing of another cluster's. A spare that says it is ready (its imports
done) is taken first; one still loading is taken where none is, since it began its
imports before a cold start would. An idle spare costs its memory (about 50 MB
resident, 60 MB with PostgreSQL's driver, plus what its agents import) and no CPU; it
spends its imports' CPU when it starts, right after the spare before it was taken. A
roll of a cluster replaces its spares, so that every worker after it is a process
started after it, on the code on disk then: a spare runs the agent code that was on
disk when it started, so new agent code is deployed with a roll, not by a crash. The
back-off after spares that died untaken is each cluster's own, and each such death
is an event (``spare.exited``, or ``spare.start_failed`` when one could not be
started): the cluster's next replacement will be a cold start. A spare imports
fleetops and its dependencies before a cluster's ``python_path`` is put on
``sys.path``: a path that shadows them takes effect in cold starts only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import sys
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError, StoreError
from ..queue import QueueClient
from ..store import event_data
from ..telemetry import MetricSet, catalog, get_logger
from ..telemetry._logs import LOG_CHECK_SECONDS, LOG_MAX_BYTES, rotate
from ..telemetry._logsearch import SPARES_LOG
from ._detector import DetectorSettings, PhiAccrualFailureDetector
from ._worker import RECYCLE_EXIT_CODE, SPARE_READY, WorkerSettings

log = get_logger("fleetops.supervisor")

#: How loud each supervision event is in the log (the rest are INFO): what an
#: operator must look at stands out from the workers started and stopped.
EVENT_LEVELS = {
    "worker.spawn_failed": logging.ERROR,
    "spare.exited": logging.WARNING,
    "spare.start_failed": logging.WARNING,
    "worker.failed": logging.WARNING,
    "worker.suspected": logging.WARNING,
    "cluster.degraded": logging.ERROR,
    "agent_failure.notify_operations_team": logging.WARNING,
}

STARTUP_TIMEOUT = 60.0

#: Warm spares a supervisor keeps ready by default (see the module doc).
DEFAULT_SPARES = 1
#: A spare that exits before it is taken (a broken install, say) is replaced after
#: this long, doubling while they keep exiting, up to the second value.
SPARE_RETRY_SECONDS = (1.0, 60.0)
#: How long writing a worker's config to a spare may take (a long config, a spare
#: that does not read it) before the spare is killed and the worker starts cold. A
#: spare that hangs once it has its config is found as a cold start that hangs is: no
#: heartbeat within :data:`STARTUP_TIMEOUT`.
SPARE_TAKE_SECONDS = 5.0


def _open_log(path: Path | None) -> Any:
    """The worker's log file (append), or None to inherit this process's stderr."""
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")  # noqa: SIM115 - handed to the child


def _check_spares(spares: object) -> None:
    if isinstance(spares, bool) or not isinstance(spares, int) or spares < 0:
        raise ConfigError("spares", spares, "use a whole number of warm spare workers, 0 or more")


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()


async def _tell(process: asyncio.subprocess.Process, line: bytes, *, close: bool = False) -> None:
    """Write ``line`` to a spare's stdin, within :data:`SPARE_TAKE_SECONDS` (a spare
    that does not read would block the writer once the pipe is full)."""
    stdin = process.stdin
    assert stdin is not None
    stdin.write(line)
    async with asyncio.timeout(SPARE_TAKE_SECONDS):
        await stdin.drain()
    if close:
        stdin.close()


def _rotate_if_over(path: Path) -> None:
    """Rotate the log file ``path`` if it is LOG_MAX_BYTES or longer."""
    with contextlib.suppress(FileNotFoundError):
        if path.stat().st_size >= LOG_MAX_BYTES:
            rotate(path)


def log_path(log_dir: Path, worker_id: str) -> Path:
    """A worker's log file (the worker keeps it under LOG_MAX_BYTES: StderrRotator)."""
    return log_dir / f"{worker_id}.log"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """Jittered exponential restart backoff and the restart intensity limit."""

    backoff_base: float = 0.05
    backoff_max: float = 5.0
    intensity: int = 10
    period: float = 60.0


@dataclass(frozen=True, slots=True)
class ClusterPlan:
    """What the supervisor runs for one cluster."""

    name: str
    agents: tuple[str, ...]
    replicas: int = 1
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    python_path: tuple[str, ...] = ()
    #: Per-cluster overrides of the supervisor's restart policy and failure detector.
    restart: RestartPolicy | None = None
    detector: DetectorSettings | None = None
    #: Extra settings handed to each worker process as-is (e.g. the spec's path).
    extra: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ConfigError(f"clusters.{self.name}.replicas", self.replicas, "use 0 or more")
        if not self.agents:
            raise ConfigError(f"clusters.{self.name}.agents", [], "list at least one agent")


@dataclass(slots=True)
class WorkerHandle:
    """One live worker process."""

    id: str
    cluster: str
    slot: int
    process: asyncio.subprocess.Process
    started_at: float
    detector: PhiAccrualFailureDetector
    heartbeat_seen: float | None = None
    first_heartbeat_at: float | None = None
    stopping: bool = False
    rolling: bool = False
    suspected: bool = False
    pipe_beats: bool = False
    lost_handled: bool = False
    #: it was a warm spare (see the module doc)
    spare: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass(slots=True)
class _Spare:
    """A warm spare process (see the module doc)."""

    process: asyncio.subprocess.Process
    #: the cluster it serves, and what it loaded of it: Supervisor._preload's JSON then
    cluster: str
    preload: str
    #: its imports are done: it said so on its stdout (see fleetops.runtime.__main__)
    ready: bool = False
    taken: bool = False
    #: the task that notices it ready, or exit untaken (cancelled when it is taken)
    watcher: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class SupervisorEvent:
    kind: str
    at: float
    cluster: str
    worker: str | None
    data: dict[str, Any]


class Supervisor:
    """Starts, watches and restarts the worker processes of a fleet."""

    def __init__(
        self,
        store_url: str,
        clusters: Sequence[ClusterPlan],
        *,
        clock: Clock | None = None,
        restart: RestartPolicy | None = None,
        detector: DetectorSettings | None = None,
        detect_interval: float = 0.05,
        log_dir: Path | None = None,
        rng: random.Random | None = None,
        on_event: Callable[[SupervisorEvent], None] | None = None,
        env: dict[str, str] | None = None,
        spares: int = DEFAULT_SPARES,
    ) -> None:
        _check_spares(spares)
        self.store_url = store_url
        self.plans = {p.name: p for p in clusters}
        self.clock: Clock = clock or SystemClock()
        self.restart = restart or RestartPolicy()
        self.detector_settings = detector or DetectorSettings()
        self.detect_interval = detect_interval
        self.log_dir = log_dir
        self._rng = rng or random.Random()
        self._on_event = on_event
        self._env = env
        #: warm spares to keep ready, and those there are (see the module doc)
        self.spares = spares
        self._spares: list[_Spare] = []
        self._spare_wanted = asyncio.Event()
        #: by cluster: the back-off after its spares failed, and when it ends
        self._spare_pause: dict[str, float] = {}
        self._spare_not_before: dict[str, float] = {}
        #: one more each time the spares are ended, of all clusters and by cluster: a
        #: spare started before is not taken (see _epoch)
        self._spare_epoch = 0
        self._spare_epochs: dict[str, int] = {}
        self.workers: dict[str, WorkerHandle] = {}
        self.degraded: set[str] = set()
        #: Workers lost (crashed or hung) since this supervisor started.
        self.failures = 0
        #: The supervisor's own metrics (restarts, redeliveries, heartbeat phi).
        self.metrics = MetricSet()
        self._restarts: dict[str, deque[float]] = {name: deque() for name in self.plans}
        self._desired = {name: plan.replicas for name, plan in self.plans.items()}
        self._slots: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._stopping = False
        #: set to stop without waiting for the workers to drain (see hurry)
        self._hurry = asyncio.Event()
        self._client: QueueClient | None = None
        self._watch: QueueClient | None = None
        self._beat_readers: set[asyncio.Task[None]] = set()
        self._group: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()

    # --- public -------------------------------------------------------------------------------

    def live_workers(self, cluster: str | None = None) -> list[WorkerHandle]:
        return [
            h
            for h in self.workers.values()
            if (cluster is None or h.cluster == cluster) and h.process.returncode is None
        ]

    def set_spares(self, spares: int) -> None:
        """Keep ``spares`` warm spares for each cluster from now on: more are started,
        or the extra ones killed (see the module doc)."""
        _check_spares(spares)
        self.spares = spares
        for cluster in {s.cluster for s in self._live_spares()}:
            for extra in self._live_spares(cluster)[spares:]:
                self._retire(extra)
        self._spare_wanted.set()

    def spare_pids(self, cluster: str | None = None) -> list[int]:
        """The process ids of the warm spares ready to be taken, of ``cluster`` or of
        all (see the module doc)."""
        return [s.process.pid for s in self._live_spares(cluster) if s.ready]

    def _live_spares(self, cluster: str | None = None) -> list[_Spare]:
        """The spares still running, of ``cluster`` or of all (those that exited are
        dropped)."""
        self._spares = [s for s in self._spares if s.process.returncode is None]
        return [s for s in self._spares if cluster is None or s.cluster == cluster]

    def _retire(self, spare: _Spare) -> None:
        """Kill ``spare``, not wanted any more; its watcher reaps it, with no back-off."""
        if spare in self._spares:
            self._spares.remove(spare)
        spare.taken = True
        _kill(spare.process)

    async def run(self, stop: asyncio.Event) -> None:
        """Supervise until ``stop`` is set, then stop every worker gracefully."""
        # The failure detector reads through a connection of its own, so that it never
        # queues behind a write that waits for a lock a hung worker holds.
        async with (
            QueueClient(self.store_url, clock=self.clock) as client,
            QueueClient(self.store_url, clock=self.clock) as watch,
        ):
            self._client = client
            self._watch = watch
            try:
                async with asyncio.TaskGroup() as group:
                    self._group = group
                    for name in self.plans:
                        self._reconcile_slots(name)
                    watcher = group.create_task(self._detect_loop(), name="failure-detector")
                    readiness = group.create_task(self._await_ready(), name="readiness")
                    keeper = group.create_task(self._keep_spares(), name="spares")
                    await stop.wait()
                    self._stopping = True
                    readiness.cancel()
                    watcher.cancel()
                    keeper.cancel()
                    await self._end_spares()  # their watchers end with them
                    await self._stop_all()
            finally:
                # cancelled or failed: no worker may outlive its supervisor (a stopped
                # one could not even notice that its parent is gone)
                self._stopping = True
                self._kill_all()
                await self._end_spares()
            self._client = None

    def scale(self, cluster: str, replicas: int) -> None:
        """Change a cluster's number of workers (used by the reconciler)."""
        if cluster not in self.plans:
            raise ConfigError("cluster", cluster, f"use one of {', '.join(sorted(self.plans))}")
        if replicas < 0:
            raise ConfigError(f"clusters.{cluster}.replicas", replicas, "use 0 or more")
        self._desired[cluster] = replicas
        self._reconcile_slots(cluster)
        self._spare_wanted.set()  # a cluster with no workers keeps no spares

    def add_cluster(self, plan: ClusterPlan) -> None:
        """Start supervising a new cluster."""
        if plan.name in self.plans:
            raise ConfigError("cluster", plan.name, "this cluster exists already: use roll()")
        self.plans[plan.name] = plan
        self._restarts[plan.name] = deque()
        self._desired[plan.name] = plan.replicas
        self._reconcile_slots(plan.name)
        self._spare_wanted.set()  # its spares

    async def remove_cluster(self, cluster: str) -> None:
        """Drain and stop every worker of ``cluster``, then forget it."""
        self.scale(cluster, 0)
        handles = [h for h in self.workers.values() if h.cluster == cluster]
        await asyncio.gather(*(h.process.wait() for h in handles))
        for key in [k for k in self._slots if k[0] == cluster]:
            await asyncio.gather(self._slots.pop(key), return_exceptions=True)
        del self.plans[cluster], self._desired[cluster], self._restarts[cluster]
        self.degraded.discard(cluster)
        self._spare_pause.pop(cluster, None)  # one added again starts afresh
        self._spare_not_before.pop(cluster, None)
        self._spare_wanted.set()  # its spares are retired

    async def roll(self, plan: ClusterPlan, ready_timeout: float = 60.0) -> None:
        """Rolling restart onto ``plan``: one worker at a time drains (its unfinished
        tasks go back to the queue) and is replaced by a worker on the new plan, which
        must be heartbeating before the next one is touched."""
        self.plans[plan.name] = plan
        if self._desired[plan.name] != plan.replicas:
            self.scale(plan.name, plan.replicas)
        # a roll starts new processes, not ones started before
        await self._end_spares(plan.name)
        for old in sorted(self.live_workers(plan.name), key=lambda h: h.slot):
            if old.stopping:
                continue
            old.rolling = True
            self._terminate(old)
            await old.process.wait()
            async with asyncio.timeout(ready_timeout):
                while not any(
                    h.slot == old.slot and h.id != old.id and h.first_heartbeat_at is not None
                    for h in self.live_workers(plan.name)
                ):
                    await self.clock.sleep(0.02)

    def desired(self, cluster: str) -> int:
        return self._desired[cluster]

    # --- slots ---------------------------------------------------------------------------------

    def _reconcile_slots(self, cluster: str) -> None:
        if self._group is None or self._stopping:
            return
        want = self._desired[cluster]
        for slot in range(want):
            key = (cluster, slot)
            if key not in self._slots or self._slots[key].done():
                self._slots[key] = self._group.create_task(
                    self._run_slot(cluster, slot), name=f"slot-{cluster}-{slot}"
                )
        for handle in self.live_workers(cluster):
            if handle.slot >= want and not handle.stopping:
                handle.stopping = True
                self._terminate(handle)

    async def _run_slot(self, cluster: str, slot: int) -> None:
        failures = 0
        replacing: str | None = None
        while not self._stopping and slot < self._desired[cluster]:
            try:
                handle = await self._spawn(cluster, slot)
            except OSError as exc:  # fork or the log file failed (EAGAIN, ENOMEM, disk full)
                failures += 1
                await self._event("worker.spawn_failed", cluster, None, slot=slot, error=str(exc))
                await self.clock.sleep(await self._restart_delay(cluster, failures))
                continue
            if replacing is not None:
                await self._event(
                    "agent_failure.spawn_replacement_agent",
                    cluster,
                    handle.id,
                    replaces=replacing,
                    pid=handle.pid,
                )
            code = await handle.process.wait()
            self.metrics.forget(catalog.HEARTBEAT_PHI, (cluster, handle.id))
            if handle.rolling and not self._stopping:
                await self._event("worker.rolled", cluster, handle.id, exit_code=code)
                self.workers.pop(handle.id, None)
                replacing = None
                continue
            if handle.stopping or self._stopping:
                await self._event("worker.stopped", cluster, handle.id, exit_code=code)
                self.workers.pop(handle.id, None)
                return
            if code == RECYCLE_EXIT_CODE:  # it drained and left to be replaced: no failure
                await self._event("worker.recycled", cluster, handle.id, pid=handle.pid)
                self.workers.pop(handle.id, None)
                replacing = None
                continue
            failures = failures + 1 if handle.first_heartbeat_at is None else 1
            await self._worker_lost(handle, f"exited with code {code}")
            self.workers.pop(handle.id, None)
            delay = await self._restart_delay(cluster, failures)
            await self._event(
                "agent_failure.restart_failed_agent",
                cluster,
                handle.id,
                slot=slot,
                delay_s=round(delay, 3),
            )
            await self.clock.sleep(delay)
            replacing = handle.id

    async def _spawn(self, cluster: str, slot: int) -> WorkerHandle:
        plan = self.plans[cluster]
        worker_id = f"{cluster}-{slot}-{uuid.uuid4().hex[:8]}"
        config = {
            "store": self.store_url,
            "worker_id": worker_id,
            "cluster": cluster,
            "agents": list(plan.agents),
            # a local worker also beats on its stdout pipe: liveness that does not
            # depend on the store (a worker blocked on a store lock is not hung)
            "settings": {**asdict(plan.worker), "pipe_heartbeat": True},
            "python_path": list(plan.python_path),
            "parent_pid": os.getpid(),
            **dict(plan.extra),
        }
        log_file = None if self.log_dir is None else log_path(self.log_dir, worker_id)
        if log_file is not None:
            config["log_file"] = str(log_file)
            config["log_max_bytes"] = LOG_MAX_BYTES
            config["log_check_seconds"] = LOG_CHECK_SECONDS
        if log_file is not None and self._spares:
            # made here, as a cold start makes it: one that cannot be (a full disk) is
            # a failed spawn, not a crash of the worker
            _open_log(log_file).close()
        process = await self._take_spare(config)
        spare = process is not None
        if process is None:
            process = await self._start_process([json.dumps(config)], log_file, stdin=False)
        handle = WorkerHandle(
            id=worker_id,
            cluster=cluster,
            slot=slot,
            process=process,
            started_at=self.clock.now(),
            detector=PhiAccrualFailureDetector(plan.detector or self.detector_settings),
            spare=spare,
        )
        self.workers[worker_id] = handle
        assert self._group is not None
        reader = self._group.create_task(self._read_beats(handle), name=f"beats-{worker_id}")
        self._beat_readers.add(reader)
        reader.add_done_callback(self._beat_readers.discard)
        await self._event(
            "worker.started", cluster, worker_id, pid=process.pid, slot=slot, spare=spare
        )
        return handle

    # --- warm spares ----------------------------------------------------------------------------

    async def _keep_spares(self) -> None:
        """Keep :attr:`spares` warm spares started for each cluster that has workers
        (see the module doc). After a spare died untaken, or could not be started, the
        next one waits out a back-off (:data:`SPARE_RETRY_SECONDS`): a broken install
        must not fork a process a millisecond. This task alone starts spares, and a
        stop cancels it."""
        while True:
            self._spare_wanted.clear()
            self._retire_stale_spares()
            short = self._short_of_spares()
            if not short:
                await self._spare_wanted.wait()
                continue
            now = self.clock.monotonic()
            due = [c for c in short if self._spare_not_before.get(c, now) <= now]
            if not due:  # a change of clusters meanwhile still retires their spares
                await self._until_wanted(min(self._spare_not_before[c] for c in short) - now)
                continue
            cluster = due[0]
            epoch = self._epoch(cluster)
            try:
                spare = await self._start_spare(cluster)
            except Exception as exc:  # fork or its log failed: a spare is only a head start
                await self._spare_failed(cluster, "spare.start_failed", error=str(exc))
                continue
            if (
                epoch != self._epoch(cluster)
                or cluster not in self._short_of_spares()
                or spare.preload != self._preload(cluster)
            ):
                # the spares were ended (a roll), fewer are wanted, or the cluster
                # changed, while it started
                _kill(spare.process)
                await spare.process.wait()
                continue
            self._spares.append(spare)
            assert self._group is not None
            spare.watcher = self._group.create_task(
                self._watch_spare(spare), name=f"spare-{spare.process.pid}"
            )

    def _short_of_spares(self) -> list[str]:
        """The clusters (by name) with workers and fewer than :attr:`spares` spares."""
        return [
            cluster
            for cluster in sorted(self.plans)
            if self._desired[cluster] > 0 and len(self._live_spares(cluster)) < self.spares
        ]

    def _epoch(self, cluster: str) -> tuple[int, int]:
        """Changes when the spares of ``cluster`` are ended (see _end_spares)."""
        return self._spare_epoch, self._spare_epochs.get(cluster, 0)

    async def _until_wanted(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if the spares wanted change meanwhile."""
        sleep = asyncio.ensure_future(self.clock.sleep(seconds))
        wanted = asyncio.ensure_future(self._spare_wanted.wait())
        try:
            await asyncio.wait({sleep, wanted}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            wanted.cancel()

    async def _start_spare(self, cluster: str) -> _Spare:
        kind = "postgresql" if self.store_url.startswith(("postgresql:", "postgres:")) else ""
        log_file = None if self.log_dir is None else self.log_dir / SPARES_LOG
        if log_file is not None:
            _rotate_if_over(log_file)  # spares that fail write to it for as long as it takes
        preload = self._preload(cluster)
        args = ["--spare", kind, str(os.getpid())]
        process = await self._start_process(args, log_file, stdin=True)
        try:  # its first line: what to load (not its command line: no length limit)
            await _tell(process, preload.encode() + b"\n")
        except BaseException:
            _kill(process)
            raise
        return _Spare(process, cluster, preload)

    def _preload(self, cluster: str) -> str:
        """What a spare of ``cluster`` loads ahead, as one line of JSON: the cluster's
        ``python_path``, agents (in its plan's order) and event loop, which the spare
        loads them in as a worker does."""
        plan = self.plans[cluster]
        return json.dumps(
            {
                "python_path": list(plan.python_path),
                "agents": list(plan.agents),
                "event_loop": plan.worker.event_loop,
            }
        )

    def _retire_stale_spares(self) -> None:
        """Kill the spares of clusters gone, left without workers, or changed (their
        agents or path): the keeper starts ones that load the clusters as they are."""
        for spare in list(self._spares):
            plan = self.plans.get(spare.cluster)
            if (
                plan is None
                or self._desired[spare.cluster] == 0
                or spare.preload != self._preload(spare.cluster)
            ):
                self._retire(spare)

    async def _start_process(
        self, args: Sequence[str], log_file: Path | None, *, stdin: bool
    ) -> asyncio.subprocess.Process:
        """``python -m fleetops.runtime ARGS``: stdout a pipe (heartbeats), stderr
        ``log_file`` (or this process's), stdin a pipe if ``stdin`` (a spare's) or
        nothing, in a session of its own (a Ctrl-C meant for the supervisor does not
        reach it)."""
        stderr = _open_log(log_file)
        try:
            return await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "fleetops.runtime",
                *args,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
                env=self._env,
            )
        finally:
            if stderr is not None:
                stderr.close()

    async def _watch_spare(self, spare: _Spare) -> None:
        """Wait for a spare to say it is ready, then to exit (cancelled once it is
        taken): one that exits untaken is replaced after the back-off."""
        stdout = spare.process.stdout
        assert stdout is not None
        # what an agent printed at import comes first, if anything did
        while chunk := await stdout.read(256):
            if SPARE_READY in chunk:
                spare.ready = True
                break
        code = await spare.process.wait()
        if not spare.taken and not self._stopping:
            where = {} if self.log_dir is None else {"log": str(self.log_dir / SPARES_LOG)}
            await self._spare_failed(
                spare.cluster, "spare.exited", pid=spare.process.pid, exit_code=code, **where
            )

    async def _spare_failed(self, cluster: str, kind: str, **data: Any) -> None:
        """Record the failure of a spare of ``cluster`` as an event; its next one
        starts after the back-off, which doubles while they keep failing."""
        pause = self._spare_pause.get(cluster, SPARE_RETRY_SECONDS[0])
        self._spare_not_before[cluster] = self.clock.monotonic() + pause
        self._spare_pause[cluster] = min(pause * 2, SPARE_RETRY_SECONDS[1])
        self._spare_wanted.set()
        await self._event(kind, cluster, None, retry_s=pause, **data)

    async def _take_spare(self, config: dict[str, Any]) -> asyncio.subprocess.Process | None:
        """A warm spare of the cluster made the worker of ``config`` (a ready one
        first), or None if there is none."""
        line = json.dumps(config).encode() + b"\n"
        cluster = str(config["cluster"])
        preload = self._preload(cluster)
        # one still loading is ahead of a cold start all the same: it began before
        candidates = [s for s in self._live_spares(cluster) if s.preload == preload]
        candidates.sort(key=lambda s: not s.ready)
        while candidates:
            spare = candidates.pop(0)
            if spare not in self._spares:  # ended or retired while another was tried
                continue
            self._spares.remove(spare)
            if spare.process.returncode is not None:
                continue
            epoch = self._epoch(cluster)
            try:
                await _tell(spare.process, line, close=True)
            except BaseException as exc:
                # It died just now, or it does not read (the config is longer than a
                # pipe holds), or this slot was cancelled: it is killed whatever the
                # cause, so that no spare is left half taken, nobody's; untaken, its
                # watcher backs the next one off.
                _kill(spare.process)
                if not isinstance(exc, Exception):
                    raise
                log.warning("spare.not_taken", pid=spare.process.pid, error=repr(exc))
                continue
            if epoch != self._epoch(cluster):  # the spares were ended (a roll) meanwhile
                self._retire(spare)
                continue
            spare.taken = True
            if spare.watcher is not None:
                spare.watcher.cancel()  # a worker now, watched as one
            self._spare_wanted.set()  # its successor starts now
            return spare.process
        return None

    async def _end_spares(self, cluster: str | None = None) -> None:
        """Kill the spares of ``cluster`` (of all, if None) and wait for them to exit.
        The keeper, unless it was cancelled (a stop), starts new ones (a roll: they
        import the code on disk now)."""
        spares = self._live_spares(cluster)
        if cluster is None:
            self._spare_epoch += 1
        else:
            self._spare_epochs[cluster] = self._spare_epochs.get(cluster, 0) + 1
            # a roll brings new code, which may start where the old kept failing
            self._spare_pause.pop(cluster, None)
            self._spare_not_before.pop(cluster, None)
        for spare in spares:
            self._retire(spare)
        for spare in spares:
            await spare.process.wait()
        self._spare_wanted.set()

    async def _read_beats(self, handle: WorkerHandle) -> None:
        """Feed the failure detector from the worker's pipe heartbeats until it exits."""
        stream = handle.process.stdout
        if stream is None:
            return
        while True:
            chunk = await stream.read(256)
            if not chunk:
                return
            if handle.spare and not chunk.replace(SPARE_READY, b""):
                continue  # a spare taken still loading said it was ready: not a beat
            handle.detector.heartbeat(self.clock.now())
            handle.pipe_beats = True

    async def _restart_delay(self, cluster: str, failures: int) -> float:
        policy = self.plans[cluster].restart or self.restart
        now = self.clock.monotonic()
        window = self._restarts[cluster]
        window.append(now)
        while window and window[0] < now - policy.period:
            window.popleft()
        if len(window) > policy.intensity:
            if cluster not in self.degraded:
                self.degraded.add(cluster)
                await self._event(
                    "cluster.degraded",
                    cluster,
                    None,
                    restarts=len(window),
                    period_s=policy.period,
                )
            return policy.backoff_max
        if cluster in self.degraded and len(window) <= policy.intensity // 2:
            self.degraded.discard(cluster)
            await self._event("cluster.recovered", cluster, None)
        ceiling = min(policy.backoff_max, policy.backoff_base * 2 ** (failures - 1))
        return self._rng.uniform(0, ceiling)

    async def _worker_lost(self, handle: WorkerHandle, why: str) -> None:
        if handle.lost_handled:
            return
        handle.lost_handled = True
        self.failures += 1
        assert self._client is not None
        detected_at = self.clock.now()
        await self._event("worker.failed", handle.cluster, handle.id, reason=why, pid=handle.pid)
        revoked = await self._revoke(handle, why)
        if revoked:  # the surviving workers pick the redelivered tasks up at once
            await self._client.ring({handle.cluster: len(revoked)})
        reason = "hung" if why.startswith("hung") else "exited"
        self.metrics.inc(catalog.WORKER_RESTARTS, (handle.cluster, reason))
        self.metrics.inc(catalog.REDELIVERIES, (handle.cluster,), len(revoked))
        await self._event(
            "agent_failure.redistribute_agent_workload",
            handle.cluster,
            handle.id,
            tasks=len(revoked),
            task_ids=revoked[:50],
            detected_at=detected_at,
        )
        await self._event(
            "agent_failure.notify_operations_team",
            handle.cluster,
            handle.id,
            reason=why,
            redistributed=len(revoked),
        )
        log.error(
            "worker.lost",
            worker=handle.id,
            cluster=handle.cluster,
            reason=why,
            redistributed=len(revoked),
        )

    # --- failure detection ----------------------------------------------------------------

    async def _detect_loop(self) -> None:
        assert self._watch is not None
        client = self._watch
        unreadable_since: float | None = None
        while True:
            await self.clock.sleep(self.detect_interval)
            watched = [h.id for h in self.workers.values() if h.process.returncode is None]
            try:
                found = await client.run(client.store.list_workers, None, watched)
            except StoreError as exc:  # no verdicts without the facts: look again next round
                if unreadable_since is None:  # said once, not 20 times a second
                    unreadable_since = self.clock.monotonic()
                    log.warning("detector.store_unavailable", error=str(exc))
                continue
            if unreadable_since is not None:
                log.info("detector.store_back", after_s=self.clock.monotonic() - unreadable_since)
                unreadable_since = None
            records = {w.id: w for w in found}
            now = self.clock.now()
            for handle in list(self.workers.values()):
                if (
                    handle.process.returncode is not None
                    or handle.suspected
                    or handle.stopping
                    or handle.rolling
                ):
                    continue
                record = records.get(handle.id)
                beat = record.heartbeat_at if record else None
                if beat is not None and beat != handle.heartbeat_seen:
                    handle.heartbeat_seen = beat
                    if not handle.pipe_beats:
                        handle.detector.heartbeat(now)  # no pipe: the store is the signal
                    if handle.first_heartbeat_at is None:
                        handle.first_heartbeat_at = now
                        if handle.spare:  # spares work again: no back-off for the next
                            self._spare_pause.pop(handle.cluster, None)
                if handle.first_heartbeat_at is None:
                    if now - handle.started_at > STARTUP_TIMEOUT:
                        await self._suspect(handle, "no heartbeat within the startup timeout")
                    continue
                phi = handle.detector.phi(now)
                self.metrics.set(
                    catalog.HEARTBEAT_PHI, (handle.cluster, handle.id), min(max(phi, 0.0), 1e6)
                )
                threshold = handle.detector.settings.threshold
                if phi >= threshold:
                    silent = now - (handle.detector.last_heartbeat or now)
                    await self._suspect(
                        handle, f"heartbeats stopped (phi {phi:.1f}, silent {silent:.2f} s)"
                    )

    async def _suspect(self, handle: WorkerHandle, why: str) -> None:
        handle.suspected = True
        # Kill first, write after: a hung worker may hold the store's write lock (SQLite)
        # or row locks (PostgreSQL) that the revocation would wait on. SIGKILL works on
        # a stopped process too, and its death releases its locks. The bookkeeping runs
        # in a task of its own so that the detector keeps watching the other workers.
        _kill(handle.process)
        assert self._group is not None
        self._group.create_task(self._record_hang(handle, why), name=f"hung-{handle.id}")

    async def _record_hang(self, handle: WorkerHandle, why: str) -> None:
        await self._event("worker.suspected", handle.cluster, handle.id, reason=why, pid=handle.pid)
        await self._worker_lost(handle, f"hung: {why}")

    async def _await_ready(self) -> None:
        while True:
            wanted = sum(self._desired.values())
            beating = sum(1 for h in self.live_workers() if h.first_heartbeat_at is not None)
            if beating >= wanted:
                self.ready.set()
                return
            await self.clock.sleep(0.02)

    # --- shutdown ---------------------------------------------------------------------------

    def _terminate(self, handle: WorkerHandle) -> None:
        with contextlib.suppress(ProcessLookupError):
            handle.process.send_signal(signal.SIGTERM)

    def _kill_all(self) -> None:
        for handle in self.workers.values():
            if handle.process.returncode is None:
                _kill(handle.process)

    def hurry(self) -> None:
        """Stop now: the workers still draining are killed (their tasks queued again),
        without waiting out their grace (a second Ctrl-C)."""
        self._hurry.set()

    async def _stop_all(self) -> None:
        handles = self.live_workers()
        for handle in handles:
            handle.stopping = True
            self._terminate(handle)
        grace = max((self.plans[h.cluster].worker.shutdown_grace for h in handles), default=0)
        pending = {asyncio.ensure_future(h.process.wait()) for h in handles}
        hurried = asyncio.ensure_future(self._hurry.wait())
        ends = self.clock.monotonic() + grace + 5
        while pending and not self._hurry.is_set() and (left := ends - self.clock.monotonic()) > 0:
            done, _ = await asyncio.wait(
                [*pending, hurried], timeout=left, return_when=asyncio.FIRST_COMPLETED
            )
            pending -= done
        for task in [*pending, hurried]:
            task.cancel()
        for slot_task in self._slots.values():
            slot_task.cancel()
        await asyncio.gather(*self._slots.values(), return_exceptions=True)
        # a slot may have been starting a worker while this stop began: whatever is still
        # alive now, including those, is killed; then nothing is left reading their pipes
        stragglers = [h for h in self.workers.values() if h.process.returncode is None]
        for handle in stragglers:
            _kill(handle.process)
        for handle in stragglers:
            await handle.process.wait()
        if stragglers and self._client is not None:
            # their handlers would not stop: what they held is queued again now, not
            # when its leases expire (the next start finds it ready)
            for handle in stragglers:
                requeued = await self._revoke(handle, "killed at shutdown: it did not drain")
                log.warning(
                    "worker.killed_at_shutdown",
                    cluster=handle.cluster,
                    worker=handle.id,
                    requeued=len(requeued),
                )
        for reader in list(self._beat_readers):
            reader.cancel()

    # --- events --------------------------------------------------------------------------------

    async def _revoke(self, handle: WorkerHandle, why: str) -> list[int]:
        """Take the lost worker's leases away, trying again while the store fails (until
        the supervisor stops): its tasks wait for this, or for their leases to expire."""
        assert self._client is not None
        client = self._client
        pause = 0.05
        while True:
            try:
                now = self.clock.now()
                return await client.run(client.store.revoke_worker, handle.id, now, why)
            except StoreError as exc:
                log.error("worker.revoke_failed", worker=handle.id, error=str(exc), retry_s=pause)
                if self._stopping:  # its leases expire by themselves
                    return []
                await self.clock.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _event(self, kind: str, cluster: str, worker: str | None, **data: Any) -> None:
        """Record a supervision event in the store and the log. Events are bookkeeping:
        a store that cannot take one (full, unreachable) is logged, and supervision
        goes on."""
        at = self.clock.now()
        event = SupervisorEvent(kind, at, cluster, worker, data)
        if self._client is not None:
            client = self._client
            try:
                await client.run(
                    client.store.record_event, kind, at, cluster, worker, None, event_data(**data)
                )
            except StoreError as exc:
                log.warning("event.not_recorded", kind=kind, error=str(exc))
        log.log(EVENT_LEVELS.get(kind, logging.INFO), kind, cluster=cluster, worker=worker, **data)
        if self._on_event is not None:
            self._on_event(event)
