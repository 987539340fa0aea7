"""``fleetops bench telemetry``: what metrics and traces cost, measured in one run.

- ``throughput_off_tps`` / ``throughput_on_tps``: the queue benchmark's throughput
  phase with the workers' telemetry off and on, alternated (off, on, off, on …), the
  median of the rounds. Rounds are long enough (30,000 tasks: over a second at
  20,000 tasks/s) that the workers' telemetry flushes fall inside them.
- ``overhead_ratio``: the median over rounds of 1 − on / off, each round's pair run
  back to back so that drift on a noisy machine hits both alike (target: at most
  0.10); ``overhead_ratios`` lists them.
- ``scrape_ms_1000_series``: merging four workers' snapshots holding 1,000 series and
  rendering the Prometheus exposition, the median of 25 scrapes (target: ≤ 100 ms).
- ``history_ingest_samples_per_s``: the metric history's ingest rate
  (target: ≥ 50,000 samples/s).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..telemetry import MetricSet, catalog
from ._queue import QueueBenchConfig, bench_queue


@dataclass(frozen=True, slots=True)
class TelemetryBenchResult:
    throughput_off_tps: float
    throughput_on_tps: float
    overhead_ratio: float
    #: 1 − on / off of each round (off and on run back to back)
    overhead_ratios: list[float]
    scrape_ms_1000_series: float
    history_ingest_samples_per_s: float | None
    rounds: int
    tasks_per_round: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _snapshot(worker: int, series: int) -> dict[str, Any]:
    m = MetricSet()
    counters, gauges = series // 2, series * 3 // 10
    histograms = series - counters - gauges
    for i in range(counters):
        m.inc(catalog.TASKS_FINISHED, (f"c{i % 10}", f"agent{i}", "succeeded"), worker + i)
    for i in range(gauges):
        m.set(catalog.AGENT_UTILIZATION, (f"c{i % 10}", f"w{worker}-{i}"), 0.5)
    for i in range(histograms):
        for v in (0.01, 0.2, 3.0):
            m.observe(catalog.TASK_DURATION, (f"c{i % 10}", f"agent{i}"), v)
    return json.loads(json.dumps(m.snapshot()))  # type: ignore[no-any-return]


def measure_scrape_ms(series: int = 1000, workers: int = 4, repeats: int = 25) -> float:
    """Median milliseconds to merge ``workers`` snapshots and render the exposition."""
    snapshots = [_snapshot(w, series // workers) for w in range(workers)]
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        MetricSet.merge(snapshots).exposition()
        timings.append((time.perf_counter() - began) * 1000)
    return round(statistics.median(timings), 3)


async def bench_telemetry(
    *,
    tasks: int = 30000,
    rounds: int = 5,
    work: str = "sleep:10ms",
    inflight: int = 1000,
    progress: Callable[[str, int, int], None] | None = None,
) -> TelemetryBenchResult:
    runs: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for enabled in (False, True):
            config = QueueBenchConfig(
                tasks=tasks,
                inflight=inflight,
                work=work,
                durability="normal",
                telemetry=enabled,
                measure_overhead=False,
            )
            result = await bench_queue(config, progress=progress)
            runs[enabled].append(result.throughput_tps)
    # each round's pair ran back to back: its ratio is free of the machine's drift
    ratios = [1 - on / off for off, on in zip(runs[False], runs[True], strict=True) if off]
    ingest: float | None
    try:
        from ._history import bench_history_ingest

        ingest = float(bench_history_ingest()["history_ingest_samples_per_s"])
    except ImportError:
        ingest = None
    return TelemetryBenchResult(
        throughput_off_tps=round(statistics.median(runs[False]), 1),
        throughput_on_tps=round(statistics.median(runs[True]), 1),
        overhead_ratio=round(statistics.median(ratios), 4) if ratios else 0.0,
        overhead_ratios=[round(r, 4) for r in ratios],
        scrape_ms_1000_series=measure_scrape_ms(),
        history_ingest_samples_per_s=ingest,
        rounds=rounds,
        tasks_per_round=tasks,
    )
