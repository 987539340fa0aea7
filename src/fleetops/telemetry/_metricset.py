"""Metrics that many processes record and one process exposes.

Each worker records into its own :class:`MetricSet` and writes a JSON snapshot to
the store every few seconds; the control plane merges the snapshots of all workers
(counters and histograms add up; gauges combine as their definition says) and
exposes the result on ``/metrics`` and to the history store. A snapshot holds
cumulative values, so a merge never double-counts and a dead worker's work still
counts after it is gone.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._catalog import BY_NAME, MetricDef

Labels = tuple[str, ...]


class HistogramSeries:
    __slots__ = ("counts", "sum", "count", "bounds")

    def __init__(self, buckets: int, bounds: tuple[float, ...] = ()) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self.bounds = bounds

    def observe(self, value: float) -> None:
        """Count one observation (of a series from :meth:`MetricSet.histogram_series`)."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class CounterSeries:
    """One series of a counter, to add to directly (see :meth:`MetricSet.counter`)."""

    __slots__ = ("_values", "_key")

    def __init__(self, values: dict[Labels, float], key: Labels) -> None:
        self._values = values
        self._key = key

    def inc(self, by: float = 1) -> None:
        self._values[self._key] = self._values.get(self._key, 0.0) + by


class _NullCounterSeries(CounterSeries):
    def inc(self, by: float = 1) -> None:
        pass


class _NullHistogramSeries(HistogramSeries):
    def observe(self, value: float) -> None:
        pass


