"""A worker: many agent instances as asyncio tasks under one concurrency limit.

The worker claims tasks in batches with a lease, runs each under its agent, and
reports the outcome through the queue client's group commit. A heartbeat loop
extends every lease it holds in one statement and cancels handlers whose lease was
taken away. Shutdown runs in a fixed order: stop claiming (a claim in flight
finishes, and its tasks are drained with the rest), drain within the grace, abort
what is left, release those leases, unregister.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import math
import os
import random
import socket
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from opentelemetry.util.types import AttributeValue

from .._clock import Clock
from .._exceptions import LeaseLost, StoreError, StoreUnavailable, SyncFailed, TaskFailed
from .._json import dumps_strict
from ..queue import QueueClient
from ..queue._bell import Doorbell
from ..queue._client import (
    MAX_VALUE_BYTES,
    OUTCOME_SYNC_DELAY_SECONDS,
    ChangeWatcher,
    check_outcome_sync_delay,
    size_over_limit,
)
from ..store import (
    TERMINAL_STATES,
    ClaimedTask,
    Complete,
    EffectBegin,
    EffectEnd,
    Fail,
    OpResult,
    Release,
    SubmitChild,
)
from ..store._sql import SUSPECT_REDELIVERIES
from ..telemetry import MetricSet, catalog, get_logger
from ..telemetry._lean import LeanTracer
from ..telemetry._metricset import CounterSeries, NullMetricSet
from ..telemetry._tracing import (
    TRACEPARENT,
    context_from_headers,
    make_tracer,
    store_rows,
    task_context,
)
from ._agent import AgentSpec
from ._loop import check_event_loop

if TYPE_CHECKING:
    from ..providers import CallRecord, Gateway
from ._context import SENT_AT, SOURCE_CLUSTER, Context, EffectNotJournaled, TaskInfo

log = get_logger("fleetops.worker")


DEFAULT_CONCURRENCY = 100
DEFAULT_LEASE_SECONDS = 10.0
DEFAULT_HEARTBEAT_INTERVAL = 0.2
DEFAULT_TRACES_PER_SECOND = 200.0
#: Idle this long, a worker on SQLite looks for commits every ``poll_max`` instead of
#: every 10 ms. Work queued on this host rings its doorbell, and the supervisor rings
#: it for the tasks of a worker it replaced, so what waits for the look is work that
#: rang no bell (a task released by a worker shutting down, a retry that came due):
#: up to 50 ms by default. The looks were most of an idle worker's CPU: 3.7-4.5 % of
#: a core before, 2.0-2.9 % after, measured on a 2-core machine.
LONG_IDLE_SECONDS = 10.0
#: A failed attempt's error (its exception's type and message) is kept up to this many
#: characters, in the task, its attempts and its dead-letter reason; the traceback,
#: in the task's span and log record, up to MAX_TRACEBACK_CHARS (its end: the
#: innermost frames).
MAX_ERROR_CHARS = 4096
MAX_TRACEBACK_CHARS = 16384
#: While the store cannot be reached (a PostgreSQL server restarting or failing over,
#: a SQLite file locked past its timeout), a worker's claims, its tasks' outcomes and
#: their contexts' writes (effect journal entries, child tasks) are tried again after
#: these many seconds, doubling from the first to the last (see Worker.write_fenced).
#: It keeps its handlers and their leases meanwhile; the heartbeat loop gives up (and
#: stops the worker) once the store has been gone for the length of a lease. The
#: heartbeat loop also probes the store every heartbeat interval meanwhile, and the
#: first beat it answers ends every such wait at once (see Worker._store_answered):
#: work resumes within a beat of the store's return, not up to a pause later.
STORE_RETRY_SECONDS = (0.05, 1.0)

#: How long after a claim found no suspect the next may look (see Worker._suspects_wanted).
SUSPECT_LOOK_SECONDS = 1.0
#: The exit code of a worker that stopped to be recycled (see WorkerSettings.max_memory_mb).
RECYCLE_EXIT_CODE = 4
#: What a warm spare writes on its stdout once its imports are done, before it waits
#: for a worker's config (a worker's own beats on stdout are b".").
SPARE_READY = b"R"
_PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def resident_mib() -> float | None:
    """This process's resident memory in MiB (None where /proc cannot say)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_MIB
    except (OSError, IndexError, ValueError):
        return None


#: How often a worker started by a supervisor looks whether the supervisor still lives
#: (on a thread of its own, so that a handler blocking the event loop cannot stop it).
PARENT_CHECK_SECONDS = 0.2
#: An orphaned worker whose loop has not stopped this long after its shutdown grace
#: exits the process (code ORPHAN_EXIT_CODE).
ORPHAN_EXIT_MARGIN_SECONDS = 2.0
ORPHAN_EXIT_CODE = 70


