"""The control plane: deploys a fleet in phases, then keeps it as the spec says.

``async with ControlPlane(spec) as plane: report = await plane.deploy()`` runs the
seed's deployment phases in order. A phase that fails stops the deploy, everything
this deploy started is undone (API stopped, workers stopped, lock released), and the
report names the phase and the error. A deploy that succeeds ends with the
production-readiness score. After that ``await plane.serve(stop)`` runs the
reconciler until ``stop`` is set; leaving the ``async with`` shuts down in order:
stop accepting requests, drain the workers, close the store, release the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import hashlib
import json
import logging
import logging.handlers
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from .._clock import Clock, SystemClock
from .._exceptions import ConfigError, FleetOpsError, StoreError, UsageError
from ..queue import QueueClient
from ..runtime import ClusterPlan, Supervisor
from ..spec import FleetSpec, load_spec_text
from ..spec._models import is_loopback_host
from ..store import TERMINAL_STATES, NewTask, Store, open_store
from ..store._open import redact
from ..store._sql import PRUNE_TASKS
from ..telemetry import JsonFormatter, MetricSet, get_logger
from ..telemetry._logs import LOG_MAX_BYTES
from ..telemetry._logsearch import CONTROL_LOG, prune_logs
from ..telemetry._tracing import TRACEPARENT, new_traceparent
from ..telemetry.history import HistoryStore, RetentionPolicy, Sample
from ._diff import diff
from ._footprint import SQLITE_SIDE_FILES, Footprint, sqlite_file
from ._preflight import check_entrypoints, check_store_directory, import_entrypoints
from ._readiness import FleetFacts, ReadinessReport, score
from ._smoke import SMOKE_AGENT, SMOKE_ENTRYPOINT
from ._state import STATE_DIR, ControlLock
from ._store_lock import SQLITE_LOCK_SUFFIX, StoreLock

log = get_logger("fleetops.control")

PHASES = (
    "infrastructure_provisioning",
    "control_plane_deployment",
    "data_plane_deployment",
    "service_mesh_configuration",
    "agent_cluster_deployment",
    "observability_stack_setup",
    "integration_validation",
)
WORKERS_READY_TIMEOUT = 60.0
SMOKE_TIMEOUT = 60.0
RECONCILE_INTERVAL = 2.0


class PhaseFailed(FleetOpsError):
    """A deployment phase failed."""


@functools.cache
def _api_server_class() -> Any:
    """uvicorn's Server, minus its signal handling (made on first use: uvicorn loads
    late). The fleet's command owns SIGINT and SIGTERM: the first drains, the second
    stops at once. uvicorn took them over while it served and raised each again once
    it stopped, so one Ctrl-C reached the command twice and was taken for a second."""
    import uvicorn

    class ApiServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return ApiServer


class ApplyFailed(FleetOpsError):
    """A change to the running fleet failed part-way."""


@dataclass(frozen=True, slots=True)
class PhaseOutcome:
    name: str
    ok: bool
    seconds: float
    detail: str


@dataclass(slots=True)
class DeploymentReport:
    deployment_successful: bool
    completed_phases: list[str]
    failed_phase: str | None
    error: str | None
    phases: list[PhaseOutcome] = field(default_factory=list)
    readiness: ReadinessReport | None = None
    api_url: str | None = None
    deployment_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deployment_successful": self.deployment_successful,
            "completed_phases": self.completed_phases,
            "failed_phase": self.failed_phase,
            "error": self.error,
            "phases": [asdict(p) for p in self.phases],
            "api_url": self.api_url,
        }
        if self.readiness is not None:
            out.update(self.readiness.as_dict())
        else:
            out.update({"readiness_score": None, "readiness_checks": []})
        return out


@dataclass(frozen=True, slots=True)
class ApplyResult:
    change_id: int
    diff: list[dict[str, Any]]
    actions: list[str]


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: A gone worker's metrics snapshot is folded into its cluster's after this many seconds.
RETIRE_TELEMETRY_AFTER = 600.0
#: The worker id of a cluster's folded snapshot is this and the cluster's name.
RETIRED = "retired/"
#: The finished tasks are counted again at most this often (see ControlPlane.task_counts)
FINISHED_RECOUNT_MIN = 1.0
#: ... and no sooner than this many times what their last count took.
FINISHED_RECOUNT_FACTOR = 50


#: Beside applied-spec.yaml in the state directory: the spec applied last, when a
#: deploy replaced it with a different one (see ControlPlane._keep_previous_spec).
PREVIOUS_SPEC = "applied-spec.previous.yaml"


class ControlPlane:
    """One fleet's control plane (one per state directory, enforced by a lock)."""

    def __init__(
        self,
        spec: FleetSpec,
        *,
        spec_text: str | None = None,
        actor: str | None = None,
        clock: Clock | None = None,
        serve_api: bool = True,
        api_port: int | None = None,
        on_phase: Callable[[str, str], None] | None = None,
    ) -> None:
        self.spec = spec
        self.spec_text = spec_text if spec_text is not None else _dump(spec)
        self.actor = actor or default_actor()
        self.clock: Clock = clock or SystemClock()
        self.serve_api = serve_api
        self.api_host = spec.api.host
        self.api_port = spec.api.port if api_port is None else api_port
        self._on_phase = on_phase
        # a user's mistake, refused before a deploy makes anything (a failed phase
        # is an outage's exit status, not a mistake's)
        check_store_directory(spec)
        base = spec.base_dir or Path.cwd()
        self.state_dir = base / STATE_DIR
        self.log_dir = self.state_dir / "logs"
        self._log_handler: logging.Handler | None = None
        self.store_url = spec.store_url()
        self.supervisor: Supervisor | None = None
        self.client: QueueClient | None = None
        self.deployed = False
        self.last_report: DeploymentReport | None = None
        self._lock = ControlLock(self.state_dir)
        self._store_lock = StoreLock(self.store_url)
        self._tg: asyncio.TaskGroup | None = None
        self._supervisor_stop = asyncio.Event()
        self._supervisor_task: asyncio.Task[None] | None = None
        self._api_server: Any = None
        self._api_task: asyncio.Task[None] | None = None
        self._smoke: tuple[bool | None, str] = (None, "no smoke test has run")
        self.history: HistoryStore | None = None
        self._history_task: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[int] | None = None
        self._apply_lock = asyncio.Lock()
        # the finished tasks' counts and when and at what cost they were taken (see
        # task_counts)
        self._finished: dict[tuple[str, str, str], int] = {}
        self._finished_counted_at: float | None = None
        self._finished_cost = 0.0
        self._count_lock = asyncio.Lock()
        self._started: list[str] = []
        self._api_socket: socket.socket | None = None
        self._footprint: Footprint | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> ControlPlane:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)

    async def shutdown(self) -> None:
        """Stop in a fixed order: API, workers (drained), store, lock. Idempotent."""
        if self._api_socket is not None:  # bound, never served
            self._api_socket.close()
            self._api_socket = None
        if self._api_server is not None:
            self._api_server.should_exit = True
            if self._api_task is not None:
                await self._api_task
            self._api_server = None
        for task in (self._history_task, self._prune_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._history_task = self._prune_task = None
        if self.history is not None:
            self.history.close()
            self.history = None
        if self._supervisor_task is not None:
            self._supervisor_stop.set()
            await self._supervisor_task
            self._supervisor_task = None
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        self._store_lock.release()
        self._lock.release()
        self.deployed = False
        if self._log_handler is not None:
            logging.getLogger("fleetops").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    # --- deployment -----------------------------------------------------------------------------

    async def deploy(self) -> DeploymentReport:
        """Run every phase in order; fail fast and undo on the first failure.

        An agent entrypoint that does not import is a user's mistake, not a failed
        phase: :class:`ConfigError` is raised before the first phase, nothing made.
        """
        import_entrypoints(self.spec)  # as a worker imports them
        report = DeploymentReport(False, [], None, None, api_url=self.api_url)
        steps: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("infrastructure_provisioning", self._infrastructure),
            ("control_plane_deployment", self._control_plane),
            ("data_plane_deployment", self._data_plane),
            ("service_mesh_configuration", self._service_mesh),
            ("agent_cluster_deployment", self._agent_clusters),
            ("observability_stack_setup", self._observability),
            ("integration_validation", self._integration),
        ]
        for name, step in steps:
            self._phase_event(name, "start")
            began = time.monotonic()
            try:
                detail = await step()
            except (FleetOpsError, OSError, TimeoutError) as exc:
                message = _message(exc)
                report.phases.append(PhaseOutcome(name, False, _since(began), message))
                report.failed_phase, report.error = name, message
                self._phase_event(name, "failed")
                log.error("deploy.phase_failed", phase=name, error=message)
                await self._record_failed_deploy(report)
                workers_started = self.supervisor is not None
                await self.shutdown()
                if self._footprint is not None:
                    # the workers' logs are what the error points at: they stay
                    self._footprint.undo(keep=(self.log_dir,) if workers_started else ())
                self.last_report = report
                return report
            report.phases.append(PhaseOutcome(name, True, _since(began), detail))
            report.completed_phases.append(name)
            report.api_url = self.api_url  # the port is known once the API is bound
            self._phase_event(name, "done")
        report.deployment_successful = True
        self.deployed = True
        report.readiness = await self.readiness(report)
        report.deployment_id = await self._record_deploy(report)
        self.last_report = report
        return report

    def _phase_event(self, phase: str, status: str) -> None:
        if self._on_phase is not None:
            self._on_phase(phase, status)

    async def _infrastructure(self) -> str:
        footprint = self._deploy_footprint()
        self._lock.acquire(self._lock_info())
        # from here no other control plane writes to the state directory: what is new
        # in it when the deploy fails is this deploy's to take back
        self._footprint = footprint
        # the port is, before the store is made or opened (the entrypoints were, in deploy)
        if self.serve_api:
            self._api_socket = self._bind_api()
            self._lock.update(self._lock_info())
        self._start_log_file()
        # before the first write to the store: one control plane a store (_store_lock)
        if (database := sqlite_file(self.store_url)) is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._store_lock.acquire, self._lock_info())
        self.client = QueueClient(self.store_url, clock=self.clock)
        await self.client.__aenter__()
        version = await self.client.run(self.client.store.schema_version)
        applied_path = self.state_dir / "applied-spec.yaml"
        replaced = self._keep_previous_spec(applied_path)
        applied_path.write_text(self.spec_text, encoding="utf-8")
        return f"store {redact(self.store_url)} at schema version {version}{replaced}"

    def _keep_previous_spec(self, applied_path: Path) -> str:
        """Keep the spec applied last (by an apply through the API, say, which no file
        of the user's may hold) in :data:`PREVIOUS_SPEC` when the one deployed now
        differs, and say so: deploying a spec replaces what was applied, and that must
        not happen unseen."""
        try:
            before = applied_path.read_text(encoding="utf-8")
        except (FileNotFoundError, UnicodeDecodeError):
            return ""
        if before == self.spec_text:
            return ""
        (self.state_dir / PREVIOUS_SPEC).write_text(before, encoding="utf-8")
        log.warning(
            "spec.replaced",
            kept=str(self.state_dir / PREVIOUS_SPEC),
            reason="the spec deployed differs from the one applied last",
        )
        return (
            f"; the spec applied last differs from this one and is kept in "
            f"{STATE_DIR}/{PREVIOUS_SPEC}"
        )

    def _deploy_footprint(self) -> Footprint:
        """The files and directories a deploy makes, as they are before it."""
        files = [self.log_dir / CONTROL_LOG, self.log_dir / f"{CONTROL_LOG}.1"]
        dirs = [self.log_dir, self.state_dir]
        store = sqlite_file(self.store_url)
        if store is not None:  # its lock beside it (see _store_lock)
            files.append(Path(f"{store}{SQLITE_LOCK_SUFFIX}"))
        for database in (store, self.state_dir / "history.db"):
            if database is not None:
                files += [database, *(Path(f"{database}{s}") for s in SQLITE_SIDE_FILES)]
                dirs += [d for d in database.parents if d not in dirs]
        restored = [
            self.state_dir / "applied-spec.yaml",
            self.state_dir / PREVIOUS_SPEC,
            self.state_dir / "routes.json",
        ]
        return Footprint(files=files, restored=restored, dirs=dirs)

    def _start_log_file(self) -> None:
        """Keep the control plane's own logs beside the workers', for search."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            self.log_dir / CONTROL_LOG, maxBytes=LOG_MAX_BYTES, backupCount=1, encoding="utf-8"
        )
        handler.setFormatter(JsonFormatter())
        handler.setLevel(logging.INFO)
        root = logging.getLogger("fleetops")
        quiet = root.getEffectiveLevel()
        if quiet > logging.INFO:
            # the file gets INFO and up; the other handlers (stderr) stay as quiet as they were
            for other in root.handlers:
                if other.level == logging.NOTSET:
                    other.setLevel(quiet)
            root.setLevel(logging.INFO)
        root.addHandler(handler)
        self._log_handler = handler

    def _lock_info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "api_url": self.api_url,
            "spec": str(self.spec.source or ""),
            "started_at": self.clock.now(),
        }

    def _bind_api(self) -> socket.socket:
        """The API's listening address, bound (it is served in the next phase)."""
        if not is_loopback_host(self.api_host):  # a spec made without validation
            raise ConfigError(
                "api.host",
                self.api_host,
                "bind to a loopback address such as 127.0.0.1: the API has no "
                "authentication yet, so it refuses to listen on other interfaces",
            )
        family = socket.AF_INET6 if ":" in self.api_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.api_host, self.api_port))
        except OSError as exc:
            sock.close()
            raise PhaseFailed(
                f"cannot listen on {self.api_host}:{self.api_port} ({exc.strerror}): stop what "
                "uses that port or set api.port in the spec"
            ) from exc
        self.api_port = sock.getsockname()[1]
        return sock

    async def _control_plane(self) -> str:
        sock = self._api_socket
        if sock is None:
            return "API disabled"
        self._api_socket = None  # the server's from here
        import uvicorn

        from ..api import create_app

        sock.listen(128)
        config = uvicorn.Config(
            create_app(self), log_level="warning", lifespan="off", access_log=False
        )
        server = _api_server_class()(config)
        assert self._tg is not None
        self._api_server = server
        self._api_task = self._tg.create_task(server.serve(sockets=[sock]), name="api-server")
        async with asyncio.timeout(10):
            while not server.started:
                if self._api_task.done():
                    raise PhaseFailed("the API server stopped while starting")
                await asyncio.sleep(0.01)
        return f"API listening on {self.api_url}"

    async def _data_plane(self) -> str:
        client = self._need_client()
        requeued = await client.run(client.store.requeue_expired, self.clock.now())
        counts = await client.run(client.store.count_tasks)
        waiting = sum(n for (_, _, s), n in counts.items() if s == "queued")
        running = sum(n for (_, _, s), n in counts.items() if s == "running")
        return (
            f"queue ready: {waiting} queued, {running} running from before, "
            f"{len(requeued)} expired leases requeued"
        )

    async def _service_mesh(self) -> str:
        routes = {name: list(c.routes) for name, c in self.spec.clusters.items()}
        for name, targets in routes.items():
            for target in targets:
                if target not in self.spec.clusters:
                    raise PhaseFailed(f"clusters.{name}.routes names unknown cluster {target!r}")
        (self.state_dir / "routes.json").write_text(json.dumps(routes, indent=1))
        count = sum(len(t) for t in routes.values())
        return f"{count} route(s) between {len(routes)} cluster(s)"

    async def _agent_clusters(self) -> str:
        plans = self.cluster_plans()
        self.supervisor = Supervisor(
            self.store_url,
            plans,
            clock=self.clock,
            log_dir=self.log_dir,
            spares=self.spec.recovery.agent_failure.warm_spares,
        )
        assert self._tg is not None
        self._supervisor_stop = asyncio.Event()
        self._supervisor_task = self._tg.create_task(
            self.supervisor.run(self._supervisor_stop), name="supervisor"
        )
        try:
            async with asyncio.timeout(WORKERS_READY_TIMEOUT):
                await self.supervisor.ready.wait()
        except TimeoutError:
            raise PhaseFailed(
                f"workers were not all heartbeating within {WORKERS_READY_TIMEOUT:.0f} s; "
                f"see the worker logs in {self.state_dir / 'logs'}"
            ) from None
        total = sum(p.replicas for p in plans)
        return f"{total} worker(s) heartbeating in {len(plans)} cluster(s)"

    async def _observability(self) -> str:
        obs = self.spec.observability
        policy = RetentionPolicy(
            raw=obs.retention.high,
            medium=obs.retention.medium,
            low=obs.retention.low,
            medium_step=obs.resolution.medium,
            low_step=obs.resolution.low,
        )
        self.history = await asyncio.to_thread(
            HistoryStore, self.state_dir / "history.db", retention=policy, clock=self.clock
        )
        await self.record_history()
        assert self._tg is not None
        self._history_task = self._tg.create_task(self._history_loop(), name="history")
        detail = (
            f"metric history every {obs.resolution.high:g} s in {self.state_dir / 'history.db'}"
        )
        if not self.serve_api:
            return detail
        import httpx

        async with httpx.AsyncClient(timeout=5) as http:
            response = await http.get(f"{self.api_url}/metrics")
        if response.status_code != 200:
            raise PhaseFailed(f"/metrics answered {response.status_code}")
        lines = len(response.text.splitlines())
        return f"metrics at {self.api_url}/metrics ({lines} lines); {detail}"

    async def record_history(self) -> int:
        """Ingest the fleet's merged metrics into the history store once; answer samples."""
        from ..api._metrics import fleet_metrics

        history = self.history
        if history is None:
            return 0
        now = self.clock.now()
        merged = await fleet_metrics(self)
        samples = [Sample(name, labels, value, now) for name, labels, value in merged.samples()]
        return await asyncio.to_thread(history.ingest, samples)

    async def _history_loop(self) -> None:
        step = self.spec.observability.resolution.high
        last_maintained = self.clock.monotonic()
        while True:
            await self.clock.sleep(step)
            try:
                await self.record_history()
                if self.clock.monotonic() - last_maintained >= 60:
                    await self.maintain()
                    last_maintained = self.clock.monotonic()
            except FleetOpsError as exc:
                log.warning("history.ingest_failed", error=str(exc))

    async def task_counts(self) -> dict[tuple[str, str, str], int]:
        """Tasks by (cluster, agent, state): what ``/metrics``, the dashboard, the
        metric history and the live status table show, each asking every few seconds.

        The queued and running tasks are counted at every call: they are few, and
        have partial indexes of their own. The finished ones are counted again only
        once their last count is :data:`FINISHED_RECOUNT_MIN` seconds old and
        :data:`FINISHED_RECOUNT_FACTOR` times older than it took. Counting them reads
        an index entry for every task ever finished (0.1 s a million on two cores),
        and a fleet that has run a week at a few hundred tasks a second would spend
        its control plane counting. So the finished counts may be that far behind;
        the open ones never are.
        """
        client = self._need_client()
        if self._finished_due():
            async with self._count_lock:  # one count of the finished at a time
                if self._finished_due():
                    began = time.monotonic()
                    counts = await client.run(client.store.count_tasks)
                    self._finished_cost = time.monotonic() - began
                    self._finished_counted_at = self.clock.monotonic()
                    self._finished = {k: n for k, n in counts.items() if k[2] in TERMINAL_STATES}
                    return counts
        open_counts = await client.run(functools.partial(client.store.count_tasks, finished=False))
        return open_counts | self._finished

    def _finished_due(self) -> bool:
        at = self._finished_counted_at
        if at is None:
            return True
        every = max(FINISHED_RECOUNT_MIN, FINISHED_RECOUNT_FACTOR * self._finished_cost)
        return self.clock.monotonic() - at >= every

    async def retire_telemetry(self) -> int:
        """Fold the metrics snapshots of workers gone for :data:`RETIRE_TELEMETRY_AFTER`
        into one snapshot per cluster (worker ``retired/<cluster>``); answer how many.

        Every worker start is a new worker id with a snapshot of its own, kept because
        a gone worker's counters and histograms still count. Without this every scrape
        and every history step would merge a snapshot per worker ever started
        (restarts, scaling, redeploys). Folded, their sums are exactly what they were;
        their gauges had stopped counting already.
        """
        client = self._need_client()
        cutoff = self.clock.now() - RETIRE_TELEMETRY_AFTER
        # the folded rows come back too: no worker of theirs runs, and they carry the
        # time of the newest snapshot folded in, which was before an earlier cutoff
        rows = await client.run(client.store.gone_telemetry, cutoff)
        gone = [row for row in rows if not row[0].startswith(RETIRED)]
        if not gone:
            return 0
        retired = {row[0]: row for row in rows if row[0].startswith(RETIRED)}
        by_cluster: dict[str, list[tuple[str, str, float, str]]] = {}
        for row in gone:
            by_cluster.setdefault(row[1], []).append(row)
        folded_rows = []
        for cluster, members in sorted(by_cluster.items()):
            before = retired.get(RETIRED + cluster)
            folded = members + ([before] if before is not None else [])
            merged = MetricSet.merge(
                (json.loads(row[3]) for row in folded), gauges_from=(False for _ in folded)
            )
            snapshot = json.dumps(merged.snapshot(), separators=(",", ":"))
            newest = max(row[2] for row in folded)
            folded_rows.append((RETIRED + cluster, cluster, newest, snapshot))
        await client.run(client.store.replace_telemetry, [row[0] for row in gone], folded_rows)
        log.info("telemetry.retired", workers=len(gone), clusters=len(folded_rows))
        return len(gone)

    async def maintain(self) -> int:
        """What the history loop does once a minute: roll the metric history up and
        drop what its tiers no longer keep; delete the log files of workers not live
        that wrote nothing for ``observability.retention.high``, and the rows of
        workers stopped or dead that long ago; fold the metrics of
        workers long gone (:meth:`retire_telemetry`); drop the spans that started
        longer ago than ``retention.high`` (a trace is kept as long as the raw
        metrics around it); drop the events (worker failures, restarts, task retries)
        older than ``retention.low``, as long as any metric history; start deleting
        the finished tasks past the store's
        ``keep_finished`` and ``keep_dead`` (:meth:`prune_tasks`, in the background:
        a first pass over a large store takes a while). Answers the spans dropped."""
        history = self.history
        if history is not None:
            await asyncio.to_thread(history.maintain)
        keep = self.spec.observability.retention.high
        live = {h.id for h in self.supervisor.live_workers()} if self.supervisor else set()
        pruned = await asyncio.to_thread(prune_logs, self.log_dir, self.clock.now() - keep, live)
        if pruned:
            log.info("logs.pruned", workers=len(pruned), older_than_s=keep)
        client = self.client
        if client is None:
            return 0
        lock = self._store_lock
        if lock.taken and not await asyncio.to_thread(lock.keep):
            # another control plane may run on the store now: what follows deletes
            # from it, and is left to whichever one holds the lock
            log.error(
                "control_plane.store_lock_lost",
                store=redact(self.store_url),
                detail="the store's control-plane lock could not be taken again; "
                "its maintenance is skipped until it can",
            )
            return 0
        await self.retire_telemetry()
        forgotten = await client.run(client.store.prune_workers, self.clock.now() - keep)
        if forgotten:
            log.info("workers.pruned", count=forgotten, older_than_s=keep)
        dropped = await client.run(client.store.prune_spans, self.clock.now() - keep)
        if dropped:
            log.info("spans.pruned", count=dropped, older_than_s=keep)
        longest = self.spec.observability.retention.low
        events = await client.run(client.store.prune_events, self.clock.now() - longest)
        if events:
            log.info("events.pruned", count=events, older_than_s=longest)
        if self._tg is not None and (self._prune_task is None or self._prune_task.done()):
            self._prune_task = self._tg.create_task(self.prune_tasks(), name="prune-tasks")
        return dropped

    async def prune_tasks(self) -> int:
        """Delete the finished tasks kept longer than ``store.keep_finished`` (succeeded
        and cancelled) or ``store.keep_dead`` (dead letters), with their attempts and
        effects, :data:`~fleetops.store._sql.PRUNE_TASKS` to a transaction. After each
        transaction it pauses as long as that took, so the fleet's own writers get the
        store at least half the time however much is due. Answers how many went."""
        client = self.client
        settings = self.spec.store
        if client is None or (settings.keep_finished is None and settings.keep_dead is None):
            return 0
        now = self.clock.now()
        finished_before = None if settings.keep_finished is None else now - settings.keep_finished
        dead_before = None if settings.keep_dead is None else now - settings.keep_dead
        total = 0
        try:
            while True:
                began = time.monotonic()
                gone = await client.run(
                    client.store.prune_tasks, finished_before, dead_before, PRUNE_TASKS
                )
                total += gone
                if gone < PRUNE_TASKS:
                    break
                await asyncio.sleep(time.monotonic() - began)
        except FleetOpsError as exc:
            log.warning("tasks.prune_failed", error=str(exc), pruned=total)
        if total:
            log.info(
                "tasks.pruned",
                count=total,
                keep_finished_s=settings.keep_finished,
                keep_dead_s=settings.keep_dead,
            )
        return total

    async def _integration(self) -> str:
        passed, detail = await self.smoke_test()
        if not passed:
            raise PhaseFailed(f"integration smoke test failed: {detail}")
        return detail

    async def smoke_test(self, within: float = SMOKE_TIMEOUT) -> tuple[bool, str]:
        """A smoke task through every cluster and every route; answers (passed, detail).

        A cluster with no replicas has no worker to run one: it is skipped, and so
        are the routes to it, and the detail says so."""
        client = self._need_client()
        stamp = f"{self.clock.now():.6f}"
        running = [name for name in self.spec.clusters if self.desired_replicas(name) > 0]
        skipped = [name for name in self.spec.clusters if name not in running]
        ids = {}
        routes = 0
        for name in running:
            targets = [r for r in self.spec.clusters[name].routes if r in running]
            routes += len(targets)
            submitted = await client.submit(
                NewTask(
                    queue=name,
                    agent=SMOKE_AGENT,
                    payload=json.dumps({"routes": targets}),
                    priority=100,
                    idempotency_key=f"smoke/{stamp}/{name}",
                    max_attempts=1,
                    headers=json.dumps({TRACEPARENT: new_traceparent()}),
                )
            )
            ids[name] = submitted.id
        deadline = time.monotonic() + within
        records = []
        while ids:
            records = await client.run(client.store.get_tasks, list(ids.values()))
            if all(r.state in TERMINAL_STATES for r in records) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        failed = [r for r in records if r.state != "succeeded"]
        if failed:
            detail = "; ".join(
                f"{r.queue}: {r.state} {r.dead_reason or r.error or 'not finished in time'}"
                for r in failed
            )
            # given up on: not left queued (to run whenever a worker comes) with the
            # smoke tasks they called
            unfinished = [r.id for r in failed if r.state not in TERMINAL_STATES]
            try:
                await client.run(
                    client.store.cancel_many,
                    unfinished,
                    self.clock.now(),
                    f"the smoke test gave up on it after {within:g} s",
                )
            except StoreError as exc:  # the failure is reported all the same
                log.warning("smoke.cancel_failed", tasks=unfinished, error=str(exc))
            self._smoke = (False, detail)
        else:
            detail = f"smoke tasks passed through {len(ids)} cluster(s) and {routes} route(s)"
            if skipped:
                detail += f"; skipped {', '.join(skipped)}: 0 replicas, no worker to run one"
            self._smoke = (True, detail)
        return self._smoke[0] is True, self._smoke[1]

    # --- plans, readiness, records -------------------------------------------------------------

    def cluster_plans(self, spec: FleetSpec | None = None) -> list[ClusterPlan]:
        spec = spec or self.spec
        applied = str(self.state_dir / "applied-spec.yaml")
        plans = []
        for plan, (_, cluster) in zip(spec.cluster_plans(), spec.clusters.items(), strict=True):
            settings = plan.worker
            quota = cluster.resource_quotas.max_concurrent_tasks
            if quota is not None:
                settings = replace(settings, max_cluster_running=quota)
            plans.append(
                ClusterPlan(
                    name=plan.name,
                    agents=(*plan.agents, SMOKE_ENTRYPOINT),
                    replicas=self.desired_replicas(plan.name, spec),
                    worker=settings,
                    python_path=plan.python_path,
                    restart=cluster.restart_policy(),
                    detector=cluster.detector_settings(),
                    extra=(("spec", applied),),
                )
            )
        return plans

    def desired_replicas(self, cluster: str, spec: FleetSpec | None = None) -> int:
        """The spec's replicas, capped by the cluster's max_agents quota."""
        c = (spec or self.spec).clusters[cluster]
        cap = c.resource_quotas.max_agents
        return c.replicas if cap is None else min(c.replicas, cap)

    async def readiness(self, report: DeploymentReport | None = None) -> ReadinessReport:
        report = report or self.last_report
        client = self._need_client()
        since = self.clock.now() - 3600
        dead = await client.run(client.store.count_dead_since, since)
        live = {}
        if self.supervisor is not None:
            for name in self.spec.clusters:
                live[name] = sum(
                    1 for h in self.supervisor.live_workers(name) if h.first_heartbeat_at
                )
        facts = FleetFacts(
            phases_completed=len(report.completed_phases) if report else 0,
            phases_total=len(PHASES),
            failed_phase=report.failed_phase if report else None,
            live_workers=live,
            desired_workers={n: self.desired_replicas(n) for n in self.spec.clusters},
            smoke_passed=self._smoke[0],
            smoke_detail=self._smoke[1],
            dead_letters_last_hour=dead,
            api_host=self.api_host,
        )
        return score(self.spec, facts)

    async def _record_deployment(self, client: QueueClient, report: DeploymentReport) -> int:
        """Keep the deployment, its phases, its outcome and readiness in the store."""
        store = client.store
        deployment = await client.run(
            store.start_deployment,
            self.clock.now(),
            self.spec.fleet.name,
            spec_hash(self.spec_text),
            self.actor,
        )
        readiness = report.readiness.as_dict() if report.readiness else None
        await client.run(
            store.finish_deployment,
            deployment,
            self.clock.now(),
            "succeeded" if report.deployment_successful else "failed",
            json.dumps([asdict(p) for p in report.phases]),
            report.failed_phase,
            report.error,
            json.dumps(readiness) if readiness else None,
        )
        return deployment

    async def _record_deploy(self, report: DeploymentReport) -> int:
        client = self._need_client()
        deployment = await self._record_deployment(client, report)
        await client.run(
            client.store.record_change,
            self.clock.now(),
            self.actor,
            "deploy",
            f"fleet/{self.spec.fleet.name}",
            "fleetops up",
            None,
            self.spec_text,
            json.dumps(diff({}, self.spec.model_dump(mode="json"))),
        )
        return deployment

    async def _record_failed_deploy(self, report: DeploymentReport) -> None:
        if self.client is None:
            return  # the store itself could not be opened
        try:
            await self._record_deployment(self.client, report)
        except FleetOpsError as exc:
            log.warning("deploy.record_failed", error=str(exc))

    def _need_client(self) -> QueueClient:
        if self.client is None:
            raise UsageError("the fleet is not deployed: run 'fleetops up' first")
        return self.client

    # --- running: reconciler and apply --------------------------------------------------------

    async def serve(self, stop: asyncio.Event) -> None:
        """Reconcile desired against live state until ``stop`` is set."""
        while not stop.is_set():
            self.reconcile()
            try:
                async with asyncio.timeout(RECONCILE_INTERVAL):
                    await stop.wait()
            except TimeoutError:
                pass

    def reconcile(self) -> list[str]:
        """One pass: bring every cluster's worker count to its desired number."""
        actions: list[str] = []
        if self.supervisor is None:
            return actions
        for name in self.spec.clusters:
            want = self.desired_replicas(name)
            if name in self.supervisor.plans and self.supervisor.desired(name) != want:
                self.supervisor.scale(name, want)
                actions.append(f"scale {name} to {want}")
        return actions

    async def apply(
        self,
        text: str,
        *,
        actor: str | None = None,
        reason: str = "",
        rollout: tuple[str, ...] = (),
    ) -> ApplyResult:
        """Change the running fleet to the spec in ``text``; record the change.

        Invalid specs, entrypoints that do not import and changes that need a restart
        (store, API) raise UsageError and change nothing. A change that fails part-way
        (a rolled-out worker not heartbeating in time) raises :class:`ApplyFailed`
        and is recorded as ``apply_failed``; the fleet keeps its last applied spec,
        and applying a spec again converges on it from what is actually running.
        """
        new = load_spec_text(text, path=self.spec.source)
        async with self._apply_lock:
            old = self.spec
            for unknown in rollout:
                if unknown not in new.clusters:
                    raise ConfigError("rollout", unknown, f"use one of {', '.join(new.clusters)}")
            if new.store_url() != old.store_url():
                raise ConfigError(
                    "store",
                    new.store.url,
                    "a running fleet cannot move stores: run "
                    "'fleetops down', then 'fleetops up' with the new spec",
                )
            if (new.api.host, new.api.port) != (old.api.host, old.api.port):
                raise ConfigError(
                    "api",
                    f"{new.api.host}:{new.api.port}",
                    "the API address changes only on restart: 'fleetops down', then 'fleetops up'",
                )
            await check_entrypoints(new)  # before any worker is touched
            client = self._need_client()
            before, after = old.model_dump(mode="json"), new.model_dump(mode="json")
            changes = diff(before, after)
            actions: list[str] = []
            notes: list[dict[str, Any]] = [{"path": "actions", "after": actions, "op": "note"}]

            async def record(kind: str) -> int:
                return await client.run(
                    client.store.record_change,
                    self.clock.now(),
                    actor or self.actor,
                    kind,
                    f"fleet/{new.fleet.name}",
                    reason,
                    json.dumps(before),
                    json.dumps(after),
                    json.dumps(changes + notes),
                )

            try:
                await self._converge(old, new, set(rollout), actions)
            except (FleetOpsError, OSError, TimeoutError) as exc:
                message = f"{_message(exc)} after: {'; '.join(actions) or 'no change'}"
                notes.append({"path": "error", "after": message, "op": "note"})
                change_id = await record("apply_failed")
                log.error("fleet.apply_failed", change=change_id, error=message)
                raise ApplyFailed(
                    f"change {change_id} failed: {message}. The fleet keeps its last applied "
                    "spec: apply it (or a fixed one) again to converge on it"
                ) from exc
            if new.fleet.name != old.fleet.name:
                # a label: the state is the spec's directory's and the store's, not the name's
                actions.append(
                    f"renamed the fleet from {old.fleet.name} to {new.fleet.name}: its "
                    "dashboard, change log and deployments say the new name from now on; "
                    "its state, store and workers are unchanged"
                )
            self.spec, self.spec_text = new, text
            (self.state_dir / "applied-spec.yaml").write_text(text, encoding="utf-8")
            change_id = await record("apply")
        log.info("fleet.applied", change=change_id, actions=actions)
        return ApplyResult(change_id, changes, actions)

    async def _converge(
        self, old: FleetSpec, new: FleetSpec, rollout: set[str], actions: list[str]
    ) -> None:
        """Bring the supervisor from what it runs to ``new``, noting each step in
        ``actions``. What it runs is compared, not only ``old``: a change that failed
        part-way leaves clusters on plans ``old`` does not describe."""
        supervisor = self.supervisor
        if supervisor is None:
            raise UsageError("the fleet is not deployed: run 'fleetops up' first")
        new_plans = {p.name: p for p in self.cluster_plans(new)}
        for name in list(supervisor.plans):
            if name not in new_plans:
                await supervisor.remove_cluster(name)
                actions.append(f"removed cluster {name}")
        for name, plan in new_plans.items():
            running = supervisor.plans.get(name)
            if running is None:
                supervisor.add_cluster(plan)
                actions.append(f"added cluster {name} with {plan.replicas} worker(s)")
                continue
            if (
                name in rollout
                or name not in old.clusters
                or _restart_needed(old, new, name)
                or replace(running, replicas=plan.replicas) != plan
            ):
                await supervisor.roll(plan)
                actions.append(f"rolled out cluster {name} ({plan.replicas} worker(s))")
            elif supervisor.desired(name) != plan.replicas:
                was = supervisor.desired(name)
                supervisor.scale(name, plan.replicas)
                actions.append(f"scaled {name} from {was} to {plan.replicas} worker(s)")
        # last: a change that fails part-way leaves the spares as the applied spec has them
        spares = new.recovery.agent_failure.warm_spares
        if supervisor.spares != spares:
            actions.append(f"warm spares per cluster from {supervisor.spares} to {spares}")
            supervisor.set_spares(spares)


def _restart_needed(old: FleetSpec, new: FleetSpec, cluster: str) -> bool:
    """Whether ``cluster`` changed in more than its replicas, or its provider changed."""
    old_c = old.clusters[cluster].model_dump(mode="json")
    new_c = new.clusters[cluster].model_dump(mode="json")
    old_c.pop("replicas")
    new_c.pop("replicas")
    return old_c != new_c or old.provider_for(cluster) != new.provider_for(cluster)


def _message(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = str(exc).strip()
    return text or type(exc).__name__


def _since(began: float) -> float:
    return round(time.monotonic() - began, 3)


def _dump(spec: FleetSpec) -> str:
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)


__all__ = ["ControlPlane", "DeploymentReport", "PHASES", "Store", "open_store"]
