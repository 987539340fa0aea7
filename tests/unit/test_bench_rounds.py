"""A benchmark run in several rounds reports medians, sums and ranges over them."""

from __future__ import annotations

from dataclasses import replace

import pytest

from fleetops.bench._queue import QueueBenchResult, _sleep_parts, summarize_rounds
from fleetops.store import TaskRecord

ROUND = QueueBenchResult(
    throughput_tps=20000.0,
    overhead_p50_ms=2.0,
    overhead_p99_ms=9.0,
    durability="normal",
    tasks=20000,
    work="sleep:10ms",
    workers=2,
    inflight=1000,
    store="sqlite",
    overhead_rate_tps=10000.0,
    queue_wait_p50_ms=0.5,
    queue_wait_p99_ms=3.0,
    run_overhead_p50_ms=1.5,
    run_overhead_p99_ms=7.0,
    sleep_late_p50_ms=0.4,
    sleep_late_p99_ms=2.0,
    handler_start_p50_ms=0.6,
    handler_start_p99_ms=3.0,
    completion_p50_ms=0.3,
    completion_p99_ms=2.0,
    overhead_tasks=20000,
    pacing="closed",
    overhead_submits=10000,
    submit_ack_p50_ms=0.4,
    submit_ack_p99_ms=2.0,
    event_loop="uvloop",
    worker_failures=0,
    elapsed_s=4.0,
)


def test_rounds_report_the_median_of_each_number_and_the_range_of_the_main_ones() -> None:
    fsyncs = {"kernel": 0, "loop": 4, "thread": 1}
    rounds = [
        replace(ROUND, submitter_fsyncs=fsyncs),
        replace(ROUND, throughput_tps=30000.0, overhead_p50_ms=7.0, worker_failures=1),
        replace(
            ROUND,
            throughput_tps=25000.0,
            overhead_p50_ms=3.0,
            overhead_p99_ms=30.0,
            submitter_fsyncs={**fsyncs, "loop": 5, "thread": 2},
        ),
    ]
    report = summarize_rounds(rounds)
    assert report["rounds"] == 3
    assert report["throughput_tps"] == 25000.0
    assert report["overhead_p50_ms"] == 3.0  # not the mean (4.0): one slow round
    assert report["overhead_p99_ms"] == 9.0
    assert report["ranges"] == {
        "throughput_tps": [20000.0, 30000.0],
        "overhead_p50_ms": [2.0, 7.0],
        "overhead_p99_ms": [9.0, 30.0],
    }
    # failures, time and counts by kind add up; what describes the run is taken as it is
    assert report["worker_failures"] == 1
    assert report["submitter_fsyncs"] == {"kernel": 0, "loop": 9, "thread": 3}
    assert report["elapsed_s"] == 12.0
    assert (report["durability"], report["work"], report["event_loop"], report["pacing"]) == (
        "normal",
        "sleep:10ms",
        "uvloop",
        "closed",
    )


def test_a_number_missing_in_a_round_is_left_out_and_one_round_is_itself() -> None:
    no_overhead = replace(ROUND, overhead_p50_ms=None, sleep_late_p50_ms=None)
    report = summarize_rounds([no_overhead, replace(ROUND, overhead_p50_ms=4.0)])
    assert report["overhead_p50_ms"] == 4.0
    assert report["sleep_late_p50_ms"] == 0.4
    assert summarize_rounds([no_overhead])["overhead_p50_ms"] is None
    single = summarize_rounds([ROUND])
    assert {k: v for k, v in single.items() if k not in ("rounds", "ranges")} == ROUND.as_dict()
    with pytest.raises(ValueError):
        summarize_rounds([])


def _finished(task_id: int, times: tuple[float, float, float], result: str | None) -> TaskRecord:
    created, started, finished = times
    return TaskRecord(
        id=task_id,
        queue="c",
        agent="sleep",
        payload="{}",
        priority=0,
        state="succeeded",
        attempts=1,
        failures=0,
        redeliveries=0,
        epoch=1,
        lease_owner=None,
        lease_expires_at=None,
        run_after=created,
        created_at=created,
        started_at=started,
        finished_at=finished,
        result=result,
        error=None,
        dead_reason=None,
        idempotency_key=None,
        parent_id=None,
        deadline=None,
        max_attempts=1,
        max_redeliveries=1,
        headers="{}",
    )


def test_a_sleep_tasks_time_splits_into_parts_that_add_up_to_its_overhead() -> None:
    """claimed at 100.0, the handler began at 100.0006 and slept 10.4 ms of 10, its
    completion stamped at 100.0113: 0.6 ms to start, 0.4 late, 0.3 to complete."""
    record = _finished(1, (99.9995, 100.0, 100.0113), '{"began": 100.0006, "slept": 0.0104}')
    late, starts, completions = _sleep_parts([record], 0.01)
    assert [round(x, 6) for x in (*late, *starts, *completions)] == [0.4, 0.6, 0.3]
    wait = (record.started_at - record.created_at) * 1000  # type: ignore[operator]
    overhead = (record.finished_at - record.created_at - 0.01) * 1000  # type: ignore[operator]
    assert wait + starts[0] + late[0] + completions[0] == pytest.approx(overhead)
    # a task whose handler said nothing (an older agent, or none) is left out
    assert _sleep_parts([_finished(2, (1.0, 2.0, 3.0), None)], 0.01) == ([], [], [])
