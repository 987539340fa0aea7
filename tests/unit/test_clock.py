"""VirtualClock: time moves only when told to, and sleepers wake in order."""

from __future__ import annotations

import asyncio

import pytest

from fleetops._clock import SystemClock, VirtualClock

START = 1_700_000_000.0


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(10):
        await asyncio.sleep(0)


def test_time_stands_still_until_advanced() -> None:
    clock = VirtualClock(start=START)

    assert clock.now() == START
    assert clock.monotonic() == 0.0
    clock.advance(2.5)
    assert clock.now() == START + 2.5
    assert clock.monotonic() == 2.5
    clock.advance(0)
    assert clock.now() == START + 2.5


def test_time_cannot_go_backwards() -> None:
    clock = VirtualClock(start=START)

    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-0.001)
    assert clock.now() == START


def test_sleepers_wake_in_order_of_their_wake_up_time() -> None:
    async def main() -> list[tuple[str, float]]:
        clock = VirtualClock(start=START)
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append((name, clock.now()))

        async with asyncio.TaskGroup() as group:
            for name, seconds in [("c", 0.3), ("a", 0.1), ("b", 0.2), ("a2", 0.1), ("d", 5.0)]:
                group.create_task(sleeper(name, seconds), name=f"sleeper-{name}")
            await settle()
            assert woke == []

            clock.advance(0.15)
            await settle()
            assert [n for n, _ in woke] == ["a", "a2"]

            clock.advance(0.15)  # up to the wake-up time of "c"
            await settle()
            assert [n for n, _ in woke] == ["a", "a2", "b", "c"]

            clock.advance(10.0)
            await settle()
        return woke

    woke = asyncio.run(main())

    assert [n for n, _ in woke] == ["a", "a2", "b", "c", "d"]
    expected = [START + 0.15] * 2 + [START + 0.3] * 2 + [START + 10.3]
    assert [at for _, at in woke] == pytest.approx(expected, abs=1e-6)


def test_one_big_advance_wakes_everyone_in_order() -> None:
    async def main() -> list[int]:
        clock = VirtualClock(start=START)
        order: list[int] = []

        async def sleeper(n: int) -> None:
            await clock.sleep(n / 10)
            order.append(n)

        async with asyncio.TaskGroup() as group:
            for n in (7, 3, 9, 1, 5, 3):
                group.create_task(sleeper(n))
            await settle()
            clock.advance(100)
        return order

    assert asyncio.run(main()) == [1, 3, 3, 5, 7, 9]


def test_sleep_is_measured_from_the_current_virtual_time() -> None:
    async def main() -> None:
        clock = VirtualClock(start=START)
        clock.advance(5)
        sleeper = asyncio.create_task(clock.sleep(1.0))
        await settle()
        clock.advance(0.99)
        await settle()
        assert not sleeper.done()
        clock.advance(0.01)
        await settle()
        assert sleeper.done()
        assert clock.now() == START + 6

    asyncio.run(main())


def test_zero_and_negative_sleeps_return_at_once() -> None:
    async def main() -> None:
        clock = VirtualClock(start=START)
        await asyncio.wait_for(clock.sleep(0), timeout=1)
        await asyncio.wait_for(clock.sleep(-3), timeout=1)
        assert clock.now() == START

    asyncio.run(main())


def test_a_cancelled_sleeper_does_not_disturb_the_others() -> None:
    async def main() -> None:
        clock = VirtualClock(start=START)
        gone = asyncio.create_task(clock.sleep(1.0))
        kept = asyncio.create_task(clock.sleep(2.0))
        await settle()
        gone.cancel()
        await settle()
        clock.advance(3.0)
        await settle()
        assert gone.cancelled()
        assert kept.done() and not kept.cancelled()

    asyncio.run(main())


def test_run_for_lets_woken_tasks_run_between_steps() -> None:
    async def main() -> list[float]:
        clock = VirtualClock(start=START)
        ticks: list[float] = []

        async def ticker() -> None:
            for _ in range(5):
                await clock.sleep(0.1)
                ticks.append(round(clock.monotonic(), 6))

        task = asyncio.create_task(ticker())
        await settle()
        await clock.run_for(0.55, step=0.05)
        await task
        assert clock.monotonic() == pytest.approx(0.55)
        return ticks

    assert asyncio.run(main()) == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])


def test_system_clock_moves_and_sleeps() -> None:
    clock = SystemClock()

    async def main() -> float:
        start = clock.monotonic()
        await clock.sleep(0.01)
        await clock.sleep(-1)
        return clock.monotonic() - start

    assert asyncio.run(main()) >= 0.009
    assert clock.now() > START - 10**9
