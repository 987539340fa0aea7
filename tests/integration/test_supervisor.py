"""The supervisor with real worker processes: crash, hang, restart, intensity, drain."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from _polling import exited, wait_until
from fleetops.queue import QueueClient
from fleetops.runtime import (
    ClusterPlan,
    DetectorSettings,
    RestartPolicy,
    Supervisor,
    SupervisorEvent,
    WorkerSettings,
)
from fleetops.store import TERMINAL_STATES, NewTask, open_store

TESTS_DIR = str(Path(__file__).resolve().parents[1])
AGENTS = (
    "agents_for_tests:echo",
    "agents_for_tests:crash",
    "agents_for_tests:slow",
    "agents_for_tests:hold_write_lock",
    "agents_for_tests:loop_kind",
    "agents_for_tests:chatty",
)


def _plan(replicas: int = 2, **worker: float | str) -> ClusterPlan:
    return ClusterPlan(
        name="c",
        agents=AGENTS,
        replicas=replicas,
        worker=WorkerSettings(**({"concurrency": 10, "shutdown_grace": 2.0} | worker)),
        python_path=(TESTS_DIR,),
    )


async def _supervised(
    url: str,
    body: Callable[[Supervisor, QueueClient, list[SupervisorEvent]], Awaitable[None]],
    plan: ClusterPlan,
    restart: RestartPolicy | None = None,
) -> list[SupervisorEvent]:
    open_store(url).close()
    events: list[SupervisorEvent] = []
    supervisor = Supervisor(
        url,
        [plan],
        restart=restart,
        on_event=events.append,
        detector=DetectorSettings(acceptable_pause=0.5),
    )
    stop = asyncio.Event()
    async with QueueClient(url) as client, asyncio.TaskGroup() as tg:
        tg.create_task(supervisor.run(stop))
        await asyncio.wait_for(supervisor.ready.wait(), 30)
        try:
            await body(supervisor, client, events)
        finally:
            stop.set()
    return events


async def _terminal(client: QueueClient, task_id: int) -> bool:
    record = await client.run(client.store.get_task, task_id)
    return record is not None and record.state in TERMINAL_STATES


def _kinds(events: list[SupervisorEvent]) -> list[str]:
    return [e.kind for e in events]


def test_crashed_worker_is_restarted_and_its_task_redelivered(sqlite_url: str) -> None:
    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        slow = await client.submit(NewTask("c", "slow", "0.6"))
        await wait_until(lambda: any(h.first_heartbeat_at for h in sup.live_workers()))
        await asyncio.sleep(0.2)  # let a worker take the slow task
        record = await client.run(client.store.get_task, slow.id)
        assert record is not None and record.state == "running"
        holder = next(h for h in sup.live_workers() if h.id == record.lease_owner)
        os.kill(holder.pid, signal.SIGKILL)
        await wait_until(lambda: "agent_failure.spawn_replacement_agent" in _kinds(events))
        await wait_until(lambda: _terminal(client, slow.id))
        record = await client.run(client.store.get_task, slow.id)
        assert record is not None and record.state == "succeeded"
        assert record.redeliveries == 1
        outcomes = [a.outcome for a in await client.run(client.store.attempts, slow.id)]
        assert outcomes == ["lease_lost", "succeeded"]
        await wait_until(lambda: len(sup.live_workers("c")) == 2)

    events = asyncio.run(_supervised(sqlite_url, body, _plan()))
    kinds = _kinds(events)
    steps = [
        "worker.failed",
        "agent_failure.redistribute_agent_workload",
        "agent_failure.notify_operations_team",
        "agent_failure.restart_failed_agent",
        "agent_failure.spawn_replacement_agent",
    ]
    positions = [kinds.index(step) for step in steps]
    assert positions == sorted(positions), kinds
    redistributed = next(e for e in events if e.kind == steps[1])
    assert redistributed.data["tasks"] == 1


def test_hung_worker_is_detected_killed_and_replaced(sqlite_url: str) -> None:
    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        victim = sup.live_workers("c")[0]
        stopped_at = client.clock.now()
        os.kill(victim.pid, signal.SIGSTOP)
        await wait_until(lambda: "worker.suspected" in _kinds(events), within=10)
        suspected = next(e for e in events if e.kind == "worker.suspected")
        assert suspected.worker == victim.id
        assert suspected.at - stopped_at < 3.0  # the target: a hang detected within 3 s
        await wait_until(lambda: victim.process.returncode is not None)
        assert victim.process.returncode == -signal.SIGKILL
        await wait_until(lambda: len(sup.live_workers("c")) == 2)
        sub = await client.submit(NewTask("c", "echo", json.dumps("still working")))
        await wait_until(lambda: _terminal(client, sub.id), within=10)
        record = await client.run(client.store.get_task, sub.id)
        assert record is not None and record.state == "succeeded"

    asyncio.run(_supervised(sqlite_url, body, _plan()))


def test_restart_intensity_marks_the_cluster_degraded(sqlite_url: str) -> None:
    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        # each crash task kills the worker that runs it
        for _ in range(4):
            await client.submit(NewTask("c", "crash", max_redeliveries=2))
        await wait_until(lambda: "cluster.degraded" in _kinds(events), within=30)
        assert "c" in sup.degraded

    events = asyncio.run(
        _supervised(
            sqlite_url,
            body,
            _plan(replicas=1),
            restart=RestartPolicy(backoff_base=0.01, backoff_max=0.2, intensity=2, period=60),
        )
    )
    degraded = next(e for e in events if e.kind == "cluster.degraded")
    assert degraded.data["restarts"] == 3


def test_poison_task_is_dead_lettered_after_max_redeliveries(sqlite_url: str) -> None:
    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        poison = await client.submit(NewTask("c", "crash", max_redeliveries=2))
        await wait_until(lambda: _terminal(client, poison.id), within=30)
        record = await client.run(client.store.get_task, poison.id)
        assert record is not None and record.state == "dead"
        assert record.redeliveries == 3
        assert "lost too often" in (record.dead_reason or "")

    asyncio.run(
        _supervised(
            sqlite_url,
            body,
            _plan(replicas=1),
            restart=RestartPolicy(backoff_base=0.01, backoff_max=0.1),
        )
    )


def test_stop_drains_workers_and_unregisters_them(sqlite_url: str) -> None:
    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        for _ in range(5):
            await client.submit(NewTask("c", "echo", "1"))
        await asyncio.sleep(0.3)

    events = asyncio.run(_supervised(sqlite_url, body, _plan()))
    store = open_store(sqlite_url)
    try:
        assert {w.state for w in store.list_workers("c")} == {"stopped"}
        assert all(t.state == "succeeded" for t in store.list_tasks(queue="c"))
    finally:
        store.close()
    assert "worker.failed" not in _kinds(events)


def test_workers_run_on_the_event_loop_their_settings_name(sqlite_url: str) -> None:
    seen: dict[str, str] = {}

    async def body(sup: Supervisor, client: QueueClient, _: list[SupervisorEvent]) -> None:
        task = await client.submit(NewTask("c", "loop_kind", "null"))
        await wait_until(lambda: _terminal(client, task.id), within=20)
        record = await client.run(client.store.get_task, task.id)
        assert record is not None and record.state == "succeeded", record
        seen[sup.plans["c"].worker.event_loop] = json.loads(record.result or "null")

    for kind in ("uvloop", "asyncio"):
        asyncio.run(_supervised(sqlite_url, body, _plan(replicas=1, event_loop=kind)))
    assert seen == {"uvloop": "uvloop", "asyncio": "asyncio"}


def test_a_worker_hung_while_holding_the_write_lock_does_not_stall_the_fleet(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The supervisor must kill a hung worker before it writes anything: the hung
    worker may hold the store's write lock, and every write would wait on it."""

    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        db = str(tmp_path / "fleet.db")
        holder_task = await client.submit(NewTask("c", "hold_write_lock", json.dumps({"db": db})))

        async def holder() -> str | None:
            record = await client.run(client.store.get_task, holder_task.id)
            return record.lease_owner if record and record.state == "running" else None

        await wait_until(holder, within=10)
        await asyncio.sleep(0.3)  # let it take the lock
        owner = await holder()
        victim = next(h for h in sup.live_workers("c") if h.id == owner)
        stopped_at = client.clock.now()
        os.kill(victim.pid, signal.SIGSTOP)
        await wait_until(lambda: "worker.suspected" in _kinds(events), within=10)
        suspected = next(e for e in events if e.kind == "worker.suspected")
        assert suspected.at - stopped_at < 3.0
        await wait_until(lambda: _terminal(client, holder_task.id), within=15)
        record = await client.run(client.store.get_task, holder_task.id)
        assert record is not None and record.state == "succeeded"
        assert record.redeliveries == 1

    asyncio.run(_supervised(sqlite_url, body, _plan()))


