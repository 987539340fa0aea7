"""Deploying and operating a fleet with the CLI, as a user does: real processes, real API."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from fleetops.chaos._ledger import Ledger
from fleetops.queue._client import MAX_VALUE_BYTES
from fleetops.store import NewTask, open_store

FLEETOPS = [sys.executable, "-m", "fleetops.cli"]

AGENTS = """
import asyncio
import os
from fleetops import agent

@agent(name="work")
async def work(task, ctx):
    await asyncio.sleep(float(task.payload or 0.05))
    return {"done": task.id}

@agent(name="gate")
async def gate(task, ctx):
    if not os.path.exists(task.payload):
        raise RuntimeError("the gate is closed")
    return "through"

@agent(name="relay")
async def relay(task, ctx):
    return await ctx.call("back/work", task.payload or 0.01)

@agent(name="deaf")
async def deaf(task, ctx):
    # ignores cancellation for a minute: a worker running it will not drain
    for _ in range(600):
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            pass
    return "finally"
"""


def spec_text(
    replicas: int = 2,
    store: str | None = None,
    entrypoint: str = "fleet_agents:work",
    port: int = 0,
) -> str:
    store_line = f"store: {store}\n" if store else ""
    return textwrap.dedent(f"""\
        fleet: {{name: accept}}
        {store_line}api: {{port: {port}}}
        clusters:
          front:
            agents: [{{name: relay, entrypoint: "fleet_agents:relay"}}]
            replicas: 1
            routes: [back]
          back:
            agents:
              - {{name: work, entrypoint: "{entrypoint}"}}
              - {{name: gate, entrypoint: "fleet_agents:gate", retry: {{max_attempts: 1}}}}
            replicas: {replicas}
        """).replace("        ", "")


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run(
        [*FLEETOPS, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env
    )


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    (tmp_path / "fleet_agents.py").write_text(AGENTS)
    (tmp_path / "fleet.yaml").write_text(spec_text())
    return tmp_path


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _fleetops_processes(marker: Path) -> dict[int, bool]:
    """The worker and warm spare processes of the fleet under ``marker``, by pid: True
    for a worker (its store open), False for a spare not yet taken. A cold worker's
    command line names the store; a spare's names nothing of the fleet, but its
    stderr is the fleet's spares.log, and once taken it opens the store too."""
    found: dict[int, bool] = {}
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit() or b"fleetops.runtime" not in (
                cmdline := (entry / "cmdline").read_bytes()
            ):
                continue
            fds = list((entry / "fd").iterdir())
        except OSError:  # it ended meanwhile
            continue
        files = {}
        for fd in fds:
            with contextlib.suppress(OSError):  # closed meanwhile: the others still count
                files[int(fd.name)] = os.readlink(fd)
        if str(marker).encode() in cmdline or any(str(marker) in f for f in files.values()):
            found[int(entry.name)] = any(
                fd > 2 and f.startswith(str(marker)) for fd, f in files.items()
            )
    return found


def _fleetops_workers_running(marker: Path) -> list[int]:
    """The pids of the worker processes whose store is under ``marker``, cold ones
    and warm spares taken alike."""
    return [pid for pid, worker in _fleetops_processes(marker).items() if worker]


def test_smoke_deploy_reports_phases_and_readiness(fleet_dir: Path) -> None:
    proc = run("up", "fleet.yaml", "--smoke", "--json", cwd=fleet_dir)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["deployment_successful"] is True
    assert report["completed_phases"] == [
        "infrastructure_provisioning",
        "control_plane_deployment",
        "data_plane_deployment",
        "service_mesh_configuration",
        "agent_cluster_deployment",
        "observability_stack_setup",
        "integration_validation",
    ]
    checks = {c["name"]: c for c in report["readiness_checks"]}
    assert sum(c["weight"] for c in checks.values()) == 100
    assert report["readiness_score"] == sum(c["weight"] for c in checks.values() if c["passed"])
    assert checks["integration_smoke"]["passed"]
    assert not checks["redundancy"]["passed"]  # front runs one worker
    assert "front" in checks["redundancy"]["why"]
    # torn down: no lock, no worker left
    assert not (fleet_dir / ".fleetops" / "control.lock").exists()
    assert _fleetops_processes(fleet_dir) == {}


def test_unreachable_store_fails_fast_in_the_first_phase(fleet_dir: Path) -> None:
    (fleet_dir / "fleet.yaml").write_text(
        spec_text(store="postgresql://postgres@127.0.0.1:9/nowhere")
    )
    proc = run("up", "fleet.yaml", "--smoke", "--json", cwd=fleet_dir)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["deployment_successful"] is False
    assert report["failed_phase"] == "infrastructure_provisioning"
    assert report["completed_phases"] == []
    assert "127.0.0.1:9" in report["error"]
    assert not (fleet_dir / ".fleetops").exists()  # its log file and lock went with it
    assert _fleetops_processes(fleet_dir) == {}


def test_entrypoint_that_does_not_import_is_refused_before_anything_and_leaves_nothing(
    fleet_dir: Path,
) -> None:
    """A user's mistake, as a bad spec is: exit status 2 and the field, not a failed
    phase's exit status 1 (an outage's), and nothing made or started."""
    (fleet_dir / "fleet.yaml").write_text(spec_text(entrypoint="no_such_module:work"))
    proc = run("up", "fleet.yaml", "--smoke", "--json", cwd=fleet_dir)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "clusters.back.agents[0].entrypoint" in proc.stderr
    assert "no_such_module" in proc.stderr
    assert not (fleet_dir / ".fleetops").exists()
    assert _fleetops_processes(fleet_dir) == {}


