"""QueueClient(inline=True) on SQLite: hot calls on the event loop, never blocking it.

Each test holds SQLite's write lock from another connection, the way another worker
process does, and checks what the inline client does meanwhile.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fleetops import Closed, ConfigError, StoreError, StoreUnavailable
from fleetops._clock import VirtualClock
from fleetops.queue import QueueClient
from fleetops.queue._bell import Doorbell
from fleetops.queue._client import INLINE_SYNC_BACKOFF_SECONDS
from fleetops.runtime import WorkerSettings
from fleetops.runtime._loop import new_event_loop
from fleetops.store import Complete, EffectBegin, NewTask, SqliteStore, Submitted, open_store
from fleetops.store import _aio as aio_module
from fleetops.store import _sqlite as sqlite_module
from fleetops.store._aio import AsyncFsync, Refused
from fleetops.store._sqlite import WAL_FRAME_BYTES, LockBusy, SqliteCheckpointer

T_START = 1_700_000_000.0
#: a binary fraction of a second: virtual times add up exactly
STEP = 1 / 64


def _db(tmp_path: Path, durability: str) -> tuple[str, Path]:
    path = tmp_path / "fleet.db"
    return f"sqlite:///{path}?durability={durability}", path


@contextmanager
def write_lock_held(path: Path, seconds: float) -> Iterator[threading.Event]:
    """Another connection takes the write lock and keeps it for ``seconds``; the event
    is set once it has let go."""
    taken, released = threading.Event(), threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(str(path), isolation_level=None, timeout=0)
        conn.execute("BEGIN IMMEDIATE")
        taken.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()
        released.set()

    thread = threading.Thread(target=hold)
    thread.start()
    taken.wait(5)
    try:
        yield released
    finally:
        thread.join()


async def _ticks(stop: asyncio.Event) -> int:
    """How many times the event loop got round to this coroutine until ``stop``."""
    n = 0
    while not stop.is_set():
        await asyncio.sleep(0.001)
        n += 1
    return n


@pytest.mark.parametrize("durability", ["normal", "full"])
def test_a_claim_waits_for_a_busy_write_lock_while_the_loop_keeps_running(
    tmp_path: Path, durability: str
) -> None:
    url, path = _db(tmp_path, durability)

    async def main() -> tuple[int, int, bool]:
        async with QueueClient(url, inline=True) as client:
            assert client.inline
            await client.submit_many([NewTask("q", "a", "{}") for _ in range(5)])
            stop = asyncio.Event()
            ticker = asyncio.create_task(_ticks(stop))
            with write_lock_held(path, 0.4) as released:
                claimed = await client.claim("w1", ["q"], 10, 10.0)
                lock_was_released = released.is_set()
            stop.set()
            return len(claimed), await ticker, lock_was_released

    claimed, ticks, lock_was_released = asyncio.run(main())
    assert claimed == 5
    assert lock_was_released  # the claim could only go in after the other writer let go
    # a claim sleeping in the store would have frozen the loop for the 0.4 s (0 ticks)
    assert ticks >= 20


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_waiting_for_a_busy_write_lock_leaves_the_cpu_to_the_holder(
    tmp_path: Path, loop: str
) -> None:
    """The process that holds the lock needs a CPU to finish; a waiter that spins
    through its event loop (uvloop cannot wait under a millisecond) takes one from it
    on a machine with fewer cores than busy writers."""
    url, path = _db(tmp_path, "normal")

    async def main() -> tuple[int, float, float]:
        async with QueueClient(url, inline=True) as client:
            await client.submit_many([NewTask("q", "a", "{}") for _ in range(3)])
            with write_lock_held(path, 0.5):
                cpu, wall = time.thread_time(), time.monotonic()
                claimed = await client.claim("w1", ["q"], 10, 10.0)
                cpu, wall = time.thread_time() - cpu, time.monotonic() - wall
            return len(claimed), cpu, wall

    with asyncio.Runner(loop_factory=lambda: new_event_loop(loop)) as runner:
        claimed, cpu, wall = runner.run(main())
    assert claimed == 3
    assert wall >= 0.45  # it did wait for the lock
    # spinning takes all of a CPU for the wait (measured: 0.50 s of 0.50); each retry
    # now sleeps 0.1 ms or more first (measured: 0.12 s of CPU in the 0.50 s)
    assert cpu < 0.5 * wall, f"{cpu:.3f} s of CPU in a {wall:.3f} s wait for the lock"


def test_a_write_lock_held_past_the_timeout_is_reported_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    url, path = _db(tmp_path, "normal")

    def factory(u: str) -> SqliteStore:
        store = SqliteStore(path, durability="normal", lock_timeout=0.2)
        store.migrate()
        return store

    async def main() -> int:
        async with QueueClient(url, inline=True, store_factory=factory) as client:
            with write_lock_held(path, 0.6), pytest.raises(StoreUnavailable, match="locked"):
                await client.submit_many([NewTask("q", "a", "{}")])
            counts = await client.run(client.store.count_tasks)
            return sum(counts.values())

    assert asyncio.run(main()) == 0


def test_nonblocking_store_raises_lock_busy_before_changing_anything(tmp_path: Path) -> None:
    _, path = _db(tmp_path, "normal")
    store = SqliteStore(path, durability="normal")
    store.migrate()
    store.nonblocking = True
    with write_lock_held(path, 0.3), pytest.raises(LockBusy):
        store.submit([NewTask("q", "a", "{}")], time.time())
    store.nonblocking = False
    assert sum(store.count_tasks().values()) == 0
    store.close()


class _ThreadRecordingStore(SqliteStore):
    """Notes which thread ran each claim's statements and which ran each fsync."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claim_threads: list[int] = []
        self.sync_threads: list[int] = []

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        self.claim_threads.append(threading.get_ident())
        return super().claim(*args, **kwargs)

    def sync_wal(self) -> None:
        self.sync_threads.append(threading.get_ident())
        super().sync_wal()

    def forget(self) -> None:
        self.sync_threads.clear()


S = TypeVar("S", bound=SqliteStore)


def _recording_factory(cls: type[S], path: Path, stores: list[S]) -> Callable[[str], SqliteStore]:
    """A store factory for the client: a ``cls`` store, migrated, with what the
    migration did forgotten (``cls.forget``), appended to ``stores``."""

    def factory(u: str) -> SqliteStore:
        store = cls(path, durability="full")
        store.migrate()
        store.forget()  # type: ignore[attr-defined]
        stores.append(store)
        return store

    return factory


