"""Value objects that cross the store boundary.

Rows come out as frozen dataclasses; writes go in as small operation objects that
the store applies in one transaction (group commit), each fenced by the lease epoch
where the writer is a lease holder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TaskState = Literal["queued", "running", "succeeded", "dead", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "dead", "cancelled"})
TASK_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "dead", "cancelled")
#: How far ahead of now a submit may set a task's run_after or deadline (its delay or
#: time to finish in): 10 years. Further is a mistake (``--delay 100000000d``), and a
#: time past the year 9999 is no date at all.
MAX_AHEAD_SECONDS = 10 * 365 * 86400


@dataclass(frozen=True, slots=True)
class NewTask:
    """A task to submit. ``payload`` and ``headers`` are JSON text.

    ``max_attempts`` 0 means "the agent's retry policy decides"; ``deadline`` and
    ``run_after`` are seconds since the epoch; a submit through the CLI or the API
    refuses either more than :data:`MAX_AHEAD_SECONDS` ahead.
    """

    queue: str
    agent: str
    payload: str = "null"
    priority: int = 0
    deadline: float | None = None
    idempotency_key: str | None = None
    parent_id: int | None = None
    max_attempts: int = 0
    max_redeliveries: int = 10
    run_after: float | None = None
    headers: str = "{}"


@dataclass(frozen=True, slots=True)
class Submitted:
    """The answer to a submit: the task's id, and whether this call created it."""

    id: int
    created: bool


@dataclass(slots=True)
class ClaimedTask:
    """A task together with the lease a worker now holds on it.

    Read-only by convention: not frozen, because a worker builds one for every task it
    claims, and a frozen dataclass takes six times as long to build (2 µs against
    0.3 µs for these 18 fields).
    """

    id: int
    queue: str
    agent: str
    payload: str
    priority: int
    epoch: int
    attempt: int
    failures: int
    redeliveries: int
    max_attempts: int
    max_redeliveries: int
    deadline: float | None
    idempotency_key: str | None
    parent_id: int | None
    created_at: float
    headers: str
    lease_expires_at: float
    # Effects journaled by earlier attempts, by key: (state, result JSON or None).
    journal: dict[str, tuple[str, str | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    id: int
    queue: str
    agent: str
    payload: str
    priority: int
    state: str
    idempotency_key: str | None
    parent_id: int | None
    deadline: float | None
    max_attempts: int
    max_redeliveries: int
    attempts: int
    failures: int
    redeliveries: int
    epoch: int
    lease_owner: str | None
    lease_expires_at: float | None
    run_after: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: str | None
    error: str | None
    dead_reason: str | None
    headers: str


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    task_id: int
    attempt: int
    epoch: int
    worker: str | None
    started_at: float | None
    ended_at: float
    outcome: str
    error: str | None


@dataclass(frozen=True, slots=True)
class EffectRecord:
    task_id: int
    key: str
    state: str
    epoch: int
    result: str | None
    executions: int
    started_at: float
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    id: str
    cluster: str
    pid: int | None
    host: str | None
    state: str
    started_at: float
    heartbeat_at: float | None
    stopped_at: float | None
    concurrency: int
    inflight: int
    processed: int


@dataclass(frozen=True, slots=True)
class EventRecord:
    id: int
    at: float
    kind: str
    cluster: str | None
    worker: str | None
    task_id: int | None
    data: str


# --- Fenced write operations, applied in batches by Store.apply ------------------------


@dataclass(frozen=True, slots=True)
class Complete:
    """Mark a running task succeeded. Fenced: only the holder of ``epoch`` may."""

    task_id: int
    epoch: int
    result: str
    worker: str
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class Fail:
    """Record a failed attempt: requeue at ``retry_at``, or dead-letter when it is None."""

    task_id: int
    epoch: int
    error: str
    worker: str
    retry_at: float | None
    dead_reason: str | None = None
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class Release:
    """Give a lease back without counting a failure (graceful shutdown)."""

    task_id: int
    epoch: int
    worker: str
    started_at: float | None = None


@dataclass(frozen=True, slots=True)
class EffectBegin:
    """Journal that an effect is about to run. Answers the journaled entry if done."""

    task_id: int
    epoch: int
    key: str


@dataclass(frozen=True, slots=True)
class EffectEnd:
    """Journal an effect's result."""

    task_id: int
    epoch: int
    key: str
    result: str


@dataclass(frozen=True, slots=True)
class SubmitChild:
    """Submit a task from inside a running one, fenced by the parent's lease."""

    parent_id: int
    epoch: int
    task: NewTask


@dataclass(frozen=True, slots=True)
class Submit:
    """Submit a task (not fenced: the caller holds no lease)."""

    task: NewTask


Operation = Complete | Fail | Release | EffectBegin | EffectEnd | SubmitChild | Submit


@dataclass(frozen=True, slots=True)
class OpResult:
    """The outcome of one operation: ``ok`` False means the lease was lost."""

    ok: bool
    value: object = None


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One audited change: who, what, when, why, before and after."""

    id: int
    at: float
    actor: str
    kind: str
    subject: str
    reason: str
    before: str | None
    after: str | None
    diff: str


@dataclass(frozen=True, slots=True)
class DeploymentRecord:
    id: int
    started_at: float
    finished_at: float | None
    fleet: str
    spec_hash: str
    actor: str
    state: str
    failed_phase: str | None
    error: str | None
    phases: str
    readiness: str | None
