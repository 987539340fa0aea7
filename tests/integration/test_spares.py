"""Warm spares: a worker that dies is replaced by a process that has its imports done."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from _polling import exited, wait_until
from fleetops import ConfigError
from fleetops.queue import QueueClient
from fleetops.runtime import ClusterPlan, Supervisor, SupervisorEvent, WorkerHandle, WorkerSettings
from fleetops.runtime._supervisor import SPARE_RETRY_SECONDS
from fleetops.store import TERMINAL_STATES, NewTask, open_store

TESTS_DIR = str(Path(__file__).resolve().parents[1])
T = TypeVar("T")


def _plan() -> ClusterPlan:
    return ClusterPlan(
        name="c",
        agents=("agents_for_tests:echo",),
        replicas=1,
        worker=WorkerSettings(concurrency=10, shutdown_grace=2.0),
        python_path=(TESTS_DIR,),
    )


async def _supervised(
    supervisor: Supervisor, url: str, body: Callable[[QueueClient], Awaitable[T]]
) -> T:
    """Run ``body`` while ``supervisor`` runs, once its workers are heartbeating."""
    open_store(url).close()
    stop = asyncio.Event()
    async with QueueClient(url) as client, asyncio.TaskGroup() as tg:
        tg.create_task(supervisor.run(stop))
        await asyncio.wait_for(supervisor.ready.wait(), 30)
        try:
            return await body(client)
        finally:
            stop.set()


async def _succeeds(client: QueueClient, payload: str) -> None:
    sub = await client.submit(NewTask("c", "echo", json.dumps(payload)))

    async def terminal() -> bool:
        record = await client.run(client.store.get_task, sub.id)
        return record is not None and record.state in TERMINAL_STATES

    await wait_until(terminal)
    record = await client.run(client.store.get_task, sub.id)
    assert record is not None and record.state == "succeeded"


def _hold_spare_starts(
    monkeypatch: pytest.MonkeyPatch, hold: Callable[[int], bool]
) -> tuple[asyncio.Event, list[int]]:
    """Make the keeper wait, once the nth spare has started and before it is kept,
    while ``hold(n)`` and until the event is set; the pids started go in the list."""
    gate = asyncio.Event()
    started: list[int] = []
    real = Supervisor._start_spare

    async def held(self: Supervisor, cluster: str) -> Any:
        spare = await real(self, cluster)
        started.append(spare.process.pid)
        if hold(len(started)):
            await gate.wait()
        return spare

    monkeypatch.setattr(Supervisor, "_start_spare", held)
    return gate, started


def test_a_dead_worker_is_replaced_by_the_warm_spare_which_logs_to_the_workers_own_file(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The spare, not a new process, becomes the worker (its pid is the spare's); it
    runs tasks, writes its log under its own worker id, and a new spare takes its
    place. No spare outlives the supervisor's run."""
    logs = tmp_path / "logs"
    events: list[SupervisorEvent] = []
    supervisor = Supervisor(sqlite_url, [_plan()], log_dir=logs, on_event=events.append)

    async def body(client: QueueClient) -> tuple[int, int]:
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [spare] = supervisor.spare_pids()
        [old] = supervisor.live_workers()
        os.kill(old.pid, signal.SIGKILL)
        await wait_until(
            lambda: any(h.id != old.id and h.first_heartbeat_at for h in supervisor.live_workers())
        )
        [new] = supervisor.live_workers()
        assert new.pid == spare
        started = [e.data["spare"] for e in events if e.kind == "worker.started"]
        assert started == [False, True]
        await _succeeds(client, "after the crash")
        await wait_until(lambda: supervisor.spare_pids() not in ([], [spare]))
        [successor] = supervisor.spare_pids()
        log = (logs / f"{new.id}.log").read_text().splitlines()
        records = [json.loads(line) for line in log]
        assert any(
            r.get("event") == "worker.started" and r.get("worker") == new.id for r in records
        )
        return spare, successor

    taken, successor = asyncio.run(_supervised(supervisor, sqlite_url, body))
    assert exited(taken) and exited(successor)


