"""The metric history on a temporary SQLite file, on virtual time.

Timestamps start at midnight UTC, so minute and hour buckets line up with the test's
own arithmetic.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from fleetops import Closed, ConfigError, VirtualClock
from fleetops.telemetry.history import (
    HistoryStore,
    RetentionPolicy,
    Sample,
    Series,
    SeriesInfo,
)

T0 = 1_699_920_000.0  # 2023-11-14 00:00:00 UTC
#: A small policy so retention can be exercised in a few simulated hours.
SMALL = RetentionPolicy(raw=600, medium=1800, low=7200, medium_step=60, low_step=300)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(start=T0)


@pytest.fixture
def store(tmp_path: Path, clock: VirtualClock) -> Iterator[HistoryStore]:
    with HistoryStore(tmp_path / "history.db", clock=clock) as history:
        yield history


def scrape(
    history: HistoryStore,
    clock: VirtualClock,
    values: dict[tuple[str, tuple[tuple[str, str], ...]], list[float]],
    interval: float = 10.0,
) -> None:
    """Ingest one sample per series every ``interval`` seconds, advancing the clock."""
    n = max(len(v) for v in values.values())
    for k in range(n):
        history.ingest(
            Sample(metric, dict(labels), series[k], clock.now())
            for (metric, labels), series in values.items()
            if k < len(series)
        )
        clock.advance(interval)


def only(answer: list[Series]) -> list[tuple[float, float]]:
    assert len(answer) == 1, answer
    return answer[0].points


# --- ingest and raw queries --------------------------------------------------------------------


def test_ingest_then_raw_range_query(store: HistoryStore) -> None:
    samples = [
        Sample("agent_utilization", {"cluster": "a", "worker": "w1"}, 0.25, T0 + 10),
        Sample("agent_utilization", {"worker": "w1", "cluster": "a"}, 0.5, T0 + 20),
        Sample("agent_utilization", {"cluster": "b", "worker": "w2"}, 0.75, T0 + 20),
        Sample("agent_utilization", {"cluster": "a", "worker": "w1"}, 1.0, T0 + 30),
    ]
    assert store.ingest(samples) == 4

    answer = store.query_range("agent_utilization", {"cluster": "a"}, T0, T0 + 25, 5, "raw")
    assert answer == [
        Series(
            "agent_utilization",
            {"cluster": "a", "worker": "w1"},
            [(T0 + 10, 0.25), (T0 + 20, 0.5)],
            "raw",
        )
    ]
    assert json.loads(json.dumps(answer[0].as_dict()))["points"] == [
        [T0 + 10, 0.25],
        [T0 + 20, 0.5],
    ]
    assert store.series("agent_utilization") == [
        SeriesInfo("agent_utilization", {"cluster": "a", "worker": "w1"}),
        SeriesInfo("agent_utilization", {"cluster": "b", "worker": "w2"}),
    ]
    assert store.series(matchers={"cluster": "b"}) == [
        SeriesInfo("agent_utilization", {"cluster": "b", "worker": "w2"})
    ]
    assert store.series("agent_utilization", {"cluster": "c"}) == []
    # An empty matcher value matches series without that label, as in PromQL.
    assert store.series("agent_utilization", {"missing": ""}) == store.series("agent_utilization")


def test_samples_without_a_timestamp_are_stamped_now(
    store: HistoryStore, clock: VirtualClock
) -> None:
    clock.advance(42)
    store.ingest([Sample("consensus_success_rate", {}, 0.9)])
    assert only(store.query_range("consensus_success_rate", None, T0, T0 + 60, 60, "raw")) == [
        (T0 + 42, 0.9)
    ]


def test_a_second_handle_on_the_file_sees_the_same_history(
    tmp_path: Path, clock: VirtualClock
) -> None:
    with HistoryStore(tmp_path / "h.db", clock=clock) as writer:
        writer.ingest([Sample("queue_depth", {"q": "x"}, 3.0, T0 + 1)])
        with HistoryStore(tmp_path / "h.db", clock=clock) as reader:
            assert only(reader.query_range("queue_depth", {}, T0, T0 + 10, 10, "max")) == [
                (T0 + 10, 3.0)
            ]
            writer.ingest([Sample("queue_depth", {"q": "y"}, 4.0, T0 + 2)])
            assert len(reader.series("queue_depth")) == 2


def test_late_future_and_nan_samples_are_dropped_and_counted(
    tmp_path: Path, clock: VirtualClock
) -> None:
    with HistoryStore(tmp_path / "h.db", clock=clock) as history:
        scrape(history, clock, {("g", ()): [1.0] * 13})  # T0 … T0+120
        history.downsample()  # rolls the buckets ending at T0 … T0+60
        stored = history.ingest(
            [
                Sample("g", {}, 5.0, T0 + 55),  # its minute is already rolled up
                Sample("g", {}, float("nan"), T0 + 125),
                Sample("g", {}, 5.0, T0 + 86400),  # a day ahead of the clock
                Sample("g", {}, 6.0, T0 + 125),
            ]
        )
        assert stored == 1
        assert history.stats().dropped == {"late": 1, "future": 1, "nan": 1}


# --- functions over steps ----------------------------------------------------------------------


def test_avg_max_min_sum_count_last_over_steps(store: HistoryStore, clock: VirtualClock) -> None:
    values = [float(v) for v in (3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8)]
    scrape(store, clock, {("g", (("k", "v"),)): values})  # at T0, T0+10, …, T0+110
    # Windows (T0, T0+60] and (T0+60, T0+120]: samples 1..6 and 7..11.
    first, second = values[1:7], values[7:]

    def ask(fn: str) -> list[tuple[float, float]]:
        return only(store.query_range("g", {"k": "v"}, T0 + 60, T0 + 120, 60, fn))

    assert ask("avg") == [(T0 + 60, sum(first) / 6), (T0 + 120, sum(second) / 5)]
    assert ask("max") == [(T0 + 60, 9.0), (T0 + 120, 8.0)]
    assert ask("min") == [(T0 + 60, 1.0), (T0 + 120, 3.0)]
    assert ask("sum") == [(T0 + 60, sum(first)), (T0 + 120, sum(second))]
    assert ask("count") == [(T0 + 60, 6.0), (T0 + 120, 5.0)]
    assert ask("last") == [(T0 + 60, 2.0), (T0 + 120, 8.0)]
    # A window wider than the step slides: each point looks back two minutes.
    wide = store.query_range("g", {}, T0 + 60, T0 + 120, 60, "max", window=120)
    assert only(wide) == [(T0 + 60, 9.0), (T0 + 120, 9.0)]
    # Steps with no samples are left out rather than reported as zero.
    assert only(store.query_range("g", {}, T0 + 60, T0 + 300, 60, "avg")) == ask("avg")


def test_rate_and_increase_across_a_counter_reset(store: HistoryStore, clock: VirtualClock) -> None:
    # The worker restarts after 30: its counter starts again from zero.
    counter = [0.0, 10.0, 20.0, 30.0, 5.0, 15.0, 25.0]  # T0 … T0+60
    scrape(store, clock, {("tasks_completed_total", (("worker", "w1"),)): counter})

    increase = store.query_range("tasks_completed_total", {}, T0 + 60, T0 + 60, 60, "increase")
    assert only(increase) == [(T0 + 60, 10 + 10 + 10 + 5 + 10 + 10)]
    rate = store.query_range("tasks_completed_total", {}, T0 + 60, T0 + 60, 60, "rate")
    assert only(rate) == [(T0 + 60, 55 / 60)]
    # Adjacent windows add up exactly: no extrapolation at the edges.
    halves = store.query_range("tasks_completed_total", {}, T0 + 30, T0 + 60, 30, "increase")
    assert only(halves) == [(T0 + 30, 30.0), (T0 + 60, 25.0)]


def test_group_by_combines_series_per_step(store: HistoryStore, clock: VirtualClock) -> None:
    scrape(
        store,
        clock,
        {
            ("requests_total", (("cluster", "a"), ("worker", "1"))): [0, 6, 12, 18, 24, 30, 36],
            ("requests_total", (("cluster", "a"), ("worker", "2"))): [0, 1, 2, 3, 4, 5, 6],
            ("requests_total", (("cluster", "b"), ("worker", "3"))): [
                0,
                60,
                120,
                180,
                240,
                300,
                360,
            ],
            ("load", (("cluster", "a"), ("worker", "1"))): [0.2] * 7,
            ("load", (("cluster", "a"), ("worker", "2"))): [0.6] * 7,
        },
    )
    rates = store.query_range("requests_total", {}, T0 + 60, T0 + 60, 60, "rate", by=["cluster"])
    assert [(s.labels, s.points) for s in rates] == [
        ({"cluster": "a"}, [(T0 + 60, (36 + 6) / 60)]),
        ({"cluster": "b"}, [(T0 + 60, 360 / 60)]),
    ]
    total = store.query_range("requests_total", {}, T0 + 60, T0 + 60, 60, "increase", by=[])
    assert [(s.labels, s.points) for s in total] == [({}, [(T0 + 60, 402.0)])]
    load = store.query_range("load", {}, T0 + 60, T0 + 60, 60, "avg", by=["cluster"])
    assert only(load) == [(T0 + 60, pytest.approx(0.4))]
    busiest = store.query_range("load", {}, T0 + 60, T0 + 60, 60, "avg", by=[], agg="max")
    assert only(busiest) == [(T0 + 60, 0.6)]


def test_histogram_quantile_matches_the_hand_computed_answer(
    store: HistoryStore, clock: VirtualClock
) -> None:
    # Over the minute: 10 observations ≤ 0.1 s, 20 more ≤ 0.5 s, 10 more ≤ 1 s, none above.
    cumulative = {"0.1": 10, "0.5": 30, "1": 40, "+Inf": 40}
    buckets = {
        ("latency_seconds_bucket", (("cluster", cluster), ("le", le))): [0.0, count * scale]
        for cluster, scale in (("a", 1.0), ("b", 3.0))
        for le, count in cumulative.items()
    }
    scrape(store, clock, buckets, interval=60)  # at T0 and T0+60

    def p(q: float, by: list[str] | None = None) -> list[Series]:
        return store.histogram_quantile(q, "latency_seconds", {}, T0 + 60, T0 + 60, 60, by=by)

    # rank 20 of 40 lies in (0.1, 0.5]: 10 of its 20 observations in → 0.1 + 0.4 × 10/20.
    assert [(s.labels, s.points) for s in p(0.5)] == [
        ({"cluster": "a"}, [(T0 + 60, pytest.approx(0.3))]),
        ({"cluster": "b"}, [(T0 + 60, pytest.approx(0.3))]),
    ]
    # rank 38 lies in (0.5, 1]: 8 of its 10 → 0.5 + 0.5 × 0.8.
    assert [s.points for s in p(0.95, by=[])] == [[(T0 + 60, pytest.approx(0.9))]]
    assert p(1.0, by=[])[0].points == [(T0 + 60, 1.0)]
    named_by_bucket = store.histogram_quantile(
        0.5, "latency_seconds_bucket", {"cluster": "a"}, T0 + 60, T0 + 60, 60
    )
    assert only(named_by_bucket) == [(T0 + 60, pytest.approx(0.3))]


def test_histogram_quantile_in_the_inf_bucket_answers_the_largest_finite_bound(
    store: HistoryStore, clock: VirtualClock
) -> None:
    scrape(
        store,
        clock,
        {
            ("h_bucket", (("le", "1"),)): [0.0, 1.0],
            ("h_bucket", (("le", "+Inf"),)): [0.0, 10.0],
        },
        interval=60,
    )
    answer = store.histogram_quantile(0.99, "h", None, T0 + 60, T0 + 120, 60)
    assert only(answer) == [(T0 + 60, 1.0)]  # the next minute saw nothing: left out


# --- downsampling ------------------------------------------------------------------------------


def test_downsampling_rolls_up_whole_minutes_once(store: HistoryStore, clock: VirtualClock) -> None:
    gauge = [float(k * 7 % 11) for k in range(13)]  # T0 … T0+120
    counter = [0.0, 4, 8, 12, 2, 6, 10, 14, 18, 22, 26, 30, 34]  # resets at T0+40
    scrape(store, clock, {("g", ()): gauge, ("c_total", ()): counter})

    # The buckets ending at T0, T0+60 and T0+120 are complete (T0+120 + grace ≤ now).
    assert store.downsample().medium_rows == 2 * 3
    assert store.downsample().medium_rows == 0  # incremental: nothing new, nothing redone

    def medium(fn: str, metric: str = "g") -> list[tuple[float, float]]:
        return only(store.query_range(metric, {}, T0 + 60, T0 + 120, 60, fn, tier="medium"))

    minute1, minute2 = gauge[1:7], gauge[7:13]
    assert medium("min") == [(T0 + 60, min(minute1)), (T0 + 120, min(minute2))]
    assert medium("max") == [(T0 + 60, max(minute1)), (T0 + 120, max(minute2))]
    assert medium("avg") == [(T0 + 60, sum(minute1) / 6), (T0 + 120, sum(minute2) / 6)]
    assert medium("last") == [(T0 + 60, gauge[6]), (T0 + 120, gauge[12])]
    # 4+4+4 then the reset (2) then 4+4; the next minute's first delta spans the boundary.
    assert medium("increase", "c_total") == [(T0 + 60, 22.0), (T0 + 120, 24.0)]
    assert store.query_range("g", {}, T0 + 60, T0 + 120, 60, "avg", tier="medium")[0].tier == (
        "medium"
    )

    scrape(store, clock, {("g", ()): [100.0] * 6})  # T0+130 … T0+180
    assert store.downsample().medium_rows == 1  # only the new minute ending at T0+180
    assert medium("avg") == [(T0 + 60, sum(minute1) / 6), (T0 + 120, sum(minute2) / 6)]
    later = store.query_range("g", {}, T0 + 180, T0 + 180, 60, "avg", tier="medium")
    assert only(later) == [(T0 + 180, 100.0)]


def test_downsampling_resumes_where_it_stopped_after_a_restart(
    tmp_path: Path, clock: VirtualClock
) -> None:
    counter = [float(10 * k) for k in range(25)]  # T0 … T0+240, 10 per scrape
    with HistoryStore(tmp_path / "h.db", clock=clock) as history:
        scrape(history, clock, {("c_total", ()): counter[:13]})
        assert history.downsample().medium_rows == 3  # minutes ending T0, T0+60, T0+120
    with HistoryStore(tmp_path / "h.db", clock=clock) as history:
        assert history.downsample().medium_rows == 0
        assert history.ingest([Sample("c_total", {}, 5.0, T0 + 100)]) == 0  # rolled up
        assert clock.now() == T0 + 130  # the scrapes go on where they stopped
        scrape(history, clock, {("c_total", ()): counter[13:]})
        assert history.downsample().medium_rows == 2
        # The first delta after the restart is measured from the sample before it.
        rolled = history.query_range(
            "c_total", {}, T0 + 60, T0 + 240, 60, "increase", tier="medium"
        )
        raw = history.query_range("c_total", {}, T0 + 60, T0 + 240, 60, "increase", tier="raw")
        assert only(rolled) == only(raw) == [(T0 + 60 * m, 60.0) for m in (1, 2, 3, 4)]


def test_long_ranges_read_rollups_and_agree_with_raw_data(
    tmp_path: Path, clock: VirtualClock
) -> None:
    reference_clock = VirtualClock(start=T0)
    with (
        HistoryStore(tmp_path / "small.db", clock=clock, retention=SMALL) as history,
        HistoryStore(tmp_path / "ref.db", clock=reference_clock) as reference,
    ):
        for k in range(3 * 360 + 1):  # three hours at 10 s
            ts = T0 + 10 * k
            counter = float(k * 3 % 1000)  # resets every 1000/3 scrapes
            batch = [
                Sample("g", {"w": "1"}, (k * 37 % 101) / 7.0, ts),
                Sample("g", {"w": "2"}, (k * 11 % 13) / 3.0, ts),
                Sample("c_total", {"w": "1"}, counter, ts),
            ]
            history.ingest(batch)
            reference.ingest(batch)
            if k % 30 == 0:
                history.maintain()
            clock.advance(10)
            reference_clock.advance(10)
        history.maintain()
        now = clock.now()
        assert history.stats().rows["raw"] + history.stats().rows["head"] < 2 * 3 * 360

        for start, step, tier in ((now - 1200, 60, "medium"), (now - 5400, 300, "low")):
            start -= start % step
            for fn in ("avg", "min", "max", "sum", "count", "last", "rate", "increase"):
                metric = "c_total" if fn in ("rate", "increase") else "g"
                for window in (None, 5 * step):  # windows that tile the range, and sliding
                    got = history.query_range(metric, {}, start, now, step, fn, window=window)
                    want = reference.query_range(
                        metric, {}, start, now, step, fn, window=window, tier="raw"
                    )
                    assert got and all(len(s.points) > 5 for s in got), fn
                    assert {s.tier for s in got} == {tier}, fn
                    assert [s.labels for s in got] == [s.labels for s in want]
                    for mine, theirs in zip(got, want, strict=True):
                        assert [t for t, _ in mine.points] == [t for t, _ in theirs.points]
                        for (_, a), (_, b) in zip(mine.points, theirs.points, strict=True):
                            assert a == pytest.approx(b, rel=1e-9, abs=1e-9), (fn, tier, window)


def test_wide_steps_read_rollups_even_inside_the_raw_retention(
    store: HistoryStore, clock: VirtualClock
) -> None:
    scrape(store, clock, {("g", ()): [float(k % 17) for k in range(721)]})  # two hours
    store.maintain()
    now = clock.now() - clock.now() % 300
    fine = store.query_range("g", {}, now - 3600, now, 60, "avg")
    wide = store.query_range("g", {}, now - 3600, now, 300, "max")
    assert fine[0].tier == "raw"  # a one-minute window holds one medium bucket: too coarse
    assert wide[0].tier == "medium"  # five buckets per window: read the rollups
    exact = store.query_range("g", {}, now - 3600, now, 300, "max", tier="raw")
    assert wide[0].points == exact[0].points


# --- retention ---------------------------------------------------------------------------------


def test_retention_deletes_exactly_what_expired_in_each_tier(
    tmp_path: Path, clock: VirtualClock
) -> None:
    with HistoryStore(tmp_path / "h.db", clock=clock, retention=SMALL) as history:
        for k in range(1081):  # T0 … T0+10800, every 10 s
            batch = [Sample("g", {"w": str(w)}, 1.0, T0 + 10 * k) for w in (1, 2)]
            if k < 60:  # a third series that stops after ten minutes
                batch.append(Sample("gone", {}, 1.0, T0 + 10 * k))
            history.ingest(batch)
            clock.advance(10)
        now = T0 + 10800
        history.downsample(now)
        # Medium buckets end every minute up to T0+10740 (grace 10 s); low buckets every
        # 5 minutes up to T0+10500; raw samples older than T0+10440 moved to samples_raw.
        assert history.stats().rows == {
            "head": 2 * 36,
            "raw": 2 * 1045 + 60,
            "medium": 2 * 180 + 11,
            "low": 2 * 36 + 3,
        }

        deleted = history.enforce_retention(now)

        # raw keeps ts ≥ now-600, medium ≥ now-1800, low ≥ now-7200; "gone" loses everything.
        assert deleted.as_dict() == {
            "raw": 2 * (1045 - 25) + 60,
            "medium": 2 * (180 - 30) + 11,
            "low": 2 * (36 - 24) + 3,
            "series": 1,
        }
        assert history.stats().rows == {
            "head": 2 * 36,
            "raw": 2 * 25,
            "medium": 2 * 30,
            "low": 2 * 24,
        }
        assert [s.metric for s in history.series()] == ["g", "g"]
        raw = history.query_range("g", {"w": "1"}, T0, now, 10, "raw", tier="raw")
        assert only(raw)[0] == (T0 + 10200, 1.0)
        assert history.enforce_retention(now).as_dict() == dict.fromkeys(deleted.as_dict(), 0)


# --- bounded disk ------------------------------------------------------------------------------

#: The documented bound (docs/history.md): bytes per series for one day of 10 s samples
#: in each tier, in the worst case of values with a fractional part (integer values,
#: such as counters, take less).
RAW_BYTES_PER_DAY = 250_000
MEDIUM_BYTES_PER_DAY = 100_000
LOW_BYTES_PER_DAY = 2_500
#: An empty history file's own pages.
FIXED_BYTES = 128 * 1024


def test_a_simulated_day_stays_under_the_documented_bytes_per_series(
    tmp_path: Path, clock: VirtualClock
) -> None:
    series = 8
    labels = [{"cluster": f"c{i % 3}", "worker": f"w{i}"} for i in range(series)]
    with HistoryStore(tmp_path / "h.db", clock=clock) as history:
        for batch in range(288):  # a day, one ingest of five minutes' scrapes at a time
            first = batch * 30
            clock.advance(300)
            history.ingest(
                Sample(
                    "agent_utilization", labels[i], (k * 7919 + i) % 1000003 / 1000.0, T0 + 10 * k
                )
                for k in range(first, first + 30)
                for i in range(series)
            )
            history.maintain()
        stats = history.stats()
    per_day = RAW_BYTES_PER_DAY + MEDIUM_BYTES_PER_DAY + LOW_BYTES_PER_DAY
    assert stats.rows["medium"] >= series * 1430  # a full day went through every tier
    assert stats.file_bytes <= series * per_day + FIXED_BYTES, stats


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"raw": 0}, "retention.raw"),
        ({"raw": float("inf")}, "retention.raw"),
        ({"medium": True}, "retention.medium"),
        ({"medium_step": 90.5}, "retention.medium_step"),
        ({"medium_step": 120, "low_step": 3660}, "retention.low_step"),  # not a multiple
        ({"raw": 8 * 86400}, "retention.medium"),
        ({"low": 86400}, "retention.low"),
        ({"medium_step": 3600}, "retention.low_step"),
        ({"raw": 30}, "retention.raw"),
    ],
)
def test_a_bad_retention_policy_names_the_field_and_the_fix(
    settings: dict[str, float], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        RetentionPolicy(**settings)
    assert caught.value.field == field
    assert caught.value.fix


def test_bad_queries_raise_clear_errors(store: HistoryStore) -> None:
    store.ingest([Sample("g", {}, 1.0, T0)])
    bad: list[tuple[str, dict[str, object]]] = [
        ("fn", {"fn": "median"}),
        ("step", {"step": 0}),
        ("step", {"step": -5}),
        ("end", {"end": T0 - 60}),
        ("step", {"end": T0 + 86400, "step": 1}),  # 86 401 points
        ("window", {"window": 0}),
        ("tier", {"tier": "daily"}),
        ("by", {"by": "cluster"}),
        ("by", {"fn": "raw", "by": ["cluster"]}),
        ("agg", {"by": ["cluster"], "agg": "median"}),
        ("agg", {"agg": "max"}),  # agg combines groups: without by there are none
        ("matchers", {"matchers": {"cluster": 3}}),
        ("start", {"start": "yesterday"}),
        ("query.metric", {"metric": "bad name"}),
    ]
    for field, change in bad:
        args: dict[str, object] = {
            "metric": "g",
            "matchers": None,
            "start": T0,
            "end": T0 + 60,
            "step": 60,
            "fn": "avg",
            **change,
        }
        with pytest.raises(ConfigError) as caught:
            store.query_range(**args)  # type: ignore[arg-type]
        assert caught.value.field == field, change
    for q in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            store.histogram_quantile(q, "h", None, T0, T0 + 60, 60)
    with pytest.raises(ConfigError, match="leave out 'le'"):
        store.histogram_quantile(0.5, "h", None, T0, T0 + 60, 60, by=["le"])


def test_a_bad_sample_stores_nothing_of_its_batch(store: HistoryStore) -> None:
    cases = [
        (Sample("g", {}, "lots", T0), "samples[1]"),  # type: ignore[arg-type]
        (Sample("g", {}, 1.0, float("inf")), "samples[1]"),
        (("g", {}), "samples[1]"),
        (Sample("g", {"cluster": 3}, 1.0, T0), "sample.labels.cluster"),  # type: ignore[dict-item]
        (Sample("9lives", {}, 1.0, T0), "sample.metric"),
        (Sample("g", {"__name__": "x"}, 1.0, T0), "sample.labels"),
    ]
    for bad, field in cases:
        with pytest.raises(ConfigError) as caught:
            store.ingest([Sample("ok", {}, 1.0, T0), bad])  # type: ignore[list-item]
        assert caught.value.field == field
    assert store.series() == []
    assert store.stats().rows["head"] == 0


def test_reopening_with_other_bucket_widths_is_refused(tmp_path: Path) -> None:
    HistoryStore(tmp_path / "h.db").close()
    with pytest.raises(ConfigError) as caught:
        HistoryStore(tmp_path / "h.db", retention=RetentionPolicy(medium_step=300))
    assert caught.value.field == "retention.medium_step"
    assert "60 s" in caught.value.fix
    # Retention lengths may change freely.
    HistoryStore(tmp_path / "h.db", retention=RetentionPolicy(raw=3 * 3600)).close()


def test_a_newer_file_is_refused_and_a_closed_store_says_so(tmp_path: Path) -> None:
    from fleetops import SchemaError

    path = tmp_path / "h.db"
    history = HistoryStore(path)
    history.close()
    with pytest.raises(Closed):
        history.ingest([Sample("g", {}, 1.0)])
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(SchemaError, match="upgrade fleetops"):
        HistoryStore(path)
