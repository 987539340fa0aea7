"""The values that go into and come out of the metric history.

Answers are small dataclasses with ``as_dict()`` so the HTTP API and the dashboard can
encode them as JSON directly. Timestamps are seconds since the Unix epoch everywhere
in the public API; the store keeps integer milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

#: Query functions of :meth:`HistoryStore.query_range`, each over a window per step.
FUNCTIONS = ("raw", "avg", "min", "max", "sum", "count", "last", "rate", "increase")
#: How series are combined across a ``by`` group.
AGGREGATIONS = ("sum", "avg", "min", "max", "count")
#: The aggregation used across a group when none is named.
DEFAULT_AGGREGATION = {
    "avg": "avg",
    "min": "min",
    "max": "max",
    "sum": "sum",
    "count": "sum",
    "last": "avg",
    "rate": "sum",
    "increase": "sum",
}


class Sample(NamedTuple):
    """One observation of one series.

    Counters and histograms are ingested the way Prometheus exposes them: cumulative
    series such as ``requests_total``, ``latency_bucket{le="0.5"}``, ``latency_sum``
    and ``latency_count``. ``ts`` is seconds since the epoch; ``None`` means now.
    """

    metric: str
    labels: Mapping[str, str]
    value: float
    ts: float | None = None


@dataclass(slots=True)
class Series:
    """One answer series: its labels and its ``(ts, value)`` points, oldest first.

    ``tier`` names the coarsest tier the points were computed from (the newest part of
    a range always comes from finer tiers that have not been rolled up yet).
    """

    metric: str
    labels: dict[str, str]
    points: list[tuple[float, float]] = field(default_factory=list)
    tier: str = "raw"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """A stored series: its metric name and labels."""

    metric: str
    labels: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DownsampleResult:
    """What one :meth:`HistoryStore.downsample` call did."""

    medium_rows: int = 0
    """Rows written to the medium tier."""
    low_rows: int = 0
    """Rows written to the low tier."""
    compacted: int = 0
    """Raw samples moved from the append-only head into the per-series table."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What one :meth:`HistoryStore.enforce_retention` call deleted."""

    raw: int = 0
    medium: int = 0
    low: int = 0
    series: int = 0
    """Series dropped because no tier holds any of their data any more."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class HistoryStats:
    """Size and progress of a history file."""

    disk_bytes: int
    """``file_bytes + wal_bytes``: what the history takes on disk."""
    file_bytes: int
    """``page_count × page_size`` of the database file."""
    wal_bytes: int
    """The write-ahead log, emptied into the file at each checkpoint."""
    free_bytes: int
    """Bytes of free pages inside the file, reused before the file grows."""
    series: int
    rows: dict[str, int]
    """Rows per table: ``head`` (recent raw samples), ``raw``, ``medium``, ``low``."""
    table_bytes: dict[str, int] | None
    """Bytes per table (tables and their indexes), when SQLite can tell."""
    watermarks: dict[str, float | None]
    """The end of the newest rolled-up bucket per rollup tier, seconds since the epoch."""
    dropped: dict[str, int]
    """Samples this process refused since it opened the file, by reason."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