def test_a_spare_that_dies_before_it_is_taken_is_replaced_after_the_back_off(
    sqlite_url: str, tmp_path: Path
) -> None:
    supervisor = Supervisor(sqlite_url, [_plan()], log_dir=tmp_path / "logs")

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [first] = supervisor.spare_pids()
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        await wait_until(lambda: supervisor.spare_pids() not in ([], [first]))
        # not at once: a spare that keeps dying (a broken install) must not fork in a loop
        assert time.monotonic() - killed_at >= SPARE_RETRY_SECONDS[0]
        assert exited(first)
        # an event says so: the cluster's next replacement would have started cold
        [died] = await client.run(client.store.list_events, "spare.exited")
        assert (died.cluster, died.worker) == ("c", None)
        assert json.loads(died.data) == {
            "pid": first,
            "exit_code": -signal.SIGKILL,
            "retry_s": SPARE_RETRY_SECONDS[0],
            "log": str(tmp_path / "logs" / "spares.log"),
        }
        await _succeeds(client, "the workers never noticed")

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_a_supervisor_stopped_while_a_spare_waits_out_its_back_off_stops_at_once(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The back-off is the keeper's, which a stop cancels. It was a sleep in the
    dead spare's watcher, which nothing cancelled: a stop waited it out (up to 60 s)."""
    monkeypatch.setattr("fleetops.runtime._supervisor.SPARE_RETRY_SECONDS", (120.0, 120.0))
    open_store(sqlite_url).close()
    supervisor = Supervisor(sqlite_url, [_plan()])

    async def main() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(supervisor.run(stop))
        await asyncio.wait_for(supervisor.ready.wait(), 30)
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [spare] = supervisor.spare_pids()
        os.kill(spare, signal.SIGKILL)
        await wait_until(lambda: supervisor.spare_pids() == [] and exited(spare))
        await asyncio.sleep(0.2)  # the spare's exit noticed, its back-off begun
        stop.set()
        await asyncio.wait_for(running, 30)  # the worker's drain, not the back-off

    asyncio.run(main())


def test_without_spares_a_dead_worker_is_replaced_by_a_new_process(sqlite_url: str) -> None:
    events: list[SupervisorEvent] = []
    supervisor = Supervisor(sqlite_url, [_plan()], on_event=events.append, spares=0)

    async def body(client: QueueClient) -> None:
        [old] = supervisor.live_workers()
        os.kill(old.pid, signal.SIGKILL)
        await wait_until(lambda: any(h.id != old.id for h in supervisor.live_workers()))
        await _succeeds(client, "cold start")
        assert supervisor.spare_pids() == []

    asyncio.run(_supervised(supervisor, sqlite_url, body))
    started = [e.data["spare"] for e in events if e.kind == "worker.started"]
    assert started == [False, False]


def test_a_roll_replaces_the_spares_with_processes_started_after_it(sqlite_url: str) -> None:
    """A roll is how new code reaches the workers: the worker it starts must not be a
    spare that imported the code on disk before it."""
    supervisor = Supervisor(sqlite_url, [_plan()])

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [before] = supervisor.spare_pids()
        [old] = supervisor.live_workers()
        await asyncio.wait_for(supervisor.roll(_plan()), 60)
        [new] = supervisor.live_workers()
        assert new.id != old.id and new.pid != before
        assert exited(before)
        await wait_until(lambda: supervisor.spare_pids() not in ([], [before]))
        await _succeeds(client, "rolled")

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_a_spare_that_was_starting_when_a_roll_began_is_not_taken_after_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The keeper was starting a spare (forked, its pipes not yet connected) when the
    roll ended the spares: that one, which imported the code from before the roll,
    is killed once started, not kept for the next worker."""
    supervisor = Supervisor(sqlite_url, [_plan()])
    # the successor of the spare taken below: held over the roll
    gate, started = _hold_spare_starts(monkeypatch, lambda nth: nth == 2)

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [old] = supervisor.live_workers()
        os.kill(old.pid, signal.SIGKILL)
        await wait_until(lambda: len(started) == 2)
        await wait_until(
            lambda: any(h.id != old.id and h.first_heartbeat_at for h in supervisor.live_workers())
        )
        await asyncio.wait_for(supervisor.roll(_plan()), 60)
        gate.set()
        before_roll = started[1]
        await wait_until(lambda: exited(before_roll))
        assert before_roll not in [h.pid for h in supervisor.live_workers()]
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        assert supervisor.spare_pids() != [before_roll]
        await _succeeds(client, "after the roll")

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_a_spares_log_past_its_size_is_rotated_when_a_spare_starts(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spares that keep failing write to it for as long as that lasts; it is never
    pruned (they hold it open), so it is kept under its size as a worker's log is."""
    monkeypatch.setattr("fleetops.runtime._supervisor.LOG_MAX_BYTES", 1000)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "spares.log").write_text("x" * 2000)
    supervisor = Supervisor(sqlite_url, [_plan()], log_dir=logs)

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)

    asyncio.run(_supervised(supervisor, sqlite_url, body))
    assert (logs / "spares.log.1").read_text() == "x" * 2000
    assert (logs / "spares.log").stat().st_size < 1000