def test_a_worker_that_cannot_be_started_is_tried_again_not_the_end_of_the_fleet(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """fork() can fail for a while (EAGAIN: too many processes, ENOMEM): the slot
    backs off and tries again; the supervisor and the other workers go on. Each
    failure is logged as an error (it was INFO, like a worker started)."""
    spawn = asyncio.create_subprocess_exec
    refusals = [2]

    async def refuse_twice(*args: Any, **kwargs: Any) -> Any:
        if refusals[0] > 0:
            refusals[0] -= 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return await spawn(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", refuse_twice)

    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        task = await client.submit(NewTask("c", "echo", '"hi"'))
        await wait_until(lambda: _terminal(client, task.id))
        await wait_until(lambda: len(sup.live_workers("c")) == 2)

    events = asyncio.run(
        _supervised(sqlite_url, body, _plan(), RestartPolicy(backoff_base=0.05, backoff_max=0.2))
    )
    failed = [e for e in events if e.kind == "worker.spawn_failed"]
    assert len(failed) == 2
    assert "Resource temporarily unavailable" in failed[0].data["error"]
    logged = [r.levelname for r in caplog.records if r.getMessage() == "worker.spawn_failed"]
    assert logged == ["ERROR", "ERROR"]


def test_a_store_that_cannot_record_events_does_not_stop_the_supervisor(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events are bookkeeping: a store that refuses them (disk full, say) is logged,
    and the fleet goes on, a crashed worker restarted and its task redelivered."""
    from fleetops import StoreError
    from fleetops.store._sql import SqlStore

    def refuse(self: SqlStore, *args: Any, **kwargs: Any) -> int:
        raise StoreError("database or disk is full")

    monkeypatch.setattr(SqlStore, "record_event", refuse)

    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        crash = await client.submit(NewTask("c", "crash", "null", max_redeliveries=0))
        await wait_until(lambda: _terminal(client, crash.id))
        await wait_until(lambda: "agent_failure.spawn_replacement_agent" in _kinds(events))
        echo = await client.submit(NewTask("c", "echo", '"still here"'))
        await wait_until(lambda: _terminal(client, echo.id))

    events = asyncio.run(_supervised(sqlite_url, body, _plan(), RestartPolicy(backoff_base=0.05)))
    assert "worker.failed" in _kinds(events)


def test_revoking_a_lost_workers_leases_is_tried_again_while_the_store_fails(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fleetops import StoreError
    from fleetops.store._sql import SqlStore

    revoke = SqlStore.revoke_worker
    calls: list[str] = []

    def flaky(self: SqlStore, worker: str, now: float, reason: str) -> list[int]:
        calls.append(worker)
        if len(calls) <= 2:
            raise StoreError("the store is restarting")
        return revoke(self, worker, now, reason)

    monkeypatch.setattr(SqlStore, "revoke_worker", flaky)

    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        slow = await client.submit(NewTask("c", "slow", "0.6"))
        await asyncio.sleep(0.2)  # let a worker take it
        record = await client.run(client.store.get_task, slow.id)
        assert record is not None and record.state == "running"
        holder = next(h for h in sup.live_workers() if h.id == record.lease_owner)
        os.kill(holder.pid, signal.SIGKILL)
        await wait_until(lambda: _terminal(client, slow.id))
        outcomes = [a.outcome for a in await client.run(client.store.attempts, slow.id)]
        assert outcomes == ["lease_lost", "succeeded"]

    asyncio.run(_supervised(sqlite_url, body, _plan()))
    assert len(calls) == 3 and len(set(calls)) == 1  # the same worker, until it worked


def test_the_failure_detector_rides_out_a_store_it_cannot_read(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store that fails the detector's reads for a while (a restarting database)
    neither stops the supervisor nor gets healthy workers presumed dead."""
    from fleetops import StoreError
    from fleetops.store._sql import SqlStore

    list_workers = SqlStore.list_workers
    failing = {"on": False, "failed": 0}

    def flaky(self: SqlStore, *args: Any, **kwargs: Any) -> Any:
        if failing["on"]:
            failing["failed"] += 1
            raise StoreError("the store is restarting")
        return list_workers(self, *args, **kwargs)

    monkeypatch.setattr(SqlStore, "list_workers", flaky)

    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        before = {h.id for h in sup.live_workers()}
        failing["on"] = True
        await asyncio.sleep(1.0)  # 20 rounds of the detector
        failing["on"] = False
        task = await client.submit(NewTask("c", "echo", '"hi"'))
        await wait_until(lambda: _terminal(client, task.id))
        assert {h.id for h in sup.live_workers()} == before  # nobody presumed dead

    events = asyncio.run(_supervised(sqlite_url, body, _plan()))
    assert failing["failed"] >= 10
    assert "worker.suspected" not in _kinds(events)


def test_a_worker_keeps_its_log_file_under_its_size_and_logs_on_into_a_new_one(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker that runs for weeks must not fill the disk with its log: past
    LOG_MAX_BYTES its file becomes <id>.log.1 and a new <id>.log takes over."""
    monkeypatch.setattr("fleetops.runtime._supervisor.LOG_MAX_BYTES", 8192)
    monkeypatch.setattr("fleetops.runtime._supervisor.LOG_CHECK_SECONDS", 0.1)
    logs = tmp_path / "logs"
    open_store(sqlite_url).close()
    supervisor = Supervisor(sqlite_url, [_plan(replicas=1)], log_dir=logs)

    def lines(path: Path, tag: str) -> list[int]:
        records = [json.loads(line) for line in path.read_text().splitlines()]
        return [r["n"] for r in records if r.get("tag") == tag]

    async def main() -> tuple[Path, Path]:
        stop = asyncio.Event()
        async with QueueClient(sqlite_url) as client, asyncio.TaskGroup() as tg:
            tg.create_task(supervisor.run(stop))
            await asyncio.wait_for(supervisor.ready.wait(), 30)
            [worker] = supervisor.live_workers()
            current = logs / f"{worker.id}.log"
            older = logs / f"{worker.id}.log.1"
            first = await client.submit(NewTask("c", "chatty", '{"lines": 200, "tag": "a"}'))
            await wait_until(lambda: _terminal(client, first.id))
            await wait_until(older.exists)
            assert lines(older, "a") == list(range(200))  # the whole first file, kept
            second = await client.submit(NewTask("c", "chatty", '{"lines": 5, "tag": "b"}'))
            await wait_until(lambda: _terminal(client, second.id))
            await wait_until(lambda: lines(current, "b") == list(range(5)))
            assert lines(current, "a") == []  # the new file began after the rotation
            stop.set()
            return current, older

    current, older = asyncio.run(main())
    assert current.stat().st_size < 8192 <= older.stat().st_size


ORPHANING_SUPERVISOR = """
import asyncio, sys
from fleetops.runtime import ClusterPlan, Supervisor, WorkerSettings

plan = ClusterPlan(
    name="c",
    agents=("agents_for_tests:block", "agents_for_tests:echo"),
    replicas=1,
    worker=WorkerSettings(concurrency=10, shutdown_grace=1.0),
    python_path=(sys.argv[2],),
)
asyncio.run(Supervisor(sys.argv[1], [plan]).run(asyncio.Event()))
"""


def test_a_worker_whose_supervisor_is_killed_finishes_the_effect_it_runs_then_exits(
    sqlite_url: str, tmp_path: Path
) -> None:
    """kill -9 of the supervisor (a control plane killed) while a task's effect runs
    longer than the shutdown grace: the orphaned worker finishes it, once, claims
    nothing more, and exits. Before, it gave the task back after its grace, cutting
    the effect off halfway, and the effect ran again on the next worker."""
    import time

    sink = tmp_path / "sink"
    supervisor, store = _supervisor(tmp_path, sqlite_url)
    worker = None
    try:
        task, worker = _effect_begun(store, sink, 4)
        supervisor.kill()
        supervisor.wait(10)
        later = store.submit([NewTask("c", "echo", str(n)) for n in range(3)], time.time())
        deadline = time.monotonic() + 60
        while (record := store.get_task(task.id)) is None or record.state != "succeeded":
            assert time.monotonic() < deadline, f"the task did not finish: {record}"
            time.sleep(0.05)
        assert record.attempts == 1
        assert sink.read_text(encoding="utf-8").split() == ["began", "ended"]
        _orphan_exits_having_taken_none(store, worker.pid, later, deadline)
    finally:
        _clean_up(supervisor, worker, store)


def test_down_stops_the_workers_a_killed_control_plane_left_finishing_their_tasks(
    tmp_path: Path,
) -> None:
    """With no control plane running, `fleetops down` said "no fleet is running" while
    its orphaned workers went on finishing their tasks (for up to orphan_grace). It
    now stops them as a shutdown does: they drain and give back what is unfinished."""
    import time

    from typer.testing import CliRunner

    from fleetops.cli._app import app as cli_app

    fleet = tmp_path / "fleet"
    (fleet / ".fleetops").mkdir(parents=True)
    (fleet / ".fleetops" / "applied-spec.yaml").write_text(
        "fleet: {name: orphans}\n"
        "store: sqlite:///fleet.db\n"
        "clusters:\n"
        "  c:\n"
        '    agents: [{name: slow_effect, entrypoint: "agents_for_tests:slow_effect"}]\n',
        encoding="utf-8",
    )
    sink = tmp_path / "sink"
    supervisor, store = _supervisor(tmp_path, f"sqlite:///{fleet / 'fleet.db'}")
    worker = None
    try:
        task, worker = _effect_begun(store, sink, 120)
        supervisor.kill()
        supervisor.wait(10)
        time.sleep(0.5)  # the orphan sees its parent gone (it looks every 0.2 s)
        assert not exited(worker.pid)
        result = CliRunner().invoke(cli_app, ["down", str(fleet), "--timeout", "30"])
        assert result.exit_code == 0, result.output
        assert f"pid {worker.pid}" in result.output and "stopped" in result.output
        assert exited(worker.pid)
        record = store.get_task(task.id)
        assert record is not None and record.state == "queued"  # given back, to run again
        # and with nothing left running, it says so, as before
        result = CliRunner().invoke(cli_app, ["down", str(fleet)])
        assert result.exit_code == 2 and "no fleet is running" in result.output
    finally:
        _clean_up(supervisor, worker, store)


def test_down_leaves_alone_a_process_that_only_has_a_dead_worker_s_pid(tmp_path: Path) -> None:
    """A worker killed outright leaves its row behind, and its pid may be another
    process's by now (a fleetops worker of another fleet, even): down stops a pid only
    where the row still beats and the process is the one that registered."""
    import socket
    import subprocess
    import sys
    import time

    from fleetops.cli._fleet import _orphaned_workers

    fleet = tmp_path / "fleet"
    (fleet / ".fleetops").mkdir(parents=True)
    (fleet / ".fleetops" / "applied-spec.yaml").write_text(
        "fleet: {name: orphans}\nstore: sqlite:///fleet.db\nclusters:\n"
        '  c:\n    agents: [{name: echo, entrypoint: "agents_for_tests:echo"}]\n',
        encoding="utf-8",
    )
    store = open_store(f"sqlite:///{fleet / 'fleet.db'}")

    def named_like_a_worker(supervisor: int) -> subprocess.Popen[bytes]:
        """A process whose command line is a spare's (``--spare KIND SUPERVISOR``)."""
        sleep = "import time; time.sleep(60)"
        spare = ["fleetops.runtime", "--spare", "asyncio", str(supervisor)]
        return subprocess.Popen([sys.executable, "-c", sleep, *spare])

    # its supervisor is gone (no such pid): an orphan; the other is this process's
    other, supervised = named_like_a_worker(2**22 + 1), named_like_a_worker(os.getpid())
    try:
        time.sleep(0.2)
        host, now = socket.gethostname(), time.time()
        store.register_worker("stale", "c", other.pid, host, 1, now)
        store.beat("stale", now - 3600, 0, 0)  # its last beat long ago
        assert _orphaned_workers(fleet) == []
        store.set_worker_state("stale", "stopped", now)
        store.register_worker("younger", "c", other.pid, host, 1, now - 3600)
        store.beat("younger", now, 0, 0)  # beating, but registered before it started
        assert _orphaned_workers(fleet) == []
        store.register_worker("its-own", "c", other.pid, host, 1, now)
        store.beat("its-own", now, 0, 0)
        # a worker its supervisor still runs (a control plane elsewhere on this store)
        store.register_worker("supervised", "c", supervised.pid, host, 1, now)
        store.beat("supervised", now, 0, 0)
        assert _orphaned_workers(fleet) == [other.pid]  # the check can say yes
    finally:
        for process in (other, supervised):
            process.kill()
            process.wait(10)
        store.close()


def _supervisor(tmp_path: Path, url: str) -> tuple[Any, Any]:
    """A supervisor of one worker (the slow_effect agent, a 1 s shutdown grace) in a
    process of its own, on the store at ``url``; and that store, opened here."""
    import subprocess
    import sys

    script = tmp_path / "supervisor.py"
    agents = ORPHANING_SUPERVISOR.replace("agents_for_tests:block", "agents_for_tests:slow_effect")
    script.write_text(agents)
    return subprocess.Popen([sys.executable, str(script), url, TESTS_DIR]), open_store(url)


def _effect_begun(store: Any, sink: Path, seconds: float) -> tuple[Any, Any]:
    """Submit a slow_effect task of ``seconds``; answer it and its worker once its
    effect has begun (it wrote to ``sink``)."""
    import time

    payload = json.dumps({"seconds": seconds, "sink": str(sink)})
    [task] = store.submit([NewTask("c", "slow_effect", payload)], time.time())
    deadline = time.monotonic() + 30
    while not sink.exists():
        assert time.monotonic() < deadline, "the worker never began the effect"
        time.sleep(0.05)
    [worker] = store.list_workers("c", live=True)
    assert worker.pid is not None
    return task, worker


def _clean_up(supervisor: Any, worker: Any, store: Any) -> None:
    """Stop the supervisor, and an orphan a failed check left running; close the store."""
    if supervisor.poll() is None:
        supervisor.kill()
    if worker is not None and worker.pid is not None and not exited(worker.pid):
        os.kill(worker.pid, signal.SIGKILL)
    store.close()


def _orphan_exits_having_taken_none(
    store: Any, pid: int, later: list[Any], deadline: float
) -> None:
    """The orphaned worker ``pid`` exits before ``deadline`` (monotonic), and nobody
    supervising it, it took none of the tasks submitted ``later``."""
    import time

    while not exited(pid):
        assert time.monotonic() < deadline, "the orphaned worker lives on"
        time.sleep(0.05)
    for task in later:
        record = store.get_task(task.id)
        assert record is not None and (record.state, record.attempts) == ("queued", 0)


def test_a_worker_whose_supervisor_is_killed_exits_even_while_a_handler_blocks_its_loop(
    sqlite_url: str, tmp_path: Path
) -> None:
    """kill -9 of the supervisor: its worker, whose event loop a handler blocks for a
    minute, exits within its shutdown grace and a margin, and claims nothing more.
    Before, it lived as long as the handler blocked, then claimed work again."""
    import subprocess
    import sys
    import time

    script = tmp_path / "supervisor.py"
    script.write_text(ORPHANING_SUPERVISOR)
    supervisor = subprocess.Popen([sys.executable, str(script), sqlite_url, TESTS_DIR])
    store = open_store(sqlite_url)
    try:
        [blocked] = store.submit([NewTask("c", "block", "60")], time.time())
        deadline = time.monotonic() + 30
        while (record := store.get_task(blocked.id)) is None or record.state != "running":
            assert time.monotonic() < deadline, "the worker never ran the blocking task"
            assert supervisor.poll() is None, "the supervisor stopped"
            time.sleep(0.05)
        [worker] = store.list_workers("c", live=True)
        assert worker.pid is not None and not exited(worker.pid)
        supervisor.kill()
        supervisor.wait(10)
        killed_at = time.monotonic()
        later = store.submit([NewTask("c", "echo", str(n)) for n in range(3)], time.time())
        # grace 1 s + ORPHAN_EXIT_MARGIN_SECONDS 2 s, and room for a loaded machine
        _orphan_exits_having_taken_none(store, worker.pid, later, killed_at + 15)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        store.close()


def test_a_worker_killed_at_shutdown_because_it_would_not_drain_has_its_tasks_queued_again(
    sqlite_url: str,
) -> None:
    """Its handler ignores cancellation: the supervisor kills it after the grace, and
    queues what it held at once. Before, the tasks stayed 'running', leased to a dead
    worker, until their leases expired."""
    plan = ClusterPlan(
        name="c",
        agents=("agents_for_tests:deaf", "agents_for_tests:echo"),
        replicas=1,
        worker=WorkerSettings(concurrency=4, shutdown_grace=0.5, lease_seconds=600),
        python_path=(TESTS_DIR,),
    )
    ids: list[int] = []

    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        task = await client.submit(NewTask("c", "deaf"))
        ids.append(task.id)

        async def running() -> bool:
            record = await client.run(client.store.get_task, task.id)
            return record is not None and record.state == "running"

        await wait_until(running, within=20)

    asyncio.run(_supervised(sqlite_url, body, plan))
    store = open_store(sqlite_url)
    try:
        record = store.get_task(ids[0])
        assert record is not None
        assert (record.state, record.lease_owner, record.redeliveries) == ("queued", None, 1)
    finally:
        store.close()


def test_a_task_that_kills_its_worker_again_and_again_does_not_take_the_healthy_ones_with_it(
    sqlite_url: str,
) -> None:
    """A crashing task claimed with healthy ones kills their worker, and each is
    charged a redelivery. Before, they were claimed together again and again and died
    together: max_redeliveries dead-lettered the healthy ones with the culprit. Once a
    suspect (SUSPECT_REDELIVERIES dead workers), a task runs alone among suspects in
    its worker, so the healthy ones are charged at most that often."""
    from fleetops.store._sql import SUSPECT_REDELIVERIES

    budget = SUSPECT_REDELIVERIES + 1  # room for the bound, no more

    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        tasks = [NewTask("c", "slow", "0.5", max_redeliveries=budget) for _ in range(10)]
        tasks.insert(5, NewTask("c", "crash", max_redeliveries=budget))
        subs = await client.submit_many(tasks)

        async def all_done() -> bool:
            return all([await _terminal(client, s.id) for s in subs])

        await wait_until(all_done, within=60)
        records = {r.id: r for r in await client.run(client.store.get_tasks, [s.id for s in subs])}
        culprit = records.pop(subs[5].id)
        assert culprit.state == "dead" and culprit.redeliveries == budget + 1
        assert "lost too often" in (culprit.dead_reason or "")
        assert {r.state for r in records.values()} == {"succeeded"}
        assert max(r.redeliveries for r in records.values()) <= SUSPECT_REDELIVERIES

    asyncio.run(
        _supervised(
            sqlite_url,
            body,
            _plan(replicas=1),
            RestartPolicy(backoff_base=0.02, backoff_max=0.1, intensity=100),
        )
    )


def test_a_worker_past_its_memory_limit_drains_and_is_replaced_without_a_failure(
    sqlite_url: str,
) -> None:
    """An agent that only grows its memory: the worker past max_memory_mb finishes
    what it runs, exits to be recycled, and a new one takes over; no task is
    redelivered and nothing counts as a failure."""
    from fleetops.runtime._worker import resident_mib

    baseline = resident_mib()
    assert baseline is not None and baseline > 10  # this test's own process, for scale
    plan = ClusterPlan(
        name="c",
        agents=("agents_for_tests:hoard", "agents_for_tests:echo", "agents_for_tests:slow"),
        replicas=1,
        worker=WorkerSettings(concurrency=10, shutdown_grace=5.0, max_memory_mb=400),
        python_path=(TESTS_DIR,),
    )

    async def body(sup: Supervisor, client: QueueClient, events: list[SupervisorEvent]) -> None:
        [first] = sup.live_workers("c")
        naps = await client.submit_many([NewTask("c", "slow", "1.0") for _ in range(3)])
        held = await client.submit(NewTask("c", "hoard", "500"))
        await wait_until(lambda: "worker.recycled" in _kinds(events), within=30)
        for task in [*naps, held]:
            record = await client.run(client.store.get_task, task.id)
            assert record is not None and (record.state, record.redeliveries) == ("succeeded", 0)
        late = await client.submit(NewTask("c", "echo", '"after"'))
        await wait_until(lambda: _terminal(client, late.id), within=30)
        [second] = sup.live_workers("c")
        assert second.id != first.id
        record = await client.run(client.store.get_task, late.id)
        assert record is not None and record.state == "succeeded"

    events = asyncio.run(_supervised(sqlite_url, body, plan))
    kinds = _kinds(events)
    assert kinds.count("worker.recycled") == 1
    assert "worker.failed" not in kinds and "agent_failure.restart_failed_agent" not in kinds