def test_at_durability_full_with_inline_syncs_off_the_fsync_runs_off_the_loop_and_is_durable(
    tmp_path: Path,
) -> None:
    url, path = _db(tmp_path, "full")
    stores: list[_ThreadRecordingStore] = []
    factory = _recording_factory(_ThreadRecordingStore, path, stores)

    async def main() -> tuple[int, list[int]]:
        loop_thread = threading.get_ident()
        async with QueueClient(
            url, inline=True, inline_sync_limit=0, kernel_fsync=False, store_factory=factory
        ) as client:
            await client.submit_many([NewTask("q", "a", "{}") for _ in range(3)])
            claimed = await client.claim("w1", ["q"], 10, 10.0)
            done = await client.apply(Complete(claimed[0].id, claimed[0].epoch, "1", "w1", 0.0))
            assert done.ok
            return loop_thread, [t.id for t in claimed]

    loop_thread, ids = asyncio.run(main())
    store = stores[0]
    assert store.claim_threads == [loop_thread]
    # the submit's and the completion's (the claim needs none: see _unsynced)
    assert len(store.sync_threads) == 2 and loop_thread not in store.sync_threads
    # what the client acknowledged is in the file, as another connection sees it
    reader = open_store(url)
    states = [r.state for r in reader.get_tasks(ids)]
    reader.close()
    assert sorted(states) == ["running", "running", "succeeded"]


def test_a_cancelled_thread_call_keeps_the_connection_until_it_is_done(tmp_path: Path) -> None:
    url, _ = _db(tmp_path, "normal")
    events: list[tuple[str, float]] = []

    def slow_read(store: SqliteStore) -> None:
        events.append(("thread-start", time.monotonic()))
        store.count_tasks()
        time.sleep(0.3)
        events.append(("thread-end", time.monotonic()))

    async def main() -> None:
        async with QueueClient(url, inline=True) as client:
            store = client.store
            assert isinstance(store, SqliteStore)
            call = asyncio.create_task(client.run(slow_read, store))
            await asyncio.sleep(0.05)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            await client.submit_many([NewTask("q", "a", "{}")])
            events.append(("inline-done", time.monotonic()))

    asyncio.run(main())
    assert [e for e, _ in events] == ["thread-start", "thread-end", "inline-done"]


def test_the_inline_client_leaves_checkpoints_to_its_own_thread(tmp_path: Path) -> None:
    url, path = _db(tmp_path, "normal")

    async def main() -> int:
        async with QueueClient(url, inline=True) as client:
            store = client.store
            assert isinstance(store, SqliteStore)
            auto = store._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
            size_before = path.stat().st_size
            for _ in range(20):
                await client.submit_many(
                    [NewTask("q", "a", json.dumps("x" * 2000)) for _ in range(50)]
                )
            deadline = time.monotonic() + 10
            # the WAL's pages reach the database file without any commit checkpointing
            while path.stat().st_size <= size_before + 1_000_000:
                assert time.monotonic() < deadline, "no checkpoint copied the WAL"
                await asyncio.sleep(0.05)
            return int(auto)

    assert asyncio.run(main()) == 0


def test_switching_a_new_file_to_wal_waits_for_another_process_that_holds_it(
    tmp_path: Path,
) -> None:
    """Two processes opening a new file at once: the one that finds the file taken
    keeps trying. (The store's own connection has no busy timeout: it waits on the
    event loop, not in SQLite.)"""
    import sqlite3
    import threading
    import time

    from fleetops.store._sqlite import use_wal

    path = tmp_path / "new.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    holder.execute("INSERT INTO t VALUES (1)")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        other.execute("PRAGMA journal_mode=WAL")  # what a plain switch meets

    def release() -> None:
        time.sleep(0.2)
        holder.execute("COMMIT")

    thread = threading.Thread(target=release)
    thread.start()
    began = time.monotonic()
    use_wal(other, timeout=10)
    thread.join()
    assert time.monotonic() - began >= 0.15  # it waited for the holder
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT x FROM t").fetchall() == [(1,)]
    holder.close()
    other.close()


WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=5)
conn.execute("PRAGMA wal_autocheckpoint=0")  # as a worker's: checkpoints are not its job
until = time.monotonic() + float(sys.argv[2])
while time.monotonic() < until:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO events (at, kind, data) VALUES (?, 'load', ?)", [(time.time(), "x" * 3000)] * 4
    )
    conn.execute("COMMIT")
    time.sleep(0.0002)  # a worker does other work between its transactions
"""


def _largest_wal(tmp_path: Path, restart_frames: int) -> tuple[int, int]:
    """Run the writer for 2 s against a fresh store with a checkpointer; answer the
    largest the WAL file grew and how many times the checkpointer restarted it."""
    url, path = _db(tmp_path, "normal")
    open_store(url).close()  # the schema
    wal = Path(f"{path}-wal")
    checkpointer = SqliteCheckpointer(
        path, durability="normal", interval=0.02, restart_frames=restart_frames, fill_ahead=0
    )
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "2.0"])
    largest = 0
    try:
        while writer.poll() is None:
            largest = max(largest, wal.stat().st_size if wal.exists() else 0)
            time.sleep(0.01)
    finally:
        writer.wait(10)
        checkpointer.close()
    assert writer.returncode == 0
    return largest, checkpointer.restarts


def test_the_wal_starts_over_under_steady_writes_instead_of_growing(tmp_path: Path) -> None:
    """A process that commits steadily always leaves frames newer than the last
    passive checkpoint, so SQLite never starts the WAL over by itself: it grows for as
    long as the load lasts (the control below). The checkpointer restarts it once it
    passes its limit."""
    bounded, restarts = _largest_wal(tmp_path / "restart", 256)
    grown, none = _largest_wal(tmp_path / "passive-only", 10**9)
    assert restarts > 0 and none == 0
    assert bounded * 3 < grown, f"with restarts {bounded} bytes, without {grown}"


FILLED_WRITER = """
import os, sys
from fleetops.store import NewTask, SqliteStore
from fleetops.store._sqlite import SqliteCheckpointer
path = sys.argv[1]
store = SqliteStore(path, durability="full")
store.migrate()
store.set_autocheckpoint(0)  # as an inline worker's: the WAL keeps every frame
store.submit([NewTask("q", "a", '{"n": 0}')], 1.0)
wal = path + "-wal"
checkpointer = SqliteCheckpointer(
    path, durability="full", interval=3600, fill_ahead=1 << 20, disk_reserve=0
)
frames = (os.path.getsize(wal) - 32) // (4096 + 24)
assert checkpointer.fill(frames) > 0
filled = os.path.getsize(wal)
for n in range(1, 51):  # each acknowledged: committed and synced, over the zeros
    store.submit([NewTask("q", "a", '{"n": %d}' % n)], 1.0)
