"""Rolling raw samples up into medium-tier buckets.

Done in Python over the head's rows in their stored (time, series) order: no sort is
needed, and the last sample of every series is carried from one call to the next so
that a counter's first delta in a new bucket is measured from the sample before it
(the state is rebuilt from the head after a restart). In SQL the same computation
needs a window function partitioned by series, whose sort costs twice as much.
"""

from __future__ import annotations

from collections.abc import Iterable

#: ``(series_id, bucket end, count, sum, min, max, last, inc)``
RollupRow = list[float]


def roll_up(
    samples: Iterable[tuple[int, int, float]],
    after: int,
    step_ms: int,
    stale_ms: int,
    previous: dict[int, tuple[int, float]],
) -> list[RollupRow]:
    """Bucket rows for ``(ts, series_id, value)`` samples in time order.

    Samples at or before ``after`` only update ``previous`` (each series' last sample,
    updated in place); the others are summed into buckets of ``step_ms`` ending at
    multiples of it. A sample's counter delta is its rise over the previous sample, its
    whole value after a reset, and nothing when the previous sample is older than
    ``stale_ms``.
    """
    buckets: dict[tuple[int, int], RollupRow] = {}
    for ts, sid, value in samples:
        prev = previous.get(sid)
        previous[sid] = (ts, value)
        if ts <= after:
            continue
        if prev is None or ts - prev[0] > stale_ms:
            delta = 0.0
        else:
            delta = value - prev[1]
            if delta < 0:
                delta = value
        end = -(-ts // step_ms) * step_ms
        row = buckets.get((sid, end))
        if row is None:
            buckets[(sid, end)] = [sid, end, 1, value, value, value, value, delta]
        else:
            row[2] += 1
            row[3] += value
            if value < row[4]:
                row[4] = value
            if value > row[5]:
                row[5] = value
            row[6] = value
            row[7] += delta
    return list(buckets.values())
