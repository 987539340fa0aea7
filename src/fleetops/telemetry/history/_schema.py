"""The history file's schema and every SQL statement the history runs.

Tables (all timestamps are integer milliseconds since the epoch)::

    meta                 key → value: bucket and partition widths, rollup watermarks
    series               id ↔ (metric, labels as canonical JSON)
    partitions           (tier, end_ts) → row_count: the catalog of the partition tables
    samples_head         (ts, series_id) → value   recent raw samples, append-only
    samples_raw_<end>    (series_id, ts) → value   older raw samples, clustered per series
    rollup_medium_<end>  (series_id, ts) → count, sum, min, max, last, inc
    rollup_low_<end>     (series_id, ts) → count, sum, min, max, last, inc

Why a head: a scrape writes one sample to each of N series. Keyed by series, those N
rows land on N different B-tree pages and every commit rewrites N pages. Keyed by
time, they are appended to one or two pages. So ingest appends to ``samples_head`` and
:meth:`~HistoryStore.downsample` later moves rolled-up samples to the per-series
tables in series order, rewriting each page once for many samples (the same idea as
Prometheus' in-memory head block and its write-ahead log).

Why partitions: the per-series tables are split by time into tables named by the end
of the span they hold, ``(end - width, end]``. Rows are only ever appended to the
newest partition, and retention drops whole partitions, so pages never fragment and
the file's size follows the data (Prometheus' blocks, VictoriaMetrics' partitions).

A rollup row's ``ts`` is the end of its bucket: the row at 12:01:00 summarises the
samples in (12:00:00, 12:01:00], the way a PromQL range ``[1m]`` evaluated at 12:01:00
does. ``inc`` is the counter increase inside the bucket with resets removed, so the
increase over any run of whole buckets is the sum of their ``inc``.
"""

from __future__ import annotations

#: Written to ``PRAGMA user_version``; a file with a larger number is refused.
SCHEMA_VERSION = 1

#: The table name prefix of each tier's partitions.
PREFIX = {"raw": "samples_raw", "medium": "rollup_medium", "low": "rollup_low"}

CREATE = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS series (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "metric TEXT NOT NULL, labels TEXT NOT NULL, UNIQUE (metric, labels))",
    "CREATE TABLE IF NOT EXISTS partitions (tier TEXT NOT NULL, end_ts INTEGER NOT NULL, "
    "row_count INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tier, end_ts)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS samples_head (ts INTEGER NOT NULL, series_id INTEGER NOT NULL, "
    "value REAL NOT NULL, PRIMARY KEY (ts, series_id)) WITHOUT ROWID",
)

_COLUMNS = {
    "raw": "series_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL NOT NULL, "
    "PRIMARY KEY (series_id, ts)",
    "rollup": "series_id INTEGER NOT NULL, ts INTEGER NOT NULL, count INTEGER NOT NULL, "
    "sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL, last REAL NOT NULL, "
    "inc REAL NOT NULL, PRIMARY KEY (series_id, ts)",
}

GET_META = "SELECT value FROM meta WHERE key = ?"
SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"

INSERT_SERIES = "INSERT OR IGNORE INTO series (metric, labels) VALUES (?, ?)"
SERIES_ID = "SELECT id FROM series WHERE metric = ? AND labels = ?"
ALL_SERIES = "SELECT id, metric, labels FROM series"
SERIES_AFTER = "SELECT id, metric, labels FROM series WHERE id > ?"
SERIES_SHAPE = "SELECT count(*), coalesce(max(id), 0) FROM series"
SERIES_IDS = "SELECT id FROM series"
DELETE_SERIES = "DELETE FROM series WHERE id = ?"

PARTITION_ENDS = "SELECT end_ts FROM partitions WHERE tier = ? ORDER BY end_ts"
PARTITION_ROWS = "SELECT row_count FROM partitions WHERE tier = ? AND end_ts = ?"
ADD_PARTITION = "INSERT OR IGNORE INTO partitions (tier, end_ts) VALUES (?, ?)"
COUNT_PARTITION_ROWS = (
    "UPDATE partitions SET row_count = row_count + ? WHERE tier = ? AND end_ts = ?"
)
DROP_PARTITION = "DELETE FROM partitions WHERE tier = ? AND end_ts = ?"

INSERT_HEAD = "INSERT OR REPLACE INTO samples_head (ts, series_id, value) VALUES (?, ?, ?)"
OLDEST_HEAD = "SELECT min(ts) FROM samples_head"
HEAD_RANGE = "SELECT ts, series_id, value FROM samples_head WHERE ts > ? AND ts <= ?"
DROP_COMPACTED = "DELETE FROM samples_head WHERE ts <= ?"
HEAD_SERIES = "SELECT DISTINCT series_id FROM samples_head"


def create_partition(tier: str, table: str) -> str:
    columns = _COLUMNS["raw" if tier == "raw" else "rollup"]
    return f"CREATE TABLE IF NOT EXISTS {table} ({columns}) WITHOUT ROWID"


