"""``fleetops bench telemetry``: how fast the metric history takes samples.

A synthetic fleet of ``series`` series (gauges, counters and histogram buckets, the
shapes the fleet metrics have) is scraped every ``interval`` seconds of virtual time
until ``samples`` samples have been written. Each scrape is one :meth:`ingest` call
holding one sample per series, which is how the control plane writes; between scrapes
:meth:`maintain` downsamples, compacts and expires as it would in production.

Two rates come out: ``history_ingest_samples_per_s`` counts the time spent in
``ingest`` and ``maintain`` together (what it costs to keep up), and
``history_ingest_only_samples_per_s`` the time in ``ingest`` alone. Building the
samples is not timed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._clock import VirtualClock
from .._exceptions import ConfigError
from ..telemetry.history import HistoryStore, Sample

#: Virtual start time: a whole day, so rollup buckets line up with the scrapes.
_START = 1_700_006_400.0
_LE = ("0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "+Inf")


@dataclass(frozen=True, slots=True)
class HistoryBenchResult:
    history_ingest_samples_per_s: float
    history_ingest_only_samples_per_s: float
    samples: int
    series: int
    scrapes: int
    interval_s: float
    ingest_s: float
    maintain_s: float
    disk_bytes: int
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _fleet(series: int) -> list[tuple[str, dict[str, str], str]]:
    """``series`` (metric, labels, kind) triples shaped like the fleet metrics."""
    out: list[tuple[str, dict[str, str], str]] = []
    worker = 0
    while len(out) < series:
        labels = {"cluster": f"c{worker % 4}", "worker": f"w{worker}"}
        out.append(("agent_utilization", labels, "gauge"))
        out.append(("consensus_success_rate", labels, "gauge"))
        out.append(("tasks_completed_total", labels, "counter"))
        for le in _LE:
            out.append(("message_delivery_latency_bucket", {**labels, "le": le}, "counter"))
        out.append(("message_delivery_latency_sum", labels, "counter"))
        out.append(("message_delivery_latency_count", labels, "counter"))
        worker += 1
    return out[:series]


def _scrape(fleet: list[tuple[str, dict[str, str], str]], k: int, ts: float) -> list[Sample]:
    samples = []
    for i, (metric, labels, kind) in enumerate(fleet):
        if kind == "gauge":
            value = ((i * 7919 + k * 104729) % 1000) / 1000.0
        else:
            value = float(k * (1 + i % 5))
        samples.append(Sample(metric, labels, value, ts))
    return samples


def bench_history_ingest(
    samples: int = 1_000_000,
    series: int = 1_000,
    interval: float = 10.0,
    *,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Write ``samples`` samples for ``series`` series, one scrape per ``interval``.

    ``progress("ingest", written, total)`` is called every hundred scrapes and at the end.
    """
    if samples < 1:
        raise ConfigError("--samples", samples, "use 1 or more")
    if series < 1:
        raise ConfigError("--series", series, "use 1 or more")
    if interval <= 0:
        raise ConfigError("--interval", interval, "use a number of seconds greater than 0")
    fleet = _fleet(series)
    scrapes = max(1, samples // series)
    clock = VirtualClock(start=_START)
    started = time.perf_counter()
    ingest_s = maintain_s = 0.0
    written = 0
    with tempfile.TemporaryDirectory(prefix="fleetops-bench-") as tmp:
        with HistoryStore(Path(tmp) / "history.db", clock=clock) as history:
            for k in range(scrapes):
                batch = _scrape(fleet, k, clock.now())
                t0 = time.perf_counter()
                written += history.ingest(batch)
                t1 = time.perf_counter()
                history.maintain()
                t2 = time.perf_counter()
                ingest_s += t1 - t0
                maintain_s += t2 - t1
                clock.advance(interval)
                if progress is not None and (k % 100 == 99 or k == scrapes - 1):
                    progress("ingest", written, scrapes * series)
            disk = history.stats().disk_bytes
    result = HistoryBenchResult(
        history_ingest_samples_per_s=round(written / (ingest_s + maintain_s), 1),
        history_ingest_only_samples_per_s=round(written / ingest_s, 1),
        samples=written,
        series=series,
        scrapes=scrapes,
        interval_s=interval,
        ingest_s=round(ingest_s, 3),
        maintain_s=round(maintain_s, 3),
        disk_bytes=disk,
        elapsed_s=round(time.perf_counter() - started, 2),
    )
    return result.as_dict()
