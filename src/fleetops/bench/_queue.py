"""``fleetops bench queue``: throughput and per-task overhead of the durable queue.

Two phases in one run, on real worker processes and a real store:

1. **Maximum throughput.** ``tasks`` tasks are submitted in batches while the
   workers (``inflight`` concurrent handlers in all) drain them; throughput is tasks
   divided by the time from the first submit to the last durable completion.
2. **Overhead at half the maximum rate.** Tasks are submitted at half the measured
   rate (or at ``overhead_rate``) for ``overhead_seconds`` (however many ``tasks``
   the first phase ran), paced evenly: the tasks that have come due are
   submitted together, after the last submit was acknowledged and a millisecond
   passed, or with ``open_loop`` on a fixed schedule of one submit a millisecond
   (see :func:`_submit_paced`). Overhead is end-to-end latency (submit →
   completion) minus the task's nominal work, as p50 and p99; ``queue_wait_*``
   (submit → claimed) and ``run_overhead_*`` (claimed → completion, minus the work)
   say where it goes; with ``sleep`` work, ``run_overhead`` is split further, each
   task's parts adding up to it: ``handler_start_*`` (claimed → the handler's first
   line), ``sleep_late_*`` (the sleep past its time) and ``completion_*`` (the
   handler's return → its completion stamped).

   The ends are the store's own stamps. A task's ``created_at`` is read before its
   submit waits for the write lock, so the submit's whole transaction counts. Its
   ``finished_at`` is read once the completing transaction holds the write lock:
   waits for the lock count, but that transaction's own statements and commit,
   which follow, do not (about 0.3 ms at the median on a 2-core machine at half the
   maximum rate).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .._clock import SystemClock
from .._exceptions import ConfigError, FleetOpsError, StoreUnavailable
from .._units import parse_duration
from ..chaos import percentile
from ..queue import QueueClient
from ..runtime import ClusterPlan, RestartPolicy, Supervisor, SupervisorEvent, WorkerSettings
from ..runtime._loop import resolve_event_loop
from ..store import NewTask, Submitted, TaskRecord
from ..store._open import check_postgres_url, redact
from ..store._sqlite import DURABILITY_LEVELS


class BenchAborted(FleetOpsError):
    """The benchmark could not run to its end."""


AGENTS = ("fleetops.bench._agents:noop", "fleetops.bench._agents:sleep")
#: The most tasks the overhead phase submits (its rate times its length): each one's
#: record is read back and held, and a rate the machine cannot keep up would queue
#: them all.
MAX_OVERHEAD_TASKS = 1_000_000


@dataclass(frozen=True, slots=True)
class QueueBenchConfig:
    tasks: int = 20000
    inflight: int = 1000
    work: str = "sleep:10ms"
    store: str = "sqlite"
    #: SQLite's durability ('full' or 'normal'; None: full); refused with PostgreSQL,
    #: whose durability is its server's (synchronous_commit)
    durability: str | None = None
    workers: int = 2
    overhead_seconds: float = 5.0
    #: tasks/s in the overhead phase (None: half the measured maximum)
    overhead_rate: float | None = None
    #: metrics and traces in the workers (off only to measure what they cost)
    telemetry: bool = True
    #: run the overhead phase (at half the measured rate) after the throughput phase
    measure_overhead: bool = True
    #: the workers' event loop (see runtime._loop)
    event_loop: str = "auto"
    #: pace the overhead phase open-loop: submit on a fixed schedule, without waiting
    #: for earlier submits to be acknowledged (see _submit_paced)
    open_loop: bool = False


@dataclass(frozen=True, slots=True)
class QueueBenchResult:
    throughput_tps: float
    overhead_p50_ms: float | None
    overhead_p99_ms: float | None
    durability: str
    tasks: int
    work: str
    workers: int
    inflight: int
    store: str
    overhead_rate_tps: float
    queue_wait_p50_ms: float | None
    queue_wait_p99_ms: float | None
    run_overhead_p50_ms: float | None
    run_overhead_p99_ms: float | None
    #: how much later than asked the agent's own asyncio.sleep returned (part of the
    #: overhead: timers fire on the event loop's millisecond ticks)
    sleep_late_p50_ms: float | None
    sleep_late_p99_ms: float | None
    overhead_tasks: int
    #: how the overhead phase was paced: 'closed' (each submit waits for the last one's
    #: acknowledgement) or 'open' (a fixed schedule; see _submit_paced)
    pacing: str
    #: submits in the overhead phase (one a millisecond would be 1,000 a second)
    overhead_submits: int
    #: how long a submit of the overhead phase took from the call to its answer (at
    #: durability full, its fsync included): closed-loop, the slower the answers, the
    #: fewer and larger the submits, and the more tasks each worker claims at once
    submit_ack_p50_ms: float | None
    submit_ack_p99_ms: float | None
    #: the event loop the workers ran on: 'uvloop' or 'asyncio'
    event_loop: str
    #: claimed → the handler's first line (the claim's commit, then each task of the
    #: batch started in turn) and the handler's return → its completion stamped
    #: (None for noop work, whose handler reports no times)
    handler_start_p50_ms: float | None
    handler_start_p99_ms: float | None
    completion_p50_ms: float | None
    completion_p99_ms: float | None
    #: worker processes that died or hung during the run (their logs are kept: see
    #: _keep_logs); the supervisor replaced them and their tasks were redelivered
    worker_failures: int
    elapsed_s: float
    #: CPU time (user + system) per task in each phase: of all worker processes, and
    #: of the bench's own process (the submitter, and the supervisor it hosts). None
    #: where it cannot be read (no /proc, or a worker was replaced during the phase).
    worker_cpu_us_per_task_throughput_phase: float | None = None
    worker_cpu_us_per_task_overhead_phase: float | None = None
    submitter_cpu_us_per_task_throughput_phase: float | None = None
    submitter_cpu_us_per_task_overhead_phase: float | None = None
    #: the share of the machine's CPUs those processes kept busy in the overhead phase
    #: (0.5: half of them); what the overhead is measured under
    cpu_busy_share_overhead_phase: float | None = None
    #: the fsyncs that made the submitter's writes durable (at durability full), by
    #: where they ran: in the kernel, on its event loop, on its store thread
    submitter_fsyncs: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_work(work: str) -> tuple[str, float]:
    """``noop`` or ``sleep:10ms`` → (agent name, seconds of work)."""
    if work == "noop":
        return "noop", 0.0
    kind, _, amount = work.partition(":")
    if kind == "sleep" and amount:
        try:
            return "sleep", parse_duration(amount, "--work")
        except ConfigError:
            pass
    raise ConfigError("--work", work, "use 'noop' or 'sleep:DURATION' such as sleep:10ms")


async def bench_queue(
    config: QueueBenchConfig, *, progress: Callable[[str, int, int], None] | None = None
) -> QueueBenchResult:
    agent, work_s = parse_work(config.work)
    if config.tasks < 1:
        raise ConfigError("--tasks", config.tasks, "use 1 or more")
    if config.overhead_rate is not None and not 0 < config.overhead_rate < math.inf:
        raise ConfigError(
            "--overhead-rate", config.overhead_rate, "use a finite rate above 0 tasks/s, e.g. 500"
        )
    if not 0 < config.overhead_seconds < math.inf:
        raise ConfigError(
            "--overhead-seconds", config.overhead_seconds, "use a finite length in seconds, e.g. 5"
        )
    if config.overhead_rate is not None and (
        config.overhead_rate * config.overhead_seconds > MAX_OVERHEAD_TASKS
    ):
        raise ConfigError(
            "--overhead-seconds",
            config.overhead_seconds,
            f"at --overhead-rate {config.overhead_rate:g} that is more than "
            f"{MAX_OVERHEAD_TASKS:,} tasks: use a lower rate or a shorter phase",
        )
    if config.inflight < config.workers:
        raise ConfigError(
            "--inflight", config.inflight, f"use at least --workers ({config.workers})"
        )
    loop_used = resolve_event_loop(config.event_loop, "--event-loop")
    if config.store == "sqlite":
        durability = "full" if config.durability is None else config.durability
        if durability not in DURABILITY_LEVELS:
            raise ConfigError(
                "--durability", config.durability, f"use one of {', '.join(DURABILITY_LEVELS)}"
            )
    elif config.store.startswith(("postgresql://", "postgres://")):
        check_postgres_url(config.store, "--store")
        if config.durability is not None:
            raise ConfigError(
                "--durability",
                config.durability,
                "durability applies to SQLite stores only; remove --durability "
                "(PostgreSQL's is its server's synchronous_commit)",
            )
        durability = "postgresql (synchronous_commit as configured)"
    else:
        raise ConfigError("--store", config.store, "use 'sqlite' or a postgresql:// URL")
    clock = SystemClock()
    with (
        tempfile.TemporaryDirectory(prefix="fleetops-bench-") as tmp,
        _bench_store(config.store, durability, Path(tmp)) as url,
    ):
        cluster = f"bench-{uuid.uuid4().hex[:8]}"
        plan = ClusterPlan(
            name=cluster,
            agents=AGENTS,
            replicas=config.workers,
            worker=WorkerSettings(
                concurrency=config.inflight // config.workers,
                claim_batch=max(50, config.inflight // config.workers // 2),
                telemetry=config.telemetry,
                event_loop=config.event_loop,
            ),
        )
        failures: list[SupervisorEvent] = []
        #: set when the workers keep failing (more restarts than the restart policy
        #: allows): no worker would run the tasks that are left, so the bench stops
        broken: list[SupervisorEvent] = []

        def on_event(event: SupervisorEvent) -> None:
            if event.kind == "worker.failed":
                failures.append(event)
            elif event.kind == "cluster.degraded":
                broken.append(event)

        supervisor = Supervisor(
            url,
            [plan],
            clock=clock,
            restart=RestartPolicy(),
            log_dir=Path(tmp) / "logs",
            on_event=on_event,
        )
        stop = asyncio.Event()
        payload = json.dumps({"seconds": work_s})
        started = time.monotonic()
        try:
            async with (
                # the submitter's fsyncs run on its loop, which has nothing else to
                # do while it waits for an acknowledgement: sooner than the kernel's
                # (see QueueClient); the workers hand theirs to the kernel
                QueueClient(url, clock=clock, inline=True, kernel_fsync=False) as client,
                asyncio.TaskGroup() as tg,
            ):
                tg.create_task(supervisor.run(stop), name="supervisor")
                await _wait_ready(supervisor, broken)

                # phase 1: maximum throughput
                cpu = _CpuMeter(supervisor)
                t0 = clock.now()
                ids = await _submit_all(client, cluster, agent, payload, config.tasks)
                await _wait_terminal(client, cluster, len(ids), "throughput", progress, broken)
                cpu_max = cpu.phase(len(ids))
                last = await _last_finished(client, ids)
                throughput = len(ids) / max(last - t0, 1e-9)

                # phase 2: overhead at half that rate
                rate = config.overhead_rate or throughput / 2
                paced: list[int] = []
                acks: list[float] = []
                overheads: list[float] = []
                waits: list[float] = []
                runs: list[float] = []
                late: list[float] = []
                starts: list[float] = []
                completions: list[float] = []
                cpu_half = _PhaseCpu(None, None, None)
                if not config.measure_overhead:
                    rate = 0.0
                else:
                    # as many as the rate submits in the phase's length, however many
                    # the first phase ran (at least 50, for percentiles to mean something)
                    count = max(50, min(MAX_OVERHEAD_TASKS, int(rate * config.overhead_seconds)))
                    cpu = _CpuMeter(supervisor)
                    paced, acks = await _submit_paced(
                        client, cluster, agent, payload, count, rate, clock, config.open_loop
                    )
                    await _wait_terminal(
                        client, cluster, len(ids) + len(paced), "overhead", progress, broken
                    )
                    cpu_half = cpu.phase(len(paced))
                    records = await client.run(client.store.get_tasks, paced)
                    done = [
                        r for r in records if r.finished_at is not None and r.state == "succeeded"
                    ]
                    overheads = [(r.finished_at - r.created_at - work_s) * 1000 for r in done]  # type: ignore[operator]
                    waits = [(r.started_at - r.created_at) * 1000 for r in done]  # type: ignore[operator]
                    runs = [(r.finished_at - r.started_at - work_s) * 1000 for r in done]  # type: ignore[operator]
                    if agent == "sleep":
                        late, starts, completions = _sleep_parts(done, work_s)
                submitter_fsyncs = {
                    "kernel": client.syncs_kernel,
                    "loop": client.syncs_inline,
                    "thread": client.syncs_on_thread,
                }
                stop.set()
        except BaseExceptionGroup as group:  # from the TaskGroup: the supervisor is stopped
            aborted, rest = group.split(BenchAborted)
            if aborted is None or rest is not None:
                raise
            _keep_logs(Path(tmp) / "logs", failures)
            ended = (
                _last_line(Path(tmp) / "logs" / f"{failures[-1].worker}.log") if failures else ""
            )
            raise BenchAborted(
                f"{aborted.exceptions[0]}"
                + (f"; the last one's log ends: {ended}" if ended else "")
            ) from None
        if failures:
            _keep_logs(Path(tmp) / "logs", failures)
    ack_ms = [a * 1000 for a in acks]
    return QueueBenchResult(
        throughput_tps=round(throughput, 1),
        overhead_p50_ms=_r(percentile(overheads, 50)),
        overhead_p99_ms=_r(percentile(overheads, 99)),
        durability=durability,
        tasks=len(ids),
        work=config.work,
        workers=config.workers,
        inflight=config.inflight,
        store="sqlite" if config.store == "sqlite" else "postgresql",
        overhead_rate_tps=round(rate, 1),
        queue_wait_p50_ms=_r(percentile(waits, 50)),
        queue_wait_p99_ms=_r(percentile(waits, 99)),
        run_overhead_p50_ms=_r(percentile(runs, 50)),
        run_overhead_p99_ms=_r(percentile(runs, 99)),
        sleep_late_p50_ms=_r(percentile(late, 50)),
        sleep_late_p99_ms=_r(percentile(late, 99)),
        handler_start_p50_ms=_r(percentile(starts, 50)),
        handler_start_p99_ms=_r(percentile(starts, 99)),
        completion_p50_ms=_r(percentile(completions, 50)),
        completion_p99_ms=_r(percentile(completions, 99)),
        overhead_tasks=len(paced),
        pacing="open" if config.open_loop else "closed",
        overhead_submits=len(acks),
        submit_ack_p50_ms=_r(percentile(ack_ms, 50)),
        submit_ack_p99_ms=_r(percentile(ack_ms, 99)),
        event_loop=loop_used,
        worker_failures=len(failures),
        elapsed_s=round(time.monotonic() - started, 2),
        worker_cpu_us_per_task_throughput_phase=cpu_max.workers,
        worker_cpu_us_per_task_overhead_phase=cpu_half.workers,
        submitter_cpu_us_per_task_throughput_phase=cpu_max.submitter,
        submitter_cpu_us_per_task_overhead_phase=cpu_half.submitter,
        cpu_busy_share_overhead_phase=cpu_half.busy_share,
        submitter_fsyncs=submitter_fsyncs,
    )


@contextlib.contextmanager
def _bench_store(store: str, durability: str, tmp: Path) -> Iterator[str]:
    """The URL of the run's store: a SQLite file in ``tmp``, or a schema of its own
    in the PostgreSQL database ``store`` names, created empty and dropped with
    everything in it when the run ends, however it ends: the bench's tasks never mix
    with the database's own, and nothing is left behind."""
    if store == "sqlite":
        yield f"sqlite:///{tmp / 'bench.db'}?durability={durability}"
        return
    import psycopg  # here, not at the top: SQLite runs need not import it

    schema = f"fleetops_bench_{uuid.uuid4().hex[:12]}"
    try:
        try:
            with psycopg.connect(store, autocommit=True, connect_timeout=5) as admin:
                admin.execute(f"CREATE SCHEMA {schema}")  # a name made here, not input
        except psycopg.Error:  # not made: nothing to drop
            raise
        except BaseException:  # made before an interrupt reached it, maybe: dropped
            _drop_schema(store, schema)
            raise
    except psycopg.errors.InsufficientPrivilege as exc:
        raise StoreUnavailable(
            f"cannot create the bench's schema in the PostgreSQL store at {redact(store)}: "
            f"{_first_line(exc)}; the bench runs in a schema of its own, dropped at the "
            "end: grant its user CREATE on the database, or name a user who has it"
        ) from exc
    except psycopg.Error as exc:
        raise StoreUnavailable(
            f"cannot connect to the PostgreSQL store at {redact(store)}: {_first_line(exc)}"
        ) from exc
    try:
        yield in_schema(store, schema)
    finally:
        _drop_schema(store, schema)


