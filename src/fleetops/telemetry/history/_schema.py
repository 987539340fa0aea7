"""The history file's schema and every SQL statement the history runs.

Tables (all timestamps are integer milliseconds since the epoch)::

    meta           key → value: schema settings and the rollup watermarks
    series         id ↔ (metric, labels as canonical JSON)
    samples_head   (ts, series_id) → value   recent raw samples, append-only
    samples_raw    (series_id, ts) → value   older raw samples, clustered per series
    rollup_medium  (series_id, ts) → count, sum, min, max, last, inc
    rollup_low     (series_id, ts) → count, sum, min, max, last, inc

Why two raw tables: a scrape writes one sample to each of N series. Keyed by series,
those N rows land on N different B-tree pages and every commit rewrites N pages.
Keyed by time, they are appended to one or two pages. So ingest appends to
``samples_head`` and :meth:`~HistoryStore.downsample` later moves rolled-up samples to
``samples_raw`` in series order, rewriting each page once for many samples (the same
idea as Prometheus' in-memory head block and its write-ahead log).

A rollup row's ``ts`` is the end of its bucket: the row at 12:01:00 summarises the
samples in (12:00:00, 12:01:00], the way a PromQL range ``[1m]`` evaluated at 12:01:00
does. ``inc`` is the counter increase inside the bucket with resets removed, so the
increase over any run of whole buckets is the sum of their ``inc``.
"""

from __future__ import annotations

#: Written to ``PRAGMA user_version``; a file with a larger number is refused.
SCHEMA_VERSION = 1

ROLLUP_TABLES = {"medium": "rollup_medium", "low": "rollup_low"}

_ROLLUP_COLUMNS = (
    "series_id INTEGER NOT NULL, ts INTEGER NOT NULL, count INTEGER NOT NULL, "
    "sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL, last REAL NOT NULL, "
    "inc REAL NOT NULL, PRIMARY KEY (series_id, ts)"
)

CREATE = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "metric TEXT NOT NULL, labels TEXT NOT NULL, UNIQUE (metric, labels))",
    "CREATE TABLE IF NOT EXISTS samples_head (ts INTEGER NOT NULL, series_id INTEGER NOT NULL, "
    "value REAL NOT NULL, PRIMARY KEY (ts, series_id)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS samples_raw (series_id INTEGER NOT NULL, ts INTEGER NOT NULL, "
    "value REAL NOT NULL, PRIMARY KEY (series_id, ts)) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS rollup_medium ({_ROLLUP_COLUMNS}) WITHOUT ROWID",
    f"CREATE TABLE IF NOT EXISTS rollup_low ({_ROLLUP_COLUMNS}) WITHOUT ROWID",
)

GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"

INSERT_SERIES = "INSERT OR IGNORE INTO series (metric, labels) VALUES (?, ?)"
SERIES_ID = "SELECT id FROM series WHERE metric = ? AND labels = ?"
ALL_SERIES = "SELECT id, metric, labels FROM series"
SERIES_AFTER = "SELECT id, metric, labels FROM series WHERE id > ?"
SERIES_SHAPE = "SELECT count(*), coalesce(max(id), 0) FROM series"
SERIES_IDS = "SELECT id FROM series"

INSERT_HEAD = "INSERT OR REPLACE INTO samples_head (ts, series_id, value) VALUES (?, ?, ?)"
OLDEST_HEAD = "SELECT min(ts) FROM samples_head"
OLDEST_MEDIUM = (
    "SELECT min((SELECT min(ts) FROM rollup_medium WHERE series_id = s.id)) FROM series AS s"
)

# A medium row is the last of its low bucket when its series' next row is in a later one.
HEAD_RANGE = "SELECT ts, series_id, value FROM samples_head WHERE ts > ? AND ts <= ?"
INSERT_MEDIUM = (
    "INSERT OR REPLACE INTO rollup_medium (series_id, ts, count, sum, min, max, last, inc) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)

ROLL_LOW = """
INSERT OR REPLACE INTO rollup_low (series_id, ts, count, sum, min, max, last, inc)
SELECT series_id, (ts + :step - 1) / :step * :step AS bucket, sum(count), sum(sum),
       min(min), max(max),
       max(CASE WHEN next_ts IS NULL OR (next_ts + :step - 1) / :step > (ts + :step - 1) / :step
           THEN last END),
       sum(inc)
FROM (
    SELECT m.series_id AS series_id, m.ts AS ts, m.count AS count, m.sum AS sum,
           m.min AS min, m.max AS max, m.last AS last, m.inc AS inc,
           lead(m.ts) OVER (PARTITION BY m.series_id ORDER BY m.ts) AS next_ts
    FROM series AS s CROSS JOIN rollup_medium AS m
    WHERE m.series_id = s.id AND m.ts > :lo AND m.ts <= :hi
)
GROUP BY series_id, bucket
"""

COMPACT_HEAD = (
    "INSERT OR REPLACE INTO samples_raw (series_id, ts, value) "
    "SELECT series_id, ts, value FROM samples_head WHERE ts <= ? ORDER BY series_id, ts"
)
DROP_COMPACTED = "DELETE FROM samples_head WHERE ts <= ?"

EXPIRE = {
    "raw": "DELETE FROM samples_raw WHERE series_id = ? AND ts < ?",
    "medium": "DELETE FROM rollup_medium WHERE series_id = ? AND ts < ?",
    "low": "DELETE FROM rollup_low WHERE series_id = ? AND ts < ?",
}
EMPTY_SERIES = """
SELECT id FROM series
WHERE id NOT IN (SELECT series_id FROM samples_head)
  AND NOT EXISTS (SELECT 1 FROM samples_raw WHERE series_id = series.id)
  AND NOT EXISTS (SELECT 1 FROM rollup_medium WHERE series_id = series.id)
  AND NOT EXISTS (SELECT 1 FROM rollup_low WHERE series_id = series.id)
"""
DELETE_SERIES = "DELETE FROM series WHERE id = ?"

COUNT_ROWS = {
    "head": "SELECT count(*) FROM samples_head",
    "raw": "SELECT count(*) FROM samples_raw",
    "medium": "SELECT count(*) FROM rollup_medium",
    "low": "SELECT count(*) FROM rollup_low",
}
TABLE_BYTES = "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
TABLE_OF_INDEX = "SELECT name, tbl_name FROM sqlite_master"


def read_raw(table: str, n_ids: int) -> str:
    """Samples of ``n_ids`` series in a time range, in series then time order."""
    marks = ", ".join("?" * n_ids)
    if table == "samples_head":
        where = f"ts > ? AND ts <= ? AND series_id IN ({marks})"
    else:
        where = f"series_id IN ({marks}) AND ts > ? AND ts <= ?"
    return f"SELECT series_id, ts, value FROM {table} WHERE {where} ORDER BY series_id, ts"


def read_rollup(table: str, n_ids: int) -> str:
    """Rollup rows of ``n_ids`` series in a range of bucket ends, in series then time order."""
    marks = ", ".join("?" * n_ids)
    return (
        f"SELECT series_id, ts, count, sum, min, max, last, inc FROM {table} "
        f"WHERE series_id IN ({marks}) AND ts > ? AND ts <= ? ORDER BY series_id, ts"
    )
