"""The queue benchmark's paced submitter: closed-loop (each submit waits for the last
one's acknowledgement) or open-loop (a fixed schedule, whatever the acknowledgements
do: no coordinated omission)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from fleetops._clock import SystemClock
from fleetops._exceptions import StoreError
from fleetops.bench._queue import _submit_paced
from fleetops.store import NewTask, Submitted


class SlowAcknowledgements:
    """A client whose submits are answered once ``hold`` of them are waiting, or after
    ``delay`` seconds, whichever comes first."""

    def __init__(self, *, hold: int, delay: float) -> None:
        self.hold = hold
        self.delay = delay
        self.batches: list[int] = []
        self.waiting = 0
        self.most_waiting = 0
        self._release = asyncio.Event()
        self._next_id = 1

    async def submit_many(self, tasks: Sequence[NewTask]) -> list[Submitted]:
        self.batches.append(len(tasks))
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        if self.waiting >= self.hold:
            self._release.set()
        try:
            await asyncio.wait_for(self._release.wait(), self.delay)
        except TimeoutError:
            pass
        self.waiting -= 1
        first, self._next_id = self._next_id, self._next_id + len(tasks)
        return [Submitted(first + i, True) for i in range(len(tasks))]


def paced(client: SlowAcknowledgements, *, open_loop: bool) -> tuple[list[int], list[float]]:
    async def main() -> tuple[list[int], list[float]]:
        return await _submit_paced(
            client,  # type: ignore[arg-type]
            "c",
            "a",
            "{}",
            40,
            2000.0,
            SystemClock(),
            open_loop,
        )

    return asyncio.run(main())


def test_open_loop_submits_go_on_while_earlier_ones_wait_for_their_acknowledgement() -> None:
    # nothing is acknowledged before three submits wait: a submitter that waited for
    # each acknowledgement would wait out the 5 s delay on every submit, one at a time
    client = SlowAcknowledgements(hold=3, delay=5.0)
    ids, acks = paced(client, open_loop=True)
    assert client.most_waiting >= 3  # three producers waited at once
    assert sorted(ids) == list(range(1, 41))  # every task once
    assert len(acks) == len(client.batches)  # one answer time a submit
    # the first submit was answered only once two more, a millisecond apart, waited
    assert max(acks) >= 0.0015
    assert sum(client.batches) == 40


def test_closed_loop_submits_one_at_a_time_and_slow_acknowledgements_grow_its_batches() -> None:
    # 40 tasks at 2,000/s come due over 20 ms; each acknowledgement takes 8 ms
    client = SlowAcknowledgements(hold=2, delay=0.008)
    ids, acks = paced(client, open_loop=False)
    assert client.most_waiting == 1
    assert sorted(ids) == list(range(1, 41))
    assert len(acks) == len(client.batches) < 40
    assert min(acks) >= 0.008  # each answer's time is its whole wait
    assert max(client.batches) > 1  # what came due while it waited went together


class FailingThirdSubmit(SlowAcknowledgements):
    async def submit_many(self, tasks: Sequence[NewTask]) -> list[Submitted]:
        if len(self.batches) == 2:
            self.batches.append(len(tasks))
            raise StoreError("SQLite store bench.db: database or disk is full")
        return await super().submit_many(tasks)


@pytest.mark.parametrize("open_loop", [False, True], ids=["closed", "open"])
def test_a_failed_submit_stops_the_pacing_with_the_store_s_own_error(open_loop: bool) -> None:
    # the bench reports a store's failure as itself, not wrapped in a group
    client = FailingThirdSubmit(hold=1, delay=0.001)
    with pytest.raises(StoreError, match="disk is full"):
        paced(client, open_loop=open_loop)
