"""A store whose disk fills up: the WAL never takes the last free space, a full disk
stops the writes with a clear error, and once space is freed the fleet goes on with
nothing lost and no effect twice.

The small disk is a real one: a 32 MiB tmpfs, mounted in a mount namespace of the
test's own (``unshare``; as root, or as a user where unprivileged user namespaces are
allowed), so nothing outside the test sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_queue_inline import write_lock_held

from fleetops.store import NewTask, Store, open_store
from fleetops.store._sqlite import (
    LOW_DISK_RESTART_FRAMES,
    RESTART_WAIT_MS,
    WAL_FRAME_BYTES,
    SqliteCheckpointer,
)

SCENARIO = Path(__file__).with_name("disk_full_fleet.py")
SMALL_DISK = 32 << 20


def _wal_frames(path: Path) -> int:
    wal = Path(f"{path}-wal")
    return max(0, (wal.stat().st_size - 32) // WAL_FRAME_BYTES) if wal.exists() else 0


def _store_with_frames(path: Path, frames: int) -> Store:
    """An open store (closing the last connection would checkpoint the WAL away) whose
    WAL holds at least ``frames`` frames."""
    store = open_store(f"sqlite:///{path}?durability=normal")
    store.set_autocheckpoint(0)  # type: ignore[attr-defined]  # as a worker's: frames stay
    n = 0
    while _wal_frames(path) < frames:
        store.submit([NewTask("q", "a", '"' + "p" * 2000 + '"') for _ in range(20)], float(n))
        n += 1
    return store


def test_low_on_disk_the_checkpointer_writes_no_zeros_and_restarts_the_wal_early(
    tmp_path: Path,
) -> None:
    """Asked to keep more free than this file system has, the checkpointer restarts a
    WAL of LOW_DISK_RESTART_FRAMES frames (far below its limit) and writes no zeros
    ahead; with nothing to keep free, the same WAL is left to grow and is filled."""
    results = {}
    for name, reserve in (("low", 1 << 62), ("ample", 0)):
        path = tmp_path / f"{name}.db"
        store = _store_with_frames(path, LOW_DISK_RESTART_FRAMES + 50)
        checkpointer = SqliteCheckpointer(
            path, durability="normal", interval=3600, disk_reserve=reserve
        )
        try:
            assert checkpointer.low_on_disk() is (name == "low")
            assert checkpointer.checkpoint()
            results[name] = (checkpointer.restarts, checkpointer.filled)
        finally:
            checkpointer.close()
            store.close()
    assert results["low"] == (1, 0)
    restarts, filled = results["ample"]
    assert restarts == 0 and filled > 0


def test_a_wal_past_twice_its_limit_is_restarted_even_when_a_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    """A restart finds the write lock taken (a writer in the middle of a commit). Past
    its limit the round gives up and stays passive; past twice its limit it waits for
    the writer (up to RESTART_WAIT_MS) rather than let the WAL grow on."""
    results = {}
    # 610 frames or a few more: past a limit of 400 but not 800; past twice 300
    for name, restart_frames in (("past the limit", 400), ("past twice", 300)):
        path = tmp_path / f"{name}.db"
        store = _store_with_frames(path, 610)
        checkpointer = SqliteCheckpointer(
            path, durability="normal", interval=3600, restart_frames=restart_frames, disk_reserve=0
        )
        try:
            assert 2 * 300 <= _wal_frames(path) < 2 * 400
            with write_lock_held(path, RESTART_WAIT_MS / 4000):
                assert checkpointer.checkpoint()
            results[name] = checkpointer.restarts
        finally:
            checkpointer.close()
            store.close()
    assert results == {"past the limit": 0, "past twice": 1}


def _namespace_command() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("this test needs util-linux's unshare, to mount a small tmpfs of its own")
    return [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]


def test_a_fleet_on_a_disk_that_fills_up_loses_nothing_and_goes_on_once_space_is_freed(
    tmp_path: Path,
) -> None:
    store, side = tmp_path / "small", tmp_path / "side"
    store.mkdir()
    side.mkdir()
    script = (
        f'mount -t tmpfs -o size={SMALL_DISK} tmpfs "$1" && '
        f'exec "{sys.executable}" "{SCENARIO}" "$1" "$2" 20000'
    )
    run = subprocess.run(
        [*_namespace_command(), "sh", "-c", script, "sh", str(store), str(side)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if run.returncode != 0 or not run.stdout.strip():
        pytest.fail(
            "the scenario did not run (a mount namespace needs root or unprivileged user "
            f"namespaces): exit {run.returncode}, stderr ends: {run.stderr[-2000:]}"
        )
    out = json.loads(run.stdout.strip().splitlines()[-1])

    steady = out["steady"]
    # 20,000 tasks write more WAL than the disk holds: the checkpointer, seeing the
    # disk low, restarted it early and wrote no zeros ahead (before, the WAL grew
    # toward its 64 MiB limit and writes failed at about 10,000 tasks)
    assert steady["errors"] == [] and steady["done"] == 20000, steady
    # The WAL's high-water mark varies with how long a restart waits on the writers:
    # 9.4-28.7 MB in 32 runs on a 2-core VM, half the disk crossed in 3 of them. Without
    # the early restarts it grows until the disk is full.
    assert steady["largest_wal"] < SMALL_DISK, steady

    full = out["full"]
    # the full disk was felt: a submit refused, or a worker whose write failed
    assert full["refused"] is not None or full["worker_failures"] > 0, full
    if full["refused"] is not None:
        assert "database or disk is full" in full["refused"]
        assert "free space" in full["refused"], "the error says what to do"
    assert full["accepted_after"], full
    assert full["open"] == {} and full["states"] == {"succeeded": full["submitted"]}, full
    assert full["duplicate_effects"] == 0 and full["missing_effects"] == 0, full
    assert full["integrity"] == "ok"