print(filled, os.path.getsize(wal), flush=True)
sys.stdin.read()  # killed here, without a checkpoint or a clean close
"""


def test_a_filled_wal_keeps_every_commit_written_over_its_zeros_through_a_crash(
    tmp_path: Path,
) -> None:
    """The checkpointer writes zeros into the WAL file ahead of its last frame; the
    writers' frames then go over them. A process killed after 50 acknowledged
    submits leaves a WAL of frames followed by zeros: recovery keeps all 50 commits
    (it stops at the first zero frame, which is no frame) and the database is whole."""
    _, path = _db(tmp_path, "full")
    with subprocess.Popen(
        [sys.executable, "-c", FILLED_WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as writer:
        watchdog = threading.Timer(60, writer.kill)  # a writer stuck on a broken WAL
        watchdog.start()
        try:
            assert writer.stdout is not None
            line = writer.stdout.readline()
        finally:
            watchdog.cancel()
            writer.kill()  # SIGKILL: no checkpoint, no clean close
            writer.wait(10)
    assert line, "the writer died before its submits were acknowledged"
    filled, after = map(int, line.split())
    assert filled >= (1 << 20), "the WAL was written out ahead"
    assert after == filled, "the 50 commits went over the zeros, not past the end"
    conn = sqlite3.connect(str(path))
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    payloads = [json.loads(p)["n"] for (p,) in conn.execute("SELECT payload FROM tasks")]
    conn.close()
    assert sorted(payloads) == list(range(51))


def test_the_kernel_fsyncs_real_files_and_refuses_what_has_no_fsync(tmp_path: Path) -> None:
    """AsyncFsync on this kernel: fdatasyncs of a file, several in flight at once, are
    each answered on the loop; a pipe, which has no fsync, is refused at once and
    nothing is left in flight; a closed context refuses too."""
    target = tmp_path / "data"

    async def main() -> None:
        aio = AsyncFsync.open(asyncio.get_running_loop())
        assert aio is not None, "this kernel has AIO (Linux 4.18 or later)"
        fd = os.open(target, os.O_RDWR | os.O_CREAT)
        read_end, write_end = os.pipe()
        try:
            for n in range(5):
                os.pwrite(fd, b"x" * 4096, n * 4096)
            synced = [aio.fdatasync(fd) for _ in range(5)]
            assert len(aio.inflight()) <= 5
            assert await asyncio.wait_for(asyncio.gather(*synced), 10) == [None] * 5
            assert aio.inflight() == []
            with pytest.raises(Refused) as refused:
                aio.fdatasync(write_end)
            assert refused.value.errno == errno.EINVAL and aio.inflight() == []
        finally:
            aio.close()
            for f in (fd, read_end, write_end):
                os.close(f)
        with pytest.raises(Refused):
            aio.fdatasync(fd)

    asyncio.run(main())


def test_without_kernel_aio_there_is_no_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aio_module.platform, "machine", lambda: "sparc64")

    async def main() -> None:
        assert AsyncFsync.open(asyncio.get_running_loop()) is None

    asyncio.run(main())


def test_the_wal_fill_waits_for_a_free_write_lock_and_stops_at_the_wal_size_limit(
    tmp_path: Path,
) -> None:
    """The zeros are written only while the checkpointer holds SQLite's write lock, so
    no writer appends meanwhile: with the lock busy, a round writes nothing. It never
    changes what is in the file already, and never writes past the WAL's size limit
    (where SQLite would cut the file back)."""
    url, path = _db(tmp_path, "normal")
    store = open_store(url)
    store.submit([NewTask("q", "a", "{}")], 1.0)
    wal = Path(f"{path}-wal")
    before = wal.read_bytes()
    limit = 64 * WAL_FRAME_BYTES
    checkpointer = SqliteCheckpointer(
        path,
        durability="normal",
        interval=3600,
        restart_frames=64,
        fill_ahead=1 << 30,
        disk_reserve=0,  # the fill itself is tested here, on any disk
    )
    try:
        with write_lock_held(path, 0.3) as released:
            assert checkpointer.fill(0) == 0
            assert wal.read_bytes() == before
        assert released.wait(5)
        assert checkpointer.checkpoint()  # a round: a passive checkpoint, then the fill
        assert checkpointer.filled == limit - len(before)
        content = wal.read_bytes()
        assert len(content) == limit
        assert content[: len(before)] == before and content[len(before) :].count(0) == (
            limit - len(before)
        )
        assert checkpointer.fill(0) == 0  # at the limit
        store.submit([NewTask("q", "a", "{}")], 2.0)  # and SQLite goes on writing it
        assert len(store.list_tasks()) == 2
    finally:
        checkpointer.close()
        store.close()


def _blocking_syncs(store: Any) -> tuple[list[float], threading.Event]:
    """Make each fsync of ``store`` wait until the test lets it go: returns the times
    the syncs began (one entry per sync) and the event that lets them go."""
    begun: list[float] = []
    release = threading.Event()
    sync_wal = store.sync_wal

    def blocked_sync() -> None:
        begun.append(time.monotonic())
        assert release.wait(10)
        sync_wal()

    store.sync_wal = blocked_sync
    return begun, release


def _wait_for(condition: Any, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_at_durability_full_a_write_is_acknowledged_only_after_its_fsync_which_holds_no_lock(
    tmp_path: Path,
) -> None:
    """The inline client returns a submit or a completion only once its fsync is done;
    meanwhile the write lock and the connection are free: another process writes, and
    the same client claims."""
    url, path = _db(tmp_path, "full")

    async def main() -> None:
        async with QueueClient(url, inline=True, inline_sync_limit=0, kernel_fsync=False) as client:
            await client.submit_many([NewTask("q", "a", "{}")])
            begun, release = _blocking_syncs(client.store)
            submit = asyncio.create_task(client.submit_many([NewTask("q", "b", "{}")]))
            assert await asyncio.to_thread(_wait_for, lambda: len(begun) == 1)
            await asyncio.sleep(0.05)
            assert not submit.done(), "acknowledged before its fsync"
            # the lock is free: another connection writes at once (it would wait 0 s)
            other = sqlite3.connect(str(path), isolation_level=None, timeout=0)
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            other.close()
            # and the client's connection is free: a claim (which needs no fsync) goes in
            claimed = await client.claim("w1", ["q"], 10, 10.0)
            assert {t.agent for t in claimed} == {"a", "b"}  # b is committed, not yet acked
            assert not submit.done()
            release.set()
            (submitted,) = await submit
            assert submitted.created

    asyncio.run(main())


def _committed_states(path: Path, ids: list[int]) -> list[str]:
    """What another connection reads: committed, whether or not synced."""
    reader = sqlite3.connect(str(path))
    marks = ",".join("?" * len(ids))
    rows = reader.execute(f"SELECT state FROM tasks WHERE id IN ({marks})", ids).fetchall()
    reader.close()
    return sorted(r[0] for r in rows)


def test_at_durability_full_group_commits_go_on_while_an_fsync_runs_and_one_fsync_covers_them(
    tmp_path: Path,
) -> None:
    """A completion that comes while the last group commit's fsync runs is committed
    at once, not after that fsync; it is acknowledged only after an fsync that began
    after its commit, and every completion that came meanwhile shares that one."""
    url, path = _db(tmp_path, "full")

    async def main() -> None:
        async with QueueClient(url, inline=True, inline_sync_limit=0, kernel_fsync=False) as client:
            await client.submit_many([NewTask("q", "a", "{}") for _ in range(4)])
            claimed = await client.claim("w1", ["q"], 4, 30.0)
            ids = [t.id for t in claimed]
            begun, release = _blocking_syncs(client.store)

            def complete(i: int) -> asyncio.Task[Any]:
                op = Complete(claimed[i].id, claimed[i].epoch, "1", "w1", 0.0)
                return asyncio.create_task(client.apply(op))

            first = complete(0)
            assert await asyncio.to_thread(_wait_for, lambda: len(begun) == 1)
            later = [complete(i) for i in (1, 2, 3)]
            # committed while the first fsync still runs (the old client waited for it)
            assert await asyncio.to_thread(
                _wait_for, lambda: _committed_states(path, ids) == ["succeeded"] * 4
            )
            assert len(begun) == 1 and not first.done() and not any(t.done() for t in later)
            release.set()
            assert (await first).ok
            # the three were committed after the first fsync began: it does not cover
            # them; the next one does, and one is enough for all three
            for task in later:
                assert (await task).ok
            assert len(begun) == 2

    asyncio.run(main())


def test_at_durability_full_a_submit_rings_the_workers_bell_before_its_fsync_ends(
    tmp_path: Path,
) -> None:
    """Workers may run a committed task before its submit is on disk (whatever they
    write is synced, and that syncs the submit too): so the bell does not wait for the
    disk, only the submitter's acknowledgement does."""
    url, path = _db(tmp_path, "full")

    async def main() -> None:
        bell = Doorbell()
        heard = asyncio.Event()
        bell.listen(heard.set)
        try:
            async with QueueClient(
                url, inline=True, inline_sync_limit=0, kernel_fsync=False
            ) as client:
                await client.run(
                    client.store.register_worker,
                    "w1",
                    "q",
                    os.getpid(),
                    socket.gethostname(),
                    10,
                    time.time(),
                    bell.address,
                )
                begun, release = _blocking_syncs(client.store)
                try:
                    submit = asyncio.create_task(client.submit_many([NewTask("q", "a", "{}")]))
                    # the fsync cannot end before release: a bell heard now came first
                    await asyncio.wait_for(heard.wait(), 10)
                    assert not submit.done()
                    assert await asyncio.to_thread(_wait_for, lambda: len(begun) == 1)
                    await asyncio.sleep(0.05)
                    assert not submit.done(), "acknowledged before its fsync"
                finally:
                    release.set()
                (submitted,) = await submit
                assert submitted.created
        finally:
            bell.close()

    asyncio.run(main())


