"""RetryPolicy: capped exponential backoff with full jitter, and when it gives up."""

from __future__ import annotations

import math
import random
import statistics
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetops._exceptions import ConfigError
from fleetops.queue import RetryPolicy


def ceiling(policy: RetryPolicy, failures: int) -> float:
    """The documented bound, computed exactly: min(cap, base * 2 ** (failures - 1))."""
    grown = Fraction(policy.backoff_base) * 2 ** max(0, failures - 1)
    return float(min(Fraction(policy.backoff_max), grown))


@st.composite
def policies(draw: st.DrawFn) -> RetryPolicy:
    base = draw(st.floats(0.0, 100.0, allow_nan=False))
    cap = draw(st.floats(base, 10_000.0, allow_nan=False))
    return RetryPolicy(
        max_attempts=draw(st.integers(1, 50)),
        backoff_base=base,
        backoff_max=cap,
        max_redeliveries=draw(st.integers(0, 50)),
    )


@given(policy=policies(), failures=st.integers(0, 5000), seed=st.integers(0, 2**32))
def test_delay_stays_within_zero_and_the_capped_exponential(
    policy: RetryPolicy, failures: int, seed: int
) -> None:
    delay = policy.delay(failures, random.Random(seed))

    assert 0.0 <= delay <= ceiling(policy, failures)
    assert delay <= policy.backoff_max
    assert math.isfinite(delay)


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 5, 6])
def test_full_jitter_spans_zero_to_the_ceiling(failures: int) -> None:
    policy = RetryPolicy(backoff_base=0.5, backoff_max=60.0)
    top = 0.5 * 2 ** (failures - 1)
    rng = random.Random(failures)

    samples = [policy.delay(failures, rng) for _ in range(4000)]

    assert min(samples) >= 0.0 and max(samples) <= top
    # Uniform on [0, top]: reaches both ends and averages the middle.
    assert min(samples) < 0.01 * top
    assert max(samples) > 0.99 * top
    assert statistics.fmean(samples) == pytest.approx(top / 2, rel=0.05)


def test_the_cap_holds_for_any_number_of_failures() -> None:
    policy = RetryPolicy(max_attempts=100_000, backoff_base=0.5, backoff_max=30.0)
    rng = random.Random(7)

    for failures in (8, 9, 50, 1023, 1024, 1025, 5000, 100_000):
        samples = [policy.delay(failures, rng) for _ in range(500)]
        assert max(samples) <= 30.0, failures
        assert max(samples) > 29.0, f"after {failures} failures the ceiling is the cap"


def test_first_failure_and_no_failure_use_the_base() -> None:
    policy = RetryPolicy(backoff_base=2.0, backoff_max=60.0)
    rng = random.Random(3)

    for failures in (0, 1):
        samples = [policy.delay(failures, rng) for _ in range(2000)]
        assert max(samples) <= 2.0
        assert max(samples) > 1.95


def test_zero_base_means_retry_at_once() -> None:
    policy = RetryPolicy(backoff_base=0.0, backoff_max=0.0)
    rng = random.Random(0)

    assert {policy.delay(f, rng) for f in range(0, 2000, 7)} == {0.0}


def test_delay_is_reproducible_from_the_rng() -> None:
    policy = RetryPolicy()

    first = [policy.delay(f, random.Random(42)) for f in range(1, 10)]
    second = [policy.delay(f, random.Random(42)) for f in range(1, 10)]

    assert first == second


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 10])
def test_gives_up_after_max_attempts_failures(max_attempts: int) -> None:
    policy = RetryPolicy(max_attempts=max_attempts)

    assert [policy.gives_up_after(f) for f in range(max_attempts + 3)] == [
        f >= max_attempts for f in range(max_attempts + 3)
    ]
    assert not policy.gives_up_after(max_attempts - 1)
    assert policy.gives_up_after(max_attempts)


def test_defaults_are_valid_and_documented() -> None:
    policy = RetryPolicy()

    assert (policy.max_attempts, policy.backoff_base, policy.backoff_max) == (3, 0.5, 60.0)
    assert policy.max_redeliveries == 10


@pytest.mark.parametrize(
    ("fields", "field", "value"),
    [
        ({"max_attempts": 0}, "retry.max_attempts", 0),
        ({"max_attempts": -2}, "retry.max_attempts", -2),
        ({"backoff_base": -0.1}, "retry.backoff_base", -0.1),
        ({"backoff_base": math.nan}, "retry.backoff_base", math.nan),
        ({"backoff_base": math.inf, "backoff_max": math.inf}, "retry.backoff_base", math.inf),
        ({"backoff_base": 5.0, "backoff_max": 4.0}, "retry.backoff_max", 4.0),
        ({"backoff_max": math.nan}, "retry.backoff_max", math.nan),
        ({"backoff_max": math.inf}, "retry.backoff_max", math.inf),
        ({"max_redeliveries": -1}, "retry.max_redeliveries", -1),
    ],
)
def test_invalid_settings_name_the_field_and_the_value(
    fields: dict[str, float], field: str, value: float
) -> None:
    with pytest.raises(ConfigError) as caught:
        RetryPolicy(**fields)  # type: ignore[arg-type]

    error = caught.value
    assert error.field == field
    assert error.value == value or (math.isnan(value) and math.isnan(error.value))  # type: ignore[arg-type]
    assert str(error).startswith(f"{field}: invalid value")
    assert error.fix


def test_edge_settings_are_accepted() -> None:
    policy = RetryPolicy(max_attempts=1, backoff_base=0.0, backoff_max=0.0, max_redeliveries=0)

    assert policy.gives_up_after(1)
    assert policy.delay(5, random.Random(1)) == 0.0
