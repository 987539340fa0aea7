"""Garbage collection set for a process that runs tasks on an event loop.

CPython's collector makes a pass over the young generation every 700 net
allocations of container objects, and each pass walks every such object still
alive since the last pass: in a worker, the coroutines, frames, futures and
contexts of the tasks in flight. A worker with a thousand tasks in flight makes 700
allocations in a fraction of a millisecond. In a worker of ``fleetops bench queue``
at 16,000 tasks/s that was 150 to 170 passes a second at 80 to 100 µs each, and
every older-generation pass (one in ten) walked the tasks in flight again for about
a millisecond: each pass a stall of the event loop that every task waits out.

:func:`tune_for_serving` does what long-running Python services do (see the
``gc.freeze`` documentation): what is loaded by then (modules, agents, the spec)
lives as long as the process, so it is frozen out of the collector's passes, and
the young generation is collected every 50,000 allocations instead of 700. Memory
is not held longer by it: an object is freed by reference counting the moment it
is no longer used; the collector only finds reference cycles, which are rare on the
hot path, and at most 50,000 allocations' worth of them wait for the next pass.
"""

from __future__ import annotations

import gc

#: Net allocations of container objects between two passes over the young generation.
YOUNG_THRESHOLD = 50_000


def tune_for_serving() -> None:
    """Freeze what is alive now out of the collector's passes, and make its passes
    over the young generation rarer (see the module doc). Call it once the process
    has loaded what it will serve with."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
