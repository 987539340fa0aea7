"""A worker in this process against a real SQLite store: the agent API end to end."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from _polling import wait_until
from fleetops import ConfigError, Context, LeaseLost, RetryPolicy, TaskFailed, TaskInfo
from fleetops.chaos._relay import CuttableRelay, postgres_target
from fleetops.queue import QueueClient
from fleetops.queue._client import MAX_VALUE_BYTES, ChangeWatcher
from fleetops.runtime import AgentSpec, Worker, WorkerSettings, agent
from fleetops.runtime import _worker as worker_module
from fleetops.runtime._worker import RECYCLE_EXIT_CODE
from fleetops.store import (
    TERMINAL_STATES,
    AttemptRecord,
    Complete,
    Fail,
    NewTask,
    Operation,
    OpResult,
    TaskRecord,
    open_store,
)
from fleetops.telemetry import catalog
from fleetops.telemetry._logsearch import LogFilter, search_logs

CALLS: dict[str, int] = {}
SIDE_EFFECTS: list[str] = []


def _bump(name: str) -> int:
    CALLS[name] = CALLS.get(name, 0) + 1
    return CALLS[name]


@agent(name="child_double", retry=RetryPolicy(max_attempts=1))
async def child_double(task: TaskInfo, ctx: Context) -> int:
    return int(task.payload) * 2


@agent(name="child_boom", retry=RetryPolicy(max_attempts=1))
async def child_boom(task: TaskInfo, ctx: Context) -> None:
    raise ValueError("child exploded")


@agent(name="parent")
async def parent(task: TaskInfo, ctx: Context) -> dict[str, Any]:
    doubled = await ctx.call("child_double", 21)
    sent = await ctx.send("child_double", 1)
    try:
        await ctx.call("child_boom", None)
        failure = None
    except TaskFailed as exc:
        failure = exc.reason
    return {"doubled": doubled, "sent": sent, "failure": failure}


@agent(name="effect_then_fail", retry=RetryPolicy(max_attempts=3, backoff_base=0.0))
async def effect_then_fail(task: TaskInfo, ctx: Context) -> Any:
    charged = await ctx.effect("charge", lambda: SIDE_EFFECTS.append(f"charge-{task.id}") or 42)
    if _bump(f"eff-{task.id}") == 1:
        raise RuntimeError("transient failure after the effect")
    return {"charged": charged, "attempt": task.attempt}


@agent(name="effect_returns_an_object", retry=RetryPolicy(max_attempts=3, backoff_base=0.0))
async def effect_returns_an_object(task: TaskInfo, ctx: Context) -> Any:
    # a charge object from a payment client, say: the charge happened, its result
    # cannot be journaled
    await ctx.effect("charge", lambda: SIDE_EFFECTS.append(f"charge-{task.id}") or object())
    return "unreachable"


@agent(name="always_fails", retry=RetryPolicy(max_attempts=2, backoff_base=0.0))
async def always_fails(task: TaskInfo, ctx: Context) -> None:
    raise RuntimeError(f"nope {task.attempt}")


@agent(name="sleepy", timeout=0.2, retry=RetryPolicy(max_attempts=1))
async def sleepy(task: TaskInfo, ctx: Context) -> None:
    await asyncio.sleep(float(task.payload))


@agent(name="nap", retry=RetryPolicy(max_attempts=1))
async def nap(task: TaskInfo, ctx: Context) -> None:
    await asyncio.sleep(float(task.payload))


@agent(name="own_timeout", retry=RetryPolicy(max_attempts=1))
async def own_timeout(task: TaskInfo, ctx: Context) -> None:
    # no timeout of its own in the spec: this TimeoutError is the agent's failure
    await asyncio.wait_for(asyncio.sleep(1), timeout=0.01)


@agent(name="unserialisable", retry=RetryPolicy(max_attempts=3))
async def unserialisable(task: TaskInfo, ctx: Context) -> object:
    return object()


async def _with_worker(
    url: str,
    body: Callable[[QueueClient, Worker], Awaitable[None]],
    agents: list[AgentSpec],
    rng: random.Random | None = None,
    **settings: Any,
) -> None:
    async with QueueClient(url) as client:
        worker = Worker(
            client,
            worker_id="w-test",
            cluster="c",
            agents={a.name: a for a in agents},
            settings=WorkerSettings(**({"concurrency": 20, "shutdown_grace": 1.0} | settings)),
            rng=rng,
        )
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(worker.run(stop))
            try:
                await body(client, worker)
            finally:
                stop.set()


async def _wait_terminal(client: QueueClient, task_id: int, within: float = 10) -> TaskRecord:
    async def terminal() -> bool:
        record = await client.run(client.store.get_task, task_id)
        return record is not None and record.state in TERMINAL_STATES

    await wait_until(terminal, within=within)
    record = await client.run(client.store.get_task, task_id)
    assert record is not None
    return record


async def _still_runs_tasks(client: QueueClient) -> None:
    """The worker (with child_double) runs a task submitted now: it did not stop."""
    late = await client.submit_many([NewTask("c", "child_double", "6")])
    assert json.loads((await _wait_terminal(client, late[0].id)).result or "null") == 12


def spec(fn: Any) -> AgentSpec:
    found: AgentSpec = fn.__fleetops_agent__
    return found


def _worker(client: QueueClient, worker_id: str, agent_fn: Any, **settings: Any) -> Worker:
    """A worker of cluster ``c`` running one agent."""
    one = spec(agent_fn)
    return Worker(
        client,
        worker_id=worker_id,
        cluster="c",
        agents={one.name: one},
        settings=WorkerSettings(**settings),
    )


def test_call_send_and_child_failure(sqlite_url: str) -> None:
    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "parent"))
        record = await _wait_terminal(client, sub.id)
        assert record.state == "succeeded", record.error
        result = json.loads(record.result or "null")
        assert result["doubled"] == 42
        assert "child exploded" in result["failure"]
        children = await client.run(client.store.list_tasks, None, "c", "child_double")
        assert {c.parent_id for c in children} == {sub.id}
        assert len(children) == 2  # the call and the send, each exactly once

    asyncio.run(
        _with_worker(sqlite_url, body, [spec(parent), spec(child_double), spec(child_boom)])
    )


@agent(name="deadline_parent")
async def deadline_parent(task: TaskInfo, ctx: Context) -> list[int]:
    """Calls with no deadline, a later one and an earlier one; sends with none."""
    ahead = float(task.payload)
    return [
        await ctx.call("child_double", 1),
        await ctx.call("child_double", 2, deadline=ahead + 3600),
        await ctx.call("child_double", 3, deadline=ahead - 1),
        await ctx.send("child_double", 4),
    ]


def test_a_called_child_runs_by_its_parents_deadline_at_the_latest(sqlite_url: str) -> None:
    """A parent that must finish by D calls children: none of them may run past D (its
    result would come too late to be used), unless given an earlier deadline, which
    stands. A child it only sends (work of its own) keeps the deadline it was given."""

    async def body(client: QueueClient, worker: Worker) -> None:
        due = client.clock.now() + 600
        sub = await client.submit(NewTask("c", "deadline_parent", json.dumps(due), deadline=due))
        record = await _wait_terminal(client, sub.id)
        assert record.state == "succeeded", record.error
        sent = json.loads(record.result or "null")[3]
        children = await client.run(client.store.list_tasks, None, "c", "child_double")
        assert {c.payload: c.deadline for c in children} == {
            "1": due,
            "2": due,
            "3": due - 1,
            "4": None,
        }
        assert [c.id for c in children if c.payload == "4"] == [sent]

    asyncio.run(_with_worker(sqlite_url, body, [spec(deadline_parent), spec(child_double)]))


def test_effect_is_journaled_and_replayed_on_retry(sqlite_url: str) -> None:
    SIDE_EFFECTS.clear()

    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "effect_then_fail"))
        record = await _wait_terminal(client, sub.id)
        assert record.state == "succeeded"
        assert json.loads(record.result or "null") == {"charged": 42, "attempt": 2}
        assert SIDE_EFFECTS == [f"charge-{sub.id}"]  # once, though the task ran twice
        effects = await client.run(client.store.effects, sub.id)
        assert [(e.key, e.state, e.executions) for e in effects] == [("charge", "done", 1)]
        attempts = await client.run(client.store.attempts, sub.id)
        assert [a.outcome for a in attempts] == ["failed", "succeeded"]

    asyncio.run(_with_worker(sqlite_url, body, [spec(effect_then_fail)]))


@agent(name="effect_twice_at_once", retry=RetryPolicy(max_attempts=1))
async def effect_twice_at_once(task: TaskInfo, ctx: Context) -> Any:
    """Starts one effect key twice at once; with payload "flaky", its first run raises."""
    runs: list[bool] = []

    async def charge(call: Any) -> str:
        runs.append(call.reexecution)
        SIDE_EFFECTS.append(f"charge-{task.id}")
        await asyncio.sleep(0.05)  # both calls are in flight meanwhile
        if task.payload == "flaky" and len(runs) == 1:
            raise ConnectionError("card network hiccup")
        return f"receipt-{len(runs)}"

    answers = await asyncio.gather(
        ctx.effect("charge", charge), ctx.effect("charge", charge), return_exceptions=True
    )
    return {
        "answers": [a if isinstance(a, str) else type(a).__name__ for a in answers],
        "reexecutions": runs,
    }


def test_one_effect_key_started_twice_at_once_runs_once(store_url: str) -> None:
    """Two calls of one key in flight together: the second waits for the first and gets
    its result; it runs the effect only if the first raised (as a later call would)."""
    SIDE_EFFECTS.clear()

    async def body(client: QueueClient, worker: Worker) -> None:
        once = await client.submit(NewTask("c", "effect_twice_at_once"))
        flaky = await client.submit(NewTask("c", "effect_twice_at_once", '"flaky"'))
        for task_id, answers, reexecutions, executions in (
            (once.id, ["receipt-1", "receipt-1"], [False], 1),
            (flaky.id, ["ConnectionError", "receipt-2"], [False, True], 2),
        ):
            record = await _wait_terminal(client, task_id)
            assert record.state == "succeeded", record.error
            result = json.loads(record.result or "null")
            assert result == {"answers": answers, "reexecutions": reexecutions}
            assert SIDE_EFFECTS.count(f"charge-{task_id}") == executions
            effects = await client.run(client.store.effects, task_id)
            assert [(e.key, e.state, e.executions) for e in effects] == [
                ("charge", "done", executions)
            ]

    asyncio.run(_with_worker(store_url, body, [spec(effect_twice_at_once)]))


def test_an_effect_whose_result_cannot_be_journaled_runs_once_and_dead_letters_its_task(
    sqlite_url: str,
) -> None:
    SIDE_EFFECTS.clear()

    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "effect_returns_an_object"))
        record = await _wait_terminal(client, sub.id)
        assert record.state == "dead"
        assert "not JSON-serialisable" in (record.dead_reason or "")
        assert SIDE_EFFECTS == [f"charge-{sub.id}"]  # not again on a retry
        effects = await client.run(client.store.effects, sub.id)
        assert [(e.key, e.state, e.executions) for e in effects] == [("charge", "done", 1)]

    asyncio.run(_with_worker(sqlite_url, body, [spec(effect_returns_an_object)]))


def test_retries_then_dead_letters_with_the_reason(sqlite_url: str) -> None:
    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "always_fails"))
        record = await _wait_terminal(client, sub.id)
        assert record.state == "dead"
        assert record.failures == 2
        assert "failed 2 time(s)" in (record.dead_reason or "")
        assert "nope 2" in (record.dead_reason or "")

    asyncio.run(_with_worker(sqlite_url, body, [spec(always_fails)]))


def test_timeout_and_bad_result_are_dead_lettered_and_foreign_agents_left_alone(
    sqlite_url: str,
) -> None:
    async def body(client: QueueClient, worker: Worker) -> None:
        slow = await client.submit(NewTask("c", "sleepy", "5"))
        foreign = await client.submit(NewTask("c", "hosted_elsewhere"))
        bad = await client.submit(NewTask("c", "unserialisable"))
        assert "timed out" in ((await _wait_terminal(client, slow.id)).error or "")
        bad_rec = await _wait_terminal(client, bad.id)
        assert bad_rec.state == "dead"
        assert bad_rec.failures == 1  # not retried: it would fail the same way
        assert "JSON" in (bad_rec.dead_reason or "")
        # a worker only claims the agents it hosts; another worker's task waits for it
        foreign_rec = await client.run(client.store.get_task, foreign.id)
        assert foreign_rec is not None
        assert (foreign_rec.state, foreign_rec.attempts) == ("queued", 0)

    asyncio.run(_with_worker(sqlite_url, body, [spec(sleepy), spec(unserialisable)]))


def test_deadline_in_the_past_is_not_run(sqlite_url: str) -> None:
    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "sleepy", "0", deadline=client.clock.now() - 1))
        record = await _wait_terminal(client, sub.id)
        assert record.state == "dead"
        assert "deadline" in (record.dead_reason or "")

    asyncio.run(_with_worker(sqlite_url, body, [spec(sleepy)]))


def test_revoked_lease_cancels_the_handler_and_fences_its_writes(sqlite_url: str) -> None:
    started = asyncio.Event()
    finished: list[str] = []

    @agent(name="long_effect")
    async def long_effect(task: TaskInfo, ctx: Context) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            finished.append("cancelled")
            raise

    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "long_effect"))
        await asyncio.wait_for(started.wait(), 5)
        revoked = await client.run(client.store.revoke_worker, "w-test", client.clock.now(), "t")
        assert revoked == [sub.id]
        # the worker was declared dead: it stops, its handler is cancelled
        await wait_until(lambda: worker.dead, within=5)
        record = await client.run(client.store.get_task, sub.id)
        assert record is not None and record.state == "queued" and record.epoch == 2

    asyncio.run(_with_worker(sqlite_url, body, [spec(long_effect)], heartbeat_interval=0.05))
    assert finished == ["cancelled"]


def test_cancelled_running_task_stops_and_stale_effect_is_refused(sqlite_url: str) -> None:
    gate = asyncio.Event()
    outcome: list[str] = []

    @agent(name="waits_then_effects")
    async def waits_then_effects(task: TaskInfo, ctx: Context) -> None:
        gate.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcome.append("cancelled")
            raise

    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "waits_then_effects"))
        await asyncio.wait_for(gate.wait(), 5)
        assert await client.run(client.store.cancel, sub.id, client.clock.now(), "user asked")
        await wait_until(lambda: bool(outcome), within=5)
        record = await client.run(client.store.get_task, sub.id)
        assert record is not None and record.state == "cancelled"

    asyncio.run(
        _with_worker(
            sqlite_url, body, [spec(waits_then_effects)], heartbeat_interval=0.05, lease_seconds=0.3
        )
    )
    assert outcome == ["cancelled"]


def test_stale_context_raises_lease_lost(sqlite_url: str) -> None:
    async def scenario() -> None:
        async with QueueClient(sqlite_url) as client:
            sub = await client.submit(NewTask("c", "x"))
            await client.run(
                client.store.register_worker, "w1", "c", None, None, 1, client.clock.now()
            )
            [claimed] = await client.claim("w1", ["c"], 1, 30)
            worker = Worker(client, worker_id="w1", cluster="c", agents={})
            from fleetops.runtime import Context as Ctx
            from fleetops.runtime import TaskInfo as Info

            info = Info(claimed.id, "c", "x", None, 1, claimed.epoch, 0, None, None, {})
            ctx = Ctx(worker, claimed, info)
            await client.run(client.store.revoke_worker, "w1", client.clock.now(), "test")
            ran: list[int] = []
            with pytest.raises(LeaseLost):
                await ctx.effect("k", lambda: ran.append(1))
            with pytest.raises(LeaseLost):
                await ctx.send("c/other", {})
            assert ran == []  # the effect never ran for a stale holder
            assert await client.run(client.store.effects, sub.id) == []

    asyncio.run(scenario())


def test_graceful_shutdown_releases_unfinished_leases(sqlite_url: str) -> None:
    async def scenario() -> None:
        async with QueueClient(sqlite_url) as client:
            worker = _worker(client, "w-drain", nap, shutdown_grace=0.1)
            stop = asyncio.Event()
            ids = [(await client.submit(NewTask("c", "nap", "30"))).id for _ in range(3)]
            async with asyncio.TaskGroup() as tg:
                tg.create_task(worker.run(stop))
                await wait_until(lambda: worker.inflight == 3, within=5)
                stop.set()
            for task_id in ids:
                record = await client.run(client.store.get_task, task_id)
                assert record is not None
                assert record.state == "queued", "an aborted task must go back to the queue"
                outcomes = [a.outcome for a in await client.run(client.store.attempts, task_id)]
                assert outcomes == ["released"]
            workers = await client.run(client.store.list_workers, "c")
            assert [w.state for w in workers] == ["stopped"]

    # the naps (30 s, no timeout) outlast the grace (0.1 s) however late the stop comes:
    # the drain must abort them (with a 0.15 s task, a stop seen 50 ms late let them finish)
    asyncio.run(scenario())


def test_a_write_syncing_when_shutdown_begins_leaves_no_task_leased(sqlite_url: str) -> None:
    """At durability full the fsync of a worker's write runs on the store thread. A
    stop that comes while it waits for the disk must not drop the tasks the worker
    leased: they are run (or released) like every other claimed task, not left
    leased to a stopped worker until their leases expire (a redelivery later, counted
    against the task)."""
    committing = threading.Event()

    async def scenario() -> None:
        async with QueueClient(
            f"{sqlite_url}?durability=full", inline=True, inline_sync_limit=0, kernel_fsync=False
        ) as client:
            assert client.inline, "the writes must take the inline path, whose fsync is deferred"
            store: Any = client.store
            claim, sync_wal = store.claim, store.sync_wal
            claimed: list[int] = []

            def claim_and_note(*args: Any) -> Any:
                rows = claim(*args)
                claimed.extend(t.id for t in rows)
                return rows

            def slow_sync() -> None:
                if claimed and not committing.is_set():
                    committing.set()  # a write after the claim: stop the worker meanwhile
                    time.sleep(0.3)
                sync_wal()

            store.claim, store.sync_wal = claim_and_note, slow_sync
            worker = _worker(client, "w-claim-stop", nap, shutdown_grace=5.0)
            stop = asyncio.Event()
            # queued before the worker starts: its first claim takes all three
            ids = [t.id for t in await client.submit_many([NewTask("c", "nap", "0.01")] * 3)]
            async with asyncio.TaskGroup() as tg:
                tg.create_task(worker.run(stop))
                assert await asyncio.to_thread(committing.wait, 10)
                stop.set()
            assert sorted(claimed) == sorted(ids)
            for task_id in ids:
                record = await client.run(client.store.get_task, task_id)
                assert record is not None
                assert record.state == "succeeded", (
                    f"task {task_id} is {record.state} (lease {record.lease_owner}): "
                    "a task leased when shutdown began was dropped"
                )

    asyncio.run(scenario())


def test_idempotency_key_and_priority(sqlite_url: str) -> None:
    async def scenario() -> None:
        async with QueueClient(sqlite_url) as client:
            a = await client.submit(NewTask("c", "x", idempotency_key="order-1"))
            b = await client.submit(NewTask("c", "x", idempotency_key="order-1"))
            assert (a.id, a.created) == (b.id, True) and b.created is False
            low = await client.submit(NewTask("c", "x", priority=0))
            high = await client.submit(NewTask("c", "x", priority=9))
            claimed = await client.claim("w", ["c"], 2, 30)
            assert claimed[0].id == high.id
            assert {t.id for t in claimed} <= {a.id, low.id, high.id}

    asyncio.run(scenario())


@agent(name="fan_out")
async def fan_out(task: TaskInfo, ctx: Context) -> list[int]:
    return list(await asyncio.gather(*(ctx.call("child_double", i) for i in range(3))))


def test_a_waiting_parent_gives_its_slot_to_its_children(sqlite_url: str) -> None:
    """With one slot, a parent calling children in its own cluster must not deadlock."""

    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "fan_out"))
        record = await _wait_terminal(client, sub.id, within=10)
        assert record.state == "succeeded"
        assert json.loads(record.result or "null") == [0, 2, 4]

    asyncio.run(_with_worker(sqlite_url, body, [spec(fan_out), spec(child_double)], concurrency=1))


def test_a_submit_from_another_client_rings_the_workers_doorbell(sqlite_url: str) -> None:
    async def body(client: QueueClient, worker: Worker) -> None:
        await wait_until(lambda: worker.doorbell is not None, within=5)
        assert worker.doorbell is not None
        async with QueueClient(sqlite_url) as producer:
            submitted = await producer.submit_many([NewTask("c", "child_double", "4")])
            record = await _wait_terminal(client, submitted[0].id)
            assert json.loads(record.result or "null") == 8
            # a cluster this worker does not serve rings nothing here
            await producer.submit_many([NewTask("elsewhere", "child_double", "1")])
        assert worker.doorbell.rings == 1

    asyncio.run(_with_worker(sqlite_url, body, [spec(child_double)]))


def test_an_agents_own_timeout_error_fails_its_task_not_the_worker(sqlite_url: str) -> None:
    async def body(client: QueueClient, worker: Worker) -> None:
        failing, fine = await client.submit_many(
            [NewTask("c", "own_timeout", "null"), NewTask("c", "child_double", "5")]
        )
        record = await _wait_terminal(client, failing.id)
        assert record.state == "dead"
        assert "TimeoutError" in (record.dead_reason or "")
        assert json.loads((await _wait_terminal(client, fine.id)).result or "null") == 10
        await _still_runs_tasks(client)

    asyncio.run(_with_worker(sqlite_url, body, [spec(own_timeout), spec(child_double)]))


def test_a_task_stored_with_bad_json_is_dead_lettered_not_the_worker_stopped(
    sqlite_url: str,
) -> None:
    # written past the client's checks (another writer, an older fleetops): the worker
    # must not fail with it, or every task it runs would be redelivered over and over
    async def body(client: QueueClient, worker: Worker) -> None:
        fine = await client.submit_many([NewTask("c", "nap", "0.5")])
        bad_payload, bad_headers = await client.run(
            client.store.submit,
            [
                NewTask("c", "child_double", "{not json"),
                NewTask("c", "child_double", "7", headers="[1,"),
            ],
            time.time(),
        )
        for bad, field in ((bad_payload, "payload"), (bad_headers, "headers")):
            record = await _wait_terminal(client, bad.id)
            assert record.state == "dead"
            assert f"{field} is not JSON" in (record.dead_reason or "")
        nap = await _wait_terminal(client, fine[0].id)
        assert nap.state == "succeeded" and nap.redeliveries == 0
        await _still_runs_tasks(client)

    asyncio.run(_with_worker(sqlite_url, body, [spec(nap), spec(child_double)]))


def test_a_submit_with_bad_json_is_refused_naming_the_field_and_stores_nothing(
    sqlite_url: str,
) -> None:
    async def main() -> None:
        async with QueueClient(sqlite_url) as client:
            with pytest.raises(ConfigError) as caught:
                await client.submit_many(
                    [NewTask("c", "child_double", "1"), NewTask("c", "child_double", "hello")]
                )
            assert caught.value.field == "payload" and caught.value.value == "hello"
            assert "json.dumps" in caught.value.fix
            with pytest.raises(ConfigError) as caught:
                await client.submit(NewTask("c", "child_double", "1", headers="[1]"))
            assert caught.value.field == "headers" and "JSON object" in caught.value.fix
            long = "x" * 500
            with pytest.raises(ConfigError) as caught:
                await client.submit(NewTask("c", "child_double", long))
            assert len(str(caught.value)) < 300  # the value is shown cut short
            assert await client.run(client.store.count_tasks) == {}

    asyncio.run(main())


@pytest.mark.parametrize(
    ("field", "task"),
    [
        ("payload", NewTask("c", "child_double", json.dumps({"x": float("nan")}))),
        ("payload", NewTask("c", "child_double", "Infinity")),
        ("payload", NewTask("c", "child_double", '"\ud800"')),
        ("queue", NewTask("c\x00", "child_double")),
        ("agent", NewTask("c", "")),
        ("idempotency_key", NewTask("c", "child_double", idempotency_key="\ud800")),
        ("idempotency_key", NewTask("c", "child_double", idempotency_key="a\x00b")),
        ("priority", NewTask("c", "child_double", priority=2**31)),
        ("priority", NewTask("c", "child_double", priority=True)),
        ("max_attempts", NewTask("c", "child_double", max_attempts=-1)),
        ("max_redeliveries", NewTask("c", "child_double", max_redeliveries=2**40)),
        ("deadline", NewTask("c", "child_double", deadline=float("nan"))),
        ("run_after", NewTask("c", "child_double", run_after=float("inf"))),
    ],
    ids=lambda v: v if isinstance(v, str) else "",  # the values hold lone surrogates
)
def test_a_task_either_store_would_refuse_or_keep_differently_is_refused_naming_the_field(
    store_url: str, field: str, task: NewTask
) -> None:
    """Checked before it is stored, alike for both stores: PostgreSQL refused a priority
    past its INTEGER or a NUL that SQLite took; a NaN deadline vanished on SQLite and
    dead-lettered on PostgreSQL; a NaN run_after was never claimed there."""

    async def main() -> None:
        async with QueueClient(store_url) as client:
            with pytest.raises(ConfigError) as caught:
                await client.submit_many([NewTask("c", "child_double", "1"), task])
            assert caught.value.field == field
            assert caught.value.fix
            assert await client.run(client.store.count_tasks) == {}

    asyncio.run(main())


def test_a_submit_larger_than_the_limit_is_refused_naming_the_field_and_stores_nothing(
    sqlite_url: str,
) -> None:
    at_limit = json.dumps("x" * (MAX_VALUE_BYTES - 2))  # the quotes make it MAX_VALUE_BYTES
    # fewer characters than bytes: 2 bytes each in UTF-8
    accents = json.dumps("é" * (MAX_VALUE_BYTES // 2), ensure_ascii=False)

    async def main() -> None:
        async with QueueClient(sqlite_url) as client:
            for field, task in (
                ("payload", NewTask("c", "child_double", at_limit + " ")),
                ("payload", NewTask("c", "child_double", accents)),
                ("headers", NewTask("c", "child_double", "1", headers=json.dumps({"h": at_limit}))),
            ):
                with pytest.raises(ConfigError) as caught:
                    await client.submit_many([NewTask("c", "child_double", "1"), task])
                assert caught.value.field == field
                assert str(caught.value.value).endswith(" bytes of JSON")
                assert "file or an object store" in caught.value.fix
            assert await client.run(client.store.count_tasks) == {}
            done = await client.submit(NewTask("c", "child_double", at_limit))
            record = await client.run(client.store.get_task, done.id)
            assert record is not None and len(record.payload) == MAX_VALUE_BYTES

    asyncio.run(main())


@agent(name="too_large", retry=RetryPolicy(max_attempts=3, backoff_base=0.0))
async def too_large(task: TaskInfo, ctx: Context) -> Any:
    big = "x" * MAX_VALUE_BYTES
    if task.payload == "send":
        try:
            await ctx.send("child_double", big)
        except ConfigError as exc:
            return {"refused": exc.field}
        return "sent"
    if task.payload == "effect":
        await ctx.effect("upload", lambda: SIDE_EFFECTS.append(f"upload-{task.id}") or big)
        return "unreachable"
    return big


def test_a_result_child_or_effect_result_over_the_limit_fails_for_good_naming_its_size(
    sqlite_url: str,
) -> None:
    async def body(client: QueueClient, worker: Worker) -> None:
        result, send, effect = await client.submit_many(
            [NewTask("c", "too_large", json.dumps(kind)) for kind in ("result", "send", "effect")]
        )
        record = await _wait_terminal(client, result.id)
        assert record.state == "dead" and record.attempts == 1
        assert f"{MAX_VALUE_BYTES + 2:,} bytes of JSON" in (record.dead_reason or "")
        record = await _wait_terminal(client, send.id)
        assert json.loads(record.result or "null") == {"refused": "payload"}
        record = await _wait_terminal(client, effect.id)
        assert record.state == "dead" and record.attempts == 1
        assert "bytes of JSON" in (record.dead_reason or "")
        assert SIDE_EFFECTS.count(f"upload-{effect.id}") == 1
        effects = await client.run(client.store.effects, effect.id)
        assert [(e.key, e.state, e.result, e.executions) for e in effects] == [
            ("upload", "done", "null", 1)
        ]
        await _still_runs_tasks(client)

    asyncio.run(_with_worker(sqlite_url, body, [spec(too_large), spec(child_double)]))


def _look_up(order: dict[str, Any]) -> Any:
    return order["missing"]


@agent(name="raises_deep", retry=RetryPolicy(max_attempts=1))
async def raises_deep(task: TaskInfo, ctx: Context) -> Any:
    if task.payload == "long":
        raise RuntimeError("x" * 100_000)
    return _look_up({})


def test_an_agents_failure_keeps_its_traceback_in_its_span_and_log_and_a_long_error_is_cut(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fleetops.worker")
    spans: dict[str, dict[str, Any]] = {}

    async def body(client: QueueClient, worker: Worker) -> None:
        deep, long = await client.submit_many(
            [NewTask("c", "raises_deep", json.dumps(p)) for p in ("deep", "long")]
        )
        record = await _wait_terminal(client, deep.id)
        assert record.state == "dead" and record.error == "KeyError: 'missing'"
        record = await _wait_terminal(client, long.id)
        assert record.state == "dead" and record.error is not None
        assert record.error == "RuntimeError: " + "x" * 4082 + " [95,918 characters cut]"
        assert record.dead_reason is not None and len(record.dead_reason) < 4200
        await wait_until(lambda: worker.processed == 2, within=5)
        await worker.flush_telemetry()
        for task_id, name in ((deep.id, "deep"), (long.id, "long")):
            rows = await client.run(client.store.get_spans, None, task_id)
            [attributes] = [json.loads(r[11]) for r in rows if r[8] == task_id]
            spans[name] = attributes

    asyncio.run(_with_worker(sqlite_url, body, [spec(raises_deep)]))
    failed = [r for r in caplog.records if r.getMessage() == "task.failed"]
    tracebacks = {r.fleetops["error"][:8]: r.fleetops["traceback"] for r in failed}
    deep_stack = tracebacks["KeyError"]
    assert deep_stack.startswith("Traceback (most recent call last)")
    assert "in raises_deep" in deep_stack and "in _look_up" in deep_stack
    assert deep_stack.rstrip().endswith("KeyError: 'missing'")
    long_stack = tracebacks["RuntimeE"]
    assert long_stack.startswith("[") and len(long_stack) <= 16384 + 40
    assert spans["deep"]["exception.stacktrace"] == deep_stack
    assert spans["deep"]["exception.type"] == "KeyError"
    assert len(spans["long"]["exception.message"]) < 4200


def test_utilization_counts_the_time_slots_were_busy_not_the_moment_of_the_snapshot(
    sqlite_url: str,
) -> None:
    from fleetops.telemetry import catalog

    async def body(client: QueueClient, worker: Worker) -> None:
        await wait_until(lambda: worker.doorbell is not None, within=5)
        began = asyncio.get_running_loop().time()
        (task,) = await client.submit_many([NewTask("c", "nap", "0.3")])
        await _wait_terminal(client, task.id)
        await worker.flush_telemetry()  # no task runs at this moment
        elapsed = asyncio.get_running_loop().time() - began
        value = worker.metrics.value(catalog.AGENT_UTILIZATION, ("c", "w-test"))
        assert value is not None
        # one of 4 slots busy for 0.3 s of the time since the worker started
        assert 0.3 / (4 * (elapsed + 5)) < value < 0.5

    asyncio.run(_with_worker(sqlite_url, body, [spec(nap)], concurrency=4, telemetry_interval=3600))


def test_a_span_store_that_cannot_be_written_does_not_stop_the_worker(sqlite_url: str) -> None:
    """Telemetry is never a reason to stop: with its span file unusable (a directory
    sits where the file would be), the worker keeps running tasks and stops cleanly."""
    from pathlib import Path

    from fleetops.store import SqliteStore

    db = Path(sqlite_url.removeprefix("sqlite:///").split("?", 1)[0])
    spans_path = db.with_name(db.name + "-spans")
    spans_path.mkdir(parents=True)

    async def body(client: QueueClient, worker: Worker) -> None:
        assert isinstance(client.store, SqliteStore) and client.store.spans_path == spans_path
        first = await client.submit_many([NewTask("c", "nap", "0.01")])
        assert (await _wait_terminal(client, first[0].id)).state == "succeeded"
        await asyncio.sleep(0.3)  # a few failed telemetry flushes (every 0.05 s)
        again = await client.submit_many([NewTask("c", "nap", "0.01")])
        assert (await _wait_terminal(client, again[0].id)).state == "succeeded"

    # worker.run raises out of the task group if a failed flush ended it
    asyncio.run(_with_worker(sqlite_url, body, [spec(nap)], telemetry_interval=0.05))


def test_a_worker_rides_out_a_store_that_fails_its_periodic_calls_for_a_while(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Heartbeats, the lease reaper and the child-result poll fail for half a second
    (a store restarting): the worker goes on, and a parent waiting on a child gets
    its result once the store answers again."""
    from fleetops import StoreError
    from fleetops.store._sql import SqlStore

    down = {"on": False, "refused": 0}
    for name in ("heartbeat", "beat", "requeue_expired", "get_tasks"):
        original = getattr(SqlStore, name)

        def flaky(self: SqlStore, *args: Any, _original: Any = original, **kw: Any) -> Any:
            if down["on"]:
                down["refused"] += 1
                raise StoreError("the store is restarting")
            return _original(self, *args, **kw)

        monkeypatch.setattr(SqlStore, name, flaky)

    async def body(client: QueueClient, worker: Worker) -> None:
        down["on"] = True
        parent_task = await client.submit(NewTask("c", "parent"))
        await asyncio.sleep(0.5)
        down["on"] = False
        record = await _wait_terminal(client, parent_task.id)
        assert record.state == "succeeded", record.error
        assert json.loads(record.result or "null")["doubled"] == 42
        assert not worker._stopping.is_set()

    asyncio.run(
        _with_worker(
            sqlite_url,
            body,
            [spec(parent), spec(child_double), spec(child_boom)],
            heartbeat_interval=0.05,
            reap_interval=0.05,
        )
    )
    assert down["refused"] >= 5


