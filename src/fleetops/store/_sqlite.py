"""The embedded store: one SQLite file in WAL mode.

Durability levels map to SQLite's ``synchronous`` setting in WAL mode:

``full`` (the default)
    every write is on disk before it returns: nothing acknowledged is lost even if
    the machine loses power.
``normal``
    commits survive any process crash (``kill -9`` included) but the last
    transactions before a power loss or kernel panic may roll back. Faster.

At ``full`` the store does not let SQLite fsync inside COMMIT (``synchronous=FULL``),
which would hold the write lock, and with it every other writer, for the length of
the fsync. It commits at ``NORMAL`` and then fsyncs the WAL file itself, after the
lock is released (:meth:`SqliteStore.sync_wal`). A WAL is one file written in order,
and recovery keeps a commit only if every frame before it is intact (their checksums
are chained), so one fsync makes every commit written before it durable, whoever
wrote it, and the fsyncs of several writers overlap instead of queueing one after
another behind the lock. Another connection may read a commit before its fsync;
what it does with it is durable only once one of its own writes has been synced,
which makes everything before it durable too (an effect is journaled, and synced,
before it runs).

Many processes share one file. Writers take the lock with ``BEGIN IMMEDIATE`` and,
when another process holds it, retry with short sleeps of our own rather than
SQLite's coarse busy handler, which keeps tail latency low under contention.

A caller on an event loop can set :attr:`SqliteStore.nonblocking` for the length of
one call: a busy write lock then raises :class:`LockBusy` before anything was done,
and the caller retries the call after an asynchronous wait instead of sleeping in
the store (see ``QueueClient(inline=True)``); with :attr:`SqliteStore.defer_sync`
the call also leaves the fsync of its commit (at durability ``full``) to the caller:
:meth:`SqliteStore.sync_wal` (on the loop or a thread), or an fsync the kernel runs
(:meth:`SqliteStore.start_wal_sync`). Such a caller also turns SQLite's automatic
checkpoints off on its connection and leaves them to a :class:`SqliteCheckpointer`:
otherwise every so many commits one of them copies megabytes of WAL into the
database file and fsyncs it, on the event loop. The checkpointer also writes the WAL
file out ahead of its last frame (:meth:`SqliteCheckpointer.fill`).

A failed fsync of the WAL cannot be tried again: Linux marks the pages it could not
write clean, and reports the error once for each open file, so the next fsync of the
same file succeeds without those pages being on disk. A commit after them would be
acknowledged, and lost with them at a power cut, since recovery stops at the first
frame that is not intact. So the store that sees the failure raises
:class:`~fleetops.SyncFailed` for the commits it covered (never acknowledged, never
made again: they may be there), leaves a mark beside the file
(:data:`SYNC_FAILED_SUFFIX`, a new one with a token of its own for each failure,
under a lock file beside it), and from then on every store on the file, in this
process or any other, started before or after, refuses to acknowledge or to write
until the mark is gone. The fsyncs a store runs itself and those it hands to the
kernel use descriptors of their own, opened together, so that each learns of a
failure by itself; one the kernel ended well is answered only after every other it
had in flight then was read. The next write first repairs the store (a caller on an
event loop is told :class:`RepairNeeded` and runs :meth:`SqliteStore.repair` on its
thread): each of its descriptors is told what it was not told yet, a checkpoint
copies everything committed into the database file, syncs it, and empties the WAL
(``wal_checkpoint(TRUNCATE)``); only if all of that succeeded, and no fsync failed
meanwhile, is the mark removed. On a disk that keeps failing, every write fails with
SyncFailed. The checkpoint reads the frames from the kernel's cache; a page whose
write-back failed and which the kernel dropped since would be read as the disk has
it, which nothing short of a second copy of every frame could tell.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from .._exceptions import ConfigError, StoreError, StoreUnavailable, SyncFailed
from ._models import ClaimedTask, NewTask
from ._sql import (
    INSERT_SPAN,
    INSERT_TASK,
    NOT_DEAD_WORKER,
    PRUNE_SPANS,
    SELECT_TASK_TRACES,
    SELECT_TRACE,
    SPAN_SCHEMA,
    SUSPECT_TERMS,
    SqlStore,
    migration_scripts,
    task_params,
)

T = TypeVar("T")

DURABILITY_LEVELS = {"full": "FULL", "normal": "NORMAL"}
#: WAL frames (pages) past which the checkpointer makes the WAL start over (see
#: SqliteCheckpointer): 64 MiB of 4 KiB pages.
WAL_RESTART_FRAMES = 16384
#: A WAL frame: a 4 KiB page and its 24-byte header.
WAL_FRAME_BYTES = 4096 + 24
#: The WAL file's own header, before its first frame.
WAL_HEADER_BYTES = 32
#: The checkpointer keeps the WAL file written out this far past its last frame (up
#: to the WAL's size limit), in steps of :data:`WAL_FILL_STEP_BYTES` (see
#: :meth:`SqliteCheckpointer.fill`).
WAL_FILL_AHEAD_BYTES = 16 << 20
WAL_FILL_STEP_BYTES = 1 << 20
#: Free space the checkpointer keeps on the store's file system: room for the WAL to
#: reach its size limit (64 MiB) and for the database file to grow by what the
#: checkpoints copy into it. Below it, it writes no zeros ahead into the WAL and makes
#: the WAL start over every :data:`LOW_DISK_RESTART_FRAMES` frames. A WAL that took
#: the last free space, with zeros or with frames, would leave a checkpoint no room to
#: grow the database, so the WAL could never start over and every write would fail
#: until someone else freed space (seen on an 8 MiB file system: "database or disk is
#: full" within 0.2 s, and still after the space filled meanwhile was freed).
WAL_DISK_RESERVE_BYTES = 256 << 20
#: The WAL's size limit in frames while the disk is low: SQLite's own default (about
#: 4 MiB of 4 KiB pages).
LOW_DISK_RESTART_FRAMES = 1000
#: How long a WAL restart that must happen (see SqliteCheckpointer.checkpoint) waits
#: for the writers and readers before it, in milliseconds.
RESTART_WAIT_MS = 200
DEFAULT_DURABILITY = "full"
#: How long a writer keeps retrying for the write lock before giving up.
LOCK_TIMEOUT_SECONDS = 30.0

#: Rows per INSERT of new tasks: every size up to it is a statement of its own, kept
#: prepared in the connection's statement cache (see STATEMENT_CACHE).
INSERT_ROWS = 64
#: Prepared statements a connection keeps: the store's own, and an INSERT of each
#: size up to INSERT_ROWS.
STATEMENT_CACHE = 256


@lru_cache(maxsize=INSERT_ROWS)
def insert_tasks_sql(n: int) -> str:
    """INSERT_TASK for ``n`` rows in one statement."""
    head, _, row = INSERT_TASK.partition("VALUES ")
    return f"{head}VALUES {', '.join([row] * n)}"


#: The largest id SQLite gives a new row in order: one more than the largest so far,
#: up to 2**63 - 1, and from there ids at random.
LARGEST_TASK_ID = 2**63 - 1


#: Beside a store whose WAL could not be synced, ``<store file>-syncfailed`` holds the
#: first error until a checkpoint has put everything committed on disk (module doc).
SYNC_FAILED_SUFFIX = "-syncfailed"

#: fdatasync where the system has it (Linux), else fsync (macOS)
_fdatasync = getattr(os, "fdatasync", os.fsync)


class WalFile:
    """A WAL file held open by descriptor, opened again if SQLite replaced it (a new
    WAL after the last connection closed and deleted the old one). ``on_open`` runs
    after each opening."""

    def __init__(self, db_path: str, flags: int, on_open: Callable[[], None] | None = None) -> None:
        self.path = f"{db_path}-wal"
        self._flags = flags
        self._on_open = on_open
        self._fd: int | None = None
        self._inode = 0

    def current(self) -> int | None:
        """The descriptor of the WAL file there now; None if there is none."""
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            return None
        if self._fd is None or inode != self._inode:
            self.close()
            fd = os.open(self.path, self._flags)
            self._inode = os.fstat(fd).st_ino
            self._fd = fd
            if self._on_open is not None:
                self._on_open()
        return self._fd

    def opened(self) -> int | None:
        """The descriptor open now, if any (none is opened)."""
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def store_error(what: str, path: str | os.PathLike[str], exc: sqlite3.Error) -> StoreError:
    """The StoreError for ``exc`` from the SQLite ``what`` ('store', 'span store') at
    ``path``. A full disk says how much its file system has free and what to do: the
    statement, and the transaction it was in, were rolled back."""
    message = f"SQLite {what} {path}: {exc}"
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        try:
            mib = _free_bytes(os.path.dirname(os.path.abspath(path))) / (1 << 20)
            free = f"{mib:.1f} MiB free there"
        except OSError:
            free = "its free space unknown"
        message += (
            f" ({free}): free space on that file system (or move the store to a larger "
            "one); nothing of this write was kept, and it can be tried again"
        )
    return StoreError(message)


def is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether ``exc`` says another connection holds a lock (worth another try)."""
    message = str(exc)
    return "locked" in message or "busy" in message