def _recorded_syncs(store: Any) -> list[float]:
    """The times each fsync of ``store`` began, as they run (one entry per fsync)."""
    begun: list[float] = []
    sync_wal = store.sync_wal

    def recorded_sync() -> None:
        begun.append(time.monotonic())
        sync_wal()

    store.sync_wal = recorded_sync
    return begun


async def _outcome_client(url: str, delay: float) -> tuple[QueueClient, list[Any]]:
    """An open inline client whose fsyncs for outcomes start at most every ``delay``
    s (on its store thread, so that they can be watched), and 3 tasks it holds."""
    client = QueueClient(
        url, inline=True, inline_sync_limit=0, kernel_fsync=False, outcome_sync_delay=delay
    )
    await client.__aenter__()
    await client.submit_many([NewTask("q", "a", "{}") for _ in range(3)])
    return client, await client.claim("w1", ["q"], 3, 30.0)


def _complete(client: QueueClient, task: Any) -> asyncio.Task[Any]:
    return asyncio.create_task(client.apply(Complete(task.id, task.epoch, "1", "w1", 0.0)))


def test_at_durability_full_outcomes_within_the_delay_share_one_fsync_begun_after_them(
    tmp_path: Path,
) -> None:
    """With outcome_sync_delay, the first outcome after a quiet spell is synced at
    once; outcomes committed within the delay after it are committed at once too, but
    acknowledged only after one fsync, begun after their commits, at the delay's end."""
    url, path = _db(tmp_path, "full")

    async def main() -> None:
        client, (first, second, third) = await _outcome_client(url, 0.5)
        try:
            begun = _recorded_syncs(client.store)
            assert (await _complete(client, first)).ok
            assert len(begun) == 1  # at once: no outcome was synced before it
            later = [_complete(client, second), _complete(client, third)]
            ids = [second.id, third.id]
            assert await asyncio.to_thread(
                _wait_for, lambda: _committed_states(path, ids) == ["succeeded"] * 2
            )
            committed_by = time.monotonic()
            await asyncio.sleep(0.05)
            assert len(begun) == 1 and not any(t.done() for t in later), "acked unsynced"
            assert [r.ok for r in await asyncio.gather(*later)] == [True, True]
            # one fsync for both, begun after both were committed
            assert len(begun) == 2 and begun[1] >= committed_by
        finally:
            await client.aclose()

    asyncio.run(main())