def test_three_mistakes_are_reported_together_with_lines(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        textwrap.dedent("""\
        fleet: {name: bad}
        clusters:
          a:
            agents: [{name: x, entrypoint: "no-colon-here"}]
            replicas: -1
            routes: [missing]
            colour: blue
        """)
    )
    proc = run("validate", "bad.yaml", cwd=tmp_path)
    assert proc.returncode == 2
    text = proc.stderr
    assert "Traceback" not in text
    for line, needle in ((4, "entrypoint"), (5, "replicas"), (6, "routes"), (7, "colour")):
        assert f"bad.yaml:{line}:" in text, (needle, text)
        assert needle in text


def test_schema_is_json_schema(tmp_path: Path) -> None:
    proc = run("schema", cwd=tmp_path)
    assert proc.returncode == 0
    schema = json.loads(proc.stdout)
    assert "clusters" in schema["properties"]


def _up(fleet_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """``fleetops up fleet.yaml`` in ``fleet_dir``, deployed: the process and its API."""
    proc = subprocess.Popen(
        [*FLEETOPS, "up", "fleet.yaml", "--json", "--no-live"],
        cwd=fleet_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert proc.stdout is not None
    report = json.loads(proc.stdout.readline())
    assert report["deployment_successful"], report
    return proc, str(report["api_url"])


@pytest.fixture
def running_fleet(fleet_dir: Path) -> Iterator[tuple[Path, str]]:
    proc, api = _up(fleet_dir)
    try:
        yield fleet_dir, api
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert not (fleet_dir / ".fleetops" / "control.lock").exists()
    assert _fleetops_processes(fleet_dir) == {}


def test_a_terminal_that_stopped_reading_does_not_keep_the_fleet_from_stopping(
    fleet_dir: Path,
) -> None:
    """fleetops up's stderr is a pipe already full (a terminal paused with Ctrl-S, an
    ssh session that stalled): SIGTERM still drains the fleet and ends the command."""
    with socket.socket() as probe:  # a port free right now, for the API
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    api = f"http://127.0.0.1:{port}"
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, b"x" * 4096)
    os.set_blocking(write_end, True)
    proc = subprocess.Popen(
        [*FLEETOPS, "up", "fleet.yaml", "--no-live", "--api-port", str(port)],
        cwd=fleet_dir,
        stdout=subprocess.DEVNULL,
        stderr=write_end,
        env=dict(os.environ, COLUMNS="200"),
    )
    os.close(write_end)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{api}/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert _fleetops_processes(fleet_dir) == {}
    finally:
        if proc.poll() is None:
            os.read(read_end, 1 << 20)  # let it go on, so that it can be stopped
            proc.kill()
        os.close(read_end)


def test_apply_scales_under_load_loses_nothing_and_records_changes(
    running_fleet: tuple[Path, str],
) -> None:
    fleet_dir, api = running_fleet
    submitted = []
    with httpx.Client(base_url=api, timeout=30) as http:
        for _ in range(150):
            r = http.post("/api/v1/tasks", json={"agent": "back/work", "payload": 0.2})
            assert r.status_code == 201, r.text
            submitted.append(r.json()["id"])
        for replicas in (4, 1):
            (fleet_dir / "fleet.yaml").write_text(spec_text(replicas=replicas))
            proc = run("apply", "fleet.yaml", "--reason", f"scale to {replicas}", cwd=fleet_dir)
            assert proc.returncode == 0, proc.stderr
            assert f"to {replicas} worker(s)" in proc.stdout
            clusters = {c["name"]: c for c in http.get("/api/v1/clusters").json()}
            assert clusters["back"]["desired_workers"] == replicas
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            states = [http.get(f"/api/v1/tasks/{i}").json()["state"] for i in submitted[-5:]]
            done = http.get(
                "/api/v1/tasks", params={"state": "succeeded", "cluster": "back", "limit": 1000}
            ).json()["items"]
            if len({t["id"] for t in done} & set(submitted)) == len(submitted):
                break
            time.sleep(0.5)
        records = [http.get(f"/api/v1/tasks/{i}").json() for i in submitted]
        assert [r["state"] for r in records] == ["succeeded"] * len(submitted), states
        changes = http.get("/api/v1/changes").json()
        assert [c["kind"] for c in changes] == ["deploy", "apply", "apply"]
        assert changes[1]["reason"] == "scale to 4"
        assert {
            "path": "clusters.back.replicas",
            "before": 2,
            "after": 4,
            "op": "replace",
        } in changes[1]["diff"]
        live = http.get("/api/v1/clusters").json()
        assert {c["name"]: c["heartbeating_workers"] for c in live}["back"] == 1


def test_apply_of_an_entrypoint_that_does_not_import_is_refused_and_changes_nothing(
    running_fleet: tuple[Path, str],
) -> None:
    """The entrypoint is imported, as a worker would, before any worker is touched:
    rolled out, it left the cluster crash-looping, and the spec it replaced, applied
    again, found nothing to do. Refused, the fleet runs on as it was."""
    fleet_dir, api = running_fleet
    with httpx.Client(base_url=api, timeout=30) as http:

        def workers() -> set[str]:
            return {w["id"] for w in http.get("/api/v1/workers", params={"live": "true"}).json()}

        before = workers()
        (fleet_dir / "bad.yaml").write_text(spec_text(entrypoint="fleet_agents:nosuchfn"))
        proc = run("apply", "bad.yaml", "--api", api, cwd=fleet_dir)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        for needle in (
            "clusters.back.agents[0].entrypoint",
            "fleet_agents:nosuchfn",
            "has no attribute 'nosuchfn'",
        ):
            assert needle in proc.stderr, proc.stderr
        assert workers() == before
        assert not any(c["degraded"] for c in http.get("/api/v1/clusters").json())
        assert [c["kind"] for c in http.get("/api/v1/changes").json()] == ["deploy"]
        assert (fleet_dir / ".fleetops" / "applied-spec.yaml").read_text() == spec_text()
        task = http.post("/api/v1/tasks", json={"agent": "back/work", "payload": 0.01}).json()
        _wait(
            lambda: http.get(f"/api/v1/tasks/{task['id']}").json()["state"] == "succeeded",
            30,
            "a task through the fleet as it was",
        )
        again = run("apply", "fleet.yaml", "--api", api, cwd=fleet_dir)
        assert again.returncode == 0, again.stderr
        assert "nothing to do" in again.stdout


def test_api_errors_are_problem_json(running_fleet: tuple[Path, str]) -> None:
    fleet_dir, api = running_fleet
    with httpx.Client(base_url=api, timeout=10) as http:
        r = http.post("/api/v1/tasks", json={"agent": "back/nope"})
        assert r.status_code == 422
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "nope" in r.json()["detail"] and "work" in r.json()["detail"]
        r = http.post("/api/v1/tasks", json={"agent": "back/work", "priority": "high"})
        assert r.status_code == 422
        assert r.json()["errors"][0]["field"] == "priority"
        r = http.get("/api/v1/tasks/999999")
        assert r.status_code == 422 and "999999" in r.json()["detail"]
        # ids no store can hold are unknown too, not a 500 from the store
        for task_id in (2**63, 2**64 + 5, 0, -1):
            for method, path in (
                ("GET", f"/api/v1/tasks/{task_id}"),
                ("POST", f"/api/v1/tasks/{task_id}/cancel"),
                ("POST", f"/api/v1/tasks/{task_id}/retry"),
                ("GET", f"/api/v1/traces?task_id={task_id}"),
            ):
                r = http.request(method, path)
                assert r.status_code == 422, (path, r.text)
                assert r.json()["detail"] == f"no task has id {task_id}"
        for path, field in (
            (f"/api/v1/tasks?after={2**63}", "query.after"),
            (f"/api/v1/changes?after={2**63}", "query.after"),
            ("/api/v1/traces?task_id=1&limit=99999999999999999999", "query.limit"),
        ):
            r = http.get(path)
            assert r.status_code == 422 and r.json()["errors"][0]["field"] == field, r.text
        # an address that is not 'cluster/agent' is told what to write, and nothing stored
        before = http.get("/api/v1/tasks?limit=1000").json()["items"]
        for address, said in (
            ("back", "'back' is a cluster: name one of its agents as 'cluster/agent'"),
            ("back/work/x", "write 'cluster/agent' with one '/'"),
            ("work", "write 'cluster/agent' with one '/'"),
            ("back/", "name one of its agents after the '/'"),
        ):
            r = http.post("/api/v1/tasks", json={"agent": address})
            assert r.status_code == 422, r.text
            problem = r.json()
            assert (problem["field"], problem["value"]) == ("agent", address)
            assert said in problem["fix"] and "e.g. back/work" in problem["fix"]
            assert "(its agents: work, gate)" in problem["fix"]
        assert http.get("/api/v1/tasks?limit=1000").json()["items"] == before
        huge = {"agent": "back/work", "payload": "x" * MAX_VALUE_BYTES}
        r = http.post("/api/v1/tasks", json=huge)
        assert r.status_code == 422 and r.json()["field"] == "payload"
        assert r.json()["value"] == f"{MAX_VALUE_BYTES + 2:,} bytes of JSON"
        # NaN and Infinity are not JSON: a stored one made the task's own page fail
        for body, field in (
            ('{"agent": "back/work", "payload": {"x": NaN}}', "payload"),
            ('{"agent": "back/work", "deadline": Infinity}', "deadline"),
        ):
            r = http.post(
                "/api/v1/tasks", content=body, headers={"content-type": "application/json"}
            )
            assert r.status_code == 422, r.text
            problem = r.json()
            assert field in (problem.get("field"), *(e["field"] for e in problem.get("errors", [])))
        assert http.get("/openapi.json").json()["info"]["title"] == "fleetops"
        assert http.get("/readyz").status_code == 200
        metrics = http.get("/metrics").text
        assert 'fleetops_workers{cluster="back"} 2.0' in metrics
    for option in ("--id", "--retry", "--cancel"):
        proc = run("tasks", option, str(2**63), "--api", api, cwd=fleet_dir)
        assert proc.returncode == 2, proc.stderr
        assert f"no task has id {2**63}" in proc.stderr and "Traceback" not in proc.stderr


def test_the_control_plane_logs_to_its_own_file_and_log_search_finds_it(
    running_fleet: tuple[Path, str],
) -> None:
    """What the control plane and its supervisor log (workers started, stopped,
    failed; pruning) goes to .fleetops/logs/control.log, beside the workers' logs."""
    fleet_dir, _ = running_fleet
    found = run("logs", "-q", "worker.started", "--json", cwd=fleet_dir)
    assert found.returncode == 0, found.stderr
    records = [json.loads(line) for line in found.stdout.splitlines()]
    started = [r for r in records if r["logger"] == "fleetops.supervisor"]
    assert {(r["event"], r["source"]) for r in started} == {("worker.started", "control")}
    assert sorted(r["cluster"] for r in started) == ["back", "back", "front"]


def test_a_dead_letter_is_retried_once_its_cause_is_fixed_and_a_task_is_cancelled(
    running_fleet: tuple[Path, str],
) -> None:
    fleet_dir, api = running_fleet
    opened = fleet_dir / "gate-open"

    def tasks(*args: str) -> subprocess.CompletedProcess[str]:
        return run("tasks", *args, "--api", api, cwd=fleet_dir)

    with httpx.Client(base_url=api, timeout=10) as http:

        def state(task_id: int) -> str:
            return str(http.get(f"/api/v1/tasks/{task_id}").json()["state"])

        def wait_for(task_id: int, wanted: str) -> None:
            deadline = time.monotonic() + 30
            while state(task_id) != wanted and time.monotonic() < deadline:
                time.sleep(0.1)
            assert state(task_id) == wanted

        dead = http.post("/api/v1/tasks", json={"agent": "back/gate", "payload": str(opened)})
        # a relay waiting for a slow child it called: cancelled, the child goes with it
        slow = http.post("/api/v1/tasks", json={"agent": "front/relay", "payload": 60})
        dead_id, slow_id = dead.json()["id"], slow.json()["id"]
        wait_for(dead_id, "dead")
        wait_for(slow_id, "running")
        deadline = time.monotonic() + 30
        listed = {"cluster": "back", "agent": "work"}
        while not (children := http.get("/api/v1/tasks", params=listed).json()["items"]):
            assert time.monotonic() < deadline, "the relay never called its child"
            time.sleep(0.1)
        [child] = [t["id"] for t in children]
        wait_for(child, "running")

        refused = tasks("--retry", str(slow_id))  # not a dead letter: changes nothing
        assert refused.returncode == 2 and "is running, not dead" in refused.stderr
        assert json.loads(refused.stdout) == [] and state(slow_id) == "running"

        def back_inflight() -> int:
            live = {"cluster": "back", "live": True}
            return sum(w["inflight"] for w in http.get("/api/v1/workers", params=live).json())

        deadline = time.monotonic() + 30
        while back_inflight() == 0:  # the child's worker beats that it runs it
            assert time.monotonic() < deadline, "no back worker ever reported the child"
            time.sleep(0.2)

        opened.write_text("")  # the cause, fixed
        done = tasks("--retry", str(dead_id), "--cancel", str(slow_id))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == [
            {"id": dead_id, "state": "queued"},
            {"id": slow_id, "state": "cancelled", "descendants_cancelled": [child]},
        ]
        wait_for(dead_id, "succeeded")
        record = http.get(f"/api/v1/tasks/{dead_id}").json()
        assert [a["outcome"] for a in record["attempt_history"]] == ["failed", "succeeded"]
        assert state(slow_id) == "cancelled"
        called = http.get(f"/api/v1/tasks/{child}").json()
        assert called["state"] == "cancelled"
        assert f"cancelled with task {slow_id}" in called["dead_reason"]
        assert [a["outcome"] for a in called["attempt_history"]] == ["cancelled"]
        # its worker stopped the handler (fenced off, it would have slept a minute):
        # the back cluster's workers report nothing in flight at their next beats
        deadline = time.monotonic() + 30
        while back_inflight():
            assert time.monotonic() < deadline, "the cancelled child still runs"
            time.sleep(0.2)

        again = tasks("--cancel", str(dead_id))
        assert again.returncode == 2 and "is succeeded, so it cannot be cancelled" in again.stderr


def test_every_dead_letter_of_an_agent_is_retried_at_once_once_its_cause_is_fixed(
    running_fleet: tuple[Path, str],
) -> None:
    """A cause that dead-lettered many tasks (the gate closed) is fixed: one command
    queues them all again, and only them: a dead letter of another agent stays."""
    fleet_dir, api = running_fleet
    opened = fleet_dir / "gate-open"
    with httpx.Client(base_url=api, timeout=10) as http:
        gated = [
            http.post("/api/v1/tasks", json={"agent": "back/gate", "payload": str(opened)}).json()[
                "id"
            ]
            for _ in range(4)
        ]
        other = http.post("/api/v1/tasks", json={"agent": "back/work", "payload": "x"})
        other_id = other.json()["id"]  # 'x' is no number of seconds: dead at once

        def states() -> list[str]:
            return [http.get(f"/api/v1/tasks/{i}").json()["state"] for i in [*gated, other_id]]

        _wait(lambda: states() == ["dead"] * 5, 30, "five dead letters")

        for refused in (
            ["--retry-dead", "--cancel", str(other_id)],
            ["--retry-dead", "--limit", "1"],  # would retry them all, not one
            ["--retry-dead", "--cluster", "nope"],
            ["--retry-dead", "--cluster", "back", "--agent", "nope"],
        ):
            said = run("tasks", *refused, "--api", api, cwd=fleet_dir)
            assert said.returncode == 2, (refused, said.stderr)
            assert ("nope" if "nope" in refused else refused[-2]) in said.stderr
        assert states() == ["dead"] * 5  # refused: nothing changed

        opened.write_text("")  # the cause, fixed
        # through the API a page at a time: two, then where the next page starts
        page = http.post("/api/v1/tasks/retry-dead", params={"agent": "gate", "limit": 2}).json()
        assert page == {"tasks": gated[:2], "next_after": gated[1]}
        # the rest through the CLI, which follows the pages to the end
        done = run("tasks", "--retry-dead", "--agent", "gate", "--api", api, cwd=fleet_dir)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"retried": 2, "tasks": gated[2:]}
        _wait(lambda: states() == ["succeeded"] * 4 + ["dead"], 30, "the gated ones through")
        again = run("tasks", "--retry-dead", "--agent", "gate", "--api", api, cwd=fleet_dir)
        assert json.loads(again.stdout) == {"retried": 0, "tasks": []}


