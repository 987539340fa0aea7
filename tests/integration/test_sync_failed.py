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
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from fleetops import SyncFailed
from fleetops.queue import QueueClient
from fleetops.queue import _client as client_module
from fleetops.store import NewTask, SqliteStore
from fleetops.store import _sqlite as sqlite_module
from fleetops.store._sqlite import (
    SYNC_FAILED_SUFFIX,
    RepairNeeded,
    SqliteCheckpointer,
    WalFile,
)


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


@contextmanager
def _connected(store: SqliteStore, conn: Any) -> Iterator[None]:
    """``store`` on ``conn`` (a wrapper of its connection) for a while."""
    real = store._conn
    store._conn = conn
    try:
        yield
    finally:
        store._conn = real


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
            with pytest.raises(RepairNeeded, match="to be repaired"):
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


class _WriteBack:
    """Linux's account of a failed write-back (errseq): the error is told once to each
    open file, at its next fsync, and not again; a file opened after it never hears
    of it. ``fail()`` is a write-back that failed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.errors = 0
        self._told: dict[int, int] = {}
        real = sqlite_module._fdatasync
        real_current = WalFile.current

        def fdatasync(fd: int) -> None:
            self.check(fd)
            real(fd)

        def current(wal: WalFile) -> int | None:
            known = wal.opened()
            fd = real_current(wal)
            if fd is not None and fd != known:  # opened now: told of nothing before
                self._told[fd] = self.errors
            return fd

        monkeypatch.setattr(sqlite_module, "_fdatasync", fdatasync)
        monkeypatch.setattr(WalFile, "current", current)

    def fail(self) -> None:
        self.errors += 1

    def kernel(self, fd: int) -> list[OSError]:
        """An fsync the kernel runs: what it was told, not yet read by anyone."""
        try:
            self.check(fd)
        except OSError as exc:
            return [exc]
        return []

    def check(self, fd: int) -> None:
        if self._told.setdefault(fd, 0) < self.errors:  # opened before: told of all
            self._told[fd] = self.errors
            raise OSError(errno.EIO, "Input/output error")


def test_an_fsync_the_store_runs_learns_of_a_failure_told_to_the_kernel_s_fsync_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's fsync read the failure and its answer is not yet read, when the
    store runs an fsync of its own: that one must fail too, not acknowledge a commit
    that comes after the lost pages (it has a descriptor of its own to be told on)."""
    path = tmp_path / "fleet.db"
    store = _store(path)
    disk = _WriteBack(monkeypatch)
    try:
        store.submit([NewTask("q", "a", "{}")], 1.0)  # the store's descriptor, opened
        assert store.start_wal_sync(disk.kernel) == []  # the kernel's, opened
        disk.fail()
        unread = store.start_wal_sync(disk.kernel)  # the kernel's fsync is told
        assert unread and "Input/output error" in str(unread[0])
        with pytest.raises(SyncFailed, match="Input/output error"):
            store.submit([NewTask("q", "a", "{}")], 2.0)
    finally:
        store.close()


