"""``fleetops bench queue`` as a user runs it: what it refuses, and what it leaves behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
