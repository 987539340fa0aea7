"""Range-query evaluation over the rows of one or more tiers, in pure Python.

Every tier is read into the same shape, :class:`Rows`: one entry per raw sample or per
rollup bucket, each with a count, sum, min, max, last value and counter increase (a
raw sample is a bucket of one). A query point at time ``t`` with window ``w`` combines
the entries whose timestamp falls in ``(t - w, t]``, like a PromQL range ``[w]``
evaluated at ``t``; since a rollup entry is stamped with the end of its bucket, windows
that are whole buckets give the same answer from raw samples and from rollups.

``increase`` sums the per-sample deltas (the counter's rise since the previous
sample, or its whole value after a reset), with no extrapolation to the window's
edges: for an integer counter it is an integer, and the increases of adjacent windows
add up exactly (VictoriaMetrics' ``increase`` makes the same choice). ``rate`` is that
increase divided by the window.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

Value = float | None


#: The entry columns each function reads; only those are fetched.
COLUMNS = {
    "raw": ("last",),
    "avg": ("count", "sum"),
    "min": ("min",),
    "max": ("max",),
    "sum": ("sum",),
    "count": ("count",),
    "last": ("last",),
    "rate": ("inc",),
    "increase": ("inc",),
}


@dataclass(slots=True)
class Rows:
    """The entries of one series, oldest first: timestamps and some columns of
    ``count``, ``sum``, ``min``, ``max``, ``last`` and ``inc``."""

    columns: tuple[str, ...]
    ts: list[int] = field(default_factory=list)
    data: dict[str, list[float]] = field(default_factory=dict)
    tier: int = 0
    """Index in ``TIERS`` of the coarsest tier that contributed entries."""

    def __post_init__(self) -> None:
        self.data = {name: [] for name in self.columns}

    def add_rollups(self, rows: Sequence[Sequence[float]], tier: int) -> None:
        """Append rollup rows ``(series_id, ts, *columns)``."""
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        self.ts.extend(columns[1])
        for name, column in zip(self.columns, columns[2:], strict=True):
            self.data[name].extend(column)
        self.tier = max(self.tier, tier)

    def add_samples(
        self, ts: Sequence[int], values: Sequence[float], after: int, stale_ms: int
    ) -> None:
        """Append raw samples newer than ``after``; older ones only seed the first delta."""
        start = bisect_right(ts, after)
        kept = values[start:]
        self.ts.extend(ts[start:])
        for name, column in self.data.items():
            if name == "count":
                column.extend([1.0] * len(kept))
            elif name == "inc":
                column.extend(increments(ts, values, stale_ms)[start:])
            else:
                column.extend(kept)


def increments(ts: Sequence[int], values: Sequence[float], stale_ms: int) -> list[float]:
    """Each sample's counter delta from the previous one (see the module docstring)."""
    if not values:
        return []
    deltas = [
        (v - u if v >= u else v) if t - s <= stale_ms else 0.0
        for s, t, u, v in zip(ts, ts[1:], values, values[1:], strict=False)
    ]
    return [0.0, *deltas]


def evaluate(rows: Rows, fn: str, times: Sequence[int], window_ms: int) -> list[Value]:
    """``fn`` over the window ending at each of ``times``; None where it has no entries."""
    out: list[Value] = []
    ts = rows.ts
    column = rows.data[COLUMNS[fn][-1]]
    counts = rows.data.get("count", column)
    seconds = window_ms / 1000.0
    lo = 0
    for t in times:
        i = bisect_right(ts, t - window_ms, lo)
        j = bisect_right(ts, t, i)
        lo = i
        if i == j:
            out.append(None)
        elif fn == "avg":
            out.append(math.fsum(column[i:j]) / math.fsum(counts[i:j]))
        elif fn == "max":
            out.append(max(column[i:j]))
        elif fn == "min":
            out.append(min(column[i:j]))
        elif fn in ("sum", "count", "increase"):
            out.append(math.fsum(column[i:j]))
        elif fn == "last":
            out.append(column[j - 1])
        elif fn == "rate":
            out.append(math.fsum(column[i:j]) / seconds)
        else:  # pragma: no cover - the store validates fn
            raise ValueError(fn)
    return out


def raw_points(rows: Rows, start_ms: int, end_ms: int) -> list[tuple[float, float]]:
    """The stored entries in ``[start, end]``: samples, or the last value of each bucket."""
    i = bisect_right(rows.ts, start_ms - 1)
    j = bisect_right(rows.ts, end_ms)
    last = rows.data["last"]
    return [(t / 1000.0, v) for t, v in zip(rows.ts[i:j], last[i:j], strict=True)]


def aggregate(columns: Sequence[Sequence[Value]], how: str) -> list[Value]:
    """Combine series step by step with ``sum``, ``avg``, ``min``, ``max`` or ``count``."""
    out: list[Value] = []
    for values in zip(*columns, strict=True):
        present = [v for v in values if v is not None]
        if not present:
            out.append(None)
        elif how == "sum":
            out.append(math.fsum(present))
        elif how == "avg":
            out.append(math.fsum(present) / len(present))
        elif how == "min":
            out.append(min(present))
        elif how == "max":
            out.append(max(present))
        elif how == "count":
            out.append(float(len(present)))
        else:  # pragma: no cover - the store validates how
            raise ValueError(how)
    return out


def points(times: Sequence[int], values: Sequence[Value]) -> list[tuple[float, float]]:
    return [(t / 1000.0, v) for t, v in zip(times, values, strict=True) if v is not None]


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> Value:
    """The ``q`` quantile of a cumulative histogram, as PromQL's ``histogram_quantile``.

    ``buckets`` are ``(upper bound, cumulative count)`` pairs in any order. The answer
    interpolates linearly inside the bucket holding the rank; the lowest bucket starts
    at 0 (unless its bound is negative); a rank in the ``+Inf`` bucket answers the
    largest finite bound. None when there is no ``+Inf`` bucket or no observation.
    """
    ordered = sorted(buckets)
    if len(ordered) < 2 or not math.isinf(ordered[-1][0]):
        return None
    bounds = [b for b, _ in ordered]
    counts: list[float] = []
    for _, c in ordered:  # counts can dip when series reset at different times
        counts.append(max(c, counts[-1]) if counts else c)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(ordered) - 1:
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], counts[b]
    if b > 0:
        start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    if count <= 0:
        return end
    return start + (end - start) * (rank / count)