def test_the_store_s_descriptors_open_together_so_neither_misses_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker's fsyncs go to the kernel; its own descriptor is used first when the
    kernel refuses one. Opened only then, after a failure the kernel's fsync was told
    of (its answer not yet read), it would never be told, and would acknowledge."""
    path = tmp_path / "fleet.db"
    store = _store(path)
    store.close()
    store = SqliteStore(path, durability="full")  # nothing opened yet
    disk = _WriteBack(monkeypatch)
    try:
        store.defer_sync = True  # as the inline client writes: the fsync is its own
        store.submit([NewTask("q", "a", "{}")], 1.0)
        store.defer_sync = False
        assert store.start_wal_sync(disk.kernel) == []  # the first descriptor opened
        disk.fail()
        assert store.start_wal_sync(disk.kernel)  # told, its answer not yet read
        with pytest.raises(SyncFailed, match="Input/output error"):
            store.sync_wal()  # the kernel refused the next one: the store's own
    finally:
        store.close()


def test_a_repair_leaves_no_failure_for_the_next_fsync_to_be_told_of(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each descriptor is told of a failure once: the one not told yet would tell the
    first fsync after the repair, refusing a commit the repair did not need to cover."""
    path = tmp_path / "fleet.db"
    store = _store(path)
    disk = _WriteBack(monkeypatch)
    try:
        store.submit([NewTask("q", "a", "{}")], 1.0)
        assert store.start_wal_sync(disk.kernel) == []
        disk.fail()
        with pytest.raises(SyncFailed, match="Input/output error"):
            store.submit([NewTask("q", "a", "{}")], 2.0)  # the store's descriptor told
        store.submit([NewTask("q", "a", "{}")], 3.0)  # repaired first, then synced
        assert store.start_wal_sync(disk.kernel) == []  # nothing left to tell
        store.sync_wal()
        assert _count(path) == 3
    finally:
        store.close()


def test_the_kernel_s_fsync_that_ended_well_is_answered_after_the_others_in_flight(
    tmp_path: Path,
) -> None:
    """Fsyncs the kernel ends and the loop reads in any order: a success is answered
    only after every fsync in flight when it was read, since the failure of a
    write-back is told to one of them only."""
    store = _store(tmp_path / "fleet.db")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inflight: set[asyncio.Future[None]] = set()

        def fsync() -> tuple[asyncio.Future[None], asyncio.Future[None]]:
            synced: asyncio.Future[None] = loop.create_future()
            waiter: asyncio.Future[None] = loop.create_future()
            inflight.add(synced)
            answer = partial(client_module._answer_kernel_sync, store, inflight, waiter)
            synced.add_done_callback(answer)
            return synced, waiter

        # the good one read first, the bad one in the same pass
        (well, answered), (badly, failed) = fsync(), fsync()
        well.set_result(None)
        badly.set_exception(OSError(errno.EIO, "Input/output error"))
        with pytest.raises(SyncFailed, match="Input/output error"):
            await failed
        with pytest.raises(SyncFailed, match="not repaired yet"):
            await answered
        store._repair()

        # the bad one read a while later: the good one is not answered meanwhile
        (well, answered), (badly, failed) = fsync(), fsync()
        well.set_result(None)
        for _ in range(20):
            await asyncio.sleep(0)
        assert not answered.done()
        badly.set_exception(OSError(errno.EIO, "Input/output error"))
        with pytest.raises(SyncFailed, match="not repaired yet"):
            await answered
        assert failed.exception() is not None
        store._repair()

        # and when the others end well, so does it; none left in flight
        (well, answered), (other, answered_other) = fsync(), fsync()
        well.set_result(None)
        other.set_result(None)
        assert await answered is None
        assert await answered_other is None
        assert not inflight

    try:
        asyncio.run(main())
    finally:
        store.close()


