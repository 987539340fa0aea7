"""The phi-accrual failure detector, on explicit times."""

from __future__ import annotations

import random

import pytest

from fleetops._exceptions import ConfigError
from fleetops.runtime._detector import DetectorSettings, PhiAccrualFailureDetector

HEARTBEAT = 0.2


def beating(
    count: int = 100, interval: float = HEARTBEAT, jitter: float = 0.0, seed: int = 1
) -> tuple[PhiAccrualFailureDetector, float]:
    """A detector fed ``count`` heartbeats; answers it and the time of the last one."""
    detector = PhiAccrualFailureDetector()
    rng = random.Random(seed)
    at = 1_000.0
    for _ in range(count):
        detector.heartbeat(at)
        at += interval * (1 + rng.uniform(-jitter, jitter))
    last = detector.last_heartbeat
    assert last is not None
    return detector, last


def crossing_time(detector: PhiAccrualFailureDetector, last: float, step: float = 0.001) -> float:
    """Seconds of silence after ``last`` until the detector suspects the process."""
    elapsed = 0.0
    while detector.is_available(last + elapsed):
        elapsed += step
        assert elapsed < 120, "the detector never suspected a silent process"
    return elapsed


def test_nothing_heard_yet_is_not_suspected() -> None:
    detector = PhiAccrualFailureDetector()

    assert detector.last_heartbeat is None
    assert detector.phi(1_000_000.0) == 0.0
    assert detector.is_available(1_000_000.0)


def test_phi_grows_with_silence() -> None:
    detector, last = beating()

    silences = [0.0, 0.2, 0.5, 0.9, 1.0, 1.2, 1.4, 1.6, 2.0, 3.0, 10.0, 1000.0]
    phis = [detector.phi(last + s) for s in silences]

    assert all(b >= a for a, b in zip(phis, phis[1:], strict=False)), phis
    assert phis[0] < 0.01 and phis[-1] > 100
    # Strictly growing once the silence is longer than the usual interval plus the pause.
    tail = [detector.phi(last + s) for s in (1.0, 1.2, 1.4, 1.6, 2.0)]
    assert all(b > a for a, b in zip(tail, tail[1:], strict=False)), tail
    assert not detector.is_available(last + 10.0)


def test_phi_stays_low_with_regular_heartbeats() -> None:
    detector = PhiAccrualFailureDetector()
    rng = random.Random(5)
    at = 1_000.0
    highest = 0.0
    for _ in range(500):
        # Just before each heartbeat arrives, the process must not be suspected.
        highest = max(highest, detector.phi(at))
        assert detector.is_available(at)
        detector.heartbeat(at)
        at += HEARTBEAT * (1 + rng.uniform(-0.25, 0.25))

    assert highest < 0.5


def test_a_fresh_process_is_given_time() -> None:
    detector = PhiAccrualFailureDetector()
    detector.heartbeat(500.0)

    assert detector.is_available(500.0 + 0.5)
    assert not detector.is_available(500.0 + 30.0)


@pytest.mark.parametrize("jitter", [0.0, 0.1, 0.3])
def test_threshold_crossing_time_is_sane_for_fifth_of_a_second_heartbeats(jitter: float) -> None:
    detector, last = beating(count=200, jitter=jitter, seed=11)

    crossed = crossing_time(detector, last)

    # Well after a few missed heartbeats (no false alarm for a short pause), well within
    # the 30 s the design allows for detecting an agent failure.
    assert 1.0 < crossed < 3.0, crossed
    assert detector.phi(last + crossed) >= detector.settings.threshold
    assert detector.phi(last + crossed - 0.01) < detector.settings.threshold


def test_a_lower_threshold_suspects_sooner() -> None:
    strict = PhiAccrualFailureDetector(DetectorSettings(threshold=1.0))
    lenient = PhiAccrualFailureDetector(DetectorSettings(threshold=16.0))
    for at in range(100):
        strict.heartbeat(at * HEARTBEAT)
        lenient.heartbeat(at * HEARTBEAT)
    last = 99 * HEARTBEAT

    assert crossing_time(strict, last) < crossing_time(lenient, last)


def test_the_detector_learns_a_slower_rhythm() -> None:
    detector = PhiAccrualFailureDetector(DetectorSettings(window=20))
    at = 0.0
    for _ in range(50):
        detector.heartbeat(at)
        at += HEARTBEAT
    fast_last = at - HEARTBEAT
    phi_fast = detector.phi(fast_last + 1.4)
    for _ in range(50):
        at += 1.0
        detector.heartbeat(at)

    phi_slow = detector.phi(at + 1.4)

    assert phi_fast > 4.0
    assert phi_slow < 1.0


def test_late_or_repeated_heartbeats_do_not_confuse_it() -> None:
    detector, last = beating()
    before = detector.phi(last + 1.3)

    detector.heartbeat(last - 5.0)  # delivered out of order
    detector.heartbeat(last)  # delivered twice

    assert detector.last_heartbeat == last
    assert detector.phi(last + 1.3) == pytest.approx(before)


def test_default_settings() -> None:
    settings = DetectorSettings()

    assert settings.threshold == 8.0
    assert PhiAccrualFailureDetector().settings == settings


@pytest.mark.parametrize(
    ("fields", "field", "value"),
    [
        ({"threshold": 0.0}, "failure_detector.threshold", 0.0),
        ({"threshold": -1.0}, "failure_detector.threshold", -1.0),
        ({"min_std": 0.0}, "failure_detector.min_std", 0.0),
        ({"min_std": -0.5}, "failure_detector.min_std", -0.5),
        ({"acceptable_pause": -0.1}, "failure_detector.acceptable_pause", -0.1),
        ({"window": 1}, "failure_detector.window", 1),
        ({"window": 0}, "failure_detector.window", 0),
    ],
)
def test_invalid_settings_name_the_field(
    fields: dict[str, float], field: str, value: float
) -> None:
    with pytest.raises(ConfigError) as caught:
        DetectorSettings(**fields)  # type: ignore[arg-type]

    assert caught.value.field == field
    assert caught.value.value == value
    assert str(caught.value).startswith(f"{field}: invalid value {value!r}")
    assert caught.value.fix


def test_edge_settings_are_accepted() -> None:
    settings = DetectorSettings(threshold=0.001, min_std=0.001, acceptable_pause=0.0, window=2)

    detector = PhiAccrualFailureDetector(settings)
    detector.heartbeat(0.0)

    assert detector.is_available(0.0)
    assert not detector.is_available(5.0)
