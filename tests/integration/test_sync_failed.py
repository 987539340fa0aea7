"""A failed fsync of a SQLite store's WAL, at durability ``full``.

The disk's refusal is simulated at the system call (``_fdatasync``, the kernel's AIO
answer); everything else is real: SQLite files, several stores on one file as several
processes would have them, real checkpoints. What must hold:

- a write whose fsync failed is never acknowledged, and never made a second time (a
  group commit used to take such a failure for a refused group and commit each of its
  calls again: every task submitted twice);
- no later fsync proves anything until the store is repaired: Linux reports a failed
  writeback once per open file and marks the pages clean, so the next fsync succeeds
  without them; every store on the file, started before or after, refuses until then;
- the next write repairs the store (everything committed copied into the database
  file and synced, the WAL emptied), and the fleet goes on.
"""

from __future__ import annotations

import asyncio
import errno
import os
import sqlite3
import threading
from pathlib import Path

import pytest

from fleetops import SyncFailed
from fleetops.queue import QueueClient
from fleetops.queue import _client as client_module
from fleetops.store import NewTask, SqliteStore
from fleetops.store import _sqlite as sqlite_module
from fleetops.store._sqlite import SYNC_FAILED_SUFFIX, LockBusy


class _Disk:
    """The WAL's fsyncs fail while ``failing`` is set; ``refused`` counts them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.failing = threading.Event()
        self.refused = 0
        real = sqlite_module._fdatasync

        def fdatasync(fd: int) -> None:
            if self.failing.is_set():
                self.refused += 1
                raise OSError(errno.EIO, "Input/output error")
            real(fd)

        monkeypatch.setattr(sqlite_module, "_fdatasync", fdatasync)


def _store(path: Path, **kwargs: float) -> SqliteStore:
    store = SqliteStore(path, durability="full", **kwargs)
    store.migrate()
    return store


def _count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM tasks").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("call", ["submit", "submit_many"])
def test_a_group_commit_whose_fsync_failed_is_answered_with_the_error_not_committed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """The client that runs its store calls on a thread (the control plane's, the
    API's): concurrent calls grouped in one transaction whose fsync fails each get
    SyncFailed, and what they submitted is in the store once."""
    path = tmp_path / "fleet.db"
    _store(path).close()
    disk = _Disk(monkeypatch)

    async def main() -> list[object]:
        async with QueueClient(f"sqlite:///{path}?durability=full") as client:
            assert not client.inline
            await client.submit(NewTask("q", "a", "{}"))  # one before, synced
            disk.failing.set()
            if call == "submit":
                calls = [client.submit(NewTask("q", "a", f'{{"i": {i}}}')) for i in range(3)]
            else:
                calls = [client.submit_many([NewTask("q", "a", "{}")] * 2) for _ in range(3)]
            return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, SyncFailed) for o in outcomes), outcomes
    assert "Input/output error" in str(outcomes[0])
    # each transaction of them committed once, and the disk refused each one's fsync
    committed = _count(path) - 1
    assert committed == (3 if call == "submit" else 6), committed
    assert disk.refused >= 1


def test_after_a_failed_fsync_no_store_on_the_file_acknowledges_until_one_repairs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fleet.db"
    first = _store(path)
    other = _store(path)  # another process's, open before the failure
    late: SqliteStore | None = None
    disk = _Disk(monkeypatch)
    try:
        first.submit([NewTask("q", "a", "{}")], 1.0)
        disk.failing.set()
        with pytest.raises(SyncFailed, match="cannot sync the WAL.*Input/output error"):
            first.submit([NewTask("q", "a", "{}")], 2.0)
        disk.failing.clear()  # the disk works again, and its next fsync proves nothing
        mark = Path(f"{path}{SYNC_FAILED_SUFFIX}")
        assert "Input/output error" in mark.read_text()
        # another process's, started after the failure (opened only: its migration
        # would be a write, which repairs)
        late = SqliteStore(path, durability="full")
        for store in (first, other, late):
            with pytest.raises(SyncFailed, match="not repaired yet"):
                store.sync_wal()
        with pytest.raises(SyncFailed, match="not repaired yet"):
            late.start_wal_sync(lambda fd: fd)
        assert os.path.getsize(f"{path}-wal") > 0

        # the next write repairs it: everything committed is in the synced database
        # file, the WAL is empty and starts over, and the mark is gone
        other.submit([NewTask("q", "a", "{}")], 3.0)
        assert not mark.exists()
        assert _count(path) == 3
        for store in (first, late):  # first repairs again at its own next write
            store.submit([NewTask("q", "a", "{}")], 4.0)
            store.sync_wal()
        assert _count(path) == 5
    finally:
        for store in (first, other, late):
            if store is not None:
                store.close()


def test_the_repair_copies_every_commit_into_the_database_file_before_the_mark_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the repair leaves is readable from the database file alone: a WAL lost
    with the failed pages would lose none of it."""
    path = tmp_path / "fleet.db"
    store = _store(path)
    disk = _Disk(monkeypatch)
    try:
        store.submit([NewTask("q", "a", "{}")] * 5, 1.0)
        disk.failing.set()
        with pytest.raises(SyncFailed):
            store.submit([NewTask("q", "a", "{}")] * 5, 2.0)
        disk.failing.clear()
        store.record_event("repair.test", 3.0)  # a write: it repairs first
        assert os.path.getsize(f"{path}-wal") <= sqlite_module.WAL_FRAME_BYTES * 4
        copy = tmp_path / "copy.db"
        copy.write_bytes(path.read_bytes())  # the database file alone, without its WAL
        assert _count(copy) == 10
    finally:
        store.close()


def test_the_repair_waits_for_readers_and_refuses_writes_while_they_keep_it_from_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fleet.db"
    store = _store(path, lock_timeout=0.3)
    disk = _Disk(monkeypatch)
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        store.submit([NewTask("q", "a", "{}")], 1.0)
        disk.failing.set()
        with pytest.raises(SyncFailed):
            store.submit([NewTask("q", "a", "{}")], 2.0)
        disk.failing.clear()
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM tasks").fetchone()  # it reads the WAL
        store.nonblocking = True  # the inline client's mode: it retries on the loop
        try:
            with pytest.raises(LockBusy, match="repair"):
                store.submit([NewTask("q", "a", "{}")], 3.0)
        finally:
            store.nonblocking = False
        with pytest.raises(SyncFailed, match="other connections kept it busy"):
            store.submit([NewTask("q", "a", "{}")], 3.0)
        assert _count(path) == 2  # nothing of the refused writes
        reader.execute("COMMIT")
        store.submit([NewTask("q", "a", "{}")], 4.0)
        assert _count(path) == 3
        assert not Path(f"{path}{SYNC_FAILED_SUFFIX}").exists()
    finally:
        reader.close()
        store.close()


def test_an_fsync_the_kernel_ended_well_proves_nothing_when_another_ended_badly_with_it(
    tmp_path: Path,
) -> None:
    """Two fsyncs the kernel ends in one pass: the failure is told to one of them. The
    other's waiter must not be answered before that failure is known."""
    path = tmp_path / "fleet.db"
    store = _store(path)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        well, badly = loop.create_future(), loop.create_future()
        answered, failed = loop.create_future(), loop.create_future()
        well.add_done_callback(
            lambda f: client_module._answer_kernel_sync(store, answered, f)  # type: ignore[arg-type]
        )
        badly.add_done_callback(
            lambda f: client_module._answer_kernel_sync(store, failed, f)  # type: ignore[arg-type]
        )
        well.set_result(None)  # the good one first, as the kernel may list them
        badly.set_exception(OSError(errno.EIO, "Input/output error"))
        with pytest.raises(SyncFailed, match="Input/output error"):
            await failed
        with pytest.raises(SyncFailed, match="not repaired yet"):
            await answered

    try:
        asyncio.run(main())
    finally:
        store.close()
