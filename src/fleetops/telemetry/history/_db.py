"""The history's SQLite connection: WAL, our own lock retry, short transactions.

The history lives in its own file so its write rate never contends with the task
store. It runs with ``synchronous=NORMAL``: a commit survives any process crash, and
a power loss can lose at most the last few seconds of samples, which for metrics is
the right trade. Writers take the lock with ``BEGIN IMMEDIATE`` and, when another
process holds it, retry with short sleeps of our own (as the task store does).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..._exceptions import StoreError, StoreUnavailable

#: How long a writer keeps retrying for the write lock before giving up.
LOCK_TIMEOUT_SECONDS = 30.0
#: Page cache per connection, KiB. The hot set is the head and the newest page of
#: each series in the per-series tables.
CACHE_KIB = 64 * 1024
#: After a checkpoint the write-ahead log is truncated to at most this many bytes.
WAL_LIMIT_BYTES = 16 * 1024 * 1024


class Database:
    """One connection to a history file, used under its owner's lock."""

    def __init__(
        self, path: str | os.PathLike[str], *, lock_timeout: float = LOCK_TIMEOUT_SECONDS
    ) -> None:
        self.path = Path(path)
        self._lock_timeout = lock_timeout
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=0
            )
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open the history file {self.path}: {exc}") from exc
        try:
            # auto_vacuum only takes effect before the first table is created.
            self.retrying("PRAGMA auto_vacuum=INCREMENTAL")
            self.retrying("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA busy_timeout=0")
            self.conn.execute("PRAGMA temp_store=MEMORY")
            self.conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            self.conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        except sqlite3.Error as exc:
            self.conn.close()
            raise StoreUnavailable(f"cannot open the history file {self.path}: {exc}") from exc

    def retrying(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """Run one statement, retrying while another connection holds the lock."""
        deadline = time.monotonic() + self._lock_timeout
        pause = 0.0002
        while True:
            try:
                return self.conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if "locked" not in message and "busy" not in message:
                    raise StoreError(f"history file {self.path}: {message}") from exc
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"history file {self.path} stayed locked for {self._lock_timeout:.0f} s"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 1.5, 0.005)

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """Run one statement inside a transaction this object opened."""
        try:
            return self.conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise StoreError(f"history file {self.path}: {exc}") from exc

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement per row; answer the number of rows changed."""
        before = self.conn.total_changes
        try:
            self.conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise StoreError(f"history file {self.path}: {exc}") from exc
        return self.conn.total_changes - before

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def write(self) -> Iterator[None]:
        """A write transaction: all of it is committed, or none of it."""
        self.retrying("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.retrying("COMMIT")

    @contextmanager
    def read(self) -> Iterator[None]:
        """A read transaction: every statement in it sees the same snapshot."""
        self.retrying("BEGIN")
        try:
            yield
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