def test_a_cluster_s_queue_is_emptied_of_tasks_scheduled_for_later(
    running_fleet: tuple[Path, str],
) -> None:
    """Tasks submitted with --delay wait in the queue; --cancel-queued takes every
    queued one of the cluster out (and only them), a task that ran stays done."""
    fleet_dir, api = running_fleet

    def fleetops(*args: str) -> subprocess.CompletedProcess[str]:
        return run(*args, "--api", api, cwd=fleet_dir)

    ran = fleetops("submit", "back/work", "0.01", "--wait")
    assert ran.returncode == 0, ran.stderr
    ran_id = json.loads(ran.stdout)["id"]
    busy = json.loads(fleetops("submit", "back/work", "30").stdout)["id"]  # runs on
    later = []
    for n in range(3):
        sent = fleetops("submit", "back/work", str(n), "--delay", "1h")
        assert sent.returncode == 0, sent.stderr
        later.append(json.loads(sent.stdout)["id"])
    bad = fleetops("submit", "back/work", "--delay", "soon")
    assert bad.returncode == 2 and "--delay" in bad.stderr and "30s" in bad.stderr

    with httpx.Client(base_url=api, timeout=10) as http:

        def state(task_id: int) -> str:
            return str(http.get(f"/api/v1/tasks/{task_id}").json()["state"])

        time.sleep(0.5)  # time enough to run them, were they due
        assert [state(i) for i in later] == ["queued"] * 3
        assert state(busy) == "running"
        scheduled = http.get(f"/api/v1/tasks/{later[0]}").json()["run_after"]
        assert 3500 < scheduled - time.time() <= 3600
        listed = fleetops("tasks", "--state", "queued", "--cluster", "back")
        assert listed.returncode == 0 and listed.stdout.count("queued, due ") == 3, listed.stdout
        # a start after the deadline, or two starts, are refused and store nothing
        for body, field in (
            ({"run_after": time.time() + 60, "deadline": time.time() + 30}, "run_after"),
            ({"run_after": time.time() + 60, "delay": 60}, "delay"),
        ):
            r = http.post("/api/v1/tasks", json={"agent": "back/work", **body})
            assert r.status_code == 422 and field in r.text, r.text

        for refused, said in (
            ([], "--cluster"),
            (["--cluster", "nope"], "nope"),
            (["--cluster", "back", "--limit", "1"], "--limit"),
        ):
            answer = fleetops("tasks", "--cancel-queued", *refused)
            assert answer.returncode == 2 and said in answer.stderr, (refused, answer.stderr)
        assert [state(i) for i in later] == ["queued"] * 3
        emptied = fleetops("tasks", "--cancel-queued", "--cluster", "back")
        assert emptied.returncode == 0, emptied.stderr
        assert json.loads(emptied.stdout) == {
            "cancelled": 3,
            "tasks": later,
            "descendants_cancelled": [],
        }
        assert [state(i) for i in [ran_id, busy, *later]] == [
            "succeeded",
            "running",  # running tasks finish
            *["cancelled"] * 3,
        ]
        assert fleetops("tasks", "--cancel", str(busy)).returncode == 0

    # what happened, through 'fleetops events': the queue emptied, the workers started
    shown = fleetops("events", "--kind", "tasks.cancelled", "--json")
    assert shown.returncode == 0, shown.stderr
    [emptying] = json.loads(shown.stdout)
    assert (emptying["cluster"], emptying["data"]["tasks"]) == ("back", later)
    started = json.loads(fleetops("events", "--kind", "worker.started", "--json").stdout)
    assert sorted(e["cluster"] for e in started) == ["back", "back", "front"]
    back = json.loads(fleetops("events", "--cluster", "back", "--limit", "1", "--json").stdout)
    # the newest of back's: the running task cancelled last
    assert [(e["kind"], e["task_id"]) for e in back] == [("task.cancelled", busy)]
    table = fleetops("events", "--cluster", "back")
    assert table.returncode == 0 and "tasks.cancelled" in table.stdout
    # oldest first from an event on, a page at a time
    with httpx.Client(base_url=api, timeout=10) as http:
        first = http.get("/api/v1/events", params={"after": 0, "limit": 2}).json()
        assert len(first["items"]) == 2 and first["next_after"] == first["items"][1]["id"]
        rest = http.get("/api/v1/events", params={"after": first["next_after"]}).json()
        assert rest["next_after"] is None  # fewer than a page: the end
        ids = [e["id"] for e in first["items"] + rest["items"]]
        assert ids == sorted(ids) and emptying["id"] in ids