def test_the_number_of_spares_can_change_while_the_supervisor_runs(sqlite_url: str) -> None:
    supervisor = Supervisor(sqlite_url, [_plan()])

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [first] = supervisor.spare_pids()
        supervisor.set_spares(2)
        await wait_until(lambda: len(supervisor.spare_pids()) == 2)
        assert first in supervisor.spare_pids()
        supervisor.set_spares(0)
        assert supervisor.spare_pids() == []
        await wait_until(lambda: exited(first))
        [worker] = supervisor.live_workers()
        os.kill(worker.pid, signal.SIGKILL)  # with none kept, a cold start replaces it
        await wait_until(lambda: any(h.id != worker.id for h in supervisor.live_workers()))
        await _succeeds(client, "no spares")
        assert supervisor.spare_pids() == []
        with pytest.raises(ConfigError):
            supervisor.set_spares(-1)

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_a_spare_that_was_starting_when_fewer_were_wanted_is_not_kept(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor = Supervisor(sqlite_url, [_plan()])
    gate, started = _hold_spare_starts(monkeypatch, lambda nth: True)

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(started) == 1)
        supervisor.set_spares(0)
        gate.set()
        await wait_until(lambda: exited(started[0]))
        assert supervisor.spare_pids() == [] and len(started) == 1

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def _marked(name: str = "c", replicas: int = 1, path: str = TESTS_DIR) -> ClusterPlan:
    return ClusterPlan(
        name=name,
        agents=("marked_agents:marked",),
        replicas=replicas,
        worker=WorkerSettings(concurrency=10, shutdown_grace=2.0),
        python_path=(path,),
    )


def _import_log(tmp_path: Path, **env: str) -> tuple[Path, dict[str, str]]:
    """A file for marked_agents to note its importers in, and the environment to
    start the supervisor's processes with (``env`` added)."""
    imports = tmp_path / "imports"
    return imports, {**os.environ, "FLEETOPS_TEST_IMPORT_LOG": str(imports), **env}


async def _kill_the_worker(supervisor: Supervisor, cluster: str = "c") -> WorkerHandle:
    """SIGKILL the one worker of ``cluster``; answer its successor, once it heartbeats."""
    [old] = supervisor.live_workers(cluster)
    os.kill(old.pid, signal.SIGKILL)

    def successor() -> list[WorkerHandle]:
        return [h for h in supervisor.live_workers(cluster) if h.id != old.id]

    await wait_until(lambda: any(h.first_heartbeat_at for h in successor()))
    [new] = successor()
    return new


def _importers(log: Path) -> list[int]:
    """The pids that imported marked_agents, one entry an import."""
    return [int(line) for line in log.read_text().split()] if log.exists() else []


async def _run_marked(client: QueueClient, cluster: str) -> int:
    """Run the marked agent on ``cluster``; answer the pid of the worker that ran it."""
    pid, _, in_its_loop = await _run_marked_from(client, cluster)
    assert in_its_loop, "the agent's module was not imported in the worker's event loop"
    return pid