def in_schema(url: str, schema: str) -> str:
    """The PostgreSQL ``url`` with ``search_path`` set to ``schema`` alone, after
    whatever ``options`` it gives the server (the last setting wins), its other
    parameters kept as they are written."""
    # split by hand: urlsplit and urlunsplit drop the empty host of a Unix-socket URL
    # (postgresql:///db becomes postgresql:/db, which libpq cannot read)
    base, _, query = url.partition("?")
    # with no options in the URL, libpq would have taken the environment's
    given, kept = os.environ.get("PGOPTIONS", ""), []
    for pair in filter(None, query.split("&")):
        key, _, value = pair.partition("=")
        if unquote(key) == "options":
            given = unquote(value)
        else:
            kept.append(pair)
    options = f"{given} -c search_path={schema}".strip()
    kept.append("options=" + quote(options, safe=""))
    return f"{base}?{'&'.join(kept)}"


def _drop_schema(url: str, schema: str) -> None:
    """Drop the run's ``schema``; if it cannot, say so, and how to drop it by hand."""
    import psycopg

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as admin:
            # a worker still in a transaction would make the drop wait for its locks
            admin.execute("SET lock_timeout = '30s'")
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    except BaseException as exc:  # a second Ctrl-C too: say what is left, then stop
        why = _first_line(exc) if isinstance(exc, psycopg.Error) else type(exc).__name__
        print(
            f"bench: could not drop its schema {schema} in {redact(url)} "
            f"({why}); drop it with: DROP SCHEMA IF EXISTS {schema} CASCADE",
            file=sys.stderr,
        )
        if not isinstance(exc, psycopg.Error):
            raise


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [repr(exc)])[0]