def test_another_writes_fsync_answers_the_outcomes_waiting_for_theirs_at_once(
    tmp_path: Path,
) -> None:
    """An outcome waiting for the shared fsync is answered by the next fsync any other
    write of the client makes (an effect's journal entry here), not at the delay's
    end: that fsync began after the outcome's commit, so it covers it."""
    url, _ = _db(tmp_path, "full")

    async def main() -> None:
        client, (first, second, third) = await _outcome_client(url, 60.0)
        try:
            begun = _recorded_syncs(client.store)
            assert (await _complete(client, first)).ok
            waiting = _complete(client, second)
            await asyncio.sleep(0.05)
            assert not waiting.done() and len(begun) == 1
            journaled = await asyncio.wait_for(
                client.apply(EffectBegin(third.id, third.epoch, "charge")), 10
            )
            assert journaled.ok
            assert (await asyncio.wait_for(waiting, 10)).ok
            assert len(begun) == 2  # the effect's fsync answered both
        finally:
            await client.aclose()

    asyncio.run(main())


def test_closing_the_client_syncs_and_answers_the_outcomes_still_waiting(
    tmp_path: Path,
) -> None:
    """Closing does not wait out the delay, nor leave an outcome unanswered: the
    outcomes waiting get their fsync at once."""
    url, path = _db(tmp_path, "full")

    async def main() -> None:
        client, (first, second, _) = await _outcome_client(url, 60.0)
        begun = _recorded_syncs(client.store)
        assert (await _complete(client, first)).ok
        waiting = _complete(client, second)
        assert await asyncio.to_thread(
            _wait_for, lambda: _committed_states(path, [second.id]) == ["succeeded"]
        )
        assert not waiting.done()
        await asyncio.wait_for(client.aclose(), 10)
        assert (await asyncio.wait_for(waiting, 10)).ok
        assert len(begun) == 2

    asyncio.run(main())


def test_a_failed_shared_fsync_fails_every_outcome_it_was_to_cover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcomes that waited for a shared fsync get its error, not an
    acknowledgement; the client goes on."""
    url, _ = _db(tmp_path, "full")
    failing = threading.Event()
    real = sqlite_module._fdatasync

    def flaky_fdatasync(fd: int) -> None:
        if failing.is_set():
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(sqlite_module, "_fdatasync", flaky_fdatasync)

    async def main() -> None:
        client, (first, second, third) = await _outcome_client(url, 0.2)
        try:
            assert (await _complete(client, first)).ok
            failing.set()
            outcomes = await asyncio.gather(
                _complete(client, second), _complete(client, third), return_exceptions=True
            )
            assert all(isinstance(o, StoreError) for o in outcomes), outcomes
            assert "Input/output error" in str(outcomes[0])
        finally:
            failing.clear()
            await client.aclose()

    asyncio.run(main())


def test_a_negative_outcome_sync_delay_is_refused_naming_the_field() -> None:
    with pytest.raises(ConfigError, match="outcome_sync_delay"):
        QueueClient("sqlite:///unused.db", outcome_sync_delay=-0.01)
    with pytest.raises(ConfigError, match="outcome_sync_delay"):
        WorkerSettings(outcome_sync_delay=-1.0)


@pytest.mark.parametrize("where", ["thread", "loop", "kernel"])
def test_a_failed_fsync_fails_every_write_it_was_to_cover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The inline client at durability full: a group commit's callers get the fsync's
    error, not an acknowledgement, and the client goes on (the next fsync may work),
    whether the fsync runs on the store thread, on the loop or in the kernel."""
    url, path = _db(tmp_path, "full")
    inline_sync_limit = 0.0 if where == "thread" else 60.0
    failing = threading.Event()
    real = sqlite_module._fdatasync
    real_kernel = AsyncFsync.fdatasync

    def flaky_fdatasync(fd: int) -> None:
        if failing.is_set():
            raise OSError(5, "Input/output error")
        real(fd)

    def flaky_kernel_fdatasync(aio: AsyncFsync, fd: int) -> asyncio.Future[None]:
        synced = real_kernel(aio, fd)  # the kernel's own, whose answer is replaced
        if not failing.is_set():
            return synced
        failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        synced.add_done_callback(lambda _: failed.set_exception(OSError(5, "Input/output error")))
        return failed

    monkeypatch.setattr(sqlite_module, "_fdatasync", flaky_fdatasync)
    monkeypatch.setattr(AsyncFsync, "fdatasync", flaky_kernel_fdatasync)

    async def main() -> None:
        async with QueueClient(
            url,
            inline=True,
            inline_sync_limit=inline_sync_limit,
            kernel_fsync=where == "kernel",
        ) as client:
            assert (client._aio is not None) == (where == "kernel"), "this kernel has AIO"
            await client.submit_many([NewTask("q", "a", "{}") for _ in range(3)])
            claimed = await client.claim("w1", ["q"], 3, 30.0)
            synced_inline, synced_kernel = client.syncs_inline, client.syncs_kernel
            failing.set()
            ops = [Complete(t.id, t.epoch, "1", "w1", 0.0) for t in claimed[:2]]
            outcomes = await asyncio.gather(
                *(client.apply(op) for op in ops), return_exceptions=True
            )
            assert all(isinstance(o, StoreError) for o in outcomes), outcomes
            assert "cannot sync the WAL" in str(outcomes[0])
            assert "Input/output error" in str(outcomes[0])
            assert (client.syncs_inline > synced_inline) == (where == "loop")
            assert (client.syncs_kernel > synced_kernel) == (where == "kernel")
            failing.clear()
            last = claimed[2]
            assert (await client.apply(Complete(last.id, last.epoch, "1", "w1", 0.0))).ok

    asyncio.run(main())


