"""Small statistics helpers shared by chaos runs and benchmarks."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by the nearest-rank method; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def seconds(value: float | None) -> float | None:
    """A time in seconds for a report: rounded to 0.1 ms (None stays None)."""
    return None if value is None else round(value, 4)