@pytest.mark.parametrize("where", ["another store", "this store"])
def test_a_failure_during_a_repair_is_not_repaired_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A repair that began before a failure does not cover it: the failure's mark, a
    new file, stays, and the write is refused."""
    path = tmp_path / "fleet.db"
    store, other = _store(path), _store(path)
    try:
        store.sync_failed(OSError(errno.EIO, "the first failure"))
        unmark = sqlite_module.SqliteStore._unmark
        late = other if where == "another store" else store

        def failure_meanwhile(self: SqliteStore, *args: Any) -> None:
            late.sync_failed(OSError(errno.EIO, "a failure during the repair"))
            unmark(self, *args)

        monkeypatch.setattr(sqlite_module.SqliteStore, "_unmark", failure_meanwhile)
        with pytest.raises(SyncFailed, match="an fsync failed meanwhile"):
            store.submit([NewTask("q", "a", "{}")], 1.0)
        mark = Path(f"{path}{SYNC_FAILED_SUFFIX}")
        assert "a failure during the repair" in mark.read_text()
        assert _count(path) == 0
        monkeypatch.undo()
        store.submit([NewTask("q", "a", "{}")], 2.0)  # repaired now
        assert not mark.exists()
        # nothing of the marks is left but the file their lock is taken on
        left = sorted(p.name for p in tmp_path.iterdir() if "syncfailed" in p.name)
        assert left == ["fleet.db-syncfailed.lock"]
    finally:
        store.close()
        other.close()


def test_a_failure_during_a_repair_is_not_repaired_by_it_where_no_mark_could_be_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refused the marks too: the store still knows of its own failures, and
    one during its repair keeps it refusing."""
    path = tmp_path / "fleet.db"
    store = _store(path)
    real = store._conn

    class FailureMeanwhile:
        def execute(self, sql: str, *args: Any) -> Any:
            done = real.execute(sql, *args)
            if "wal_checkpoint(TRUNCATE)" in sql:
                store.sync_failed(OSError(errno.EIO, "a failure during the repair"))
            return done

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    monkeypatch.setattr(sqlite_module, "mark_sync_failed", lambda *args: None)
    try:
        store.sync_failed(OSError(errno.EIO, "the first failure"))
        with _connected(store, FailureMeanwhile()), pytest.raises(SyncFailed, match="meanwhile"):
            store.submit([NewTask("q", "a", "{}")], 1.0)
        with pytest.raises(SyncFailed, match="not repaired yet"):
            store.sync_wal()
        store.submit([NewTask("q", "a", "{}")], 2.0)  # repaired now
        store.sync_wal()
    finally:
        store.close()


def test_a_wal_that_cannot_be_opened_is_an_error_not_a_failed_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Too many open files, say: nothing was synced, the write is not acknowledged,
    but no fsync failed, so nothing is marked and nothing needs repair."""
    path = tmp_path / "fleet.db"
    store = _store(path)
    try:
        store.submit([NewTask("q", "a", "{}")], 1.0)
        store._wal.close()

        def no_descriptor(self: WalFile) -> int | None:
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(WalFile, "current", no_descriptor)
        with pytest.raises(sqlite_module.StoreError, match="cannot open its WAL") as caught:
            store.submit([NewTask("q", "a", "{}")], 2.0)
        assert not isinstance(caught.value, SyncFailed)
        with pytest.raises(sqlite_module.StoreError, match="Too many open files"):
            store.start_wal_sync(lambda fd: fd)
        assert not Path(f"{path}{SYNC_FAILED_SUFFIX}").exists()
        monkeypatch.undo()
        store.sync_wal()
    finally:
        store.close()


class _FailingCheckpoints:
    """A connection whose ``wal_checkpoint(TRUNCATE)`` fails with a disk I/O error the
    first ``times`` times, as SQLite's does when its own descriptor of the WAL is
    told of a failed write-back."""

    def __init__(self, conn: sqlite3.Connection, times: int) -> None:
        self._conn = conn
        self.times = times

    def execute(self, sql: str, *args: Any) -> Any:
        if "wal_checkpoint(TRUNCATE)" in sql and self.times > 0:
            self.times -= 1
            exc = sqlite3.OperationalError("disk I/O error")
            exc.sqlite_errorcode = sqlite3.SQLITE_IOERR | (24 << 8)  # type: ignore[attr-defined]
            raise exc
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_the_repair_copies_again_once_when_sqlite_is_told_of_the_failure_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fleet.db"
    store = _store(path)
    try:
        store.sync_failed(OSError(errno.EIO, "Input/output error"))
        with _connected(store, _FailingCheckpoints(store._conn, 1)):
            store.submit([NewTask("q", "a", "{}")], 1.0)  # told once: copied again
        assert not Path(f"{path}{SYNC_FAILED_SUFFIX}").exists()
        store.sync_failed(OSError(errno.EIO, "Input/output error"))
        with (
            _connected(store, _FailingCheckpoints(store._conn, 2)),
            pytest.raises(SyncFailed, match=r"not repaired \(disk I/O error\)"),
        ):
            store.submit([NewTask("q", "a", "{}")], 2.0)
        assert _count(path) == 1
    finally:
        store.close()


def test_a_failed_fsync_in_the_checkpointer_marks_the_store_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer syncs the WAL when it writes zeros ahead of its frames: told
    of a failure there, no store would hear of it on its own descriptor."""
    path = tmp_path / "fleet.db"
    store = _store(path)
    checkpointer = SqliteCheckpointer(path, durability="full", interval=3600)
    disk = _Disk(monkeypatch)
    try:
        store.submit([NewTask("q", "a", "{}")], 1.0)
        disk.failing.set()
        with pytest.raises(OSError, match="Input/output error"):
            checkpointer.fill(0)
        disk.failing.clear()
        with pytest.raises(SyncFailed, match="not repaired yet"):
            store.sync_wal()
    finally:
        checkpointer.close()
        store.close()


