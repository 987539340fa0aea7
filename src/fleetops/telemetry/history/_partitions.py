"""Time partitions of the per-series tables.

Each tier's rows live in tables that each hold one span of time, ``(end - width,
end]``, named by its end (``samples_raw_1700006400``). The ``partitions`` table is the
catalog, with a row count per partition so that retention can report what it dropped
without scanning it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from . import _schema as sql
from ._db import Database

#: Target span of one partition per tier; each is rounded up to a whole number of the
#: next tier's buckets, so that no bucket of the next tier spans two partitions.
PARTITION_SECONDS = {"raw": 2 * 3600, "medium": 86400, "low": 10 * 86400}


class Partitions:
    """One tier's partition tables."""

    def __init__(self, tier: str, width_ms: int) -> None:
        self.tier = tier
        self.width_ms = width_ms
        self._prefix = sql.PREFIX[tier]

    def table(self, end: int) -> str:
        return f"{self._prefix}_{end // 1000}"

    def end_of(self, ts: int) -> int:
        """The end of the partition that holds ``ts``."""
        return -(-ts // self.width_ms) * self.width_ms

    def ends(self, db: Database) -> list[int]:
        return [int(row[0]) for row in db.execute(sql.PARTITION_ENDS, (self.tier,))]

    def overlapping(self, db: Database, lo: int, hi: int) -> list[int]:
        """Ends of the partitions that may hold rows in ``(lo, hi]``, oldest first."""
        return [end for end in self.ends(db) if end > lo and end - self.width_ms < hi]

    def tables(self, db: Database) -> list[str]:
        return [self.table(end) for end in self.ends(db)]

    def ensure(self, db: Database, end: int) -> str:
        """The table of the partition ending at ``end``, created if it is new."""
        table = self.table(end)
        if db.execute(sql.ADD_PARTITION, (self.tier, end)).rowcount:
            db.execute(sql.create_partition(self.tier, table))
        return table

    def insert(self, db: Database, rows: Sequence[Sequence[Any]], ts_index: int = 1) -> int:
        """Insert rollup rows, each into the partition of its timestamp."""
        split: dict[int, list[Sequence[Any]]] = {}
        for row in rows:
            split.setdefault(self.end_of(int(row[ts_index])), []).append(row)
        for end, part in sorted(split.items()):
            db.executemany(sql.insert_rollups(self.ensure(db, end)), part)
            self.counted(db, end, len(part))
        return len(rows)

    def spans(self, lo: int, hi: int) -> Iterable[tuple[int, int, int]]:
        """``(end, from, to)`` for each partition span covering ``(lo, hi]``."""
        end = self.end_of(lo + 1)
        while end - self.width_ms < hi:
            yield end, max(lo, end - self.width_ms), min(hi, end)
            end += self.width_ms

    def counted(self, db: Database, end: int, rows: int) -> None:
        db.execute(sql.COUNT_PARTITION_ROWS, (rows, self.tier, end))

    def drop(self, db: Database, end: int) -> int:
        """Drop a whole partition; answer the rows it held."""
        rows = int(db.scalar(sql.PARTITION_ROWS, (self.tier, end)) or 0)
        db.execute(sql.drop_table(self.table(end)))
        db.execute(sql.DROP_PARTITION, (self.tier, end))
        return rows

    def expire(self, db: Database, cutoff: int, sids: Sequence[int]) -> int:
        """Delete every row before ``cutoff``: whole partitions, then the one it falls in."""
        deleted = 0
        for end in self.ends(db):
            if end < cutoff:
                deleted += self.drop(db, end)
            elif end - self.width_ms < cutoff:
                removed = db.executemany(
                    sql.expire(self.table(end)), [(sid, cutoff) for sid in sids]
                )
                self.counted(db, end, -removed)
                deleted += removed
        return deleted