class MetricSet:
    """Counters, gauges and histograms by label values; snapshot, merge, expose."""

    def __init__(self) -> None:
        self._counters: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, HistogramSeries]] = {}

    @staticmethod
    def _key(metric: MetricDef, labels: Mapping[str, object] | Labels) -> Labels:
        if isinstance(labels, tuple):
            if len(labels) != len(metric.labels):
                raise ValueError(f"{metric.name} takes labels {metric.labels}, got {labels}")
            return tuple(map(str, labels))  # per task, several times: the quick way
        return tuple(str(labels.get(name, "")) for name in metric.labels)

    def inc(self, metric: MetricDef, labels: Mapping[str, object] | Labels, by: float = 1) -> None:
        self.counter(metric, labels).inc(by)

    def counter(self, metric: MetricDef, labels: Mapping[str, object] | Labels) -> CounterSeries:
        """One series of a counter, to add to directly (keep it: a hot path saves
        looking the labels up every time)."""
        series = self._counters.get(metric.name)
        if series is None:
            series = self._counters[metric.name] = {}
        return CounterSeries(series, self._key(metric, labels))

    def set(self, metric: MetricDef, labels: Mapping[str, object] | Labels, value: float) -> None:
        self._gauges.setdefault(metric.name, {})[self._key(metric, labels)] = float(value)

    def forget(self, metric: MetricDef, labels: Mapping[str, object] | Labels) -> None:
        """Drop one series of a gauge (e.g. the phi of a worker that is gone)."""
        self._gauges.get(metric.name, {}).pop(self._key(metric, labels), None)

    def observe(
        self, metric: MetricDef, labels: Mapping[str, object] | Labels, value: float
    ) -> None:
        self.histogram_series(metric, labels).observe(value)

    def histogram_series(
        self, metric: MetricDef, labels: Mapping[str, object] | Labels
    ) -> HistogramSeries:
        """One series of a histogram, to observe into directly (keep it: a hot path
        saves looking the labels up every time)."""
        series = self._histograms.get(metric.name)
        if series is None:
            series = self._histograms[metric.name] = {}
        key = self._key(metric, labels)
        hist = series.get(key)
        if hist is None:
            hist = series[key] = HistogramSeries(len(metric.buckets), metric.buckets)
        return hist

    # --- snapshots and merging -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy of every value."""
        return {
            "c": {n: [[list(k), v] for k, v in s.items()] for n, s in self._counters.items()},
            "g": {n: [[list(k), v] for k, v in s.items()] for n, s in self._gauges.items()},
            "h": {
                n: [[list(k), h.counts, h.sum, h.count] for k, h in s.items()]
                for n, s in self._histograms.items()
            },
        }

    @classmethod
    def merge(
        cls, snapshots: Iterable[Mapping[str, Any]], *, gauges_from: Iterable[bool] | None = None
    ) -> MetricSet:
        """Combine snapshots: counters and histograms add up, gauges as defined.

        ``gauges_from`` says, per snapshot, whether its gauges still count (a dead
        worker's counters do; its gauges, such as its utilisation, do not).
        """
        merged = cls()
        gauge_parts: dict[str, dict[Labels, list[float]]] = {}
        flags = list(gauges_from) if gauges_from is not None else None
        for index, snap in enumerate(snapshots):
            for name, rows in snap.get("c", {}).items():
                series = merged._counters.setdefault(name, {})
                for labels, value in rows:
                    key = tuple(labels)
                    series[key] = series.get(key, 0.0) + value
            for name, rows in snap.get("h", {}).items():
                hseries = merged._histograms.setdefault(name, {})
                for labels, counts, total, count in rows:
                    key = tuple(labels)
                    hist = hseries.get(key)
                    if hist is None:
                        hist = hseries[key] = HistogramSeries(len(counts) - 1)
                    if len(hist.counts) != len(counts):
                        continue  # bucket layout changed between versions: skip
                    hist.counts = [a + b for a, b in zip(hist.counts, counts, strict=True)]
                    hist.sum += total
                    hist.count += count
            if flags is None or flags[index]:
                for name, rows in snap.get("g", {}).items():
                    parts = gauge_parts.setdefault(name, {})
                    for labels, value in rows:
                        parts.setdefault(tuple(labels), []).append(value)
        for name, parts in gauge_parts.items():
            metric = BY_NAME.get(name)
            how = metric.merge if metric else "sum"
            merged._gauges[name] = {k: _combine(how, v) for k, v in parts.items()}
        return merged

    def update(self, other: MetricSet) -> None:
        """Fold ``other``'s values in (it owns different series, e.g. the supervisor's)."""
        for name, series in other._counters.items():
            mine = self._counters.setdefault(name, {})
            for key, value in series.items():
                mine[key] = mine.get(key, 0.0) + value
        for name, gseries in other._gauges.items():
            self._gauges.setdefault(name, {}).update(gseries)
        for name, hseries in other._histograms.items():
            self._histograms.setdefault(name, {}).update(hseries)

    # --- reading -------------------------------------------------------------------------

    def value(self, metric: MetricDef, labels: Mapping[str, object] | Labels) -> float | None:
        key = self._key(metric, labels)
        table = self._gauges if metric.kind == "gauge" else self._counters
        return table.get(metric.name, {}).get(key)

    def histogram(
        self, metric: MetricDef, labels: Mapping[str, object] | Labels
    ) -> tuple[list[int], float, int] | None:
        hist = self._histograms.get(metric.name, {}).get(self._key(metric, labels))
        return None if hist is None else (list(hist.counts), hist.sum, hist.count)

    def names(self) -> frozenset[str]:
        return frozenset(self._counters) | frozenset(self._gauges) | frozenset(self._histograms)

    def families(self) -> Iterator[Metric]:
        """prometheus_client metric families, for a custom collector."""
        for name, series in sorted(self._counters.items()):
            metric = BY_NAME.get(name)
            labels = list(metric.labels) if metric else []
            base = name[: -len("_total")] if name.endswith("_total") else name
            family = CounterMetricFamily(base, metric.help if metric else name, labels=labels)
            for key, value in series.items():
                family.add_metric(list(key), value)
            yield family
        for name, series in sorted(self._gauges.items()):
            metric = BY_NAME.get(name)
            family_g = GaugeMetricFamily(
                name, metric.help if metric else name, labels=list(metric.labels) if metric else []
            )
            for key, value in series.items():
                family_g.add_metric(list(key), value)
            yield family_g
        for name, hseries in sorted(self._histograms.items()):
            metric = BY_NAME[name]
            family_h = HistogramMetricFamily(name, metric.help, labels=list(metric.labels))
            for key, hist in hseries.items():
                cumulative, buckets = 0, []
                for bound, count in zip([*metric.buckets, math.inf], hist.counts, strict=True):
                    cumulative += count
                    buckets.append((_le(bound), cumulative))
                family_h.add_metric(list(key), buckets, hist.sum)
            yield family_h

    def exposition(self) -> bytes:
        """The Prometheus text exposition of every value."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families(self))
        return generate_latest(registry)

    def samples(self) -> Iterator[tuple[str, dict[str, str], float]]:
        """Every value as a Prometheus-style sample (histograms as _bucket/_sum/_count)."""
        for name, series in self._counters.items():
            metric = BY_NAME.get(name)
            for key, value in series.items():
                yield name, _labels(metric, key), value
        for name, gseries in self._gauges.items():
            metric = BY_NAME.get(name)
            for key, value in gseries.items():
                yield name, _labels(metric, key), value
        for name, hseries in self._histograms.items():
            metric = BY_NAME[name]
            for key, hist in hseries.items():
                labels = _labels(metric, key)
                cumulative = 0
                for bound, count in zip([*metric.buckets, math.inf], hist.counts, strict=True):
                    cumulative += count
                    yield f"{name}_bucket", {**labels, "le": _le(bound)}, float(cumulative)
                yield f"{name}_sum", labels, hist.sum
                yield f"{name}_count", labels, float(hist.count)


class _Families(Collector):
    def __init__(self, metrics: MetricSet) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics.families()


class NullMetricSet(MetricSet):
    """Records nothing: what a worker uses with telemetry turned off."""

    def inc(self, metric: MetricDef, labels: Mapping[str, object] | Labels, by: float = 1) -> None:
        pass

    def set(self, metric: MetricDef, labels: Mapping[str, object] | Labels, value: float) -> None:
        pass

    def observe(
        self, metric: MetricDef, labels: Mapping[str, object] | Labels, value: float
    ) -> None:
        pass

    def histogram_series(
        self, metric: MetricDef, labels: Mapping[str, object] | Labels
    ) -> HistogramSeries:
        return _NullHistogramSeries(0)

    def counter(self, metric: MetricDef, labels: Mapping[str, object] | Labels) -> CounterSeries:
        return _NullCounterSeries({}, ())


def _labels(metric: MetricDef | None, key: Labels) -> dict[str, str]:
    names = metric.labels if metric else tuple(f"l{i}" for i in range(len(key)))
    return dict(zip(names, key, strict=True))


def _le(bound: float) -> str:
    if math.isinf(bound):
        return "+Inf"
    return repr(float(bound))


def _combine(how: str, values: list[float]) -> float:
    if how == "avg":
        return sum(values) / len(values)
    if how == "max":
        return max(values)
    if how == "last":
        return values[-1]
    return sum(values)
