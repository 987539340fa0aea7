"""Merging metric snapshots from many workers into the fleet's metrics."""

from __future__ import annotations

import json

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import Collector

from fleetops.telemetry import MetricSet, catalog
from fleetops.telemetry._metricset import NullMetricSet


def _worker(tasks: int, busy: float, steps: list[int], worker: str) -> dict[str, object]:
    m = MetricSet()
    m.inc(catalog.TASKS_FINISHED, ("c", "a", "succeeded"), tasks)
    m.set(catalog.AGENT_UTILIZATION, ("c", worker), busy)
    m.set(catalog.CONSENSUS_SUCCESS_RATE, ("c",), busy)
    for s in steps:
        m.observe(catalog.REASONING_CHAIN_LENGTH, ("c", "a"), s)
    # a snapshot goes through JSON on its way through the store
    snap: dict[str, object] = json.loads(json.dumps(m.snapshot()))
    return snap


def test_counters_and_histograms_add_up_gauges_combine_as_defined() -> None:
    merged = MetricSet.merge([_worker(3, 0.5, [2, 3], "w1"), _worker(4, 1.0, [8], "w2")])
    assert merged.value(catalog.TASKS_FINISHED, ("c", "a", "succeeded")) == 7
    counts, total, count = merged.histogram(catalog.REASONING_CHAIN_LENGTH, ("c", "a")) or (
        [],
        0,
        0,
    )
    assert (total, count) == (13, 3)
    buckets = dict(zip(catalog.REASONING_CHAIN_LENGTH.buckets, counts, strict=False))
    assert buckets[2] == 1 and buckets[3] == 1 and buckets[8] == 1
    # utilisation is per worker; consensus rate is averaged over workers
    assert merged.value(catalog.AGENT_UTILIZATION, ("c", "w1")) == 0.5
    assert merged.value(catalog.AGENT_UTILIZATION, ("c", "w2")) == 1.0
    assert merged.value(catalog.CONSENSUS_SUCCESS_RATE, ("c",)) == pytest.approx(0.75)


def test_a_dead_workers_counters_count_but_its_gauges_do_not() -> None:
    merged = MetricSet.merge(
        [_worker(3, 0.5, [], "alive"), _worker(10, 0.9, [], "dead")],
        gauges_from=[True, False],
    )
    assert merged.value(catalog.TASKS_FINISHED, ("c", "a", "succeeded")) == 13
    assert merged.value(catalog.AGENT_UTILIZATION, ("c", "dead")) is None
    assert merged.value(catalog.AGENT_UTILIZATION, ("c", "alive")) == 0.5


def test_prometheus_exposition_is_cumulative_and_labelled() -> None:
    m = MetricSet()
    for value in (0.2, 3, 700):
        m.observe(catalog.MESSAGE_DELIVERY_LATENCY, ("intake", "research"), value)
    m.inc(catalog.TASKS_FINISHED, ("c", "a", "failed"))

    class One(Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            yield from m.families()

    registry = CollectorRegistry()
    registry.register(One())
    text = generate_latest(registry).decode()
    labels = 'source_cluster="intake",target_cluster="research"'
    assert f'message_delivery_latency_bucket{{le="1.0",{labels}}} 1.0' in text
    assert f'message_delivery_latency_bucket{{le="5.0",{labels}}} 2.0' in text
    assert f'message_delivery_latency_bucket{{le="+Inf",{labels}}} 3.0' in text
    assert f"message_delivery_latency_count{{{labels}}} 3.0" in text
    assert 'fleetops_task_attempts_total{agent="a",cluster="c",outcome="failed"} 1.0' in text


def test_labels_must_match_the_definition() -> None:
    with pytest.raises(ValueError, match="takes labels"):
        MetricSet().inc(catalog.TASKS_FINISHED, ("only-one",))


def test_a_kept_counter_series_adds_to_the_same_series_as_inc() -> None:
    m = MetricSet()
    series = m.counter(catalog.TASKS_FINISHED, ("c", "a", "succeeded"))
    name = catalog.TASKS_FINISHED.name
    assert m.snapshot()["c"].get(name, []) == []  # kept, not yet counted: no series
    series.inc()
    series.inc(2)
    m.inc(catalog.TASKS_FINISHED, {"cluster": "c", "agent": "a", "outcome": "succeeded"})
    assert m.snapshot()["c"] == {name: [[["c", "a", "succeeded"], 4.0]]}
    with pytest.raises(ValueError, match="takes labels"):
        m.counter(catalog.TASKS_FINISHED, ("c", "a"))
    off = NullMetricSet()
    off.counter(catalog.TASKS_FINISHED, ("c", "a", "succeeded")).inc()
    assert off.snapshot()["c"].get(name, []) == []