async def _run_marked_from(client: QueueClient, cluster: str) -> tuple[int, str, bool]:
    """Run the marked agent on ``cluster``; answer the pid of the worker that ran it,
    the directory of the module it ran, and whether that module was imported in the
    event loop that ran it."""
    sub = await client.submit(NewTask(cluster, "marked", "null"))

    async def succeeded() -> bool:
        record = await client.run(client.store.get_task, sub.id)
        assert record is None or record.state not in {"dead", "cancelled"}, record
        return record is not None and record.state == "succeeded"

    await wait_until(succeeded)
    record = await client.run(client.store.get_task, sub.id)
    assert record is not None and record.result is not None
    pid, file, in_its_loop = json.loads(record.result)
    return int(pid), str(Path(file).parent), bool(in_its_loop)


def test_a_spare_loads_its_clusters_agents_ahead_and_the_worker_it_becomes_runs_them(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The spare imports the cluster's agent module while it waits, before any worker
    died; taken, it runs the agent without importing it again."""
    imports, env = _import_log(tmp_path)
    supervisor = Supervisor(sqlite_url, [_marked()], env=env)

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [spare] = supervisor.spare_pids()
        assert spare in _importers(imports)  # it is ready: its imports are done
        new = await _kill_the_worker(supervisor)
        assert new.pid == spare and new.spare
        assert await _run_marked(client, "c") == spare
        assert _importers(imports).count(spare) == 1
        # its successor loads them ahead too
        await wait_until(lambda: supervisor.spare_pids() not in ([], [spare]))
        [successor] = supervisor.spare_pids()
        assert successor in _importers(imports)

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_each_cluster_has_spares_of_its_own_on_its_own_path(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A spare has one cluster's path on sys.path and its agents imported, as that
    cluster's cold worker would, and nothing of another's: it serves that cluster
    only."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(Path(TESTS_DIR) / "marked_agents.py", elsewhere)
    supervisor = Supervisor(sqlite_url, [_marked(), _marked("d", 1, str(elsewhere))])

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids("c")) == 1)
        await wait_until(lambda: len(supervisor.spare_pids("d")) == 1)
        [c_spare], [d_spare] = supervisor.spare_pids("c"), supervisor.spare_pids("d")
        # d's first: c's spare, started first, is the first in line
        new = await _kill_the_worker(supervisor, "d")
        assert new.pid == d_spare
        assert supervisor.spare_pids("c") == [c_spare]  # not taken for another cluster
        assert await _run_marked_from(client, "d") == (d_spare, str(elsewhere), True)
        new = await _kill_the_worker(supervisor, "c")
        assert new.pid == c_spare
        assert await _run_marked_from(client, "c") == (c_spare, TESTS_DIR, True)
        # a roll of one cluster ends its own spares only
        await wait_until(lambda: len(supervisor.spare_pids("c")) == 1)
        await wait_until(lambda: len(supervisor.spare_pids("d")) == 1)
        [c_next], [d_next] = supervisor.spare_pids("c"), supervisor.spare_pids("d")
        await asyncio.wait_for(supervisor.roll(_marked()), 60)
        assert exited(c_next) and supervisor.spare_pids("d") == [d_next]

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_a_cluster_added_gets_spares_and_one_removed_or_left_without_workers_loses_them(
    sqlite_url: str,
) -> None:
    supervisor = Supervisor(sqlite_url, [_plan()])

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids("c")) == 1)
        [c_spare] = supervisor.spare_pids("c")
        supervisor.add_cluster(_marked("d"))
        await wait_until(lambda: len(supervisor.spare_pids("d")) == 1)
        [d_spare] = supervisor.spare_pids("d")
        supervisor.scale("d", 0)
        await wait_until(lambda: exited(d_spare))
        assert supervisor.spare_pids("d") == []
        supervisor.scale("d", 1)
        await wait_until(lambda: len(supervisor.spare_pids("d")) == 1)
        [d_spare] = supervisor.spare_pids("d")
        await supervisor.remove_cluster("d")
        await wait_until(lambda: exited(d_spare))
        assert supervisor.spare_pids("d") == [] and supervisor.spare_pids() == [c_spare]
        await _succeeds(client, "the first cluster kept its spare")

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_a_spare_still_loading_its_agents_is_taken_and_runs_once_they_are_loaded(
    sqlite_url: str, tmp_path: Path
) -> None:
    """It is ahead of a cold start, which would load them from the beginning; the
    worker it becomes starts once they are loaded."""
    hold = tmp_path / "hold"
    hold.touch()
    imports, env = _import_log(tmp_path, FLEETOPS_TEST_HOLD_SPARES=str(hold))
    supervisor = Supervisor(sqlite_url, [_marked()], env=env)

    async def body(client: QueueClient) -> None:
        [first] = supervisor.live_workers()
        await wait_until(lambda: len(_importers(imports)) == 2)  # the worker and the spare
        [loading] = [pid for pid in _importers(imports) if pid != first.pid]
        assert supervisor.spare_pids() == []  # none ready
        os.kill(first.pid, signal.SIGKILL)
        await wait_until(lambda: [h.pid for h in supervisor.live_workers()] == [loading])
        [new] = supervisor.live_workers()
        assert new.spare
        await asyncio.sleep(0.5)
        assert new.first_heartbeat_at is None  # still loading
        hold.unlink()
        await wait_until(lambda: new.first_heartbeat_at is not None)
        assert await _run_marked(client, "c") == loading

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_what_an_agent_prints_at_import_goes_to_the_spares_log_not_its_ready_word(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The supervisor reads the spare's stdout for the word that it is ready; a
    module's print there could be taken for it, or hide it."""
    logs = tmp_path / "logs"
    said = "Ready? Not yet: R R R"
    imports, env = _import_log(tmp_path, FLEETOPS_TEST_PRINT_AT_IMPORT=said)
    supervisor = Supervisor(sqlite_url, [_marked()], env=env, log_dir=logs)

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [spare] = supervisor.spare_pids()
        assert said in (logs / "spares.log").read_text()
        new = await _kill_the_worker(supervisor)
        assert new.pid == spare
        assert await _run_marked(client, "c") == spare

    asyncio.run(_supervised(supervisor, sqlite_url, body))


def test_an_agent_module_that_exits_at_import_leaves_the_spare_waiting_and_says_why(
    sqlite_url: str, tmp_path: Path
) -> None:
    """The module's failure is said in spares.log and left to the worker, which loads
    the module again when it starts: here it imports by then."""
    logs = tmp_path / "logs"
    fail = tmp_path / "fail"
    imports, env = _import_log(tmp_path, FLEETOPS_TEST_EXIT_AT_IMPORT=str(fail))
    supervisor = Supervisor(sqlite_url, [_marked()], env=env, log_dir=logs, spares=0)

    async def body(client: QueueClient) -> None:
        fail.touch()
        supervisor.set_spares(1)
        await wait_until(lambda: len(supervisor.spare_pids()) == 1)
        [spare] = supervisor.spare_pids()
        said = (logs / "spares.log").read_text()
        [record] = [json.loads(line) for line in said.splitlines() if "not_loaded" in line]
        assert record["event"] == "spare.agent_not_loaded"
        assert record["entrypoint"] == "marked_agents:marked"
        assert "exit at import" in record["error"] and record["level"] == "warning"
        fail.unlink()
        new = await _kill_the_worker(supervisor)
        assert new.pid == spare
        assert await _run_marked(client, "c") == spare
        assert _importers(imports).count(spare) == 2  # once ahead (it failed), once taken

    asyncio.run(_supervised(supervisor, sqlite_url, body))
    assert "Traceback" not in (logs / "spares.log").read_text()


CRASHING_SPARES = """
import os, sys
from fleetops import agent

if "--spare" in sys.argv:  # a cold worker imports this; a spare dies of it
    os._exit(3)


@agent(name="fine")
async def fine(task, ctx):
    return "fine"
"""


def test_a_cluster_whose_spares_keep_dying_does_not_hold_back_anothers(
    sqlite_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The back-off after a spare died untaken is its cluster's own."""
    monkeypatch.setattr("fleetops.runtime._supervisor.SPARE_RETRY_SECONDS", (60.0, 60.0))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "crashing_spares.py").write_text(CRASHING_SPARES)
    crashing = ClusterPlan(
        name="x", agents=("crashing_spares:fine",), replicas=1, python_path=(str(elsewhere),)
    )
    supervisor = Supervisor(sqlite_url, [_plan(), crashing])

    async def body(client: QueueClient) -> None:
        await wait_until(lambda: len(supervisor.spare_pids("c")) == 1)
        [taken] = supervisor.spare_pids("c")
        await wait_until(  # x's spare died, and x backs off for a minute
            lambda: any(
                r.getMessage() == "spare.exited" and r.fleetops["cluster"] == "x"  # type: ignore[attr-defined]
                for r in caplog.records
            )
        )
        assert supervisor.spare_pids("x") == []
        new = await _kill_the_worker(supervisor)
        assert new.pid == taken
        # c's next spare starts now, not when x's back-off of a minute ends
        await wait_until(lambda: supervisor.spare_pids("c") not in ([], [taken]))
        await _succeeds(client, "c has its spare")

    asyncio.run(_supervised(supervisor, sqlite_url, body))


@pytest.mark.parametrize("spares", [-1, 1.5, True, "1"])
def test_a_bad_number_of_spares_is_refused_naming_the_field(
    sqlite_url: str, spares: object
) -> None:
    with pytest.raises(ConfigError) as raised:
        Supervisor(sqlite_url, [_plan()], spares=spares)  # type: ignore[arg-type]
    assert raised.value.field == "spares" and raised.value.value == spares
    assert "0 or more" in raised.value.fix


SUPERVISOR = """
import asyncio, sys
from fleetops.runtime import ClusterPlan, Supervisor, WorkerSettings

plan = ClusterPlan(
    name="c", agents=(sys.argv[3],), replicas=1,
    worker=WorkerSettings(concurrency=10), python_path=(sys.argv[2],),
)
asyncio.run(Supervisor(sys.argv[1], [plan]).run(asyncio.Event()))
"""


def _spares_of(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"--spare" in cmdline:
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("held", [False, True], ids=["waiting", "still-importing"])
def test_a_spare_whose_supervisor_is_killed_exits(
    sqlite_url: str, tmp_path: Path, held: bool
) -> None:
    """kill -9 of the supervisor ends its spares: none ever becomes a worker that
    nobody supervises, whether it waits for its config or is still importing its
    agents (held here), and reads no stdin yet. On Linux the kernel ends both."""
    script = tmp_path / "supervisor.py"
    script.write_text(SUPERVISOR)
    hold = tmp_path / "hold"
    imports, env = _import_log(tmp_path, FLEETOPS_TEST_HOLD_SPARES=str(hold))
    agent = "agents_for_tests:echo"
    if held:
        hold.touch()
        agent = "marked_agents:marked"
    open_store(sqlite_url).close()
    supervisor = subprocess.Popen(
        [sys.executable, str(script), sqlite_url, TESTS_DIR, agent], env=env
    )
    try:
        deadline = time.monotonic() + 30
        while not (spares := _spares_of(supervisor.pid)) or (
            held and not set(spares) <= set(_importers(imports))
        ):
            assert time.monotonic() < deadline, "the supervisor started no spare"
            assert supervisor.poll() is None, "the supervisor stopped"
            time.sleep(0.05)
        supervisor.kill()
        supervisor.wait(10)
        killed_at = time.monotonic()
        while not all(exited(pid) for pid in spares):
            assert time.monotonic() - killed_at < 10, "the spare outlived its supervisor"
            time.sleep(0.05)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
        hold.unlink(missing_ok=True)


def test_a_spare_whose_stdin_closes_before_it_is_taken_exits_cleanly() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fleetops.runtime", "--spare", ""],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, b""), done.stderr
    assert b"Traceback" not in done.stderr


def test_a_spare_started_for_a_supervisor_that_is_not_its_parent_exits_at_once() -> None:
    """Its supervisor died before the spare asked the kernel to end it with its parent
    (it was reparented meanwhile): it exits without waiting on a stdin that its
    supervisor's children may still hold open."""
    not_the_parent = os.getpid() + 1  # its parent is this process
    spare = subprocess.Popen(
        [sys.executable, "-m", "fleetops.runtime", "--spare", "", str(not_the_parent)],
        stdin=subprocess.PIPE,  # kept open, and never written: only the check ends it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert spare.stdin is not None and spare.stdout is not None and spare.stderr is not None
    try:
        code = spare.wait(timeout=60)
        out, err = spare.stdout.read(), spare.stderr.read()
    finally:
        spare.kill()
        spare.wait()
        for pipe in (spare.stdin, spare.stdout, spare.stderr):
            pipe.close()
    assert (code, out) == (0, b""), err