def test_a_task_submitted_with_a_deadline_or_a_number_of_tries_of_its_own(
    running_fleet: tuple[Path, str],
) -> None:
    """--deadline: a task not finished within it is dead-lettered, its handler stopped;
    --max-attempts: tried that often, whatever the agent's retry policy says (here 1)."""
    fleet_dir, api = running_fleet

    def fleetops(*args: str) -> subprocess.CompletedProcess[str]:
        return run(*args, "--api", api, cwd=fleet_dir)

    began = time.monotonic()
    late = fleetops("submit", "back/work", "30", "--deadline", "1s", "--wait")
    assert late.returncode == 1, late.stderr
    task = json.loads(late.stdout)
    assert task["state"] == "dead" and "deadline" in task["dead_reason"], task
    assert time.monotonic() - began < 20  # stopped at its deadline, not after its 30 s
    assert 0 < task["deadline"] - task["created_at"] <= 1.0

    closed = str(fleet_dir / "never-opened")
    tried = fleetops("submit", "back/gate", json.dumps(closed), "--max-attempts", "3", "--wait")
    assert tried.returncode == 1, tried.stderr
    task = json.loads(tried.stdout)
    assert task["state"] == "dead" and task["attempts"] == 3, task
    history = json.loads(fleetops("tasks", "--id", str(task["id"]), "--json").stdout)
    assert [a["outcome"] for a in history["attempt_history"]] == ["failed"] * 3

    # bad input names the option and stores nothing
    before = json.loads(fleetops("tasks", "--json", "--limit", "1000").stdout)
    for args, said in (
        (["--deadline", "soon"], "--deadline"),
        (["--deadline", "0s"], "--deadline"),
        (["--max-attempts", "0"], "--max-attempts"),
        (["--delay", "10m", "--deadline", "10m"], "--deadline '10m'"),  # due at its deadline
    ):
        bad = fleetops("submit", "back/work", *args)
        assert bad.returncode == 2 and said in bad.stderr, (args, bad.stderr)
    at = time.time() + 60
    with httpx.Client(base_url=api, timeout=10) as http:
        for body, field in (
            ({"deadline": at, "deadline_in": 60}, "deadline_in"),
            ({"delay": 60, "deadline_in": 60}, "delay (60 s) is not shorter than deadline_in"),
            ({"deadline_in": True}, "deadline_in"),  # a number, not true as 1 s
            ({"delay": "60"}, "delay"),
            ({"run_after": at, "deadline": at}, "run_after"),  # due at its deadline
        ):
            r = http.post("/api/v1/tasks", json={"agent": "back/work", **body})
            assert r.status_code == 422 and field in r.text, (body, r.text)
    assert json.loads(fleetops("tasks", "--json", "--limit", "1000").stdout) == before


