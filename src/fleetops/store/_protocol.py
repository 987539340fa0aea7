"""The narrow interface every store implements.

Stores are synchronous and batch-oriented: the async queue client runs them on a
thread of its own and groups many operations into each transaction. Every method
that changes state commits before it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ._models import (
    AttemptRecord,
    ChangeRecord,
    ClaimedTask,
    DeploymentRecord,
    EffectRecord,
    EventRecord,
    NewTask,
    Operation,
    OpResult,
    Submitted,
    TaskRecord,
    WorkerRecord,
)


class Store(Protocol):
    """Durable state of a fleet: tasks, leases, attempts, effects, workers, events."""

    url: str
    dialect: str

    def migrate(self) -> list[int]:
        """Bring the schema up to date; answer the versions applied now."""
        ...

    def schema_version(self) -> int: ...

    def close(self) -> None: ...

    # tasks
    def submit(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]: ...

    def submit_groups(
        self, groups: Sequence[tuple[Sequence[NewTask], float]]
    ) -> list[list[Submitted]]:
        """Submit several groups of tasks, each stamped with its own time, in one
        transaction; answer each group's results, in order."""
        ...

    def claim(
        self,
        worker: str,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_seconds: float,
        agents: Sequence[str] | None = None,
        max_running: int | None = None,
        suspects: int | None = None,
    ) -> list[ClaimedTask]:
        """Lease up to ``limit`` ready tasks; ``max_running`` caps the queues' running total.

        ``suspects`` (None: no limit) is how many of them may be suspects, tasks that
        were on several dead workers (see SUSPECT_REDELIVERIES in fleetops.store._sql):
        a worker running one asks for none."""
        ...

    def apply(self, ops: Sequence[Operation], now: float | Callable[[], float]) -> list[OpResult]:
        """Apply ``ops`` in one transaction. ``now`` is the time stamped on them, or a
        clock read once the transaction has begun (after any wait for a lock), so
        that a completion is not stamped earlier than it could commit."""
        ...

    def heartbeat(
        self, worker: str, now: float, lease_seconds: float, inflight: int, processed: int
    ) -> dict[int, int] | None:
        """Record a heartbeat and extend the worker's leases; answer {task id: epoch} held.

        None means the worker was declared dead: it must stop, its leases are gone.
        """
        ...

    def beat(self, worker: str, now: float, inflight: int, processed: int) -> bool:
        """Record a heartbeat without extending leases; False if the worker was declared dead."""
        ...

    def held_leases(self, worker: str) -> dict[int, int]: ...

    def revoke_worker(self, worker: str, now: float, reason: str) -> list[int]:
        """Take every lease ``worker`` holds away (epoch bump) and requeue the tasks."""
        ...

    def requeue_expired(self, now: float, limit: int = 1000) -> list[int]: ...

    def cancel(self, task_id: int, now: float, reason: str = "cancelled") -> bool:
        """:meth:`cancel_tree`: whether ``task_id`` was cancelled."""
        ...

    def cancel_tree(self, task_id: int, now: float, reason: str = "cancelled") -> list[int]:
        """Cancel a queued or running task and its queued or running descendants (the
        tasks it sent, and theirs); answer their ids, ``task_id`` first, or [] when
        ``task_id`` is not queued or running (nothing changes then)."""
        ...

    def cancel_many(
        self,
        task_ids: Sequence[int],
        now: float,
        reason: str = "cancelled",
        *,
        queued_only: bool = False,
    ) -> list[list[int]]:
        """:meth:`cancel_tree` for each task in one transaction (with ``queued_only``,
        for each one still queued); answer the trees cancelled."""
        ...

    def retry_dead(self, task_id: int, now: float) -> bool:
        """Queue a dead letter again with its full budget of attempts; its attempts and
        effect journal stay. False, changing nothing, when the task is not dead."""
        ...

    def retry_dead_many(self, task_ids: Sequence[int], now: float) -> list[int]:
        """:meth:`retry_dead` for each task in one transaction; answer those queued
        again (the ones that were dead), in id order."""
        ...

    def get_task(self, task_id: int) -> TaskRecord | None: ...

    def get_tasks(self, task_ids: Sequence[int]) -> list[TaskRecord]:
        """The tasks of ``task_ids`` that exist, in id order."""
        ...

    def list_tasks(
        self,
        state: str | None = None,
        queue: str | None = None,
        agent: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
        *,
        before_id: int | None = None,
        newest: bool = False,
    ) -> list[TaskRecord]:
        """Tasks in id order, after ``after_id`` and before ``before_id`` where given;
        ``newest``: in descending id order (the newest first)."""
        ...

    def list_task_ids(
        self,
        state: str | None = None,
        queue: str | None = None,
        agent: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
    ) -> list[int]:
        """The ids :meth:`list_tasks` would answer, without reading the tasks."""
        ...

    def count_tasks(self, finished: bool = True) -> dict[tuple[str, str, str], int]:
        """Task counts by (queue, agent, state); with ``finished=False`` only of the
        queued and running tasks. Counting the finished tasks reads an index entry
        for every one ever finished (about 0.1 s a million); the open ones are few."""
        ...

    def attempts(self, task_id: int) -> list[AttemptRecord]: ...

    def effects(self, task_id: int) -> list[EffectRecord]: ...

    # control plane
    def record_change(
        self,
        now: float,
        actor: str,
        kind: str,
        subject: str,
        reason: str = "",
        before: str | None = None,
        after: str | None = None,
        diff: str = "[]",
    ) -> int: ...

    def list_changes(self, limit: int = 100, after_id: int = 0) -> list[ChangeRecord]: ...

    def start_deployment(self, now: float, fleet: str, spec_hash: str, actor: str) -> int: ...

    def finish_deployment(
        self,
        deployment_id: int,
        now: float,
        state: str,
        phases: str,
        failed_phase: str | None = None,
        error: str | None = None,
        readiness: str | None = None,
    ) -> None: ...

    def set_deployment_readiness(self, deployment_id: int, readiness: str) -> None: ...

    def list_deployments(self, limit: int = 20) -> list[DeploymentRecord]: ...

    def running_count(self, queue: str) -> int: ...

    def open_count(self, queue: str) -> int:
        """Tasks of ``queue`` not finished yet (queued or running): an index range,
        cheap however much history the store keeps, unlike :meth:`count_tasks`."""
        ...

    def count_dead_since(self, since: float) -> int: ...

    def prune_tasks(
        self, finished_before: float | None, dead_before: float | None, limit: int = ...
    ) -> int:
        """Delete up to ``limit`` finished tasks, the longest finished first, with their
        attempts and effects: succeeded and cancelled ones finished before
        ``finished_before``, dead letters before ``dead_before`` (None keeps them),
        never a task whose parent is still queued, running or dead, nor one whose id
        the next task would be given (SQLite's largest). Answers how many went."""
        ...

    # telemetry
    def put_telemetry(self, worker: str, cluster: str, now: float, data: str) -> None: ...

    def get_telemetry(self) -> list[tuple[str, str, float, str]]: ...

    def gone_telemetry(self, before: float) -> list[tuple[str, str, float, str]]:
        """Snapshots written before ``before`` by workers no longer running."""
        ...

    def replace_telemetry(
        self, gone: Sequence[str], rows: Sequence[tuple[str, str, float, str]]
    ) -> None:
        """Delete the snapshots of ``gone`` and write ``rows``, in one transaction."""
        ...

    def put_spans(self, spans: Iterable[tuple[Any, ...]]) -> None: ...

    def get_spans(
        self, trace_id: str | None = None, task_id: int | None = None, limit: int = 1000
    ) -> list[tuple[Any, ...]]: ...

    def prune_spans(self, before: float) -> int: ...

    # workers and events
    def register_worker(
        self,
        worker: str,
        cluster: str,
        pid: int | None,
        host: str | None,
        concurrency: int,
        now: float,
        bell: str | None = None,
    ) -> None: ...

    def bells(self) -> list[tuple[str, str | None, str]]: ...

    def set_worker_state(self, worker: str, state: str, now: float) -> None: ...

    def list_workers(
        self,
        cluster: str | None = None,
        ids: Sequence[str] | None = None,
        live: bool = False,
    ) -> list[WorkerRecord]:
        """Workers by id: every one kept (of ``cluster``), or those in ``ids``; with
        ``live``, only those running or draining."""
        ...

    def prune_workers(self, before: float) -> int:
        """Delete the rows of workers stopped or dead before ``before``; answers how many."""
        ...

    def prune_events(self, before: float) -> int:
        """Delete the events recorded before ``before``, but one whose id the next event
        would be given (SQLite's largest); answers how many went."""
        ...

    def record_event(
        self,
        kind: str,
        now: float,
        cluster: str | None = None,
        worker: str | None = None,
        task_id: int | None = None,
        data: str = "{}",
    ) -> int: ...

    def list_events(
        self,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        *,
        cluster: str | None = None,
        newest: bool = False,
    ) -> list[EventRecord]:
        """Events after ``after_id`` (of ``kind`` and ``cluster`` where given), in id
        order: the first ``limit`` of them, or with ``newest`` the last ``limit``."""
        ...
