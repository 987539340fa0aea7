"""``fleetops load``, the command ``make demo`` runs: the support-desk example deployed
on SQLite, requests driven through it, its busiest intake worker killed half-way."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

EXAMPLE_DIR = Path(__file__).resolve().parents[2] / "examples" / "support-desk"


def test_the_demo_loses_nothing_when_a_worker_is_killed(tmp_path: Path) -> None:
    fleet_dir = tmp_path / "support-desk"
    shutil.copytree(
        EXAMPLE_DIR, fleet_dir, ignore=shutil.ignore_patterns(".fleetops", "__pycache__")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "fleetops.cli", "load", "fleet.yaml"]
        + ["--workload", "support_desk.workload:generate_requests"]
        + ["--target", "intake/classify", "--duration", "8s", "--rate", "10"]
        + ["--kill-worker-at", "0.5", "--api-port", "0", "--json"],
        cwd=fleet_dir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["submitted"] == 80
    assert report["succeeded"] == 80, report
    assert report["dead_lettered"] == 0 and report["unfinished"] == 0
    assert report["killed_worker"].startswith("intake-"), report
    assert report["worker_failures"] >= 1  # the kill was seen, and the worker replaced
    # what the killed worker held when it died was run again, and nothing else was
    assert report["tasks_redelivered"] == report["killed_worker_tasks"], report