def test_the_inline_client_says_the_store_is_not_repaired_when_readers_keep_the_repair_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "fleet.db"
    _store(path).close()
    reader = sqlite3.connect(path, isolation_level=None)

    def factory(url: str) -> SqliteStore:
        return SqliteStore(path, durability="full", lock_timeout=0.3)

    repaired_on: list[str] = []
    real_repair = SqliteStore._repair

    def repair(self: SqliteStore) -> None:
        repaired_on.append(threading.current_thread().name)
        real_repair(self)

    async def main() -> None:
        async with QueueClient(
            f"sqlite:///{path}?durability=full", inline=True, store_factory=factory
        ) as client:
            checkpointer = client._checkpointer  # its passive checkpoints would let the
            assert checkpointer is not None  # reader read the database file alone
            checkpointer.close()
            await client.submit_many([NewTask("q", "a", "{}")])
            store = client.store
            assert isinstance(store, SqliteStore)
            store.sync_failed(OSError(errno.EIO, "Input/output error"))
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM tasks").fetchone()
            with pytest.raises(SyncFailed, match="other connections kept it busy"):
                await client.submit_many([NewTask("q", "a", "{}")])
            reader.execute("COMMIT")
            await client.submit_many([NewTask("q", "a", "{}")])

    monkeypatch.setattr(SqliteStore, "_repair", repair)
    try:
        asyncio.run(main())
    finally:
        reader.close()
    assert _count(path) == 2
    # the checkpoint and its fsyncs ran on the store's thread, not on the event loop
    assert repaired_on and all(name.startswith("fleetops-store") for name in repaired_on)


@pytest.mark.parametrize(("code", "marked"), [(1034, True), (266, False)])
def test_a_checkpoint_marks_the_store_when_sqlite_s_fsync_fails_not_a_read(
    tmp_path: Path, code: int, marked: bool
) -> None:
    """SQLITE_IOERR_FSYNC (1034): SQLite's own fsync failed, maybe of the WAL, whose
    descriptor was told of it instead of the stores'. A read error (266) is no
    failed write-back: nothing to repair."""
    path = tmp_path / "fleet.db"
    _store(path).close()
    checkpointer = SqliteCheckpointer(path, durability="full", interval=3600)

    class Refusing:
        def execute(self, sql: str, *args: Any) -> Any:
            exc = sqlite3.OperationalError("disk I/O error")
            exc.sqlite_errorcode = code  # type: ignore[attr-defined]
            raise exc

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    real = checkpointer._conn
    try:
        checkpointer._conn = Refusing()  # type: ignore[assignment]
        assert checkpointer.checkpoint() is False
        assert Path(f"{path}{SYNC_FAILED_SUFFIX}").exists() is marked
    finally:
        checkpointer._conn = real
        checkpointer.close()
