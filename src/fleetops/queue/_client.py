"""The async face of a store: one thread, group commit.

A :class:`QueueClient` owns a store connection on a thread of its own. Writes from
many coroutines (completions, failures, effect journal entries, child submissions)
queue up while the previous transaction commits and then go in together, so a
thousand tasks finishing at once cost a handful of fsyncs, not a thousand. Calls of
``submit_many`` made while another one commits go in together the same way.

``inline=True`` (used by workers) runs the hot calls — claim, the group commit,
heartbeats, submits — on the event loop itself when the store is SQLite: such a
transaction is a few hundred microseconds of CPU, and handing it to a thread costs
more than it does. Worse, a store thread holds SQLite's write lock while it waits
for the GIL between statements, so every other process waits too. A busy write
lock is not waited for in SQLite: the call is retried after a pass of the event
loop, and from the third try on after a short sleep too (see
:data:`LOCK_BACKOFF_SECONDS`). At durability ``full`` the fsync that makes a commit
durable runs after the write lock and the connection are released: in the kernel
(Linux's AIO, fleetops.store._aio), answered on the loop when it is done; where the
kernel has none, on the loop itself, unless the disk has just been slow
(:data:`INLINE_SYNC_LIMIT_SECONDS`); then on the thread, where the next group commit
does not wait for it and one fsync covers every commit made before it began
(:meth:`QueueClient._synced`). Every other call stays on the thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import math
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .._clock import Clock, SystemClock
from .._exceptions import Closed, ConfigError, StoreUnavailable, SyncFailed
from .._json import loads_strict
from ..store import (
    ClaimedTask,
    Complete,
    Fail,
    NewTask,
    Operation,
    OpResult,
    Release,
    Store,
    Submit,
    SubmitChild,
    Submitted,
    open_store,
)
from ..store._aio import AsyncFsync, Refused
from ._bell import BellRinger

if TYPE_CHECKING:
    from ..store._sqlite import SqliteCheckpointer, SqliteStore

T = TypeVar("T")

#: Inline, a busy write lock is tried again after a pass of the event loop, at once
#: for the first :data:`LOCK_SPINS` retries.
LOCK_SPINS = 2
#: From then on, before each pass of the loop, the thread sleeps this long (plus the
#: kernel's timer slack, 50 µs by default): it gives its CPU up to the process that
#: holds the lock, which needs one to finish. A pass of the loop alone does not: an
#: event loop with nothing else to do comes straight back, and uvloop cannot wait
#: less than a millisecond (a 0.1 ms timer runs at once; asyncio's epoll rounds it up
#: to 1 ms, several times the 0.2-0.4 ms a writer holds the lock). With three
#: writers on two cores the spinning waiters took the CPU the holder needed, so every
#: transaction held the lock longer. Measured on the 2-core machine with
#: ``bench queue`` at a fixed 14,000 tasks/s, 5 rounds alternated against spinning:
#: median overhead p50 3.20 to 1.81 ms (every round better, ratio 0.46-0.82), and
#: 0.3 ms sleeps gave 2.21 ms; at 12,000 tasks/s, 6 rounds: 2.16 to 1.85 ms; at
#: 17,000 tasks/s, 6 rounds: median per-round ratio 0.83 (0.53-1.37).
LOCK_BACKOFF_SECONDS = 0.0001

#: Inline at durability ``full``, the fsync after a commit runs on the event loop,
#: right after the COMMIT, instead of being handed to the store thread. The thread
#: costs more than the wait: two wakeups and the GIL handed over and back, in every
#: process, for every commit; its answer waits for the GIL too; and while an fsync
#: blocks the loop the CPU goes to the other processes, and the work that comes
#: meanwhile goes into the next commit together. Measured on the 2-core machine with
#: ``bench queue`` at durability full (fsyncs there took 0.6-0.8 ms on average under
#: that load, 0.1 ms idle), 27 pairs alternated against the thread for every fsync:
#: the machine less busy in 26 (by 0.01-0.06 of its two cores); the median overhead
#: less in 19, per-pair ratio 0.92 at the median, but that varied from set to set:
#: 0.88 (half the maximum, 5 pairs) and 0.90 (16,000 tasks/s, 6) with every fsync
#: inline, then with this code 0.91 (half the maximum, 6) and 1.05 (14,000 tasks/s,
#: 10, the p99 1.19 there).
#:
#: A slow disk must not stall the loop, though: when the median of the last
#: :data:`INLINE_SYNC_SAMPLES` inline fsyncs is longer than this, the fsyncs go to
#: the thread (one at a time, each covering every commit before it) for
#: :data:`INLINE_SYNC_BACKOFF_SECONDS`; then one is tried inline again, and if it is
#: slow too, the thread keeps them twice as long. The median, because one fsync
#: timed on a busy machine includes the time its process waited for a CPU: with a
#: 2 ms limit (on the median as well as on single fsyncs) the bench sent a fifth to
#: a third of its fsyncs back to the thread, and gained nothing (6 pairs, p50 ratio
#: 1.02). At 10 ms none went.
INLINE_SYNC_LIMIT_SECONDS = 0.01
INLINE_SYNC_SAMPLES = 8
INLINE_SYNC_BACKOFF_SECONDS = (1.0, 60.0)


#: At durability ``full``, the fsync that acknowledges an attempt's outcome (a
#: Complete, Fail or Release) starts at most this often in a worker (see
#: ``QueueClient(outcome_sync_delay=...)``); outcomes committed meanwhile wait for the
#: next one, which covers them all. Nothing waits for those acknowledgements but the
#: worker's own bookkeeping (the outcome is committed, and stamped, before), so
#: sharing costs nothing a caller sees, while an fsync per group commit cost every
#: process CPU and made the submitters' fsyncs wait behind them. Measured with
#: ``fleetops bench queue`` on a 2-core VM: see the README.
OUTCOME_SYNC_DELAY_SECONDS = 0.01


def check_outcome_sync_delay(seconds: float) -> None:
    """Refuse a negative ``outcome_sync_delay``."""
    if seconds < 0:
        raise ConfigError(
            "outcome_sync_delay", seconds, "use 0 (an fsync for every group commit) or more seconds"
        )


#: The most a task's payload or headers, its result, or the result of one of its
#: effects may take, as JSON text in UTF-8 (2 MiB). Larger data belongs in a file or
#: an object store, with the task carrying its address: a worker holds a whole batch
#: of claimed tasks in memory at once (hundreds of them), and every claim, retry and
#: dashboard page reads the rows.
MAX_VALUE_BYTES = 2 * 1024 * 1024
#: The deepest a task's payload or headers may nest (arrays and objects): deeper ones
#: could not be shown (the API's serializer stops at 255 levels) nor walked without
#: running out of stack.
MAX_VALUE_DEPTH = 128


def size_over_limit(text: str) -> int | None:
    """The size of ``text`` in UTF-8 if it is over :data:`MAX_VALUE_BYTES`, else None."""
    if len(text) * 4 <= MAX_VALUE_BYTES:  # no character takes more than 4 bytes
        return None
    size = len(text.encode("utf-8", "surrogatepass"))
    return size if size > MAX_VALUE_BYTES else None


def check_size(field: str, text: str) -> None:
    """Refuse ``text`` (a task's ``field``) over :data:`MAX_VALUE_BYTES`."""
    size = size_over_limit(text)
    if size is not None:
        raise ConfigError(
            field,
            f"{size:,} bytes of JSON",
            f"keep a task's {field} within {MAX_VALUE_BYTES:,} bytes (2 MiB): put large "
            "data in a file or an object store and pass its address instead",
        )


#: The range of the stores' integer columns (PostgreSQL's INTEGER): priorities and
#: attempt budgets outside it are refused before they are stored, on either store.
INT_RANGE = (-(2**31), 2**31 - 1)


def check_text(field: str, value: object, *, empty: bool = False) -> None:
    """Refuse a name or key the stores cannot keep alike: not a string, empty (unless
    ``empty``), holding a NUL character (PostgreSQL's text cannot) or a lone surrogate
    (no UTF-8 for it)."""
    if not isinstance(value, str):
        raise ConfigError(field, value, "pass a string")
    if not value and not empty:
        raise ConfigError(field, value, "pass a non-empty string")
    if "\x00" in value:
        raise ConfigError(field, value, "remove the NUL character(s): the stores cannot keep them")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(
            field, value, "remove the lone surrogate(s): the text must be valid Unicode"
        ) from None


def _check_int(field: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field, value, "pass a whole number")
    if not low <= value <= INT_RANGE[1]:
        raise ConfigError(field, value, f"use a whole number from {low} to {INT_RANGE[1]}")


def _check_time(field: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(field, value, "pass seconds since the epoch, or None")
    if not math.isfinite(value):
        raise ConfigError(field, value, "pass a finite number of seconds since the epoch, or None")


def json_depth(value: Any) -> int:
    """How deep ``value`` (parsed JSON) nests arrays and objects, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def check_task(task: NewTask) -> None:
    """Refuse a task the stores would refuse, or keep differently, before it is
    stored (a worker could only dead-letter it, and a refusal in a group commit
    fails every write committed with it): its payload or headers not JSON text (or
    with NaN or Infinity, which JSON has not), either larger than
    :data:`MAX_VALUE_BYTES`; a name or key that is not plain text; a priority or
    attempt budget out of the stores' range; a deadline or run_after that is not a
    finite time."""
    for field, text in (("payload", task.payload), ("headers", task.headers)):
        if field == "headers" and text == "{}":
            continue
        if isinstance(text, str):
            check_size(field, text)
        shown = text if not isinstance(text, str) or len(text) <= 80 else text[:77] + "..."
        try:
            value = loads_strict(text)
            text.encode("utf-8")
        except (TypeError, ValueError, RecursionError):  # UnicodeEncodeError included
            raise ConfigError(
                field,
                shown,
                f"pass JSON text as the task's {field}, e.g. json.dumps(value, "
                "allow_nan=False): no NaN or Infinity, no lone surrogates",
            ) from None
        if field == "headers" and not isinstance(value, dict):
            raise ConfigError(field, shown, "pass a JSON object, e.g. json.dumps({'key': 'v'})")
        if json_depth(value) > MAX_VALUE_DEPTH:
            raise ConfigError(
                field,
                shown,
                f"nest it at most {MAX_VALUE_DEPTH} arrays or objects deep: flatten it",
            )
    check_text("queue", task.queue)
    check_text("agent", task.agent)
    if task.idempotency_key is not None:
        check_text("idempotency_key", task.idempotency_key)
    _check_int("priority", task.priority, INT_RANGE[0])
    _check_int("max_attempts", task.max_attempts, 0)
    _check_int("max_redeliveries", task.max_redeliveries, 0)
    _check_time("deadline", task.deadline)
    _check_time("run_after", task.run_after)
    if task.deadline is not None and task.run_after is not None and task.run_after >= task.deadline:
        raise ConfigError(
            "run_after",
            task.run_after,
            f"use a time before the deadline ({task.deadline}): a task due after it would "
            "be dead-lettered the moment it was claimed",
        )


class ChangeWatcher(Protocol):
    def changed(self) -> bool: ...

    def close(self) -> None: ...


#: Operations waiting for a group commit, each with its caller's answer.
_OpCalls = list[tuple[Operation, "asyncio.Future[OpResult]"]]
#: A submit_many call waiting for a group commit: its (tasks, time) and its answer.
_SubmitCall = tuple[tuple[list[NewTask], float], "asyncio.Future[list[Submitted]]"]


def _settle(
    batch: Sequence[tuple[object, asyncio.Future[T]]],
    results: Sequence[T] | None,
    error: BaseException | None,
) -> None:
    """Answer a group commit's callers: each its result, or all the error."""
    for i, (_, fut) in enumerate(batch):
        if fut.done():  # its caller was cancelled
            continue
        if results is None:
            assert error is not None
            fut.set_exception(error)
        else:
            fut.set_result(results[i])


def _fail_all(waiters: Sequence[asyncio.Future[None]], error: BaseException) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_exception(error)


def _answer_kernel_sync(
    store: SqliteStore,
    inflight: set[asyncio.Future[None]],
    waiter: asyncio.Future[None],
    synced: asyncio.Future[None],
) -> None:
    """Answer ``waiter`` for the kernel's fsync ``synced``, one of ``inflight`` (the
    kernel's fsyncs not yet read).

    A failure is recorded first, whether anyone still waits or not. A success is
    answered only once every fsync in flight when it was read has been read too, and
    their failures recorded: the kernel tells a failed write-back to one fsync of a
    descriptor only, not necessarily the one whose commits it held.
    """
    inflight.discard(synced)
    error = None if synced.cancelled() else synced.exception()
    if synced.cancelled() or error is not None:
        cause = error if isinstance(error, OSError) else OSError(errno.EIO, "cancelled")
        failed = store.sync_failed(cause)
        if not waiter.done():
            waiter.set_exception(failed)
        return
    pending = [other for other in inflight if not other.done()]
    if not pending:
        # after the fsyncs the kernel ended in the same pass have been read
        asyncio.get_running_loop().call_soon(_answer_if_synced, store, waiter)
        return
    left = len(pending)

    def read(_: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        if left == 0:  # after its own answer, which records a failure
            asyncio.get_running_loop().call_soon(_answer_if_synced, store, waiter)

    for other in pending:
        other.add_done_callback(read)


def _answer_if_synced(store: SqliteStore, waiter: asyncio.Future[None]) -> None:
    if waiter.done():
        return
    try:
        store.check_synced(committed=True)
    except SyncFailed as exc:
        waiter.set_exception(exc)
    else:
        waiter.set_result(None)


def _close_when_idle(aio: AsyncFsync) -> None:
    inflight = aio.inflight()
    if inflight:
        asyncio.gather(*inflight, return_exceptions=True).add_done_callback(lambda _: aio.close())
    else:
        aio.close()


def _settle_synced(
    batch: Sequence[tuple[object, asyncio.Future[T]]],
    results: Sequence[T],
    synced: asyncio.Future[None],
) -> None:
    error = Closed("the queue client closed") if synced.cancelled() else synced.exception()
    _settle(batch, None if error else results, error)


class QueueClient:
    """Async access to a store with batched, fenced writes.

    Use as ``async with QueueClient(url) as client: ...``. ``store_factory`` opens the
    store on the client's thread (stores are not shared between threads).

    ``kernel_fsync`` (inline, at durability ``full``) picks where the fsync after a
    commit runs: in the kernel (True, the default), so that the event loop runs the
    rest of its work meanwhile, as a worker's loop, with hundreds of handlers, must;
    or on the event loop (False), which answers sooner when the loop has nothing else
    to do while it waits. A client that only submits and waits for each
    acknowledgement (a loader, the bench's submitter) is better off with False: the
    kernel runs the fsync on a worker thread of its own, which on a busy machine must
    wait for a CPU, and the answer comes back through the loop. Measured with
    ``fleetops bench queue`` at ``full`` on a 2-core VM, its submitter's fsyncs took
    0.38-0.41 ms at the median on the loop against 0.59-0.81 ms in the kernel, and
    its acknowledgements 1.23-1.33 ms against 1.62-2.04 ms.

    ``outcome_sync_delay`` (inline, at durability ``full``): the fsyncs that
    acknowledge outcomes (:class:`Complete`, :class:`Fail`, :class:`Release`) start at
    most once in that many seconds. The first outcome after a quiet spell is synced at
    once; those committed within the delay after it wait for one fsync at its end.
    Every outcome is still acknowledged only after an fsync that began after its
    commit; any other write's fsync (an effect's, a submit's) covers the outcomes
    waiting and answers them at once. 0 (the default): one fsync per group commit.
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        store_factory: Callable[[str], Store] = open_store,
        max_batch: int = 2000,
        inline: bool = False,
        doorbells: bool = True,
        inline_sync_limit: float = INLINE_SYNC_LIMIT_SECONDS,
        kernel_fsync: bool = True,
        outcome_sync_delay: float = 0.0,
    ) -> None:
        check_outcome_sync_delay(outcome_sync_delay)
        self.url = url
        self.clock: Clock = clock or SystemClock()
        self._factory = store_factory
        self._max_batch = max_batch
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._store: Store | None = None
        self._pending: _OpCalls = []
        #: ops at the head of _pending to commit one a transaction (their group was refused)
        self._alone = 0
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._want_inline = inline
        #: Whether hot calls run on the event loop (see the module doc).
        self.inline = False
        #: In inline mode, one caller at a time uses the connection (loop or thread).
        self._conn_lock = asyncio.Lock()
        self._checkpointer: SqliteCheckpointer | None = None
        #: Rings the doorbells of workers when this client commits new tasks.
        self._ringer = BellRinger() if doorbells else None
        self.commits = 0
        #: callers waiting for the next fsync of the WAL, and the task that runs them
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._syncer: asyncio.Task[None] | None = None
        #: inline fsyncs slower than this (their median) send the next ones to the
        #: thread until _inline_after (monotonic), for a back-off that doubles while
        #: they stay slow (0: every fsync on the thread)
        self._inline_sync_limit = inline_sync_limit
        self._inline_after = 0.0
        self._inline_backoff = INLINE_SYNC_BACKOFF_SECONDS[0]
        self._inline_took: deque[float] = deque(maxlen=INLINE_SYNC_SAMPLES)
        #: inline at durability full, fsyncs go to the kernel's AIO where it has it
        #: (fleetops.store._aio), unless kernel_fsync is False
        self._want_kernel_fsync = kernel_fsync
        self._aio: AsyncFsync | None = None
        #: the kernel's fsyncs started and not yet read (see _answer_kernel_sync)
        self._kernel_inflight: set[asyncio.Future[None]] = set()
        #: fsyncs run by the kernel for the loop, on the event loop, and on the store
        #: thread so far
        self.syncs_kernel = 0
        self.syncs_inline = 0
        self.syncs_on_thread = 0
        #: a submit_many call is committing; calls made meanwhile wait in _groups, and
        #: _grouper commits them together (see submit_many)
        self._submitting = False
        self._groups: list[_SubmitCall] = []
        self._grouper: asyncio.Task[None] | None = None
        #: outcomes committed and waiting for the next shared fsync (see
        #: outcome_sync_delay): each group commit's calls and results; the timer that
        #: starts that fsync; when the last fsync for outcomes started (the loop's time)
        self._outcome_sync_delay = outcome_sync_delay
        self._outcomes_unsynced: list[tuple[_OpCalls, list[OpResult]]] = []
        self._outcome_timer: asyncio.TimerHandle | None = None
        self._outcome_synced_at = float("-inf")

    async def __aenter__(self) -> QueueClient:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="fleetops-store"
        )
        self._store = await self._call(self._factory, self.url)
        from ..store._sqlite import SqliteCheckpointer, SqliteStore

        store = self._store
        if self._want_inline and isinstance(store, SqliteStore):
            self.inline = True
            # checkpoints (megabytes of copying and an fsync) run on a thread of their
            # own, never inline on the event loop
            store.set_autocheckpoint(0)
            self._checkpointer = SqliteCheckpointer(store.path, durability=store.durability)
            if self._want_kernel_fsync and store.durability == "full":
                self._aio = AsyncFsync.open(asyncio.get_running_loop())
        self._flusher = asyncio.create_task(self._flush_loop(), name="fleetops-group-commit")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._flusher is not None:
            self._wake.set()
            await self._flusher
        if self._grouper is not None:  # the submits it took are committed and answered
            await asyncio.wait([self._grouper])
        if self._syncer is not None:  # its waiters are answered whatever became of it
            await asyncio.wait([self._syncer])
        if self._aio is not None:
            inflight = self._aio.inflight()
            if inflight:  # their waiters are answered by their callbacks
                await asyncio.wait(inflight)
            self._aio.close()
        if self._store is not None:
            await self._call(self._store.close)
        if self._checkpointer is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._checkpointer.close)
        if self._ringer is not None:
            self._ringer.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def store(self) -> Store:
        """The store object (call its methods only through :meth:`run`)."""
        if self._store is None:
            raise Closed("the queue client is not open: use 'async with QueueClient(...)'")
        return self._store

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise Closed("the queue client is not open: use 'async with QueueClient(...)'")
        if not self.inline:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        async with self._conn_lock:
            return await self._on_thread(fn, *args)

    async def _on_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the store thread; if the caller is cancelled meanwhile, still
        wait for ``fn`` to finish (the connection lock must not be released while the
        thread uses the connection)."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    async def _hot(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a one-transaction store call inline when the client may, else on the thread.

        Inline, a busy write lock is waited for asynchronously, and at durability
        ``full`` the fsync that follows the COMMIT runs on the store thread.
        """
        result, sync = await self._hot_commit(fn, *args)
        if sync:
            await self._synced()
        return result

    async def _hot_commit(self, fn: Callable[..., T], *args: Any) -> tuple[T, bool]:
        """:meth:`_hot` up to the COMMIT: the result, and whether an fsync must follow
        (:meth:`_synced`) before it may be acknowledged."""
        if not self.inline:
            return await self._call(fn, *args), False
        from ..store._sqlite import LockBusy, RepairNeeded, SqliteStore

        store = self.store
        assert isinstance(store, SqliteStore)
        deadline: float | None = None
        tries = 0
        async with self._conn_lock:
            while True:
                store.nonblocking = True
                store.defer_sync = store.durability == "full"
                busy = repair = False
                try:
                    result = fn(*args)
                except RepairNeeded:
                    repair = True
                except LockBusy:
                    busy = True
                finally:
                    store.nonblocking = False
                    store.defer_sync = False
                if repair:  # a checkpoint and fsyncs: on the store thread, then again
                    await self._on_thread(store.repair)
                    continue
                if not busy:
                    sync, store.sync_pending = store.sync_pending, False
                    break
                # another process holds the write lock: let the loop run, then try again
                now = self.clock.monotonic()
                if deadline is None:
                    deadline = now + store.lock_timeout
                elif now > deadline:
                    raise StoreUnavailable(
                        f"SQLite store {store.path} stayed locked for {store.lock_timeout:.0f} s"
                    )
                tries += 1
                if tries > LOCK_SPINS:
                    # on purpose: blocks the loop for 0.1-0.2 ms (see LOCK_BACKOFF_SECONDS)
                    time.sleep(LOCK_BACKOFF_SECONDS)  # noqa: ASYNC251
                await asyncio.sleep(0)
        return result, sync

    def _synced(self) -> asyncio.Future[None]:
        """:meth:`_start_sync`, whose fsync also answers the outcomes waiting for a
        shared one (see ``outcome_sync_delay``): it began after their commits."""
        synced = self._start_sync()
        self._sync_outcomes(synced)
        return synced

    def _start_sync(self) -> asyncio.Future[None]:
        """A future done once an fsync of the WAL that began after this call has
        ended: every commit made so far, by this client or any other, is then on disk.

        Where the kernel has AIO, it runs the fsync (:meth:`_kernel_sync`). Otherwise
        the fsync runs here and now, on the loop, unless a recent one was slow (see
        :data:`INLINE_SYNC_LIMIT_SECONDS`): the future is then done when this returns.
        Otherwise the fsyncs run one at a time on the store thread, with the
        connection free for the next calls (they use a file descriptor of their own,
        see fleetops.store._sqlite). Whoever asks while one runs waits for the next,
        which covers them all: commits do not queue behind the disk, and a burst of
        them costs two fsyncs, not one each.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._aio is None or not self._kernel_sync(waiter):
            self._sync_other_way(waiter)
        return waiter

    def _sync_other_way(self, waiter: asyncio.Future[None]) -> None:
        """Answer ``waiter`` after an fsync run on the loop or on the store thread."""
        thread_idle = self._syncer is None or self._syncer.done()
        began = self.clock.monotonic()
        if thread_idle and self._inline_sync_limit > 0 and began >= self._inline_after:
            try:
                self._sync_wal()
            except Exception as exc:  # nothing it covers may be acknowledged
                waiter.set_exception(exc)
            else:
                waiter.set_result(None)
            self.syncs_inline += 1
            ended = self.clock.monotonic()
            took = self._inline_took
            took.append(ended - began)
            if statistics.median(took) > self._inline_sync_limit:
                took.clear()  # after the back-off, one inline fsync decides again
                self._inline_after = ended + self._inline_backoff
                self._inline_backoff = min(self._inline_backoff * 2, INLINE_SYNC_BACKOFF_SECONDS[1])
            elif took[-1] <= self._inline_sync_limit:
                self._inline_backoff = INLINE_SYNC_BACKOFF_SECONDS[0]
            return
        self._sync_waiters.append(waiter)
        if thread_idle:
            self._syncer = asyncio.create_task(self._sync_loop(), name="fleetops-wal-sync")

    def _kernel_sync(self, waiter: asyncio.Future[None]) -> bool:
        """Have the kernel fsync the WAL and answer ``waiter`` when it has; False if
        it would not start one (``waiter`` is then still to be answered).

        Each call starts an fsync of its own at once, even while others run: one that
        began before the caller's commit would not cover it, and waiting for it to
        end before starting the next would make the caller wait for two.
        """
        from ..store._sqlite import SqliteStore

        aio = self._aio
        store = self.store
        assert aio is not None and isinstance(store, SqliteStore)
        try:
            started = store.start_wal_sync(aio.fdatasync)
        except Refused as exc:
            if exc.errno != errno.EAGAIN:  # never will: fsync some other way from now on
                self._aio = None
                asyncio.get_running_loop().call_soon(_close_when_idle, aio)
            return False
        except Exception as exc:  # nothing it covers may be acknowledged
            waiter.set_exception(exc)
            return True
        self.syncs_kernel += 1
        if started is None:  # no WAL: every commit is in the synced database
            waiter.set_result(None)
        else:
            self._kernel_inflight.add(started)
            started.add_done_callback(
                partial(_answer_kernel_sync, store, self._kernel_inflight, waiter)
            )
        return True

    def _sync_wal(self) -> None:
        from ..store._sqlite import SqliteStore

        store = self.store
        assert isinstance(store, SqliteStore)
        store.sync_wal()

    async def _sync_loop(self) -> None:
        while self._sync_waiters:
            waiters, self._sync_waiters = self._sync_waiters, []
            try:
                await self._on_thread(self._sync_wal)
            except Exception as exc:  # nothing it covers may be acknowledged
                _fail_all(waiters, exc)
                continue
            except BaseException:  # cancelled: no waiter may be left hanging
                waiters += self._sync_waiters
                self._sync_waiters = []
                _fail_all(waiters, Closed("the queue client stopped before the write was on disk"))
                raise
            finally:
                self.syncs_on_thread += 1
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the store thread (``fn`` is usually a store method)."""
        return await self._call(fn, *args)

    # --- batched writes ----------------------------------------------------------------------

    async def apply(self, op: Operation) -> OpResult:
        """Apply one fenced operation as part of the next group commit."""
        if self._closed:
            raise Closed("the queue client is closed")
        fut: asyncio.Future[OpResult] = asyncio.get_running_loop().create_future()
        self._pending.append((op, fut))
        self._wake.set()
        return await fut

    async def submit(self, task: NewTask) -> Submitted:
        """Submit one task as part of the next group commit."""
        check_task(task)
        result = await self.apply(Submit(task))
        assert isinstance(result.value, Submitted)
        return result.value

    async def submit_many(self, tasks: Sequence[NewTask]) -> list[Submitted]:
        """Submit many tasks in one transaction (none if one of them is refused).

        Calls made while another one commits wait and are then committed together,
        in one transaction, each stamped with the time of its own call (see
        :meth:`_submit_groups`): concurrent producers cost a transaction for every
        commit, not one each in turn.
        """
        if self._closed:
            raise Closed("the queue client is closed")
        for task in tasks:
            check_task(task)
        answer: asyncio.Future[list[Submitted]] = asyncio.get_running_loop().create_future()
        call = ((list(tasks), self.clock.now()), answer)
        if self._submitting:  # another call is committing: go with the next group
            self._groups.append(call)
            return await answer
        self._submitting = True
        try:
            await self._commit_groups([call])
        finally:  # the calls that came meanwhile are committed next, whatever became of this one
            if self._groups:
                self._grouper = asyncio.create_task(self._submit_groups(), name="fleetops-submits")
            else:
                self._submitting = False
        return await answer

    async def _submit_groups(self) -> None:
        """Commit the submit calls waiting, together, until none wait; then let the
        next call commit by itself again."""
        waiting: list[_SubmitCall] = []
        try:
            while self._groups:
                waiting, self._groups = self._groups, []
                await self._commit_groups(waiting)
        except BaseException:  # cancelled: no caller may be left hanging
            left, self._groups = [*waiting, *self._groups], []
            _settle(left, None, Closed("the queue client stopped before the submit was answered"))
            raise
        finally:
            self._submitting = False

    async def _commit_groups(self, waiting: list[_SubmitCall]) -> None:
        """One transaction for the ``waiting`` calls; should the store refuse it, each
        call alone, so that only a call the store refuses fails. An unavailable store
        (locked too long, unreachable) fails them all at once: each alone would wait
        as long again."""
        groups = [group for group, _ in waiting]
        try:
            results, sync = await self._hot_commit(self.store.submit_groups, groups)
        except Exception as exc:
            # committed but not synced (SyncFailed): each call alone would commit again
            if len(waiting) == 1 or isinstance(exc, StoreUnavailable | Closed | SyncFailed):
                _settle(waiting, None, exc)
                return
            for call in waiting:
                await self._commit_groups([call])
            return
        # the bell may ring before the fsync: a worker that runs the task makes it
        # durable with its own first synced write (see fleetops.store._sqlite)
        await self.ring(Counter(t.queue for tasks, _ in groups for t in tasks))
        if sync:  # answered once on disk; the next group commits meanwhile
            self._synced().add_done_callback(partial(_settle_synced, waiting, results))
        else:
            _settle(waiting, results, None)

    async def ring(self, tasks_by_cluster: Mapping[str, int]) -> None:
        """Wake workers of the clusters in ``{cluster: tasks queued}`` on this host:
        new work was committed.

        A hint only (see :mod:`fleetops.queue._bell`): it never fails the caller.
        """
        ringer = self._ringer
        if ringer is None:
            return
        now = self.clock.monotonic()
        if ringer.stale(now):
            try:
                rows = await self._hot(self.store.bells)
            except Exception:  # the store is unwell: the workers will poll it anyway
                rows = []
            ringer.load(rows, now)
        ringer.ring(tasks_by_cluster)

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                size = 1 if self._alone else self._max_batch
                batch = self._pending[:size]
                del self._pending[:size]
                self._alone = max(0, self._alone - 1)
                try:
                    results, sync = await self._hot_commit(
                        # stamped once the write lock is held: the time a completion
                        # is recorded at is not earlier than it could commit
                        self.store.apply,
                        [op for op, _ in batch],
                        self.clock.now,
                    )
                except Exception as exc:
                    # a group committed but not synced (SyncFailed) must not go again
                    if len(batch) == 1 or isinstance(exc, StoreUnavailable | Closed | SyncFailed):
                        _settle(batch, None, exc)
                    else:
                        # the store refused the group for one of them (a value it
                        # cannot keep), which must not fail the others: each goes
                        # again, first, in a transaction of its own
                        self._pending[:0] = batch
                        self._alone = len(batch)
                    continue
                self.commits += 1
                queued = Counter(
                    op.task.queue
                    for op, result in zip((op for op, _ in batch), results, strict=True)
                    if result.ok and isinstance(op, Submit | SubmitChild)
                )
                if queued:
                    await self.ring(queued)
                if not sync:
                    _settle(batch, results, None)
                elif self._outcome_sync_delay and all(
                    isinstance(op, Complete | Fail | Release) for op, _ in batch
                ):
                    self._sync_outcome(batch, results)
                else:
                    # acknowledged once on disk; the next batch commits meanwhile
                    self._synced().add_done_callback(partial(_settle_synced, batch, results))
            if self._closed:
                self._sync_outcomes()  # the outcomes still waiting: synced now
                return

    def _sync_outcome(self, batch: _OpCalls, results: list[OpResult]) -> None:
        """Acknowledge a group commit of outcomes after an fsync that begins now, if
        none began within ``outcome_sync_delay``, else after the one that ends it."""
        self._outcomes_unsynced.append((batch, results))
        if self._outcome_timer is not None:  # the next one is set: it covers this
            return
        loop = asyncio.get_running_loop()
        due = self._outcome_synced_at + self._outcome_sync_delay
        if loop.time() >= due:
            self._sync_outcomes()
        else:
            self._outcome_timer = loop.call_at(due, self._sync_outcomes)

    def _sync_outcomes(self, synced: asyncio.Future[None] | None = None) -> None:
        """Answer the outcomes waiting after ``synced`` (an fsync begun after their
        commits), or after one begun now."""
        if self._outcome_timer is not None:
            self._outcome_timer.cancel()
            self._outcome_timer = None
        if not self._outcomes_unsynced:
            return
        if synced is None:
            synced = self._start_sync()
        self._outcome_synced_at = asyncio.get_running_loop().time()
        for batch, results in self._outcomes_unsynced:
            synced.add_done_callback(partial(_settle_synced, batch, results))
        self._outcomes_unsynced = []

    def change_watcher(self) -> ChangeWatcher | None:
        """A cheap "did anyone commit?" probe for this store, or None if it has none."""
        from ..store import SqliteStore
        from ..store._sqlite import SqliteChangeWatcher

        store = self.store
        if isinstance(store, SqliteStore):
            return SqliteChangeWatcher(store.path)
        return None

    # --- direct calls -----------------------------------------------------------------------

    async def claim(
        self,
        worker: str,
        queues: Sequence[str],
        limit: int,
        lease_seconds: float,
        agents: Sequence[str] | None = None,
        max_running: int | None = None,
        suspects: int | None = None,
    ) -> list[ClaimedTask]:
        return await self._hot(
            self.store.claim,
            worker,
            list(queues),
            limit,
            self.clock.now(),
            lease_seconds,
            agents,
            max_running,
            suspects,
        )

    async def beat(self, worker: str, inflight: int, processed: int) -> bool:
        return await self._hot(self.store.beat, worker, self.clock.now(), inflight, processed)

    async def heartbeat(
        self, worker: str, lease_seconds: float, inflight: int, processed: int
    ) -> dict[int, int] | None:
        return await self._hot(
            self.store.heartbeat, worker, self.clock.now(), lease_seconds, inflight, processed
        )