class _SyncRecordingStore(SqliteStore):
    """Notes each COMMIT and each fsync of the WAL, with the WAL's size at each: an
    fsync covers a commit when it comes after it and the file held it by then."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.events: list[tuple[Any, ...]] = []

    def _wal_size(self) -> int:
        return os.stat(f"{self.path}-wal").st_size

    def _note(self, kind: str) -> None:
        self.events.append((kind, self._wal_size()))

    def _retrying(self, sql: str, params: Any = ()) -> Any:
        cursor = super()._retrying(sql, params)
        if sql == "COMMIT":
            # SQLite itself must not wait for the disk inside COMMIT, with the lock held
            assert self._conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
            self._note("commit")
        return cursor

    def take(self) -> list[str]:
        kinds = [kind for kind, _ in self.events]
        self.events.clear()
        return kinds


class _KernelSyncStore(_SyncRecordingStore):
    """Notes each COMMIT and each fsync handed to the kernel, with the WAL's size at
    each, and holds each kernel fsync's answer (once the kernel has given it) until
    the test lets it go with :meth:`let_go`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: list[tuple[asyncio.Future[None], asyncio.Future[None]]] = []
        self.holding = asyncio.Event()

    def start_wal_sync(self, start: Callable[[int], Any]) -> Any:
        def held(fd: int) -> asyncio.Future[None]:
            synced = start(fd)
            self._note("sync")
            answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.held.append((synced, answer))
            self.holding.set()
            return answer

        return super().start_wal_sync(held)

    async def let_go(self) -> None:
        held, self.held = self.held, []
        self.holding.clear()
        for synced, answer in held:
            await synced  # the kernel's fsync itself succeeded
            answer.set_result(None)

    def forget(self) -> None:
        self.events.clear()


def test_at_durability_full_the_kernel_fsyncs_after_the_commit_while_the_loop_goes_on(
    tmp_path: Path,
) -> None:
    """Where the kernel has AIO, the fsync of a submit or a completion is handed to it
    right after the COMMIT; the caller is answered once the kernel is done, and the
    event loop, the connection and the write lock are free meanwhile."""
    url, path = _db(tmp_path, "full")
    stores: list[_KernelSyncStore] = []

    async def main() -> list[int]:
        async with QueueClient(
            url, inline=True, store_factory=_recording_factory(_KernelSyncStore, path, stores)
        ) as client:
            assert client._aio is not None, "this kernel has AIO (Linux 4.18 or later)"
            store = stores[0]
            submit = asyncio.create_task(client.submit_many([NewTask("q", "a", "{}")]))
            await asyncio.wait_for(store.holding.wait(), 10)
            (commit, committed), (sync, synced) = store.events
            assert (commit, sync) == ("commit", "sync") and synced >= committed
            await asyncio.sleep(0.05)
            assert not submit.done(), "answered before the kernel's fsync"
            # the loop and the connection are free: a claim (which needs no fsync) goes
            # in, and so does another process's write
            claimed = await client.claim("w1", ["q"], 10, 30.0)
            other = sqlite3.connect(str(path), isolation_level=None, timeout=0)
            other.execute("BEGIN IMMEDIATE")
            other.execute("ROLLBACK")
            other.close()
            assert not submit.done()
            await store.let_go()
            (submitted,) = await submit
            assert [t.id for t in claimed] == [submitted.id]
            store.events.clear()
            done = asyncio.create_task(
                client.apply(Complete(claimed[0].id, claimed[0].epoch, "1", "w1", 0.0))
            )
            await asyncio.wait_for(store.holding.wait(), 10)
            assert [kind for kind, _ in store.events] == ["commit", "sync"]
            assert not done.done()
            await store.let_go()
            assert (await done).ok
            assert client.syncs_kernel == 2 and client.syncs_inline == client.syncs_on_thread == 0
            return [submitted.id]

    ids = asyncio.run(main())
    assert _committed_states(path, ids) == ["succeeded"]


@pytest.mark.parametrize("refusal", ["EINVAL", "EAGAIN"])
def test_when_the_kernel_will_not_fsync_the_client_does_it_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """A kernel that refuses an fsync (EINVAL: the file system has no asynchronous
    fsync) gets none again from this client; one whose queue is full (EAGAIN) gets the
    next. Either way the write is synced on the loop and then answered."""
    url, path = _db(tmp_path, "full")
    code = getattr(errno, refusal)
    refused: list[int] = []
    real_kernel = AsyncFsync.fdatasync

    def refusing(aio: AsyncFsync, fd: int) -> asyncio.Future[None]:
        if not refused:
            refused.append(fd)
            raise Refused(code)
        return real_kernel(aio, fd)

    monkeypatch.setattr(AsyncFsync, "fdatasync", refusing)

    async def main() -> None:
        async with QueueClient(url, inline=True) as client:
            assert client._aio is not None
            await client.submit_many([NewTask("q", "a", "{}")])
            assert refused and client.syncs_inline == 1 and client.syncs_kernel == 0
            await client.submit_many([NewTask("q", "a", "{}")])
            if refusal == "EINVAL":
                assert client._aio is None and client.syncs_inline == 2
            else:
                assert client._aio is not None and client.syncs_kernel == 1

    asyncio.run(main())
    reader = open_store(url)
    assert len(reader.list_tasks()) == 2
    reader.close()


def test_a_write_waiting_for_an_fsync_that_is_cancelled_fails_and_does_not_hang(
    tmp_path: Path,
) -> None:
    url, _ = _db(tmp_path, "full")

    async def main() -> None:
        async with QueueClient(url, inline=True, inline_sync_limit=0, kernel_fsync=False) as client:
            begun, release = _blocking_syncs(client.store)
            try:
                submit = asyncio.create_task(client.submit_many([NewTask("q", "a", "{}")]))
                assert await asyncio.to_thread(_wait_for, lambda: len(begun) == 1)
                syncer = client._syncer
                assert syncer is not None
                syncer.cancel()
            finally:
                release.set()
            with pytest.raises(Closed, match="before the write was on disk"):
                await asyncio.wait_for(submit, 10)

    asyncio.run(main())