def test_the_support_desk_example_deploys_with_a_full_readiness_score(tmp_path: Path) -> None:
    import shutil

    example = Path(__file__).resolve().parents[2] / "examples" / "support-desk"
    shutil.copytree(
        example,
        tmp_path / "support-desk",
        ignore=shutil.ignore_patterns(".fleetops", "__pycache__"),
    )
    proc = run(
        "up", "fleet.yaml", "--smoke", "--json", "--api-port", "0", cwd=tmp_path / "support-desk"
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["deployment_successful"] is True
    assert len(report["completed_phases"]) == 7
    assert report["readiness_score"] == 100, report["readiness_checks"]


def test_rolling_restart_under_load_loses_nothing(running_fleet: tuple[Path, str]) -> None:
    fleet_dir, api = running_fleet
    with httpx.Client(base_url=api, timeout=60) as http:
        submitted = [
            http.post("/api/v1/tasks", json={"agent": "back/work", "payload": 0.3}).json()["id"]
            for _ in range(60)
        ]
        before = {
            w["id"]
            for w in http.get("/api/v1/workers", params={"cluster": "back"}).json()
            if w["state"] == "running"
        }
        proc = run(
            "apply", "fleet.yaml", "--rollout", "back", "--reason", "new version", cwd=fleet_dir
        )
        assert proc.returncode == 0, proc.stderr
        assert "rolled out cluster back" in proc.stdout
        after = {
            w["id"]
            for w in http.get("/api/v1/workers", params={"cluster": "back"}).json()
            if w["state"] == "running"
        }
        assert len(after) == 2 and not (before & after)  # every worker was replaced
        live = http.get("/api/v1/workers", params={"cluster": "back", "live": "true"}).json()
        assert {w["id"] for w in live} == after  # the replaced ones are stopped
        known = http.get("/api/v1/workers", params={"cluster": "back"}).json()
        assert before <= {w["id"] for w in known if w["state"] == "stopped"}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            states = {http.get(f"/api/v1/tasks/{i}").json()["state"] for i in submitted}
            if states == {"succeeded"}:
                break
            time.sleep(0.5)
        assert states == {"succeeded"}


def _wait(predicate: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"waited {within:.0f} s for {what}")
        time.sleep(0.1)


KILLED_SPEC = """\
fleet: {name: killed}
api: {port: 0}
clusters:
  back:
    agents: [{name: effectful, entrypoint: "fleetops.chaos._agents:effectful"}]
    replicas: 2
"""


def test_kill_9_of_the_control_plane_loses_nothing_and_the_next_one_resumes(
    tmp_path: Path,
) -> None:
    """Invariant 3: `fleetops up` killed with SIGKILL under load. Its workers notice
    and stop (none is left running tasks for no one); a new `fleetops up` takes the
    fleet over from the store, past the lock the dead one left, and every task
    accepted finishes with its side effect done exactly once."""
    ledger = tmp_path / "ledger.db"
    Ledger(ledger).close()
    (tmp_path / "fleet.yaml").write_text(KILLED_SPEC)
    env = dict(os.environ, COLUMNS="200", FLEETOPS_CHAOS_LEDGER=str(ledger))
    url = f"sqlite:///{tmp_path / '.fleetops' / 'fleet.db'}"

    def up(log: str) -> subprocess.Popen[bytes]:
        with (tmp_path / log).open("wb") as out:
            return subprocess.Popen(
                [*FLEETOPS, "up", "fleet.yaml", "--no-live"],
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def count(state: str) -> int:  # of the test's tasks (each `up` runs smoke tasks too)
        store = open_store(url)
        try:
            counts = store.count_tasks().items()
            return sum(n for (_, agent, s), n in counts if agent == "effectful" and s == state)
        finally:
            store.close()

    first = up("first.log")
    try:
        _wait(lambda: len(_fleetops_workers_running(tmp_path)) == 2, 60, "2 workers up")
        store = open_store(url)
        try:
            payload = json.dumps({"work_s": 0.5})  # 2.5 s of work for 200 slots
            tasks = [NewTask("back", "effectful", payload)] * 1000
            ids = [s.id for s in store.submit(tasks, time.time())]
        finally:
            store.close()
        _wait(lambda: count("succeeded") >= 100, 60, "the fleet under load")
        first.kill()
        first.wait(10)
        _wait(lambda: _fleetops_processes(tmp_path) == {}, 10, "the workers gone with it")
        assert count("succeeded") < len(ids), "killed before the work was done"
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)

    second = up("second.log")
    try:
        _wait(lambda: count("succeeded") >= len(ids), 120, "every task finished")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(60)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-2000:]
    store = open_store(url)
    try:
        records = store.get_tasks(ids)
    finally:
        store.close()
    assert {r.state for r in records} == {"succeeded"}
    book = Ledger(ledger)
    try:
        report, applied = book.report(), book.applied_task_ids()
    finally:
        book.close()
    assert report.duplicate_effects == 0
    assert {r.id for r in records} <= applied, "every task's effect happened"


