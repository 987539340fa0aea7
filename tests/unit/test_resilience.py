"""Resilience primitives on virtual time: token bucket, breaker, retry, bulkhead, degradation."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import pytest

import fleetops.resilience as resilience
from fleetops import ConfigError, FleetOpsError, UsageError, VirtualClock
from fleetops.resilience import (
    Backoff,
    BreakerSettings,
    BreakerState,
    Bulkhead,
    BulkheadFull,
    CircuitBreaker,
    CircuitOpen,
    DegradationExhausted,
    DegradationPolicy,
    DegradationStep,
    RateLimited,
    TokenBucket,
    TokenRequestTooLarge,
    retry_async,
)

T = TypeVar("T")

pytestmark = pytest.mark.timeout(30)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


class Boom(Exception):
    def __init__(self, retry_after: float | None = None) -> None:
        super().__init__("boom")
        self.retry_after = retry_after


def test_public_names_do_not_drift() -> None:
    public = {n for n in dir(resilience) if not n.startswith("_")}
    assert public == {
        "Backoff",
        "BreakerSettings",
        "BreakerState",
        "Bulkhead",
        "BulkheadFull",
        "CircuitBreaker",
        "CircuitOpen",
        "Degraded",
        "DegradationExhausted",
        "DegradationPolicy",
        "DegradationStep",
        "RateLimited",
        "ResilienceError",
        "TokenBucket",
        "TokenRequestTooLarge",
        "degrade_on_outage",
        "retry_after_hint",
        "retry_async",
    }
    for name in ("CircuitOpen", "BulkheadFull", "RateLimited", "DegradationExhausted"):
        assert issubclass(getattr(resilience, name), FleetOpsError)
    assert issubclass(TokenRequestTooLarge, UsageError)


# --- token bucket -------------------------------------------------------------------


def test_bucket_try_acquire_spends_burst_then_refills_at_rate() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(rate=2.0, burst=4, clock=clock)
    assert [bucket.try_acquire() for _ in range(5)] == [True, True, True, True, False]
    clock.advance(0.49)
    assert not bucket.try_acquire()
    clock.advance(0.01)
    assert bucket.try_acquire()
    clock.advance(100)
    assert bucket.available == pytest.approx(4)


def test_bucket_acquire_waits_on_the_clock_exactly_as_long_as_needed() -> None:
    async def main() -> None:
        clock = VirtualClock()
        bucket = TokenBucket(rate=10, burst=10, clock=clock)
        assert await bucket.acquire(10) == 0.0
        waiter = asyncio.ensure_future(bucket.acquire(5))
        await settle()
        clock.advance(0.49)
        await settle()
        assert not waiter.done()
        clock.advance(0.01)
        await settle()
        assert waiter.result() == pytest.approx(0.5)

    run(main())


def test_bucket_serves_waiters_in_arrival_order() -> None:
    async def main() -> None:
        clock = VirtualClock()
        bucket = TokenBucket(rate=1, burst=10, clock=clock, initial=0)
        done: list[str] = []

        async def take(tag: str, n: int) -> None:
            await bucket.acquire(n)
            done.append(tag)

        big = asyncio.ensure_future(take("big", 8))
        await settle()
        small = asyncio.ensure_future(take("small", 1))
        await settle()
        assert not bucket.try_acquire(1)  # nobody jumps the queue
        for _ in range(10):
            clock.advance(1)
            await settle()
        await asyncio.gather(big, small)
        assert done == ["big", "small"]

    run(main())


def test_bucket_max_wait_refuses_without_taking_anything() -> None:
    async def main() -> None:
        clock = VirtualClock()
        bucket = TokenBucket(rate=1, burst=5, clock=clock, initial=0, name="tpm")
        with pytest.raises(RateLimited) as caught:
            await bucket.acquire(3, max_wait=2.0)
        assert "'tpm'" in str(caught.value) and "3.00 s" in str(caught.value)
        clock.advance(3)
        assert bucket.try_acquire(3)

    run(main())


def test_bucket_refuses_requests_larger_than_burst_and_bad_settings() -> None:
    bucket = TokenBucket(rate=1, burst=5, clock=VirtualClock(), name="quota")
    with pytest.raises(TokenRequestTooLarge, match="asked for 6 tokens but it holds at most 5"):
        bucket.try_acquire(6)
    with pytest.raises(ConfigError, match="rate"):
        TokenBucket(rate=0, burst=5)
    with pytest.raises(ConfigError, match="burst"):
        TokenBucket(rate=1, burst=0)


def test_cancelled_waiter_gives_its_tokens_back() -> None:
    async def main() -> None:
        clock = VirtualClock()
        bucket = TokenBucket(rate=1, burst=5, clock=clock, initial=0)
        waiter = asyncio.ensure_future(bucket.acquire(5))
        await settle()
        assert bucket.available == pytest.approx(-5)
        waiter.cancel()
        await settle()
        assert bucket.available == pytest.approx(0)

    run(main())


def test_charge_runs_into_debt_and_refund_is_capped_at_burst() -> None:
    clock = VirtualClock()
    bucket = TokenBucket.per_minute(600, clock=clock)
    assert bucket.rate == pytest.approx(10) and bucket.burst == 600
    bucket.charge(700)
    assert bucket.available == pytest.approx(-100)
    assert bucket.wait_time(1) == pytest.approx(10.1)
    bucket.refund(10_000)
    assert bucket.available == pytest.approx(600)


# --- circuit breaker -----------------------------------------------------------------


async def fail() -> None:
    raise Boom()


async def ok() -> str:
    return "ok"


def test_breaker_opens_after_consecutive_failures_and_names_itself() -> None:
    async def main() -> None:
        clock = VirtualClock()
        transitions: list[tuple[str, str]] = []
        breaker = CircuitBreaker(
            "llm-primary",
            BreakerSettings(consecutive_failures=3, open_duration=30),
            clock=clock,
            on_transition=lambda _n, old, new: transitions.append((old.value, new.value)),
        )
        for _ in range(2):
            with pytest.raises(Boom):
                await breaker.call(fail)
        assert await breaker.call(ok) == "ok"  # a success resets the run
        for _ in range(3):
            with pytest.raises(Boom):
                await breaker.call(fail)
        assert breaker.state is BreakerState.OPEN
        calls = 0

        async def counted() -> None:
            nonlocal calls
            calls += 1

        clock.advance(10)
        with pytest.raises(CircuitOpen) as caught:
            await breaker.call(counted)
        assert calls == 0
        err = caught.value
        assert err.breaker == "llm-primary"
        assert err.retry_in == pytest.approx(20)
        assert err.retry_at == pytest.approx(clock.now() + 20)
        assert "'llm-primary'" in str(err) and "3 consecutive failures" in str(err)
        assert "20.0 s" in str(err)
        assert transitions == [("closed", "open")]

    run(main())


def test_breaker_half_open_probe_success_closes_it() -> None:
    async def main() -> None:
        clock = VirtualClock()
        breaker = CircuitBreaker(
            "b", BreakerSettings(consecutive_failures=1, open_duration=5), clock=clock
        )
        with pytest.raises(Boom):
            await breaker.call(fail)
        clock.advance(5)
        assert breaker.state is BreakerState.HALF_OPEN
        assert await breaker.call(ok) == "ok"
        assert breaker.state is BreakerState.CLOSED

    run(main())


def test_breaker_half_open_probe_failure_reopens_for_a_full_period() -> None:
    async def main() -> None:
        clock = VirtualClock()
        breaker = CircuitBreaker(
            "b", BreakerSettings(consecutive_failures=1, open_duration=5), clock=clock
        )
        with pytest.raises(Boom):
            await breaker.call(fail)
        clock.advance(6)
        with pytest.raises(Boom):
            await breaker.call(fail)
        assert breaker.state is BreakerState.OPEN
        assert breaker.retry_in() == pytest.approx(5)
        with pytest.raises(CircuitOpen, match="half-open probe call failed"):
            await breaker.call(ok)

    run(main())


def test_breaker_allows_only_the_configured_number_of_probes() -> None:
    async def main() -> None:
        clock = VirtualClock()
        breaker = CircuitBreaker(
            "b",
            BreakerSettings(consecutive_failures=1, open_duration=1, half_open_probes=2),
            clock=clock,
        )
        with pytest.raises(Boom):
            await breaker.call(fail)
        clock.advance(1)
        gate = asyncio.Event()

        async def slow() -> str:
            await gate.wait()
            return "probe"

        probes = [asyncio.ensure_future(breaker.call(slow)) for _ in range(2)]
        await settle()
        with pytest.raises(CircuitOpen, match="2 probe call"):
            await breaker.call(ok)
        gate.set()
        assert await asyncio.gather(*probes) == ["probe", "probe"]
        assert breaker.state is BreakerState.CLOSED

    run(main())


def test_breaker_trips_on_failure_rate_over_the_window() -> None:
    async def main() -> None:
        breaker = CircuitBreaker(
            "b",
            BreakerSettings(
                consecutive_failures=None, failure_rate=0.5, window=10, minimum_calls=10
            ),
            clock=VirtualClock(),
        )
        for i in range(9):
            with pytest.raises(Boom) if i % 2 else _no_error():
                await breaker.call(fail if i % 2 else ok)
        assert breaker.state is BreakerState.CLOSED  # 4 of 9, and too few calls anyway
        with pytest.raises(Boom):
            await breaker.call(fail)
        assert breaker.state is BreakerState.OPEN  # 5 of 10

    run(main())


class _no_error:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_breaker_ignores_errors_that_are_not_failures() -> None:
    async def main() -> None:
        breaker = CircuitBreaker(
            "b",
            BreakerSettings(consecutive_failures=1),
            clock=VirtualClock(),
            is_failure=lambda exc: not isinstance(exc, ValueError),
        )

        async def bad_input() -> None:
            raise ValueError("caller's mistake")

        for _ in range(3):
            with pytest.raises(ValueError):
                await breaker.call(bad_input)
        assert breaker.state is BreakerState.CLOSED

    run(main())


def test_breaker_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="never trip"):
        BreakerSettings(consecutive_failures=None, failure_rate=None)
    with pytest.raises(ConfigError, match="failure_rate"):
        BreakerSettings(failure_rate=1.5)


# --- retry ----------------------------------------------------------------------------


def flaky(failures: int, exc: Callable[[], BaseException] = Boom) -> Callable[[], Awaitable[str]]:
    state = {"calls": 0}

    async def fn() -> str:
        state["calls"] += 1
        if state["calls"] <= failures:
            raise exc()
        return f"ok after {state['calls']}"

    return fn


def test_retry_backs_off_with_full_jitter_on_the_clock() -> None:
    async def main() -> None:
        clock = VirtualClock()
        delays: list[float] = []
        backoff = Backoff(max_attempts=4, base_delay=1.0, max_delay=3.0)
        task = asyncio.ensure_future(
            retry_async(
                flaky(3),
                backoff=backoff,
                clock=clock,
                rng=random.Random(7),
                on_retry=lambda _a, _e, d: delays.append(d),
            )
        )
        while not task.done():
            await settle()
            clock.advance(0.001)
        assert task.result() == "ok after 4"
        expected = random.Random(7)
        assert delays == [backoff.delay(n, expected) for n in (1, 2, 3)]
        assert 0 <= delays[0] <= 1 and 0 <= delays[1] <= 2 and 0 <= delays[2] <= 3
        assert clock.monotonic() == pytest.approx(sum(delays), abs=0.01)

    run(main())


def test_retry_waits_at_least_the_retry_after_hint() -> None:
    async def main() -> None:
        clock = VirtualClock()
        delays: list[float] = []
        task = asyncio.ensure_future(
            retry_async(
                flaky(1, lambda: Boom(retry_after=7.0)),
                backoff=Backoff(base_delay=0.1),
                clock=clock,
                on_retry=lambda _a, _e, d: delays.append(d),
            )
        )
        await settle()
        clock.advance(6.9)
        await settle()
        assert not task.done()
        clock.advance(0.1)
        await settle()
        assert task.result() == "ok after 2"
        assert delays == [7.0]

    run(main())


def test_retry_gives_up_when_the_hint_is_too_long_or_the_error_not_retryable() -> None:
    async def main() -> None:
        clock = VirtualClock()
        fn = flaky(1, lambda: Boom(retry_after=600))
        with pytest.raises(Boom):
            await retry_async(fn, backoff=Backoff(max_retry_after=60), clock=clock)
        fn = flaky(1)
        with pytest.raises(Boom):
            await retry_async(fn, retry_on=lambda e: isinstance(e, KeyError), clock=clock)
        assert clock.monotonic() == 0

    run(main())


def test_retry_raises_the_last_error_when_attempts_run_out() -> None:
    async def main() -> None:
        clock = VirtualClock()
        attempts: list[int] = []
        task = asyncio.ensure_future(
            retry_async(
                flaky(10),
                backoff=Backoff(max_attempts=3, base_delay=0.5),
                clock=clock,
                on_retry=lambda a, _e, _d: attempts.append(a),
            )
        )
        while not task.done():
            await settle()
            clock.advance(0.01)
        assert isinstance(task.exception(), Boom)
        assert attempts == [1, 2]

    run(main())


def test_retry_stops_before_passing_its_deadline() -> None:
    async def main() -> None:
        clock = VirtualClock()
        with pytest.raises(Boom):
            await retry_async(
                flaky(1, lambda: Boom(retry_after=5)),
                backoff=Backoff(deadline=4.0),
                clock=clock,
            )
        assert clock.monotonic() == 0

    run(main())


# --- bulkhead -------------------------------------------------------------------------


def test_bulkhead_caps_concurrency_queues_and_refuses_overflow() -> None:
    async def main() -> None:
        bulkhead = Bulkhead("tools", max_concurrent=2, max_queue=1)
        gate = asyncio.Event()
        started: list[int] = []

        async def work(i: int) -> int:
            started.append(i)
            await gate.wait()
            return i

        calls = [asyncio.ensure_future(bulkhead.call(lambda i=i: work(i))) for i in range(3)]
        await settle()
        assert started == [0, 1] and bulkhead.active == 2 and bulkhead.queued == 1
        with pytest.raises(BulkheadFull, match="'tools'.*queue full.*max_concurrent=2"):
            await bulkhead.call(lambda: work(99))
        gate.set()
        assert await asyncio.gather(*calls) == [0, 1, 2]
        assert started == [0, 1, 2]
        assert bulkhead.active == 0 and bulkhead.queued == 0

    run(main())


def test_bulkhead_queued_call_times_out_on_the_clock() -> None:
    async def main() -> None:
        clock = VirtualClock()
        bulkhead = Bulkhead("db", max_concurrent=1, max_queue=5, max_wait=2.0, clock=clock)
        gate = asyncio.Event()
        holder = asyncio.ensure_future(bulkhead.call(gate.wait))
        await settle()
        queued = asyncio.ensure_future(bulkhead.call(ok))
        await settle()
        clock.advance(1.9)
        await settle()
        assert not queued.done()
        clock.advance(0.1)
        await settle()
        with pytest.raises(BulkheadFull, match="within max_wait=2 s"):
            queued.result()
        gate.set()
        await holder
        assert bulkhead.active == 0 and bulkhead.queued == 0
        assert await bulkhead.call(ok) == "ok"

    run(main())


def test_bulkhead_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def main() -> None:
        bulkhead = Bulkhead("b", max_concurrent=1, max_queue=2)
        gate = asyncio.Event()
        holder = asyncio.ensure_future(bulkhead.call(gate.wait))
        await settle()
        queued = asyncio.ensure_future(bulkhead.call(ok))
        await settle()
        queued.cancel()
        await settle()
        gate.set()
        await holder
        assert bulkhead.active == 0
        assert await bulkhead.call(ok) == "ok"

    run(main())


# --- degradation ----------------------------------------------------------------------


def test_degradation_falls_back_in_order_and_reports_the_level() -> None:
    async def main() -> None:
        async def primary(q: str) -> str:
            raise Boom()

        async def cheaper(q: str) -> str:
            return f"cheap answer to {q}"

        policy: DegradationPolicy[str, str] = DegradationPolicy(
            "answer",
            [
                DegradationStep("primary", primary),
                DegradationStep("cheaper", cheaper),
                DegradationStep.constant("canned", "sorry, try later"),
            ],
        )
        out = await policy.run("q1")
        assert out.value == "cheap answer to q1"
        assert (out.step, out.level, out.degraded) == ("cheaper", 1, True)
        assert [name for name, _ in out.skipped] == ["primary"]

    run(main())


def test_degradation_last_resort_and_exhaustion() -> None:
    async def main() -> None:
        async def down(q: str) -> str:
            raise Boom()

        canned = DegradationPolicy(
            "p", [DegradationStep("a", down), DegradationStep.constant("c", "x")]
        )
        out = await canned.run("q")
        assert (out.value, out.level) == ("x", 1)
        all_down = DegradationPolicy("p", [DegradationStep("a", down), DegradationStep("b", down)])
        with pytest.raises(DegradationExhausted, match="'p'.*a: Boom: boom; b: Boom: boom"):
            await all_down.run("q")

    run(main())


def test_degradation_raises_a_callers_mistake_at_once() -> None:
    async def main() -> None:
        reached: list[str] = []

        async def wrong(q: str) -> str:
            raise UsageError("bad question")

        async def fallback(q: str) -> str:
            reached.append(q)
            return q

        policy = DegradationPolicy(
            "p", [DegradationStep("a", wrong), DegradationStep("b", fallback)]
        )
        with pytest.raises(UsageError, match="bad question"):
            await policy.run("q")
        assert reached == []
        with pytest.raises(ConfigError):
            DegradationPolicy("p", [])

    run(main())
