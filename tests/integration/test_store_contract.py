"""The store contract, run against a real SQLite file and a real PostgreSQL server.

Every test here runs twice through the ``store`` fixture, once per backend, and talks
to the database for real. Times are passed explicitly (``T0`` onwards), so leases and
expiry are exact and nothing depends on the machine's clock.

The fenced-write tests compare the whole task row, its attempts, its effects and the
task counts before and after a rejected write: a stale lease holder must change nothing.
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psycopg
import pytest

from fleetops._exceptions import ConfigError, SchemaError, StoreError
from fleetops.store import (
    AttemptRecord,
    ClaimedTask,
    Complete,
    EffectBegin,
    EffectEnd,
    Fail,
    NewTask,
    Operation,
    OpResult,
    Release,
    Store,
    Submit,
    SubmitChild,
    Submitted,
    open_store,
)
from fleetops.store._open import redact
from fleetops.store._postgres import EVENTS_LOCK
from fleetops.store._sql import BATCH_ROWS
from fleetops.store._sqlite import LARGEST_TASK_ID, SqliteStore

T0 = 1_000_000.0
LEASE = 30.0


# --- helpers ---------------------------------------------------------------------------------


def new_task(queue: str = "q", agent: str = "a", **fields: Any) -> NewTask:
    return NewTask(queue=queue, agent=agent, **fields)


def submit_one(store: Store, now: float = T0, **fields: Any) -> int:
    [submitted] = store.submit([new_task(**fields)], now)
    assert submitted.created
    return submitted.id


def claim_one(
    store: Store, worker: str, now: float = T0, lease: float = LEASE, queue: str = "q"
) -> ClaimedTask:
    claimed = store.claim(worker, [queue], 1, now, lease)
    assert len(claimed) == 1, f"{worker} expected one task to claim at {now}, got {claimed}"
    return claimed[0]


def apply_one(store: Store, op: Operation, now: float = T0) -> OpResult:
    [result] = store.apply([op], now)
    return result


def snapshot(store: Store, task_id: int) -> tuple[object, ...]:
    """Everything a write on ``task_id`` could change."""
    return (
        store.get_task(task_id),
        store.attempts(task_id),
        store.effects(task_id),
        store.count_tasks(),
        store.list_tasks(limit=10_000),
    )


def raw_execute(store_url: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    """Run one statement on the database behind ``store_url``, outside any store."""
    if store_url.startswith("sqlite:///"):
        conn = sqlite3.connect(store_url.removeprefix("sqlite:///").split("?", 1)[0])
        try:
            conn.execute(sql, params)
            conn.commit()
        finally:
            conn.close()
    else:
        with psycopg.connect(store_url, autocommit=True) as pg:
            pg.execute(sql.replace("?", "%s"), params)


def running_task(store: Store, worker: str = "w1", **fields: Any) -> ClaimedTask:
    submit_one(store, **fields)
    return claim_one(store, worker)


# --- submit and idempotency ----------------------------------------------------------------


def test_submit_answers_new_ids_and_stores_every_field(store: Store) -> None:
    tasks = [
        new_task(payload='{"n": 1}', priority=2, headers='{"trace": "t1"}'),
        new_task(queue="q2", agent="b", deadline=T0 + 60, max_attempts=5, max_redeliveries=4),
        new_task(run_after=T0 + 10, idempotency_key="k-3"),
    ]
    submitted = store.submit(tasks, T0)

    assert [s.created for s in submitted] == [True, True, True]
    ids = [s.id for s in submitted]
    assert len(set(ids)) == 3 and ids == sorted(ids)
    for task_id, task in zip(ids, tasks, strict=True):
        row = store.get_task(task_id)
        assert row is not None
        assert (row.queue, row.agent, row.payload, row.priority, row.headers) == (
            task.queue,
            task.agent,
            task.payload,
            task.priority,
            task.headers,
        )
        assert (row.deadline, row.max_attempts, row.max_redeliveries) == (
            task.deadline,
            task.max_attempts,
            task.max_redeliveries,
        )
        assert row.idempotency_key == task.idempotency_key
        assert row.state == "queued"
        assert (row.epoch, row.attempts, row.failures, row.redeliveries) == (0, 0, 0, 0)
        assert (row.lease_owner, row.lease_expires_at) == (None, None)
        assert row.created_at == T0
        assert row.run_after == (task.run_after if task.run_after is not None else T0)
    assert store.submit([], T0) == []
    assert store.get_task(max(ids) + 1000) is None


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 200])
def test_a_batch_submit_answers_each_task_its_own_id(store: Store, n: int) -> None:
    """Ids come back in the order the tasks went in, across statements of many rows
    (SQLite inserts up to 64 rows a statement)."""
    store.submit([new_task(payload='"before"')], T0)
    tasks = [new_task(payload=str(i), priority=i % 3) for i in range(n)]

    ids = [s.id for s in store.submit(tasks, T0)]

    assert len(set(ids)) == n
    rows = {row.id: row for row in store.get_tasks(ids)}
    assert [(rows[i].payload, rows[i].priority) for i in ids] == [
        (t.payload, t.priority) for t in tasks
    ]
    # the tasks that exist, in id order on both stores, however they were asked for
    asked = [*reversed(ids), max(ids) + 1000, *ids[: n // 2]]
    assert [t.id for t in store.get_tasks(asked)] == sorted(ids)


def test_sqlite_refuses_a_submit_once_task_ids_run_out_of_order(sqlite_url: str) -> None:
    """SQLite's ids for new rows go up one by one only to 2**63 - 1, then come at
    random: the ids of a batch could no longer be told, so it is refused whole."""
    store = open_store(sqlite_url)
    try:
        submit_one(store)
        raw_execute(
            sqlite_url,
            "INSERT INTO tasks (id, queue, agent, payload, state, max_attempts, "
            "max_redeliveries, run_after, created_at) VALUES (?, 'q', 'a', 'null', 'queued', "
            "3, 3, 0, 0)",
            (LARGEST_TASK_ID - 2,),
        )
        with pytest.raises(StoreError, match="task ids have reached"):
            store.submit([new_task(payload=str(i)) for i in range(3)], T0)
        assert store.count_tasks() == {("q", "a", "queued"): 2}  # nothing went in
        [fits] = store.submit([new_task(payload='"last"')], T0)  # one more id in order
        assert fits.id == LARGEST_TASK_ID - 1
    finally:
        store.close()


def test_sqlite_refuses_a_submit_whose_rows_did_not_get_the_next_ids(sqlite_url: str) -> None:
    """A batch's ids are the next ones after the largest, one statement's last id
    checks it: a trigger that inserts a task of its own for each makes them
    interleave, and the batch is refused whole rather than answered wrong ids."""
    store = open_store(sqlite_url)
    try:
        raw_execute(
            sqlite_url,
            "CREATE TRIGGER twin AFTER INSERT ON tasks WHEN NEW.payload = '\"twin\"' BEGIN "
            "INSERT INTO tasks (queue, agent, payload, state, max_attempts, max_redeliveries, "
            "run_after, created_at) VALUES ('q', 'a', 'null', 'queued', 3, 3, 0, 0); END",
        )
        with pytest.raises(StoreError, match="not .* in order; nothing was submitted"):
            store.submit([new_task(payload='"twin"') for _ in range(3)], T0)
        assert store.count_tasks() == {}
    finally:
        store.close()


def test_idempotency_key_answers_the_same_task_and_inserts_once(store: Store) -> None:
    [first] = store.submit([new_task(payload='"original"', idempotency_key="once")], T0)
    before = store.get_task(first.id)

    [again] = store.submit([new_task(payload='"different"', idempotency_key="once")], T0 + 5)

    assert first.created and again == Submitted(first.id, False)
    assert store.get_task(first.id) == before, "a duplicate submit must not change the task"
    assert store.count_tasks() == {("q", "a", "queued"): 1}


def test_an_idempotency_key_of_another_cluster_or_agent_is_refused_changing_nothing(
    store: Store,
) -> None:
    """A retry of a submit sends the same task; the same key for another cluster or
    agent is a mistake, and answering the first task would pass it off as this one.
    (A different payload is still a retry: a redelivered parent may build its
    child's payload anew.)"""
    from fleetops import ConfigError

    [first] = store.submit([new_task(idempotency_key="order-7")], T0)
    for other in (
        new_task(agent="b", idempotency_key="order-7"),
        new_task("r", idempotency_key="order-7"),
    ):
        with pytest.raises(ConfigError) as refused:
            store.submit([new_task(payload='"fine"'), other], T0 + 1)
        assert refused.value.field == "idempotency_key" and refused.value.value == "order-7"
        assert f"task {first.id} of q/a" in refused.value.fix
    assert store.count_tasks() == {("q", "a", "queued"): 1}  # the batch is refused whole


def test_idempotency_within_one_batch_and_mixed_with_unkeyed(store: Store) -> None:
    answers = store.submit(
        [
            new_task(idempotency_key="k1"),
            new_task(),
            new_task(idempotency_key="k1"),
            new_task(idempotency_key="k2"),
            new_task(),
        ],
        T0,
    )

    assert [a.created for a in answers] == [True, True, False, True, True]
    assert answers[2].id == answers[0].id
    assert len({a.id for a in answers}) == 4
    assert store.count_tasks() == {("q", "a", "queued"): 4}


def test_groups_of_submits_in_one_transaction_keep_each_group_s_time_and_order(
    store: Store,
) -> None:
    answers = store.submit_groups(
        [
            ([new_task(payload="1"), new_task(payload="2")], T0),
            ([], T0 + 1),
            ([new_task(payload="3", idempotency_key="g"), new_task(payload="4")], T0 + 2),
            ([new_task(payload="5", idempotency_key="g")], T0 + 3),
        ]
    )

    first, empty, third, fourth = answers
    assert (len(first), empty, len(third)) == (2, [], 2)
    # a key seen in an earlier group of the same transaction answers that task
    assert fourth == [Submitted(third[0].id, False)]
    rows = {row.id: row for row in store.get_tasks([s.id for s in first + third])}
    assert [(rows[s.id].payload, rows[s.id].created_at) for s in first + third] == [
        ("1", T0),
        ("2", T0),
        ("3", T0 + 2),
        ("4", T0 + 2),
    ]
    assert store.count_tasks() == {("q", "a", "queued"): 4}
    assert store.submit_groups([([], T0)]) == [[]]


def test_idempotent_submit_through_apply(store: Store) -> None:
    results = store.apply(
        [Submit(new_task(idempotency_key="k")), Submit(new_task(idempotency_key="k"))], T0
    )

    assert all(r.ok for r in results)
    first, second = (r.value for r in results)
    assert isinstance(first, Submitted) and isinstance(second, Submitted)
    assert first.created and not second.created and first.id == second.id
    assert store.count_tasks() == {("q", "a", "queued"): 1}


# --- claims and leases -------------------------------------------------------------------------


def test_claim_takes_a_batch_under_a_lease(store: Store) -> None:
    ids = [s.id for s in store.submit([new_task(payload=str(i)) for i in range(5)], T0)]

    batch = store.claim("w1", ["q"], 3, T0 + 1, LEASE)

    assert [t.id for t in batch] == ids[:3]
    for task in batch:
        assert (task.epoch, task.attempt, task.failures, task.redeliveries) == (1, 1, 0, 0)
        assert task.lease_expires_at == T0 + 1 + LEASE
        assert task.journal == {}
        row = store.get_task(task.id)
        assert row is not None
        assert (row.state, row.lease_owner, row.lease_expires_at) == (
            "running",
            "w1",
            T0 + 1 + LEASE,
        )
        assert (row.epoch, row.attempts, row.started_at) == (1, 1, T0 + 1)
    assert [t.payload for t in batch] == ["0", "1", "2"]

    rest = store.claim("w2", ["q"], 3, T0 + 2, LEASE)
    assert [t.id for t in rest] == ids[3:]
    assert store.claim("w3", ["q"], 3, T0 + 3, LEASE) == []
    assert store.get_task(ids[0]).lease_owner == "w1"  # type: ignore[union-attr]
    assert store.get_task(ids[4]).lease_owner == "w2"  # type: ignore[union-attr]


def test_a_worker_declared_dead_claims_nothing(store: Store) -> None:
    for worker in ("w1", "w2"):
        store.register_worker(worker, "c", None, None, 4, T0)
    store.submit([new_task() for _ in range(3)], T0)
    store.set_worker_state("w1", "dead", T0 + 1)

    assert store.claim("w1", ["q"], 10, T0 + 2, LEASE) == []
    assert store.claim("w1", ["q"], 10, T0 + 2, LEASE, max_running=10) == []
    assert store.count_tasks() == {("q", "a", "queued"): 3}
    assert len(store.claim("w2", ["q"], 10, T0 + 3, LEASE, max_running=10)) == 3


def test_claim_with_no_room_or_no_queue_takes_nothing(store: Store) -> None:
    task_id = submit_one(store)
    before = snapshot(store, task_id)

    assert store.claim("w1", ["q"], 0, T0, LEASE) == []
    assert store.claim("w1", [], 5, T0, LEASE) == []
    assert store.claim("w1", ["other"], 5, T0, LEASE) == []
    assert snapshot(store, task_id) == before


def test_claim_order_is_priority_then_run_after_then_id(store: Store) -> None:
    spec = [  # (priority, run_after)
        (0, T0 - 1),
        (5, T0 - 1),
        (1, T0 - 1),
        (5, T0 - 9),
        (-3, T0 - 50),
        (5, T0 - 1),
        (0, T0 - 7),
    ]
    ids = [
        s.id for s in store.submit([new_task(priority=p, run_after=r) for p, r in spec], T0 - 60)
    ]

    order = [claim_one(store, "w1", now=T0).id for _ in spec]

    expected = [
        ids[i] for i in sorted(range(len(spec)), key=lambda i: (-spec[i][0], spec[i][1], i))
    ]
    assert order == expected
    assert order[:3] == [ids[3], ids[1], ids[5]]


def test_claim_batch_takes_the_highest_priorities(store: Store) -> None:
    ids = [s.id for s in store.submit([new_task(priority=p) for p in (1, 9, 3, 7, 5)], T0)]

    batch = store.claim("w1", ["q"], 3, T0, LEASE)

    assert [t.id for t in batch] == [ids[1], ids[3], ids[4]]


def test_claim_respects_run_after(store: Store) -> None:
    later = submit_one(store, run_after=T0 + 10)
    now_id = submit_one(store, priority=-5)

    assert [t.id for t in store.claim("w1", ["q"], 10, T0 + 9.5, LEASE)] == [now_id]
    assert store.claim("w1", ["q"], 10, T0 + 9.99, LEASE) == []
    assert [t.id for t in store.claim("w1", ["q"], 10, T0 + 10, LEASE)] == [later]


def test_claim_filters_by_queue_and_agent(store: Store) -> None:
    made = {
        (queue, agent): submit_one(store, queue=queue, agent=agent)
        for queue in ("red", "blue", "green")
        for agent in ("x", "y")
    }

    got = store.claim("w1", ["red"], 10, T0, LEASE, agents=["y"])
    assert [t.id for t in got] == [made["red", "y"]]
    assert (got[0].queue, got[0].agent) == ("red", "y")

    got = store.claim("w1", ["blue", "green"], 10, T0, LEASE, agents=["x"])
    assert sorted(t.id for t in got) == sorted([made["blue", "x"], made["green", "x"]])

    got = store.claim("w1", ["red", "blue"], 10, T0, LEASE)
    assert sorted(t.id for t in got) == sorted([made["red", "x"], made["blue", "y"]])

    assert [t.id for t in store.claim("w1", ["green"], 10, T0, LEASE, agents=[])] == [
        made["green", "y"]
    ]
    assert store.count_tasks() == {
        (queue, agent, "running"): 1 for queue in ("red", "blue", "green") for agent in ("x", "y")
    }


def test_epochs_strictly_grow_on_every_claim_and_revocation(store: Store) -> None:
    task_id = submit_one(store, max_redeliveries=10)
    store.register_worker("w1", "c", None, None, 1, T0)

    def epoch() -> int:
        row = store.get_task(task_id)
        assert row is not None
        return row.epoch

    seen = [epoch()]
    now = T0
    t = claim_one(store, "w1", now)
    seen.append(epoch())
    assert t.epoch == seen[-1]

    store.revoke_worker("w1", now, "suspected")
    seen.append(epoch())

    t = claim_one(store, "w2", now, lease=5)
    seen.append(epoch())
    assert t.epoch == seen[-1]

    now += 6
    assert store.requeue_expired(now) == [task_id]
    seen.append(epoch())

    t = claim_one(store, "w3", now)
    seen.append(epoch())
    assert apply_one(store, Fail(task_id, t.epoch, "boom", "w3", retry_at=now), now).ok
    assert epoch() == seen[-1], "ending an attempt does not move the epoch"

    t = claim_one(store, "w3", now)
    seen.append(epoch())
    assert apply_one(store, Release(task_id, t.epoch, "w3"), now).ok

    t = claim_one(store, "w4", now)
    seen.append(epoch())
    assert store.cancel(task_id, now)
    seen.append(epoch())

    assert all(b > a for a, b in zip(seen, seen[1:], strict=False)), seen
    assert seen[0] == 0


# --- fenced writes ---------------------------------------------------------------------------

OP_KINDS: dict[str, Callable[[int, int, str], Operation]] = {
    "complete": lambda tid, epoch, w: Complete(tid, epoch, '"late result"', w),
    "fail_retry": lambda tid, epoch, w: Fail(tid, epoch, "late error", w, retry_at=T0 + 500),
    "fail_dead": lambda tid, epoch, w: Fail(tid, epoch, "late error", w, None, "late reason"),
    "release": lambda tid, epoch, w: Release(tid, epoch, w),
    "effect_begin_started": lambda tid, epoch, w: EffectBegin(tid, epoch, "charge"),
    "effect_begin_new": lambda tid, epoch, w: EffectBegin(tid, epoch, "never-seen"),
    "effect_end": lambda tid, epoch, w: EffectEnd(tid, epoch, "charge", '"late"'),
    "submit_child": lambda tid, epoch, w: SubmitChild(
        tid, epoch, new_task(agent="child", parent_id=tid, idempotency_key=f"child-of-{tid}")
    ),
}


def _situation(store: Store, situation: str) -> tuple[int, int]:
    """Put a task where the holder w1 of epoch e1 no longer holds it; answer (id, e1).

    w1 began the effect "charge" under its lease, so a stale EffectBegin would count a
    re-execution and a stale EffectEnd would mark it done, if the fence let them through.
    """
    store.register_worker("w1", "c", None, None, 4, T0)
    held = running_task(store, "w1")
    assert apply_one(store, EffectBegin(held.id, held.epoch, "charge")) == OpResult(True, None)
    if situation == "revoked":  # requeued, nobody holds it
        assert store.revoke_worker("w1", T0 + 1, "suspected") == [held.id]
    elif situation == "expired_and_reclaimed":  # a newer holder runs it now
        assert store.requeue_expired(T0 + LEASE + 1) == [held.id]
        newer = claim_one(store, "w2", T0 + LEASE + 2)
        assert newer.epoch > held.epoch
        assert newer.journal == {"charge": ("started", None)}
    elif situation == "cancelled":
        assert store.cancel(held.id, T0 + 1, "operator said so")
    elif situation == "own_completion":  # current epoch, but the task is already done
        assert apply_one(store, Complete(held.id, held.epoch, '"done"', "w1"), T0 + 1).ok
    else:  # pragma: no cover - a typo in the parametrisation
        raise AssertionError(situation)
    return held.id, held.epoch


@pytest.mark.parametrize("kind", sorted(OP_KINDS))
@pytest.mark.parametrize(
    "situation",
    ["revoked", "expired_and_reclaimed", "cancelled", "own_completion"],
)
def test_fenced_write_without_the_lease_is_rejected_and_changes_nothing(
    store: Store, kind: str, situation: str
) -> None:
    task_id, stale_epoch = _situation(store, situation)
    before = snapshot(store, task_id)

    results = store.apply([OP_KINDS[kind](task_id, stale_epoch, "w1")], T0 + 100)

    assert results == [OpResult(False)]
    assert snapshot(store, task_id) == before


@pytest.mark.parametrize("kind", sorted(OP_KINDS))
def test_fenced_write_with_a_future_epoch_is_rejected(store: Store, kind: str) -> None:
    held = running_task(store, "w1")
    assert apply_one(store, EffectBegin(held.id, held.epoch, "charge")).ok
    before = snapshot(store, held.id)

    assert store.apply([OP_KINDS[kind](held.id, held.epoch + 1, "w1")], T0 + 1) == [OpResult(False)]
    assert snapshot(store, held.id) == before


def test_poison_task_dead_lettered_by_revocation_rejects_its_last_holder(store: Store) -> None:
    store.register_worker("w1", "c", None, None, 4, T0)
    held = running_task(store, "w1", max_redeliveries=0)
    before_revoke = store.get_task(held.id)
    assert before_revoke is not None

    assert store.revoke_worker("w1", T0 + 1, "poison") == [held.id]

    row = store.get_task(held.id)
    assert row is not None
    assert (row.state, row.redeliveries, row.epoch) == ("dead", 1, held.epoch + 1)
    assert row.dead_reason and "poison" in row.dead_reason
    assert row.finished_at == T0 + 1
    before = snapshot(store, held.id)
    for kind in sorted(OP_KINDS):
        assert apply_one(store, OP_KINDS[kind](held.id, held.epoch, "w1"), T0 + 2) == OpResult(
            False
        ), kind
        assert snapshot(store, held.id) == before, kind
    assert store.claim("w2", ["q"], 10, T0 + 3, LEASE) == []


def test_a_rejected_write_does_not_spoil_its_batch(store: Store) -> None:
    stale_id, stale_epoch = _situation(store, "expired_and_reclaimed")
    other = running_task(store, "w3")
    stale_before = snapshot(store, stale_id)

    results = store.apply(
        [
            Complete(stale_id, stale_epoch, '"late"', "w1"),
            EffectBegin(other.id, other.epoch, "mail"),
            SubmitChild(stale_id, stale_epoch, new_task(agent="child", parent_id=stale_id)),
            Complete(other.id, other.epoch, '"ok"', "w3"),
        ],
        T0 + 100,
    )

    assert [r.ok for r in results] == [False, True, False, True]
    assert snapshot(store, stale_id)[:3] == stale_before[:3]
    row = store.get_task(other.id)
    assert row is not None and (row.state, row.result) == ("succeeded", '"ok"')
    assert [e.key for e in store.effects(other.id)] == ["mail"]
    assert store.list_tasks(agent="child") == []


def test_a_batch_of_completes_answers_each_in_order(store: Store) -> None:
    """Completes are applied together; each answers for itself and the stale change nothing."""
    revoked_id, revoked_epoch = _situation(store, "revoked")
    store.submit([new_task(queue="q2") for _ in range(4)], T0)
    a, b, c, done = store.claim("w2", ["q2"], 4, T0, LEASE)
    assert apply_one(store, Complete(done.id, done.epoch, '"first"', "w2"), T0 + 1).ok
    stale_before = [snapshot(store, t)[:3] for t in (revoked_id, done.id)]

    results = store.apply(
        [
            Complete(a.id, a.epoch, '"a"', "w2"),
            Complete(revoked_id, revoked_epoch, '"late"', "w1"),
            Complete(b.id, b.epoch + 1, '"future"', "w2"),
            Complete(c.id, c.epoch, '"c"', "w3"),
            Complete(done.id, done.epoch, '"again"', "w2"),
            Complete(b.id, b.epoch, '"b"', "w2"),
            Complete(a.id, a.epoch, '"a twice"', "w2"),
            Complete(task_id=10_000, epoch=1, result='"nobody"', worker="w2"),
        ],
        T0 + 5,
    )

    assert results == [OpResult(ok) for ok in (True, False, False, True, False, True, False, False)]
    for task, result, worker in ((a, '"a"', "w2"), (b, '"b"', "w2"), (c, '"c"', "w3")):
        row = store.get_task(task.id)
        assert row is not None
        assert (row.state, row.result, row.finished_at, row.lease_owner) == (
            "succeeded",
            result,
            T0 + 5,
            None,
        )
        assert store.attempts(task.id) == [
            AttemptRecord(task.id, 1, task.epoch, worker, T0, T0 + 5, "succeeded", None)
        ]
    assert [snapshot(store, t)[:3] for t in (revoked_id, done.id)] == stale_before
    assert store.get_task(10_000) is None


def test_a_batch_of_completes_longer_than_one_statement(store: Store) -> None:
    n = 2 * BATCH_ROWS + 7
    store.submit([new_task(payload=str(i)) for i in range(n)], T0)
    held = store.claim("w1", ["q"], n, T0, LEASE)
    assert len(held) == n
    stale = {held[i].id for i in (0, BATCH_ROWS - 1, BATCH_ROWS, n - 1)}
    ops = [
        Complete(t.id, t.epoch + 1 if t.id in stale else t.epoch, f'"r{t.id}"', "w1") for t in held
    ]

    results = store.apply(ops, T0 + 1)

    assert results == [OpResult(t.id not in stale) for t in held]
    rows = {row.id: row for row in store.get_tasks([t.id for t in held])}
    for t in held:
        row = rows[t.id]
        if t.id in stale:
            assert (row.state, row.result, row.lease_owner) == ("running", None, "w1")
            assert store.attempts(t.id) == []
        else:
            assert (row.state, row.result) == ("succeeded", f'"r{t.id}"')
    assert store.count_tasks() == {("q", "a", "succeeded"): n - 4, ("q", "a", "running"): 4}
    assert store.attempts(held[1].id) == [
        AttemptRecord(held[1].id, 1, held[1].epoch, "w1", T0, T0 + 1, "succeeded", None)
    ]
    assert store.attempts(held[-2].id)[0].outcome == "succeeded"


def test_ops_on_a_task_keep_their_order_around_its_complete(store: Store) -> None:
    """A task's fenced ops see it running before its Complete and finished after it."""
    store.submit([new_task() for _ in range(3)], T0)
    x, y, z = store.claim("w1", ["q"], 3, T0, LEASE)
    for task in (x, y):
        assert apply_one(store, EffectBegin(task.id, task.epoch, "charge")).ok
    child = new_task(agent="child", parent_id=x.id, idempotency_key="x/0")
    late_child = new_task(agent="child", parent_id=x.id, idempotency_key="x/1")

    results = store.apply(
        [
            EffectEnd(x.id, x.epoch, "charge", '"paid"'),
            SubmitChild(x.id, x.epoch, child),
            Complete(y.id, y.epoch, '"y"', "w1"),
            Fail(z.id, z.epoch, "boom", "w1", retry_at=T0 + 60),
            Complete(x.id, x.epoch, '"x"', "w1"),
            Complete(z.id, z.epoch, '"z"', "w1"),
            EffectEnd(y.id, y.epoch, "charge", '"too late"'),
            Submit(new_task(agent="other")),
            SubmitChild(x.id, x.epoch, late_child),
            Release(x.id, x.epoch, "w1"),
        ],
        T0 + 1,
    )

    assert [r.ok for r in results] == [True] * 5 + [False, False, True, False, False]
    assert isinstance(results[1].value, Submitted) and results[1].value.created
    assert isinstance(results[7].value, Submitted) and results[7].value.created
    assert [(e.state, e.result) for e in store.effects(x.id)] == [("done", '"paid"')]
    assert [(e.state, e.result) for e in store.effects(y.id)] == [("started", None)]
    assert [t.id for t in store.list_tasks(agent="child")] == [results[1].value.id]
    states = {t.id: (t.state, t.result) for t in store.get_tasks([x.id, y.id, z.id])}
    assert states == {
        x.id: ("succeeded", '"x"'),
        y.id: ("succeeded", '"y"'),
        z.id: ("queued", None),
    }
    assert [a.outcome for a in store.attempts(x.id)] == ["succeeded"]
    assert [a.outcome for a in store.attempts(z.id)] == ["failed"]


def test_submit_child_under_the_lease(store: Store) -> None:
    parent = running_task(store, "w1")
    child = new_task(agent="child", parent_id=parent.id, idempotency_key="p/0")

    first = apply_one(store, SubmitChild(parent.id, parent.epoch, child), T0 + 1)
    again = apply_one(store, SubmitChild(parent.id, parent.epoch, child), T0 + 2)

    assert first.ok and again.ok
    assert isinstance(first.value, Submitted) and isinstance(again.value, Submitted)
    assert first.value.created and again.value == Submitted(first.value.id, False)
    row = store.get_task(first.value.id)
    assert row is not None
    assert (row.parent_id, row.agent, row.state, row.created_at) == (
        parent.id,
        "child",
        "queued",
        T0 + 1,
    )


# --- ending attempts ---------------------------------------------------------------------------


def test_complete_records_the_result(store: Store) -> None:
    held = running_task(store, "w1")

    assert apply_one(store, Complete(held.id, held.epoch, '{"answer": 42}', "w1"), T0 + 3).ok

    row = store.get_task(held.id)
    assert row is not None
    assert (row.state, row.result, row.error, row.finished_at) == (
        "succeeded",
        '{"answer": 42}',
        None,
        T0 + 3,
    )
    assert (row.lease_owner, row.lease_expires_at, row.epoch) == (None, None, held.epoch)
    assert store.attempts(held.id) == [
        AttemptRecord(held.id, 1, held.epoch, "w1", T0, T0 + 3, "succeeded", None)
    ]


def test_a_clock_given_as_now_is_read_once_inside_the_transaction(store: Store) -> None:
    held = running_task(store, "w1")
    reads: list[float] = []

    def clock() -> float:
        reads.append(T0 + 4)
        return T0 + 4

    assert store.apply([Complete(held.id, held.epoch, "1", "w1")], clock) == [OpResult(True)]
    assert reads == [T0 + 4]
    row = store.get_task(held.id)
    assert row is not None and row.finished_at == T0 + 4
    assert [a.ended_at for a in store.attempts(held.id)] == [T0 + 4]


def test_sqlite_stamps_a_completion_after_waiting_for_the_write_lock(sqlite_url: str) -> None:
    """The group commit passes its clock: a completion that waited for another
    process's write lock is stamped when it got the lock, not when it began to wait."""
    store = open_store(sqlite_url)
    try:
        held = running_task(store, "w1")
        path = sqlite_url.removeprefix("sqlite:///").split("?", 1)[0]
        other = sqlite3.connect(path, check_same_thread=False)
        other.isolation_level = None
        other.execute("BEGIN IMMEDIATE")
        released: list[float] = []

        def release() -> None:
            time.sleep(0.3)
            released.append(time.time())
            other.execute("COMMIT")

        thread = threading.Thread(target=release)
        asked = time.time()
        thread.start()
        assert store.apply([Complete(held.id, held.epoch, "1", "w1")], time.time) == [
            OpResult(True)
        ]
        thread.join()
        other.close()
        row = store.get_task(held.id)
        assert row is not None and row.finished_at is not None
        assert row.finished_at >= released[0] > asked + 0.25
    finally:
        store.close()


def test_fail_with_retry_at_requeues_and_counts_a_failure(store: Store) -> None:
    held = running_task(store, "w1")

    assert apply_one(store, Fail(held.id, held.epoch, "boom", "w1", retry_at=T0 + 20), T0 + 2).ok

    row = store.get_task(held.id)
    assert row is not None
    assert (row.state, row.failures, row.error, row.run_after) == ("queued", 1, "boom", T0 + 20)
    assert (row.lease_owner, row.lease_expires_at, row.finished_at) == (None, None, None)
    assert row.dead_reason is None
    assert store.attempts(held.id) == [
        AttemptRecord(held.id, 1, held.epoch, "w1", T0, T0 + 2, "failed", "boom")
    ]
    assert store.claim("w2", ["q"], 1, T0 + 19.9, LEASE) == []
    retried = claim_one(store, "w2", T0 + 20)
    assert (retried.id, retried.attempt, retried.failures) == (held.id, 2, 1)
    assert retried.epoch == held.epoch + 1


def test_fail_without_retry_at_dead_letters_with_the_reason(store: Store) -> None:
    held = running_task(store, "w1")
    other = running_task(store, "w1")

    assert apply_one(store, Fail(held.id, held.epoch, "boom", "w1", None, "gave up"), T0 + 2).ok
    assert apply_one(store, Fail(other.id, other.epoch, "bang", "w1", None), T0 + 3).ok

    row = store.get_task(held.id)
    assert row is not None
    assert (row.state, row.failures, row.error, row.dead_reason, row.finished_at) == (
        "dead",
        1,
        "boom",
        "gave up",
        T0 + 2,
    )
    assert (row.lease_owner, row.lease_expires_at) == (None, None)
    other_row = store.get_task(other.id)
    assert other_row is not None and other_row.dead_reason == "bang"
    assert store.claim("w2", ["q"], 10, T0 + 1000, LEASE) == []
    assert [a.outcome for a in store.attempts(held.id)] == ["failed"]


def test_release_requeues_without_counting_a_failure(store: Store) -> None:
    held = running_task(store, "w1")

    assert apply_one(store, Release(held.id, held.epoch, "w1"), T0 + 4).ok

    row = store.get_task(held.id)
    assert row is not None
    assert (row.state, row.failures, row.redeliveries, row.lease_owner) == ("queued", 0, 0, None)
    assert store.attempts(held.id) == [
        AttemptRecord(held.id, 1, held.epoch, "w1", T0, T0 + 4, "released", None)
    ]
    again = claim_one(store, "w2", T0 + 4)
    assert (again.id, again.attempt, again.failures) == (held.id, 2, 0)


# --- cancel --------------------------------------------------------------------------------


def test_cancel_a_queued_task(store: Store) -> None:
    task_id = submit_one(store)

    assert store.cancel(task_id, T0 + 1, "not needed")

    row = store.get_task(task_id)
    assert row is not None
    assert (row.state, row.dead_reason, row.finished_at) == ("cancelled", "not needed", T0 + 1)
    assert row.epoch == 1
    assert store.claim("w1", ["q"], 10, T0 + 2, LEASE) == []
    assert store.attempts(task_id) == []
    before = snapshot(store, task_id)
    assert not store.cancel(task_id, T0 + 3)
    assert not store.cancel(task_id + 1000, T0 + 3)
    assert snapshot(store, task_id) == before


def test_cancel_a_running_task_fences_off_its_holder(store: Store) -> None:
    store.register_worker("w1", "c", None, None, 4, T0)
    held = running_task(store, "w1")

    assert store.cancel(held.id, T0 + 5, "operator")

    row = store.get_task(held.id)
    assert row is not None
    assert (row.state, row.epoch, row.lease_owner, row.lease_expires_at) == (
        "cancelled",
        held.epoch + 1,
        None,
        None,
    )
    assert store.attempts(held.id) == [
        AttemptRecord(held.id, 1, held.epoch, "w1", T0, T0 + 5, "cancelled", "operator")
    ]
    assert store.heartbeat("w1", T0 + 6, LEASE, 1, 0) == {}
    before = snapshot(store, held.id)
    for kind in sorted(OP_KINDS):
        assert apply_one(store, OP_KINDS[kind](held.id, held.epoch, "w1"), T0 + 7) == OpResult(
            False
        ), kind
    assert snapshot(store, held.id) == before
    assert store.requeue_expired(T0 + 10_000) == []
    assert snapshot(store, held.id) == before


@pytest.mark.parametrize("ending", ["succeeded", "dead"])
def test_cancel_of_a_finished_task_changes_nothing(store: Store, ending: str) -> None:
    held = running_task(store, "w1")
    op: Operation = (
        Complete(held.id, held.epoch, "1", "w1")
        if ending == "succeeded"
        else Fail(held.id, held.epoch, "x", "w1", None)
    )
    assert apply_one(store, op).ok
    before = snapshot(store, held.id)

    assert not store.cancel(held.id, T0 + 1)
    assert snapshot(store, held.id) == before


def test_cancel_takes_every_open_task_a_task_sent_with_it_and_nothing_else(store: Store) -> None:
    """A task cancelled while the tasks it sent wait or run (ctx.call, ctx.send): they
    go with it, every generation, reached through a child that has finished too. Its
    finished children, a task of another tree and a child cancelled alone (whose
    parent stays) are not touched."""

    def child_of(parent: int, now: float = T0) -> int:
        return submit_one(store, now, parent_id=parent)

    root = running_task(store, "w1").id
    running = child_of(root)
    held = claim_one(store, "w2")
    succeeded = child_of(root)
    done = claim_one(store, "w3")
    assert apply_one(store, Complete(done.id, done.epoch, '"ok"', "w3")).ok
    dead = child_of(root)
    failed = claim_one(store, "w3")
    assert apply_one(store, Fail(failed.id, failed.epoch, "boom", "w3", None, "gave up")).ok
    queued = child_of(root)
    grandchild = child_of(queued)
    through_finished = child_of(succeeded)
    stranger = submit_one(store)
    strangers_child = child_of(stranger)
    assert (held.id, done.id, failed.id) == (running, succeeded, dead)
    untouched = {i: snapshot(store, i)[:3] for i in (succeeded, dead, stranger, strangers_child)}

    # a finished task is not cancelled, and neither is what it sent
    assert store.cancel_tree(succeeded, T0 + 2, "operator") == []
    assert store.get_task(through_finished).state == "queued"  # type: ignore[union-attr]

    cancelled = store.cancel_tree(root, T0 + 5, "operator")

    assert cancelled == [root, *sorted([running, queued, grandchild, through_finished])]
    rows = {r.id: r for r in store.get_tasks(cancelled)}
    assert {i: (r.state, r.finished_at) for i, r in rows.items()} == {
        i: ("cancelled", T0 + 5) for i in cancelled
    }
    assert rows[root].dead_reason == "operator"
    inherited = f"cancelled with task {root}, which it descends from: operator"
    assert {rows[i].dead_reason for i in cancelled[1:]} == {inherited}
    # the running child's holder is fenced off, and its attempt says why it ended
    assert rows[running].epoch == held.epoch + 1
    assert apply_one(store, Complete(running, held.epoch, '"late"', "w2"), T0 + 6) == OpResult(
        False
    )
    assert store.attempts(running) == [
        AttemptRecord(running, 1, held.epoch, "w2", T0, T0 + 5, "cancelled", inherited)
    ]
    assert {i: snapshot(store, i)[:3] for i in untouched} == untouched
    assert store.cancel_tree(root, T0 + 7) == []

    # a child cancelled alone leaves its parent (and its siblings) running or queued
    parent = submit_one(store)
    first, second = child_of(parent), child_of(parent)
    assert store.cancel(first, T0 + 8)
    assert [r.state for r in store.get_tasks([parent, first, second])] == [
        "queued",
        "cancelled",
        "queued",
    ]


def test_cancel_many_cancels_each_tree_once_in_id_order(store: Store) -> None:
    """A list holding a task and its own child, a running task, a finished one and an
    unknown id: each open one is cancelled with what it sent, once; the rest stay."""
    first = submit_one(store)
    child = submit_one(store, parent_id=first)
    grandchild = submit_one(store, parent_id=child)
    running = claim_one(store, "w1")  # the oldest queued: first
    assert running.id == first
    done = _finish(store, "succeeded", T0 + 1, "other")
    alone = submit_one(store, queue="other")
    before = snapshot(store, done)[:3]

    trees = store.cancel_many([done, grandchild, alone, child, first, LARGEST_TASK_ID], T0 + 5)

    assert trees == [[first, child, grandchild], [alone]]
    states = {r.id: r.state for r in store.get_tasks([first, child, grandchild, alone])}
    assert set(states.values()) == {"cancelled"}
    assert snapshot(store, done)[:3] == before
    assert store.cancel_many([first, alone], T0 + 6) == []

    # queued only: a task claimed since it was listed as queued is left to run
    listed = [submit_one(store, T0 + 7, queue="z") for _ in range(3)]
    claimed = claim_one(store, "w2", T0 + 8, queue="z")
    assert claimed.id == listed[0]
    assert store.cancel_many(listed, T0 + 9, queued_only=True) == [[i] for i in listed[1:]]
    assert [r.state for r in store.get_tasks(listed)] == ["running", "cancelled", "cancelled"]


# --- workers: revocation, expiry, heartbeats -----------------------------------------------


def test_retry_dead_queues_a_dead_letter_again_keeping_its_attempts_and_journal(
    store: Store,
) -> None:
    held = running_task(store, "w1", max_attempts=2)
    assert apply_one(store, EffectBegin(held.id, held.epoch, "pay"), T0 + 1).ok
    assert apply_one(store, EffectEnd(held.id, held.epoch, "pay", '"receipt"'), T0 + 1).ok
    assert apply_one(store, Fail(held.id, held.epoch, "boom", "w1", None, "gave up"), T0 + 2).ok
    queued = submit_one(store, queue="other")
    submit_one(store, queue="busy")
    others = [queued, claim_one(store, "w1", queue="busy").id]

    assert store.retry_dead(held.id, T0 + 100)

    row = store.get_task(held.id)
    assert row is not None
    assert (row.state, row.failures, row.redeliveries, row.run_after) == ("queued", 0, 0, T0 + 100)
    assert (row.finished_at, row.dead_reason, row.error) == (None, None, "boom")
    assert store.claim("w2", ["q"], 1, T0 + 99, LEASE) == []  # not before it was queued
    again = claim_one(store, "w2", T0 + 100)
    assert (again.id, again.attempt, again.failures) == (held.id, 2, 0)
    assert again.epoch > held.epoch
    assert again.journal == {"pay": ("done", '"receipt"')}  # replayed, not run again
    assert apply_one(store, Complete(held.id, again.epoch, "1", "w2"), T0 + 101).ok
    assert [a.outcome for a in store.attempts(held.id)] == ["failed", "succeeded"]

    # only a dead letter: anything else is left as it is
    for task_id in [held.id, *others, 999_999]:
        before = store.get_task(task_id)
        assert not store.retry_dead(task_id, T0 + 200)
        assert store.get_task(task_id) == before


def test_retry_dead_queues_the_dead_children_of_the_dead_letter_again_with_it(
    store: Store,
) -> None:
    """Run again, the parent finds each child it sent by key: a dead one would fail it
    again at once, so the dead children and grandchildren are queued with it; a
    child that succeeded keeps its result, and another parent's children stay."""

    def dead(queue: str, parent: int | None) -> int:
        task_id = submit_one(store, queue=queue, parent_id=parent)
        held = claim_one(store, "w1", queue=queue)
        assert apply_one(store, Fail(task_id, held.epoch, "bug", "w1", None, "bug"), T0 + 1).ok
        return task_id

    parent = dead("p", None)
    child = dead("c", parent)
    grandchild = dead("g", child)
    fine = _finish(store, "succeeded", T0 + 1, "c", parent_id=parent)
    stranger = dead("s", dead("o", None))

    assert store.retry_dead(parent, T0 + 100)

    states = {t.id: t.state for t in store.get_tasks([parent, child, grandchild, fine, stranger])}
    assert states == {
        parent: "queued",
        child: "queued",
        grandchild: "queued",
        fine: "succeeded",
        stranger: "dead",
    }
    assert not store.retry_dead(child, T0 + 101)  # queued now: not a dead letter


def test_retry_dead_many_queues_the_dead_ones_of_a_list_and_their_dead_children(
    store: Store,
) -> None:
    """Many dead letters at once, more than one statement's rows (BATCH_ROWS): each is
    queued again with its dead children as retry_dead would; the ids not dead (queued,
    unknown, given twice) are answered only once or not at all and left as they are."""
    n = BATCH_ROWS + 10
    store.submit([new_task() for _ in range(n)], T0)
    held = store.claim("w1", ["q"], n, T0, LEASE)
    assert len(held) == n
    results = store.apply([Fail(t.id, t.epoch, "bug", "w1", None, "bug") for t in held], T0 + 1)
    assert all(r.ok for r in results)
    letters = sorted(t.id for t in held)
    # the last letter, in the second chunk of parents, has a dead child
    child = submit_one(store, T0 + 2, queue="c", parent_id=letters[-1])
    taken = claim_one(store, "w1", T0 + 2, queue="c")
    assert apply_one(store, Fail(child, taken.epoch, "bug", "w1", None, "bug"), T0 + 3).ok
    waiting = submit_one(store, T0 + 4, queue="other")
    before = snapshot(store, waiting)[:3]

    asked = [waiting, *reversed(letters), letters[0], LARGEST_TASK_ID]
    assert store.retry_dead_many(asked, T0 + 100) == letters

    rows = store.get_tasks([*letters, child])
    assert {(r.state, r.failures, r.dead_reason) for r in rows} == {("queued", 0, None)}
    assert snapshot(store, waiting)[:3] == before
    assert store.retry_dead_many(letters, T0 + 101) == []  # queued now: none is dead


def test_a_claim_takes_no_more_suspects_than_it_is_allowed(store: Store) -> None:
    """A task on SUSPECT_REDELIVERIES dead workers is a suspect: a claim takes at most
    ``suspects`` of them, any with None."""
    from fleetops.store._sql import SUSPECT_REDELIVERIES

    suspects = [submit_one(store, T0) for _ in range(3)]
    for death in range(SUSPECT_REDELIVERIES):  # each on a worker that then dies
        worker = f"doomed-{death}"
        store.register_worker(worker, "c", 100, "host", 8, T0)
        assert len(store.claim(worker, ["q"], 10, T0, LEASE)) == 3
        assert sorted(store.revoke_worker(worker, T0, "exited")) == suspects
    fresh = [submit_one(store, T0 + 1) for _ in range(3)]
    for worker in ("wa", "wb", "wc"):
        store.register_worker(worker, "c", 100, "host", 8, T0)

    first = store.claim("wa", ["q"], 10, T0 + 2, LEASE, suspects=1)
    assert sorted(t.id for t in first) == sorted([*fresh, suspects[0]])
    assert [t.redeliveries for t in first if t.id == suspects[0]] == [SUSPECT_REDELIVERIES]
    assert store.claim("wb", ["q"], 10, T0 + 2, LEASE, suspects=0) == []
    assert [t.id for t in store.claim("wb", ["q"], 1, T0 + 2, LEASE, suspects=5)] == [suspects[1]]
    assert [t.id for t in store.claim("wc", ["q"], 10, T0 + 2, LEASE)] == [suspects[2]]


def _a_suspect(store: Store, **fields: Any) -> int:
    """A queued task that has been on SUSPECT_REDELIVERIES workers that died (claimed
    at T0, before which the other tasks of these tests are not due)."""
    from fleetops.store._sql import SUSPECT_REDELIVERIES

    task_id = submit_one(store, T0, queue="s", **fields)
    for death in range(SUSPECT_REDELIVERIES):
        worker = f"doomed-{task_id}-{death}"
        store.register_worker(worker, "c", 100, "host", 8, T0)
        assert [t.id for t in store.claim(worker, ["s"], 10, T0, LEASE)] == [task_id]
        assert store.revoke_worker(worker, T0, "exited") == [task_id]
    return task_id


def test_a_suspect_is_claimed_ahead_of_a_backlog_it_came_before(store: Store) -> None:
    """A backlog larger than any claim: a claim that may take a suspect keeps a slot
    for it, instead of taking suspects after every fresh task (behind a backlog that
    never empties, never). The slot goes to a suspect of a priority at least that of
    the best fresh task still waiting, the one it would go to otherwise; else to that
    fresh task. A suspect never goes ahead of fresher work of a higher priority."""
    suspect = _a_suspect(store)
    backlog = [submit_one(store, T0 + 1, queue="s") for _ in range(6)]
    store.register_worker("w", "c", 100, "host", 8, T0)
    first = store.claim("w", ["s"], 3, T0 + 2, LEASE, suspects=1)
    assert sorted(t.id for t in first) == sorted([suspect, *backlog[:2]])
    # no suspect left: its slot goes to the backlog
    assert [t.id for t in store.claim("w", ["s"], 3, T0 + 2, LEASE, suspects=1)] == backlog[2:5]

    # a suspect of a lower priority than the fresh work waits for it, as any task would
    low = _a_suspect(store, priority=-1)
    urgent = [submit_one(store, T0 + 3, queue="s", priority=5) for _ in range(3)]
    claimed = store.claim("w", ["s"], 3, T0 + 3, LEASE, suspects=1)
    assert sorted(t.id for t in claimed) == sorted(urgent)
    # a claim of one slot too
    urgent_one = submit_one(store, T0 + 4, queue="s", priority=5)
    assert [t.id for t in store.claim("w", ["s"], 1, T0 + 4, LEASE, suspects=1)] == [urgent_one]
    # once no fresh task of a higher priority waits, the suspect's slot is its own
    claimed = store.claim("w", ["s"], 2, T0 + 4, LEASE, suspects=1)
    assert sorted(t.id for t in claimed) == sorted([backlog[5], low])

    # the floor is the best fresh task still waiting, not the best one claimed: a
    # priority-10 task claimed with a priority-5 suspect, ahead of priority-1 tasks
    middle = _a_suspect(store, priority=5)
    top = submit_one(store, T0 + 5, queue="s", priority=10)
    ones = [submit_one(store, T0 + 5, queue="s", priority=1) for _ in range(3)]
    claimed = store.claim("w", ["s"], 2, T0 + 5, LEASE, suspects=1)
    assert sorted(t.id for t in claimed) == sorted([top, middle])
    assert [t.id for t in store.claim("w", ["s"], 5, T0 + 5, LEASE, suspects=1)] == ones


def test_revoke_worker_requeues_every_lease_it_holds(store: Store) -> None:
    for worker in ("w1", "w2"):
        store.register_worker(worker, "c", 100, "host", 8, T0)
    store.submit([new_task() for _ in range(4)], T0)
    mine = store.claim("w1", ["q"], 3, T0, LEASE)
    theirs = claim_one(store, "w2", T0)
    done = mine[0]
    assert apply_one(store, Complete(done.id, done.epoch, "1", "w1"), T0 + 1).ok
    theirs_before = snapshot(store, theirs.id)[:3]
    done_before = snapshot(store, done.id)[:3]

    revoked = store.revoke_worker("w1", T0 + 2, "phi 9.1 over 8")

    assert revoked == sorted(t.id for t in mine[1:])
    for task in mine[1:]:
        row = store.get_task(task.id)
        assert row is not None
        assert (row.state, row.epoch, row.redeliveries, row.failures) == (
            "queued",
            task.epoch + 1,
            1,
            0,
        )
        assert (row.lease_owner, row.lease_expires_at) == (None, None)
        assert row.run_after <= T0 + 2
        assert store.attempts(task.id) == [
            AttemptRecord(task.id, 1, task.epoch, "w1", T0, T0 + 2, "lease_lost", "phi 9.1 over 8")
        ]
    assert snapshot(store, theirs.id)[:3] == theirs_before
    assert snapshot(store, done.id)[:3] == done_before
    w1 = next(w for w in store.list_workers() if w.id == "w1")
    assert (w1.state, w1.stopped_at) == ("dead", T0 + 2)
    assert store.heartbeat("w1", T0 + 3, LEASE, 0, 0) is None
    assert store.heartbeat("w2", T0 + 3, LEASE, 1, 0) == {theirs.id: theirs.epoch}
    again = store.claim("w3", ["q"], 10, T0 + 3, LEASE)
    assert sorted(t.id for t in again) == revoked
    assert all(t.redeliveries == 1 and t.attempt == 2 for t in again)
    assert store.revoke_worker("w1", T0 + 4, "again") == []


def test_requeue_expired_takes_only_leases_whose_expiry_passed(store: Store) -> None:
    store.register_worker("w1", "c", None, None, 8, T0)
    store.submit([new_task() for _ in range(5)], T0)
    early = store.claim("w1", ["q"], 2, T0, 10)  # expire at T0 + 10
    late = store.claim("w2", ["q"], 2, T0 + 5, 10)  # expire at T0 + 15
    kept = claim_one(store, "w1", T0 + 1, lease=10)  # extended below
    assert store.heartbeat("w1", T0 + 9, 20, 3, 0) is not None  # w1's leases: T0 + 29
    late_before = [snapshot(store, t.id)[:3] for t in late]

    assert store.requeue_expired(T0 + 14) == []
    assert store.requeue_expired(T0 + 15.5) == sorted(t.id for t in late)
    for task in late:
        row = store.get_task(task.id)
        assert row is not None
        assert (row.state, row.epoch, row.redeliveries) == ("queued", task.epoch + 1, 1)
        [attempt] = store.attempts(task.id)
        assert (attempt.outcome, attempt.worker, attempt.epoch) == ("lease_lost", "w2", task.epoch)
        assert attempt.ended_at == T0 + 15.5
    for task in [*early, kept]:
        row = store.get_task(task.id)
        assert row is not None
        assert (row.state, row.epoch, row.lease_expires_at) == ("running", task.epoch, T0 + 29)
    assert late_before != [snapshot(store, t.id)[:3] for t in late]
    assert store.requeue_expired(T0 + 30) == sorted(t.id for t in [*early, kept])


def test_requeue_expired_honours_its_limit(store: Store) -> None:
    store.submit([new_task() for _ in range(5)], T0)
    store.claim("w1", ["q"], 5, T0, 10)

    first = store.requeue_expired(T0 + 11, limit=2)
    rest = store.requeue_expired(T0 + 11, limit=100)

    assert len(first) == 2 and len(rest) == 3 and not set(first) & set(rest)
    assert store.count_tasks() == {("q", "a", "queued"): 5}


def test_task_lost_more_than_max_redeliveries_times_is_dead_lettered(store: Store) -> None:
    task_id = submit_one(store, max_redeliveries=2)
    now = T0
    for loss in (1, 2, 3):
        held = claim_one(store, f"w{loss}", now, lease=10)
        now += 11
        assert store.requeue_expired(now) == [task_id]
        row = store.get_task(task_id)
        assert row is not None and row.redeliveries == loss
        assert row.epoch == held.epoch + 1
        assert row.state == ("queued" if loss <= 2 else "dead")

    row = store.get_task(task_id)
    assert row is not None
    assert row.dead_reason and "lease expired" in row.dead_reason
    assert row.finished_at == now
    assert [a.outcome for a in store.attempts(task_id)] == ["lease_lost"] * 3
    assert store.claim("w9", ["q"], 1, now, LEASE) == []


def test_heartbeat_extends_leases_and_answers_epochs(store: Store) -> None:
    store.register_worker("w1", "c", 7, "h", 4, T0)
    store.register_worker("w2", "c", 8, "h", 4, T0)
    store.submit([new_task() for _ in range(4)], T0)
    a, b, c = store.claim("w1", ["q"], 3, T0, 10)
    theirs = claim_one(store, "w2", T0, lease=10)
    assert apply_one(store, Complete(c.id, c.epoch, "1", "w1"), T0 + 1).ok

    answer = store.heartbeat("w1", T0 + 8, 10, 2, 1)

    assert answer == {a.id: a.epoch, b.id: b.epoch}
    for task in (a, b):
        assert store.get_task(task.id).lease_expires_at == T0 + 18  # type: ignore[union-attr]
    assert store.get_task(theirs.id).lease_expires_at == T0 + 10  # type: ignore[union-attr]
    w1 = next(w for w in store.list_workers("c") if w.id == "w1")
    assert (w1.heartbeat_at, w1.inflight, w1.processed, w1.state) == (T0 + 8, 2, 1, "running")
    assert store.requeue_expired(T0 + 12) == [theirs.id]
    assert store.heartbeat("w2", T0 + 12, 10, 0, 0) == {}


def test_heartbeat_of_a_stopped_or_unknown_worker_is_none(store: Store) -> None:
    store.register_worker("w1", "c", None, None, 1, T0)
    store.register_worker("w2", "c", None, None, 1, T0)
    held = running_task(store, "w1")

    store.set_worker_state("w1", "draining", T0 + 1)
    assert store.heartbeat("w1", T0 + 2, LEASE, 1, 0) == {held.id: held.epoch}
    store.set_worker_state("w1", "stopped", T0 + 3)
    assert store.heartbeat("w1", T0 + 4, LEASE, 1, 0) is None
    assert store.get_task(held.id).lease_expires_at == T0 + 2 + LEASE  # type: ignore[union-attr]
    assert store.heartbeat("nobody", T0 + 4, LEASE, 0, 0) is None
    store.revoke_worker("w2", T0 + 5, "gone")
    assert store.heartbeat("w2", T0 + 6, LEASE, 0, 0) is None
    store.register_worker("w2", "c", None, None, 1, T0 + 7)  # a new incarnation
    assert store.heartbeat("w2", T0 + 8, LEASE, 0, 0) == {}


# --- attempts and the effects journal --------------------------------------------------------


def test_every_attempt_is_recorded(store: Store) -> None:
    store.register_worker("w2", "c", None, None, 1, T0)
    task_id = submit_one(store, max_redeliveries=5)
    expected: list[AttemptRecord] = []

    t = claim_one(store, "w1", T0)
    assert apply_one(store, Fail(task_id, t.epoch, "e1", "w1", retry_at=T0 + 1), T0 + 1).ok
    expected.append(AttemptRecord(task_id, 1, t.epoch, "w1", T0, T0 + 1, "failed", "e1"))

    t = claim_one(store, "w2", T0 + 2)
    assert store.revoke_worker("w2", T0 + 3, "suspected") == [task_id]
    expected.append(
        AttemptRecord(task_id, 2, t.epoch, "w2", T0 + 2, T0 + 3, "lease_lost", "suspected")
    )

    t = claim_one(store, "w3", T0 + 4, lease=1)
    assert store.requeue_expired(T0 + 6) == [task_id]
    expected.append(
        AttemptRecord(task_id, 3, t.epoch, "w3", T0 + 4, T0 + 6, "lease_lost", "lease expired")
    )

    t = claim_one(store, "w4", T0 + 7)
    assert apply_one(store, Release(task_id, t.epoch, "w4"), T0 + 8).ok
    expected.append(AttemptRecord(task_id, 4, t.epoch, "w4", T0 + 7, T0 + 8, "released", None))

    t = claim_one(store, "w5", T0 + 9)
    assert apply_one(store, Complete(task_id, t.epoch, '"ok"', "w5"), T0 + 10).ok
    expected.append(AttemptRecord(task_id, 5, t.epoch, "w5", T0 + 9, T0 + 10, "succeeded", None))

    assert store.attempts(task_id) == expected
    assert store.attempts(task_id + 1000) == []


def test_a_success_recorded_before_schema_6_is_one_attempt(store: Store) -> None:
    """Before schema 6 a completion also inserted its attempt as a row; such a task
    (finished_by NULL) answers that row once, not a second one from its task row."""
    old = claim_one(store, "w1") if submit_one(store) else None
    assert old is not None
    with store._tx():  # type: ignore[attr-defined]
        # what a schema-5 completion wrote
        store._exec(  # type: ignore[attr-defined]
            "UPDATE tasks SET state = 'succeeded', result = '1', finished_at = ?, "
            "lease_owner = NULL, lease_expires_at = NULL WHERE id = ?",
            (T0 + 1, old.id),
        )
        store._exec(  # type: ignore[attr-defined]
            "INSERT INTO attempts (task_id, attempt, epoch, worker, started_at, ended_at, "
            "outcome, error) VALUES (?, 1, ?, 'w1', ?, ?, 'succeeded', NULL)",
            (old.id, old.epoch, T0, T0 + 1),
        )
    new_id = submit_one(store)
    new = claim_one(store, "w2", T0 + 2)
    assert apply_one(store, Complete(new_id, new.epoch, "2", "w2"), T0 + 3).ok

    assert store.attempts(old.id) == [
        AttemptRecord(old.id, 1, old.epoch, "w1", T0, T0 + 1, "succeeded", None)
    ]
    assert store.attempts(new_id) == [
        AttemptRecord(new_id, 1, new.epoch, "w2", T0 + 2, T0 + 3, "succeeded", None)
    ]


def test_effect_journal_begin_end_begin_answers_done(store: Store) -> None:
    held = running_task(store, "w1")

    assert apply_one(store, EffectBegin(held.id, held.epoch, "pay"), T0 + 1) == OpResult(True)
    [effect] = store.effects(held.id)
    assert (effect.state, effect.epoch, effect.executions, effect.result) == (
        "started",
        held.epoch,
        1,
        None,
    )
    assert apply_one(store, EffectEnd(held.id, held.epoch, "pay", '{"receipt": 7}'), T0 + 2).ok
    again = apply_one(store, EffectBegin(held.id, held.epoch, "pay"), T0 + 3)

    assert again == OpResult(True, ("done", '{"receipt": 7}'))
    [effect] = store.effects(held.id)
    assert (effect.state, effect.result, effect.executions, effect.finished_at) == (
        "done",
        '{"receipt": 7}',
        1,
        T0 + 2,
    )


def test_a_journaled_result_is_never_overwritten(store: Store) -> None:
    held = running_task(store, "w1")
    assert apply_one(store, EffectBegin(held.id, held.epoch, "pay"), T0 + 1).ok
    assert apply_one(store, EffectEnd(held.id, held.epoch, "pay", '"first"'), T0 + 2).ok
    before = store.effects(held.id)

    assert apply_one(store, EffectEnd(held.id, held.epoch, "pay", '"second"'), T0 + 3).ok

    assert store.effects(held.id) == before
    assert apply_one(store, EffectBegin(held.id, held.epoch, "pay")) == OpResult(
        True, ("done", '"first"')
    )


def test_effect_done_before_a_crash_is_not_repeated(store: Store) -> None:
    held = running_task(store, "w1", max_redeliveries=5)
    assert apply_one(store, EffectBegin(held.id, held.epoch, "pay")).ok
    assert apply_one(store, EffectEnd(held.id, held.epoch, "pay", '"r1"')).ok
    assert store.revoke_worker("w1", T0 + 1, "crashed") == [held.id]

    redelivered = claim_one(store, "w2", T0 + 2)
    answer = apply_one(store, EffectBegin(held.id, redelivered.epoch, "pay"), T0 + 3)

    assert redelivered.journal == {"pay": ("done", '"r1"')}
    assert answer == OpResult(True, ("done", '"r1"'))
    [effect] = store.effects(held.id)
    assert (effect.executions, effect.epoch) == (1, held.epoch)


def test_effect_begun_by_a_holder_that_died_is_started_again(store: Store) -> None:
    held = running_task(store, "w1", max_redeliveries=5)
    assert apply_one(store, EffectBegin(held.id, held.epoch, "pay"), T0 + 1).ok
    assert store.requeue_expired(T0 + LEASE + 1) == [held.id]

    second = claim_one(store, "w2", T0 + LEASE + 2)
    answer = apply_one(store, EffectBegin(held.id, second.epoch, "pay"), T0 + LEASE + 3)

    assert second.journal == {"pay": ("started", None)}
    assert answer == OpResult(True, ("started", None))
    [effect] = store.effects(held.id)
    assert (effect.state, effect.epoch, effect.executions, effect.started_at) == (
        "started",
        second.epoch,
        2,
        T0 + LEASE + 3,
    )
    # The dead holder's late end is fenced off; the new holder's end is journaled.
    assert not apply_one(store, EffectEnd(held.id, held.epoch, "pay", '"stale"')).ok
    assert apply_one(store, EffectEnd(held.id, second.epoch, "pay", '"fresh"'), T0 + 40).ok
    assert apply_one(store, EffectBegin(held.id, second.epoch, "pay")) == OpResult(
        True, ("done", '"fresh"')
    )
    [effect] = store.effects(held.id)
    assert (effect.state, effect.result, effect.executions) == ("done", '"fresh"', 2)


# --- migrations ------------------------------------------------------------------------------


def test_migrations_are_versioned_and_applied_once(store_url: str) -> None:
    fresh = open_store(store_url, migrate=False)
    try:
        assert fresh.schema_version() == 0
        applied = fresh.migrate()
        assert applied and applied == sorted(applied) and applied[0] == 1
        assert fresh.schema_version() == applied[-1]
        assert fresh.migrate() == []
        task_id = submit_one(fresh)
    finally:
        fresh.close()
    second = open_store(store_url)
    try:
        assert second.migrate() == []
        assert second.schema_version() == applied[-1]
        assert second.get_task(task_id) is not None
    finally:
        second.close()


def test_a_schema_newer_than_the_code_raises_schema_error(store: Store, store_url: str) -> None:
    task_id = submit_one(store)
    newer = store.schema_version() + 1
    raw_execute(
        store_url,
        "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
        (newer, T0),
    )

    with pytest.raises(SchemaError, match="upgrade fleetops"):
        store.migrate()
    with pytest.raises(SchemaError):
        open_store(store_url)
    assert store.schema_version() == newer
    assert store.get_task(task_id) is not None


# --- concurrency -----------------------------------------------------------------------------

CLAIMERS = 6
CONCURRENT_TASKS = 300


def test_concurrent_claimers_never_claim_a_task_twice(store: Store, store_url: str) -> None:
    ids = {s.id for s in store.submit([new_task() for _ in range(CONCURRENT_TASKS)], T0)}
    barrier = threading.Barrier(CLAIMERS, timeout=30)
    claimed: dict[str, list[ClaimedTask]] = {}
    completions: dict[str, list[bool]] = {}
    errors: list[BaseException] = []

    def claimer(worker: str) -> None:
        try:
            own = open_store(store_url)
            try:
                barrier.wait()
                mine: list[ClaimedTask] = []
                oks: list[bool] = []
                while batch := own.claim(worker, ["q"], 7, T0 + 1, LEASE):
                    mine.extend(batch)
                    done = [Complete(t.id, t.epoch, f'"{worker}"', worker) for t in batch[::2]]
                    oks.extend(r.ok for r in own.apply(done, T0 + 2))
                claimed[worker] = mine
                completions[worker] = oks
            finally:
                own.close()
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    threads = [
        threading.Thread(target=claimer, args=(f"w{i}",), name=f"claimer-{i}")
        for i in range(CLAIMERS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []

    all_claims = [(w, t) for w, tasks in claimed.items() for t in tasks]
    claimed_ids = [t.id for _, t in all_claims]
    assert len(claimed_ids) == len(set(claimed_ids)), "a task was claimed twice"
    assert set(claimed_ids) == ids
    assert all(all(oks) for oks in completions.values())
    assert sum(len(c) for c in claimed.values()) == CONCURRENT_TASKS
    rows = {r.id: r for r in store.get_tasks(sorted(ids))}
    for worker, task in all_claims:
        row = rows[task.id]
        assert (task.epoch, task.attempt, row.epoch, row.attempts) == (1, 1, 1, 1)
        if row.state == "running":
            assert row.lease_owner == worker
        else:
            assert (row.state, row.result) == ("succeeded", f'"{worker}"')


def test_bells_are_those_of_running_workers(store: Store) -> None:
    store.register_worker("w1", "c", 1, "h", 4, T0, "udp://127.0.0.1:5001")
    store.register_worker("w2", "c", 2, "h", 4, T0, "udp://127.0.0.1:5002")
    store.register_worker("w3", "d", 3, "h2", 4, T0, "udp://127.0.0.1:5003")
    store.register_worker("w4", "d", 4, "h2", 4, T0)  # no doorbell

    assert sorted(store.bells()) == [
        ("c", "h", "udp://127.0.0.1:5001"),
        ("c", "h", "udp://127.0.0.1:5002"),
        ("d", "h2", "udp://127.0.0.1:5003"),
    ]
    store.set_worker_state("w1", "draining", T0 + 1)
    store.revoke_worker("w3", T0 + 1, "gone")
    assert store.bells() == [("c", "h", "udp://127.0.0.1:5002")]
    store.register_worker("w1", "c", 5, "h", 4, T0 + 2, "udp://127.0.0.1:6001")  # restarted
    assert sorted(store.bells()) == [
        ("c", "h", "udp://127.0.0.1:5002"),
        ("c", "h", "udp://127.0.0.1:6001"),
    ]


def test_open_count_counts_only_unfinished_tasks_of_one_queue(store: Store) -> None:
    """queued + running of that queue; finished, cancelled and other queues' tasks not."""
    ids = [submit_one(store) for _ in range(5)]
    submit_one(store, queue="other")
    assert store.open_count("q") == 5
    a, b = store.claim("w1", ["q"], 2, T0, LEASE)
    assert store.open_count("q") == 5  # running still counts
    assert apply_one(store, Complete(a.id, a.epoch, "null", "w1"), T0 + 1).ok
    assert store.cancel(ids[4], T0 + 1)
    assert store.open_count("q") == 3
    assert store.open_count("other") == 1
    assert store.open_count("nowhere") == 0
    assert b.id in {t.id for t in store.list_tasks(state="running")}
    # the same tasks by state; without the finished ones on request
    everything = store.count_tasks()
    assert everything == {
        ("q", "a", "queued"): 2,
        ("q", "a", "running"): 1,
        ("q", "a", "succeeded"): 1,
        ("q", "a", "cancelled"): 1,
        ("other", "a", "queued"): 1,
    }
    assert store.count_tasks(finished=False) == {
        k: n for k, n in everything.items() if k[2] in ("queued", "running")
    }


def test_prune_spans_drops_those_that_started_before_the_cutoff_a_chunk_at_a_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fleetops.store._sql.PRUNE_CHUNK", 7)  # several chunks

    def span(trace: int, n: int, start: float) -> tuple[Any, ...]:
        return (
            f"{trace:032x}",
            f"{n:016x}",
            None,
            "s",
            "INTERNAL",
            start,
            start + 50,
            "OK",
            None,
            "c",
            "a",
            "{}",
        )

    # started before T0 + 21 (each ended after it: the start is what counts)
    old = [span(1, n, T0 + n) for n in range(1, 21)]
    new = [span(2, n, T0 + 100 + n) for n in range(1, 6)]
    store.put_spans([*old, *new])
    assert store.prune_spans(T0 + 21) == 20
    assert [r[1] for r in store.get_spans(trace_id=f"{1:032x}")] == []
    assert len(store.get_spans(trace_id=f"{2:032x}")) == 5
    assert store.prune_spans(T0 + 21) == 0  # nothing left to drop


def _finish(store: Store, how: str, at: float, queue: str = "q", **fields: Any) -> int:
    """A task of ``queue`` that ends at ``at``: 'succeeded' (after one failed attempt
    and with a journaled effect), 'dead' or 'cancelled'."""
    task_id = submit_one(store, T0, queue=queue, **fields)
    if how == "cancelled":
        assert store.cancel(task_id, at)
        return task_id
    held = claim_one(store, "w1", T0, queue=queue)
    assert held.id == task_id
    if how == "dead":
        assert apply_one(store, Fail(task_id, held.epoch, "boom", "w1", None), at).ok
        return task_id
    assert apply_one(store, Fail(task_id, held.epoch, "flaky", "w1", retry_at=T0), T0).ok
    held = claim_one(store, "w1", T0, queue=queue)
    assert apply_one(store, EffectBegin(task_id, held.epoch, "pay"), T0).ok
    assert apply_one(store, EffectEnd(task_id, held.epoch, "pay", "1"), T0).ok
    assert apply_one(store, Complete(task_id, held.epoch, "2", "w1"), at).ok
    return task_id


def test_prune_tasks_deletes_what_finished_before_its_cutoff_with_attempts_and_effects(
    store: Store,
) -> None:
    old = [_finish(store, "succeeded", T0 + 10, idempotency_key="k-old")]
    old += [_finish(store, "cancelled", T0 + 11), _finish(store, "succeeded", T0 + 12, "other")]
    recent = _finish(store, "succeeded", T0 + 50)
    dead = _finish(store, "dead", T0 + 10)
    submit_one(store, queue="p")
    parent = claim_one(store, "w9", queue="p")
    child = _finish(store, "succeeded", T0 + 10, "c", parent_id=parent.id)
    queued = submit_one(store, T0)
    before = store.count_tasks()

    # two to a call, oldest of each cluster and agent first; the dead stay (None)
    assert store.prune_tasks(T0 + 20, None, limit=2) == 2
    assert store.prune_tasks(T0 + 20, None, limit=2) == 1
    assert store.prune_tasks(T0 + 20, None, limit=2) == 0

    for gone in old:
        assert store.get_task(gone) is None
        assert store.attempts(gone) == [] and store.effects(gone) == []
    kept = [recent, dead, parent.id, child, queued]
    assert [t.id for t in store.get_tasks(kept)] == kept
    assert len(store.attempts(recent)) == 2 and len(store.effects(recent)) == 1
    counts = store.count_tasks()
    assert before[("q", "a", "succeeded")] - counts[("q", "a", "succeeded")] == 1
    assert ("q", "a", "cancelled") not in counts and ("other", "a", "succeeded") not in counts

    # the key of a deleted task is free again: the same key makes a new task
    [again] = store.submit([new_task(idempotency_key="k-old")], T0 + 60)
    assert again.created and again.id not in old

    # dead letters go by their own cutoff; the child once its parent has finished
    assert store.prune_tasks(None, T0 + 20) == 1 and store.get_task(dead) is None
    assert apply_one(store, Complete(parent.id, parent.epoch, "3", "w9"), T0 + 30).ok
    assert store.prune_tasks(T0 + 20, None) == 1 and store.get_task(child) is None
    assert store.get_task(parent.id) is not None  # finished after the cutoff
    assert store.prune_tasks(T0 + 20, T0 + 20) == 0


def test_prune_tasks_keeps_the_children_of_a_dead_letter_that_may_be_retried(
    store: Store,
) -> None:
    """A dead parent may be retried (``fleetops tasks retry``): run again, it must find
    the children it sent, by key, or it sends them again and their effects repeat."""
    submit_one(store, queue="p")
    parent = claim_one(store, "w9", queue="p")
    child = _finish(store, "succeeded", T0 + 10, "c", parent_id=parent.id)
    submit_one(store, T0, queue="later")  # the newest task, which no prune deletes
    assert apply_one(store, Fail(parent.id, parent.epoch, "down", "w9", None, "down"), T0 + 40).ok

    assert store.prune_tasks(T0 + 20, None) == 0  # succeeded long ago, but its parent is dead
    assert store.get_task(child) is not None
    assert store.retry_dead(parent.id, T0 + 50)
    assert store.get_task(child) is not None
    [again] = store.claim("w9", ["p"], 1, T0 + 50, LEASE)
    assert apply_one(store, Complete(parent.id, again.epoch, "4", "w9"), T0 + 60).ok
    # the parent finished: the child goes by its own cutoff, the parent by its own
    assert store.prune_tasks(T0 + 20, None) == 1 and store.get_task(child) is None
    assert store.get_task(parent.id) is not None


def test_count_dead_since_counts_the_dead_letters_of_every_cluster_and_agent(
    store: Store,
) -> None:
    def dead(queue: str, agent: str, at: float) -> None:
        [task] = store.submit([NewTask(queue, agent, "{}")], at - 1)
        [held] = store.claim("w", [queue], 1, at - 1, LEASE, [agent])
        assert apply_one(store, Fail(task.id, held.epoch, "x", "w", None, "bad"), at).ok

    for queue, agent, at in [
        ("a", "x", T0 + 1),
        ("a", "x", T0 + 5),
        ("a", "y", T0 + 9),
        ("b", "x", T0 + 5),
        ("c", "z", T0 + 2),
    ]:
        dead(queue, agent, at)
    [done] = store.submit([NewTask("a", "x", "{}")], T0)
    [held] = store.claim("w", ["a"], 1, T0 + 6, LEASE)
    assert apply_one(store, Complete(done.id, held.epoch, "1", "w"), T0 + 7).ok  # not dead

    assert store.count_dead_since(T0) == 5
    assert store.count_dead_since(T0 + 5) == 3  # from the cutoff on: a/x, a/y, b/x
    assert store.count_dead_since(T0 + 6) == 1
    assert store.count_dead_since(T0 + 10) == 0


def test_prune_events_drops_those_recorded_before_the_cutoff_a_chunk_at_a_time(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fleetops.store._sql.PRUNE_CHUNK", 4)  # several transactions
    for n in range(10):
        store.record_event("worker.failed", T0 + n, "c", f"w{n}")
    last_seen = store.record_event("task.retried", T0 + 100, "c", None, 7)

    assert store.prune_events(T0 + 9) == 9  # 4 + 4 + 1
    assert [(e.kind, e.at) for e in store.list_events()] == [
        ("worker.failed", T0 + 9),
        ("task.retried", T0 + 100),
    ]
    assert store.prune_events(T0 + 9) == 0
    # every event is older than this cutoff; SQLite keeps the newest (see the next check)
    newest_stays = isinstance(store, SqliteStore)
    assert store.prune_events(T0 + 1000) == (1 if newest_stays else 2)
    assert [e.id for e in store.list_events()] == ([last_seen] if newest_stays else [])
    assert store.prune_events(T0 + 1000) == 0
    # a reader that follows with ?after= the last id it saw sees the next event: the
    # ids of pruned events are never given again
    following = store.record_event("worker.failed", T0 + 1001, "c", "w-next")
    assert following > last_seen
    assert [e.id for e in store.list_events(None, last_seen)] == [following]


def test_sqlite_a_prune_that_finds_only_the_kept_event_old_takes_no_write_lock(
    sqlite_url: str,
) -> None:
    """The event with the largest id stays however old; a prune that finds only it
    past the cutoff (an idle fleet, once a minute) neither waits for nor takes the
    write lock, which a busy fleet's writers hold."""
    store = open_store(sqlite_url)
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///").split("?", 1)[0])
    other.isolation_level = None
    try:
        kept = store.record_event("worker.failed", T0)
        other.execute("BEGIN IMMEDIATE")
        assert store.prune_events(T0 + 1000) == 0
        other.execute("ROLLBACK")
        assert [e.id for e in store.list_events()] == [kept]
    finally:
        other.close()
        store.close()


@pytest.mark.postgres
def test_postgres_events_commit_in_the_order_of_their_ids(postgres_url: str) -> None:
    """A reader follows events with ?after= the last id it saw. An event whose id was
    drawn before another's but that committed after that one was read would never be
    read: an event waits for the one being recorded before it, and takes a later id."""
    store = open_store(postgres_url)
    reader = open_store(postgres_url)
    holder = psycopg.connect(postgres_url)  # a process in the middle of recording one
    watcher = psycopg.connect(postgres_url, autocommit=True)
    try:
        seen = store.record_event("worker.started", T0)
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK,))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(store.record_event, "worker.started", T0 + 2)
            _wait_until_blocked(watcher, store, holder, pending, "the event being recorded")
            # the waiting one drew no id yet: the one being recorded draws the next
            [first] = holder.execute(
                "INSERT INTO events (at, kind) VALUES (%s, 'worker.failed') RETURNING id",
                (T0 + 1,),
            ).fetchone()
            # what a follower reads meanwhile: nothing past the last one it saw
            assert reader.list_events(None, seen) == []
            holder.commit()
            second = pending.result(timeout=10)
        assert seen < first < second
        assert [e.id for e in reader.list_events(None, seen)] == [first, second]
    finally:
        watcher.close()
        holder.close()
        reader.close()
        store.close()


def test_task_ids_never_repeat_however_many_tasks_are_pruned(store: Store) -> None:
    """After a prune of every finished task the next task gets a new id. Given a
    pruned task's id, it would take over the (id, epoch) pairs a stale holder of the
    pruned task still writes with. SQLite gives a new row the id after the largest
    left, so there the newest task stays."""
    held = []
    for _ in range(3):
        submit_one(store, T0)
        held.append(claim_one(store, "w1", T0))
    for task in held:
        assert apply_one(store, Complete(task.id, task.epoch, "1", "w1"), T0 + 1).ok
    newest = max(t.id for t in held)

    newest_stays = isinstance(store, SqliteStore)
    assert store.prune_tasks(T0 + 100, T0 + 100) == (2 if newest_stays else 3)
    assert store.prune_tasks(T0 + 100, T0 + 100) == 0
    left = [t.id for t in store.get_tasks([t.id for t in held])]
    assert left == ([newest] if newest_stays else [])

    [fresh] = store.submit([new_task()], T0 + 2)
    assert fresh.id > newest
    again = claim_one(store, "w2", T0 + 2)
    assert again.id == fresh.id
    # the holders of the pruned tasks write with the ids and epochs they held: each
    # is refused, and the new task still runs under its own lease
    for stale in held:
        assert not apply_one(store, Complete(stale.id, stale.epoch, "x", "w1"), T0 + 3).ok
    task = store.get_task(fresh.id)
    assert task is not None and task.state == "running" and task.lease_owner == "w2"


def test_list_events_by_kind_and_cluster_oldest_or_newest_first_in_id_order(
    store: Store,
) -> None:
    ids = [
        store.record_event(kind, T0 + n, cluster, None, None, f'{{"n": {n}}}')
        for n, (kind, cluster) in enumerate(
            [("worker.failed", "a"), ("worker.failed", "b"), ("task.cancelled", "a")] * 3
        )
    ]

    def listed(**query: Any) -> list[int]:
        return [e.id for e in store.list_events(**query)]

    assert listed() == ids
    assert listed(kind="worker.failed") == sorted(ids[0::3] + ids[1::3])
    assert listed(kind="worker.failed", cluster="a") == ids[0::3]
    assert listed(cluster="a", limit=2) == [ids[0], ids[2]]
    assert listed(cluster="a", limit=2, newest=True) == [ids[6], ids[8]]  # the last two
    assert listed(kind="task.cancelled", after_id=ids[2], newest=True) == [ids[5], ids[8]]
    assert listed(kind="nothing.happened") == []
    [first] = store.list_events(limit=1)
    assert (first.kind, first.cluster, first.at, first.data) == (
        "worker.failed",
        "a",
        T0,
        '{"n": 0}',
    )


def test_list_workers_by_id_reads_only_those(store: Store) -> None:
    for n in range(6):
        store.register_worker(f"w{n}", "c" if n % 2 else "d", n, "h", 4, T0 + n)
    store.set_worker_state("w3", "stopped", T0 + 9)
    assert [w.id for w in store.list_workers(ids=["w5", "w1", "nobody", "w3"])] == [
        "w1",
        "w3",
        "w5",
    ]
    assert [w.id for w in store.list_workers("d", ids=["w0", "w1", "w2"])] == ["w0", "w2"]
    assert store.list_workers(ids=[]) == []
    assert [w.id for w in store.list_workers("c")] == ["w1", "w3", "w5"]
    assert len(store.list_workers()) == 6


def test_live_workers_and_pruning_the_rows_of_gone_ones(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("fleetops.store._sql.PRUNE_CHUNK", 2)  # several transactions
    for n in range(8):
        store.register_worker(f"w{n}", "c" if n % 2 else "d", n, "h", 4, T0 + n)
    for n in (0, 1, 2, 3):
        store.set_worker_state(f"w{n}", "stopped", T0 + 10 + n)
    store.revoke_worker("w4", T0 + 20, "hung")  # declared dead

    assert [w.id for w in store.list_workers(live=True)] == ["w5", "w6", "w7"]
    assert [w.id for w in store.list_workers("c", live=True)] == ["w5", "w7"]
    assert [w.id for w in store.list_workers("d", ["w4", "w6"], live=True)] == ["w6"]

    assert store.prune_workers(T0 + 13) == 3  # w0, w1, w2: 2 + 1
    assert [w.id for w in store.list_workers()] == ["w3", "w4", "w5", "w6", "w7"]
    assert store.prune_workers(T0 + 13) == 0
    assert store.prune_workers(T0 + 1000) == 2  # w3 and the dead w4; the live ones stay
    assert [w.id for w in store.list_workers()] == ["w5", "w6", "w7"]


def _poll(holds: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``holds()`` (the server's own view of a session); fail after ``within`` s."""
    ends = time.monotonic() + within
    while not holds():
        assert time.monotonic() < ends, "the server never got there"
        time.sleep(0.01)


def _end_session(url: str, pid: int) -> None:
    """End the server session ``pid``, as a restart or an administrator would, and
    wait until the server has let it go."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        gone = "SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = %s"
        _poll(lambda: bool(admin.execute(gone, (pid,)).fetchone()[0]))  # type: ignore[index]


@pytest.mark.postgres
def test_a_postgres_store_replaces_a_connection_the_server_dropped_while_idle(
    postgres_url: str,
) -> None:
    """A restart, a failover or an idle timeout ends an idle session: the next call
    finds out before it sends anything, and runs on a new connection, once."""
    store = open_store(postgres_url)
    try:
        submit_one(store)
        for call in range(2):  # a read, then a write
            pid = store._conn.info.backend_pid  # type: ignore[attr-defined]
            _end_session(postgres_url, pid)
            if call == 0:
                assert store.count_tasks() == {("q", "a", "queued"): 1}
            else:
                submit_one(store)
            assert store._conn.info.backend_pid != pid  # type: ignore[attr-defined]
        assert store.open_count("q") == 2
    finally:
        store.close()


@pytest.mark.postgres
def test_a_postgres_call_whose_connection_drops_under_it_fails_and_the_next_reconnects(
    postgres_url: str,
) -> None:
    """A session ended while a call waits on the server: that call fails with
    StoreUnavailable (whether a write in flight happened cannot be known, so it is
    not tried again), and the next call works on a new connection."""
    from fleetops import StoreUnavailable

    store = open_store(postgres_url)
    try:
        submit_one(store)
        pid = store._conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(postgres_url) as admin:  # holds the table until it ends
            admin.execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                waiting = pool.submit(store.count_tasks)
                with psycopg.connect(postgres_url, autocommit=True) as killer:
                    _poll(
                        lambda: (
                            killer.execute(
                                "SELECT 1 FROM pg_stat_activity WHERE pid = %s "
                                "AND wait_event_type = 'Lock'",
                                (pid,),
                            ).fetchone()
                            is not None
                        )
                    )
                    killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
                with pytest.raises(StoreUnavailable):
                    waiting.result(timeout=10)
            admin.rollback()
        assert store.count_tasks() == {("q", "a", "queued"): 1}
        assert store._conn.info.backend_pid != pid  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.postgres
def test_a_postgres_connection_notices_a_dead_peer_in_seconds_unless_the_url_says_otherwise(
    postgres_url: str,
) -> None:
    """TCP keepalives and tcp_user_timeout on by default (a partition ends the
    connection in ~10 s, and the next call reconnects); the URL's own values win."""

    def liveness(url: str) -> dict[str, str]:
        store = open_store(url)
        try:
            dsn = store._conn.info.get_parameters()  # type: ignore[attr-defined]
            assert dsn["dbname"]
            options = {
                o.keyword.decode(): (o.val or b"").decode()
                for o in store._conn.pgconn.info  # type: ignore[attr-defined]
            }
        finally:
            store.close()
        return {k: options[k] for k in ("keepalives", "keepalives_idle", "tcp_user_timeout")}

    assert liveness(postgres_url) == {
        "keepalives": "1",
        "keepalives_idle": "5",
        "tcp_user_timeout": "10000",
    }
    joiner = "&" if "?" in postgres_url else "?"
    assert liveness(f"{postgres_url}{joiner}keepalives_idle=60")["keepalives_idle"] == "60"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("postgresql://postgres:s3cret@127.0.0.1:5432/test?bogus=1", 'parameter: "bogus"'),
        ("postgresql://postgres:s3cret@[::1/test", 'matching "]"'),
        ("postgresql://%zz:s3cret@127.0.0.1/test", 'token: "%zz"'),
        ("postgresql://postgres:s3%zzcret@127.0.0.1/test", 'token: "***"'),
    ],
)
def test_a_postgres_url_libpq_cannot_read_is_a_config_error_without_its_password(
    url: str, reason: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        open_store(url)
    error = raised.value
    assert (error.field, error.value) == ("store", redact(url))
    assert reason in error.fix and "postgresql://user:password@host:5432/database" in error.fix
    assert "s3" not in str(error) and "cret" not in str(error)


def _with_options(url: str, *settings: str) -> str:
    """``url`` with more ``-c name=value`` settings in its libpq ``options``."""
    extra = "%20".join(f"-c{s.replace('=', '%3D')}" for s in settings)
    if "options=" in url:
        return url.replace("options=", f"options={extra}%20", 1)
    return f"{url}{'&' if '?' in url else '?'}options={extra}"


@pytest.mark.postgres
def test_a_postgres_session_has_statement_and_idle_limits_unless_the_url_sets_them(
    postgres_url: str,
) -> None:
    def shown(url: str) -> tuple[str, str]:
        store = open_store(url)
        try:
            return (
                store._exec("SHOW statement_timeout").fetchone()[0],  # type: ignore[attr-defined]
                store._exec("SHOW idle_in_transaction_session_timeout").fetchone()[0],  # type: ignore[attr-defined]
            )
        finally:
            store.close()

    assert shown(postgres_url) == ("1min", "10s")
    assert shown(_with_options(postgres_url, "statement_timeout=5min")) == ("5min", "10s")


@pytest.mark.postgres
def test_a_postgres_session_frozen_inside_a_transaction_does_not_block_revocation(
    postgres_url: str,
) -> None:
    """A worker frozen (SIGSTOP, a paused VM) between two statements of a transaction
    holds its task's row lock. Revoking its leases waits on that lock; the server ends
    the frozen session after idle_in_transaction_session_timeout, the revocation goes
    through, and the frozen store, once it runs again, fails that call, reconnects,
    and is fenced off."""
    from fleetops import StoreUnavailable

    frozen_url = _with_options(postgres_url, "idle_in_transaction_session_timeout=1s")
    worker, control = open_store(frozen_url), open_store(postgres_url)
    try:
        task_id = submit_one(worker)
        (claimed,) = worker.claim("w1", ["q"], 1, T0, LEASE)
        in_tx, thaw = threading.Event(), threading.Event()
        outcome: list[BaseException | None] = []

        def freeze_mid_transaction() -> None:
            try:
                with worker._tx():  # type: ignore[attr-defined]
                    worker._exec(  # type: ignore[attr-defined]
                        "SELECT 1 FROM tasks WHERE id = ? FOR UPDATE", (task_id,)
                    )
                    in_tx.set()
                    thaw.wait(30)
                    worker._exec("SELECT 1")  # type: ignore[attr-defined]
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        frozen = threading.Thread(target=freeze_mid_transaction)
        frozen.start()
        assert in_tx.wait(10)
        revoking = concurrent.futures.ThreadPoolExecutor(1)
        revoked = revoking.submit(control.revoke_worker, "w1", T0 + 1, "hung")
        try:
            # without the limit this waits for the frozen session for ever
            assert revoked.result(timeout=20) == [task_id]
        finally:
            thaw.set()
            frozen.join(10)
            revoking.shutdown(wait=False)
        assert len(outcome) == 1 and isinstance(outcome[0], StoreUnavailable)
        # thawed: the next call reconnects, and the stale lease is refused
        assert not apply_one(worker, Complete(task_id, claimed.epoch, "null", "w1"), T0 + 2).ok
        assert worker.get_task(task_id).state == "queued"  # type: ignore[union-attr]
    finally:
        worker.close()
        control.close()


@pytest.mark.postgres
def test_a_postgres_statement_waiting_too_long_for_a_lock_fails_instead_of_hanging(
    postgres_url: str,
) -> None:
    from fleetops import StoreUnavailable

    holder = open_store(postgres_url)
    impatient = open_store(_with_options(postgres_url, "statement_timeout=300ms"))
    try:
        task_id = submit_one(holder)
        locked = threading.Event()

        def hold_the_row() -> None:
            with holder._tx():  # type: ignore[attr-defined]
                holder._exec("SELECT 1 FROM tasks WHERE id = ? FOR UPDATE", (task_id,))  # type: ignore[attr-defined]
                locked.set()
                holder._exec("SELECT pg_sleep(3)")  # type: ignore[attr-defined]

        busy = threading.Thread(target=hold_the_row)
        busy.start()
        assert locked.wait(10)
        with pytest.raises(StoreUnavailable, match="statement timeout"):
            impatient.cancel(task_id, T0 + 1)
        assert busy.is_alive()  # it failed while the lock was still held, not after
        busy.join(10)
        assert impatient.cancel(task_id, T0 + 2)  # the same call, once the lock is free
    finally:
        holder.close()
        impatient.close()


@pytest.mark.postgres
def test_a_postgres_migration_may_wait_past_the_statement_timeout(postgres_url: str) -> None:
    """Migrations are exempt from statement_timeout: one that waits for another
    process's migration (or rebuilds a large index) is not cancelled half-way."""
    from fleetops.store._postgres import MIGRATION_LOCK

    with psycopg.connect(postgres_url, autocommit=True) as other:
        with other.transaction():
            other.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            waiting = concurrent.futures.ThreadPoolExecutor(1)
            opened = waiting.submit(
                open_store, _with_options(postgres_url, "statement_timeout=200ms")
            )
            time.sleep(1.0)  # the other migration holds the lock past the timeout
            assert not opened.done()
        store = opened.result(timeout=20)
        waiting.shutdown()
    try:
        assert store.schema_version() == store.latest_version  # type: ignore[attr-defined]
    finally:
        store.close()


def _backend_pid(store: Store) -> int:
    return int(store._exec("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[attr-defined]


def _call_in_thread(fn: Callable[[], Any], wait: float) -> tuple[bool, Any]:
    """Run ``fn`` on a thread; (True, its result or exception) if it ended within
    ``wait`` seconds, (False, None) if it is still waiting."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(fn)
    try:
        done, _ = concurrent.futures.wait([future], timeout=wait)
        if not done:
            return False, None
        exc = future.exception()
        return True, exc if exc is not None else future.result()
    finally:
        pool.shutdown(wait=False)


@pytest.mark.postgres
def test_a_call_to_a_stopped_postgres_backend_is_given_up_and_the_next_call_reconnects(
    postgres_url: str,
) -> None:
    """A server process that does not run (SIGSTOP here; a disk that stopped answering
    in life) cannot cancel its own statement, and its host still keeps the TCP
    connection alive. Past statement_timeout plus the margin the client drops the
    connection: the call fails with StoreUnavailable instead of waiting for ever, the
    write it was making did not happen, and the next call opens a new connection."""
    import os
    import signal

    from fleetops import StoreUnavailable
    from fleetops.store._postgres import PostgresStore

    store = PostgresStore(_with_options(postgres_url, "statement_timeout=1s"), deadline_margin=0.5)
    try:
        store.migrate()
        assert store.deadline == 1.5
        task_id = submit_one(store)
        calls: list[Callable[[], Any]] = [
            lambda: store.get_task(task_id),  # one statement
            lambda: store.claim("w1", ["q"], 1, T0, LEASE),  # a transaction
        ]
        for call in calls:
            pid = _backend_pid(store)
            os.kill(pid, signal.SIGSTOP)
            try:
                ended, outcome = _call_in_thread(call, wait=20)
            finally:
                os.kill(pid, signal.SIGCONT)
            assert ended, "the call waited on the stopped server"
            assert isinstance(outcome, StoreUnavailable)
            assert "no answer from the server" in str(outcome)
            assert _backend_pid(store) != pid  # a new connection
        # the claim given up on changed nothing
        assert store.get_task(task_id).state == "queued"  # type: ignore[union-attr]
        assert [c.id for c in store.claim("w1", ["q"], 1, T0, LEASE)] == [task_id]
    finally:
        store.close()


@pytest.mark.postgres
def test_a_postgres_migration_may_wait_past_the_client_deadline_and_no_timeout_means_none(
    postgres_url: str,
) -> None:
    from fleetops.store._postgres import MIGRATION_LOCK, PostgresStore

    store = PostgresStore(
        _with_options(postgres_url, "statement_timeout=200ms"), deadline_margin=0.3
    )
    try:
        assert store.deadline == 0.5
        with psycopg.connect(postgres_url, autocommit=True) as other:
            with other.transaction():
                other.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                pool = concurrent.futures.ThreadPoolExecutor(1)
                migrating = pool.submit(store.migrate)
                time.sleep(1.5)  # three deadlines
                assert not migrating.done()
            migrating.result(timeout=20)
            pool.shutdown()
        assert store.schema_version() == store.latest_version
    finally:
        store.close()
    unlimited = PostgresStore(_with_options(postgres_url, "statement_timeout=0"))
    try:
        assert unlimited.deadline is None
    finally:
        unlimited.close()


def test_list_tasks_by_state_in_id_order_with_filters_and_pages(store: Store) -> None:
    ids = [submit_one(store, queue="q" if n % 2 else "r", priority=n % 3) for n in range(8)]
    done = store.claim("w1", ["q"], 1, T0, LEASE)[0]  # the first of q's, by priority
    assert apply_one(store, Complete(done.id, done.epoch, "null", "w1"), T0 + 1).ok
    running = store.claim("w1", ["q", "r"], 2, T0 + 2, LEASE)
    queued = sorted(set(ids) - {done.id} - {t.id for t in running})

    assert [t.id for t in store.list_tasks(state="queued")] == queued
    assert [t.id for t in store.list_tasks(state="running")] == sorted(t.id for t in running)
    assert [t.id for t in store.list_tasks(state="succeeded")] == [done.id]
    q_queued = [i for i in queued if store.get_task(i).queue == "q"]  # type: ignore[union-attr]
    assert [t.id for t in store.list_tasks(state="queued", queue="q")] == q_queued
    first, *rest = queued
    assert [t.id for t in store.list_tasks(state="queued", after_id=first)] == rest
    assert [t.id for t in store.list_tasks(state="queued", limit=2)] == queued[:2]
    # the ids alone, for a page of tasks to act on: the same ones, without the rows
    for query in (
        {"state": "queued"},
        {"state": "running"},
        {"state": "succeeded"},
        {"state": "queued", "queue": "q"},
        {"state": "queued", "after_id": first},
        {"state": "queued", "limit": 2},
        {"queue": "r"},
    ):
        assert store.list_task_ids(**query) == [t.id for t in store.list_tasks(**query)], query


def _behind_a_held_write(
    postgres_url: str, sql: str, params: tuple[Any, ...], store: Store, call: Any
) -> Any:
    """Run ``call`` (on ``store``) on a thread while another connection holds ``sql`` (a
    write of one task's row, an outcome committing) uncommitted; wait until ``call``
    waits for that connection; commit; answer what ``call`` answered."""
    holder = psycopg.connect(postgres_url)
    watcher = psycopg.connect(postgres_url, autocommit=True)
    try:
        assert holder.execute(sql.replace("?", "%s"), params).fetchone() is not None
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call)
            _wait_until_blocked(watcher, store, holder, pending, "the held write")
            holder.commit()
            return pending.result(timeout=10)
    finally:
        watcher.close()
        holder.close()


def _wait_until_blocked(
    watcher: psycopg.Connection[Any],
    store: Store,
    holder: psycopg.Connection[Any],
    pending: concurrent.futures.Future[Any],
    what: str,
) -> None:
    """Wait until ``store``'s connection waits for a lock ``holder`` holds; fail if the
    call ``pending`` ends first, or 10 s go by."""
    pid = store._conn.info.backend_pid  # type: ignore[attr-defined]
    waited_from = time.monotonic()
    while holder.info.backend_pid not in _lock_waiter(watcher, pid):
        assert not pending.done(), f"did not wait for {what}: {pending.result()}"
        assert time.monotonic() - waited_from < 10, f"never waited for {what}"
        time.sleep(0.01)


@pytest.mark.postgres
def test_a_cancelled_tree_waits_for_a_child_s_completion_committing_and_leaves_it_done(
    postgres_url: str,
) -> None:
    """A parent is cancelled while its running child's completion is committing (the
    child's row locked): the cancel waits for it, sees the child succeeded, and
    cancels the parent alone. Read without the lock, the child was taken for running,
    said cancelled, and given a cancelled attempt beside its success."""
    from fleetops.store._sql import COMPLETE

    store = open_store(postgres_url)
    other = open_store(postgres_url)
    try:
        parent = running_task(store, "w1").id
        child = submit_one(store, parent_id=parent)
        held = claim_one(store, "w2")
        assert held.id == child
        completing = (COMPLETE, ('"done"', T0 + 1, "w2", child, held.epoch))
        cancel = partial(other.cancel_tree, parent, T0 + 2, "operator")
        assert _behind_a_held_write(postgres_url, *completing, other, cancel) == [parent]
        rows = {r.id: r for r in store.get_tasks([parent, child])}
        assert (rows[parent].state, rows[child].state) == ("cancelled", "succeeded")
        assert rows[child].epoch == held.epoch
        assert "cancelled" not in [a.outcome for a in store.attempts(child)]
    finally:
        other.close()
        store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("outcome", ["succeeded", "dead"])
def test_a_cancel_racing_a_postgres_completion_waits_for_it_and_answers_false(
    postgres_url: str, outcome: str
) -> None:
    """The holder's outcome is committing (its row locked) when a cancel comes: the
    cancel waits for it, sees the task finished and answers False, changing nothing.
    Read without the lock, it answered True and recorded a cancelled attempt for a
    task that had succeeded."""
    from fleetops.store._sql import COMPLETE, FAIL_DEAD

    store = open_store(postgres_url)
    other = open_store(postgres_url)
    try:
        task_id = submit_one(store)
        held = claim_one(store, "w1")
        if outcome == "succeeded":
            sql, params = COMPLETE, ('"done"', T0 + 1, "w1", task_id, held.epoch)
        else:
            sql, params = FAIL_DEAD, ("boom", "boom", T0 + 1, task_id, held.epoch)
        cancel = partial(other.cancel, task_id, T0 + 1, "operator")
        assert _behind_a_held_write(postgres_url, sql, params, other, cancel) is False
        record = store.get_task(task_id)
        assert record is not None and record.state == outcome and record.epoch == held.epoch
        assert "cancelled" not in [a.outcome for a in store.attempts(task_id)]
    finally:
        other.close()
        store.close()


@pytest.mark.postgres
def test_a_postgres_store_names_its_sessions_unless_the_url_does(postgres_url: str) -> None:
    """An operator finds the fleet's sessions in pg_stat_activity by application_name."""
    asked = "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
    for url, name in (
        (postgres_url, "fleetops"),
        (f"{postgres_url}&application_name=mine", "mine"),
    ):
        store = open_store(url)
        try:
            assert store._exec(asked).fetchone()[0] == name  # type: ignore[attr-defined]
        finally:
            store.close()


# --- PostgreSQL: every statement that locks many tasks takes them in id order -------------


def _lock_waiter(watcher: psycopg.Connection[Any], pid: int) -> list[int]:
    """The backends the session ``pid`` waits for a lock of (none: it does not wait)."""
    row = watcher.execute("SELECT pg_blocking_pids(%s)", (pid,)).fetchone()
    return list(row[0]) if row else []


def _beside_an_id_order_locker(
    postgres_url: str,
    low: int,
    high: int,
    store: Store,
    call: Callable[[], Any],
    then: tuple[str, tuple[Any, ...]] | None = None,
) -> Any:
    """Hold task ``low``'s row, as a cancel or a dead worker's revocation does on its way
    through the tasks in id order; run ``call`` (on ``store``, touching ``high`` and
    ``low``) on a thread until it waits for that row; then lock ``high`` (or run
    ``then``), as the holder would next. A call that had taken ``high`` (or what
    ``then`` takes) first deadlocks with the holder here: PostgreSQL's detector fails
    one of the two after its ``deadlock_timeout`` (the tests that use this turn the
    store's reruns off: see ``without_reruns``). Commit; answer what ``call`` answered."""
    holder = psycopg.connect(postgres_url)
    watcher = psycopg.connect(postgres_url, autocommit=True)
    try:
        holder.execute("SET lock_timeout = '20s'")
        lock = "SELECT 1 FROM tasks WHERE id = %s FOR UPDATE"
        assert holder.execute(lock, (low,)).fetchone()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call)
            _wait_until_blocked(watcher, store, holder, pending, f"task {low}")
            # raises DeadlockDetected here (or the call does) if the call holds `high`
            sql, params = then or (lock, (high,))
            assert holder.execute(sql, params).fetchone()
            holder.commit()
            return pending.result(timeout=20)
    finally:
        watcher.close()
        holder.close()


@pytest.fixture
def without_reruns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's transactions ended to break a deadlock are not run again: a lock
    order test must see the deadlock, not have it papered over by a rerun."""
    from fleetops.store import _sql

    monkeypatch.setattr(_sql, "CONFLICT_RERUNS", 0)


def _physically_after(postgres_url: str, task_id: int) -> None:
    """Move ``task_id``'s row to the end of the table (a new row version, with new index
    entries: an indexed column changes and back), so that a scan meets it after the
    rows it used to come before: a statement without ORDER BY then locks it last."""
    with psycopg.connect(postgres_url) as conn:
        for step in (1, -1):
            conn.execute(
                "UPDATE tasks SET run_after = run_after + %s WHERE id = %s", (step, task_id)
            )


@pytest.mark.postgres
def test_a_postgres_group_commit_locks_its_tasks_in_id_order(
    postgres_url: str, without_reruns: None
) -> None:
    """A group commit's ops come in any order (an effect of task B, then task A's
    completion); it takes A's and B's rows in id order before any of them runs. Taken
    in the ops' order, the commit held B and waited for A while a cancel held A and
    waited for B: a deadlock, and one of them failed."""
    store = open_store(postgres_url)
    worker = open_store(postgres_url)
    try:
        a, b = running_task(store, "w1"), running_task(store, "w1")
        assert a.id < b.id
        ops: list[Operation] = [
            EffectBegin(b.id, b.epoch, "pay"),
            Complete(a.id, a.epoch, '"done"', "w1"),
        ]
        commit = partial(worker.apply, ops, T0 + 1)
        answers = _beside_an_id_order_locker(postgres_url, a.id, b.id, worker, commit)
        assert answers == [OpResult(True, None), OpResult(True, None)]
        assert [t.state for t in store.get_tasks([a.id, b.id])] == ["succeeded", "running"]
    finally:
        worker.close()
        store.close()


@pytest.mark.postgres
def test_a_postgres_heartbeat_extends_its_leases_in_id_order(
    postgres_url: str, without_reruns: None
) -> None:
    """A heartbeat extends every lease of its worker: it locks them in id order, not in
    the order a scan meets them (here the later task first)."""
    store = open_store(postgres_url)
    worker = open_store(postgres_url)
    try:
        store.register_worker("w1", "c", None, None, 10, T0)
        a, b = running_task(store, "w1"), running_task(store, "w1")
        _physically_after(postgres_url, a.id)
        beat = partial(worker.heartbeat, "w1", T0 + 1, LEASE, 2, 0)
        leases = _beside_an_id_order_locker(postgres_url, a.id, b.id, worker, beat)
        assert leases == {a.id: a.epoch, b.id: b.epoch}
        for task in store.get_tasks([a.id, b.id]):
            assert task.lease_expires_at == T0 + 1 + LEASE
    finally:
        worker.close()
        store.close()


@pytest.mark.postgres
def test_a_postgres_bulk_retry_locks_its_dead_trees_in_id_order(
    postgres_url: str, without_reruns: None
) -> None:
    """Retrying dead letters A and B queues A's dead child C again too, and C's id lies
    between A's and B's: all three are locked in id order first. Locked as they were
    queued again (A, B, then the children), a cancel holding C and waiting for B
    deadlocked with it."""
    store = open_store(postgres_url)
    worker = open_store(postgres_url)
    try:
        a = running_task(store, "w1")
        c = submit_one(store, parent_id=a.id)
        held_c = claim_one(store, "w1")
        b = running_task(store, "w1")
        assert a.id < c < b.id
        for task_id, epoch in ((c, held_c.epoch), (a.id, a.epoch), (b.id, b.epoch)):
            assert apply_one(store, Fail(task_id, epoch, "boom", "w1", None), T0 + 1).ok
        retry = partial(worker.retry_dead_many, [a.id, b.id], T0 + 2)
        assert _beside_an_id_order_locker(postgres_url, c, b.id, worker, retry) == [a.id, b.id]
        assert [t.state for t in store.get_tasks([a.id, c, b.id])] == ["queued"] * 3
    finally:
        worker.close()
        store.close()


@pytest.mark.postgres
def test_a_postgres_prune_deletes_in_id_order(postgres_url: str, without_reruns: None) -> None:
    """Pruning takes the finished tasks in id order, whatever order it found them in
    (the longest finished first) and a scan meets them in."""
    store = open_store(postgres_url)
    control = open_store(postgres_url)
    try:
        a = _finish(store, "succeeded", T0 + 10)
        b = _finish(store, "succeeded", T0 + 5)
        _physically_after(postgres_url, a)
        prune = partial(control.prune_tasks, T0 + 20, None)
        assert _beside_an_id_order_locker(postgres_url, a, b, control, prune) == 2
        assert store.get_tasks([a, b]) == []
    finally:
        control.close()
        store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("since", ["queued again", "finished again"])
def test_a_postgres_prune_keeps_a_dead_letter_retried_while_it_ran(
    postgres_url: str, since: str
) -> None:
    """An operator queues a dead letter again while a prune that read it as dead is
    deleting it (and it may even have run and died again since): the prune waits for
    that write, sees the task is not as it read it, and leaves it, with its attempts.
    Deleted on the strength of the earlier read, the retried task, acknowledged to
    the operator, was lost; checking only that it was finished lost the second case."""
    from fleetops.store._sql import RETRY_DEAD

    store = open_store(postgres_url)
    control = open_store(postgres_url)
    try:
        dead = _finish(store, "dead", T0 + 5)
        write: tuple[str, tuple[Any, ...]] = (RETRY_DEAD, (T0 + 30, dead))
        if since == "finished again":
            write = ("UPDATE tasks SET finished_at = ? WHERE id = ? RETURNING id", (T0 + 40, dead))
        prune = partial(control.prune_tasks, None, T0 + 20)
        assert _behind_a_held_write(postgres_url, *write, control, prune) == 0
        record = store.get_task(dead)
        assert record is not None
        assert (record.state, record.finished_at) in [("queued", None), ("dead", T0 + 40)]
        assert [a.outcome for a in store.attempts(dead)] == ["failed"]
    finally:
        control.close()
        store.close()


@pytest.mark.postgres
def test_a_postgres_bulk_retry_leaves_a_child_that_dies_meanwhile_for_the_next(
    postgres_url: str,
) -> None:
    """A child dies (another transaction commits its failure) after a bulk retry has
    found and locked its trees: it was not locked with them, so the retry leaves it
    dead, for the next retry. Queued again, it was locked last, after tasks with
    larger ids, and a cancel could deadlock with the retry."""
    from fleetops.store._sql import FAIL_DEAD, RETRY_DEAD

    store = open_store(postgres_url)
    control = open_store(postgres_url)
    holder = psycopg.connect(postgres_url)
    try:
        parent = running_task(store, "w1")
        child = submit_one(store, parent_id=parent.id)
        held = claim_one(store, "w1")
        assert apply_one(store, Fail(parent.id, parent.epoch, "boom", "w1", None), T0 + 1).ok
        dying = (FAIL_DEAD.replace("?", "%s"), ("boom", "boom", T0 + 2, child, held.epoch))
        assert holder.execute(*dying).fetchone() is not None  # not committed yet
        real_exec = control._exec  # type: ignore[attr-defined]

        def exec_(sql: str, params: Any = ()) -> Any:
            if sql == RETRY_DEAD and not holder.closed:
                holder.commit()  # the child dies now: after the trees were found
                holder.close()
            return real_exec(sql, params)

        control._exec = exec_  # type: ignore[attr-defined]
        assert control.retry_dead_many([parent.id], T0 + 3) == [parent.id]
        assert holder.closed, "the retry never queued the parent"
        assert [t.state for t in store.get_tasks([parent.id, child])] == ["queued", "dead"]
        assert store.retry_dead(child, T0 + 4)  # the next retry takes it
    finally:
        holder.close()
        control.close()
        store.close()


@pytest.mark.postgres
def test_postgres_submits_of_the_same_keys_in_opposite_orders_wait_not_deadlock(
    postgres_url: str, without_reruns: None
) -> None:
    """Two transactions insert keys K1 and K2, in opposite orders. Each took its first
    key's place in the unique index and waited for the other's: a deadlock. The keys
    are now taken in one order (advisory locks) before any insert; the second waits,
    then finds both tasks by key."""
    from fleetops.store._postgres import KEY_LOCKS, LOCK_KEYS, _key_hash
    from fleetops.store._sql import INSERT_TASK_KEYED, task_params

    store = open_store(postgres_url)
    holder = psycopg.connect(postgres_url)
    watcher = psycopg.connect(postgres_url, autocommit=True)
    try:
        k1, k2 = new_task(idempotency_key="K1"), new_task(idempotency_key="K2")
        # the other transaction, as the store makes it: keys locked, then K2 and K1
        hashes = sorted({_key_hash("K1"), _key_hash("K2")})
        holder.execute(LOCK_KEYS.replace("?", "%s"), (KEY_LOCKS, hashes))
        insert = INSERT_TASK_KEYED.replace("?", "%s")
        [(k2_id,)] = holder.execute(insert, task_params(k2, T0)).fetchall()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(store.submit, [k1, k2], T0)
            _wait_until_blocked(watcher, store, holder, pending, "the keys")
            [(k1_id,)] = holder.execute(insert, task_params(k1, T0)).fetchall()
            holder.commit()
            assert pending.result(timeout=20) == [Submitted(k1_id, False), Submitted(k2_id, False)]
    finally:
        watcher.close()
        holder.close()
        store.close()


def test_a_keyed_submit_whose_key_s_task_was_pruned_meanwhile_inserts_again(
    store: Store,
) -> None:
    """A keyed submit finds its key taken, and the task holding it is pruned before it
    reads that task (on PostgreSQL, another transaction between its INSERT and its
    SELECT; here the row is deleted right then): the key is free, so the task is
    inserted again. It used to fail (the SELECT found nothing) and fail every
    submit committed with it."""
    from fleetops.store._sql import SELECT_BY_KEY

    submit_one(store, idempotency_key="k")
    real_exec = store._exec  # type: ignore[attr-defined]
    deleted: list[str] = []

    def exec_(sql: str, params: Any = ()) -> Any:
        if sql == SELECT_BY_KEY and not deleted:
            deleted.append(real_exec("DELETE FROM tasks WHERE idempotency_key = ?", ("k",)))
        return real_exec(sql, params)

    store._exec = exec_  # type: ignore[attr-defined]
    try:
        [again, other] = store.submit([new_task(idempotency_key="k"), new_task()], T0 + 1)
    finally:
        del store._exec  # type: ignore[attr-defined]
    assert deleted, "the SELECT by key never ran"
    assert again.created and other.created
    record = store.get_task(again.id)  # a new task (SQLite may give it the old one's id)
    assert record is not None and (record.idempotency_key, record.created_at) == ("k", T0 + 1)


@pytest.mark.postgres
def test_a_postgres_group_commit_takes_its_one_task_s_row_before_its_children_s_keys(
    postgres_url: str, without_reruns: None
) -> None:
    """A task sends two children with keys (a ``ctx.call`` child's key comes from its
    parent: a lease's old holder and its new one may both send them). Every
    transaction takes rows before keys, a single row too: taking the keys first, this
    commit held them while waiting for the row, and a commit holding the row and
    waiting for the keys (one of several tasks) deadlocked with it."""
    from fleetops.store._postgres import KEY_LOCKS, LOCK_KEYS, _key_hash

    store = open_store(postgres_url)
    worker = open_store(postgres_url)
    try:
        x = running_task(store, "w1")
        ops: list[Operation] = [
            SubmitChild(x.id, x.epoch, new_task(idempotency_key=f"{x.id}-call-{n}")) for n in (1, 2)
        ]
        hashes = sorted({_key_hash(f"{x.id}-call-{n}") for n in (1, 2)})
        keys = (LOCK_KEYS.replace("?", "%s"), (KEY_LOCKS, hashes))
        commit = partial(worker.apply, ops, T0 + 1)
        answers = _beside_an_id_order_locker(postgres_url, x.id, x.id, worker, commit, keys)
        assert [a.ok for a in answers] == [True, True]
        assert len(store.list_tasks(state="queued")) == 2
    finally:
        worker.close()
        store.close()


@pytest.mark.postgres
def test_a_postgres_transaction_ended_to_break_a_deadlock_runs_again(postgres_url: str) -> None:
    """Another program's transaction holds task B and then asks for task A, while a
    group commit holds A and waits for B: a deadlock, and PostgreSQL ends the group
    commit's transaction (it waited first, so it finds the deadlock). Nothing of it
    was kept, so the store runs it again once the other has committed, and answers as
    if nothing had happened. It used to raise (StoreUnavailable) to its caller."""
    store = open_store(postgres_url)
    worker = open_store(postgres_url)
    holder = psycopg.connect(postgres_url)
    watcher = psycopg.connect(postgres_url, autocommit=True)
    try:
        a, b = running_task(store, "w1"), running_task(store, "w1")
        ops: list[Operation] = [
            Complete(a.id, a.epoch, '"a"', "w1"),
            Complete(b.id, b.epoch, '"b"', "w1"),
        ]
        holder.execute("SET deadlock_timeout = '20s'")  # the group commit finds it first
        lock = "SELECT 1 FROM tasks WHERE id = %s FOR UPDATE"
        assert holder.execute(lock, (b.id,)).fetchone()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(worker.apply, ops, T0 + 1)
            _wait_until_blocked(watcher, worker, holder, pending, f"task {b.id}")
            # waits for A until PostgreSQL ends the group commit's transaction (~1 s)
            assert holder.execute(lock, (a.id,)).fetchone()
            mark = "UPDATE tasks SET headers = %s WHERE id = %s"
            holder.execute(mark, ('{"by": "other"}', a.id))
            holder.commit()
            assert pending.result(timeout=20) == [OpResult(True, None), OpResult(True, None)]
        done = store.get_tasks([a.id, b.id])
        assert [(t.state, t.result) for t in done] == [("succeeded", '"a"'), ("succeeded", '"b"')]
        assert done[0].headers == '{"by": "other"}'  # the other's write stands too
    finally:
        watcher.close()
        holder.close()
        worker.close()
        store.close()
