"""Invariants 1-3 under fire: kill -9 random workers, stop one, cut the database's network;
lose nothing, duplicate nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleetops import ConfigError
from fleetops.chaos import CutStoreConfig, KillWorkersConfig, cut_store, kill_workers
from fleetops.chaos._run import new_ledger

pytestmark = pytest.mark.chaos


@pytest.mark.parametrize(
    "backend",
    ["sqlite", "sqlite-normal", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def test_kill_and_stop_workers_loses_nothing_and_duplicates_no_effect(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # workers run their store calls inline on the event loop at either SQLite durability
    # (at "full" the commit itself goes to a thread); both are killed mid-transaction here
    if backend == "sqlite":
        store_url = None  # a temporary file at the default durability, full
    elif backend == "sqlite-normal":
        store_url = f"sqlite:///{tmp_path / 'fleet.db'}?durability=normal"
    else:
        store_url = request.getfixturevalue("postgres_url")
    config = KillWorkersConfig(
        tasks=500,
        workers=3,
        kill_every=0.5,
        stop_one=True,
        work_s=0.25,
        concurrency=20,
        store_url=store_url,
        seed=7,
        timeout=180,
        max_kills=8,  # the same faults however fast this machine is today
    )
    result = asyncio.run(kill_workers(config))

    # the faults really happened, and hit work in flight
    assert result.kills >= 3
    assert result.stops == 1
    assert result.redelivered_tasks > 0
    # invariant 1: every accepted task reached a terminal state
    assert result.lost == 0 and not result.timed_out
    assert result.submitted == 500
    assert result.succeeded + result.dead_lettered == 500
    assert result.dead_lettered == 0  # no task exhausted its redeliveries here
    # invariant 2: each succeeded task applied its effect exactly once at the receiver
    assert result.duplicate_effects == 0
    assert result.missing_effects == 0
    # a re-invocation can only come from a holder killed mid-effect
    assert result.effect_reexecutions <= result.kills * config.concurrency
    # the hung (SIGSTOPped) worker was detected and its work recovered
    assert result.hang_detection_s is not None
    assert result.detection_p99_s is not None
    assert result.recovery_p99_s is not None


def test_import_time_is_cpu_the_agents_module_spends_in_each_process_that_imports_it(
    tmp_path: Path,
) -> None:
    """kill-workers --import-time: the workers' environment makes the chaos agents'
    module take that much CPU to import, as a large SDK would."""
    _, env = new_ledger(tmp_path, 0.3)
    measure = (  # what the chaos package imports, first: its own import is then ~0.02 s
        "import time, fleetops.runtime, fleetops.queue, fleetops.store._open\n"
        "began = time.process_time()\n"
        "import fleetops.chaos\n"
        "print(time.process_time() - began)"
    )
    done = subprocess.run(
        [sys.executable, "-c", measure], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout) >= 0.3


def test_a_run_cut_off_by_its_time_limit_says_so() -> None:
    """Tasks still open at the limit count as lost, and the result says the run timed
    out, so a fleet that could not keep up is told from one that lost work."""
    config = KillWorkersConfig(
        tasks=20, workers=1, kill_every=60, stop_one=False, work_s=30, timeout=3
    )
    result = asyncio.run(kill_workers(config))
    assert result.timed_out
    assert result.lost == 20 and result.succeeded == 0


@pytest.mark.postgres
def test_cutting_the_database_off_again_and_again_loses_nothing_and_fails_no_worker(
    postgres_url: str,
) -> None:
    """Three cuts of the fleet's every connection to PostgreSQL under load (new ones
    refused for 0.6 s each). Workers ride them out: no worker fails and no task is
    redelivered, nothing is lost, every effect happens once. (Before workers tried
    their writes again, each cut cost every worker a crash and its tasks a
    redelivery: this run reported 6 worker failures and 150 redelivered tasks.)"""
    config = CutStoreConfig(
        store_url=postgres_url,
        tasks=600,
        workers=2,
        cut_every=1.5,
        cut_for=0.6,
        work_s=0.2,
        concurrency=25,
        timeout=180,
        max_cuts=3,
    )
    result = asyncio.run(cut_store(config))

    # the cuts really happened, and hit connections in use and attempts to reconnect
    assert result.cuts == 3
    assert result.connections_cut >= 2 and result.connections_refused >= 2
    assert result.lost == 0 and not result.timed_out
    assert result.succeeded == 600
    assert result.duplicate_effects == 0 and result.missing_effects == 0
    assert result.worker_failures == 0
    assert result.redelivered_tasks == 0
    assert result.holds and result.logs is None  # nothing to look into: none kept
    assert result.resume_max_s is not None


def test_cut_store_needs_a_database_with_a_network_to_cut(tmp_path: Path) -> None:
    for url, fix in (
        (f"sqlite:///{tmp_path / 'fleet.db'}", "give a postgresql:// URL"),
        ("postgresql://postgres@/test?host=/var/run/postgresql", "a Unix socket"),
    ):
        with pytest.raises(ConfigError) as refused:
            CutStoreConfig(store_url=url)
        assert refused.value.field == "--store" and fix in str(refused.value)
    with pytest.raises(ConfigError) as refused:
        CutStoreConfig(store_url="postgresql://db.example/fleet", cut_every=1.0, cut_for=1.0)
    assert refused.value.field == "--cut-every"
    assert not list(tmp_path.iterdir())  # nothing was created


@pytest.mark.postgres
def test_a_cut_store_run_that_fails_its_hypothesis_keeps_the_fleets_logs(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The run's directory is temporary: when it fails, the logs that say why are
    copied out first (here the tally is made to report a duplicated effect)."""
    from fleetops.chaos import _cut_store

    monkeypatch.chdir(tmp_path)
    honest = _cut_store.tally
    monkeypatch.setattr(
        _cut_store,
        "tally",
        lambda *args: dataclasses.replace(honest(*args), duplicate_effects=1),
    )
    config = CutStoreConfig(
        store_url=postgres_url, tasks=20, workers=1, cut_every=0.6, cut_for=0.2, max_cuts=1
    )
    result = asyncio.run(cut_store(config))
    assert not result.holds and result.logs is not None
    kept = Path(result.logs)
    assert kept.parent == tmp_path
    names = sorted(p.name for p in kept.iterdir())  # the one worker's, and the spares'
    assert len(names) == 2 and "spares.log" in names, names
    assert all(name.endswith(".log") for name in names), names


@pytest.mark.parametrize(
    ("command", "fault"),
    [
        (["kill-workers", "--workers", "1", "--kill-every", "10m"], "kill"),
        pytest.param(
            ["cut-store", "--workers", "1", "--cut-every", "10m"], "cut", marks=pytest.mark.postgres
        ),
    ],
)
def test_a_run_that_ended_before_its_first_fault_does_not_pass(
    command: list[str], fault: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A few tasks done before the first fault: the report read as a pass (kills 0,
    exit status 0) though nothing had been tested."""
    if command[0] == "cut-store":
        command = [*command, "--store", request.getfixturevalue("postgres_url")]
    done = subprocess.run(
        [sys.executable, "-m", "fleetops.cli", "chaos", *command, "--tasks", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    report = json.loads(done.stdout)
    assert report["faults_injected"] is False
    assert report["succeeded"] == 3 and report["lost"] == 0
    said = " ".join(done.stderr.split())
    assert "no fault injected" in said and f"before the first {fault}" in said, said
    assert "--tasks" in said and f"{fault} sooner" in said
    assert not list(tmp_path.iterdir())  # no logs kept: nothing failed