class _SyncThreadStore(_SyncRecordingStore):
    """Notes each COMMIT and each fsync of the WAL: the thread it ran on and the WAL's
    size then. Each fsync advances ``clock`` by ``delay`` seconds (a slow disk)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay = 0.0
        self.clock: VirtualClock | None = None

    def _note(self, kind: str) -> None:
        self.events.append((kind, threading.get_ident(), self._wal_size()))

    def sync_wal(self) -> None:
        super().sync_wal()
        if self.clock is not None:
            self.clock.advance(self.delay)
        self._note("sync")

    def syncs(self) -> list[int]:
        return [thread for kind, thread, _ in self.events if kind == "sync"]

    def forget(self) -> None:
        self.events.clear()


def test_at_durability_full_the_fsync_runs_on_the_loop_after_its_commit_and_before_the_answer(
    tmp_path: Path,
) -> None:
    """The fsync of a submit or a completion runs on the event loop, right after the
    COMMIT and before the caller is answered; a claim takes none."""
    url, path = _db(tmp_path, "full")
    stores: list[_SyncThreadStore] = []

    async def main() -> tuple[int, list[int]]:
        loop_thread = threading.get_ident()
        async with QueueClient(
            url,
            inline=True,
            inline_sync_limit=60.0,
            kernel_fsync=False,
            store_factory=_recording_factory(_SyncThreadStore, path, stores),
        ) as client:
            store = stores[0]
            submitted = await client.submit_many([NewTask("q", "a", "{}")])
            # answered: its COMMIT and then an fsync covering it, both on the loop
            (commit, synced) = store.events
            assert commit[:2] == ("commit", loop_thread) and synced[:2] == ("sync", loop_thread)
            assert synced[2] >= commit[2]
            store.events.clear()
            claimed = await client.claim("w1", ["q"], 10, 30.0)
            assert [kind for kind, _, _ in store.events] == ["commit"]
            store.events.clear()
            done = await client.apply(Complete(claimed[0].id, claimed[0].epoch, "1", "w1", 0.0))
            assert done.ok
            assert [e[:2] for e in store.events] == [("commit", loop_thread), ("sync", loop_thread)]
            assert client.syncs_inline == 2 and client.syncs_on_thread == 0
            assert [t.id for t in claimed] == [submitted[0].id]
            return loop_thread, [t.id for t in claimed]

    _, ids = asyncio.run(main())
    # what the client acknowledged is in the file, as another connection sees it
    assert _committed_states(path, ids) == ["succeeded"]


def test_a_slow_disk_sends_the_fsyncs_to_the_thread_for_a_while_longer_if_still_slow(
    tmp_path: Path,
) -> None:
    """A slow disk must not keep blocking the event loop. One slow fsync among quick
    ones (a stall of the whole host) changes nothing; once most recent inline fsyncs
    are slow, the next ones run on the store thread for INLINE_SYNC_BACKOFF_SECONDS;
    then one is tried inline again, and if it is slow too, the thread keeps them
    twice as long."""
    url, path = _db(tmp_path, "full")
    stores: list[_SyncThreadStore] = []
    clock = VirtualClock(start=T_START)
    backoff = INLINE_SYNC_BACKOFF_SECONDS[0]

    async def main() -> tuple[int, list[int], int]:
        loop_thread = threading.get_ident()
        async with QueueClient(
            url,
            inline=True,
            clock=clock,
            inline_sync_limit=0.01,
            kernel_fsync=False,
            store_factory=_recording_factory(_SyncThreadStore, path, stores),
        ) as client:
            store = stores[0]
            store.clock = clock

            async def submit(delay: float = 0.0) -> None:
                store.delay = delay
                await client.submit_many([NewTask("q", "a", "{}")])

            for delay in (0, 0, 0, 0, 0, 0.05, 0):  # 0-6: a lone stall: all on the loop
                await submit(delay)
            slow = 0
            while store.syncs()[-1] == loop_thread and slow < 20:  # the disk turns slow
                await submit(0.05)
                slow += 1
            await submit()  # on the loop still, or the first on the thread
            clock.advance(backoff)
            await submit(0.05)  # tried on the loop again: slow again
            clock.advance(backoff)
            await submit()  # still on the thread: the back-off doubled
            clock.advance(backoff)
            await submit()  # on the loop, quick
            await submit()  # on the loop
            return loop_thread, store.syncs(), slow

    loop, threads, slow = asyncio.run(main())
    where = ["loop" if thread == loop else "thread" for thread in threads]
    assert where[:7] == ["loop"] * 7
    assert 1 <= slow < 20, "slow inline fsyncs must send the next ones to the thread"
    assert where[7 : 7 + slow] == ["loop"] * (slow - 1) + ["thread"]
    assert where[7 + slow :] == ["thread", "loop", "thread", "loop", "loop"]


def test_at_durability_full_only_what_is_acknowledged_waits_for_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Submits and completions are synced before they are acknowledged, by an fsync of
    the WAL after the COMMIT (the write lock already released). A claim or a
    heartbeat is not synced: a power cut can only take it with the machine its worker
    ran on, and leaves its task queued (see SqliteStore._unsynced). A caller that
    defers the fsync (the inline client, to run it on a thread) is told it is due."""
    _, path = _db(tmp_path, "full")
    store = _SyncRecordingStore(path, durability="full")
    store.migrate()
    wal = Path(f"{path}-wal")

    def recording_fdatasync(fd: int) -> None:
        assert os.fstat(fd).st_ino == wal.stat().st_ino, "the fsync must be of the WAL"
        store.events.append(("sync", os.fstat(fd).st_size))
        os.fsync(fd)

    monkeypatch.setattr(sqlite_module, "_fdatasync", recording_fdatasync)
    store.register_worker("w1", "q", None, None, 10, 1.0)
    store.take()
    (submitted,) = store.submit([NewTask("q", "a", "{}")], 1.0)
    (commit, committed), (sync, synced) = store.events
    assert (commit, sync) == ("commit", "sync") and synced >= committed
    store.take()
    (claimed,) = store.claim("w1", ["q"], 1, 1.0, 30.0)
    assert store.take() == ["commit"]
    assert store.heartbeat("w1", 2.0, 30.0, 1, 0) == {submitted.id: claimed.epoch}
    assert store.take() == ["commit"]
    assert store.beat("w1", 2.1, 1, 0)
    assert store.take() == ["commit"]
    (done,) = store.apply([Complete(claimed.id, claimed.epoch, "1", "w1", 1.0)], 3.0)
    assert done.ok and store.take() == ["commit", "sync"]

    store.defer_sync = True  # as the inline client runs it at durability full
    store.submit([NewTask("q", "a", "{}")], 4.0)
    assert store.take() == ["commit"] and store.sync_pending
    store.sync_pending = False
    store.sync_wal()
    assert store.take() == ["sync"]
    store.claim("w1", ["q"], 1, 4.0, 30.0)
    assert store.take() == ["commit"] and not store.sync_pending
    store.defer_sync = False
    # a statement outside the store's transactions still syncs in SQLite's COMMIT
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    reader = open_store(f"sqlite:///{path}")
    assert sorted(r.state for r in reader.list_tasks()) == ["running", "succeeded"]
    reader.close()