def _sleep_parts(
    done: Sequence[TaskRecord], work_s: float
) -> tuple[list[float], list[float], list[float]]:
    """Of the sleep agent's finished tasks, in ms: how late each sleep ended, how
    long after its claim each handler began, and how long after its handler
    returned each completion was stamped."""
    late: list[float] = []
    starts: list[float] = []
    completions: list[float] = []
    for record in done:
        told = json.loads(record.result or "null")
        if not isinstance(told, dict) or record.started_at is None:
            continue
        began, slept = float(told["began"]), float(told["slept"])
        late.append((slept - work_s) * 1000)
        starts.append((began - record.started_at) * 1000)
        completions.append(((record.finished_at or 0.0) - began - slept) * 1000)
    return late, starts, completions


@dataclass(frozen=True, slots=True)
class _PhaseCpu:
    workers: float | None
    submitter: float | None
    busy_share: float | None


class _CpuMeter:
    """CPU time of the bench's processes over one phase: the supervisor's workers
    (read from /proc, Linux only) and this process (the submitter and supervisor)."""

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor
        self._pids = [h.pid for h in supervisor.live_workers()]
        self._workers = process_cpu_seconds(self._pids)
        self._own = time.process_time()
        self._wall = time.monotonic()

    def phase(self, tasks: int) -> _PhaseCpu:
        """CPU per task since this meter was made, in microseconds."""
        own = time.process_time() - self._own
        wall = time.monotonic() - self._wall
        pids = [h.pid for h in self._supervisor.live_workers()]
        now = process_cpu_seconds(pids) if pids == self._pids else None
        workers = None if now is None or self._workers is None else now - self._workers
        per = 1e6 / max(tasks, 1)
        busy = None
        if workers is not None and wall > 0:
            busy = round((workers + own) / (wall * (os.cpu_count() or 1)), 3)
        return _PhaseCpu(
            workers=None if workers is None else round(workers * per, 1),
            submitter=round(own * per, 1),
            busy_share=busy,
        )