@agent(name="charge_then_nap", retry=RetryPolicy(max_attempts=1))
async def charge_then_nap(task: TaskInfo, ctx: Context) -> str:
    await ctx.effect("charge", lambda: SIDE_EFFECTS.append(f"cut-{task.id}"))
    await asyncio.sleep(0.3)
    return "done"


@pytest.mark.postgres
def test_a_worker_rides_out_its_database_going_away_for_seconds(postgres_url: str) -> None:
    """Every connection between a worker and PostgreSQL is cut, and new ones refused,
    for 1.5 s (a server restart, a failover, a network outage) while its handlers
    are between an effect and their completion. The worker keeps its handlers and
    their finished work, tries its claims, journal writes and outcomes again until
    the database answers, and goes on: every task succeeds on its one attempt, each
    effect happens once, and the worker is still running tasks afterwards."""
    SIDE_EFFECTS.clear()
    target = postgres_target(postgres_url)

    with CuttableRelay(target) as relay:

        async def body(client: QueueClient, worker: Worker) -> None:
            ids = [s.id for s in await client.submit_many([NewTask("c", "charge_then_nap")] * 40)]
            await wait_until(lambda: len(SIDE_EFFECTS) >= 10)
            relay.cut(1.5)
            await asyncio.sleep(1.6)
            records = [await _wait_terminal(client, task_id, within=30) for task_id in ids]
            assert [r.state for r in records] == ["succeeded"] * 40, [
                (r.id, r.state, r.error) for r in records if r.state != "succeeded"
            ]
            assert not worker._stopping.is_set()
            await _still_runs_tasks(client)

        asyncio.run(
            _with_worker(
                relay.url(postgres_url),
                body,
                [spec(charge_then_nap), spec(child_double)],
                heartbeat_interval=0.05,
            )
        )
        assert relay.dropped >= 1 and relay.refused >= 1, (relay.dropped, relay.refused)
    assert sorted(SIDE_EFFECTS) == sorted(set(SIDE_EFFECTS)), "an effect happened twice"
    assert len(SIDE_EFFECTS) == 40