def use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the database of ``conn`` in WAL mode, unless it is already.

    Switching needs the database to itself, and SQLite answers "database is locked"
    at once, without its busy handler, when another process holds it (two processes
    opening a new file together): such a try is repeated until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


@contextmanager
def _marks_locked(db_path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the lock that orders the marks of failed fsyncs of the store at
    ``db_path``: a mark is left, or a repaired one removed, by one store at a time
    (``<store file>-syncfailed.lock``, made at the first failure). Without fcntl, or
    when the lock file cannot be made, marks go unlocked."""
    try:
        import fcntl

        fd = os.open(f"{db_path}{SYNC_FAILED_SUFFIX}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # lets the lock go


def mark_sync_failed(db_path: str | os.PathLike[str], failure: str) -> None:
    """Leave the mark of a failed fsync of the WAL beside the store at ``db_path``
    (module doc): a token of its own on the first line, then ``failure``; a new mark
    replaces an older one, so that a repair that began before this failure can tell
    its mark from this one. Best effort: the disk may refuse this too, and the store
    that saw the failure refuses all the same."""
    mark = f"{db_path}{SYNC_FAILED_SUFFIX}"
    aside = f"{mark}.new.{os.getpid()}.{threading.get_ident()}"
    with _marks_locked(db_path):
        try:
            fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, f"{uuid.uuid4().hex}\n{failure}".encode())
            finally:
                os.close(fd)
            os.replace(aside, mark)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(aside)


def _read_mark(mark: str | os.PathLike[str]) -> tuple[str, str] | None:
    """The token and the failure a mark holds; None if there is no mark."""
    try:
        with open(mark, encoding="utf-8", errors="replace") as f:
            token, _, failure = f.read(400).partition("\n")
    except FileNotFoundError:
        return None
    except OSError:  # there, but unreadable: a failure all the same
        return "", "an earlier fsync failed"
    return token, failure.strip() or "an earlier fsync failed"


def _is_io_error(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the disk refused a read, a write or a sync (SQLITE_IOERR
    and its extended codes)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_IOERR


#: SQLITE_IOERR_FSYNC: SQLite's own fsync failed
_SQLITE_IOERR_FSYNC = sqlite3.SQLITE_IOERR | (4 << 8)


class LockBusy(StoreError):
    """Another connection holds the write lock (raised only in nonblocking mode,
    before the call changed anything: the whole call may be retried)."""


class RepairNeeded(LockBusy):
    """A failed fsync is to be repaired before the call may write (nonblocking mode:
    nothing was done). The repair copies the WAL and waits for the disk, so the caller
    runs :meth:`SqliteStore.repair` off its event loop, then the call again."""


class SqliteStore(SqlStore):
    """A :class:`~fleetops.store.Store` on one SQLite file."""

    dialect = "sqlite"
    migrations_dir = "sqlite"
    real_type = "REAL"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = DEFAULT_DURABILITY,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    ) -> None:
        if durability not in DURABILITY_LEVELS:
            raise ConfigError(
                "durability", durability, f"use one of {', '.join(DURABILITY_LEVELS)}"
            )
        self.path = Path(path)
        self.durability = durability
        self.url = f"sqlite:///{self.path}?durability={durability}"
        self.latest_version = migration_scripts("sqlite")[-1][0]
        self.lock_timeout = lock_timeout
        #: Raise LockBusy instead of waiting when the write lock is taken (see module doc).
        self.nonblocking = False
        #: At durability ``full``, leave the fsync of a call's commit to the caller
        #: (:meth:`sync_wal`, run on another thread: it waits for the disk), which
        #: :attr:`sync_pending` then asks for.
        self.defer_sync = False
        self.sync_pending = False
        #: inside :meth:`_unsynced`: commits are not synced
        self._unsynced_depth = 0
        #: the mark of a failed fsync of the WAL (module doc)
        self.sync_mark = Path(f"{self.path}{SYNC_FAILED_SUFFIX}")
        #: the failed fsync this store saw itself and has not repaired, if any
        self._sync_failure: str | None = None
        #: failed fsyncs this store has seen (a repair tells whether one came meanwhile)
        self._sync_failures = 0
        self._failures_lock = threading.Lock()
        self._wal = WalFile(str(self.path), os.O_RDONLY, self._sync_wal_directory)
        #: the kernel's fsyncs have a descriptor of their own (see start_wal_sync)
        self._wal_kernel = WalFile(str(self.path), os.O_RDONLY, self._sync_wal_directory)
        #: sync_wal may run on the event loop (the inline client) while the store
        #: thread commits (and syncs) for a call of its own: one at a time opens the fd
        self._wal_lock = threading.Lock()
        self._depth = 0
        self._spans_conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                check_same_thread=False,
                timeout=0,
                cached_statements=STATEMENT_CACHE,
            )
            use_wal(self._conn, lock_timeout)
            self._conn.execute(f"PRAGMA synchronous={DURABILITY_LEVELS[durability]}")
            self._conn.execute("PRAGMA busy_timeout=0")
            self._conn.execute("PRAGMA temp_store=MEMORY")
            self._conn.execute("PRAGMA cache_size=-32000")
            # a WAL that a burst grew is cut back to this size when it starts over
            self._conn.execute(f"PRAGMA journal_size_limit={WAL_RESTART_FRAMES * WAL_FRAME_BYTES}")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the SQLite store at {self.path}: {exc}") from exc

    # --- connection plumbing ------------------------------------------------------------------

    def _retrying(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.0002
        while True:
            try:
                return self._conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if not is_busy(exc):
                    raise store_error("store", self.path, exc) from exc
                if self.nonblocking and sql != "COMMIT":
                    # outside a transaction or at its BEGIN: nothing has been done yet
                    raise LockBusy(f"SQLite store {self.path}: {message}") from exc
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"SQLite store {self.path} stayed locked for {self.lock_timeout:.0f} s"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 1.5, 0.005)

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        full = self.durability == "full"
        if full and self._sync_failure_left():
            if self.nonblocking:
                raise RepairNeeded(f"SQLite store {self.path}: a failed fsync is to be repaired")
            self._repair()
        if full:  # the fsync comes after the COMMIT, with the lock released (module doc)
            self._conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self._retrying("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            try:
                self._retrying("COMMIT")
            except BaseException:  # the disk is full, say: none of the changes happened
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        finally:
            if full:  # a statement outside a transaction still syncs in SQLite's COMMIT
                self._conn.execute("PRAGMA synchronous=FULL")
        if full and not self._unsynced_depth:
            if self.defer_sync:
                self.sync_pending = True
            else:
                self.sync_wal()

    def sync_wal(self) -> None:
        """fsync the WAL file: every commit written to it so far, by any connection,
        is then on disk. (A caller that deferred the sync clears :attr:`sync_pending`
        itself, on its own thread, before it asks for this one.)

        Raises SyncFailed if the disk refuses, or refused an earlier fsync the store
        has not repaired since: the commit stands, but whether it would survive a
        power cut is unknown, so it must not be acknowledged. Raises StoreError if the
        WAL cannot be opened (nothing was synced, and nothing is marked).
        """
        with self._wal_lock:
            fd = self._open_wal(self._wal)
            if fd is not None:
                try:
                    _fdatasync(fd)
                except OSError as exc:
                    # recorded before the lock is let go: the next fsync of this
                    # descriptor succeeds, and must find the failure already known
                    raise self.sync_failed(exc) from exc
        self.check_synced(committed=True)  # another failed meanwhile: this proves nothing

    def start_wal_sync(self, start: Callable[[int], T]) -> T | None:
        """``start(fd)`` on a descriptor of the WAL file of its own, for an fsync that
        runs elsewhere (see fleetops.store._aio): what it answers, or None when there
        is no WAL (every commit is then in the synced database). The descriptor stays
        open while ``start`` runs; an fsync the kernel has accepted holds the file
        itself. Its own, because the kernel tells a failed write-back once to each
        open file: an fsync run here meanwhile learns of it by itself, whenever the
        kernel's result is read.

        Raises SyncFailed if an fsync failed before that the store has not repaired
        yet, and StoreError if the WAL cannot be opened, as :meth:`sync_wal` does.
        """
        self.check_synced(committed=True)
        with self._wal_lock:
            fd = self._open_wal(self._wal_kernel)
            return None if fd is None else start(fd)

    def _open_wal(self, wal: WalFile) -> int | None:
        """The descriptor of ``wal``, one of the store's two, which are opened (and
        opened again on a new WAL) together: a file opened after a failed write-back
        is never told of it, so one opened later than the other could miss a failure
        the other's fsync was told of and nobody has read yet."""
        try:
            fds = self._wal.current(), self._wal_kernel.current()
            return fds[wal is self._wal_kernel]
        except OSError as exc:
            raise StoreError(
                f"SQLite store {self.path}: cannot open its WAL to sync it ({exc}); "
                "the last write is committed but not acknowledged"
            ) from exc

    def sync_failed(self, exc: OSError) -> SyncFailed:
        """The error for a failed fsync of the WAL (``exc``, the system's). The store
        refuses writes and acknowledgements from now on, here and in every other
        process, until its next write has repaired it (module doc)."""
        failure = f"{exc} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
        self._record_failure(failure)
        mark_sync_failed(self.path, failure)
        return SyncFailed(
            f"SQLite store {self.path}: cannot sync the WAL to disk ({exc}): the last "
            "writes are committed but may not survive a power cut, so they are not "
            "acknowledged; the store takes no more writes until its next write has "
            "copied the WAL into the database file and synced it (check the disk: "
            f"dmesg; {self.sync_mark.name} beside the store marks the failure)"
        )

    def _record_failure(self, failure: str) -> None:
        with self._failures_lock:
            self._sync_failures += 1
            if self._sync_failure is None:
                self._sync_failure = failure

    def _sync_failure_left(self) -> str | None:
        """The failed fsync of the WAL not yet repaired, seen here or marked beside
        the file by another process; None if there is none (one stat, no read)."""
        if self._sync_failure is not None:
            return self._sync_failure
        if not os.path.exists(self.sync_mark):
            return None
        marked = _read_mark(self.sync_mark)
        return None if marked is None else marked[1]

    def check_synced(self, *, committed: bool = False) -> None:
        """Raise SyncFailed if an fsync of the WAL failed and the store was not
        repaired since: no later fsync proves that a commit is on disk.
        ``committed``: the caller's write is committed already (say so)."""
        failure = self._sync_failure_left()
        if failure is not None:
            raise SyncFailed(self._refusal(failure, "not repaired yet", committed=committed))

    def _refusal(self, failure: str, why: str, *, committed: bool = False) -> str:
        this = (
            "this write is committed but not acknowledged (it may be there), and the "
            "store takes no more"
            if committed
            else "the store takes no writes"
        )
        return (
            f"SQLite store {self.path}: an fsync of its WAL failed ({failure}) and the "
            f"store is {why}: {this} until a checkpoint has copied the WAL into the "
            "database file and synced it, which the next write tries (check the disk: "
            f"dmesg; {self.sync_mark.name} beside the store marks the failure)"
        )

    def repair(self) -> None:
        """Repair the store after a failed fsync, if one is not repaired yet, waiting
        for the disk and for other connections (up to the lock timeout): for a caller
        that was told :class:`RepairNeeded`, on a thread of its own."""
        if self.durability == "full" and self._sync_failure_left():
            self._repair()

    def _repair(self) -> None:
        """Put everything committed on disk by another way than the WAL, whose fsync
        failed: a checkpoint copies the WAL into the database file, syncs both, and
        empties the WAL, so that new commits start it over. Then the failure's mark
        goes, unless a failure came after the repair began. Raises SyncFailed if the
        disk refuses again, or other connections keep it from running past the lock
        timeout.

        First each of the store's descriptors of the WAL is told of what it was not
        told yet (an fsync of each): a failure the repair covers, which the next
        fsync after it would otherwise report, refusing a commit that is on disk.

        The checkpoint copies the frames from the kernel's cache, where the pages
        whose write-back failed still are; one the kernel dropped meanwhile would be
        read from the disk as it is there. Nothing short of keeping a copy of every
        frame could tell; a disk that fails fsyncs needs looking at either way.
        """
        with self._wal_lock:
            for wal in (self._wal, self._wal_kernel):
                fd = wal.opened()
                if fd is not None:
                    try:
                        _fdatasync(fd)
                    except OSError as exc:
                        self._record_failure(f"{exc} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
        failure = self._sync_failure_left() or "an earlier fsync failed"
        failures = self._sync_failures
        marked = _read_mark(self.sync_mark)
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.0002
        told = False
        while True:
            try:
                busy = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.OperationalError) and is_busy(exc):
                    busy = 1
                elif not told and _is_io_error(exc):
                    # SQLite's own descriptor of the WAL is told of the failure too,
                    # at its first fsync: the copy is made again, and synced, at once
                    told = True
                    continue
                else:
                    raise SyncFailed(self._refusal(failure, f"not repaired ({exc})")) from exc
            if not busy:
                break
            if time.monotonic() > deadline:
                raise SyncFailed(
                    self._refusal(failure, "not repaired: other connections kept it busy")
                )
            time.sleep(pause)
            pause = min(pause * 1.5, 0.005)
        if marked is not None:
            self._unmark(marked[0], failure)
        with self._failures_lock:
            if self._sync_failures == failures:
                self._sync_failure = None
                return
        raise SyncFailed(self._refusal(failure, "not repaired: an fsync failed meanwhile"))

    def _unmark(self, token: str, failure: str) -> None:
        """Remove the mark a repair began with (``token``), not a newer one."""
        with _marks_locked(self.path):
            now = _read_mark(self.sync_mark)
            if now is None:  # another store on the file repaired it too
                return
            if now[0] != token:
                raise SyncFailed(self._refusal(failure, "not repaired: an fsync failed meanwhile"))
            try:
                os.unlink(self.sync_mark)
            except OSError as exc:
                raise SyncFailed(
                    self._refusal(failure, f"repaired, but its mark stays ({exc})")
                ) from exc
        # a mark back after a power cut would cost one more repair, no more
        with contextlib.suppress(OSError):
            self._sync_wal_directory()

    def _sync_wal_directory(self) -> None:
        """Make a new WAL's name durable in its directory (SQLite does that at the
        first sync of a WAL it created; here the store syncs)."""
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @contextmanager
    def _unsynced(self) -> Iterator[None]:
        """At durability ``full``, commit the transaction inside without waiting for
        the disk.

        Only for writes whose loss to a power cut loses nothing acknowledged: a claim,
        a heartbeat or lease extension. In WAL mode such a commit becomes durable with
        the next synced one: the WAL is one file, synced whole, and recovery keeps a
        commit only if every frame before it is intact (their checksums are chained).
        So a power cut can take only a tail of unsynced commits. A claim lost that way
        leaves its task queued, to be claimed again with the same epoch: the worker
        that held it died with the machine, and anything it wrote under that lease (a
        journaled effect, a completion) was a synced commit, which would have made the
        claim durable first. Every claim's fsync on the way from submit to handler is
        saved, and half the fsyncs a busy worker makes.
        """
        self._unsynced_depth += 1
        try:
            yield
        finally:
            self._unsynced_depth -= 1

    def heartbeat(
        self, worker: str, now: float, lease_seconds: float, inflight: int, processed: int
    ) -> dict[int, int] | None:
        with self._unsynced():
            return super().heartbeat(worker, now, lease_seconds, inflight, processed)

    def beat(self, worker: str, now: float, inflight: int, processed: int) -> bool:
        with self._unsynced():
            return super().beat(worker, now, inflight, processed)

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        if self._depth:
            try:
                return self._conn.execute(sql, params)
            except sqlite3.Error as exc:
                raise store_error("store", self.path, exc) from exc
        return self._retrying(sql, params)

    def _execmany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise store_error("store", self.path, exc) from exc

    def _claim_sql(self, n_queues: int, n_agents: int, suspect: bool | None = None) -> str:
        queues = ", ".join("?" * n_queues)
        agents = f" AND agent IN ({', '.join('?' * n_agents)})" if n_agents else ""
        index = "tasks_suspect" if suspect else "tasks_ready"
        return (
            "UPDATE tasks SET state = 'running', lease_owner = ?, lease_expires_at = ?, "
            "epoch = epoch + 1, attempts = attempts + 1, started_at = ? "
            f"WHERE id IN (SELECT id FROM tasks INDEXED BY {index} WHERE state = 'queued' "
            f"AND queue IN ({queues}){agents} AND run_after <= ? "
            f"{SUSPECT_TERMS[suspect]}{NOT_DEAD_WORKER}"
            "ORDER BY priority DESC, run_after, id LIMIT ?) "
            "RETURNING id, queue, agent, payload, priority, epoch, attempts, failures, "
            "redeliveries, max_attempts, max_redeliveries, deadline, idempotency_key, "
            "parent_id, created_at, headers, lease_expires_at"
        )

    def claim(
        self,
        worker: str,
        queues: Sequence[str],
        limit: int,
        now: float,
        lease_seconds: float,
        agents: Sequence[str] | None = None,
        max_running: int | None = None,
        suspects: int | None = None,
    ) -> list[ClaimedTask]:
        # Look before taking the write lock: an idle poll must not serialise writers.
        if not self._depth and queues and limit > 0:
            marks = ", ".join("?" * len(queues))
            ready = self._retrying(
                f"SELECT 1 FROM tasks INDEXED BY tasks_ready WHERE state = 'queued' "
                f"AND queue IN ({marks}) AND run_after <= ? LIMIT 1",
                (*queues, now),
            ).fetchone()
            if ready is None:
                return []
        with self._unsynced():
            return super().claim(
                worker, queues, limit, now, lease_seconds, agents, max_running, suspects
            )

    def _lock_task_sql(self) -> str:
        return "SELECT 1 FROM tasks WHERE id = ? AND epoch = ? AND state = 'running'"

    def _for_update(self) -> str:
        return ""  # BEGIN IMMEDIATE already holds the only write lock

    def _indexed_by(self, index: str | None) -> str:
        # without statistics the planner prefers a scan in id order for ORDER BY id
        return f" INDEXED BY {index}" if index else ""

    def _lock_queue(self, queue: str) -> None:
        pass  # likewise

    def _prune_below(self, table: str) -> int | None:
        # A table without AUTOINCREMENT gives a new row the id after the largest one
        # left: that row stays, or the next would get its id again. Read under the
        # write lock, it holds for the transaction (outside one, it is a hint).
        return self._largest_id(table)

    def _largest_id(self, table: str) -> int:
        """The largest id in ``table`` (``tasks`` or ``events``), 0 when it is empty."""
        return int(self._exec(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0])

    def _insert_many(self, tasks: Sequence[NewTask], now: float) -> list[int]:
        # One INSERT of many rows costs about half as much a row as one INSERT a row.
        # Under the write lock, SQLite gives each new row an id one more than the
        # largest so far (at random only past LARGEST_TASK_ID), so the rows get the
        # ids after today's largest, in VALUES order: no RETURNING to read, which cost
        # a quarter of a 50-row INSERT. Each statement's last id checks it.
        top = self._largest_id("tasks")
        if top > LARGEST_TASK_ID - len(tasks):
            raise StoreError(
                f"SQLite store {self.path}: task ids have reached {top:,}, next to the "
                f"largest SQLite gives in order ({LARGEST_TASK_ID:,}): move the tasks "
                "to a new store"
            )
        for start in range(0, len(tasks), INSERT_ROWS):
            chunk = tasks[start : start + INSERT_ROWS]
            params = [v for task in chunk for v in task_params(task, now)]
            try:
                last = self._conn.execute(insert_tasks_sql(len(chunk)), params).lastrowid
            except sqlite3.Error as exc:
                raise store_error("store", self.path, exc) from exc
            if last != top + start + len(chunk):
                raise StoreError(
                    f"SQLite store {self.path}: new tasks got ids up to {last}, not "
                    f"{top + 1}-{top + start + len(chunk)} in order; nothing was submitted"
                )
        return list(range(top + 1, top + 1 + len(tasks)))

    def set_autocheckpoint(self, pages: int) -> None:
        """Checkpoint when a commit leaves more than ``pages`` in the WAL (0: never,
        for a connection whose process runs a :class:`SqliteCheckpointer`)."""
        self._conn.execute(f"PRAGMA wal_autocheckpoint={int(pages)}")

    # --- schema ----------------------------------------------------------------------------

    def schema_version(self) -> int:
        exists = self._exec(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
        if not exists:
            return 0
        row = self._exec("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    # --- spans: a file of their own -----------------------------------------------------

    @property
    def spans_path(self) -> Path:
        """The span store: a sibling file, so that trace writes never take the task
        queue's write lock (spans are written in bulk, tasks one commit at a time)."""
        return self.path.with_name(self.path.name + "-spans")

    def _spans(self) -> sqlite3.Connection:
        if self._spans_conn is None:
            try:
                conn = sqlite3.connect(
                    str(self.spans_path), isolation_level=None, check_same_thread=False, timeout=30
                )
            except sqlite3.Error as exc:
                raise store_error("span store", self.spans_path, exc) from exc
            try:
                use_wal(conn, self.lock_timeout)
                conn.execute("PRAGMA synchronous=NORMAL")
                # span ids are random: their index is written all over, so keep it in memory
                conn.execute("PRAGMA cache_size=-65536")
                for statement in SPAN_SCHEMA:
                    conn.execute(statement)
            except sqlite3.Error as exc:
                conn.close()
                raise store_error("span store", self.spans_path, exc) from exc
            self._spans_conn = conn
        return self._spans_conn

    def put_spans(self, spans: Iterable[tuple[Any, ...]]) -> None:
        # ``spans`` may be a generator that builds each row as it is asked for: the
        # GIL is then let go at every row's insert, never held for the whole batch
        if isinstance(spans, Sequence) and not spans:
            return
        conn = self._spans()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT_SPAN, spans)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise store_error("span store", self.spans_path, exc) from exc

    def get_spans(
        self, trace_id: str | None = None, task_id: int | None = None, limit: int = 1000
    ) -> list[tuple[Any, ...]]:
        conn = self._spans()
        if trace_id is not None:
            rows = conn.execute(SELECT_TRACE, (trace_id, limit)).fetchall()
        else:
            rows = conn.execute(SELECT_TASK_TRACES, (task_id, limit)).fetchall()
        return [tuple(r) for r in rows]

    def _prune_span_chunk(self, before: float, chunk: int) -> int:
        # the spans are in a file of their own: one autocommit DELETE there
        try:
            return int(self._spans().execute(PRUNE_SPANS, (before, chunk)).rowcount)
        except sqlite3.Error as exc:
            raise store_error("span store", self.spans_path, exc) from exc

    def close(self) -> None:
        self._conn.close()
        if self._spans_conn is not None:
            self._spans_conn.close()
        with self._wal_lock:
            self._wal.close()
            self._wal_kernel.close()


class SqliteChangeWatcher:
    """Tells, cheaply, whether any other connection committed since the last look.

    Reads ``PRAGMA data_version`` on a connection of its own (a shared-memory read, no
    disk I/O), so a worker can poll it every millisecond to notice new tasks at once.
    Use it from one thread only.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._conn = sqlite3.connect(str(path), isolation_level=None)
        self._last = self._version()

    def _version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def changed(self) -> bool:
        current = self._version()
        if current != self._last:
            self._last = current
            return True
        return False

    def close(self) -> None:
        self._conn.close()


class SqliteCheckpointer:
    """Copies the WAL back into the database file from a thread and connection of its
    own, every ``interval`` seconds, and keeps the WAL from growing without end.

    A ``PASSIVE`` checkpoint never blocks writers or readers and skips the frames it
    cannot copy yet; when another checkpoint is running, this round is skipped.

    Passive checkpoints alone never bring the WAL back to its start under steady
    load. SQLite starts writing the WAL from the beginning again only when a write
    transaction begins while every frame has been copied back, and with writers
    committing thousands of times a second the WAL always has frames newer than the
    last checkpoint: at 8,000 tasks/s it grew by 45 MB a second, past 1 GB in 25
    seconds, and would fill the disk. So once the WAL holds more than
    ``restart_frames`` frames, a ``RESTART`` checkpoint follows the passive one: it
    takes the write lock (only if it is free at once: busy, the round stays passive),
    copies the few frames the passive one left, syncs the database file, and makes
    the next writer start the WAL over. Writers wait for it (a few milliseconds, once
    every ``restart_frames`` frames); inline writers wait without blocking their
    event loop. ``journal_size_limit`` then trims the file back to that size.

    After each round it writes the WAL file out ahead of its last frame, up to
    ``fill_ahead`` bytes (0: never) and never past that size (see :meth:`fill`).

    While the file system has less than ``disk_reserve`` bytes free, it writes no
    zeros and restarts the WAL every :data:`LOW_DISK_RESTART_FRAMES` frames, so that
    the WAL never takes the space a checkpoint needs (see :data:`WAL_DISK_RESERVE_BYTES`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str,
        interval: float = 0.1,
        restart_frames: int = WAL_RESTART_FRAMES,
        fill_ahead: int = WAL_FILL_AHEAD_BYTES,
        disk_reserve: int = WAL_DISK_RESERVE_BYTES,
    ) -> None:
        self.interval = interval
        self.restart_frames = restart_frames
        self.checkpoints = 0
        self.restarts = 0
        self._conn = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=0
        )
        self._conn.execute(f"PRAGMA synchronous={DURABILITY_LEVELS[durability]}")
        self._conn.execute(f"PRAGMA journal_size_limit={restart_frames * WAL_FRAME_BYTES}")
        page_size: int = self._conn.execute("PRAGMA page_size").fetchone()[0]
        self._frame_bytes = page_size + 24
        self._fill_limit = restart_frames * WAL_FRAME_BYTES
        self.fill_ahead = fill_ahead
        self.disk_reserve = disk_reserve
        self._dir = os.path.dirname(os.path.abspath(path))
        self._path = str(path)
        self._wal = WalFile(str(path), os.O_WRONLY)
        #: bytes of zeros written into the WAL file so far
        self.filled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleetops-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.checkpoint()

    def low_on_disk(self) -> bool:
        """Whether the store's file system has less than ``disk_reserve`` bytes free
        (or cannot say)."""
        try:
            return _free_bytes(self._dir) < self.disk_reserve
        except OSError:
            return True

    def checkpoint(self) -> bool:
        """One passive checkpoint, and a restart of the WAL when it has grown past
        ``restart_frames`` (:data:`LOW_DISK_RESTART_FRAMES` while the disk is low);
        False if it could not run (another one was running, or the disk is full)."""
        low = self.low_on_disk()
        limit = min(self.restart_frames, LOW_DISK_RESTART_FRAMES) if low else self.restart_frames
        try:
            _, frames, _ = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if frames >= limit:
                # Low on disk, or the WAL past twice its limit (writers that never
                # leave the lock free): the restart waits for the writers, and new
                # ones wait for it, rather than let the WAL grow on.
                wait = low or frames >= 2 * self.restart_frames
                if wait:
                    self._conn.execute(f"PRAGMA busy_timeout={RESTART_WAIT_MS}")
                try:
                    busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                finally:
                    if wait:
                        self._conn.execute("PRAGMA busy_timeout=0")
                self.restarts += not busy
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) == _SQLITE_IOERR_FSYNC:  # of the WAL, maybe
                mark_sync_failed(self._path, f"{exc} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
            return False
        self.checkpoints += 1
        if self.fill_ahead > 0 and not low:
            try:
                self.fill(max(frames, 0))
            except (sqlite3.Error, OSError):  # a full disk, say: the writers grow the WAL
                pass
        return True

    def fill(self, frames: int) -> int:
        """Write zeros into the WAL file past its last frame (``frames`` of them), up
        to :attr:`fill_ahead` bytes past it and never past the WAL's size limit, and
        sync them; answer the bytes written.

        A commit that appends to the WAL makes the file longer, and an fsync of a file
        that grew (or got new blocks) must commit the file system's journal too, which
        on ext4 also makes every other writer that extends a file wait for it. Frames
        written over blocks the file already has are plain data: their fsync flushes
        them and nothing else. SQLite writes its WAL from the start again after each
        restart, so a WAL that once reached its size limit is in that state; this
        brings a new WAL there ahead of the writers. Zeros are never read as frames:
        a frame counts only if its salts match the WAL header's and its checksum
        follows the one before it, so recovery stops at the first zero.

        Each step holds SQLite's write lock (``BEGIN IMMEDIATE``) while it writes, so
        no writer appends meanwhile; when the lock is busy, the rest waits for the
        next round. A step that would leave the file system less than
        :attr:`disk_reserve` bytes free is not written: the zeros are only a head
        start, and the last free space is for the frames and the checkpoints.
        """
        fd = self._wal.current()
        if fd is None:
            return 0
        head = WAL_HEADER_BYTES + frames * self._frame_bytes
        want = min(self._fill_limit, head + self.fill_ahead)
        wrote = 0
        while os.fstat(fd).st_size < want and not self._stop.is_set():
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:  # a writer holds it: next round
                break
            try:
                size = os.fstat(fd).st_size  # no one appends while the lock is held
                step = min(WAL_FILL_STEP_BYTES, want - size)
                room = _free_bytes(fd) - step >= self.disk_reserve
                if step > 0 and room:
                    wrote += os.pwrite(fd, _zeros(step), size)
            finally:
                self._conn.execute("COMMIT")
            if not room:
                break
        if wrote:
            try:
                _fdatasync(fd)
            except OSError as exc:  # told to this descriptor only: the stores must know
                mark_sync_failed(self._path, f"{exc} at {time.strftime('%Y-%m-%d %H:%M:%S')}")
                raise
            self.filled += wrote
        return wrote

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()
        self._wal.close()


def _free_bytes(where: int | str) -> int:
    """The bytes free for an unprivileged writer on the file system of ``where`` (a
    path or an open descriptor)."""
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


@lru_cache(maxsize=4)
def _zeros(size: int) -> bytes:
    return bytes(size)
