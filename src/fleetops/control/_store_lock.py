"""One control plane per store.

A fleet's state directory is locked by its control plane (see ``ControlLock``), but two
fleets in two directories can name one store: a spec copied elsewhere, or ``store:``
pointing both at the same PostgreSQL database. Two control planes on one store would
both prune its tasks (each with its own retention), both retire its telemetry, both
run deployments and record readiness, and run twice the workers the spec asks for.
So a control plane takes a lock of the store's own before its first write, and a
second one is refused, naming the first.

Both locks are held by the control plane's process and go when it does, ``kill -9``
included, so none is ever left behind to be cleared by hand:

* SQLite: ``flock`` on a file beside the database (``<database>-control.lock``), which
  says who holds it.
* PostgreSQL: a session-level advisory lock, keyed by :data:`ADVISORY_CLASS` and the
  schema the store's tables are in (two fleets may share a database, each in a schema
  of its own), on a connection of its own whose ``application_name`` says who holds
  it. Should that connection drop (the server restarted), the lock goes with it:
  :meth:`StoreLock.keep`, once a minute, takes it again on a new connection, and says
  whether it could.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .._exceptions import StoreUnavailable
from ..store._open import redact
from ..store._postgres import TCP_LIVENESS
from ._footprint import sqlite_file
from ._state import FleetRunning

#: The first key of the PostgreSQL advisory lock a control plane holds ("flee" in
#: ASCII); the second is the hash of the store's schema (see :data:`_SCHEMA_KEY`).
ADVISORY_CLASS = int.from_bytes(b"flee", "big")
#: The schema the store's tables are in, hashed: as the store's sessions find it
_SCHEMA_KEY = "hashtext(coalesce(current_schema(), current_setting('search_path')))"
#: How long :meth:`StoreLock.keep` tries to take a lock whose connection dropped
#: again while the server still shows it held (by the session that is ending).
RETAKE_SECONDS = 3.0
#: Beside a SQLite database: the file a control plane holds a flock on.
SQLITE_LOCK_SUFFIX = "-control.lock"

_HOLDER_SQL = f"""
SELECT a.pid, a.application_name, host(a.client_addr), a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = %s::oid AND l.objid = {_SCHEMA_KEY}::oid
"""


def holder_name(pid: int | None = None) -> str:
    """How a control plane names itself to PostgreSQL (at most 63 bytes, the limit)."""
    return f"fleetops control plane pid {pid or os.getpid()} on {socket.gethostname()}"[:63]


class StoreLock:
    """The lock on ``url``'s store that one control plane holds while it runs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.path = _lock_path(url)
        self._file: IO[str] | None = None
        self._conn: psycopg.Connection[Any] | None = None
        #: taken, and not released since (keep takes it again if it was lost)
        self._wanted = False

    @property
    def taken(self) -> bool:
        """Taken, and not released since (whether or not its connection holds it now)."""
        return self._wanted

    @property
    def held(self) -> bool:
        return self._file is not None or self._conn is not None

    def acquire(self, info: dict[str, Any]) -> None:
        """Take the lock, or raise :class:`FleetRunning` naming who holds it."""
        if self.held:
            return
        if self.path is not None:
            self._acquire_file(self.path, info)
        else:
            self._acquire_advisory()
        self._wanted = True

    def keep(self) -> bool:
        """Check that the lock is still held, and take it again if its connection
        dropped (PostgreSQL); False if another control plane took it meanwhile or the
        server cannot be reached (the next call tries again)."""
        if not self._wanted:
            return False
        if self.path is not None:
            return self._file is not None
        if self._conn is not None:
            try:
                self._conn.execute("SELECT 1")
                return True
            except psycopg.Error:
                with contextlib.suppress(psycopg.Error):
                    self._conn.close()
                self._conn = None
        # the session that dropped may still be ending on the server, its lock with it
        ends = time.monotonic() + RETAKE_SECONDS
        while True:
            try:
                self._acquire_advisory()
                return True
            except (StoreUnavailable, psycopg.Error):
                return False
            except FleetRunning:
                if time.monotonic() >= ends:
                    return False
                time.sleep(0.1)

    def release(self) -> None:
        self._wanted = False
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()  # the session ends, and its advisory lock with it
            self._conn = None

    def _acquire_file(self, path: Path, info: dict[str, Any]) -> None:
        handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held while running
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            said = handle.read()
            handle.close()
            raise FleetRunning(_taken(self.url, _file_holder(said))) from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({**info, "host": socket.gethostname()}))
        handle.flush()
        self._file = handle

    def _acquire_advisory(self) -> None:
        given = conninfo_to_dict(self.url)
        liveness = {k: v for k, v in TCP_LIVENESS.items() if k not in given}
        try:
            conn: psycopg.Connection[Any] = psycopg.connect(
                make_conninfo(self.url, application_name=holder_name(), **liveness),
                autocommit=True,
                connect_timeout=10,
            )
        except psycopg.Error as exc:
            raise StoreUnavailable(
                f"cannot connect to the PostgreSQL store at {redact(self.url)}: "
                f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
            ) from exc
        try:
            row = conn.execute(
                f"SELECT pg_try_advisory_lock(%s, {_SCHEMA_KEY})", (ADVISORY_CLASS,)
            ).fetchone()
            if row is None or not row[0]:
                holder = conn.execute(_HOLDER_SQL, (ADVISORY_CLASS,)).fetchone()
                who = (
                    f"{holder[1] or 'a session'} (server pid {holder[0]}, from "
                    f"{holder[2] or 'a local socket'}, since {holder[3]:%Y-%m-%d %H:%M:%S})"
                    if holder is not None
                    else "another session"
                )
                raise FleetRunning(_taken(self.url, who))
        except BaseException:
            conn.close()
            raise
        self._conn = conn


def _lock_path(url: str) -> Path | None:
    database = sqlite_file(url)
    return None if database is None else Path(f"{database}{SQLITE_LOCK_SUFFIX}")


def _file_holder(said: str) -> str:
    try:
        info = json.loads(said)
    except ValueError:
        info = None
    if not isinstance(info, dict):
        return "another process"
    parts = [f"pid {info.get('pid', '?')} on {info.get('host', '?')}"]
    if info.get("spec"):
        parts.append(f"spec {info['spec']}")
    if info.get("api_url"):
        parts.append(f"API {info['api_url']}")
    return "a control plane (" + ", ".join(parts) + ")"


def _taken(url: str, who: str) -> str:
    return (
        f"another control plane runs a fleet on the store {redact(url)}: {who}. Two on one "
        "store would both prune it, run its deployments and run the workers twice: stop "
        "that one with 'fleetops down' in its directory, or give this fleet a store of its "
        "own (store: in the spec)"
    )