@pytest.mark.parametrize(
    "command",
    [
        ["up", "fleet.yaml", "--smoke"],
        ["load", *"fleet.yaml --workload x:y --target back/work".split()],
    ],
)
@pytest.mark.parametrize("port", ["-5", "70000"])
def test_an_api_port_out_of_range_is_refused_before_anything_is_created(
    fleet_dir: Path, command: list[str], port: str
) -> None:
    proc = run(*command, "--api-port", port, cwd=fleet_dir)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert "--api-port" in proc.stderr and f"{port} is not a port" in proc.stderr
    assert "use 1 to 65535, or 0 for any free port" in proc.stderr
    assert not (fleet_dir / ".fleetops").exists()


def test_a_store_under_a_regular_file_is_refused_before_anything_is_created(
    fleet_dir: Path,
) -> None:
    """It was a traceback (FileExistsError, then NotADirectoryError from the
    cleanup), exit status 1, and the state directory's logs left behind."""
    (fleet_dir / "plain").write_text("x")
    (fleet_dir / "fleet.yaml").write_text(spec_text(store="sqlite:///plain/x.db"))
    proc = run("up", "fleet.yaml", "--smoke", "--json", cwd=fleet_dir)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    said = " ".join(proc.stderr.split())
    assert "store: invalid value 'sqlite:///plain/x.db'" in said
    assert "is a file, not a directory" in said and "sqlite:///.fleetops/fleet.db" in said
    assert sorted(p.name for p in fleet_dir.iterdir()) == ["fleet.yaml", "fleet_agents.py", "plain"]


