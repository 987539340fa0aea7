"""Reading a range of entries per series, stitched across tiers.

The chosen tier supplies the oldest part of the range, up to its watermark; each finer
tier supplies the part after the coarser one's watermark; raw samples (partitions, then
the head) supply the rest. So a range that ends now is complete however far behind
the rollups are.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import groupby
from operator import itemgetter

from . import _schema as sql
from ._db import Database
from ._partitions import Partitions
from ._policy import TIERS
from ._query import Rows

_IN_BATCH = 500  # series ids per IN (...) list


def read_rows(
    db: Database,
    parts: dict[str, Partitions],
    watermarks: dict[str, int | None],
    sids: list[int],
    level: int,
    lo: int,
    hi: int,
    *,
    columns: tuple[str, ...],
    stale_ms: int,
    tiling: tuple[int, int] | None = None,
) -> dict[int, Rows]:
    """``columns`` of the entries in ``(lo, hi]`` per series, from tier ``TIERS[level]``
    and finer ones.

    With ``tiling`` ``(start, step)``, the query's windows are the steps themselves,
    ``(start + (k-1)·step, start + k·step]``, and rollup rows are combined per step by
    SQLite: one entry per series and step comes back instead of one per bucket. For
    counter increments (``inc``), raw samples are read from ``stale_ms`` earlier so that
    the first sample's delta is known.
    """
    rows = {sid: Rows(columns) for sid in sids}
    if not sids:
        return rows
    bound = lo
    for i in range(level, 0, -1):
        tier = TIERS[i]
        wm = watermarks[tier]
        upto = hi if wm is None else min(hi, wm)
        if wm is None or upto <= bound:
            continue
        part = parts[tier]
        for end in part.overlapping(db, bound, upto):
            table = part.table(end)
            for batch in _batches(sids):
                if tiling is None:
                    query = sql.read_rollups(table, columns, len(batch))
                    params: tuple[int, ...] = (*batch, bound, upto)
                else:
                    start, step = tiling
                    query = sql.read_rollups_per_step(table, columns, len(batch))
                    params = (*batch, bound, upto, start - step + 1, step)
                found = db.execute(query, params).fetchall()
                for sid, group in groupby(found, key=itemgetter(0)):
                    rows[sid].add_rollups(list(group), i)
        bound = upto
    if hi <= bound:
        return rows
    since = bound - stale_ms if "inc" in columns else bound
    raw = parts["raw"]
    for batch in _batches(sids):
        samples: dict[int, tuple[list[int], list[float]]] = {}
        queries = [
            (sql.read_samples(raw.table(end), len(batch)), (*batch, since, hi))
            for end in raw.overlapping(db, since, hi)
        ]
        queries.append((sql.read_head(len(batch)), (since, hi, *batch)))
        for query, params in queries:
            for sid, group in groupby(db.execute(query, params).fetchall(), key=itemgetter(0)):
                ts, values = samples.setdefault(sid, ([], []))
                _, new_ts, new_values = zip(*group, strict=True)
                ts.extend(new_ts)
                values.extend(new_values)
        for sid, (ts, values) in samples.items():
            rows[sid].add_samples(ts, values, bound, stale_ms)
    return rows


def _batches(sids: list[int]) -> Iterator[list[int]]:
    for i in range(0, len(sids), _IN_BATCH):
        yield sids[i : i + _IN_BATCH]