def process_cpu_seconds(pids: Sequence[int]) -> float | None:
    """CPU seconds used so far by the processes ``pids``, all their threads, from
    Linux's /proc (each thread's schedstat, in nanoseconds); None where there is no
    /proc, or a process is gone."""
    total = 0
    for pid in pids:
        try:
            threads = os.listdir(f"/proc/{pid}/task")
        except OSError:
            return None
        for tid in threads:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat", encoding="ascii") as f:
                    total += int(f.read().split()[0])  # time on a CPU, in ns
            except (OSError, ValueError, IndexError):  # a thread that just ended
                continue
    return total / 1e9


#: The numbers a run of several rounds reports the range of, beside their medians.
RANGED = ("throughput_tps", "overhead_p50_ms", "overhead_p99_ms")
#: What rounds add up (the rest of the numbers are medians over the rounds).
SUMMED = ("worker_failures", "elapsed_s")


def summarize_rounds(results: Sequence[QueueBenchResult]) -> dict[str, Any]:
    """One report for rounds of the same benchmark: the median of each number over
    the rounds, the sums of :data:`SUMMED` and of counts by kind (``submitter_fsyncs``),
    the [lowest, highest] of :data:`RANGED` in ``ranges``, and ``rounds``. On a
    machine whose speed drifts from one minute to the next, one run's median says
    little; the median of five says more, and the ranges say how much to trust it."""
    if not results:
        raise ValueError("no rounds to summarize")
    rows = [r.as_dict() for r in results]
    report: dict[str, Any] = {}
    for key, first in rows[0].items():
        values = [row[key] for row in rows]
        if key in SUMMED:
            report[key] = round(sum(values), 2)
        elif any(isinstance(v, dict) for v in values):  # counts by kind: added up
            counts: Counter[str] = Counter()
            for value in values:
                counts.update(value or {})
            report[key] = dict(counts)
        elif first is None or (isinstance(first, int | float) and not isinstance(first, bool)):
            numbers = [v for v in values if v is not None]
            report[key] = round(statistics.median(numbers), 3) if numbers else None
        else:
            report[key] = first
    report["rounds"] = len(rows)
    report["ranges"] = {
        key: [min(vals), max(vals)]
        for key in RANGED
        if (vals := [row[key] for row in rows if row[key] is not None])
    }
    return report