@pytest.mark.postgres
def test_a_worker_tries_its_writes_again_as_soon_as_its_database_answers_a_beat(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """While its database is away, a worker's writes wait between tries, longer and
    longer. Its heartbeats go on probing meanwhile, and the first one answered ends
    those waits: here every wait is 30 s, and the work is done within seconds of the
    database's return all the same."""
    monkeypatch.setattr(worker_module, "STORE_RETRY_SECONDS", (30.0, 30.0))
    caplog.set_level(logging.WARNING, logger="fleetops.worker")
    SIDE_EFFECTS.clear()

    with CuttableRelay(postgres_target(postgres_url)) as relay:

        async def body(client: QueueClient, worker: Worker) -> None:
            ids = [s.id for s in await client.submit_many([NewTask("c", "charge_then_nap")] * 10)]
            await wait_until(lambda: len(SIDE_EFFECTS) == 10)
            relay.cut(1.0)  # the naps end in the cut: each completion is refused, and waits
            await asyncio.sleep(1.1)
            records = [await _wait_terminal(client, task_id, within=10) for task_id in ids]
            assert [r.state for r in records] == ["succeeded"] * 10

        asyncio.run(
            _with_worker(
                relay.url(postgres_url), body, [spec(charge_then_nap)], heartbeat_interval=0.05
            )
        )
        assert relay.dropped >= 1
    retried = [r for r in caplog.records if r.getMessage() == "store.write_retrying"]
    assert retried, "no write waited for the database"
    assert sorted(SIDE_EFFECTS) == sorted(set(SIDE_EFFECTS)) and len(SIDE_EFFECTS) == 10


#: tasks whose "charge" journal write was refused: the lease had been taken away
LOST_CHARGES: list[int] = []


@agent(name="reserve_nap_charge", retry=RetryPolicy(max_attempts=1))
async def reserve_nap_charge(task: TaskInfo, ctx: Context) -> str:
    await ctx.effect("reserve", lambda: SIDE_EFFECTS.append(f"reserve-{task.id}-{task.epoch}"))
    await asyncio.sleep(float(task.payload))
    try:
        await ctx.effect("charge", lambda: SIDE_EFFECTS.append(f"charge-{task.id}-{task.epoch}"))
    except LeaseLost:
        LOST_CHARGES.append(task.id)
        raise
    return "done"


@pytest.mark.postgres
def test_a_worker_cut_off_and_declared_dead_cannot_repeat_an_effect_once_it_reconnects(
    postgres_url: str,
) -> None:
    """Split brain. A worker loses its network to PostgreSQL while its handlers sit
    between two effects, and is declared dead there (as a failure detector elsewhere
    would): its tasks are taken from it. When the network comes back it is still
    running (it has not yet heard it was declared dead) and its handlers go on to
    their second effect: each of those journal writes reaches the database and is
    refused, its epoch stale, so the effect does not run. A healthy worker then
    finishes the tasks: it replays the first effects from the journal and runs the
    second ones. Every effect happens once, by the holder of the lease at the time."""
    SIDE_EFFECTS.clear()
    LOST_CHARGES.clear()
    target = postgres_target(postgres_url)

    async def main(relay: CuttableRelay) -> list[tuple[TaskRecord, list[AttemptRecord]]]:
        async with (
            QueueClient(relay.url(postgres_url)) as far,
            QueueClient(postgres_url) as near,
        ):
            # beating every 5 s, it hears it was declared dead only well after its
            # handlers' journal writes have been answered
            cut_off = _worker(
                far,
                "w-cut-off",
                reserve_nap_charge,
                concurrency=20,
                heartbeat_interval=5.0,
                lease_seconds=30,
                shutdown_grace=1.0,
            )
            healthy = _worker(
                near,
                "w-healthy",
                reserve_nap_charge,
                concurrency=20,
                heartbeat_interval=0.05,
                shutdown_grace=1.0,
            )
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(cut_off.run(stop))
                tasks = [NewTask("c", "reserve_nap_charge", "0.5")] * 10
                ids = [s.id for s in await near.submit_many(tasks)]

                async def reserved() -> bool:
                    journals = [await near.run(near.store.effects, i) for i in ids]
                    return all([e.state for e in j] == ["done"] for j in journals)

                await wait_until(reserved)
                relay.cut()
                revoked = await near.run(
                    near.store.revoke_worker, "w-cut-off", near.clock.now(), "cut off"
                )
                assert sorted(revoked) == sorted(ids)
                await asyncio.sleep(1.0)  # its naps end: its charges wait for the database
                assert relay.refused >= 1, "the cut-off worker did not try to reconnect"
                assert not LOST_CHARGES and cut_off._running
                relay.heal()
                await wait_until(lambda: not cut_off._running, within=10)  # its handlers ended
                tg.create_task(healthy.run(stop))
                records = [await _wait_terminal(near, i, within=30) for i in ids]
                stop.set()
            return [(r, await near.run(near.store.attempts, r.id)) for r in records]

    with CuttableRelay(target) as relay:
        finished = asyncio.run(main(relay))
    records = [r for r, _ in finished]
    assert [r.state for r in records] == ["succeeded"] * 10
    assert [[(a.worker, a.epoch, a.outcome) for a in attempts] for _, attempts in finished] == [
        # the revocation ends the first lease (epoch 1 -> 2); the claim starts the next
        [("w-cut-off", 1, "lease_lost"), ("w-healthy", 3, "succeeded")]
    ] * 10
    assert sorted(SIDE_EFFECTS) == sorted(
        [f"reserve-{r.id}-1" for r in records] + [f"charge-{r.id}-3" for r in records]
    )
    # each of the cut-off worker's late journal writes reached the database and was refused
    assert sorted(LOST_CHARGES) == sorted(r.id for r in records)


def test_tasks_a_claim_leased_before_its_answer_was_lost_are_given_back_and_run(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose COMMIT went through but whose answer was lost (the connection
    dropped in between) leaves tasks leased to a worker that does not know it holds
    them, and whose heartbeats would extend those leases for as long as it lives.
    It gives them back first thing once the store answers again; they are run."""
    from fleetops import StoreUnavailable
    from fleetops.store._sql import SqlStore

    original = SqlStore.claim
    lost: list[int] = []

    def answer_lost_once(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        claimed = original(self, *args, **kwargs)
        if claimed and not lost:
            lost.extend(t.id for t in claimed)
            raise StoreUnavailable("the connection dropped before the claim was answered")
        return claimed

    monkeypatch.setattr(SqlStore, "claim", answer_lost_once)

    async def body(client: QueueClient, worker: Worker) -> None:
        ids = [s.id for s in await client.submit_many([NewTask("c", "child_double", "5")] * 3)]
        records = [await _wait_terminal(client, task_id) for task_id in ids]
        assert lost, "no claim was answered lost"
        assert [r.state for r in records] == ["succeeded"] * 3
        released = [a for t in lost for a in await client.run(client.store.attempts, t)]
        assert [a.outcome for a in released if a.outcome != "succeeded"] == ["released"] * len(lost)

    asyncio.run(_with_worker(sqlite_url, body, [spec(child_double)], lease_seconds=30))


def test_a_claim_refused_by_a_store_not_repaired_is_tried_again_and_the_worker_runs_on(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fsync a SQLite store refuses writes (SyncFailed) until one has
    repaired it; a claim refused so began nothing, and is tried again after a pause,
    as one the store did not answer, instead of ending the worker."""
    from fleetops import SyncFailed
    from fleetops.store._sql import SqlStore

    original = SqlStore.claim
    refused: list[str] = []

    def refuse_twice(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        if len(refused) < 2:
            refused.append("claim")
            raise SyncFailed("an fsync of its WAL failed and the store is not repaired yet")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SqlStore, "claim", refuse_twice)

    async def body(client: QueueClient, worker: Worker) -> None:
        ids = [s.id for s in await client.submit_many([NewTask("c", "child_double", "5")] * 3)]
        records = [await _wait_terminal(client, task_id) for task_id in ids]
        assert refused == ["claim", "claim"]
        assert [r.state for r in records] == ["succeeded"] * 3

    asyncio.run(_with_worker(sqlite_url, body, [spec(child_double)], lease_seconds=30))


def test_a_worker_whose_heartbeats_fail_longer_than_its_lease_stops(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its leases may have been given to others by then: it holds nothing, so it
    stops (and its supervisor starts another) instead of running on."""
    from fleetops import StoreError
    from fleetops.store._sql import SqlStore

    def refuse(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        raise StoreError("the store is gone")

    async def main() -> float:
        async with QueueClient(sqlite_url) as client:
            worker = _worker(
                client, "w-store-lost", nap, lease_seconds=0.5, heartbeat_interval=0.05
            )
            monkeypatch.setattr(SqlStore, "heartbeat", refuse)
            monkeypatch.setattr(SqlStore, "beat", refuse)
            began = time.monotonic()
            await asyncio.wait_for(worker.run(asyncio.Event()), 10)
            return time.monotonic() - began

    took = asyncio.run(main())
    assert 0.5 <= took < 5


def test_the_first_beat_answered_after_failed_ones_extends_the_leases(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every n-th beat extends the worker's leases (about once a second). While beats
    fail, the leases run on towards their expiry, so the first beat the store answers
    afterwards extends them, whatever its turn: else a cut almost a lease long could
    let them lapse, and their tasks be taken away, just after the store came back."""
    from fleetops import StoreError
    from fleetops.store._sql import SqlStore

    #: (which call, whether the store answered it)
    calls: list[tuple[str, bool]] = []
    down = {"on": False}
    for name in ("beat", "heartbeat"):
        original = getattr(SqlStore, name)

        def recorded(
            self: SqlStore, *args: Any, _name: str = name, _original: Any = original, **kw: Any
        ) -> Any:
            if down["on"]:
                calls.append((_name, False))
                raise StoreError("the store is away")
            calls.append((_name, True))
            return _original(self, *args, **kw)

        monkeypatch.setattr(SqlStore, name, recorded)

    async def body(client: QueueClient, worker: Worker) -> None:
        await wait_until(lambda: len(calls) >= 60)  # 1 in 50 beats extends the leases
        down["on"] = True
        await wait_until(lambda: sum(1 for _, answered in calls if not answered) >= 3)
        failed_until = len(calls)
        down["on"] = False
        await wait_until(lambda: any(answered for _, answered in calls[failed_until:]))
        first = next(name for name, answered in calls[failed_until:] if answered)
        assert first == "heartbeat", calls[failed_until - 5 :]

    asyncio.run(
        _with_worker(sqlite_url, body, [spec(nap)], heartbeat_interval=0.02, lease_seconds=3)
    )
    assert [n for n, _ in calls[:60]].count("heartbeat") <= 3  # mostly plain beats


@agent(name="quick", retry=RetryPolicy(max_attempts=1))
async def quick(task: TaskInfo, ctx: Context) -> str:
    if task.payload == "fail":
        raise RuntimeError("failed on purpose")
    return "done"


@pytest.mark.parametrize(
    ("payload", "state", "outcome"),
    [("ok", "succeeded", "succeeded"), ("fail", "dead", "dead_lettered")],
)
def test_a_heartbeat_after_a_tasks_last_write_committed_does_not_cancel_its_handler(
    sqlite_url: str, payload: str, state: str, outcome: str
) -> None:
    """A lease heartbeat that runs after a group commit ended a task (Complete or
    Fail), and before the task's handler resumed, no longer finds the lease: the task
    ended as it did, its lease was not lost."""

    async def body(client: QueueClient, worker: Worker) -> None:
        real_apply = client.apply
        heartbeats: list[dict[int, int]] = []

        async def heartbeat() -> None:
            sent_at = worker.clock.monotonic()
            held = await client.heartbeat("w-test", 10.0, worker.inflight, 0)
            assert held is not None
            heartbeats.append(held)
            worker._cancel_lost(held, sent_at)

        async def apply_then_heartbeat(op: Operation) -> OpResult:
            result = await real_apply(op)
            if isinstance(op, Complete | Fail):
                # the write has committed; while its handler waits to resume, a
                # heartbeat (a task of its own, as the worker's is) runs to its end
                await asyncio.create_task(heartbeat())
            return result

        client.apply = apply_then_heartbeat  # type: ignore[method-assign]
        sub = await client.submit(NewTask("c", "quick", json.dumps(payload)))
        assert (await _wait_terminal(client, sub.id)).state == state
        await wait_until(lambda: worker.processed == 1, within=5)
        assert heartbeats == [{}]  # the heartbeat did not find the lease
        finished = {
            o: worker.metrics.value(catalog.TASKS_FINISHED, ("c", "quick", o))
            for o in (outcome, "lease_lost")
        }
        assert finished == {outcome: 1, "lease_lost": None}

    asyncio.run(_with_worker(sqlite_url, body, [spec(quick)]))


def test_a_worker_idle_for_long_looks_for_commits_less_often_and_still_finds_work(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Idle past LONG_IDLE_SECONDS, the claimer looks at the store every poll_max
    (50 ms), not every 10 ms; a task queued without a bell is still found."""
    monkeypatch.setattr(worker_module, "LONG_IDLE_SECONDS", 0.3)
    looks: list[float] = []
    make_watcher = QueueClient.change_watcher

    class CountingWatcher:
        def __init__(self, inner: ChangeWatcher) -> None:
            self.inner = inner

        def changed(self) -> bool:
            looks.append(time.monotonic())
            return self.inner.changed()

        def close(self) -> None:
            self.inner.close()

    def counting(client: QueueClient) -> ChangeWatcher | None:
        inner = make_watcher(client)
        return None if inner is None else CountingWatcher(inner)

    monkeypatch.setattr(QueueClient, "change_watcher", counting)

    async def body(client: QueueClient, worker: Worker) -> None:
        await asyncio.sleep(1.3)  # idle since it started, past its first second (1 ms looks)
        looks.clear()
        await asyncio.sleep(1.0)
        # every 10 ms would be about 100 looks in that second; every 50 ms, 20
        assert 5 <= len(looks) <= 40, len(looks)
        # queued straight into the store: no doorbell rings for it
        sub = await client.run(
            client.store.submit, [NewTask("c", "child_double", "4")], client.clock.now()
        )
        assert json.loads((await _wait_terminal(client, sub[0].id)).result or "null") == 8

    asyncio.run(_with_worker(sqlite_url, body, [spec(child_double)]))


def test_a_write_the_store_refuses_fails_alone_not_the_group_commit_it_was_in(
    store_url: str,
) -> None:
    """Ops waiting together go in one transaction; one the store refuses (here a key
    no store can keep, slipped past the client's checks) fails by itself, and the
    others of its group commit all the same."""
    from fleetops.store import Submit

    async def main() -> None:
        async with QueueClient(store_url) as client:
            ops = [Submit(NewTask("c", "child_double", str(n))) for n in range(5)]
            ops.insert(2, Submit(NewTask("c", "child_double", idempotency_key="\ud800")))
            commits = client.commits
            results = await asyncio.gather(
                *(client.apply(op) for op in ops), return_exceptions=True
            )
            refused = results.pop(2)
            assert isinstance(refused, Exception), refused
            assert all(isinstance(r, OpResult) and r.ok for r in results), results
            stored = await client.run(client.store.list_tasks, None, "c", "child_double")
            assert sorted(t.payload for t in stored) == ["0", "1", "2", "3", "4"]
            # the group was tried once together, then each of its six alone
            assert client.commits - commits == 5

    asyncio.run(main())


@agent(name="bad_values", retry=RetryPolicy(max_attempts=1))
async def bad_values(task: TaskInfo, ctx: Context) -> Any:
    if task.payload == "nan result":
        return {"score": float("nan")}
    if task.payload == "odd error":
        raise ValueError("byte \x00 and half a pair \ud800 in the message")
    try:
        if task.payload == "big priority":
            await ctx.send("child_double", 1, priority=2**31)
        elif task.payload == "nan child":
            await ctx.send("child_double", float("nan"))
        else:
            await ctx.effect("half a pair \ud800", lambda: 1)
    except ConfigError as exc:
        return f"refused: {exc.field}"
    return "sent"


def test_an_agents_bad_values_fail_its_own_task_not_the_worker_or_the_others(
    store_url: str,
) -> None:
    """A child with a priority past PostgreSQL's INTEGER, a NaN payload, result or an
    effect key no store can keep are refused in the agent, naming the field; an error
    message with a NUL or a lone surrogate is kept, escaped. Before, on PostgreSQL, the
    refused write failed the group commit it was in and the worker with it."""

    async def body(client: QueueClient, worker: Worker) -> None:
        quick = [NewTask("c", "child_double", str(n)) for n in range(20)]
        cases = ["big priority", "nan child", "bad key", "nan result", "odd error"]
        subs = await client.submit_many(
            quick + [NewTask("c", "bad_values", json.dumps(c)) for c in cases]
        )
        records = [await _wait_terminal(client, s.id) for s in subs]
        assert [r.state for r in records[:20]] == ["succeeded"] * 20
        assert [json.loads(r.result or "null") for r in records[20:23]] == [
            "refused: priority",
            "refused: payload",
            "refused: key",
        ]
        nan_result, odd_error = records[23:]
        assert nan_result.state == "dead" and "JSON" in (nan_result.dead_reason or "")
        assert odd_error.state == "dead"
        assert odd_error.error == "ValueError: byte \\x00 and half a pair \\ud800 in the message"
        await _still_runs_tasks(client)

    asyncio.run(_with_worker(store_url, body, [spec(bad_values), spec(child_double)]))


RECLAIM_LOG: list[str] = []


@agent(name="outlives_its_lease", retry=RetryPolicy(max_attempts=3))
async def outlives_its_lease(task: TaskInfo, ctx: Context) -> str:
    RECLAIM_LOG.append(f"attempt {task.attempt} starts")
    if task.attempt == 1:
        time.sleep(1.6)  # noqa: ASYNC251  # a CPU-bound step blocks the loop past the lease
        await asyncio.sleep(1.0)
        RECLAIM_LOG.append("attempt 1 ran to its end")
        return "first"
    for _ in range(30):
        await asyncio.sleep(0.1)
    RECLAIM_LOG.append(f"attempt {task.attempt} ran to its end")
    return "later"


def test_a_worker_that_claims_its_own_lapsed_task_again_stops_the_stale_handler(
    sqlite_url: str,
) -> None:
    """A handler blocks the loop past its lease; a reaper elsewhere requeues the task,
    and this same worker claims it again. The stale handler is stopped, and the new
    attempt stays tracked: a cancel of the task then stops it. Before, the new attempt
    replaced the old one's entry, which the old one removed when it ended: neither
    was stopped, nor counted against the worker's concurrency."""
    RECLAIM_LOG.clear()

    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "outlives_its_lease"))

        def reap() -> None:
            """A reaper elsewhere: the loop is blocked, the lease lapses, it is requeued."""
            store = open_store(sqlite_url)
            try:
                for _ in range(400):
                    if requeued := store.requeue_expired(time.time()):
                        RECLAIM_LOG.append(f"requeued {requeued}")
                        return
                    time.sleep(0.025)
            finally:
                store.close()

        reaper = threading.Thread(target=reap)
        reaper.start()
        await wait_until(lambda: "attempt 2 starts" in RECLAIM_LOG, within=10)
        reaper.join()
        await asyncio.sleep(1.5)  # attempt 1's nap would be over by now
        assert "attempt 1 ran to its end" not in RECLAIM_LOG
        record = await client.run(client.store.get_task, sub.id)
        assert record is not None and record.state == "running"
        assert {t: r.epoch for t, r in worker._running.items()} == {sub.id: record.epoch}
        assert await client.run(client.store.cancel, sub.id, time.time(), "operator")
        await asyncio.sleep(1.0)  # a few heartbeats: the lease is gone, the handler stops
        assert not any(line.endswith("ran to its end") for line in RECLAIM_LOG), RECLAIM_LOG
        assert worker._running == {}

    asyncio.run(
        _with_worker(
            sqlite_url,
            body,
            [spec(outlives_its_lease)],
            lease_seconds=1.0,
            heartbeat_interval=0.1,
            reap_interval=100,
        )
    )


@agent(name="exits", retry=RetryPolicy(max_attempts=1))
async def exits(task: TaskInfo, ctx: Context) -> None:
    await asyncio.sleep(0.05)
    if task.payload == "exit":
        raise SystemExit(5)  # a library's argparse on bad arguments, say
    raise KeyboardInterrupt


def test_a_handler_that_raises_systemexit_or_keyboardinterrupt_fails_its_task_not_the_worker(
    sqlite_url: str,
) -> None:
    """Escaping, either stopped the worker process, and every task in it was
    redelivered (and charged for it) however healthy; SystemExit left no log."""

    async def body(client: QueueClient, worker: Worker) -> None:
        naps = await client.submit_many([NewTask("c", "nap", "0.3") for _ in range(5)])
        subs = await client.submit_many(
            [NewTask("c", "exits", '"exit"'), NewTask("c", "exits", '"interrupt"')]
        )
        exited, interrupted = [await _wait_terminal(client, s.id) for s in subs]
        assert exited.state == "dead" and (exited.error or "").startswith("SystemExit: 5 (")
        assert interrupted.state == "dead"
        assert (interrupted.error or "").startswith("KeyboardInterrupt:")
        for nap_task in naps:
            record = await _wait_terminal(client, nap_task.id)
            assert (record.state, record.redeliveries) == ("succeeded", 0)
        await _still_runs_tasks(client)

    asyncio.run(_with_worker(sqlite_url, body, [spec(exits), spec(nap), spec(child_double)]))


@agent(name="refused", retry=RetryPolicy(max_attempts=5, backoff_base=3.0, backoff_max=3.0))
async def refused(task: TaskInfo, ctx: Context) -> None:
    raise ConnectionError("payments API refused the connection")


def test_a_retry_that_would_start_after_the_deadline_dead_letters_at_once_with_the_error(
    sqlite_url: str,
) -> None:
    """Before, the retry was set past the deadline; the task waited out the backoff
    and died of the deadline then, its error lost ('deadline passed before the task
    started'). With the deadline far off, the same failure is retried."""

    async def body(client: QueueClient, worker: Worker) -> None:
        now = client.clock.now()
        soon = await client.submit(NewTask("c", "refused", deadline=now + 0.5))
        later = await client.submit(NewTask("c", "refused", deadline=now + 3600))
        record = await _wait_terminal(client, soon.id, within=2)
        assert record.state == "dead" and record.failures == 1
        assert (record.finished_at or 0) < now + 0.5
        reason = record.dead_reason or ""
        assert reason.startswith("deadline passed before the next try (due in ")
        assert reason.endswith("ConnectionError: payments API refused the connection")
        waiting = await client.run(client.store.get_task, later.id)
        assert waiting is not None and (waiting.state, waiting.failures) == ("queued", 1)

    class Longest(random.Random):  # full jitter at its longest: 3 s, every time
        def random(self) -> float:
            return 1.0

    asyncio.run(_with_worker(sqlite_url, body, [spec(refused)], rng=Longest()))


CHILD_BROKEN = {"on": True}


@agent(name="fixable_child", retry=RetryPolicy(max_attempts=1))
async def fixable_child(task: TaskInfo, ctx: Context) -> str:
    if CHILD_BROKEN["on"]:
        raise RuntimeError("bug in child")
    return "fixed"


@agent(name="calls_fixable", retry=RetryPolicy(max_attempts=1))
async def calls_fixable(task: TaskInfo, ctx: Context) -> Any:
    return await ctx.call("fixable_child", 1)


def test_retrying_a_parent_whose_child_died_runs_the_child_again_once_fixed(
    sqlite_url: str,
) -> None:
    """The operator's way: fix the cause, then 'fleetops tasks retry' the parent. Before,
    the parent found its dead child by key and was dead again at once."""
    CHILD_BROKEN["on"] = True

    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "calls_fixable"))
        assert (await _wait_terminal(client, sub.id)).state == "dead"
        CHILD_BROKEN["on"] = False
        assert await client.run(client.store.retry_dead, sub.id, client.clock.now())
        record = await _wait_terminal(client, sub.id)
        assert (record.state, json.loads(record.result or "null")) == ("succeeded", "fixed")
        children = await client.run(client.store.list_tasks, None, "c", "fixable_child")
        assert [(c.parent_id, c.state, c.attempts) for c in children] == [(sub.id, "succeeded", 2)]

    asyncio.run(_with_worker(sqlite_url, body, [spec(calls_fixable), spec(fixable_child)]))


@agent(name="stubborn", retry=RetryPolicy(max_attempts=1))
async def stubborn(task: TaskInfo, ctx: Context) -> str:
    """Swallows its cancellation and finishes its nap anyway."""
    try:
        await asyncio.sleep(1.0)
    except asyncio.CancelledError:
        await asyncio.sleep(0.5)
    return "done late"


def test_a_handler_that_swallows_its_cancellation_at_the_deadline_does_not_succeed(
    sqlite_url: str,
) -> None:
    """Before, its late result was recorded as a success, past the deadline."""

    async def body(client: QueueClient, worker: Worker) -> None:
        sub = await client.submit(NewTask("c", "stubborn", deadline=client.clock.now() + 0.3))
        record = await _wait_terminal(client, sub.id)
        assert record.state == "dead" and record.result is None
        assert (record.dead_reason or "").startswith("deadline passed: timed out after")

    asyncio.run(_with_worker(sqlite_url, body, [spec(stubborn)]))


@pytest.mark.parametrize(
    ("at_import", "exit_code", "error"),
    [
        ("raise RuntimeError('no model file')", 1, "RuntimeError: no model file"),
        ("import sys; sys.exit('no model file')", 1, "SystemExit: no model file"),
        ("import sys; sys.exit(3)", 3, "SystemExit: 3"),
        # the code of a worker that leaves to be replaced would restart it in a loop
        (f"import sys; sys.exit({RECYCLE_EXIT_CODE})", 1, f"SystemExit: {RECYCLE_EXIT_CODE}"),
    ],
)
def test_a_worker_that_cannot_start_says_why_in_one_json_record_its_log_search_finds(
    sqlite_url: str, tmp_path: Path, at_import: str, exit_code: int, error: str
) -> None:
    """An exception that ends a worker process (here: its agent module raises or
    exits at import) is a ``worker.crashed`` record with the traceback, not plain
    lines that ``fleetops logs`` and its filters would pass over; an exit keeps its
    code."""
    (tmp_path / "broken_agents.py").write_text(at_import + "\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    config = {
        "store": sqlite_url,
        "worker_id": "c-0-abcd",
        "cluster": "c",
        "agents": ["broken_agents:agent"],
        "settings": {},
        "python_path": [str(tmp_path)],
        "parent_pid": os.getpid(),
    }
    with open(logs / "c-0-abcd.log", "wb") as log_file:
        ended = subprocess.run(
            [sys.executable, "-m", "fleetops.runtime", json.dumps(config)],
            stderr=log_file,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )

    assert ended.returncode == exit_code
    [line] = (logs / "c-0-abcd.log").read_text().splitlines()
    record = json.loads(line)
    assert (record["event"], record["level"]) == ("worker.crashed", "critical")
    assert (record["worker"], record["cluster"]) == ("c-0-abcd", "c")
    assert error in record["error"]
    assert record["traceback"].startswith("Traceback (most recent call last):")
    assert at_import in record["traceback"]
    assert search_logs(logs, LogFilter(level="critical", cluster="c")) == [
        {**record, "source": "c-0-abcd"}
    ]
