"""The SQL shared by the SQLite and PostgreSQL stores.

Statements are written once with ``?`` placeholders; the PostgreSQL store rewrites
them to ``%s``. What differs between the two databases (connections, transactions,
the claim statement's ``SKIP LOCKED``, bulk submit) lives in each store's module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from functools import lru_cache, wraps
from importlib import resources
from typing import Any, TypeVar

from .._exceptions import ConfigError, SchemaError, StoreConflict
from ..telemetry._logs import get_logger
from ._models import (
    AttemptRecord,
    ChangeRecord,
    ClaimedTask,
    Complete,
    DeploymentRecord,
    EffectBegin,
    EffectEnd,
    EffectRecord,
    EventRecord,
    Fail,
    NewTask,
    Operation,
    OpResult,
    Release,
    Submit,
    SubmitChild,
    Submitted,
    TaskRecord,
    WorkerRecord,
)

TASK_COLUMNS = (
    "id, queue, agent, payload, priority, state, idempotency_key, parent_id, deadline, "
    "max_attempts, max_redeliveries, attempts, failures, redeliveries, epoch, lease_owner, "
    "lease_expires_at, run_after, created_at, started_at, finished_at, result, error, "
    "dead_reason, headers"
)
CLAIM_RETURNING = (
    "id, queue, agent, payload, priority, epoch, attempts, failures, redeliveries, "
    "max_attempts, max_redeliveries, deadline, idempotency_key, parent_id, created_at, "
    "headers, lease_expires_at"
)
#: The claim's condition that fences off a worker declared dead as a whole: it may
#: not take new leases. Parameter: the worker.
NOT_DEAD_WORKER = "AND NOT EXISTS (SELECT 1 FROM workers WHERE id = ? AND state = 'dead') "
#: A task on this many dead workers (its redeliveries) is a suspect: it may be what
#: killed them. A claim takes suspects only as its ``suspects`` allows (a worker runs
#: one at a time), so that a task that kills its worker takes down only itself and
#: the fresh tasks beside it, not the same healthy ones every time until they are
#: dead-lettered with it (schema 9). Written into the claim's SQL and the
#: tasks_suspect index, whose terms must match word for word.
SUSPECT_REDELIVERIES = 3
#: The claim's term for each kind of task (None: any task)
SUSPECT_TERMS = {None: "", False: "AND redeliveries < 3 ", True: "AND redeliveries >= 3 "}
#: The suspects' terms with a floor on their priority (see SqlStore.claim).
SUSPECT_AT_LEAST = SUSPECT_TERMS[True] + "AND priority >= ? "
WORKER_COLUMNS = (
    "id, cluster, pid, host, state, started_at, heartbeat_at, stopped_at, concurrency, "
    "inflight, processed"
)

INSERT_TASK = (
    "INSERT INTO tasks (queue, agent, payload, priority, state, idempotency_key, parent_id, "
    "deadline, max_attempts, max_redeliveries, run_after, created_at, headers) "
    "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_TASK_KEYED = INSERT_TASK + " ON CONFLICT (idempotency_key) DO NOTHING RETURNING id"
SELECT_BY_KEY = "SELECT id, queue, agent FROM tasks WHERE idempotency_key = ?"

#: Finished tasks deleted to a transaction by prune_tasks: each holds the write lock
#: a few milliseconds (it deletes their attempts and effects too).
PRUNE_TASKS = 500

#: The WHERE term of the tasks_done partial index, word for word (a query uses a
#: partial index only when its WHERE clause contains the index's). OR, not IN: see
#: migration 8.
FINISHED = "(state = 'succeeded' OR state = 'dead' OR state = 'cancelled')"
COUNT_OPEN = (
    "SELECT queue, agent, 'queued', COUNT(*) FROM tasks WHERE state = 'queued' "
    "GROUP BY queue, agent "
    "UNION ALL SELECT queue, agent, 'running', COUNT(*) FROM tasks WHERE state = 'running' "
    "GROUP BY queue, agent"
)
COUNT_TASKS = (
    f"{COUNT_OPEN} UNION ALL SELECT queue, agent, state, COUNT(*) FROM tasks WHERE {FINISHED} "
    "GROUP BY state, queue, agent"
)

#: A successful attempt is recorded in the task's row, not as a row of attempts
#: (schema 6): finished_by is its worker; see :meth:`SqlStore.attempts`.
COMPLETE = (
    "UPDATE tasks SET state = 'succeeded', result = ?, error = NULL, finished_at = ?, "
    "finished_by = ?, lease_owner = NULL, lease_expires_at = NULL "
    "WHERE id = ? AND epoch = ? AND state = 'running' RETURNING id, epoch"
)
FAIL_RETRY = (
    "UPDATE tasks SET state = 'queued', failures = failures + 1, run_after = ?, error = ?, "
    "lease_owner = NULL, lease_expires_at = NULL "
    "WHERE id = ? AND epoch = ? AND state = 'running' RETURNING attempts, started_at"
)
FAIL_DEAD = (
    "UPDATE tasks SET state = 'dead', failures = failures + 1, error = ?, dead_reason = ?, "
    "finished_at = ?, lease_owner = NULL, lease_expires_at = NULL "
    "WHERE id = ? AND epoch = ? AND state = 'running' RETURNING attempts, started_at"
)
RELEASE = (
    "UPDATE tasks SET state = 'queued', run_after = ?, lease_owner = NULL, "
    "lease_expires_at = NULL "
    "WHERE id = ? AND epoch = ? AND state = 'running' RETURNING attempts, started_at"
)
INSERT_ATTEMPT = (
    "INSERT INTO attempts (task_id, attempt, epoch, worker, started_at, ended_at, outcome, error) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (task_id, attempt) DO NOTHING"
)
#: Rows per statement where many rows go into one (Completes, attempts): at most
#: 8 parameters a row, far below SQLite's and PostgreSQL's limits on parameters.
BATCH_ROWS = 500


def padded_size(n: int) -> int:
    """The number of rows a statement for ``n`` rows is written for: the next power of
    two, at most :data:`BATCH_ROWS`. The padding rows change nothing. The point: ten
    statement texts of each kind serve every batch size, so they stay in the
    connection's statement cache (SQLite) or prepared (PostgreSQL); preparing a long
    statement afresh costs more than a few padding rows."""
    return min(1 << (n - 1).bit_length(), BATCH_ROWS)


@lru_cache(maxsize=16)
def complete_many_sql(n: int) -> str:
    """Complete up to ``n`` tasks in one UPDATE, each fenced on its own (id, epoch).

    Parameters: (id, epoch, result, worker) per task, then the finish time; a row of
    NULLs matches no task (padding). Answers a row per task completed, as
    :data:`COMPLETE` does for one task. The VALUES columns take their types from the
    parameters (integers and text on both databases; psycopg sends an int as the
    smallest integer type that holds it), so they compare with and assign to the
    task's columns without casts.
    """
    rows = ", ".join(["(?, ?, ?, ?)"] * n)
    return (
        f"WITH done (id, epoch, result, worker) AS (VALUES {rows}) "
        "UPDATE tasks SET state = 'succeeded', result = done.result, error = NULL, "
        "finished_at = ?, finished_by = done.worker, lease_owner = NULL, "
        "lease_expires_at = NULL "
        "FROM done WHERE tasks.id = done.id AND tasks.epoch = done.epoch "
        "AND tasks.state = 'running' "
        "RETURNING tasks.id, tasks.epoch"
    )


@lru_cache(maxsize=16)
def insert_attempts_sql(n: int) -> str:
    """:data:`INSERT_ATTEMPT` for ``n`` rows at once (a repeated row is skipped: padding)."""
    return INSERT_ATTEMPT.replace(
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", "VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    )


SELECT_EFFECT = "SELECT state, result FROM effects WHERE task_id = ? AND key = ?"
INSERT_EFFECT = (
    "INSERT INTO effects (task_id, key, state, epoch, started_at) VALUES (?, ?, 'started', ?, ?)"
)
RESTART_EFFECT = (
    "UPDATE effects SET epoch = ?, executions = executions + 1, started_at = ? "
    "WHERE task_id = ? AND key = ?"
)
FINISH_EFFECT = (
    "UPDATE effects SET state = 'done', result = ?, finished_at = ? "
    "WHERE task_id = ? AND key = ? AND state = 'started'"
)
HEARTBEAT_WORKER = (
    "UPDATE workers SET heartbeat_at = ?, inflight = ?, processed = ? "
    "WHERE id = ? AND state IN ('running', 'draining')"
)
EXTEND_LEASES = (
    "UPDATE tasks SET lease_expires_at = ? WHERE lease_owner = ? AND state = 'running' "
    "RETURNING id, epoch"
)
#: The same on PostgreSQL: its rows locked in id order first (see SqlStore._lock_in_id_order).
EXTEND_LEASES_IN_ID_ORDER = (
    "UPDATE tasks SET lease_expires_at = ? WHERE id IN (SELECT id FROM tasks "
    "WHERE lease_owner = ? AND state = 'running' ORDER BY id FOR UPDATE) RETURNING id, epoch"
)
# A lost lease is a redelivery: requeued at once unless the task has been lost too often
# (a poison task that kills every worker it lands on), then dead-lettered. run_after is
# left as it was (in the past), so redelivered work goes ahead of the backlog.
REVOKE_SET = (
    "SET state = CASE WHEN redeliveries + 1 > max_redeliveries THEN 'dead' ELSE 'queued' END, "
    "dead_reason = CASE WHEN redeliveries + 1 > max_redeliveries THEN ? ELSE dead_reason END, "
    "finished_at = CASE WHEN redeliveries + 1 > max_redeliveries THEN ? ELSE finished_at END, "
    "redeliveries = redeliveries + 1, epoch = epoch + 1, lease_owner = NULL, "
    "lease_expires_at = NULL "
)
MARK_WORKER = "UPDATE workers SET state = ?, stopped_at = ? WHERE id = ?"
#: Cancel the queued or running tasks of the IN list (filled in by the caller).
CANCEL_IN = (
    "UPDATE tasks SET state = 'cancelled', epoch = epoch + 1, finished_at = ?, dead_reason = ?, "
    "lease_owner = NULL, lease_expires_at = NULL "
    "WHERE id IN ({}) AND state IN ('queued', 'running')"
)
#: A dead letter queued again with a fresh budget of attempts and redeliveries; its
#: attempts so far and its effect journal stay (see SqlStore.retry_dead).
_RETRY_DEAD_SET = (
    "UPDATE tasks SET state = 'queued', failures = 0, redeliveries = 0, run_after = ?, "
    "finished_at = NULL, dead_reason = NULL "
)
RETRY_DEAD = _RETRY_DEAD_SET + "WHERE id = ? AND state = 'dead' RETURNING id"
#: ... and the dead tasks of the IN list (filled in by the caller)
RETRY_DEAD_IN = _RETRY_DEAD_SET + "WHERE id IN ({}) AND state = 'dead' RETURNING id"
INSERT_EVENT = (
    "INSERT INTO events (at, kind, cluster, worker, task_id, data) VALUES (?, ?, ?, ?, ?, ?) "
    "RETURNING id"
)
UPSERT_WORKER = (
    "INSERT INTO workers (id, cluster, pid, host, state, started_at, heartbeat_at, concurrency, "
    "bell) VALUES (?, ?, ?, ?, 'running', ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET cluster = excluded.cluster, pid = excluded.pid, "
    "host = excluded.host, state = 'running', started_at = excluded.started_at, "
    "heartbeat_at = excluded.heartbeat_at, stopped_at = NULL, "
    "concurrency = excluded.concurrency, inflight = 0, processed = 0, bell = excluded.bell"
)
#: The states of a worker that may still be running (the others: 'stopped', 'dead').
LIVE_WORKER_STATES = ("running", "draining")
SELECT_BELLS = (
    "SELECT cluster, host, bell FROM workers WHERE state = 'running' AND bell IS NOT NULL"
)


def migration_scripts(dialect: str) -> list[tuple[int, str]]:
    """The packaged migrations for ``dialect``, as (version, SQL text), oldest first."""
    folder = resources.files("fleetops.store").joinpath("sql", dialect)
    scripts = []
    for entry in folder.iterdir():
        name = entry.name
        if name.endswith(".sql"):
            scripts.append((int(name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(scripts)


def split_statements(script: str) -> list[str]:
    """Split one of our migration scripts into statements (no semicolons in literals)."""
    lines = [line for line in script.splitlines() if not line.strip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


#: The two results of an op without a value (OpResult is immutable: shared).
OK = OpResult(True)
REJECTED = OpResult(False)

#: The ops :meth:`SqlStore.apply` applies one at a time (Completes go set-wise).
OneByOne = Fail | Release | EffectBegin | EffectEnd | SubmitChild | Submit
#: The ops that insert a task.
SUBMITS = (Submit, SubmitChild)


def task_of(op: OneByOne) -> int | None:
    """The task whose lease fences ``op`` (None for a Submit: not fenced)."""
    if isinstance(op, SubmitChild):
        return op.parent_id
    if isinstance(op, Submit):
        return None
    return op.task_id


def task_params(task: NewTask, now: float) -> tuple[Any, ...]:
    return (
        task.queue,
        task.agent,
        task.payload,
        task.priority,
        task.idempotency_key,
        task.parent_id,
        task.deadline,
        task.max_attempts,
        task.max_redeliveries,
        task.run_after if task.run_after is not None else now,
        now,
        task.headers,
    )


#: The claim UPDATE by (store class, number of queues, number of agents): built once.
_CLAIM_SQL: dict[tuple[type, int, int, bool | None], str] = {}


log = get_logger("fleetops.store")

#: How often a store method runs its transaction again after the store ended it to
#: break a deadlock (StoreConflict), before the error is the caller's.
CONFLICT_RERUNS = 3

F = TypeVar("F", bound=Callable[..., Any])


def rerun_on_conflict(method: F) -> F:
    """Run ``method`` (one transaction of a store's) again when PostgreSQL ended its
    transaction to break a deadlock: nothing of it was kept, so running it again is
    what its caller would do, minus a round of errors. Writers here lock tasks in
    one order (see ``SqlStore._lock_in_id_order``), so this is for the narrow cases
    left and for transactions of other programs. Only the outermost transaction runs
    again; SQLite never raises it."""

    @wraps(method)
    def rerun(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        for tries_left in range(CONFLICT_RERUNS, -1, -1):
            try:
                return method(self, *args, **kwargs)
            except StoreConflict as exc:
                if tries_left == 0 or self._depth:
                    raise
                # worth knowing: outside the narrow cases, it means a writer that
                # locks tasks in another order (another program's, or a regression)
                log.warning("store.conflict_rerun", method=method.__name__, error=str(exc))
        raise AssertionError("unreachable")  # pragma: no cover

    return rerun  # type: ignore[return-value]


class SqlStore:
    """Store logic common to both SQL databases; subclasses supply the connection."""

    url: str
    dialect: str
    latest_version: int
    #: how deep the transactions now open are nested (0: none is open)
    _depth: int

    # --- to be supplied by the dialect ---------------------------------------------------

    def _tx(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; answer a cursor (rows via fetchall, count via rowcount)."""
        raise NotImplementedError

    def _claim_sql(self, n_queues: int, n_agents: int, suspect: bool | None = None) -> str:
        """The claim UPDATE. Parameters: worker, lease expiry, now, the queues, the
        agents, now (for run_after), worker (for :data:`NOT_DEAD_WORKER`), limit.
        ``suspect``: suspects only (True), none (False) or any task (None); see
        :data:`SUSPECT_TERMS`."""
        raise NotImplementedError

    def _execmany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run one statement for many rows (inside a transaction)."""
        raise NotImplementedError

    def _lock_task_sql(self) -> str:
        raise NotImplementedError

    def _insert_many(self, tasks: Sequence[NewTask], now: float) -> list[int]:
        raise NotImplementedError

    def _lock_queue(self, queue: str) -> None:
        """Hold a lock on ``queue`` until the transaction ends (for exact quotas)."""
        raise NotImplementedError

    def _for_update_wait(self) -> str:
        """Like :meth:`_for_update` but waiting for locked rows instead of skipping them."""
        return self._for_update().replace(" SKIP LOCKED", "")

    def _for_update(self) -> str:
        """The row-locking suffix of a SELECT in a write transaction ('' where moot)."""
        raise NotImplementedError

    def _indexed_by(self, index: str | None) -> str:
        """A hint to read the tasks through ``index`` ('' where the planner needs none)."""
        return ""

    def _lock_events(self) -> None:
        """Hold, until the transaction ends, the lock that makes events commit in the
        order of their ids: a reader that follows them with ``after`` (the last id it
        saw) would otherwise pass over one whose id was taken before another's but
        committed after it was read. SQLite's write lock does that already."""

    def _prune_below(self, table: str) -> int | None:
        """The id a prune of ``table`` (``tasks`` or ``events``) must stay below, or
        None where it may delete any row.

        Task and event ids outlive their rows: in spans, logs and events, in an API
        reader's ``after`` cursor, in the task and epoch of a stale holder's fenced
        write. They must never name two things. PostgreSQL's identity columns never
        go back, so any row may go there.
        """
        return None

    # --- schema ------------------------------------------------------------------------------

    #: The folder of this dialect's migration scripts, and the SQL type of a timestamp.
    migrations_dir: str
    real_type: str

    def _migration_lock(self) -> None:
        """Serialise concurrent migrations for the rest of the transaction."""

    def schema_version(self) -> int:
        raise NotImplementedError

    def migrate(self) -> list[int]:
        """Apply the packaged migrations newer than the store's version, in one transaction."""
        applied: list[int] = []
        with self._tx():
            self._migration_lock()
            self._exec(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                f"(version INTEGER PRIMARY KEY, applied_at {self.real_type} NOT NULL)"
            )
            current = self.schema_version()
            self._check_version(current)
            for version, script in migration_scripts(self.migrations_dir):
                if version <= current:
                    continue
                for statement in split_statements(script):
                    self._exec(statement)
                self._exec(
                    "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                    (version, time.time()),
                )
                applied.append(version)
        return applied

    def _check_version(self, current: int) -> None:
        if current > self.latest_version:
            raise SchemaError(
                f"the store at {self.url} has schema version {current}, but this fleetops "
                f"knows versions up to {self.latest_version}: upgrade fleetops"
            )

    # --- tasks -------------------------------------------------------------------------------

    @rerun_on_conflict
    def submit(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]:
        if not tasks:
            return []
        with self._tx():
            self._lock_keys(t.idempotency_key for t in tasks)
            return self._submit_in_tx(tasks, now)

    @rerun_on_conflict
    def submit_groups(
        self, groups: Sequence[tuple[Sequence[NewTask], float]]
    ) -> list[list[Submitted]]:
        if not any(tasks for tasks, _ in groups):
            return [[] for _ in groups]
        with self._tx():
            self._lock_keys(t.idempotency_key for tasks, _ in groups for t in tasks)
            return [self._submit_in_tx(tasks, now) if tasks else [] for tasks, now in groups]

    def _lock_keys(self, keys: Iterable[str | None]) -> None:
        """Where writers wait for each other's rows (PostgreSQL), take the idempotency
        keys a transaction inserts in one order first, when it inserts two or more: two
        transactions inserting the same keys in opposite orders each wait on the unique
        index for the other's uncommitted row, and deadlock. The tasks are still
        inserted in their own order (their ids keep it). Nothing to do on SQLite."""
        return None

    def _submit_in_tx(self, tasks: Sequence[NewTask], now: float) -> list[Submitted]:
        if all(t.idempotency_key is None for t in tasks):
            return [Submitted(i, True) for i in self._insert_many(tasks, now)]
        out = []
        for task in tasks:
            if task.idempotency_key is None:
                out.append(Submitted(self._insert_many([task], now)[0], True))
                continue
            found = None
            while True:
                rows = self._exec(INSERT_TASK_KEYED, task_params(task, now)).fetchall()
                if rows:
                    break
                found = self._exec(SELECT_BY_KEY, (task.idempotency_key,)).fetchone()
                if found is not None:
                    break
                # PostgreSQL: the task that held the key was pruned between the INSERT
                # and the SELECT; the key is free again: insert again
            if found is None:
                out.append(Submitted(int(rows[0][0]), True))
            else:
                task_id, queue, agent = found
                if (queue, agent) != (task.queue, task.agent):
                    # the same key for other work is a mistake, not a retry: answering
                    # the first task would pass it off as this one
                    raise ConfigError(
                        "idempotency_key",
                        task.idempotency_key,
                        f"it already names task {task_id} of {queue}/{agent}: use a key of "
                        f"its own for a task of {task.queue}/{task.agent}",
                    )
                out.append(Submitted(int(task_id), False))
        return out

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
        if limit <= 0 or not queues:
            return []
        agents = list(agents or [])
        params = [worker, now + lease_seconds, now, *queues, *agents, now, worker, limit]
        with self._tx():
            if max_running is not None:
                # Admission control: a cluster's quota of concurrent tasks. Excess work
                # waits in the queue.
                for queue in sorted(queues):
                    self._lock_queue(queue)
                running = sum(self.running_count(q) for q in queues)
                limit = min(limit, max_running - running)
                if limit <= 0:
                    return []
                params[-1] = limit
            kind = None if suspects is None else False
            fresh_sql = self._claim_statement(len(queues), len(agents), kind)
            wanted = min(suspects or 0, limit)
            params[-1] = limit - wanted
            rows = self._exec(fresh_sql, params).fetchall() if wanted < limit else []
            if wanted:
                # Suspects go in the queue's order too, capped, not after every fresh
                # task: behind a backlog that never empties they would never run. The
                # slots kept for them go to a suspect of a priority at least that of
                # the best fresh task still waiting (the one it would go to otherwise),
                # else to fresh tasks.
                sql = self._claim_statement(len(queues), len(agents), True)
                suspect_params = list(params)
                suspect_params[-1] = wanted
                full = len(rows) == limit - wanted  # fresh tasks may be left
                best = self._best_fresh(queues, agents, now) if full else None
                if best is not None:
                    # a bound value, placed between run_after's and NOT_DEAD_WORKER's
                    sql = sql.replace(SUSPECT_TERMS[True], SUSPECT_AT_LEAST)
                    suspect_params.insert(len(suspect_params) - 2, best)
                more = self._exec(sql, suspect_params).fetchall()
                rows += more
                if best is not None and len(more) < wanted:
                    params[-1] = wanted - len(more)
                    rows += self._exec(fresh_sql, params).fetchall()
            if not rows:
                return []
            redelivered = [r[0] for r in rows if r[6] > 1]
            journal: dict[int, dict[str, tuple[str, str | None]]] = {}
            if redelivered:
                marks = ", ".join("?" * len(redelivered))
                for task_id, key, state, result in self._exec(
                    f"SELECT task_id, key, state, result FROM effects WHERE task_id IN ({marks})",
                    redelivered,
                ).fetchall():
                    journal.setdefault(task_id, {})[key] = (state, result)
        claimed = [ClaimedTask(*r, journal=journal.get(r[0], {})) for r in rows]  # type: ignore[misc]
        claimed.sort(key=lambda t: (-t.priority, t.id))
        return claimed

    def _best_fresh(self, queues: Sequence[str], agents: Sequence[str], now: float) -> int | None:
        """The highest priority of the ready tasks of ``queues`` (and ``agents``) that
        are not suspects; None if there is none."""
        marks = ", ".join("?" * len(queues))
        only = f" AND agent IN ({', '.join('?' * len(agents))})" if agents else ""
        row = self._exec(
            f"SELECT max(priority) FROM tasks{self._indexed_by('tasks_ready')} WHERE "
            f"state = 'queued' AND queue IN ({marks}){only} AND run_after <= ? "
            f"{SUSPECT_TERMS[False]}",
            [*queues, *agents, now],
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def _claim_statement(self, n_queues: int, n_agents: int, suspect: bool | None) -> str:
        shape = (type(self), n_queues, n_agents, suspect)
        sql = _CLAIM_SQL.get(shape)
        if sql is None:
            sql = _CLAIM_SQL[shape] = self._claim_sql(n_queues, n_agents, suspect)
        return sql

    @rerun_on_conflict
    def apply(self, ops: Sequence[Operation], now: float | Callable[[], float]) -> list[OpResult]:
        """Apply ``ops`` in one transaction; answer one result per op, in their order.
        ``now`` is their time, or a clock read once the transaction has begun.

        Completes, the bulk of a group commit, are applied set-wise: a run of them
        costs one UPDATE (per :data:`BATCH_ROWS`) however long it is.
        The other ops are applied one by one, in order, as they come; a Complete is
        held back until a later op touches its task, or to the end of the batch.

        That gives the same results and the same end state as applying every op in
        order. A Complete on task X reads and writes X's row only (its successful
        attempt is recorded there). An op on another task Y reads Y's row (its
        fence), Y's effects, and tasks by idempotency key (which no Complete
        changes); it writes Y's row, Y's effects or attempts, or inserts a new
        queued task. Neither touches what the
        other reads or writes, so a Complete commutes with every op on another task.
        Ops on the same task keep their order: an op on X applies the held Completes
        first. The usual batch, EffectEnd or SubmitChild on X then Complete on X,
        needs no such flush: the fenced ops run first, while X still runs, as in order.
        """
        if not ops:
            return []
        # A Complete's result stays REJECTED unless its UPDATE matched; every other
        # op's result is set when it is applied.
        results = [REJECTED] * len(ops)
        # The Completes not applied yet, by (task id, epoch): of Completes with the same
        # key only the first can succeed (once it ran, the task no longer runs).
        held: dict[tuple[int, int], tuple[int, Complete]] = {}
        held_tasks: set[int] = set()
        with self._tx():
            self._lock_ops(ops)
            if callable(now):  # once the locks are held (the write lock, on SQLite)
                now = now()
            for i, op in enumerate(ops):
                if isinstance(op, Complete):
                    held.setdefault((op.task_id, op.epoch), (i, op))
                    held_tasks.add(op.task_id)
                    continue
                if task_of(op) in held_tasks:
                    self._complete_held(held, now, results)
                    held_tasks.clear()
                results[i] = self._apply_one(op, now)
            self._complete_held(held, now, results)
        return results

    def _complete_held(
        self,
        held: dict[tuple[int, int], tuple[int, Complete]],
        now: float,
        results: list[OpResult],
    ) -> None:
        """Apply the ``held`` Completes set-wise, mark in ``results`` (by index) those
        that succeeded, and empty ``held``. The successful attempt stays in the task's
        row (see :meth:`attempts`)."""
        for chunk in iter_chunks(list(held.values()), BATCH_ROWS):
            if len(chunk) == 1:  # the plain UPDATE: cheaper than a join on one row
                _, op = chunk[0]
                cursor = self._exec(COMPLETE, (op.result, now, op.worker, op.task_id, op.epoch))
            else:
                size = padded_size(len(chunk))
                params = [
                    v for _, op in chunk for v in (op.task_id, op.epoch, op.result, op.worker)
                ]
                params += [None, None, None, None] * (size - len(chunk))
                cursor = self._exec(complete_many_sql(size), [*params, now])
            for task_id, epoch in cursor.fetchall():
                results[held[(task_id, epoch)][0]] = OK
        held.clear()

    def _insert_attempts(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Record ended attempts: (task id, attempt, epoch, worker, started at, ended at,
        outcome, error) each; an attempt already recorded is left as it was."""
        for chunk in iter_chunks(rows, BATCH_ROWS):
            size = padded_size(len(chunk))
            params = [v for row in chunk for v in row] + list(chunk[-1]) * (size - len(chunk))
            self._exec(insert_attempts_sql(size), params)

    def _lock_ops(self, ops: Sequence[Operation]) -> None:
        """On PostgreSQL, before a group commit's ops run: the rows of the tasks they
        touch, in id order (see :meth:`_lock_in_id_order`), then the idempotency keys
        they insert (see :meth:`_lock_keys`). Every transaction takes rows before keys:
        a single row too, when keys follow it."""
        if not self._for_update_wait():
            return
        keys = [op.task.idempotency_key for op in ops if isinstance(op, SUBMITS)]
        keyed = any(k is not None for k in keys)
        tasks = (op.task_id if isinstance(op, Complete) else task_of(op) for op in ops)
        self._lock_in_id_order(tasks, even_one=keyed)
        self._lock_keys(keys)

    def _lock_in_id_order(self, task_ids: Iterable[int | None], *, even_one: bool = False) -> None:
        """On PostgreSQL, lock the rows of ``task_ids`` now, in id order, for the rest of
        the transaction: as every statement that locks many tasks takes them (see
        :meth:`cancel_many`), so that two such transactions wait for each other
        rather than deadlock. Statements that lock them later in another order (a
        group commit's ops, in the order they came) then find them held already.
        Nothing to do on SQLite, whose one writer holds the database's lock, or for
        one row (unless ``even_one``: other locks follow)."""
        if not self._for_update_wait():
            return
        ids = sorted({i for i in task_ids if i is not None})
        if len(ids) > 1 or (ids and even_one):
            self._locked(ids)

    def _locked(self, ids: Sequence[int], columns: str = "id") -> list[Sequence[Any]]:
        """PostgreSQL: lock the rows of ``ids`` (ascending) in id order; answer their
        ``columns`` as they are once locked (a row changed meanwhile is read again
        after its writer commits; a row deleted meanwhile is left out)."""
        lock = f" ORDER BY id{self._for_update_wait()}"
        return self._rows_where_in(columns, "id", ids, "TRUE", lock)

    def _rows_where_in(
        self, columns: str, column: str, values: Sequence[int], condition: str, suffix: str = ""
    ) -> list[Sequence[Any]]:
        """``columns`` of the tasks whose ``column`` is one of ``values`` and of which
        ``condition`` holds, asked :data:`BATCH_ROWS` values at a time; ``suffix``
        ends each query (an ORDER BY, a locking clause)."""
        rows: list[Sequence[Any]] = []
        for chunk in iter_chunks(values, BATCH_ROWS):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT {columns} FROM tasks WHERE {column} IN ({marks}) AND {condition}"
            rows += self._exec(sql + suffix, chunk).fetchall()
        return rows

    def _fenced(self, task_id: int, epoch: int) -> bool:
        return self._exec(self._lock_task_sql(), (task_id, epoch)).fetchone() is not None

    def _apply_one(self, op: OneByOne, now: float) -> OpResult:
        if isinstance(op, Fail):
            if op.retry_at is not None:
                params: tuple[Any, ...] = (op.retry_at, op.error, op.task_id, op.epoch)
                row = self._exec(FAIL_RETRY, params).fetchone()
            else:
                params = (op.error, op.dead_reason or op.error, now, op.task_id, op.epoch)
                row = self._exec(FAIL_DEAD, params).fetchone()
            return self._attempt_ended(
                op.task_id, op.epoch, op.worker, row, now, "failed", op.error
            )
        if isinstance(op, Release):
            row = self._exec(RELEASE, (now, op.task_id, op.epoch)).fetchone()
            return self._attempt_ended(op.task_id, op.epoch, op.worker, row, now, "released", None)
        if isinstance(op, EffectBegin):
            if not self._fenced(op.task_id, op.epoch):
                return REJECTED
            found = self._exec(SELECT_EFFECT, (op.task_id, op.key)).fetchone()
            if found is None:
                self._exec(INSERT_EFFECT, (op.task_id, op.key, op.epoch, now))
                return OpResult(True, None)
            if found[0] == "done":
                return OpResult(True, ("done", found[1]))
            self._exec(RESTART_EFFECT, (op.epoch, now, op.task_id, op.key))
            return OpResult(True, ("started", None))
        if isinstance(op, EffectEnd):
            if not self._fenced(op.task_id, op.epoch):
                return REJECTED
            self._exec(FINISH_EFFECT, (op.result, now, op.task_id, op.key))
            return OK
        if isinstance(op, SubmitChild):
            if not self._fenced(op.parent_id, op.epoch):
                return REJECTED
            return OpResult(True, self._submit_in_tx([op.task], now)[0])
        if isinstance(op, Submit):
            return OpResult(True, self._submit_in_tx([op.task], now)[0])
        raise TypeError(f"unknown store operation {op!r}")

    def _attempt_ended(
        self,
        task_id: int,
        epoch: int,
        worker: str,
        row: Any,
        now: float,
        outcome: str,
        error: str | None,
    ) -> OpResult:
        if row is None:
            return REJECTED
        self._exec(INSERT_ATTEMPT, (task_id, row[0], epoch, worker, row[1], now, outcome, error))
        return OK

    @rerun_on_conflict
    def heartbeat(
        self, worker: str, now: float, lease_seconds: float, inflight: int, processed: int
    ) -> dict[int, int] | None:
        with self._tx():
            alive = self._exec(HEARTBEAT_WORKER, (now, inflight, processed, worker)).rowcount
            if not alive:
                return None
            extend = EXTEND_LEASES_IN_ID_ORDER if self._for_update_wait() else EXTEND_LEASES
            rows = self._exec(extend, (now + lease_seconds, worker)).fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    def beat(self, worker: str, now: float, inflight: int, processed: int) -> bool:
        """Record a worker heartbeat without touching leases; False if declared dead."""
        with self._tx():
            return bool(self._exec(HEARTBEAT_WORKER, (now, inflight, processed, worker)).rowcount)

    def held_leases(self, worker: str) -> dict[int, int]:
        """{task id: epoch} of every lease ``worker`` holds (a read; takes no lock)."""
        rows = self._exec(
            "SELECT id, epoch FROM tasks WHERE lease_owner = ? AND state = 'running'", (worker,)
        ).fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    def _revoke(
        self, where: str, params: Sequence[Any], now: float, reason: str, *, wait: bool = False
    ) -> list[int]:
        lock = self._for_update_wait() if wait else self._for_update()
        owners = {
            int(r[0]): r[1]
            for r in self._exec(
                f"SELECT id, lease_owner FROM tasks WHERE {where}{lock}", params
            ).fetchall()
        }
        revoked: list[int] = []
        dead_reason = f"lost too often: {reason}"
        for chunk in iter_chunks(sorted(owners), 500):
            marks = ", ".join("?" * len(chunk))
            rows = self._exec(
                f"UPDATE tasks {REVOKE_SET} WHERE id IN ({marks}) AND state = 'running' "
                "RETURNING id, attempts, epoch, started_at",
                (dead_reason, now, *chunk),
            ).fetchall()
            ended = [
                (
                    task_id,
                    attempt,
                    epoch - 1,
                    owners[task_id],
                    started_at,
                    now,
                    "lease_lost",
                    reason,
                )
                for task_id, attempt, epoch, started_at in rows
            ]
            self._insert_attempts(ended)
            revoked.extend(int(r[0]) for r in rows)
        return sorted(revoked)

    @rerun_on_conflict
    def revoke_worker(self, worker: str, now: float, reason: str) -> list[int]:
        with self._tx():
            self._exec(MARK_WORKER, ("dead", now, worker))
            # wait for row locks: the worker is dead, so whatever it held is released as
            # soon as its connection goes; skipping them would leave leases to expire
            # in id order, as every statement that locks many tasks takes them (see
            # cancel_many): two such transactions wait for each other, never deadlock
            where = "lease_owner = ? AND state = 'running' ORDER BY id"
            return self._revoke(where, (worker,), now, reason, wait=True)

    def requeue_expired(self, now: float, limit: int = 1000) -> list[int]:
        where = "state = 'running' AND lease_expires_at < ? ORDER BY lease_expires_at LIMIT ?"
        with self._tx():
            return self._revoke(where, (now, limit), now, "lease expired")

    def cancel(self, task_id: int, now: float, reason: str = "cancelled") -> bool:
        return bool(self.cancel_tree(task_id, now, reason))

    def cancel_tree(self, task_id: int, now: float, reason: str = "cancelled") -> list[int]:
        """Cancel a queued or running task and every queued or running task it sent
        (``ctx.send``, ``ctx.call``), and theirs, down to the last generation the store
        keeps, in one transaction: work nobody waits for any more is not left to run.
        A running one is fenced off (its epoch bumped) and its attempt recorded as
        cancelled. The tree is walked through finished tasks too: a child that has
        ended may have sent tasks that have not. Answers the ids cancelled,
        ``task_id`` first and the rest in id order; [] (changing nothing) when
        ``task_id`` is not queued or running. The others' ``dead_reason`` names
        ``task_id`` and ``reason``."""
        trees = self.cancel_many([task_id], now, reason)
        return trees[0] if trees else []

    @rerun_on_conflict
    def cancel_many(
        self,
        task_ids: Sequence[int],
        now: float,
        reason: str = "cancelled",
        *,
        queued_only: bool = False,
    ) -> list[list[int]]:
        """:meth:`cancel_tree` for each of ``task_ids``, in id order, in one transaction;
        answer the tree of each one cancelled. Left out: those not queued or running
        (with ``queued_only``, not queued: a task a worker claimed meanwhile finishes),
        and those cancelled already as another's descendant.

        On PostgreSQL the rows are locked as they are read, so that a completion
        committing meanwhile is waited for and then seen (the task is not said
        cancelled), and in id order, as the other statements that lock many tasks do:
        the trees are found first without locks, then locked in one ascending pass.
        A child sent while they were locked (committed by the time its parent's lock
        was had) is found then and locked after them; its id was drawn when it was
        sent, so it may be smaller than some already locked. Only a worker that has
        claimed that child meanwhile and commits on it and on a later task of the
        tree at once can then deadlock with the cancel (milliseconds; PostgreSQL ends
        one of the two transactions, which is run again: see rerun_on_conflict)."""
        roots = sorted(set(task_ids))
        with self._tx():
            known = set(roots)
            parent_of: dict[int, int] = {}  # a root one of the others sent has one too
            frontier = roots
            while frontier:
                found = self._children(frontier)
                parent_of.update(found)
                frontier = [i for i, _ in found if i not in known]
                known.update(frontier)
            lock = self._for_update_wait()
            rows: dict[int, Sequence[Any]] = {}
            pending = sorted(known)
            while pending:
                for chunk in iter_chunks(pending, BATCH_ROWS):
                    for row in self._exec(
                        "SELECT id, state, attempts, epoch, lease_owner, started_at FROM tasks "
                        f"WHERE id IN ({', '.join('?' * len(chunk))}) ORDER BY id{lock}",
                        chunk,
                    ).fetchall():
                        rows[int(row[0])] = row
                if not lock:  # SQLite: the one writer, nothing changed since the walk
                    break
                late = [(i, p) for i, p in self._children(pending) if i not in known]
                parent_of.update(late)
                pending = sorted(i for i, _ in late)
                known.update(pending)
            sent: dict[int, list[int]] = {}
            for child, parent in parent_of.items():
                sent.setdefault(parent, []).append(child)
            wanted = ("queued",) if queued_only else ("queued", "running")
            trees: list[list[int]] = []
            taken: set[int] = set()
            for root in roots:
                row = rows.get(root)
                if row is None or row[1] not in wanted or root in taken:
                    continue
                descendants, frontier = [], sent.get(root, [])
                while frontier:
                    descendants += frontier
                    frontier = [c for p in frontier for c in sent.get(p, [])]
                open_ = sorted(
                    i
                    for i in descendants
                    if i in rows and rows[i][1] in ("queued", "running") and i not in taken
                )
                self._cancel_rows([rows[root]], now, reason)
                inherited = f"cancelled with task {root}, which it descends from: {reason}"
                self._cancel_rows([rows[i] for i in open_], now, inherited)
                taken.update([root, *open_])
                trees.append([root, *open_])
            return trees

    def _children(self, parents: Sequence[int]) -> list[tuple[int, int]]:
        """(id, parent id) of every task ``parents`` sent, read without a lock."""
        rows = self._rows_where_in("id, parent_id", "parent_id", list(parents), "TRUE")
        return [(int(child), int(parent)) for child, parent in rows]

    def _cancel_rows(self, rows: Sequence[Sequence[Any]], now: float, reason: str) -> None:
        """Cancel the queued or running tasks of ``rows`` (id, state, attempts, epoch,
        lease_owner, started_at), read and locked in this transaction: one UPDATE per
        :data:`BATCH_ROWS`, and the attempts of those that were running."""
        for chunk in iter_chunks(list(rows), BATCH_ROWS):
            ids = [r[0] for r in chunk]
            self._exec(CANCEL_IN.format(", ".join("?" * len(ids))), (now, reason, *ids))
            self._insert_attempts(
                [
                    (task_id, attempts, epoch, owner, started_at, now, "cancelled", reason)
                    for task_id, state, attempts, epoch, owner, started_at in chunk
                    if state == "running"
                ]
            )

    def retry_dead(self, task_id: int, now: float) -> bool:
        """Queue a dead letter again, to run at once with its full ``max_attempts`` and
        ``max_redeliveries``: what an operator does once the cause is fixed. Its
        attempts so far stay on record (the next is numbered after them) and so does
        its effect journal, so an effect done before it died is replayed, not run
        again. Its dead children (and theirs) are queued again with it: run again,
        it finds each child it sent by key, and a dead one would fail it the same
        way at once. False, changing nothing, when the task is not dead."""
        return bool(self.retry_dead_many([task_id], now))

    @rerun_on_conflict
    def retry_dead_many(self, task_ids: Sequence[int], now: float) -> list[int]:
        """:meth:`retry_dead` for each of ``task_ids``, in one transaction; answer those
        that were dead and are queued again, in id order (the dead children queued
        again with them are not listed). The others are left as they are.

        The trees are found first, without locks, through dead tasks: the roots and
        their dead descendants. On PostgreSQL they are then locked in id order (see
        :meth:`_lock_in_id_order`), and only what was found is queued again: a child
        that dies while the retry runs stays dead, for the next retry."""
        roots = sorted(set(task_ids))
        with self._tx():
            parent_of = self._dead_descendants(roots)
            found = sorted({*roots, *parent_of})
            locking = self._for_update_wait()
            held = {int(r[0]) for r in self._locked(found)} if locking else set(found)
            queued = [
                task_id
                for task_id in roots
                if task_id in held and self._exec(RETRY_DEAD, (now, task_id)).fetchone()
            ]
            children_of: dict[int, list[int]] = {}
            for child, parent in parent_of.items():
                children_of.setdefault(parent, []).append(child)
            generation = set(queued)
            while generation:
                children = sorted(
                    c for p in generation for c in children_of.get(p, []) if c in held
                )
                generation = set()
                for chunk in iter_chunks(children, BATCH_ROWS):
                    sql = RETRY_DEAD_IN.format(", ".join("?" * len(chunk)))
                    generation.update(int(r[0]) for r in self._exec(sql, (now, *chunk)).fetchall())
            return queued

    def _dead_descendants(self, roots: Sequence[int]) -> dict[int, int]:
        """{task: its parent} for the dead descendants of ``roots`` reached through
        dead tasks only: what :meth:`retry_dead_many` may queue again with them."""
        parent_of: dict[int, int] = {}
        parents: Sequence[int] = roots
        while parents:
            found = self._rows_where_in("id, parent_id", "parent_id", parents, "state = 'dead'")
            parent_of.update((int(c), int(p)) for c, p in found)
            parents = [int(c) for c, _ in found]
        return parent_of

    def get_task(self, task_id: int) -> TaskRecord | None:
        row = self._exec(f"SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
        return TaskRecord(*row) if row else None

    def get_tasks(self, task_ids: Sequence[int]) -> list[TaskRecord]:
        out: list[TaskRecord] = []
        ids = list(task_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = self._exec(
                f"SELECT {TASK_COLUMNS} FROM tasks WHERE id IN ({marks})", chunk
            ).fetchall()
            out.extend(TaskRecord(*r) for r in rows)
        out.sort(key=lambda t: t.id)  # PostgreSQL answers IN (...) in no set order
        return out

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
        rows = self._list(TASK_COLUMNS, state, queue, agent, limit, after_id, before_id, newest)
        return [TaskRecord(*r) for r in rows]

    def list_task_ids(
        self,
        state: str | None = None,
        queue: str | None = None,
        agent: str | None = None,
        limit: int = 100,
        after_id: int | None = None,
    ) -> list[int]:
        """:meth:`list_tasks`' ids only: for a page of tasks to act on, whose payloads
        and results (up to 2 MiB each) need not be read."""
        return [int(r[0]) for r in self._list("id", state, queue, agent, limit, after_id)]

    def _list(
        self,
        columns: str,
        state: str | None,
        queue: str | None,
        agent: str | None,
        limit: int,
        after_id: int | None,
        before_id: int | None = None,
        newest: bool = False,
    ) -> list[Any]:
        clauses: list[str] = []
        params: list[object] = []
        if state in ("dead", "cancelled"):
            # rare states, found through tasks_done, not by a scan of every task (the
            # planner matches a partial index against literal values only)
            clauses.append(f"{FINISHED} AND state = '{state}'")
            state = None
        index = None
        if state in ("queued", "running"):
            # the open tasks, through their partial indexes and then sorted: in id
            # order they come after every task ever finished, and a scan to them took
            # 0.1-0.15 s with a million finished (the dashboard asks every few seconds)
            clauses.append(f"state = '{state}'")
            index = "tasks_ready" if state == "queued" else "tasks_leases"
            state = None
        for column, value in (("state", state), ("queue", queue), ("agent", agent)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        for bound, limit_id in (("id > ?", after_id), ("id < ?", before_id)):
            if limit_id is not None:
                clauses.append(bound)
                params.append(limit_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        source = f"tasks{self._indexed_by(index)}"
        # newest first: the id index read backwards, as cheap as forwards
        order = "id DESC" if newest else "id"
        sql = f"SELECT {columns} FROM {source} {where} ORDER BY {order} LIMIT ?"
        return list(self._exec(sql, [*params, limit]).fetchall())

    def count_tasks(self, finished: bool = True) -> dict[tuple[str, str, str], int]:
        # one part per partial index (schema 5): the WHERE terms are the indexes' own
        rows = self._exec(COUNT_TASKS if finished else COUNT_OPEN).fetchall()
        return {(r[0], r[1], r[2]): int(r[3]) for r in rows}

    def attempts(self, task_id: int) -> list[AttemptRecord]:
        # ended attempts are rows of attempts, but for a success: that one is in the
        # task's own row (schema 6), with its worker in finished_by
        rows = self._exec(
            "SELECT task_id, attempt, epoch, worker, started_at, ended_at, outcome, error "
            "FROM attempts WHERE task_id = ? "
            "UNION ALL SELECT id, attempts, epoch, finished_by, started_at, finished_at, "
            "'succeeded', NULL FROM tasks "
            "WHERE id = ? AND state = 'succeeded' AND finished_by IS NOT NULL "
            "ORDER BY 2",
            (task_id, task_id),
        ).fetchall()
        return [AttemptRecord(*r) for r in rows]

    def effects(self, task_id: int) -> list[EffectRecord]:
        rows = self._exec(
            "SELECT task_id, key, state, epoch, result, executions, started_at, finished_at "
            "FROM effects WHERE task_id = ? ORDER BY started_at",
            (task_id,),
        ).fetchall()
        return [EffectRecord(*r) for r in rows]

    # --- control plane: changes (the audit log) and deployments ----------------------------

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
    ) -> int:
        with self._tx():
            row = self._exec(
                "INSERT INTO changes (at, actor, kind, subject, reason, before, after, diff) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (now, actor, kind, subject, reason, before, after, diff),
            ).fetchone()
        return int(row[0])

    def list_changes(self, limit: int = 100, after_id: int = 0) -> list[ChangeRecord]:
        rows = self._exec(
            f"SELECT {CHANGE_COLUMNS} FROM changes WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        ).fetchall()
        return [ChangeRecord(*r) for r in rows]

    def start_deployment(self, now: float, fleet: str, spec_hash: str, actor: str) -> int:
        with self._tx():
            row = self._exec(
                "INSERT INTO deployments (started_at, fleet, spec_hash, actor, state) "
                "VALUES (?, ?, ?, ?, 'running') RETURNING id",
                (now, fleet, spec_hash, actor),
            ).fetchone()
        return int(row[0])

    def finish_deployment(
        self,
        deployment_id: int,
        now: float,
        state: str,
        phases: str,
        failed_phase: str | None = None,
        error: str | None = None,
        readiness: str | None = None,
    ) -> None:
        with self._tx():
            self._exec(
                "UPDATE deployments SET finished_at = ?, state = ?, phases = ?, failed_phase = ?, "
                "error = ?, readiness = ? WHERE id = ?",
                (now, state, phases, failed_phase, error, readiness, deployment_id),
            )

    def set_deployment_readiness(self, deployment_id: int, readiness: str) -> None:
        with self._tx():
            self._exec(
                "UPDATE deployments SET readiness = ? WHERE id = ?", (readiness, deployment_id)
            )

    def list_deployments(self, limit: int = 20) -> list[DeploymentRecord]:
        rows = self._exec(
            f"SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY id DESC LIMIT ?", (limit,)
        ).fetchall()
        return [DeploymentRecord(*r) for r in rows]

    def count_dead_since(self, since: float) -> int:
        """Dead letters since ``since``: an index range per (cluster, agent), so that
        the readiness check every dashboard refresh makes reads those, not every dead
        letter kept (a month's, by default)."""
        source = f"tasks{self._indexed_by('tasks_done')}"
        total = 0
        for _, queue, agent in self._finished_groups(("dead",)):
            row = self._exec(
                f"SELECT COUNT(*) FROM {source} WHERE {FINISHED} AND state = 'dead' "
                "AND queue = ? AND agent = ? AND finished_at >= ?",
                (queue, agent, since),
            ).fetchone()
            total += int(row[0])
        return total

    @rerun_on_conflict
    def prune_tasks(
        self, finished_before: float | None, dead_before: float | None, limit: int = PRUNE_TASKS
    ) -> int:
        """Delete up to ``limit`` finished tasks with their attempts and effects, in one
        transaction; answer how many went (call again while that is ``limit``).

        Succeeded and cancelled tasks go once they finished before ``finished_before``,
        dead letters before ``dead_before`` (None keeps them), the longest finished of
        each cluster and agent first. A task whose parent may still run stays (the
        parent is queued, running, or a dead letter an operator may retry): the
        parent, run again, finds its child by key and must find its result, else it
        would send the child again and repeat its effects. So a child goes no sooner
        than its parent's own cutoff allows. Once a task is gone, its idempotency key
        is free. A dead letter an operator queues again while a prune runs stays: on
        PostgreSQL the prune locks what it read and deletes only what is as it was read.

        On SQLite the task with the largest id stays, however old: SQLite gives a new
        row the id after the largest left in the table, so deleting the newest task
        would give its id, and its epochs, to the next task submitted (see
        :meth:`_prune_below`).
        """
        cutoffs = {"succeeded": finished_before, "cancelled": finished_before, "dead": dead_before}
        # read before the write lock is taken: a group that is gone by then reads empty
        groups = [g for g in self._finished_groups() if cutoffs[g[0]] is not None]
        with self._tx():
            below = self._prune_below("tasks")
            kept = "" if below is None else "AND id < ? "
            read: dict[int, tuple[str, float]] = {}  # id: (state, finished_at)
            for state, queue, agent in groups:
                before = cutoffs[state]
                rows = self._exec(
                    f"SELECT id, finished_at FROM tasks t WHERE {FINISHED} AND state = ? "
                    f"AND queue = ? AND agent = ? AND finished_at < ? {kept}AND NOT EXISTS "
                    "(SELECT 1 FROM tasks p WHERE p.id = t.parent_id AND p.state IN ('queued', "
                    "'running', 'dead')) ORDER BY finished_at LIMIT ?",
                    (state, queue, agent, before, *_with(below, limit - len(read))),
                ).fetchall()
                read.update((int(i), (state, finished)) for i, finished in rows)
                if len(read) >= limit:
                    break
            ids = list(read)
            if ids and self._for_update_wait():
                # PostgreSQL: lock them in id order (see _lock_in_id_order) and keep those
                # that are as they were read: a dead letter an operator queued again
                # since then stays, whether it is queued, running or finished again
                now_rows = self._locked(sorted(ids), "id, state, finished_at")
                ids = [int(i) for i, st, at in now_rows if read[int(i)] == (st, at)]
            if ids:
                marks = ", ".join("?" * len(ids))
                self._exec(f"DELETE FROM effects WHERE task_id IN ({marks})", ids)
                self._exec(f"DELETE FROM attempts WHERE task_id IN ({marks})", ids)
                self._exec(f"DELETE FROM tasks WHERE id IN ({marks})", ids)
        return len(ids)

    def _finished_groups(
        self, states: Sequence[str] = ("cancelled", "dead", "succeeded")
    ) -> list[tuple[str, str, str]]:
        """The (state, queue, agent) of the finished tasks, by index seeks from one to
        the next: the next agent in the same queue, else the first of the next queue
        (a DISTINCT, or one row-value seek, reads every finished task of a group)."""
        groups: list[tuple[str, str, str]] = []
        source = f"tasks{self._indexed_by('tasks_done')}"
        for state in states:
            where = f"WHERE {FINISHED} AND state = '{state}'"
            row = self._exec(
                f"SELECT queue, agent FROM {source} {where} ORDER BY queue, agent LIMIT 1"
            ).fetchone()
            while row is not None:
                queue, agent = str(row[0]), str(row[1])
                groups.append((state, queue, agent))
                row = (
                    self._exec(
                        f"SELECT queue, agent FROM {source} {where} AND queue = ? AND agent > ? "
                        "ORDER BY agent LIMIT 1",
                        (queue, agent),
                    ).fetchone()
                    or self._exec(
                        f"SELECT queue, agent FROM {source} {where} AND queue > ? "
                        "ORDER BY queue, agent LIMIT 1",
                        (queue,),
                    ).fetchone()
                )
        return groups

    def running_count(self, queue: str) -> int:
        row = self._exec(
            "SELECT COUNT(*) FROM tasks WHERE state = 'running' AND queue = ?", (queue,)
        ).fetchone()
        return int(row[0])

    def open_count(self, queue: str) -> int:
        row = self._exec(
            "SELECT (SELECT COUNT(*) FROM tasks WHERE state = 'queued' AND queue = ?) "
            "+ (SELECT COUNT(*) FROM tasks WHERE state = 'running' AND queue = ?)",
            (queue, queue),
        ).fetchone()
        return int(row[0])

    # --- telemetry: metric snapshots and spans ---------------------------------------------

    def put_telemetry(self, worker: str, cluster: str, now: float, data: str) -> None:
        with self._tx():
            self._exec(UPSERT_TELEMETRY, (worker, cluster, now, data))

    def get_telemetry(self) -> list[tuple[str, str, float, str]]:
        """(worker, cluster, written at, snapshot JSON) of every worker ever seen."""
        rows = self._exec("SELECT worker, cluster, at, data FROM telemetry ORDER BY worker")
        return [(r[0], r[1], float(r[2]), r[3]) for r in rows.fetchall()]

    def gone_telemetry(self, before: float) -> list[tuple[str, str, float, str]]:
        """The snapshots last written before ``before`` by workers that are not running
        (nor draining): they will not be written again."""
        rows = self._exec(
            "SELECT worker, cluster, at, data FROM telemetry WHERE at < ? AND worker NOT IN "
            "(SELECT id FROM workers WHERE state IN ('running', 'draining')) ORDER BY worker",
            (before,),
        )
        return [(r[0], r[1], float(r[2]), r[3]) for r in rows.fetchall()]

    def replace_telemetry(
        self, gone: Sequence[str], rows: Sequence[tuple[str, str, float, str]]
    ) -> None:
        """In one transaction, delete the snapshots of the workers ``gone`` and write
        ``rows`` (worker, cluster, at, data) in their place."""
        with self._tx():
            for chunk in iter_chunks(list(gone), BATCH_ROWS):
                marks = ", ".join("?" * len(chunk))
                self._exec(f"DELETE FROM telemetry WHERE worker IN ({marks})", chunk)
            for worker, cluster, at, data in rows:
                self._exec(UPSERT_TELEMETRY, (worker, cluster, at, data))

    def put_spans(self, spans: Iterable[tuple[Any, ...]]) -> None:
        """Insert finished spans: (trace_id, span_id, parent_span_id, name, kind, start,
        end, status, task_id, cluster, agent, attributes JSON). ``spans`` is read once,
        row by row (it may be a generator)."""
        rows = spans if isinstance(spans, Sequence) else list(spans)
        if not rows:
            return
        with self._tx():
            self._execmany(INSERT_SPAN, rows)

    def get_spans(
        self, trace_id: str | None = None, task_id: int | None = None, limit: int = 1000
    ) -> list[tuple[Any, ...]]:
        """Spans of one trace, or of the traces one task took part in, by start time."""
        if trace_id is not None:
            return [tuple(r) for r in self._exec(SELECT_TRACE, (trace_id, limit)).fetchall()]
        return [tuple(r) for r in self._exec(SELECT_TASK_TRACES, (task_id, limit)).fetchall()]

    def prune_spans(self, before: float) -> int:
        """Delete the spans that started before ``before``, :data:`PRUNE_CHUNK` to a
        transaction (writers of new spans wait for one chunk at most, not for a day's
        worth); answer how many went."""
        return delete_in_chunks(lambda: self._prune_span_chunk(before, PRUNE_CHUNK))

    def _prune_span_chunk(self, before: float, chunk: int) -> int:
        """Delete up to ``chunk`` spans that started before ``before``, in a transaction."""
        with self._tx():
            return int(self._exec(PRUNE_SPANS, (before, chunk)).rowcount)

    # --- workers and events -------------------------------------------------------------------

    def register_worker(
        self,
        worker: str,
        cluster: str,
        pid: int | None,
        host: str | None,
        concurrency: int,
        now: float,
        bell: str | None = None,
    ) -> None:
        with self._tx():
            self._exec(UPSERT_WORKER, (worker, cluster, pid, host, now, now, concurrency, bell))

    def bells(self) -> list[tuple[str, str | None, str]]:
        """(cluster, host, bell address) of every running worker that has a doorbell."""
        return [(r[0], r[1], r[2]) for r in self._exec(SELECT_BELLS).fetchall()]

    def set_worker_state(self, worker: str, state: str, now: float) -> None:
        with self._tx():
            stopped = now if state in ("stopped", "dead") else None
            self._exec(MARK_WORKER, (state, stopped, worker))

    def list_workers(
        self,
        cluster: str | None = None,
        ids: Sequence[str] | None = None,
        live: bool = False,
    ) -> list[WorkerRecord]:
        if ids is not None:
            # by primary key: a supervisor reads its live workers every 50 ms, and the
            # table keeps a row for every worker started (until prune_workers)
            rows = []
            for chunk in iter_chunks(list(ids), BATCH_ROWS):
                marks = ", ".join("?" * len(chunk))
                rows += self._exec(
                    f"SELECT {WORKER_COLUMNS} FROM workers WHERE id IN ({marks})", chunk
                ).fetchall()
            rows.sort(key=lambda r: r[0])
            rows = [
                r
                for r in rows
                if (cluster is None or r[1] == cluster) and (not live or r[4] in LIVE_WORKER_STATES)
            ]
        else:
            where, params = [], []
            if cluster is not None:
                where.append("cluster = ?")
                params.append(cluster)
            if live:
                where.append(f"state IN ({', '.join(repr(s) for s in LIVE_WORKER_STATES)})")
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            rows = self._exec(
                f"SELECT {WORKER_COLUMNS} FROM workers{clause} ORDER BY id", params
            ).fetchall()
        return [WorkerRecord(*r) for r in rows]

    def prune_workers(self, before: float) -> int:
        """Delete the rows of workers that stopped or were declared dead before
        ``before``, :data:`PRUNE_CHUNK` to a transaction; answer how many went.

        Every start of a worker is a row of its own, so a worker restarting in a loop
        adds thousands a day. A dead worker's row refuses its claims (see
        :data:`NOT_DEAD_WORKER`); the supervisor killed it when it declared it dead,
        so by ``before`` there is nothing left to refuse.
        """

        def chunk() -> int:
            with self._tx():
                return int(
                    self._exec(
                        "DELETE FROM workers WHERE id IN (SELECT id FROM workers "
                        "WHERE state IN ('stopped', 'dead') AND stopped_at < ? LIMIT ?)",
                        (before, PRUNE_CHUNK),
                    ).rowcount
                )

        return delete_in_chunks(chunk)

    def record_event(
        self,
        kind: str,
        now: float,
        cluster: str | None = None,
        worker: str | None = None,
        task_id: int | None = None,
        data: str = "{}",
    ) -> int:
        with self._tx():
            self._lock_events()
            row = self._exec(INSERT_EVENT, (now, kind, cluster, worker, task_id, data)).fetchone()
        return int(row[0])

    def prune_events(self, before: float) -> int:
        """Delete the events recorded before ``before``, oldest first, :data:`PRUNE_CHUNK`
        to a transaction; answer how many went. Events are read in id order, which is
        the order they were recorded in, up to the first one to keep: a pass that finds
        nothing to delete reads a row or two, however many events are kept, and takes
        no write lock.

        On SQLite the event with the largest id stays, however old (see
        :meth:`_prune_below`): a reader that follows the events by id
        (``/api/v1/events?after=``) would otherwise miss the next ones, which SQLite
        would number from the start again."""

        def first(below: int | None) -> str:
            kept = "" if below is None else "WHERE id < ? "
            return f"SELECT id, at FROM events {kept}ORDER BY id LIMIT ?"

        def chunk() -> int:
            # a look before the write lock (read again under it): nothing to delete
            below = self._prune_below("events")
            oldest = self._exec(first(below), _with(below, 1)).fetchone()
            if oldest is None or oldest[1] >= before:
                return 0
            with self._tx():
                below = self._prune_below("events")
                rows = self._exec(first(below), _with(below, PRUNE_CHUNK)).fetchall()
                last = None
                for event_id, at in rows:
                    if at >= before:
                        break
                    last = event_id
                if last is None:
                    return 0
                return int(self._exec("DELETE FROM events WHERE id <= ?", (last,)).rowcount)

        return delete_in_chunks(chunk)

    def list_events(
        self,
        kind: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        *,
        cluster: str | None = None,
        newest: bool = False,
    ) -> list[EventRecord]:
        clauses: list[str] = ["id > ?"]
        params: list[object] = [after_id]
        for column, value in (("kind", kind), ("cluster", cluster)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        order = "DESC" if newest else ""
        rows = self._exec(
            "SELECT id, at, kind, cluster, worker, task_id, data FROM events "
            f"WHERE {' AND '.join(clauses)} ORDER BY id {order} LIMIT ?",
            (*params, limit),
        ).fetchall()
        if newest:
            rows.reverse()
        return [EventRecord(*r) for r in rows]


SPAN_COLUMNS = (
    "trace_id, span_id, parent_span_id, name, kind, start_time, end_time, status, "
    "task_id, cluster, agent, attributes"
)
INSERT_SPAN = (
    f"INSERT INTO spans ({SPAN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (trace_id, span_id) DO NOTHING"
)
SELECT_TRACE = f"SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id = ? ORDER BY start_time LIMIT ?"
SELECT_TASK_TRACES = (
    f"SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id IN "
    "(SELECT trace_id FROM spans WHERE task_id = ?) ORDER BY start_time LIMIT ?"
)
#: Spans deleted per transaction by :meth:`SqlStore.prune_spans`.
PRUNE_CHUNK = 10_000
#: Parameters: the time before which spans started, the chunk. The start time is indexed.
PRUNE_SPANS = (
    "DELETE FROM spans WHERE (trace_id, span_id) IN "
    "(SELECT trace_id, span_id FROM spans WHERE start_time < ? LIMIT ?)"
)
UPSERT_TELEMETRY = (
    "INSERT INTO telemetry (worker, cluster, at, data) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (worker) DO UPDATE SET cluster = excluded.cluster, "
    "at = excluded.at, data = excluded.data"
)
#: The span store's tables where it is a file of its own (SQLite).
SPAN_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spans (trace_id TEXT NOT NULL, span_id TEXT NOT NULL, "
    "parent_span_id TEXT, name TEXT NOT NULL, kind TEXT NOT NULL, start_time REAL NOT NULL, "
    "end_time REAL NOT NULL, status TEXT NOT NULL, task_id INTEGER, cluster TEXT, agent TEXT, "
    "attributes TEXT NOT NULL DEFAULT '{}', PRIMARY KEY (trace_id, span_id))",
    "CREATE INDEX IF NOT EXISTS spans_task ON spans (task_id) WHERE task_id IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS spans_start ON spans (start_time)",
)

CHANGE_COLUMNS = "id, at, actor, kind, subject, reason, before, after, diff"
DEPLOYMENT_COLUMNS = (
    "id, started_at, finished_at, fleet, spec_hash, actor, state, failed_phase, error, phases, "
    "readiness"
)


def event_data(**fields: Any) -> str:
    """Encode an event's details as compact JSON."""
    return json.dumps(fields, separators=(",", ":"), default=str)


def _with(below: int | None, *params: Any) -> tuple[Any, ...]:
    """The parameters of a prune's read: the id bound first, where there is one."""
    return params if below is None else (below, *params)


def delete_in_chunks(delete_chunk: Callable[[], int]) -> int:
    """Call ``delete_chunk`` (up to :data:`PRUNE_CHUNK` rows deleted, in a transaction
    of its own) until it deletes fewer; answer how many went in all."""
    deleted = 0
    while True:
        gone = delete_chunk()
        deleted += gone
        if gone < PRUNE_CHUNK:
            return deleted


def iter_chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
