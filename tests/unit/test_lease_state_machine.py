"""Leases and epochs under random interleavings, checked against a model.

A Hypothesis state machine drives a real store on virtual time: tasks are submitted
and claimed by a few workers, each worker writes with the epoch it *believes* it holds
(which goes stale when its lease is revoked, expires or is cancelled), workers are
revoked and restarted, time moves and expired leases are requeued. After every step
the store must agree with a plain Python model of the queue, and:

* at most one (task, epoch) that any worker believes in is accepted by the store;
* a task's epoch never goes down, and goes up on every claim and revocation;
* a write with a stale epoch is rejected and changes nothing;
* a task in a terminal state never changes again, but for a dead letter an operator
  queues again;
* finished tasks are pruned (a parent that may run again keeps its children), and a
  pruned task's id is never given again: its stale holders' writes stay rejected.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fleetops.store import (
    TERMINAL_STATES,
    Complete,
    EffectBegin,
    EffectEnd,
    Fail,
    NewTask,
    Operation,
    OpResult,
    Release,
    SqliteStore,
    Store,
    SubmitChild,
    Submitted,
    open_store,
)

START = 1_000.0
LEASE = 10.0
WORKERS = ("w1", "w2", "w3")
EFFECT_KEYS = ("charge", "email")
CHILD_KEYS = ("first", "second")
WRITE_KINDS = (
    "complete",
    "fail_retry",
    "fail_dead",
    "release",
    "effect_begin",
    "effect_end",
    "submit_child",
)


@dataclass
class ModelTask:
    """What the store should hold for one task."""

    id: int
    priority: int
    max_redeliveries: int
    ready_at: float | None  # None: due already (requeued after a lost lease)
    state: str = "queued"
    epoch: int = 0
    owner: str | None = None
    expires: float | None = None
    attempts: int = 0
    failures: int = 0
    redeliveries: int = 0
    # key -> (state, result, executions)
    effects: dict[str, tuple[str, str | None, int]] = field(default_factory=dict)
    children: dict[str, int] = field(default_factory=dict)

    def due(self, now: float) -> bool:
        return self.state == "queued" and (self.ready_at is None or self.ready_at <= now)


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self, fresh_store: Callable[[], Store], done: Callable[[Store], None]) -> None:
        super().__init__()
        self.store = fresh_store()
        self._done = done
        self.now = START
        self.tasks: dict[int, ModelTask] = {}
        # What each worker believes it holds: task id -> epoch. The store never tells a
        # worker it lost a lease except by rejecting its writes, so beliefs stay stale.
        self.beliefs: dict[str, dict[int, int]] = {w: {} for w in WORKERS}
        self.alive = dict.fromkeys(WORKERS, True)
        self.highest_epoch: dict[int, int] = {}
        self.final: dict[int, tuple[object, ...]] = {}
        self.given: set[int] = set()  # every task id the store has answered, pruned or not
        for worker in WORKERS:
            self.store.register_worker(worker, "c", None, None, 4, self.now)

    def teardown(self) -> None:
        self._done(self.store)

    # --- helpers -----------------------------------------------------------------------------

    def snapshot(self, task_id: int) -> tuple[object, ...]:
        return (
            self.store.get_task(task_id),
            self.store.attempts(task_id),
            self.store.effects(task_id),
            self.store.count_tasks(),
        )

    def add_task(self, task_id: int, priority: int, max_redeliveries: int, ready_at: float) -> None:
        assert task_id not in self.given, f"the store gave task id {task_id} again"
        self.given.add(task_id)
        self.tasks[task_id] = ModelTask(task_id, priority, max_redeliveries, ready_at)

    def lose_lease(self, task: ModelTask) -> None:
        """The model of a revocation or an expiry: a redelivery, or a dead letter."""
        row = self.store.get_task(task.id)
        assert row is not None
        assert row.epoch > task.epoch, "taking a lease away must bump the epoch"
        task.epoch = row.epoch
        task.redeliveries += 1
        task.owner = task.expires = None
        task.ready_at = None
        task.state = "dead" if task.redeliveries > task.max_redeliveries else "queued"
        event(f"lost lease: {task.state}")

    def believed(self) -> list[tuple[str, int, int]]:
        return sorted(
            (worker, task_id, epoch)
            for worker, held in self.beliefs.items()
            for task_id, epoch in held.items()
        )

    # --- rules -------------------------------------------------------------------------------

    @rule(
        tasks=st.lists(
            st.tuples(
                st.integers(0, 3),  # priority
                st.sampled_from([0.0, 0.0, 5.0]),  # run after this many seconds
                st.integers(0, 3),  # max redeliveries
            ),
            min_size=1,
            max_size=3,
        )
    )
    def submit(self, tasks: list[tuple[int, float, int]]) -> None:
        new = [
            NewTask(queue="q", agent="a", priority=p, run_after=self.now + d, max_redeliveries=r)
            for p, d, r in tasks
        ]
        submitted = self.store.submit(new, self.now)
        assert [s.created for s in submitted] == [True] * len(new)
        for answer, (priority, delay, max_redeliveries) in zip(submitted, tasks, strict=True):
            self.add_task(answer.id, priority, max_redeliveries, self.now + delay)

    @rule(worker=st.sampled_from(WORKERS), limit=st.integers(1, 3))
    def claim(self, worker: str, limit: int) -> None:
        if not self.alive[worker]:  # a revoked worker claims again as a new incarnation
            self.store.register_worker(worker, "c", None, None, 4, self.now)
            self.alive[worker] = True
        due = {t.id for t in self.tasks.values() if t.due(self.now)}

        claimed = self.store.claim(worker, ["q"], limit, self.now, LEASE)

        ids = [t.id for t in claimed]
        assert len(ids) == len(set(ids)) == min(limit, len(due))
        assert set(ids) <= due, f"claimed {set(ids) - due}, which were not due"
        left = due - set(ids)
        if ids and left:
            assert min(self.tasks[i].priority for i in ids) >= max(
                self.tasks[i].priority for i in left
            ), "a lower priority was claimed before a higher one"
        for got in claimed:
            task = self.tasks[got.id]
            assert got.epoch > task.epoch, "a claim must bump the epoch"
            assert got.lease_expires_at == self.now + LEASE
            assert got.attempt == task.attempts + 1
            assert (got.failures, got.redeliveries) == (task.failures, task.redeliveries)
            expected_journal = {k: (s, r) for k, (s, r, _) in task.effects.items()}
            assert got.journal == (expected_journal if got.attempt > 1 else {})
            task.state, task.epoch, task.owner = "running", got.epoch, worker
            task.expires = self.now + LEASE
            task.attempts += 1
            self.beliefs[worker][got.id] = got.epoch

    @precondition(lambda self: any(self.beliefs.values()))
    @rule(data=st.data(), kind=st.sampled_from(("complete", "fail_retry", "fail_dead", "release")))
    def end_attempt(self, data: st.DataObject, kind: str) -> None:
        self.write(data, kind)

    @precondition(lambda self: any(self.beliefs.values()))
    @rule(data=st.data(), kind=st.sampled_from(("effect_begin", "effect_end")))
    def journal_effect(self, data: st.DataObject, kind: str) -> None:
        self.write(data, kind)

    @precondition(lambda self: any(self.beliefs.values()))
    @rule(data=st.data())
    def submit_child(self, data: st.DataObject) -> None:
        self.write(data, "submit_child")

    @precondition(lambda self: bool(self.beliefs_by_kind()["superseded"]))
    @rule(data=st.data(), kind=st.sampled_from(WRITE_KINDS))
    def write_as_a_zombie(self, data: st.DataObject, kind: str) -> None:
        """A worker whose lease was taken and given to another writes as if it still ran."""
        self.write(data, kind, "superseded")

    def beliefs_by_kind(self) -> dict[str, list[tuple[str, int, int]]]:
        """Beliefs split into the live lease; stale ones on a task another worker now runs
        (the dangerous case); stale ones on a task nobody runs."""
        kinds: dict[str, list[tuple[str, int, int]]] = {"live": [], "superseded": [], "idle": []}
        for worker, task_id, epoch in self.believed():
            task = self.tasks.get(task_id)  # None: pruned, its holder none the wiser
            if task is None or task.state != "running":
                kinds["idle"].append((worker, task_id, epoch))
            else:
                kinds["live" if task.epoch == epoch else "superseded"].append(
                    (worker, task_id, epoch)
                )
        return kinds

    def write(self, data: st.DataObject, kind: str, kind_of_belief: str | None = None) -> None:
        """Write as a worker that believes it holds a lease, live or (often) stale."""
        kinds = self.beliefs_by_kind()
        if kind_of_belief is None:
            if kinds["live"] and data.draw(st.booleans(), "the holder writes"):
                kind_of_belief = "live"
            else:
                stale = [k for k in ("superseded", "idle") if kinds[k]] or ["live"]
                kind_of_belief = data.draw(st.sampled_from(stale), "kind")
        worker, task_id, epoch = data.draw(st.sampled_from(kinds[kind_of_belief]), "belief")
        task = self.tasks.get(task_id)
        key = data.draw(st.sampled_from(EFFECT_KEYS), "key")
        child_key = data.draw(st.sampled_from(CHILD_KEYS), "child key")
        retry_in = data.draw(st.sampled_from([0.0, 2.0]), "retry in")
        result = f'"{worker}@{epoch}"'
        op: Operation
        if kind == "complete":
            op = Complete(task_id, epoch, result, worker)
        elif kind == "fail_retry":
            op = Fail(task_id, epoch, "boom", worker, retry_at=self.now + retry_in)
        elif kind == "fail_dead":
            op = Fail(task_id, epoch, "boom", worker, retry_at=None, dead_reason="gave up")
        elif kind == "release":
            op = Release(task_id, epoch, worker)
        elif kind == "effect_begin":
            op = EffectBegin(task_id, epoch, key)
        elif kind == "effect_end":
            op = EffectEnd(task_id, epoch, key, result)
        else:
            child = NewTask(
                queue="q",
                agent="child",
                parent_id=task_id,
                idempotency_key=f"{task_id}/{child_key}",
            )
            op = SubmitChild(task_id, epoch, child)
        live = task is not None and task.state == "running" and task.epoch == epoch
        pruned = " on a pruned task" if task is None else ""
        event(f"{kind} with a {kind_of_belief} lease{pruned}")
        before = None if live else self.snapshot(task_id)

        [answer] = self.store.apply([op], self.now)

        if not live:
            assert answer == OpResult(False), f"{kind} by {worker} at stale epoch {epoch}"
            assert self.snapshot(task_id) == before, "a rejected write changed the store"
            return
        assert answer.ok, f"{kind} by the holder {worker} at epoch {epoch} was rejected"
        assert task is not None and task.owner == worker
        if kind in ("complete", "fail_retry", "fail_dead", "release"):
            task.owner = task.expires = None
        if kind == "complete":
            task.state = "succeeded"
        elif kind == "fail_retry":
            task.state, task.ready_at = "queued", self.now + retry_in
            task.failures += 1
        elif kind == "fail_dead":
            task.state = "dead"
            task.failures += 1
        elif kind == "release":
            task.state, task.ready_at = "queued", self.now
        elif kind == "effect_begin":
            found = task.effects.get(key)
            if found is None:
                assert answer.value is None
                task.effects[key] = ("started", None, 1)
            elif found[0] == "done":
                assert answer.value == ("done", found[1])
            else:
                assert answer.value == ("started", None)
                task.effects[key] = ("started", None, found[2] + 1)
        elif kind == "effect_end":
            found = task.effects.get(key)
            if found is not None and found[0] == "started":
                task.effects[key] = ("done", result, found[2])
        else:
            submitted = answer.value
            assert isinstance(submitted, Submitted)
            known = task.children.get(child_key)
            assert submitted.created == (known is None)
            if known is None:
                task.children[child_key] = submitted.id
                assert isinstance(op, SubmitChild)
                self.add_task(submitted.id, 0, op.task.max_redeliveries, self.now)
            else:
                assert submitted.id == known
        stored = {e.key: (e.state, e.result, e.executions) for e in self.store.effects(task_id)}
        assert stored == task.effects

    @rule(worker=st.sampled_from(WORKERS))
    def revoke(self, worker: str) -> None:
        held = sorted(
            t.id for t in self.tasks.values() if t.state == "running" and t.owner == worker
        )

        revoked = self.store.revoke_worker(worker, self.now, "suspected")

        assert revoked == held
        for task_id in revoked:
            self.lose_lease(self.tasks[task_id])
        self.alive[worker] = False

    @precondition(lambda self: any(t.state == "running" for t in self.tasks.values()))
    @rule(data=st.data())
    def hand_over(self, data: st.DataObject) -> None:
        """The supervisor revokes a worker, another one takes over all that is due, and
        the revoked one (only slow, not dead) tries every write as if it still held its
        lease."""
        running = sorted(t.id for t in self.tasks.values() if t.state == "running")
        suspect = self.tasks[data.draw(st.sampled_from(running), "task")].owner
        assert suspect is not None
        self.revoke(suspect)
        heir = data.draw(st.sampled_from([w for w in WORKERS if w != suspect]), "heir")
        self.claim(heir, 1 + sum(t.due(self.now) for t in self.tasks.values()))
        if self.beliefs_by_kind()["superseded"]:
            for kind in WRITE_KINDS:
                self.write(data, kind, "superseded")

    @rule(worker=st.sampled_from(WORKERS))
    def heartbeat(self, worker: str) -> None:
        answer = self.store.heartbeat(worker, self.now, LEASE, 0, 0)

        if not self.alive[worker]:
            assert answer is None, "a dead worker's heartbeat must answer None"
            return
        held = [t for t in self.tasks.values() if t.state == "running" and t.owner == worker]
        assert answer == {t.id: t.epoch for t in held}
        for task in held:
            task.expires = self.now + LEASE

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0, 6.0, 11.0]))
    def advance_and_requeue_expired(self, seconds: float) -> None:
        self.now += seconds
        expired = sorted(
            t.id
            for t in self.tasks.values()
            if t.state == "running" and t.expires is not None and t.expires < self.now
        )

        requeued = self.store.requeue_expired(self.now)

        assert requeued == expired
        for task_id in requeued:
            self.lose_lease(self.tasks[task_id])

    @precondition(lambda self: bool(self.tasks))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        task = self.tasks[data.draw(st.sampled_from(sorted(self.tasks)), "task")]
        cancellable = task.state in ("queued", "running")
        before = None if cancellable else self.snapshot(task.id)

        # the tasks it sent go with it, every generation, reached through finished ones
        # the store still keeps (a pruned one hides what it sent: the store's way too)
        descendants, parents = [], [task]
        while parents:
            children = [
                self.tasks[i] for p in parents for i in p.children.values() if i in self.tasks
            ]
            descendants += [c.id for c in children if c.state in ("queued", "running")]
            parents = children
        expected = [task.id, *sorted(descendants)] if cancellable else []
        if descendants:
            event("cancel with open descendants")

        assert self.store.cancel_tree(task.id, self.now, "operator") == expected

        if not cancellable:
            assert self.snapshot(task.id) == before
            return
        for task_id in expected:
            gone = self.tasks[task_id]
            row = self.store.get_task(task_id)
            assert row is not None and row.epoch > gone.epoch, "cancel must fence off the holder"
            gone.state, gone.epoch, gone.owner, gone.expires = "cancelled", row.epoch, None, None

    @precondition(lambda self: any(t.state == "dead" for t in self.tasks.values()))
    @rule(data=st.data())
    def retry_dead(self, data: st.DataObject) -> None:
        """An operator queues a dead letter again: at once, with a fresh budget of
        failures and redeliveries, its attempts and journal kept, its epoch as it was
        (the next claim bumps it), and its dead descendants, reached through dead
        ones, with it. Any other task is refused and nothing changes. The holders of
        its old leases stay refused (the write rules try them)."""
        dead = sorted(i for i, t in self.tasks.items() if t.state == "dead")
        pool = dead if data.draw(st.booleans(), "a dead one") else sorted(self.tasks)
        task = self.tasks[data.draw(st.sampled_from(pool), "task")]
        before = None if task.state == "dead" else self.snapshot(task.id)

        answer = self.store.retry_dead(task.id, self.now)

        if before is not None:
            assert answer is False, f"retried task {task.id}, which was {task.state}"
            assert self.snapshot(task.id) == before
            return
        assert answer is True
        generation = [task]
        while generation:
            for revived in generation:
                revived.state, revived.ready_at = "queued", self.now
                revived.failures = revived.redeliveries = 0
                self.final.pop(revived.id, None)  # a dead letter ends again later
            generation = [
                self.tasks[c]
                for parent in generation
                for c in parent.children.values()
                if c in self.tasks and self.tasks[c].state == "dead"
            ]
            if generation:
                event("retried with dead children")

    @rule(dead_too=st.booleans())
    def prune(self, dead_too: bool) -> None:
        """Retention: every finished task goes (dead letters when ``dead_too``), except
        a child whose parent may run again (queued, running, or a dead letter an
        operator may retry), and on SQLite the newest task, whose id the next task
        would take."""
        parent_of = {c: p.id for p in self.tasks.values() for c in p.children.values()}
        ending = {"succeeded", "cancelled", "dead"} if dead_too else {"succeeded", "cancelled"}
        newest = max(self.tasks, default=0) if isinstance(self.store, SqliteStore) else None
        expected = sorted(
            t.id
            for t in self.tasks.values()
            if t.state in ending
            and t.id != newest
            and (
                parent_of.get(t.id) not in self.tasks
                or self.tasks[parent_of[t.id]].state not in ("queued", "running", "dead")
            )
        )
        cutoff = self.now + 1  # every finished task finished before it

        pruned = self.store.prune_tasks(cutoff, cutoff if dead_too else None)

        assert pruned == len(expected)
        event("pruned some" if expected else "pruned none")
        for task_id in expected:
            del self.tasks[task_id]
            self.final.pop(task_id, None)
            assert self.snapshot(task_id)[:3] == (None, [], [])

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def store_agrees_with_the_model(self) -> None:
        rows = {r.id: r for r in self.store.list_tasks(limit=100_000)}
        assert sorted(rows) == sorted(self.tasks)
        for task_id, task in self.tasks.items():
            row = rows[task_id]
            assert (row.state, row.epoch, row.lease_owner, row.lease_expires_at) == (
                task.state,
                task.epoch,
                task.owner,
                task.expires,
            ), f"task {task_id}"
            assert (row.attempts, row.failures, row.redeliveries) == (
                task.attempts,
                task.failures,
                task.redeliveries,
            ), f"task {task_id}"

    @invariant()
    def counts_and_listings_by_state_agree_with_the_model(self) -> None:
        """The counts come from three partial indexes (queued, running, finished) and
        the listings of rare states from one: a transition an index missed shows here."""
        expected: dict[str, int] = {}
        for task in self.tasks.values():
            expected[task.state] = expected.get(task.state, 0) + 1
        counted: dict[str, int] = {}
        for (queue, _, state), n in self.store.count_tasks().items():
            assert queue == "q" and n > 0
            counted[state] = counted.get(state, 0) + n
        assert counted == expected
        assert self.store.open_count("q") == sum(
            1 for t in self.tasks.values() if t.state in ("queued", "running")
        )
        for state in ("dead", "cancelled", "running"):
            listed = [r.id for r in self.store.list_tasks(state=state, limit=100_000)]
            assert listed == sorted(i for i, t in self.tasks.items() if t.state == state)

    @invariant()
    def at_most_one_believed_lease_is_live(self) -> None:
        rows = {r.id: r for r in self.store.list_tasks(limit=100_000)}
        for task_id, row in rows.items():
            live = [
                (worker, epoch)
                for worker, held in self.beliefs.items()
                for tid, epoch in held.items()
                if tid == task_id and row.state == "running" and epoch == row.epoch
            ]
            assert len(live) <= 1, f"task {task_id} has two live leases: {live}"
            if row.state == "running":
                assert live == [(row.lease_owner, row.epoch)]

    @invariant()
    def epochs_never_go_down(self) -> None:
        for row in self.store.list_tasks(limit=100_000):
            assert row.epoch >= self.highest_epoch.get(row.id, 0), f"task {row.id} went back"
            self.highest_epoch[row.id] = row.epoch

    @invariant()
    def terminal_states_are_final(self) -> None:
        for task_id, task in self.tasks.items():
            if task.state not in TERMINAL_STATES:
                continue
            now = self.snapshot(task_id)[:3]
            if task_id in self.final:
                assert now == self.final[task_id], f"task {task_id} changed after it ended"
            else:
                self.final[task_id] = now


# --- running the machine -----------------------------------------------------------------------

SQLITE_SETTINGS = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
POSTGRES_SETTINGS = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def test_leases_on_sqlite(tmp_path: Path) -> None:
    counter = itertools.count()

    def fresh_store() -> Store:
        store = SqliteStore(tmp_path / f"leases-{next(counter)}.db", durability="normal")
        store.migrate()
        return store

    def done(store: Store) -> None:
        store.close()

    run_state_machine_as_test(lambda: LeaseMachine(fresh_store, done), settings=SQLITE_SETTINGS)


@pytest.fixture
def postgres_store(postgres_url: str) -> Iterator[tuple[Store, psycopg.Connection[Any]]]:
    store = open_store(postgres_url)
    admin = psycopg.connect(postgres_url, autocommit=True)
    try:
        yield store, admin
    finally:
        admin.close()
        store.close()


@pytest.mark.postgres
def test_leases_on_postgres(postgres_store: tuple[Store, psycopg.Connection[Any]]) -> None:
    store, admin = postgres_store

    def fresh_store() -> Store:
        admin.execute("TRUNCATE tasks, attempts, effects, workers, events RESTART IDENTITY")
        return store

    def done(store: Store) -> None:
        pass  # one store and schema serve every example; the next one truncates

    run_state_machine_as_test(lambda: LeaseMachine(fresh_store, done), settings=POSTGRES_SETTINGS)