@pytest.mark.parametrize(
    ("options", "field", "value", "fix"),
    [
        (["--workload", "nosuch:fn"], "--workload", "'nosuch:fn'", "does not import"),
        (["--workload", "notacolon"], "--workload", "'notacolon'", "'package.module:function'"),
        (
            ["--workload", "fleet_workload:broken"],
            "--workload",
            "'fleet_workload:broken'",
            "ZeroDivisionError",
        ),
        (["--target", "nosuch/x"], "--target", "'nosuch/x'", "front, back"),
        (["--target", "back/nosuch"], "--target", "'back/nosuch'", "runs work, gate"),
        (["--rate", "inf"], "--rate", "inf", "a finite number"),
        (["--duration", "99999999h"], "--duration", "'99999999h'", "shorten --duration"),
        (["--duration", "0s"], "--duration", "'0s'", "above zero"),
    ],
)
def test_load_checks_its_options_before_it_deploys_anything(
    fleet_dir: Path, options: list[str], field: str, value: str, fix: str
) -> None:
    """load's own options were checked after a full deploy, which left the fleet's
    state behind (or a traceback, or billions of payloads being made)."""
    (fleet_dir / "fleet_workload.py").write_text(
        "def generate(count, seed):\n    return [0.01] * count\n\n"
        "def broken(count, seed):\n    return 1 / 0\n"
    )
    given = {"--workload": "fleet_workload:generate", "--target": "back/work", "--duration": "2s"}
    given.update(zip(options[::2], options[1::2], strict=True))
    args = [a for pair in given.items() for a in pair]
    proc = run("load", "fleet.yaml", *args, "--api-port", "0", cwd=fleet_dir)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert f"{field}: invalid value {value}" in proc.stderr, proc.stderr
    assert fix in proc.stderr
    assert not (fleet_dir / ".fleetops").exists()


