"""The metric history: an embedded time-series store on one SQLite file.

Writes append to a time-ordered head; :meth:`HistoryStore.downsample` rolls complete
buckets up into the medium tier (and complete medium hours into the low tier) and then
moves rolled-up raw samples into per-series, time-partitioned tables;
:meth:`HistoryStore.enforce_retention` deletes what each tier no longer keeps.
:meth:`HistoryStore.maintain` runs both at a pace that keeps disk writes low and is
meant to be called every few seconds.

Queries read the coarsest tier they need for the oldest part of the range and finer
tiers for the newest part that has not been rolled up yet, so answers never lag.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from ..._clock import Clock, SystemClock
from ..._exceptions import Closed, ConfigError, SchemaError, StoreError
from .._logs import get_logger
from . import _schema as sql
from ._db import LOCK_TIMEOUT_SECONDS, Database
from ._maintenance import Maintainer, partition_widths
from ._model import (
    AGGREGATIONS,
    DEFAULT_AGGREGATION,
    FUNCTIONS,
    DownsampleResult,
    HistoryStats,
    RetentionResult,
    Sample,
    Series,
    SeriesInfo,
)
from ._policy import TIERS, RetentionPolicy
from ._query import COLUMNS, Rows, aggregate, bucket_quantile, evaluate, points, raw_points
from ._reader import read_rows
from ._series import SeriesIndex, SeriesKey, check_matchers, check_series

log = get_logger("fleetops.history")

#: A counter delta only counts when the previous sample is at most this old; a longer
#: gap means the series stopped and restarted (Prometheus' lookback delta).
STALENESS_SECONDS = 300.0
#: A bucket is rolled up this long after it ends; samples for it that arrive later
#: than that are dropped.
GRACE_SECONDS = 10.0
#: :meth:`HistoryStore.maintain` lets this much raw time accumulate in the head before
#: rolling it up and moving it to the per-series table. Longer writes less to disk;
#: shorter keeps the head, which queries of recent data scan, smaller.
COMPACT_EVERY_SECONDS = 300.0
#: Samples stamped further than this in the future are dropped (a clock or unit error).
FUTURE_TOLERANCE_SECONDS = 600.0
#: At most this many points per series in one answer, as Prometheus.
MAX_POINTS = 11_000
#: A rollup tier is read by default only when each query window spans at least this
#: many of its buckets (the rule Thanos' automatic downsampling uses).
MIN_BUCKETS_PER_WINDOW = 5


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _number(field: str, value: object, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(field, value, fix)
    return float(value)


class HistoryStore:
    """Metric history on one SQLite file (WAL), with raw, medium and low tiers.

    Safe to share between threads; several processes may read one file while one
    process writes it. ``clock`` supplies "now" for retention, downsampling, tier
    choice and samples ingested without a timestamp.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: RetentionPolicy | None = None,
        clock: Clock | None = None,
        grace: float = GRACE_SECONDS,
        compact_every: float = COMPACT_EVERY_SECONDS,
        lock_timeout: float = LOCK_TIMEOUT_SECONDS,
    ) -> None:
        self.retention = retention if retention is not None else RetentionPolicy()
        if not isinstance(self.retention, RetentionPolicy):
            raise ConfigError("retention", retention, "pass a RetentionPolicy")
        grace = _number("grace", grace, "use a number of seconds, 0 or more")
        compact_every = _number("compact_every", compact_every, "use a number of seconds")
        if grace < 0:
            raise ConfigError("grace", grace, "use a number of seconds, 0 or more")
        if compact_every < 0:
            raise ConfigError("compact_every", compact_every, "use a number of seconds, 0 or more")
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._grace_ms = _ms(grace)
        self._compact_ms = _ms(compact_every)
        self._stale_ms = _ms(STALENESS_SECONDS)
        self._keep_ms = {tier: _ms(self.retention.keep(tier)) for tier in TIERS}
        self._step_ms = {tier: _ms(self.retention.step(tier)) for tier in TIERS}
        self._lock = threading.RLock()
        self._index = SeriesIndex()
        self._maintainer: Maintainer | None = None
        self._dropped = {"late": 0, "future": 0, "nan": 0}
        self._db: Database | None = None
        db = Database(path, lock_timeout=lock_timeout)
        try:
            self._setup(db)
        except BaseException:
            db.close()
            raise
        self._db = db
        self.path = db.path

    # --- lifecycle -------------------------------------------------------------------------

    def _setup(self, db: Database) -> None:
        version = int(db.retrying("PRAGMA user_version").fetchone()[0])
        if version > sql.SCHEMA_VERSION:
            raise SchemaError(
                f"the history file {db.path} has schema {version}; this fleetops reads "
                f"up to {sql.SCHEMA_VERSION}: upgrade fleetops"
            )
        with db.write():
            for statement in sql.CREATE:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={sql.SCHEMA_VERSION}")
            for tier in ("medium", "low"):
                key = f"{tier}_step_ms"
                stored = db.scalar(sql.GET_META, (key,))
                if stored is None:
                    db.execute(sql.SET_META, (key, self._step_ms[tier]))
                elif int(stored) != self._step_ms[tier]:
                    raise ConfigError(
                        f"retention.{tier}_step",
                        self._step_ms[tier] / 1000,
                        f"this history file was written with {int(stored) / 1000:g} s "
                        f"{tier} buckets; use that step or a new file",
                    )
            widths = partition_widths(self._step_ms["medium"], self._step_ms["low"])
            for tier in TIERS:
                key = f"{tier}_partition_ms"
                stored = db.scalar(sql.GET_META, (key,))
                if stored is None:
                    db.execute(sql.SET_META, (key, widths[tier]))
                else:
                    widths[tier] = int(stored)
            self._maintainer = Maintainer(
                steps_ms=self._step_ms,
                keep_ms=self._keep_ms,
                widths_ms=widths,
                grace_ms=self._grace_ms,
                stale_ms=self._stale_ms,
                compact_ms=self._compact_ms,
            )
            self._maintainer.load(db)
            self._index.refresh(db)

    def close(self) -> None:
        """Close the file. Further calls raise :class:`~fleetops.Closed`."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> HistoryStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _open(self) -> tuple[Database, Maintainer]:
        if self._db is None or self._maintainer is None:
            raise Closed("this history store was closed")
        return self._db, self._maintainer

    def _now_ms(self, now: float | None) -> int:
        if now is None:
            return _ms(self._clock.now())
        return _ms(_number("now", now, "use seconds since the epoch"))

    # --- ingest ----------------------------------------------------------------------------

    def ingest(self, samples: Iterable[Sample]) -> int:
        """Store ``samples`` in one transaction; answer how many were stored.

        Samples for buckets already rolled up, stamped more than ten minutes in the
        future, or whose value is NaN are dropped and counted in :meth:`stats`. A
        sample that is not a valid :class:`Sample` raises :class:`~fleetops.ConfigError`
        and nothing of the batch is stored.
        """
        with self._lock:
            db, maintainer = self._open()
            now_ms = _ms(self._clock.now())
            ceiling = now_ms + _ms(FUTURE_TOLERANCE_SECONDS)
            floor = -1 if maintainer.wm_medium is None else maintainer.wm_medium
            ids = self._index.ids
            rows: list[tuple[int, int, float]] = []
            pending: dict[SeriesKey, list[tuple[int, float]]] = {}
            late = future = nan = 0
            for n, sample in enumerate(samples):
                try:
                    metric, labels, value, ts = sample
                    key = (metric, tuple(sorted(labels.items())))
                    v = float(value)
                    t = now_ms if ts is None else int(round(ts * 1000))
                    sid = ids.get(key)
                except (TypeError, ValueError, AttributeError, OverflowError) as exc:
                    raise ConfigError(
                        f"samples[{n}]",
                        sample,
                        "use Sample(metric, labels, value, ts) with a mapping of string "
                        "labels, a numeric value and a finite timestamp in seconds",
                    ) from exc
                if v != v:
                    nan += 1
                elif t <= floor:
                    late += 1
                elif t > ceiling:
                    future += 1
                elif sid is not None:
                    rows.append((t, sid, v))
                else:
                    pending.setdefault(key, []).append((t, v))
            for metric, pairs in pending:
                check_series(metric, dict(pairs), "sample")
            made: dict[SeriesKey, int] = {}
            if rows or pending:
                with db.write():
                    wm = db.scalar(sql.GET_META, ("wm_medium",))
                    if wm is not None and wm > floor:  # another process rolled up meanwhile
                        kept = [r for r in rows if r[0] > wm]
                        late += len(rows) - len(kept)
                        rows = kept
                        for key, entries in pending.items():
                            pending[key] = [e for e in entries if e[0] > wm]
                            late += len(entries) - len(pending[key])
                    new = [key for key, entries in pending.items() if entries]
                    made = self._index.create(db, new)
                    for key in new:
                        sid = made[key]
                        rows.extend((t, sid, v) for t, v in pending[key])
                    db.executemany(sql.INSERT_HEAD, rows)
                self._index.created(made)
                if wm is not None and wm > floor:
                    maintainer.wm_medium = int(wm)
            self._count_dropped(late, future, nan)
            return len(rows)

    def _count_dropped(self, late: int, future: int, nan: int) -> None:
        if not (late or future or nan):
            return
        self._dropped["late"] += late
        self._dropped["future"] += future
        self._dropped["nan"] += nan
        if late or future:
            log.warning("history.samples_dropped", late=late, future=future, path=str(self.path))

    # --- downsampling, compaction, retention -------------------------------------------------

    def downsample(self, now: float | None = None) -> DownsampleResult:
        """Roll up every complete bucket not rolled up yet; safe to call at any time.

        Incremental: a watermark per tier records the newest bucket already rolled up,
        and only buckets after it that ended at least ``grace`` ago are computed, so a
        second call with the same ``now`` does nothing. Raw samples that have been
        rolled up (and are older than the staleness limit, which counter deltas need)
        are moved from the head to the per-series partitions in the same transaction.
        """
        # The lock is taken per transaction, so ingest from other threads goes on while
        # a long catch-up runs.
        with self._lock:
            target = self._open()[1].target(self._now_ms(now))
        medium = compacted = low = 0
        while True:
            with self._lock:
                db, maintainer = self._open()
                rows, moved, reached = maintainer.roll_medium(db, target)
            medium += rows
            compacted += moved
            if reached is None or reached >= target:
                break
        while True:
            with self._lock:
                db, maintainer = self._open()
                rows, reached = maintainer.roll_low(db)
            low += rows
            if reached is None:
                break
        return DownsampleResult(medium_rows=medium, low_rows=low, compacted=compacted)

    def enforce_retention(self, now: float | None = None) -> RetentionResult:
        """Delete the rows each tier no longer keeps; safe to call at any time.

        A row expires when its timestamp (a bucket's end, for rollups) is older than
        ``now`` minus the tier's retention. Whole partitions are dropped; in the one the
        cutoff falls in, the expired rows are deleted. Rows not yet rolled up into the
        next tier are kept until they are. To stay cheap when called every few seconds,
        a tier is swept again only once its cutoff has moved by its bucket width (raw:
        the medium step) or ``compact_every``, whichever is longer, so a row can outlive
        its retention by up to that much; the first call after opening sweeps every tier.
        """
        with self._lock:
            db, maintainer = self._open()
            deleted, gone = maintainer.expire(db, self._now_ms(now))
            self._index.dropped(gone)
            if any(deleted.values()):
                self._release_free_pages(db)
            return RetentionResult(series=len(gone), **deleted)

    def _release_free_pages(self, db: Database) -> None:
        # Freed pages are reused by later inserts, so the file stays bounded without
        # this; giving them back only matters after a large drop (a retention cut or
        # many series gone), so do it only when a quarter of the file is free.
        free = int(db.retrying("PRAGMA freelist_count").fetchone()[0])
        total = int(db.retrying("PRAGMA page_count").fetchone()[0])
        if free > 256 and free * 4 > total:
            with db.write():
                db.execute("PRAGMA incremental_vacuum").fetchall()

    def maintain(self, now: float | None = None) -> tuple[DownsampleResult, RetentionResult]:
        """Downsample when ``compact_every`` of raw time is waiting, then enforce retention.

        The control plane calls this every few seconds.
        """
        with self._lock:
            now_s = self._now_ms(now) / 1000
            due = self._open()[1].due(_ms(now_s))
        rolled = self.downsample(now_s) if due else DownsampleResult()
        return rolled, self.enforce_retention(now_s)

    # --- queries ---------------------------------------------------------------------------

    def series(
        self, metric: str | None = None, matchers: Mapping[str, str] | None = None
    ) -> list[SeriesInfo]:
        """The stored series of ``metric`` (all, if None) whose labels match ``matchers``."""
        if metric is not None:
            check_series(metric, {}, "series")
        wanted = check_matchers(matchers)
        with self._lock:
            db, _ = self._open()
            with db.read():
                self._index.refresh(db)
            found = [self._index.labels[sid] for sid in self._index.match(metric, wanted)]
        return sorted(
            (SeriesInfo(m, labels) for m, labels in found),
            key=lambda s: (s.metric, sorted(s.labels.items())),
        )

    def query_range(
        self,
        metric: str,
        matchers: Mapping[str, str] | None,
        start: float,
        end: float,
        step: float,
        fn: str = "avg",
        *,
        window: float | None = None,
        by: Sequence[str] | None = None,
        agg: str | None = None,
        tier: str | None = None,
    ) -> list[Series]:
        """``fn`` of ``metric`` at ``start``, ``start + step``, … up to ``end``.

        Each point covers the window ``(t - window, t]`` (``window`` defaults to
        ``step``): ``avg``, ``min``, ``max``, ``sum``, ``count`` and ``last`` of the
        samples in it, or the counter ``increase`` in it and its ``rate`` per second,
        resets included. ``raw`` answers the stored samples in ``[start, end]`` as they
        are (the last value of each bucket, when the range is older than the raw tier).

        ``by`` groups series by those labels and combines each group per step with
        ``agg``: by default ``sum`` for ``rate``, ``increase``, ``sum`` and ``count``,
        ``avg`` for ``avg`` and ``last``, ``min`` and ``max`` for themselves.

        ``tier`` forces a tier. By default, among the tiers whose retention reaches back
        to ``start - window``, the coarsest with at least five buckets per window, else
        the finest (``raw`` always takes the finest). Series with no points are left out.
        """
        check_series(metric, {}, "query")
        wanted = check_matchers(matchers)
        if fn not in FUNCTIONS:
            raise ConfigError("fn", fn, f"use one of {', '.join(FUNCTIONS)}")
        groups = self._check_by(by)
        if fn == "raw" and groups is not None:
            raise ConfigError("by", by, "raw answers stored samples; group a function such as avg")
        if agg is not None and agg not in AGGREGATIONS:
            raise ConfigError("agg", agg, f"use one of {', '.join(AGGREGATIONS)}")
        if agg is not None and groups is None:
            raise ConfigError("agg", agg, "agg combines the series of each group: add by=[...]")
        with self._lock:
            db, _ = self._open()
            times, window_ms, level = self._plan(start, end, step, window, tier, fn)
            if fn == "raw":  # the stored entries in [start, end], not steps
                times = [_ms(start), _ms(end)]
            start_ms, end_ms = times[0], times[-1]
            with db.read():
                self._index.refresh(db)
                sids = self._index.match(metric, wanted)
                rows = self._read(db, sids, level, times, window_ms, fn)
            labels = {sid: self._index.labels[sid][1] for sid in sids}
        if fn == "raw":
            found = [
                Series(metric, labels[sid], raw_points(rows[sid], start_ms, end_ms), TIERS[r.tier])
                for sid, r in rows.items()
            ]
            return [s for s in found if s.points]
        values = {sid: evaluate(r, fn, times, window_ms) for sid, r in rows.items()}
        tiers = {sid: r.tier for sid, r in rows.items()}
        if groups is None:
            found = [
                Series(metric, labels[sid], points(times, values[sid]), TIERS[tiers[sid]])
                for sid in rows
            ]
            return [s for s in found if s.points]
        how = agg or DEFAULT_AGGREGATION[fn]
        answer = []
        for key, members in self._group(labels, groups, list(rows)):
            combined = aggregate([values[sid] for sid in members], how)
            level_used = max(tiers[sid] for sid in members)
            series = Series(metric, dict(key), points(times, combined), TIERS[level_used])
            if series.points:
                answer.append(series)
        return answer

    def histogram_quantile(
        self,
        q: float,
        metric: str,
        matchers: Mapping[str, str] | None,
        start: float,
        end: float,
        step: float,
        *,
        window: float | None = None,
        by: Sequence[str] | None = None,
        tier: str | None = None,
    ) -> list[Series]:
        """The ``q`` quantile of histogram ``metric`` per step, as PromQL's
        ``histogram_quantile(q, sum by (le, …) (rate(metric_bucket[window])))``.

        ``metric`` is the histogram's name (``message_delivery_latency``; the
        ``_bucket`` suffix may be given). Buckets are summed per group, all labels but
        ``le`` by default, or only ``by``; steps whose window saw no observation are
        left out.
        """
        q = _number("q", q, "use a quantile between 0 and 1, such as 0.95")
        if not 0 <= q <= 1:
            raise ConfigError("q", q, "use a quantile between 0 and 1, such as 0.95")
        if not isinstance(metric, str):
            check_series(metric, {}, "query")
        base = metric.removesuffix("_bucket")
        bucket_metric = f"{base}_bucket"
        check_series(bucket_metric, {}, "query")
        wanted = check_matchers(matchers)
        groups = self._check_by(by)
        if groups is not None and "le" in groups:
            raise ConfigError("by", by, "leave out 'le': buckets are always combined by le")
        with self._lock:
            db, _ = self._open()
            times, window_ms, level = self._plan(start, end, step, window, tier, "increase")
            with db.read():
                self._index.refresh(db)
                sids = [
                    sid
                    for sid in self._index.match(bucket_metric, wanted)
                    if "le" in self._index.labels[sid][1]
                ]
                rows = self._read(db, sids, level, times, window_ms, "increase")
            labels = {sid: self._index.labels[sid][1] for sid in sids}
        bounds: dict[int, float] = {}
        for sid in sids:
            try:
                bounds[sid] = float(labels[sid]["le"])
            except ValueError:
                continue
        without_le = {sid: {k: v for k, v in labels[sid].items() if k != "le"} for sid in bounds}
        answer = []
        for key, members in self._group(without_le, groups, list(bounds)):
            per_bound: dict[float, list[float]] = {}
            seen = [False] * len(times)
            for sid in members:
                increases = evaluate(rows[sid], "increase", times, window_ms)
                acc = per_bound.setdefault(bounds[sid], [0.0] * len(times))
                for k, v in enumerate(increases):
                    if v is not None:
                        acc[k] += v
                        seen[k] = True
            values = [
                bucket_quantile(q, [(b, acc[k]) for b, acc in per_bound.items()])
                if seen[k]
                else None
                for k in range(len(times))
            ]
            level_used = max(rows[sid].tier for sid in members)
            series = Series(base, dict(key), points(times, values), TIERS[level_used])
            if series.points:
                answer.append(series)
        return answer

    # --- query plumbing --------------------------------------------------------------------

    @staticmethod
    def _check_by(by: object) -> list[str] | None:
        if by is None:
            return None
        if isinstance(by, str) or not isinstance(by, Sequence):
            raise ConfigError("by", by, "use a list of label names, such as ['cluster']")
        if not all(isinstance(name, str) for name in by):
            raise ConfigError("by", by, "use a list of label names, such as ['cluster']")
        return list(by)

    @staticmethod
    def _group(
        labels: Mapping[int, Mapping[str, str]], by: list[str] | None, sids: list[int]
    ) -> Iterator[tuple[tuple[tuple[str, str], ...], list[int]]]:
        """Series grouped by the ``by`` labels (or by all their labels, when None)."""
        groups: dict[tuple[tuple[str, str], ...], list[int]] = {}
        for sid in sids:
            own = labels[sid]
            if by is None:
                key = tuple(sorted(own.items()))
            else:
                key = tuple((name, own[name]) for name in by if own.get(name))
            groups.setdefault(key, []).append(sid)
        yield from sorted(groups.items())

    def _plan(
        self,
        start: object,
        end: object,
        step: object,
        window: object,
        tier: object,
        fn: str,
    ) -> tuple[list[int], int, int]:
        """Step times, the window (ms) and the tier index a range query of ``fn`` reads."""
        start_s = _number("start", start, "use seconds since the epoch")
        end_s = _number("end", end, "use seconds since the epoch")
        step_s = _number("step", step, "use a step in seconds greater than 0")
        if step_s <= 0 or _ms(step_s) < 1:
            raise ConfigError("step", step, "use a step in seconds greater than 0")
        if end_s < start_s:
            raise ConfigError("end", end, f"use an end at or after start ({start_s:g})")
        start_ms, end_ms, step_ms = _ms(start_s), _ms(end_s), _ms(step_s)
        count = (end_ms - start_ms) // step_ms + 1
        if count > MAX_POINTS:
            least = (end_s - start_s) / (MAX_POINTS - 1)
            raise ConfigError(
                "step",
                step,
                f"that is {count} points per series; use a step of at least {least:.3g} s "
                f"({MAX_POINTS} points at most)",
            )
        window_ms = step_ms
        if window is not None:
            window_s = _number("window", window, "use a window in seconds greater than 0")
            if window_s <= 0:
                raise ConfigError("window", window, "use a window in seconds greater than 0")
            window_ms = _ms(window_s)
        if tier is None:
            # raw wants the stored samples: the finest tier that reaches back far enough.
            level = self._choose_tier(start_ms - window_ms, 0 if fn == "raw" else window_ms)
        elif tier in TIERS:
            level = TIERS.index(str(tier))
        else:
            raise ConfigError("tier", tier, f"use one of {', '.join(TIERS)}, or None to choose")
        # A rollup entry covers a whole bucket: a narrower window would miss most of them.
        window_ms = max(window_ms, self._step_ms[TIERS[level]])
        times = list(range(start_ms, end_ms + 1, step_ms))
        return times, window_ms, level

    def _choose_tier(self, earliest_ms: int, window_ms: int) -> int:
        """The tier a range query reads by default (an index in ``TIERS``).

        Among the tiers whose retention reaches back to ``earliest_ms``, the coarsest
        with at least ``MIN_BUCKETS_PER_WINDOW`` buckets in each window, so a long range
        reads few rows yet every point still summarises several buckets; failing that,
        the finest tier that reaches back far enough (or the coarsest, if none does).
        """
        now_ms = _ms(self._clock.now())
        covering = [
            i for i, name in enumerate(TIERS) if earliest_ms >= now_ms - self._keep_ms[name]
        ] or [len(TIERS) - 1]
        detailed = [
            i for i in covering if self._step_ms[TIERS[i]] * MIN_BUCKETS_PER_WINDOW <= window_ms
        ]
        return max(detailed) if detailed else min(covering)

    def _read(
        self,
        db: Database,
        sids: list[int],
        level: int,
        times: list[int],
        window_ms: int,
        fn: str,
    ) -> dict[int, Rows]:
        """Entries for ``fn`` at ``times`` per series; call inside a read transaction."""
        lo, hi = times[0] - window_ms, times[-1]
        tiling = None
        if fn != "raw" and (len(times) == 1 or times[1] - times[0] == window_ms):
            tiling = (times[0], window_ms)
        _, maintainer = self._open()
        watermarks = dict(zip(("medium", "low"), maintainer.load(db), strict=True))
        return read_rows(
            db,
            maintainer.parts,
            watermarks,
            sids,
            level,
            lo,
            hi,
            columns=COLUMNS[fn],
            stale_ms=self._stale_ms,
            tiling=tiling,
        )

    # --- inspection ------------------------------------------------------------------------

    def stats(self) -> HistoryStats:
        """Sizes, row counts per tier, watermarks and dropped-sample counts."""
        with self._lock:
            db, maintainer = self._open()
            with db.read():
                page_size = int(db.scalar("PRAGMA page_size"))
                pages = int(db.scalar("PRAGMA page_count"))
                free = int(db.scalar("PRAGMA freelist_count"))
                rows = {"head": int(db.scalar(sql.count_rows("samples_head")))}
                tier_of: dict[str, str] = {"samples_head": "head", "series": "series"}
                for tier, part in maintainer.parts.items():
                    tables = part.tables(db)
                    rows[tier] = sum(int(db.scalar(sql.count_rows(t))) for t in tables)
                    tier_of.update(dict.fromkeys(tables, tier))
                series = int(db.scalar(sql.SERIES_SHAPE))
                medium, low = maintainer.load(db)
                table_bytes = _bytes_by_tier(db, tier_of)
            wal = db.path.with_name(db.path.name + "-wal")
            wal_bytes = wal.stat().st_size if wal.exists() else 0
            return HistoryStats(
                disk_bytes=pages * page_size + wal_bytes,
                file_bytes=pages * page_size,
                wal_bytes=wal_bytes,
                free_bytes=free * page_size,
                series=series,
                rows=rows,
                table_bytes=table_bytes,
                watermarks={
                    "medium": None if medium is None else medium / 1000,
                    "low": None if low is None else low / 1000,
                },
                dropped=dict(self._dropped),
            )


def _bytes_by_tier(db: Database, tier_of: dict[str, str]) -> dict[str, int] | None:
    """Bytes of each tier's tables (indexes included), the head, the series map and
    the rest; None when SQLite lacks ``dbstat``."""
    try:
        owners: dict[str, Any] = dict(db.execute(sql.TABLE_OF_INDEX).fetchall())
        sizes = db.execute(sql.TABLE_BYTES).fetchall()
    except StoreError:
        return None
    out = dict.fromkeys(("head", *TIERS, "series", "other"), 0)
    for name, size in sizes:
        table = str(owners.get(name, name))
        key = tier_of.get(table, "other")
        out[key] += int(size)
    return out
