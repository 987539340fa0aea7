"""Doorbells on real loopback sockets: who is rung, and what a ring does."""

from __future__ import annotations

import asyncio

from fleetops.queue._bell import BellRinger, Doorbell, parse_bell


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
            assert ringer.ring(["c"]) == 1
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
    assert ringer.ring(["c", "c"]) == 1
    assert ringer.ring(["unknown"]) == 0
    assert not ringer.stale(100.5)
    assert ringer.stale(100.0 + BellRinger.REFRESH_SECONDS + 0.1)
    ringer.close()
