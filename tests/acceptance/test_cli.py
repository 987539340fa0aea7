"""The CLI as a user runs it: a real `fleetops` process, JSON on stdout, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

FLEETOPS = [sys.executable, "-m", "fleetops.cli"]


def run(*args: str, cwd: Path | None = None, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", **env_vars)
    return subprocess.run(
        [*FLEETOPS, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def test_chaos_kill_workers_json(tmp_path: Path) -> None:
    proc = run(
        "chaos",
        "kill-workers",
        "--tasks",
        "200",
        "--workers",
        "2",
        "--kill-every",
        "400ms",
        "--work",
        "200ms",
        "--store",
        "sqlite",  # as in 'bench queue': a temporary file, not one named so here
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["store"] == "sqlite (temporary file)"
    assert list(tmp_path.iterdir()) == []
    for key in (
        "submitted",
        "succeeded",
        "dead_lettered",
        "lost",
        "duplicate_effects",
        "kills",
        "detection_p99_s",
        "recovery_p99_s",
    ):
        assert key in result
    assert result["submitted"] == 200
    assert result["lost"] == 0
    assert result["duplicate_effects"] == 0
    assert result["kills"] >= 1


@pytest.mark.postgres
def test_chaos_cut_store_json(tmp_path: Path, postgres_url: str) -> None:
    proc = run(
        "chaos",
        "cut-store",
        "--store",
        postgres_url,
        "--tasks",
        "150",
        "--cut-every",
        "700ms",
        "--cut-for",
        "300ms",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["submitted"] == result["succeeded"] == 150
    assert result["cuts"] >= 1 and result["connections_cut"] >= 1
    assert result["lost"] == result["duplicate_effects"] == result["worker_failures"] == 0


def test_bench_queue_json(tmp_path: Path) -> None:
    proc = run(
        "bench",
        "queue",
        "--tasks",
        "400",
        "--inflight",
        "40",
        "--work",
        "noop",
        "--durability",
        "normal",
        "--overhead-seconds",
        "0.5",  # its tasks a second for that long (5 s by default)
        "--rounds",
        "2",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) >= {
        "throughput_tps",
        "overhead_p50_ms",
        "overhead_p99_ms",
        "durability",
        "tasks",
    }
    # two rounds, each on a store of its own: the medians, and how far apart they were
    assert result["rounds"] == 2
    low, high = result["ranges"]["throughput_tps"]
    assert 0 < low <= result["throughput_tps"] <= high
    assert result["tasks"] == 400
    assert result["durability"] == "normal"
    assert result["throughput_tps"] > 0
    assert result["event_loop"] == "uvloop"  # 'auto' where uvloop is installed
    assert result["worker_failures"] == 0
    assert result["pacing"] == "closed"  # each submit waited for the last one's answer
    assert result["overhead_submits"] > 0
    # each submit's answer took some time, the slowest no less than the median
    assert 0 < result["submit_ack_p50_ms"] <= result["submit_ack_p99_ms"]
    # what each phase cost in CPU, read from /proc: the workers did the tasks' work,
    # the bench's own process submitted them; both took some time for every task
    for phase in ("throughput", "overhead"):
        assert result[f"worker_cpu_us_per_task_{phase}_phase"] > 0
        assert result[f"submitter_cpu_us_per_task_{phase}_phase"] > 0
    assert 0 < result["cpu_busy_share_overhead_phase"] <= 1.05  # a tick of rounding
    # at durability normal no write waits for an fsync
    assert result["submitter_fsyncs"] == {"kernel": 0, "loop": 0, "thread": 0}


def test_bench_queue_measures_overhead_at_a_chosen_rate(tmp_path: Path) -> None:
    proc = run(
        "bench",
        "queue",
        "--tasks",
        "300",
        "--inflight",
        "40",
        "--work",
        "sleep:5ms",
        "--overhead-rate",
        "200",
        "--overhead-seconds",
        "1",
        "--open-loop",
        "--json",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["overhead_rate_tps"] == 200
    assert result["overhead_tasks"] == 200  # one second at 200 tasks/s
    # on a fixed schedule: a submit in each millisecond a task came due in
    assert result["pacing"] == "open"
    assert 0 < result["overhead_submits"] <= 200
    assert 0 < result["submit_ack_p50_ms"] <= result["submit_ack_p99_ms"]
    # the parts add up: submit -> claimed, claimed -> committed (the work taken off)
    assert result["queue_wait_p50_ms"] >= 0 and result["run_overhead_p50_ms"] >= 0
    # the agent's own sleep can only be late, never early
    assert result["sleep_late_p50_ms"] >= 0
    assert result["sleep_late_p99_ms"] >= result["sleep_late_p50_ms"]
    # a handler begins after its claim, and its completion is stamped after it returns
    assert 0 <= result["handler_start_p50_ms"] <= result["handler_start_p99_ms"]
    assert 0 <= result["completion_p50_ms"] <= result["completion_p99_ms"]
    # at full (the default) every submit was synced before it was answered, by the
    # submitter's event loop (or its thread, were the disk slow), not by the kernel:
    # at least one fsync for the first phase's submit and one for the second's
    fsyncs = result["submitter_fsyncs"]
    assert result["durability"] == "full"
    assert fsyncs["kernel"] == 0
    assert fsyncs["loop"] + fsyncs["thread"] >= 2


def test_a_bench_whose_workers_keep_failing_stops_with_a_clear_error(tmp_path: Path) -> None:
    # every worker process dies as it starts, as with a broken install
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys\n"
        "if sys.orig_argv[1:3] == ['-m', 'fleetops.runtime']:\n"
        "    raise SystemExit('this worker fails on purpose')\n"
    )
    proc = run("bench", "queue", "--tasks", "200", "--json", cwd=tmp_path, PYTHONPATH=str(site))
    assert proc.returncode == 1, proc.stderr
    assert "workers keep failing" in proc.stderr and "restarts" in proc.stderr
    assert "fails on purpose" in proc.stderr  # why, from the last failed worker's log
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    # their logs are kept, and say why
    kept = [p for p in tmp_path.glob("fleetops-bench-*/*") if p.is_file()]
    assert kept, proc.stderr
    assert any("fails on purpose" in p.read_text() for p in kept)


def test_bad_arguments_name_the_field_the_value_and_the_fix(tmp_path: Path) -> None:
    proc = run("bench", "queue", "--work", "sleep:forever", "--json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--work" in proc.stderr and "sleep:forever" in proc.stderr
    assert "sleep:10ms" in proc.stderr  # the fix
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""

    proc = run("bench", "queue", "--durability", "fast", "--json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--durability" in proc.stderr and "'fast'" in proc.stderr and "normal" in proc.stderr
    assert proc.stdout == ""

    for interval in ("often", "0s"):  # not a duration; no interval at all
        proc = run("chaos", "kill-workers", "--kill-every", interval, cwd=tmp_path)
        assert proc.returncode == 2
        assert "--kill-every" in proc.stderr and f"'{interval}'" in proc.stderr
        assert "Traceback" not in proc.stderr

    for took in ("-1s", "slow"):
        proc = run("chaos", "kill-workers", "--import-time", took, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "--import-time" in proc.stderr and f"'{took}'" in proc.stderr
        assert "500ms" in proc.stderr and "Traceback" not in proc.stderr

    # what the user typed is shown as typed: square brackets are not terminal markup
    for args, shown in (
        (("bench", "queue", "--work", "sleep:[/x]", "--json"), "'sleep:[/x]'"),
        (("validate", "fleet[/x].yaml"), "fleet[/x].yaml: cannot read the file"),
    ):
        proc = run(*args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert shown in proc.stderr and "Traceback" not in proc.stderr


def test_bad_store_url_is_a_clear_error(tmp_path: Path) -> None:
    proc = run("bench", "queue", "--store", "mysql://nope", "--json", cwd=tmp_path)
    assert proc.returncode == 2
    assert "--store" in proc.stderr and "postgresql://" in proc.stderr

    # a SQLite store is a file: there is no network to cut
    proc = run("chaos", "cut-store", "--store", "sqlite:///fleet.db", "--json", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "--store" in proc.stderr and "'sqlite:///fleet.db'" in proc.stderr
    assert "postgresql://" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not list(tmp_path.iterdir())


def test_a_postgres_url_libpq_cannot_read_is_a_usage_error(tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    url = "postgresql://postgres:s3cret@127.0.0.1:5432/test?bogus=1"
    for args in (
        ("bench", "queue", "--tasks", "5", "--store", url, "--json"),
        ("chaos", "cut-store", "--tasks", "5", "--store", url, "--json"),
        ("chaos", "cut-store", "--store", "postgresql://postgres@[::1/test"),
    ):
        proc = run(*args, cwd=tmp_path, TMPDIR=str(temp))
        assert proc.returncode == 2, proc.stderr
        assert "--store" in proc.stderr and "postgresql://postgres@" in proc.stderr
        assert "postgresql://user:password@host:5432/database" in proc.stderr  # the fix
        assert "s3cret" not in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stdout == "" and not list(temp.iterdir())


def test_an_api_url_that_is_not_one_is_a_usage_error(tmp_path: Path) -> None:
    commands = [("status",), ("tasks", "--id", "1"), ("submit", "a/b", "{}")] * 2
    apis = ("http://[::1", "foo", "127.0.0.1:8470", "ftp://fleet", "http://")
    for api, args in zip(apis, commands, strict=False):
        proc = run(*args, "--api", api, cwd=tmp_path)
        assert proc.returncode == 2, (args, api, proc.stderr)
        assert f"--api: invalid value '{api}'" in proc.stderr
        assert "http://127.0.0.1:8470" in proc.stderr  # the fix
        assert "did not answer" not in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_a_state_directory_that_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    state = tmp_path / ".fleetops"
    state.write_text("not a directory")
    for args in (("status",), ("down",), ("tasks",)):
        proc = run(*args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert f"{state} is a file, not a directory" in proc.stderr.replace("\n", " ")
        assert "move or remove that file" in proc.stderr.replace("\n", " ")
        assert "Traceback" not in proc.stderr
    assert state.read_text() == "not a directory"


def test_export_refuses_what_kubernetes_would_and_an_empty_file_name(tmp_path: Path) -> None:
    for args, shown, fix in (
        (("--label", "a b=c"), "--label: invalid value 'a b=c'", "not a label name"),
        (("--label", "k=" + "v" * 64), "--label: invalid value 'k=", "64 characters"),
        (("--namespace", "Bad_NS!"), "--namespace: invalid value 'Bad_NS!'", "lowercase"),
        (("--namespace", ""), "--namespace: invalid value ''", "leave it out"),
    ):
        proc = run("export", "k8s-monitoring", "out.yaml", *args, cwd=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        message = proc.stderr.replace("\n", " ")
        assert shown in message and fix in message and "Traceback" not in message
    for command in ("prometheus-rules", "grafana", "k8s-monitoring"):
        proc = run("export", command, "", cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert "cannot write '': name a file, or '-' for standard output" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_bench_refuses_an_infinite_rate_or_length_before_it_starts(tmp_path: Path) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    for option, fix in (("--overhead-rate", "e.g. 500"), ("--overhead-seconds", "e.g. 5")):
        proc = run("bench", "queue", "--tasks", "5", option, "inf", cwd=tmp_path, TMPDIR=str(temp))
        assert proc.returncode == 2, proc.stderr
        assert f"{option}: invalid value inf" in proc.stderr and fix in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not list(temp.iterdir()) and list(tmp_path.iterdir()) == [temp]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue  # it ended while we looked
    return found


@pytest.mark.parametrize(
    "args",
    [
        ["bench", "queue", "--tasks", "200000", "--work", "noop", "--json"],
        ["chaos", "kill-workers", "--tasks", "20000", "--kill-every", "1s", "--json"],
    ],
    ids=["bench", "chaos"],
)
def test_a_bench_or_chaos_run_stopped_by_sigterm_cleans_up_as_ctrl_c_does(
    tmp_path: Path, args: list[str]
) -> None:
    """A run's temporary directory (its store, its workers' logs) goes with it, and so
    do its workers; SIGTERM killed it at once and left them behind."""
    temp = tmp_path / "temp"
    temp.mkdir()
    env = dict(os.environ, TMPDIR=str(temp))
    proc = subprocess.Popen(
        [*FLEETOPS, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while not _processes_mentioning(str(temp)):  # its workers started (their store is there)
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert b"Traceback" not in stderr
    assert not list(temp.iterdir())
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(temp)):  # its workers end with it
        assert time.monotonic() < deadline, _processes_mentioning(str(temp))
        time.sleep(0.1)
