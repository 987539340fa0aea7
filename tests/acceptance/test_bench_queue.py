"""``fleetops bench queue`` as a user runs it: what it refuses, and what it leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FLEETOPS = [sys.executable, "-m", "fleetops.cli"]


def run(*args: str, cwd: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="200", **env_vars)
    return subprocess.run(
        [*FLEETOPS, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env
    )


def test_durability_with_a_postgres_store_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    """Durability is a SQLite setting: with PostgreSQL it would be silently ignored."""
    temp = tmp_path / "temp"
    temp.mkdir()
    for given in ("normal", "full"):  # 'full', the SQLite default, given explicitly
        proc = run(
            "bench",
            "queue",
            "--store",
            # no server there: refused before it connects, whatever the URL
            "postgresql://postgres@127.0.0.1:1/test",
            "--durability",
            given,
            "--json",
            cwd=tmp_path,
            TMPDIR=str(temp),
        )
        assert proc.returncode == 2, proc.stderr
        assert f"--durability: invalid value '{given}'" in proc.stderr
        assert "SQLite stores only" in proc.stderr and "remove --durability" in proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not list(temp.iterdir()) and list(tmp_path.iterdir()) == [temp]


def _schemas(url: str) -> dict[str, int]:
    """The schemas of the database ``url`` names whose names start with fleetops_bench_,
    and each one's tables."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT n.nspname, count(c.oid) FROM pg_namespace n "
            "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind = 'r' "
            "WHERE n.nspname LIKE 'fleetops\\_bench\\_%' GROUP BY n.nspname"
        ).fetchall()
    return {name: count for name, count in rows}


def _tables_in_search_path(url: str) -> list[str]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return [name for (name,) in rows]


#: a sitecustomize.py that makes every worker process die as it starts, as with a
#: broken install
FAILING_WORKERS = (
    "import sys\nif sys.orig_argv[1:3] == ['-m', 'fleetops.runtime']:"
    "\n    raise SystemExit('this worker fails on purpose')\n"
)


@pytest.mark.postgres
@pytest.mark.parametrize("workers_fail", [False, True], ids=["succeeds", "fails"])
def test_a_postgres_bench_leaves_nothing_in_the_database(
    tmp_path: Path, postgres_url: str, workers_fail: bool
) -> None:
    """It runs in a schema of its own, dropped at the end, whether the run succeeds or
    fails: the database the user named (here a fresh schema standing for theirs) gets
    no table and no task of the bench's."""
    env = {}
    if workers_fail:
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "sitecustomize.py").write_text(FAILING_WORKERS)
        env["PYTHONPATH"] = str(tmp_path / "site")
    small = "--tasks 200 --overhead-seconds 0.5 --workers 1 --inflight 20 --work noop"
    before = _schemas(postgres_url)
    proc = run(
        "bench", "queue", *small.split(), "--store", postgres_url, "--json", cwd=tmp_path, **env
    )
    if workers_fail:
        assert proc.returncode == 1, proc.stderr
        assert "workers keep failing" in proc.stderr and "Traceback" not in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["store"] == "postgresql" and result["tasks"] == 200
    assert _tables_in_search_path(postgres_url) == []
    assert _schemas(postgres_url).keys() <= before.keys()


def test_the_overhead_phase_lasts_its_length_however_few_tasks_the_first_phase_ran(
    tmp_path: Path,
) -> None:
    """--overhead-seconds is the phase's length: at --overhead-rate 300 for 1 s it
    submits 300 tasks, though --tasks is 50 (it used to stop at --tasks)."""
    small = "--tasks 50 --workers 1 --inflight 20 --work noop --durability normal"
    rate = "--overhead-rate 300 --overhead-seconds 1"
    proc = run("bench", "queue", *small.split(), *rate.split(), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["tasks"] == 50
    assert result["overhead_rate_tps"] == 300 and result["overhead_tasks"] == 300