def _keep_logs(logs: Path, failures: list[SupervisorEvent]) -> None:
    """Copy the run's worker logs out of its temporary directory, and say where, so
    that a worker's failure in a benchmark can be looked into."""
    kept = Path.cwd() / logs.parent.name
    shutil.copytree(logs, kept, dirs_exist_ok=True)
    for event in failures:
        print(
            f"bench: worker {event.worker} failed ({event.data.get('reason', '?')}); "
            f"its log is in {kept}",
            file=sys.stderr,
        )


def _last_line(log: Path) -> str:
    """The last line of a worker's log that says something (its error, mostly)."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    said = [line.strip() for line in lines if line.strip()]
    return said[-1][:300] if said else ""


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


async def _submit_all(
    client: QueueClient, cluster: str, agent: str, payload: str, n: int
) -> list[int]:
    ids: list[int] = []
    for start in range(0, n, 1000):
        batch = [NewTask(cluster, agent, payload) for _ in range(min(1000, n - start))]
        ids.extend(s.id for s in await client.submit_many(batch))
    return ids


async def _submit_paced(
    client: QueueClient,
    cluster: str,
    agent: str,
    payload: str,
    n: int,
    rate: float,
    clock: SystemClock,
    open_loop: bool = False,
) -> tuple[list[int], list[float]]:
    """Submit ``n`` tasks at ``rate`` a second, those due in the same millisecond
    together; answer their ids and how long each submit took to be acknowledged, in
    seconds (one entry a submit).

    Closed-loop (the default): the submitter waits for each submit's
    acknowledgement, sleeps a millisecond, and submits what has come due meanwhile.
    When acknowledgements are slow, submits are fewer and larger. On a 2-core machine
    at half the maximum, it submitted every 1.5 ms at ``normal`` and every 2.6-3.3 ms
    at ``full`` (each submit waits for an fsync there). A task that came due while a
    submit waited goes with the next one, and its wait before that is not counted
    (coordinated omission).

    Open-loop (``open_loop``): one submit each millisecond on a fixed schedule, each
    waiting for its own acknowledgement only, as independent producers would. Every
    task's latency counts from within a millisecond of when it came due. The store
    then gets a transaction for every millisecond, however slow acknowledgements are.
    """
    tick = 0.001
    begin = clock.monotonic()

    def come_due(sent: int) -> list[NewTask]:
        """The tasks that have come due since the first ``sent``."""
        due = min(n, int((clock.monotonic() - begin) * rate) + 1)
        return [NewTask(cluster, agent, payload) for _ in range(due - sent)]

    acks: list[float] = []

    async def submit(batch: list[NewTask]) -> list[Submitted]:
        began = clock.monotonic()
        submitted = await client.submit_many(batch)
        acks.append(clock.monotonic() - began)
        return submitted

    if not open_loop:
        ids: list[int] = []
        while len(ids) < n:
            if batch := come_due(len(ids)):
                ids.extend(s.id for s in await submit(batch))
            await asyncio.sleep(tick)
        return ids, acks
    producers: list[asyncio.Task[list[Submitted]]] = []
    sent = ticks = 0
    try:
        async with asyncio.TaskGroup() as group:
            while sent < n:
                if batch := come_due(sent):
                    producers.append(group.create_task(submit(batch)))
                    sent += len(batch)
                ticks += 1
                await asyncio.sleep(max(0.0, begin + ticks * tick - clock.monotonic()))
    except ExceptionGroup as failed:  # the first failed submit, as the closed loop raises it
        raise failed.exceptions[0] from None
    return [s.id for p in producers for s in p.result()], acks


async def _wait_terminal(
    client: QueueClient,
    cluster: str,
    total: int,
    phase: str,
    progress: Callable[[str, int, int], None] | None,
    broken: list[SupervisorEvent],
) -> None:
    while True:
        _check_workers(broken)
        # the cluster's unfinished tasks, an index range: counting every task ever
        # stored (count_tasks) took 20 ms of the bench's CPU per look at 140,000 tasks
        done = total - await client.run(client.store.open_count, cluster)
        if progress is not None:
            progress(phase, done, total)
        if done >= total:
            return
        await asyncio.sleep(0.05)


async def _wait_ready(supervisor: Supervisor, broken: list[SupervisorEvent]) -> None:
    """Wait until every worker has started, unless they keep failing."""
    while not supervisor.ready.is_set():
        _check_workers(broken)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(supervisor.ready.wait(), 0.05)


def _check_workers(broken: list[SupervisorEvent]) -> None:
    if broken:
        event = broken[0]
        raise BenchAborted(
            f"the bench's workers keep failing ({event.data.get('restarts', '?')} restarts "
            f"within {event.data.get('period_s', '?')} s), so the tasks left would never "
            "run (where their logs are kept is printed above)"
        )


async def _last_finished(client: QueueClient, ids: list[int]) -> float:
    records = await client.run(client.store.get_tasks, ids)
    return max(r.finished_at or 0.0 for r in records)