def drop_table(table: str) -> str:
    return f"DROP TABLE IF EXISTS {table}"


def compact_head(table: str) -> str:
    """Move head samples in ``(?, ?]`` into one raw partition, in series order."""
    return (
        f"INSERT OR REPLACE INTO {table} (series_id, ts, value) "
        "SELECT series_id, ts, value FROM samples_head WHERE ts > ? AND ts <= ? "
        "ORDER BY series_id, ts"
    )


def insert_rollups(table: str) -> str:
    return (
        f"INSERT OR REPLACE INTO {table} (series_id, ts, count, sum, min, max, last, inc) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    )


def roll_low(table: str) -> str:
    """Low-tier rows from the medium rows of one partition with ``ts`` in ``(:lo, :hi]``.

    A medium row is the last of its low bucket when its series' next row is in a later
    bucket. Partitions are whole low buckets wide, so no bucket spans two of them.
    """
    return f"""
SELECT series_id, (ts + :step - 1) / :step * :step AS bucket, sum(count), sum(sum),
       min(min), max(max),
       max(CASE WHEN next_ts IS NULL OR (next_ts + :step - 1) / :step > (ts + :step - 1) / :step
           THEN last END),
       sum(inc)
FROM (
    SELECT m.series_id AS series_id, m.ts AS ts, m.count AS count, m.sum AS sum,
           m.min AS min, m.max AS max, m.last AS last, m.inc AS inc,
           lead(m.ts) OVER (PARTITION BY m.series_id ORDER BY m.ts) AS next_ts
    FROM series AS s CROSS JOIN {table} AS m
    WHERE m.series_id = s.id AND m.ts > :lo AND m.ts <= :hi
)
GROUP BY series_id, bucket
"""


def oldest(table: str) -> str:
    return f"SELECT min((SELECT min(ts) FROM {table} WHERE series_id = s.id)) FROM series AS s"


def expire(table: str) -> str:
    return f"DELETE FROM {table} WHERE series_id = ? AND ts < ?"


def empty_series(tables: list[str]) -> str:
    """Series with no row in the head nor in any of ``tables``."""
    checks = "".join(
        f" AND NOT EXISTS (SELECT 1 FROM {t} WHERE series_id = series.id)" for t in tables
    )
    return f"SELECT id FROM series WHERE id NOT IN (SELECT series_id FROM samples_head){checks}"


def count_rows(table: str) -> str:
    return f"SELECT count(*) FROM {table}"


TABLE_BYTES = "SELECT name, sum(pgsize) FROM dbstat GROUP BY name"
TABLE_OF_INDEX = "SELECT name, tbl_name FROM sqlite_master"


def read_head(n_ids: int) -> str:
    """Head samples of ``n_ids`` series in ``(?, ?]``, in series then time order."""
    marks = ", ".join("?" * n_ids)
    return (
        "SELECT series_id, ts, value FROM samples_head "
        f"WHERE ts > ? AND ts <= ? AND series_id IN ({marks}) ORDER BY series_id, ts"
    )


def read_samples(table: str, n_ids: int) -> str:
    """Raw samples of ``n_ids`` series in ``(?, ?]``, in series then time order."""
    marks = ", ".join("?" * n_ids)
    return (
        f"SELECT series_id, ts, value FROM {table} "
        f"WHERE series_id IN ({marks}) AND ts > ? AND ts <= ? ORDER BY series_id, ts"
    )


def read_rollups(table: str, columns: tuple[str, ...], n_ids: int) -> str:
    """``columns`` of the rollups of ``n_ids`` series in ``(?, ?]``, in series then time order."""
    marks = ", ".join("?" * n_ids)
    return (
        f"SELECT series_id, ts, {', '.join(columns)} FROM {table} "
        f"WHERE series_id IN ({marks}) AND ts > ? AND ts <= ? ORDER BY series_id, ts"
    )


#: How each entry column combines over the rollups of one step.
_PER_STEP = {
    "count": "sum(count)",
    "sum": "sum(sum)",
    "min": "min(min)",
    "max": "max(max)",
    "last": "last",  # SQLite takes a bare column from the row holding max(ts)
    "inc": "sum(inc)",
}


def read_rollups_per_step(table: str, columns: tuple[str, ...], n_ids: int) -> str:
    """Like :func:`read_rollups`, but one row per series and query step.

    The step of a row is ``(ts - ?) / ?`` (integer division), with the parameters
    ``start - step + 1`` and ``step``; each output row is stamped with the newest
    bucket end of its step, so it stays inside the step's window.
    """
    marks = ", ".join("?" * n_ids)
    combined = ", ".join(_PER_STEP[name] for name in columns)
    return (
        f"SELECT series_id, max(ts), {combined} FROM {table} "
        f"WHERE series_id IN ({marks}) AND ts > ? AND ts <= ? "
        "GROUP BY series_id, (ts - ?) / ? ORDER BY series_id, 2"
    )
