"""An idempotent receiver that stands in for the outside world in chaos runs.

Effects in a chaos run write here, as a payment API or a ticketing system would be
written to: every call is recorded raw in ``calls``; ``applied`` keeps one row per
idempotency key, and a call whose fencing token is older than the newest one seen
for its key is refused. From the two tables a run counts how often the side effect
really happened per task (must be exactly once) and how often it was re-invoked.
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key TEXT NOT NULL, task_id INTEGER NOT NULL, token INTEGER NOT NULL,
    pid INTEGER NOT NULL, at REAL NOT NULL, outcome TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (
    key TEXT PRIMARY KEY, task_id INTEGER NOT NULL, token INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class LedgerReport:
    calls: int
    applied: int
    tasks_applied: int
    duplicate_effects: int
    reexecutions: int
    stale_refused: int


class Ledger:
    """One SQLite file shared by every worker process of a chaos run."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)

    def apply(self, key: str, task_id: int, token: int) -> str:
        """Apply the effect named by ``key`` once; answer applied, duplicate or stale."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT token FROM applied WHERE key = ?", (key,)).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO applied (key, task_id, token) VALUES (?, ?, ?)",
                    (key, task_id, token),
                )
                outcome = "applied"
            elif token < row[0]:
                outcome = "stale"
            else:
                conn.execute("UPDATE applied SET token = ? WHERE key = ?", (token, key))
                outcome = "duplicate"
            conn.execute(
                "INSERT INTO calls (key, task_id, token, pid, at, outcome) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (key, task_id, token, os.getpid(), time.time(), outcome),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return outcome

    def report(self) -> LedgerReport:
        c = self._conn
        calls = c.execute("SELECT COUNT(*) FROM calls").fetchone()[0]
        applied = c.execute("SELECT COUNT(*) FROM applied").fetchone()[0]
        tasks = c.execute("SELECT COUNT(DISTINCT task_id) FROM applied").fetchone()[0]
        reexec = c.execute("SELECT COUNT(*) FROM calls WHERE outcome = 'duplicate'").fetchone()[0]
        stale = c.execute("SELECT COUNT(*) FROM calls WHERE outcome = 'stale'").fetchone()[0]
        return LedgerReport(calls, applied, tasks, applied - tasks, reexec, stale)

    def applied_task_ids(self) -> set[int]:
        return {r[0] for r in self._conn.execute("SELECT DISTINCT task_id FROM applied")}

    def close(self) -> None:
        self._conn.close()
