"""The PostgreSQL store: the same SQL, ``FOR UPDATE SKIP LOCKED`` claims.

Each store object holds one connection in autocommit mode; transactions are explicit.
Statements are written with ``?`` and rewritten to psycopg's ``%s`` once, cached.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import weakref
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._exceptions import StoreConflict, StoreError, StoreUnavailable
from ._models import NewTask
from ._open import check_postgres_url, redact
from ._sql import (
    INSERT_TASK,
    NOT_DEAD_WORKER,
    SUSPECT_TERMS,
    SqlStore,
    migration_scripts,
    task_params,
)

#: The sessions' application_name (pg_stat_activity) unless the URL or PGAPPNAME names one.
APPLICATION_NAME = "fleetops"
#: TCP keepalives and a limit on unacknowledged data: a dead peer is noticed in ~10 s.
TCP_LIVENESS = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # milliseconds
}
#: Limits the server puts on each of this store's sessions, unless the URL's
#: ``options`` sets them (``?options=-c%20statement_timeout%3D5min``).
#: ``statement_timeout``: a statement that runs, or waits for a lock, longer than this
#: is cancelled, and the call fails with StoreUnavailable instead of hanging (every
#: statement here takes milliseconds; migrations are exempt).
#: ``idle_in_transaction_session_timeout``: a session left idle inside a transaction
#: (its process frozen by SIGSTOP, a paused VM or a debugger, possibly on another
#: host where no supervisor can kill it) is ended and the row locks it held are
#: released, so that revoking its leases does not wait on it forever. Its process
#: finds the connection gone, and reconnects, when it runs again.
SESSION_LIMITS = {
    "statement_timeout": "60s",
    "idle_in_transaction_session_timeout": "10s",
}
#: A call that has waited for the server this much longer than the session's
#: ``statement_timeout`` is given up on by the client: the server would have cancelled
#: a statement of its own by then, so its process is not running (stopped, or stuck
#: on a disk that no longer answers) while its host's kernel still keeps the TCP
#: connection alive. The connection is dropped and the call fails with
#: StoreUnavailable; the next call opens a new one. Migrations are exempt, as they
#: are from ``statement_timeout``; a session without one (``statement_timeout=0``)
#: has no deadline either.
DEADLINE_MARGIN = 10.0
#: How often the deadline watchdog looks at the calls in progress.
WATCH_INTERVAL = 0.25
#: An arbitrary constant: the advisory lock that serialises concurrent migrations.
MIGRATION_LOCK = 0x466C6565744F7073 & 0x7FFFFFFFFFFFFFFF
#: The advisory locks of idempotency keys (see SqlStore._lock_keys): (KEY_LOCKS, the
#: key's hash), taken in the order of the array, which is sorted. Two different keys
#: may share a hash; their inserts then wait for each other, which is all. The locks
#: belong to the database, not its schema: fleets in two schemas of one database that
#: insert the same keys at once wait for each other too (briefly, harmlessly).
KEY_LOCKS = 0x666B6579
#: The advisory lock an event's insert holds until it commits (see
#: SqlStore._lock_events): events are few, so waiting for each other costs nothing. It
#: belongs to the database, as KEY_LOCKS do: fleets in two schemas of one database
#: record their events one at a time too. A session stuck holding it (its backend
#: stopped) stalls the next events as a row lock it held would stall other writers:
#: until statement_timeout.
EVENTS_LOCK = 0x466C656574457673 & 0x7FFFFFFFFFFFFFFF
LOCK_KEYS = "SELECT pg_advisory_xact_lock(?, h) FROM unnest(?::int[]) AS h"


def _key_hash(key: str) -> int:
    """An idempotency key as a 32-bit signed integer, the same in every process."""
    unsigned = zlib.crc32(key.encode())
    return unsigned - (1 << 32) if unsigned >= 1 << 31 else unsigned


@lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class PostgresStore(SqlStore):
    """A :class:`~fleetops.store.Store` on a PostgreSQL database."""

    dialect = "postgresql"
    migrations_dir = "postgres"
    real_type = "DOUBLE PRECISION"

    def __init__(
        self, url: str, *, connect_timeout: float = 5.0, deadline_margin: float = DEADLINE_MARGIN
    ) -> None:
        self.url = url
        self.latest_version = migration_scripts("postgres")[-1][0]
        self._depth = 0
        self._connect_timeout = max(1, int(connect_timeout))
        self._deadline_margin = deadline_margin
        #: seconds a call may wait for the server (None: no limit), for this connection
        self.deadline: float | None = None
        #: when the call now waiting for the server began (None: none is)
        self._waiting_since: float | None = None
        self._exempt = False
        #: how long the call given up on had waited (None: no call was)
        self._gave_up_after: float | None = None
        #: the connection's socket, duplicated, for the watchdog to shut down
        self._sock: socket.socket | None = None
        self._conn = self._connect()
        _WATCHDOG.watch(self)

    def _connect(self) -> psycopg.Connection[Any]:
        # a network that stops carrying packets (a partition, a host gone) ends the
        # connection in about 10 s instead of when TCP gives up (minutes to hours);
        # the next call then reconnects. Values in the URL win.
        check_postgres_url(self.url)
        given = conninfo_to_dict(self.url)
        tcp: dict[str, Any] = {k: v for k, v in TCP_LIVENESS.items() if k not in given}
        if "application_name" not in given and "PGAPPNAME" not in os.environ:
            # an operator finds the fleet's sessions in pg_stat_activity by this name
            tcp["application_name"] = APPLICATION_NAME
        named = str(given.get("options") or "")
        limits = {k: v for k, v in SESSION_LIMITS.items() if k not in named}
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = psycopg.connect(
                make_conninfo(self.url, **tcp),
                autocommit=True,
                connect_timeout=self._connect_timeout,
            )
            for name, value in limits.items():
                conn.execute(f"SET {name} = '{value}'")  # constants, not input
            row = conn.execute(
                "SELECT setting FROM pg_settings WHERE name = 'statement_timeout'"
            ).fetchone()
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL store at {redact(self.url)}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
            ) from exc
        statement_ms = int(row[0]) if row is not None else 0
        self.deadline = statement_ms / 1000 + self._deadline_margin if statement_ms else None
        self._gave_up_after = None
        if self._sock is not None:
            self._sock.close()
        self._sock = socket.socket(fileno=os.dup(conn.pgconn.socket))
        return conn

    # --- the client's deadline -------------------------------------------------------------

    def _wait(self) -> None:
        """A call begins to wait for the server (see :data:`DEADLINE_MARGIN`)."""
        self._waiting_since = time.monotonic()

    def _done(self) -> None:
        self._waiting_since = None

    @contextmanager
    def _talking(self) -> Iterator[None]:
        """Statements sent inside wait for the server under the deadline; a psycopg
        error becomes a StoreError (see :meth:`_error`)."""
        self._wait()
        try:
            yield
        except psycopg.Error as exc:
            raise self._error(exc) from exc
        finally:
            self._done()

    def check_deadline(self, now: float) -> bool:
        """Drop the connection if the call in progress has waited past the deadline
        (called by the watchdog thread); answer whether it was dropped. Shutting the
        socket down wakes the waiting call, which then fails."""
        since, deadline, sock = self._waiting_since, self.deadline, self._sock
        if since is None or deadline is None or sock is None or self._exempt:
            return False
        if now - since < deadline:
            return False
        self._gave_up_after = now - since
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed meanwhile: the call has ended
            return False
        return True

    def _reconnect_if_lost(self) -> None:
        """Before a call (outside a transaction), make sure the connection is one the
        server still serves, else open a new one.

        A server that ends an idle session (a restart or failover, an administrator's
        ``pg_terminate_backend``, a proxy's idle timeout) says so on the socket, and
        closes it. So a connection whose socket has something to read between calls
        is replaced before anything of the call is sent, and the call runs as if
        nothing had happened (see :func:`_dropped_while_idle`). That costs one poll
        of the socket a call, no round trip.

        A connection dropped while a call is in progress (the server stopped under
        it) fails that call with StoreUnavailable, and the next call opens a new
        one: whether a write that was in flight happened is not known, so whether
        to try it again is its caller's call (a fenced completion may; an unkeyed
        submit might then be stored twice)."""
        if self._depth:
            return
        if not self._conn.closed and _dropped_while_idle(self._conn):
            self._conn.close()
        if self._conn.closed:
            self._conn = self._connect()

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._reconnect_if_lost()
        self._wait()  # BEGIN
        try:
            with self._conn.transaction():
                self._done()
                self._depth = 1
                try:
                    yield
                finally:
                    self._depth = 0
                    self._wait()  # the COMMIT or ROLLBACK that follows
        except psycopg.Error as exc:  # at BEGIN or COMMIT
            raise self._error(exc) from exc
        finally:
            self._done()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._reconnect_if_lost()
        with self._talking():
            return self._conn.execute(_pg(sql), tuple(params) if params else None)

    def _execmany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._talking(), self._conn.cursor() as cur:
            cur.executemany(_pg(sql), [tuple(r) for r in rows])

    def _error(self, exc: psycopg.Error) -> StoreError:
        """StoreUnavailable when the call may work again (the connection was lost, the
        server cancelled a statement that waited too long, the client gave up on a
        server that did not answer); StoreError otherwise."""
        if self._gave_up_after is not None:
            return StoreUnavailable(
                f"PostgreSQL store {redact(self.url)}: no answer from the server for "
                f"{self._gave_up_after:.1f} s, {self._deadline_margin:g} s past its "
                "statement_timeout (is its process stopped, or its disk stuck?): the "
                "connection was dropped, and the next call opens a new one"
            )
        message = f"PostgreSQL store {redact(self.url)}: {exc}"
        if isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
            return StoreConflict(message)
        if isinstance(exc, psycopg.OperationalError) or self._conn.closed:
            return StoreUnavailable(message)
        return StoreError(message)

    def _claim_sql(self, n_queues: int, n_agents: int, suspect: bool | None = None) -> str:
        queues = ", ".join("?" * n_queues)
        agents = f" AND agent IN ({', '.join('?' * n_agents)})" if n_agents else ""
        return (
            "UPDATE tasks SET state = 'running', lease_owner = ?, lease_expires_at = ?, "
            "epoch = epoch + 1, attempts = attempts + 1, started_at = ? "
            "WHERE id IN (SELECT id FROM tasks WHERE state = 'queued' "
            f"AND queue IN ({queues}){agents} AND run_after <= ? "
            f"{SUSPECT_TERMS[suspect]}{NOT_DEAD_WORKER}"
            "ORDER BY priority DESC, run_after, id LIMIT ? FOR UPDATE SKIP LOCKED) "
            "RETURNING id, queue, agent, payload, priority, epoch, attempts, failures, "
            "redeliveries, max_attempts, max_redeliveries, deadline, idempotency_key, "
            "parent_id, created_at, headers, lease_expires_at"
        )

    def _lock_task_sql(self) -> str:
        return "SELECT 1 FROM tasks WHERE id = ? AND epoch = ? AND state = 'running' FOR SHARE"

    def _for_update(self) -> str:
        return " FOR UPDATE SKIP LOCKED"

    def _lock_keys(self, keys: Iterable[str | None]) -> None:
        given = {k for k in keys if k is not None}
        if len(given) > 1:  # one key alone waits for one other transaction at most
            self._exec(LOCK_KEYS, (KEY_LOCKS, sorted({_key_hash(k) for k in given})))

    def _lock_events(self) -> None:
        # taken before the insert draws its id from the identity's sequence
        self._exec("SELECT pg_advisory_xact_lock(?)", (EVENTS_LOCK,))

    def _lock_queue(self, queue: str) -> None:
        # Serialise claimers of one queue for the rest of the transaction, so that a
        # quota on running tasks is counted exactly.
        self._exec("SELECT pg_advisory_xact_lock(hashtext(?))", (f"fleetops.queue.{queue}",))

    def _insert_many(self, tasks: Sequence[NewTask], now: float) -> list[int]:
        sql = _pg(INSERT_TASK + " RETURNING id")
        ids = []
        with self._talking(), self._conn.cursor() as cur:
            cur.executemany(sql, [task_params(t, now) for t in tasks], returning=True)
            while True:
                row = cur.fetchone()
                ids.append(int(row[0]))  # type: ignore[index]
                if not cur.nextset():
                    break
        return ids

    def schema_version(self) -> int:
        row = self._exec("SELECT to_regclass('schema_migrations')").fetchone()
        if row[0] is None:
            return 0
        row = self._exec("SELECT MAX(version) FROM schema_migrations").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> list[int]:
        # a migration may wait for another process's (see _migration_lock): no deadline
        self._exempt = True
        try:
            return super().migrate()
        finally:
            self._exempt = False

    def _migration_lock(self) -> None:
        # a migration may rebuild an index of a large table, and may wait for another
        # process's migration: no statement timeout for the rest of this transaction
        self._exec("SET LOCAL statement_timeout = 0")
        self._exec("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))

    def close(self) -> None:
        _WATCHDOG.forget(self)
        self._conn.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _dropped_while_idle(conn: psycopg.Connection[Any]) -> bool:
    """Whether ``conn``, an idle connection, has heard from the server since its last
    call: its socket has something to read. A server that ends a session says why
    and closes it (the close may come a moment after the words); it sends an idle
    session nothing else unasked but the odd notice or setting report, after which
    a new connection is no loss."""
    try:
        poller = select.poll()  # any descriptor number, unlike select()
        poller.register(conn.pgconn.socket, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, psycopg.Error):  # no socket left
        return True


class _Watchdog:
    """One thread per process that gives up on calls to a server that does not answer
    (see :data:`DEADLINE_MARGIN`): it looks every :data:`WATCH_INTERVAL` seconds."""

    def __init__(self) -> None:
        self._stores: weakref.WeakSet[PostgresStore] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, store: PostgresStore) -> None:
        with self._lock:
            self._stores.add(store)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="fleetops-pg-deadline", daemon=True
                )
                self._thread.start()

    def forget(self, store: PostgresStore) -> None:
        with self._lock:
            self._stores.discard(store)

    def _run(self) -> None:
        while True:
            time.sleep(WATCH_INTERVAL)
            with self._lock:
                stores = list(self._stores)
            now = time.monotonic()
            for store in stores:
                store.check_deadline(now)
            del stores


_WATCHDOG = _Watchdog()


__all__ = ["PostgresStore", "StoreError"]
