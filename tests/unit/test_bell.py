"""Doorbells on real loopback sockets: who is rung, and what a ring does."""

from __future__ import annotations

import asyncio

from fleetops.queue._bell import TASKS_PER_RING, BellRinger, Doorbell, parse_bell


def test_parse_bell_takes_udp_addresses_only() -> None:
    assert parse_bell("udp://127.0.0.1:40123") == ("127.0.0.1", 40123)
    assert parse_bell("tcp://127.0.0.1:40123") is None
    assert parse_bell("udp://127.0.0.1:") is None
    assert parse_bell("udp://:80") is None


def test_a_ring_wakes_the_listener_once_for_many_datagrams() -> None:
    async def main() -> tuple[int, int, int]:
        woken = asyncio.Event()
        wakes = 0

        def on_ring() -> None:
            nonlocal wakes
            wakes += 1
            woken.set()

        bell, other = Doorbell(), Doorbell()
        bell.listen(on_ring)
        other.listen(lambda: None)
        ringer = BellRinger(hostname="here")
        ringer.load(
            [("c", "here", bell.address), ("d", "here", other.address)],
            now=0.0,
        )
        for _ in range(3):
            assert ringer.ring({"c": 1}) == 1
        await asyncio.wait_for(woken.wait(), 5)
        await asyncio.sleep(0.05)
        result = wakes, bell.rings, other.rings
        bell.close()
        other.close()
        ringer.close()
        return result

    wakes, rings, other_rings = asyncio.run(main())
    assert rings == 3  # every datagram was read ...
    assert 1 <= wakes <= 3  # ... and the claimer woken at least once
    assert other_rings == 0  # a cluster's ring reaches only that cluster's workers


def test_the_ringer_rings_only_workers_on_its_own_host() -> None:
    ringer = BellRinger(hostname="a")
    ringer.load(
        [
            ("c", "a", "udp://127.0.0.1:9"),
            ("c", "b", "udp://127.0.0.1:10"),  # another machine: its loopback is not ours
            ("c", "a", "not-a-bell"),
        ],
        now=100.0,
    )
    assert ringer.ring({"c": 100}) == 1
    assert ringer.ring({"unknown": 5}) == 0
    assert not ringer.stale(100.5)
    assert ringer.stale(100.0 + BellRinger.REFRESH_SECONDS + 0.1)
    ringer.close()


def test_a_few_tasks_ring_one_worker_in_turn_and_many_ring_them_all() -> None:
    async def main() -> list[int]:
        bells = [Doorbell() for _ in range(3)]
        for bell in bells:
            bell.listen(lambda: None)
        ringer = BellRinger(hostname="here")
        ringer.load([("c", "here", b.address) for b in bells], now=0.0)
        for _ in range(3):  # a handful of tasks: one worker each time, taking turns
            assert ringer.ring({"c": 2}) == 1
        assert ringer.ring({"c": 2 * TASKS_PER_RING}) == 2
        assert ringer.ring({"c": 100 * TASKS_PER_RING}) == 3  # never more than there are
        await asyncio.sleep(0.1)
        rings = [b.rings for b in bells]
        for bell in bells:
            bell.close()
        ringer.close()
        return rings

    rings = asyncio.run(main())
    # 3 single rings went round all three; then 2 and 3 more, continuing the rotation
    assert sum(rings) == 3 + 2 + 3
    assert max(rings) - min(rings) <= 1