@pytest.mark.parametrize("payload", ["NaN", "1e999", '{"a": Infinity}', "[-Infinity]"])
def test_submit_refuses_a_payload_with_nan_or_infinity(tmp_path: Path, payload: str) -> None:
    """Python's json reads them, httpx refuses to send them: it was a traceback."""
    proc = run("submit", "back/work", payload, "--api", "http://127.0.0.1:9", cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    assert f"payload: {payload!r} is not JSON (NaN/Infinity)" in proc.stderr
    assert "send a finite number, a string or null" in proc.stderr


def test_down_and_logs_refuse_a_bad_file_or_timeout_and_take_a_directory_as_the_fleets(
    running_fleet: tuple[Path, str],
) -> None:
    """down stopped the fleet and then failed for --timeout -1 or a FILE that does not
    exist; a directory meant its parent's fleet."""
    fleet_dir, api = running_fleet
    for args, needle in (
        (["down", "nosuch.yaml"], "'nosuch.yaml' does not exist"),
        (["down", "fleet.yaml", "--timeout", "-1"], "-1 is not a wait"),
        (["down", "--timeout", "0"], "0 is not a wait"),
        (["logs", "nosuch.yaml"], "'nosuch.yaml' does not exist"),
    ):
        proc = run(*args, cwd=fleet_dir)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert needle in proc.stderr, (args, proc.stderr)
        assert httpx.get(f"{api}/readyz", timeout=5).status_code == 200, args
    found = run("logs", fleet_dir.name, "-q", "worker.started", "--json", cwd=fleet_dir.parent)
    assert found.returncode == 0, found.stderr
    records = [json.loads(line) for line in found.stdout.splitlines()]
    assert sum(r["logger"] == "fleetops.supervisor" for r in records) == 3
    # the fleet is this test's child: a zombie until the fixture reaps it, so down may
    # not see it gone; that it found the fleet and asked it to stop is what counts
    stopping = run("down", fleet_dir.name, "--timeout", "3", cwd=fleet_dir.parent)
    assert "asked the control plane" in stopping.stderr, stopping.stderr


def test_the_smoke_test_skips_a_cluster_of_no_replicas_and_the_routes_to_it(
    fleet_dir: Path,
) -> None:
    """replicas: 0 is valid: the smoke task sent to it waited out the smoke timeout,
    failed the deploy and stayed queued."""
    (fleet_dir / "fleet.yaml").write_text(spec_text(replicas=0))
    began = time.monotonic()
    proc = run("up", "fleet.yaml", "--smoke", "--json", cwd=fleet_dir)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert time.monotonic() - began < 40
    report = json.loads(proc.stdout)
    detail = report["phases"][-1]["detail"]
    assert "through 1 cluster(s) and 0 route(s)" in detail
    assert "skipped back: 0 replicas" in detail
    store = open_store(f"sqlite:///{fleet_dir / '.fleetops' / 'fleet.db'}")
    try:
        states = {state for (_, _, state) in store.count_tasks()}
    finally:
        store.close()
    assert states == {"succeeded"}


def test_a_failed_first_deploy_takes_back_what_it_made_and_a_later_one_keeps_the_state(
    fleet_dir: Path,
) -> None:
    """A failed deploy left its store (with a deployment row), applied spec, routes
    and control log behind, and found a bad entrypoint or API address only after
    making the store. Now what it made goes; what was there before stays."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        (fleet_dir / "fleet.yaml").write_text(spec_text(port=taken.getsockname()[1]))
        proc = run("up", "fleet.yaml", "--smoke", "--json", cwd=fleet_dir)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)  # the machine's, not the spec's
        report = json.loads(proc.stdout)
        assert (report["failed_phase"], report["completed_phases"]) == (
            "infrastructure_provisioning",
            [],
        )
        assert "cannot listen" in report["error"]
        assert sorted(p.name for p in fleet_dir.iterdir()) == [
            "fleet.yaml",
            "fleet_agents.py",
        ], proc.stdout
    # a fleet that ran once: its store and state outlive a deploy that fails later
    (fleet_dir / "fleet.yaml").write_text(spec_text())
    assert run("up", "fleet.yaml", "--smoke", cwd=fleet_dir).returncode == 0
    state = fleet_dir / ".fleetops"
    before = sorted(p.relative_to(state) for p in state.rglob("*"))
    (fleet_dir / "bad.yaml").write_text(spec_text(entrypoint="nosuch:fn"))
    failed = run("up", "bad.yaml", "--smoke", cwd=fleet_dir)
    assert failed.returncode == 2, failed.stderr
    assert (state / "applied-spec.yaml").read_text() == spec_text()
    assert sorted(p.relative_to(state) for p in state.rglob("*")) == before
    store = open_store(f"sqlite:///{state / 'fleet.db'}")
    try:
        assert store.count_tasks()  # the first run's smoke tasks are there still
    finally:
        store.close()


def test_a_second_ctrl_c_stops_at_once_and_queues_what_the_workers_held(fleet_dir: Path) -> None:
    """The first Ctrl-C drains; a handler that ignores cancellation keeps its worker
    draining for its whole grace (10 s, then 5 more before it is killed). The second
    Ctrl-C kills it now, and its task is queued again for the next start. Before, the
    second did nothing, and the task stayed 'running', leased to a dead worker."""
    (fleet_dir / "fleet.yaml").write_text(spec_text(replicas=1, entrypoint="fleet_agents:deaf"))
    proc, api = _up(fleet_dir)
    try:
        task_id = httpx.post(f"{api}/api/v1/tasks", json={"agent": "back/work"}).json()["id"]
        _wait(
            lambda: httpx.get(f"{api}/api/v1/tasks/{task_id}").json()["state"] == "running",
            within=30,
            what="the deaf task running",
        )
        proc.send_signal(signal.SIGINT)
        time.sleep(1.0)  # draining now, and the deaf handler will not let it end
        assert proc.poll() is None
        hurried_at = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        took = time.monotonic() - hurried_at
        assert proc.returncode == 0, stderr
        assert took < 10, f"stopped {took:.1f} s after the second Ctrl-C"  # the grace alone is 10 s
        control_log = (fleet_dir / ".fleetops" / "logs" / "control.log").read_text()
        assert '"event":"worker.killed_at_shutdown","cluster":"back"' in control_log
        assert _fleetops_processes(fleet_dir) == {}
    finally:
        if proc.poll() is None:
            proc.kill()
    store = open_store(f"sqlite:///{fleet_dir / '.fleetops' / 'fleet.db'}")
    try:
        record = store.get_task(task_id)
        assert record is not None and (record.state, record.lease_owner) == ("queued", None)
    finally:
        store.close()


def test_a_second_fleet_on_the_same_store_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    """Two fleet directories whose specs name one store: the second `up` is refused in
    its first phase, naming the first control plane, and leaves no state behind; the
    first keeps running, and once it is down the second deploys."""
    shared = tmp_path / "shared.db"
    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    for directory in (first_dir, second_dir):
        directory.mkdir()
        (directory / "fleet_agents.py").write_text(AGENTS)
        (directory / "fleet.yaml").write_text(spec_text(store=f"sqlite:///{shared}"))
    first, api = _up(first_dir)
    try:
        refused = run("up", "fleet.yaml", "--json", cwd=second_dir)
        assert refused.returncode == 1
        report = json.loads(refused.stdout)
        assert report["failed_phase"] == "infrastructure_provisioning"
        assert "another control plane runs a fleet on the store" in report["error"]
        assert f"pid {first.pid} " in report["error"]
        assert str(first_dir / "fleet.yaml") in report["error"]
        assert not (second_dir / ".fleetops").exists()
        assert httpx.get(f"{api}/healthz", timeout=10).status_code == 200
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert first.returncode == 0
    second, _ = _up(second_dir)
    second.send_signal(signal.SIGTERM)
    second.communicate(timeout=60)
    assert second.returncode == 0
