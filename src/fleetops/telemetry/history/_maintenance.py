"""Downsampling, compaction and retention of one history file.

Incremental by watermarks kept in the file: ``wm_medium`` is the end of the newest
medium bucket rolled up, ``wm_low`` the end of the newest low bucket. Each run does
the buckets after the watermark that ended at least ``grace`` ago, in transactions
bounded in size, so a second run at the same time does nothing and a run after a long
pause catches up without holding the write lock for long.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import _schema as sql
from ._db import Database
from ._partitions import PARTITION_SECONDS, Partitions
from ._policy import TIERS
from ._rollup import roll_up

_CATCH_UP_MS = 30 * 60_000  # raw time rolled up per transaction when behind
_LOW_CATCH_UP_MS = 24 * 3_600_000  # medium time rolled up per transaction when behind


def _bucket_end(ts_ms: int, step_ms: int) -> int:
    return -(-ts_ms // step_ms) * step_ms


def partition_widths(medium_step_ms: int, low_step_ms: int) -> dict[str, int]:
    """Partition widths for new files: whole next-tier buckets wide."""
    align = {"raw": medium_step_ms, "medium": low_step_ms, "low": low_step_ms}
    return {tier: -(-PARTITION_SECONDS[tier] * 1000 // align[tier]) * align[tier] for tier in TIERS}


class Maintainer:
    """Rolls up, compacts and expires; owned by one :class:`HistoryStore`."""

    def __init__(
        self,
        *,
        steps_ms: dict[str, int],
        keep_ms: dict[str, int],
        widths_ms: dict[str, int],
        grace_ms: int,
        stale_ms: int,
        compact_ms: int,
    ) -> None:
        self.parts = {tier: Partitions(tier, widths_ms[tier]) for tier in TIERS}
        self._step = steps_ms
        self._keep = keep_ms
        self._grace = grace_ms
        self._stale = stale_ms
        self._compact = compact_ms
        self.wm_medium: int | None = None
        self.wm_low: int | None = None
        # Each series' last sample before the medium watermark, for counter deltas.
        self._previous: dict[int, tuple[int, float]] = {}
        self._previous_at: int | None = None
        self._expired_at: dict[str, int] = {}

    def load(self, db: Database) -> tuple[int | None, int | None]:
        self.wm_medium = _meta(db, "wm_medium")
        self.wm_low = _meta(db, "wm_low")
        return self.wm_medium, self.wm_low

    def target(self, now_ms: int) -> int:
        """The end of the newest medium bucket that may be rolled up at ``now_ms``."""
        step = self._step["medium"]
        return (now_ms - self._grace) // step * step

    def due(self, now_ms: int) -> bool:
        """Whether ``compact_every`` of raw time (or the first roll) is waiting."""
        target = self.target(now_ms)
        if self.wm_medium is None:
            return True
        return target - self.wm_medium >= max(self._compact, self._step["medium"])

    # --- downsampling ------------------------------------------------------------------------

    def roll_medium(self, db: Database, target: int) -> tuple[int, int, int | None]:
        """One transaction of medium rollups: (rows, samples compacted, new watermark)."""
        step = self._step["medium"]
        with db.write():
            wm = _meta(db, "wm_medium")
            if wm is None:
                first = db.scalar(sql.OLDEST_HEAD)
                if first is None:
                    return 0, 0, None
                wm = _bucket_end(int(first), step) - step
            if target <= wm:
                return 0, 0, None
            hi = min(target, wm + max(step, _CATCH_UP_MS // step * step))
            if self._previous_at != wm:  # first roll here, or another process rolled
                self._previous = {}
                since = wm - self._stale
            else:
                since = wm
            self._previous_at = None  # not to be trusted unless this transaction commits
            found = db.execute(sql.HEAD_RANGE, (since, hi))
            made = roll_up(found, wm, step, self._stale, self._previous)
            self.parts["medium"].insert(db, made)
            db.execute(sql.SET_META, ("wm_medium", hi))
            # Keep the samples that counter deltas of the next roll still need.
            moved = self._compact_head(db, hi - self._stale)
        self._previous_at = self.wm_medium = hi
        return len(made), moved, hi

    def _compact_head(self, db: Database, cut: int) -> int:
        first = db.scalar(sql.OLDEST_HEAD)
        if first is None or int(first) > cut:
            return 0
        raw = self.parts["raw"]
        moved = 0
        for end, lo, hi in raw.spans(int(first) - 1, cut):
            n = db.execute(sql.compact_head(raw.ensure(db, end)), (lo, hi)).rowcount
            raw.counted(db, end, n)
            moved += n
        db.execute(sql.DROP_COMPACTED, (cut,))
        return moved

    def roll_low(self, db: Database) -> tuple[int, int | None]:
        """One transaction of low rollups: (rows, new watermark), or None when caught up."""
        step = self._step["low"]
        medium = self.parts["medium"]
        with db.write():
            medium_wm, wm = _meta(db, "wm_medium"), _meta(db, "wm_low")
            if medium_wm is None:
                return 0, None
            target = medium_wm // step * step
            if wm is None:
                ends = medium.ends(db)
                first = db.scalar(sql.oldest(medium.table(ends[0]))) if ends else None
                if first is None:
                    return 0, None
                wm = _bucket_end(int(first), step) - step
            if target <= wm:
                return 0, None
            hi = min(target, wm + max(step, _LOW_CATCH_UP_MS // step * step))
            made: list[Sequence[float]] = []
            for end in medium.overlapping(db, wm, hi):
                params = {"step": step, "lo": wm, "hi": hi}
                made.extend(db.execute(sql.roll_low(medium.table(end)), params).fetchall())
            self.parts["low"].insert(db, made)
            db.execute(sql.SET_META, ("wm_low", hi))
        self.wm_low = hi
        return len(made), hi

    # --- retention -----------------------------------------------------------------------------

    def expiring(self, now_ms: int, wm_low: int | None) -> dict[str, int]:
        """The tiers to sweep now, each with its cutoff (rows before it expire)."""
        due = {}
        for tier in TIERS:
            cutoff = now_ms - self._keep[tier]
            if tier == "medium":
                if wm_low is None:
                    continue  # nothing has been rolled into the low tier yet
                cutoff = min(cutoff, wm_low + 1)
            gate = max(self._step["medium" if tier == "raw" else tier], self._compact)
            last = self._expired_at.get(tier)
            if last is None or cutoff - last >= gate:
                due[tier] = cutoff
        return due

    def expire(self, db: Database, now_ms: int) -> tuple[dict[str, int], list[int]]:
        """Delete what expired; answer rows deleted per tier and the series dropped."""
        deleted = dict.fromkeys(TIERS, 0)
        gone: list[int] = []
        if not self.expiring(now_ms, self.wm_low):
            return deleted, gone
        with db.write():
            due = self.expiring(now_ms, _meta(db, "wm_low"))
            sids = [int(r[0]) for r in db.execute(sql.SERIES_IDS)] if due else []
            for tier, cutoff in due.items():
                deleted[tier] = self.parts[tier].expire(db, cutoff, sids)
            if deleted["low"]:
                tables = [t for tier in TIERS for t in self.parts[tier].tables(db)]
                gone = [int(r[0]) for r in db.execute(sql.empty_series(tables))]
                db.executemany(sql.DELETE_SERIES, [(sid,) for sid in gone])
        self._expired_at.update(due)
        for sid in gone:
            self._previous.pop(sid, None)
        return deleted, gone


def _meta(db: Database, key: str) -> int | None:
    value = db.scalar(sql.GET_META, (key,))
    return None if value is None else int(value)