def cut_text(text: str, most: int, *, tail: bool = False) -> str:
    """``text`` if it has at most ``most`` characters; else its start (its end if
    ``tail``) and how much was cut. A NUL character (PostgreSQL's text cannot hold
    one) or a lone surrogate (no UTF-8 for it) in an agent's error is written as an
    escape, so that the store can keep the error."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= most:
        return text
    cut = len(text) - most
    if tail:
        return f"[{cut:,} characters cut]\n" + text[-most:]
    return text[:most] + f" [{cut:,} characters cut]"


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """How a worker claims, leases, polls and shuts down."""

    concurrency: int = DEFAULT_CONCURRENCY
    claim_batch: int = 200
    lease_seconds: float = DEFAULT_LEASE_SECONDS
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    poll_min: float = 0.001
    poll_max: float = 0.05
    reap_interval: float = 1.0
    shutdown_grace: float = 10.0
    #: A worker whose supervisor died (a control plane killed) finishes the tasks it
    #: runs for up to this long before it gives them back: their leases are its own,
    #: heartbeated, and an effect cut off halfway would run again. It claims nothing
    #: more. Its event loop blocked past ``shutdown_grace`` ends it sooner.
    orphan_grace: float = 300.0
    #: How often the worker writes its metrics snapshot to the store.
    telemetry_interval: float = 2.0
    #: Metrics and traces on (off only to measure what they cost).
    telemetry: bool = True
    #: Also beat on stdout, for a local supervisor: liveness that needs no store.
    pipe_heartbeat: bool = False
    #: The cluster's quota of concurrent tasks across all its workers (None: no quota).
    max_cluster_running: int | None = None
    #: New traces this worker records a second (None: every task's); a task of a
    #: recorded trace is always recorded (see telemetry._lean.LeanTracer).
    traces_per_second: float | None = DEFAULT_TRACES_PER_SECOND
    #: The worker process's event loop: 'auto' (uvloop where installed), 'uvloop' or
    #: 'asyncio' (see runtime._loop).
    event_loop: str = "auto"
    #: At durability full, the fsyncs that acknowledge its tasks' outcomes start at most
    #: this often, each covering every outcome committed before it (0: one per group
    #: commit; see QueueClient's outcome_sync_delay).
    outcome_sync_delay: float = OUTCOME_SYNC_DELAY_SECONDS
    #: A worker whose resident memory passes this many MiB is recycled: it stops
    #: claiming, drains, and exits with RECYCLE_EXIT_CODE; its supervisor starts a new
    #: one at once, not counted as a failure (None: no limit). Agents that leak (a
    #: cache that only grows, a library's) cost a restart, not the machine's memory.
    max_memory_mb: float | None = None

    def __post_init__(self) -> None:
        check_event_loop(self.event_loop)
        check_outcome_sync_delay(self.outcome_sync_delay)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


#: The context every task's span is set in: the claimer's own carries nothing a
#: task should inherit.
_EMPTY_CONTEXT = otel_context.Context()


def _task_attributes(claimed: ClaimedTask) -> dict[str, AttributeValue]:
    """The attributes of a task's span (the GenAI conventions' ``invoke_agent``)."""
    return {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.agent.name": claimed.agent,
        "fleetops.task.id": claimed.id,
        "fleetops.cluster": claimed.queue,
        "fleetops.attempt": claimed.attempt,
    }


def _headers_of(claimed: ClaimedTask) -> tuple[dict[str, Any], str | None]:
    """The task's headers, and why they cannot be read (None when they can): a task
    stored with bad headers is failed, not left to stop the worker."""
    if claimed.headers == "{}":  # most tasks: skip the parse (a dict of their own all the same)
        return {}, None
    try:
        headers = json.loads(claimed.headers)
    except (ValueError, RecursionError) as exc:
        return {}, f"headers is not JSON: {exc}"
    if not isinstance(headers, dict):
        return {}, f"headers is not JSON of an object: {claimed.headers[:80]!r}"
    return headers, None


class _Lane:
    """What every task of one (cluster, agent) shares, looked up once: its span name
    and the metric series each of its tasks records into."""

    __slots__ = ("span_name", "queue_wait", "duration", "finished", "_metrics", "_key")

    def __init__(self, metrics: MetricSet, cluster: str, agent: str) -> None:
        self.span_name = "invoke_agent " + agent
        self._metrics = metrics
        self._key = (cluster, agent)
        self.queue_wait = metrics.histogram_series(catalog.QUEUE_WAIT, self._key)
        self.duration = metrics.histogram_series(catalog.TASK_DURATION, self._key)
        #: finished-task counters by outcome
        self.finished: dict[str, CounterSeries] = {}

    def count_finished(self, outcome: str) -> None:
        counter = self.finished.get(outcome)
        if counter is None:
            counter = self.finished[outcome] = self._metrics.counter(
                catalog.TASKS_FINISHED, (*self._key, outcome)
            )
        counter.inc()


@dataclass(slots=True)
class _Running:
    task: asyncio.Task[None]
    epoch: int
    claimed_at: float
    #: the handler's last write (its Complete or Fail) is on its way to the store
    settling: bool = False


class Worker:
    """Runs the agents of one cluster against a store."""

    def __init__(
        self,
        client: QueueClient,
        *,
        worker_id: str,
        cluster: str,
        agents: Mapping[str, AgentSpec],
        settings: WorkerSettings | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        parent_pid: int | None = None,
        gateway: Gateway | None = None,
        routes: Sequence[str] | None = None,
        otlp_endpoint: str | None = None,
        pricing: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        self.client = client
        self.worker_id = worker_id
        self.cluster = cluster
        self.agents = dict(agents)
        self.settings = settings or WorkerSettings()
        self.clock: Clock = clock or client.clock
        self._rng = rng or random.Random()
        self._parent_pid = parent_pid
        self._gateway = gateway
        #: Clusters this worker's agents may send to (None: any); its own is always allowed.
        self.routes = None if routes is None else frozenset([*routes, cluster])
        self._running: dict[int, _Running] = {}
        #: why a handler was cancelled, by (task id, epoch): the same task may run
        #: here again under a newer lease while its stale handler winds down
        self._cancel_reasons: dict[tuple[int, int], str] = {}
        #: the suspect this worker runs, as (task id, epoch): it runs one at a time
        #: (see SUSPECT_REDELIVERIES in fleetops.store._sql)
        self._suspect: tuple[int, int] | None = None
        #: when a claim last looked for a suspect and found none
        self._suspects_looked_at = -math.inf
        #: it stopped because its memory passed settings.max_memory_mb
        self.recycled = False
        self._slot_free = asyncio.Event()
        self._work_hint = asyncio.Event()
        #: the idle claimer's wait, ended early by wake_claimer (see _wait_hint)
        self._hint_waiter: asyncio.Future[None] | None = None
        self._stopping = asyncio.Event()
        #: the supervisor is gone: the drain may take orphan_grace (see WorkerSettings)
        self._orphan = False
        #: when the event loop last ran a tick the parent watcher asked for
        self._loop_seen = 0.0
        #: done when the store answers again, for writes waiting to try again (see
        #: _store_pause); the claim loop is waiting to claim again while claims_failing
        self._store_back: asyncio.Future[None] | None = None
        self._claims_failing = False
        self._waiters: dict[int, list[asyncio.Future[Any]]] = {}
        self._waiter_hint = asyncio.Event()
        self._waiter_poll = 0.01
        #: tasks waiting for a child's result, by id: how many children each awaits
        self._waiting: dict[int, int] = {}
        self._telemetry_client: QueueClient | None = None
        self._handlers: asyncio.TaskGroup | None = None
        self.doorbell: Doorbell | None = None
        self.processed = 0
        self.dead = False
        self.metrics = MetricSet() if self.settings.telemetry else NullMetricSet()
        self._lanes: dict[tuple[str, str], _Lane] = {}
        # agent_utilization is time-weighted: the integral of busy slots over time,
        # advanced whenever the number of running tasks changes
        self._busy_slot_seconds = 0.0
        self._busy_since = self.clock.monotonic()
        self._busy_count = 0
        self._utilization_mark = (self._busy_since, 0.0)
        #: $ per 1,000 (input, output) tokens, by provider name, for the cost metric.
        self._pricing = dict(pricing or {})
        tracer, self.spans, self._tracer_provider = make_tracer(
            "fleetops-worker",
            {"fleetops.cluster": cluster, "fleetops.worker": worker_id},
            otlp_endpoint=otlp_endpoint,
            roots_per_second=self.settings.traces_per_second,
        )
        self.tracer: trace.Tracer = tracer if self.settings.telemetry else trace.NoOpTracer()
        self._outcomes: dict[tuple[str, ...], collections.deque[bool]] = {}
        if gateway is not None:
            gateway.stats.subscribe(self._record_llm_call)

    @property
    def inflight(self) -> int:
        return len(self._running)

    def gateway(self) -> Gateway:
        """The LLM gateway; a seeded simulated provider when none was configured."""
        if self._gateway is None:
            from ..providers import Gateway, SimulatedProvider

            self._gateway = Gateway([SimulatedProvider(clock=self.clock)], clock=self.clock)
            self._gateway.stats.subscribe(self._record_llm_call)
        return self._gateway

    def _record_llm_call(self, call: CallRecord) -> None:
        model = call.request_model or call.response_model or ""
        labels = (call.operation, call.provider, model, call.cluster)
        m = self.metrics
        m.observe(catalog.GENAI_OPERATION_DURATION, (*labels, call.error_type or ""), call.duration)
        if call.outcome == "ok":
            m.observe(catalog.GENAI_TOKEN_USAGE, (*labels, "input"), call.input_tokens)
            m.observe(catalog.GENAI_TOKEN_USAGE, (*labels, "output"), call.output_tokens)
            price_in, price_out = self._pricing.get(call.provider, (0.0, 0.0))
            cost = (call.input_tokens * price_in + call.output_tokens * price_out) / 1000
            m.inc(catalog.LLM_COST, (call.cluster, call.provider, model), cost)

    def outcome_rate(self, key: tuple[str, ...], ok: bool, window: int = 100) -> float:
        """Record one outcome under ``key``; answer the success share of the last ``window``."""
        outcomes = self._outcomes.get(key)
        if outcomes is None:
            outcomes = self._outcomes[key] = collections.deque(maxlen=window)
        outcomes.append(ok)
        return sum(outcomes) / len(outcomes)

    def wake_claimer(self) -> None:
        self._work_hint.set()
        if self._hint_waiter is not None:
            _resolve(self._hint_waiter)

    def note_progress(self, task_id: int) -> None:
        """Progress is shown by the heartbeat itself; kept for the Context API."""

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then shut down in order."""
        s = self.settings
        # clients that queue work for this cluster ring this bell (see queue._bell)
        doorbell = Doorbell()
        await self.client.run(
            self.client.store.register_worker,
            self.worker_id,
            self.cluster,
            os.getpid(),
            socket.gethostname(),
            s.concurrency,
            self.clock.now(),
            doorbell.address,
        )
        doorbell.listen(self.wake_claimer)
        self.doorbell = doorbell
        log.info(
            "worker.started",
            worker=self.worker_id,
            cluster=self.cluster,
            concurrency=s.concurrency,
            agents=sorted(self.agents),
        )
        # telemetry (metric snapshots, spans) is written through a connection and thread
        # of its own, so that a bulk span insert never delays a claim or a completion
        ended = threading.Event()
        if self._parent_pid is not None:
            threading.Thread(
                target=self._watch_parent,
                args=(asyncio.get_running_loop(), ended),
                name="fleetops-parent-watch",
                daemon=True,
            ).start()
        try:
            async with QueueClient(self.client.url, clock=self.clock) as telemetry:
                self._telemetry_client = telemetry
                await self._run(stop)
        finally:
            ended.set()
            doorbell.close()
        log.info("worker.stopped", worker=self.worker_id, processed=self.processed)

    def _orphaned(self) -> bool:
        """The supervisor that started this worker is gone (it was killed)."""
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    def _stop_orphaned(self) -> None:
        if not self._stopping.is_set():
            self._orphan = True
            log.error(
                "worker.orphaned",
                worker=self.worker_id,
                parent=self._parent_pid,
                inflight=len(self._running),
                finishing_within_s=self._orphan_grace(),
            )
            self._stopping.set()
            self.wake_claimer()

    def _orphan_grace(self) -> float:
        return max(self.settings.shutdown_grace, self.settings.orphan_grace)

    def _loop_tick(self) -> None:
        self._loop_seen = time.monotonic()

    def _watch_parent(self, loop: asyncio.AbstractEventLoop, ended: threading.Event) -> None:
        """A thread: once the supervisor is gone, stop the worker: it claims nothing
        more, finishes the tasks it runs (for up to ``orphan_grace``), and exits. If
        its event loop stops running (a handler blocks it) for longer than its
        shutdown grace, or the tasks outlast ``orphan_grace``, it exits the process.
        An orphan otherwise lived on as long as the handler blocked, claiming again
        once it was free; one that gave its tasks back after the shutdown grace cut
        off effects halfway, to run them again elsewhere."""
        while not ended.wait(PARENT_CHECK_SECONDS):
            if self._orphaned():
                break
        else:
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: it ended
            loop.call_soon_threadsafe(self._stop_orphaned)
        began = self._loop_seen = time.monotonic()  # real time: the process's liveness
        stalled_after = self.settings.shutdown_grace + ORPHAN_EXIT_MARGIN_SECONDS
        while not ended.wait(PARENT_CHECK_SECONDS):
            now = time.monotonic()
            if now - self._loop_seen > stalled_after:
                why = "the event loop did not run for its shutdown grace"
            elif now - began > self._orphan_grace() + stalled_after:  # room to give back
                why = "its tasks outlasted the orphan grace"
            else:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._loop_tick)
                continue
            log.error(
                "worker.orphaned_exit",
                worker=self.worker_id,
                parent=self._parent_pid,
                reason=f"{why}; its leases expire and its tasks are redelivered",
            )
            logging.shutdown()
            os._exit(ORPHAN_EXIT_CODE)

    async def _run(self, stop: asyncio.Event) -> None:
        s = self.settings
        async with asyncio.TaskGroup() as background:
            loops = [
                background.create_task(self._heartbeat_loop(), name="heartbeat"),
                background.create_task(self._reap_loop(), name="reaper"),
                background.create_task(self._waiter_loop(), name="child-results"),
                background.create_task(self._telemetry_loop(), name="telemetry"),
            ]
            if s.pipe_heartbeat:
                loops.append(background.create_task(self._pipe_beat_loop(), name="pipe-beat"))
            async with asyncio.TaskGroup() as handlers:
                self._handlers = handlers
                claimer = handlers.create_task(self._claim_loop(), name="claimer")
                stopper = handlers.create_task(stop.wait(), name="stop-signal")
                dead = handlers.create_task(self._stopping.wait(), name="declared-dead")
                await asyncio.wait([claimer, stopper, dead], return_when=asyncio.FIRST_COMPLETED)
                self._stopping.set()
                stopper.cancel()
                # claiming and draining share one grace: the supervisor waits that long
                # (an orphan has no supervisor waiting: it finishes what it runs)
                grace = self._orphan_grace() if self._orphan else self.settings.shutdown_grace
                grace_ends = self.clock.monotonic() + grace
                await self._stop_claiming(claimer, grace_ends)
                # an orphan asked to stop (fleetops down) drains as a shutdown does
                await self._drain(grace_ends, hurry=stop if self._orphan else None)
            for loop_task in loops:
                loop_task.cancel()
        await self._telemetry_guarded(self.flush_telemetry)
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        if not self.dead:
            await self.client.run(
                self.client.store.set_worker_state, self.worker_id, "stopped", self.clock.now()
            )

    async def _stop_claiming(self, claimer: asyncio.Task[None], grace_ends: float) -> None:
        """Let the claim loop see the stop and end, before ``grace_ends``.

        It is not cancelled at once: a claim may be committing (on the store thread,
        at durability ``full``), and cancelling it there would drop the tasks it has
        just leased. They would stay leased to this stopped worker until their
        leases expired, then be redelivered. Let alone, the claim returns and its
        tasks are drained or released with the rest.
        """
        self.wake_claimer()
        self._slot_free.set()
        await asyncio.wait([claimer], timeout=self._until(grace_ends))
        claimer.cancel()  # still waiting for the write lock: it has changed nothing

    def _until(self, moment: float) -> float:
        """Seconds from now to ``moment`` on the monotonic clock (0 once it passed)."""
        return max(0.0, moment - self.clock.monotonic())

    async def _drain(self, grace_ends: float, hurry: asyncio.Event | None = None) -> None:
        """Wait for the tasks running to end, until ``grace_ends``; once ``hurry`` is
        set, until the shutdown grace from then at the latest. Then cancel the rest."""
        if self._running and not self.dead:
            log.info("worker.draining", worker=self.worker_id, inflight=len(self._running))
            pending = [r.task for r in self._running.values()]
            # timed on the loop's own clock, as asyncio.wait times out: a virtual clock
            # that does not move must not make the drain endless
            loop = asyncio.get_running_loop()
            ends = loop.time() + self._until(grace_ends)
            everything = asyncio.ensure_future(asyncio.wait(pending))
            hurried = asyncio.ensure_future(hurry.wait()) if hurry is not None else None
            try:
                while not everything.done() and (wait := ends - loop.time()) > 0:
                    watched = [everything] if hurried is None else [everything, hurried]
                    await asyncio.wait(watched, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                    if hurried is not None and hurried.done():
                        ends = min(ends, loop.time() + self.settings.shutdown_grace)
                        hurried = None
            finally:
                for waiter in (everything, hurried):
                    if waiter is not None:
                        waiter.cancel()
        for task_id, running in list(self._running.items()):
            self._cancel_reasons[task_id, running.epoch] = "dead" if self.dead else "shutdown"
            running.task.cancel()

    # --- claiming -------------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        s = self.settings
        queues = [self.cluster]
        agents = sorted(self.agents)
        assert self._handlers is not None
        watcher = self.client.change_watcher()
        idle_since: float | None = None
        poll = s.poll_min
        backoff = STORE_RETRY_SECONDS[0]
        in_doubt = False
        try:
            while not self._stopping.is_set():
                if self._orphaned():  # no more work for a worker nobody supervises
                    self._stop_orphaned()
                    break
                # a task waiting for a child's result gives its slot up meanwhile, so
                # that a fan-out inside one cluster cannot starve its own children
                free = s.concurrency - len(self._running) + len(self._waiting)
                if free <= 0:
                    self._slot_free.clear()
                    await self._slot_free.wait()
                    continue
                # a bell rung from here on is for work this claim may not see
                self._work_hint.clear()
                # All the ready work it has room for, not a share of it: splitting each
                # batch with another idle worker of the cluster (half each, found by a
                # count of the ready tasks) started the tasks sooner (claim -> handler
                # 1.00 -> 0.77 ms at the median) but the second claim waited for the
                # first one's write lock (submit -> claim 0.55 -> 0.79 ms) and the CPU a
                # task rose 14 %: the median overhead 1.06 times as high (6 pairs at a
                # fixed 15,000 tasks/s, fleetops bench queue on a 2-core VM).
                limit = min(free, s.claim_batch)
                suspects = self._suspects_wanted()
                try:
                    if in_doubt:
                        await self._release_unknown_leases()
                        in_doubt = False
                    claimed = await self.client.claim(
                        self.worker_id,
                        queues,
                        limit,
                        s.lease_seconds,
                        agents,
                        s.max_cluster_running,
                        suspects,
                    )
                except (StoreUnavailable, SyncFailed) as exc:
                    # A claim that failed in its COMMIT may have leased tasks all
                    # the same, which this worker would hold (its heartbeats extending
                    # them) without running them: they are given back first thing
                    # once the store answers again. (SyncFailed: a store not repaired
                    # after a failed fsync refused the claim before it began, as a
                    # claim commits without an fsync; the next try repairs it.)
                    in_doubt = True
                    log.warning("claim.failed", worker=self.worker_id, error=str(exc))
                    self._claims_failing = True  # a beat answered wakes this wait
                    await self._wait_hint(backoff)
                    backoff = min(backoff * 2, STORE_RETRY_SECONDS[1])
                    continue
                self._claims_failing = False
                backoff = STORE_RETRY_SECONDS[0]
                now = self.clock.monotonic()
                for task in claimed:
                    stale = self._running.get(task.id)
                    if stale is not None:
                        # this worker's own lease on it lapsed (its loop was blocked
                        # past the lease, say) and it claimed the task anew: the old
                        # handler is a stale holder, stopped like any other
                        self._cancel_reasons[task.id, stale.epoch] = "lease_lost"
                        stale.task.cancel()
                        log.warning(
                            "lease.revoked",
                            task_id=task.id,
                            epoch=stale.epoch,
                            worker=self.worker_id,
                            reason="claimed again under a newer lease",
                        )
                    if task.redeliveries >= SUSPECT_REDELIVERIES:
                        self._suspect = (task.id, task.epoch)
                    handler = self._handlers.create_task(
                        self._execute(task), name=f"task-{task.id}"
                    )
                    self._running[task.id] = _Running(handler, task.epoch, now)
                if suspects and self._suspect is None:  # none found: not again for a while
                    self._suspects_looked_at = now
                if claimed:
                    self._busy_changed()
                    idle_since, poll = None, s.poll_min
                    if len(claimed) == limit:
                        continue  # there may be more: look again at once
                    # the queue ran dry with this claim: a bell or a commit says when
                    # there is more (claiming again now would only find nothing)
                idle_since = idle_since if idle_since is not None else now
                await self._idle_wait(watcher, poll, now - idle_since)
                poll = min(poll * 2, s.poll_max)
        finally:
            if watcher is not None:
                watcher.close()

    async def _release_unknown_leases(self) -> None:
        """Give back every lease the store says this worker holds that it does not
        run (the claim loop calls this between claims, so no claim is in flight)."""
        held = await self.client.run(self.client.store.held_leases, self.worker_id)
        unknown = {t: e for t, e in held.items() if t not in self._running}
        # together, they go in one group commit
        await asyncio.gather(
            *(self.client.apply(Release(t, e, self.worker_id)) for t, e in unknown.items())
        )
        if unknown:
            log.warning(
                "lease.released",
                tasks=sorted(unknown)[:20],
                count=len(unknown),
                worker=self.worker_id,
                reason="claim in doubt",
            )
            self.wake_claimer()

    async def _idle_wait(self, watcher: ChangeWatcher | None, poll: float, idle: float) -> None:
        """Wait for a sign of new work: a local hint, another process's commit, or time.

        With a change watcher (SQLite) the wait checks for commits every millisecond
        while the worker has been idle for under a second, then every 10 ms, and from
        :data:`LONG_IDLE_SECONDS` on only every ``poll_max``; without one it backs off
        exponentially from ``poll_min`` to ``poll_max``. A bell rung since the last
        claim began ends the wait at once.
        """
        if watcher is None:
            await self._wait_hint(poll)
            return
        step = 0.001 if idle < 1.0 else 0.01 if idle < LONG_IDLE_SECONDS else self.settings.poll_max
        deadline = self.clock.monotonic() + self.settings.poll_max
        while not self._work_hint.is_set() and not self._stopping.is_set():
            await self._wait_hint(step)
            if watcher.changed() or self.clock.monotonic() >= deadline:
                return

    async def _wait_hint(self, seconds: float) -> None:
        """Wait until the work hint is set or ``seconds`` pass, whichever is first.

        A plain future and timer: this runs every millisecond while the worker is
        idle, and ``asyncio.timeout`` around ``Event.wait`` costs three times as much,
        most of it raising and catching the TimeoutError.
        """
        if self._work_hint.is_set():
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._hint_waiter = waiter
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._hint_waiter = None

    # --- running one task --------------------------------------------------------------------

    def _lane(self, claimed: ClaimedTask) -> _Lane:
        key = (claimed.queue, claimed.agent)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = _Lane(self.metrics, claimed.queue, claimed.agent)
        return lane

    async def _execute(self, claimed: ClaimedTask) -> None:
        started = self.clock.now()
        headers, malformed = _headers_of(claimed)
        lane = self._lane(claimed)
        self._record_start(claimed, started, headers, lane)
        outcome = "lease_lost"
        span: trace.Span
        tracer = self.tracer
        if isinstance(tracer, LeanTracer):  # the built-in store only: the quick way
            # the attributes are built only for a span that is recorded
            span = tracer.start_task_span(
                lane.span_name, headers.get(TRACEPARENT), partial(_task_attributes, claimed)
            )
        else:
            span = tracer.start_span(
                lane.span_name,
                context=context_from_headers(headers),
                attributes=_task_attributes(claimed),
            )
        # Set, never reset: the handler runs in an asyncio task of its own, whose
        # context (a copy made when the claimer created the task) ends with it.
        task_context.set({"task_id": claimed.id, "agent": claimed.agent, "cluster": claimed.queue})
        # the task's span is the current one while its handler runs (child spans and
        # traceparents of child tasks hang off it); its status is set below
        otel_context.attach(trace.set_span_in_context(span, _EMPTY_CONTEXT))
        try:
            outcome = await self._run_handler(claimed, started, headers, malformed)
        except asyncio.CancelledError:
            reason = self._cancel_reasons.pop((claimed.id, claimed.epoch), None)
            if reason == "shutdown":
                try:
                    await self.client.apply(
                        Release(claimed.id, claimed.epoch, self.worker_id, started)
                    )
                except StoreUnavailable as exc:  # its lease expires instead
                    log.warning(
                        "lease.not_released",
                        task_id=claimed.id,
                        worker=self.worker_id,
                        error=str(exc),
                    )
                    outcome = "lease_lost"
                else:
                    log.info("lease.released", task_id=claimed.id, worker=self.worker_id)
                    outcome = "released"
            elif reason is None:
                raise
        finally:
            if span.is_recording():
                span.set_attribute("fleetops.outcome", outcome)
                if outcome != "succeeded":
                    span.set_status(Status(StatusCode.ERROR, outcome))
                span.end()
            mine = self._running.get(claimed.id)
            if mine is not None and mine.epoch == claimed.epoch:  # not a newer lease's
                del self._running[claimed.id]
            self._busy_changed()
            self._cancel_reasons.pop((claimed.id, claimed.epoch), None)
            if self._suspect == (claimed.id, claimed.epoch):
                self._suspect = None
            self.processed += 1
            self._slot_free.set()
            lane.count_finished(outcome)
            lane.duration.observe(self.clock.now() - started)

    async def write_fenced(
        self, op: Complete | Fail | EffectBegin | EffectEnd | SubmitChild
    ) -> OpResult:
        """Write one of a task's fenced operations (its outcome; from its context, a
        child or an effect's journal); while the store cannot be reached, try again
        (see :data:`STORE_RETRY_SECONDS`) rather than throw a handler's work away, or
        run an effect that already happened again because its end was not journaled.

        Trying again is safe whether or not the failed try committed: the write is
        fenced by the lease's epoch, a child carries its idempotency key, and an
        effect's journal entries are written once. A Complete found refused after a
        failed try is looked up, and counts as done if that try did commit it. (An
        EffectBegin whose first try did commit finds its own entry on the next, and
        the effect is then told it may be a re-execution: the safe side.)"""
        delay = STORE_RETRY_SECONDS[0]
        doubted = False
        while True:
            try:
                result = await self.client.apply(op)
            except StoreUnavailable as exc:
                if self.dead:
                    raise
                doubted = True
                log.warning(
                    "store.write_retrying",
                    task_id=op.parent_id if isinstance(op, SubmitChild) else op.task_id,
                    write=type(op).__name__,
                    worker=self.worker_id,
                    error=str(exc),
                )
                await self._store_pause(delay)
                delay = min(delay * 2, STORE_RETRY_SECONDS[1])
                continue
            if doubted and not result.ok and isinstance(op, Complete):
                record = await self.client.run(self.client.store.get_task, op.task_id)
                if record is not None and record.state == "succeeded" and record.epoch == op.epoch:
                    return OpResult(True)
            return result

    async def _store_pause(self, seconds: float) -> None:
        """Wait ``seconds`` before trying the store again, or until it answers a beat
        (:meth:`_store_answered`), whichever is first."""
        back = self._store_back
        if back is None or back.done():
            back = self._store_back = asyncio.get_running_loop().create_future()
        pause = asyncio.ensure_future(self.clock.sleep(seconds))
        try:
            await asyncio.wait([pause, back], return_when=asyncio.FIRST_COMPLETED)
        finally:
            pause.cancel()

    def _store_answered(self) -> None:
        """The store answered: end the waits of whatever is waiting to try it again."""
        back = self._store_back
        if back is not None and not back.done():
            back.set_result(None)
        if self._claims_failing:
            self.wake_claimer()

    def _busy_changed(self) -> None:
        now = self.clock.monotonic()
        self._busy_slot_seconds += self._busy_count * (now - self._busy_since)
        self._busy_since = now
        self._busy_count = len(self._running)

    def _utilization(self) -> float:
        """The share of this worker's slots busy since the last call, time-weighted.

        Tasks waiting on children count as busy: they hold an agent instance even
        though they gave their claim slot up (see _claim_loop).
        """
        self._busy_changed()
        then, busy_then = self._utilization_mark
        now, busy = self._busy_since, self._busy_slot_seconds
        self._utilization_mark = (now, busy)
        if now <= then:
            return min(1.0, self._busy_count / max(1, self.settings.concurrency))
        return min(1.0, (busy - busy_then) / ((now - then) * max(1, self.settings.concurrency)))

    def _record_start(
        self, claimed: ClaimedTask, started: float, headers: dict[str, Any], lane: _Lane
    ) -> None:
        if claimed.attempt == 1:
            lane.queue_wait.observe(max(0.0, started - claimed.created_at))
            if claimed.parent_id is not None:
                sent_at = headers.get(SENT_AT)
                if isinstance(sent_at, int | float):
                    self.metrics.observe(
                        catalog.MESSAGE_DELIVERY_LATENCY,
                        (str(headers.get(SOURCE_CLUSTER, "")), claimed.queue),
                        max(0.0, (started - sent_at) * 1000.0),
                    )

    async def _run_handler(
        self,
        claimed: ClaimedTask,
        started: float,
        headers: dict[str, Any],
        malformed: str | None = None,
    ) -> str:
        """Run the task's agent; answer the attempt's outcome. A task whose headers
        (``malformed`` says how) or payload cannot be read is dead-lettered: no attempt
        would read them better."""
        spec = self.agents.get(claimed.agent)
        policy_attempts = claimed.max_attempts or (spec.retry.max_attempts if spec else 1)
        try:
            payload = json.loads(claimed.payload)
        except (ValueError, RecursionError) as exc:
            malformed = malformed or f"payload is not JSON: {exc}"
        if malformed is not None:
            return await self._fail(
                claimed, started, malformed, retryable=False, max_attempts=policy_attempts
            )
        if spec is None:
            return await self._fail(
                claimed,
                started,
                f"no agent named {claimed.agent!r} in cluster {self.cluster!r}",
                retryable=False,
                max_attempts=policy_attempts,
            )
        timeout = spec.timeout
        if claimed.deadline is not None:
            remaining = claimed.deadline - self.clock.now()
            if remaining <= 0:
                return await self._fail(
                    claimed,
                    started,
                    "deadline passed before the task started",
                    retryable=False,
                    max_attempts=policy_attempts,
                )
            timeout = remaining if timeout is None else min(timeout, remaining)
        info = TaskInfo(  # positional, in TaskInfo's order: this runs for every task
            claimed.id,
            claimed.queue,
            claimed.agent,
            payload,
            claimed.attempt,
            claimed.epoch,
            claimed.priority,
            claimed.deadline,
            claimed.parent_id,
            headers,
        )
        ctx = Context(self, claimed, info)
        try:
            if timeout is None:
                result = await spec.handler(info, ctx)
            else:
                async with asyncio.timeout(timeout) as window:
                    result = await spec.handler(info, ctx)
                if window.expired():
                    # it caught its cancellation at the timeout and returned anyway:
                    # too late, whatever it returned (a deadline is a promise)
                    raise TimeoutError("the handler went on past its cancellation")
        except LeaseLost:
            log.warning(
                "lease.lost", task_id=claimed.id, epoch=claimed.epoch, worker=self.worker_id
            )
            return "lease_lost"
        except EffectNotJournaled as exc:  # a retry could not do better
            return await self._fail(
                claimed, started, str(exc), retryable=False, max_attempts=policy_attempts, exc=exc
            )
        except TimeoutError as exc:  # the task's timeout, or one of the agent's own
            return await self._fail(
                claimed,
                started,
                f"timed out after {timeout:.3g} s"
                if timeout is not None
                else f"{type(exc).__name__}: {exc}",
                retryable=True,
                max_attempts=policy_attempts,
                spec=spec,
                exc=exc,
            )
        except Exception as exc:  # the agent's own failure: record it, maybe retry
            return await self._fail(
                claimed,
                started,
                f"{type(exc).__name__}: {exc}",
                retryable=True,
                max_attempts=policy_attempts,
                spec=spec,
                exc=exc,
            )
        except (SystemExit, KeyboardInterrupt) as exc:
            # a handler's sys.exit() (a library's argparse, say) or KeyboardInterrupt
            # fails its task, not the worker: escaping, it stopped the process and
            # every task in it was redelivered (the worker's own stop comes as
            # SIGTERM, handled on the loop, never as these)
            return await self._fail(
                claimed,
                started,
                f"{type(exc).__name__}: {exc} (a handler must not stop its worker: raise "
                "an exception instead)",
                retryable=True,
                max_attempts=policy_attempts,
                spec=spec,
                exc=exc,
            )
        try:
            encoded = "null" if result is None else dumps_strict(result)
        except (TypeError, ValueError) as exc:
            return await self._fail(
                claimed,
                started,
                f"result is not JSON-serialisable: {exc}",
                retryable=False,
                max_attempts=policy_attempts,
            )
        size = size_over_limit(encoded)
        if size is not None:
            return await self._fail(
                claimed,
                started,
                f"result is {size:,} bytes of JSON, more than the {MAX_VALUE_BYTES:,} a "
                "result may take: keep large data elsewhere and return its address",
                retryable=False,
                max_attempts=policy_attempts,
            )
        self._settling(claimed.id, claimed.epoch)
        done = await self.write_fenced(
            Complete(claimed.id, claimed.epoch, encoded, self.worker_id, started)
        )
        if not done.ok:
            log.warning(
                "lease.lost",
                task_id=claimed.id,
                epoch=claimed.epoch,
                worker=self.worker_id,
                at="complete",
            )
            return "lease_lost"
        return "succeeded"

    async def _fail(
        self,
        claimed: ClaimedTask,
        started: float,
        error: str,
        *,
        retryable: bool,
        max_attempts: int,
        spec: AgentSpec | None = None,
        exc: BaseException | None = None,
    ) -> str:
        """Record a failed attempt: retry it later or dead-letter it. ``exc``, the
        agent's exception, gives its traceback to the task's span and log record."""
        error = cut_text(error, MAX_ERROR_CHARS)
        stack = None
        if exc is not None:
            stack = cut_text(
                "".join(traceback.format_exception(exc)), MAX_TRACEBACK_CHARS, tail=True
            )
            trace.get_current_span().record_exception(
                exc,
                attributes={
                    "exception.message": cut_text(str(exc), MAX_ERROR_CHARS),
                    "exception.stacktrace": stack,
                },
            )
        failures = claimed.failures + 1
        retry_at: float | None = None
        reason = None
        now = self.clock.now()
        past_deadline = claimed.deadline is not None and now >= claimed.deadline
        if retryable and failures < max_attempts and not past_deadline and spec is not None:
            retry_at = now + spec.retry.delay(failures, self._rng)
            if claimed.deadline is not None and retry_at >= claimed.deadline:
                # the next try could not start in time: dead now, with this error
                # (waiting out the backoff, it died of its deadline, the error lost)
                reason = (
                    f"deadline passed before the next try (due in {retry_at - now:.3g} s, "
                    f"the deadline in {claimed.deadline - now:.3g} s): {error}"
                )
                retry_at = None
        else:
            reason = (
                error
                if not retryable
                else (
                    f"deadline passed: {error}"
                    if past_deadline
                    else f"failed {failures} time(s), the most allowed: {error}"
                )
            )
        self._settling(claimed.id, claimed.epoch)
        result = await self.write_fenced(
            Fail(claimed.id, claimed.epoch, error, self.worker_id, retry_at, reason, started)
        )
        log.info(
            "task.failed",
            task_id=claimed.id,
            error=error,
            retry_at=retry_at,
            dead_lettered=retry_at is None and result.ok,
            lease_held=result.ok,
            **({"traceback": stack} if stack is not None else {}),
        )
        if not result.ok:
            return "lease_lost"
        return "failed" if retry_at is not None else "dead_lettered"

    # --- heartbeats, reaping, child results --------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Beat every ``heartbeat_interval``; about once a second also extend every
        lease in one statement and cancel handlers whose lease was taken away. After
        beats that failed, the next one extends the leases too: they have gone that
        long without, and may be close to their expiry."""
        s = self.settings
        every = max(1, round(min(1.0, s.lease_seconds / 3) / s.heartbeat_interval))
        beats = 0
        failing_since: float | None = None
        while True:
            sent_at = self.clock.monotonic()
            try:
                if beats % every == 0 or failing_since is not None:
                    held = await self.client.heartbeat(
                        self.worker_id, s.lease_seconds, len(self._running), self.processed
                    )
                    alive = held is not None
                else:
                    held = None
                    alive = await self.client.beat(
                        self.worker_id, len(self._running), self.processed
                    )
            except StoreError as exc:
                # a store restarting: beat again (extending the leases) next interval;
                # once the leases have had time to expire, this worker holds nothing
                failing_since = sent_at if failing_since is None else failing_since
                if sent_at - failing_since >= s.lease_seconds:
                    log.error("worker.store_lost", worker=self.worker_id, error=str(exc))
                    self._stopping.set()
                    return
                log.warning("heartbeat.failed", worker=self.worker_id, error=str(exc))
                await self.clock.sleep(s.heartbeat_interval)
                continue
            failing_since = None
            beats += 1
            self._store_answered()
            if not alive:
                log.error("worker.declared_dead", worker=self.worker_id)
                self.dead = True
                self._stopping.set()
                return
            if held is not None:
                self._cancel_lost(held, sent_at)
                if s.max_memory_mb is not None and not self.recycled:
                    self._recycle_if_over(s.max_memory_mb)  # beating on while it drains
            await self.clock.sleep(s.heartbeat_interval)

    def _recycle_if_over(self, limit: float) -> None:
        """Past ``limit`` MiB resident: stop, to be recycled (looked at about once a
        second, with the beats that extend the leases)."""
        resident = resident_mib()
        if resident is None or resident <= limit:
            return
        log.warning(
            "worker.recycling",
            worker=self.worker_id,
            resident_mib=round(resident, 1),
            limit_mib=limit,
            inflight=len(self._running),
        )
        self.recycled = True
        self._stopping.set()
        self.wake_claimer()

    def _suspects_wanted(self) -> int:
        """How many suspects the next claim may take: none while one runs here, nor
        for SUSPECT_LOOK_SECONDS after a look found none. Looking costs a statement
        in every claim that leaves room (a tenth of a claim's time, measured), and
        suspects are rare; once one ran, the next look comes at once."""
        if self._suspect is not None:
            return 0
        return int(self.clock.monotonic() - self._suspects_looked_at >= SUSPECT_LOOK_SECONDS)

    def _settling(self, task_id: int, epoch: int) -> None:
        """Say that a task's last write is on its way: see :meth:`_cancel_lost`."""
        running = self._running.get(task_id)
        if running is not None and running.epoch == epoch:
            running.settling = True

    def _cancel_lost(self, held: dict[int, int], sent_at: float) -> None:
        for task_id, running in list(self._running.items()):
            if running.claimed_at > sent_at:
                continue  # claimed after this heartbeat was taken
            if running.settling:
                # Its Complete or Fail may have committed before this heartbeat, which
                # then no longer finds the lease. The handler is done either way, and
                # that write is fenced: if the lease was taken away, it is refused
                # and the handler reports the lease lost itself.
                continue
            if held.get(task_id) != running.epoch:
                self._cancel_reasons[task_id, running.epoch] = "lease_lost"
                running.task.cancel()
                log.warning("lease.revoked", task_id=task_id, worker=self.worker_id)

    async def _pipe_beat_loop(self) -> None:
        """One byte on stdout per interval while the event loop runs (see the supervisor)."""
        while True:
            try:
                os.write(1, b".")
            except (BlockingIOError, BrokenPipeError):
                pass
            await self.clock.sleep(self.settings.heartbeat_interval)

    async def _reap_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.reap_interval)
            try:
                requeued = await self.client.run(
                    self.client.store.requeue_expired, self.clock.now()
                )
            except StoreError as exc:  # the next round looks again
                log.warning("reaper.failed", worker=self.worker_id, error=str(exc))
                continue
            if requeued:
                self.metrics.inc(catalog.LEASE_EXPIRATIONS, (self.cluster,), len(requeued))
                log.warning("lease.expired", tasks=requeued[:20], count=len(requeued))
                self.wake_claimer()

    async def _telemetry_loop(self) -> None:
        """Write the metrics snapshot and the spans every ``telemetry_interval``, and
        the spans alone whenever enough of them are waiting (see SpanBuffer)."""
        interval = self.settings.telemetry_interval
        next_snapshot = self.clock.monotonic() + interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_snapshot - self.clock.monotonic())):
                    await self.spans.due.wait()
            if self.clock.monotonic() >= next_snapshot:
                await self._telemetry_guarded(self.flush_telemetry)
                next_snapshot = self.clock.monotonic() + interval
            else:
                await self._telemetry_guarded(self._flush_spans)

    async def _telemetry_guarded(self, flush: Callable[[], Awaitable[None]]) -> None:
        """Run a telemetry write; if the store fails it, log and go on. Telemetry is
        never a reason for a worker to stop (its spans are kept for the next flush)."""
        try:
            await flush()
        except (StoreError, OSError) as exc:
            log.warning("telemetry.write_failed", worker=self.worker_id, error=str(exc))

    async def flush_telemetry(self) -> None:
        """Write this worker's metrics snapshot (cumulative values) and finished spans."""
        if not self.settings.telemetry:
            return
        self.metrics.set(
            catalog.AGENT_UTILIZATION, (self.cluster, self.worker_id), self._utilization()
        )
        dropped, self.spans.dropped = self.spans.dropped, 0
        if dropped:
            self.metrics.inc(catalog.SPANS_DROPPED, (self.cluster,), dropped)
        data = json.dumps(self.metrics.snapshot(), separators=(",", ":"))
        client = self._telemetry_client or self.client
        store = client.store
        await client.run(store.put_telemetry, self.worker_id, self.cluster, self.clock.now(), data)
        await self._flush_spans()

    async def _flush_spans(self) -> None:
        client = self._telemetry_client or self.client
        store = client.store
        spans = self.spans.drain()
        if spans:
            try:
                # formatted row by row as the store thread writes them (see store_rows)
                await client.run(store.put_spans, store_rows(spans))
            except BaseException:
                # cancelled (shutdown) or the store failed: keep them for the next flush;
                # a span written twice is stored once (the span id is the key)
                self.spans.requeue(spans)
                raise

    async def wait_for_result(self, child_id: int, ctx: Context, poll_interval: float) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(child_id, []).append(fut)
        self._waiter_poll = min(self._waiter_poll, poll_interval)
        self._waiter_hint.set()
        # a task that waits (on one child or on several at once) gives up its one slot
        task_id = ctx.task.id
        self._waiting[task_id] = self._waiting.get(task_id, 0) + 1
        self._slot_free.set()
        try:
            return await fut
        finally:
            left = self._waiting[task_id] - 1
            if left:
                self._waiting[task_id] = left
            else:
                del self._waiting[task_id]

    async def _waiter_loop(self) -> None:
        while True:
            if not self._waiters:
                self._waiter_hint.clear()
                await self._waiter_hint.wait()
            ids = list(self._waiters)
            try:
                records = await self.client.run(self.client.store.get_tasks, ids)
            except StoreError as exc:  # the parents wait a little longer
                log.warning("child_results.failed", worker=self.worker_id, error=str(exc))
                records = []
            for record in records:
                if record.state not in TERMINAL_STATES:
                    continue
                for fut in self._waiters.pop(record.id, []):
                    if fut.done():
                        continue
                    if record.state == "succeeded":
                        fut.set_result(json.loads(record.result or "null"))
                    else:
                        fut.set_exception(
                            TaskFailed(record.id, record.state, record.dead_reason or record.error)
                        )
            await self.clock.sleep(self._waiter_poll)