def test_a_failed_fsync_is_an_error_not_an_acknowledgement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, path = _db(tmp_path, "full")
    store = SqliteStore(path, durability="full")
    store.migrate()

    def failing_fdatasync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(sqlite_module, "_fdatasync", failing_fdatasync)
    with pytest.raises(StoreError, match="cannot sync the WAL to disk.*Input/output error"):
        store.submit([NewTask("q", "a", "{}")], 1.0)
    store.close()


def test_changing_a_task_s_state_builds_no_temporary_table_per_row(tmp_path: Path) -> None:
    """Every claim and completion changes ``state``, so SQLite evaluates the WHERE term
    of each partial index that reads it, on the old row and on the new. An IN list
    there is coded as a temporary table filled on every evaluation (schema 7's
    tasks_done did that: a third of a claim's cost); the same term with OR is a few
    comparisons. The state changes of the hot path must open no temporary table."""
    store = open_store(f"sqlite:///{tmp_path / 'q.db'}?durability=normal")
    try:
        conn = sqlite3.connect(tmp_path / "q.db")
        for sql in (
            "UPDATE tasks SET state = 'running' WHERE id = ?",
            "UPDATE tasks SET state = 'succeeded', finished_at = 1.0 WHERE id = ?",
        ):
            opcodes = [row[1] for row in conn.execute(f"EXPLAIN {sql}", (1,))]
            assert "IdxInsert" in opcodes, sql  # the plan does maintain the indexes
            assert "OpenEphemeral" not in opcodes, sql
        # and the old term, put back, is what this test catches
        conn.execute("DROP INDEX tasks_done")
        conn.execute(
            "CREATE INDEX tasks_done ON tasks (state, queue, agent, finished_at) "
            "WHERE state IN ('succeeded', 'dead', 'cancelled')"
        )
        opcodes = [r[1] for r in conn.execute("EXPLAIN UPDATE tasks SET state = 'x' WHERE id = 1")]
        assert "OpenEphemeral" in opcodes
        conn.close()
    finally:
        store.close()


class _CountingStore(SqliteStore):
    """Counts the transactions that submit tasks; refuses any task of queue 'refused'."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.submit_transactions = 0

    def submit_groups(self, groups: Any) -> Any:
        if any(t.queue == "refused" for tasks, _ in groups for t in tasks):
            raise StoreError("refused on purpose")
        result = super().submit_groups(groups)
        self.submit_transactions += 1
        return result

    def forget(self) -> None:
        self.submit_transactions = 0

    def submit(self, tasks: Any, now: float) -> Any:
        if any(t.queue == "refused" for t in tasks):
            raise StoreError("refused on purpose")
        result = super().submit(tasks, now)
        self.submit_transactions += 1
        return result


def test_submits_made_while_one_commits_are_committed_together_each_with_its_own_time(
    tmp_path: Path,
) -> None:
    url, path = _db(tmp_path, "full")
    stores: list[_CountingStore] = []
    clock = VirtualClock(start=T_START)

    async def main() -> list[list[Submitted]]:
        async with QueueClient(
            url,
            inline=True,
            clock=clock,
            store_factory=_recording_factory(_CountingStore, path, stores),
        ) as client:
            with write_lock_held(path, 0.3):  # the first call waits for the lock
                calls = []
                for i in range(20):
                    task = [NewTask("q", "a", json.dumps(i)), NewTask("q", "a", json.dumps(i))]
                    calls.append(asyncio.create_task(client.submit_many(task)))
                    await asyncio.sleep(0)  # the call starts and stamps its time
                    clock.advance(STEP)  # far below the lock timeout, on the same clock
                answers = await asyncio.gather(*calls)
            rows = await client.run(client.store.list_tasks, None, None, None, 100)
            stamped = {row.id: (row.payload, row.created_at) for row in rows}
            for i, answer in enumerate(answers):
                assert [stamped[s.id] for s in answer] == [(json.dumps(i), T_START + i * STEP)] * 2
            return answers

    answers = asyncio.run(main())
    assert len({s.id for answer in answers for s in answer}) == 40
    # the first call alone, then the 19 that came while it waited, in one transaction
    assert stores[0].submit_transactions == 2


def test_a_refused_submit_among_waiting_ones_fails_alone(tmp_path: Path) -> None:
    url, path = _db(tmp_path, "full")
    stores: list[_CountingStore] = []

    async def main() -> tuple[list[object], int]:
        async with QueueClient(
            url, inline=True, store_factory=_recording_factory(_CountingStore, path, stores)
        ) as client:
            with write_lock_held(path, 0.3):
                calls = []
                for queue in ("q", "q", "refused", "q"):
                    calls.append(asyncio.create_task(client.submit_many([NewTask(queue, "a")])))
                    await asyncio.sleep(0)
                answers = await asyncio.gather(*calls, return_exceptions=True)
            counts = await client.run(client.store.count_tasks)
            return answers, sum(counts.values())

    answers, stored = asyncio.run(main())
    assert [type(a) for a in answers] == [list, list, StoreError, list]
    assert stored == 3


def test_submits_waiting_on_a_store_locked_too_long_all_fail_at_once(tmp_path: Path) -> None:
    # Tried one by one after their group failed, each would wait out the timeout
    # again, and the last ones would get through once the lock is let go.
    url, path = _db(tmp_path, "normal")

    def factory(u: str) -> SqliteStore:
        store = SqliteStore(path, durability="normal", lock_timeout=0.2)
        store.migrate()
        return store

    async def main() -> tuple[list[object], int]:
        async with QueueClient(url, inline=True, store_factory=factory) as client:
            with write_lock_held(path, 0.7):
                calls = []
                for _ in range(4):
                    calls.append(asyncio.create_task(client.submit_many([NewTask("q", "a")])))
                    await asyncio.sleep(0)
                answers = await asyncio.gather(*calls, return_exceptions=True)
            counts = await client.run(client.store.count_tasks)
            return answers, sum(counts.values())

    answers, stored = asyncio.run(main())
    assert [type(a) for a in answers] == [StoreUnavailable] * 4
    assert stored == 0
